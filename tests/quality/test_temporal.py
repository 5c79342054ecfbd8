"""VBench's temporal flickering, against a plain port of vbench/temporal_flickering.py."""

import numpy as np
import pytest

from diffcache.quality.temporal import flicker_added, temporal_flickering


def vbench_score(frames_uint8):
    """vbench/temporal_flickering.py's cal_score on decoded frames: MAE of consecutive frames (float32, 0–255),
    mean over pairs, (255 − MAE) / 255."""
    maes = [np.mean(np.abs(frames_uint8[i].astype(np.float32) - frames_uint8[i + 1].astype(np.float32)))
            for i in range(len(frames_uint8) - 1)]
    return (255.0 - np.mean(maes).item()) / 255.0


def test_equals_vbench_on_8_bit_frames():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    assert temporal_flickering(frames / 255.0) == pytest.approx(vbench_score(frames), abs=1e-6)  # VBench: float32


def test_a_still_video_scores_one_and_flicker_lowers_the_score():
    still = np.full((5, 8, 8, 3), 0.4)
    flickering = still.copy()
    flickering[1::2] += 0.1  # every other frame brighter
    assert temporal_flickering(still) == 1.0
    assert temporal_flickering(flickering) == pytest.approx(1 - round(0.1 * 255) / 255, abs=1e-6)
    assert flicker_added(flickering, still) > 0 > flicker_added(still, flickering)
    assert temporal_flickering(still[:1]) is None and flicker_added(still[:1], still[:1]) is None

"""Model-free temporal scores: VBench's temporal flickering.

VBench (Huang et al. 2023, arXiv 2311.17982, https://github.com/Vchitect/VBench, ``vbench/temporal_flickering.py``)
defines temporal flickering without a learned model: the mean absolute difference between consecutive 8-bit frames
(values 0–255), averaged over the video's frame pairs, mapped to ``(255 − MAE) / 255``; higher is steadier, 1.0 is a
still video. It is the only VBench dimension defined without network weights; the others (subject and background
consistency, motion smoothness, dynamic degree, aesthetic and imaging quality, …) need DINO, CLIP, AMT, RAFT, MUSIQ
or LAION weights (:mod:`diffcache.quality.learned`).

Departures, both stated wherever the number is shown:

* VBench scores this dimension on videos of *static* prompts, so that every frame difference is flicker; here it
  is also computed on moving clips, where it mixes motion with flicker. Compare a method's score with the uncached
  video's of the same prompt and seed (``flicker_added`` = reference − video): a cache that adds flicker lowers it.
* VBench's leaderboard shows the dimension normalised as ``(score − 0.6293) / (1 − 0.6293)``
  (``scripts/constant.py``); the raw score is reported here, as ``vbench/temporal_flickering.py`` returns it.
"""

from __future__ import annotations

import numpy as np

from .protocols import as_video


def temporal_flickering(video) -> float | None:
    """VBench's temporal-flickering score of ``video`` (floats in [0, 1]; quantised to 8 bits, ``round(x·255)``,
    as a file stores them; frames decoded from a file are already 8-bit). ``None`` for a single frame."""
    frames = as_video(video)
    if len(frames) < 2:
        return None
    pixels = np.round(np.clip(frames, 0, 1) * 255).astype(np.float32)
    mae = [float(np.mean(np.abs(pixels[i] - pixels[i + 1]))) for i in range(len(pixels) - 1)]
    return (255.0 - float(np.mean(mae))) / 255.0


def flicker_added(video, reference) -> float | None:
    """How much steadier the reference is than ``video`` by :func:`temporal_flickering` (positive: the video
    flickers more than its reference); ``None`` for single frames."""
    a, b = temporal_flickering(video), temporal_flickering(reference)
    return None if a is None or b is None else b - a


__all__ = ["flicker_added", "temporal_flickering"]

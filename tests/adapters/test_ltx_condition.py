"""``LTXConditionPipeline``: its forward gets ``video_coords`` (and, for a condition placed at a later frame,
conditioning tokens prepended to the sequence) instead of ``num_frames``/``height``/``width``. The token-grid
methods read the grid from those coordinates: FasterCache (its CFG-Cache lays the output out as frames) and
AdaCache with MoReg (its motion score compares frames) run, report, and disable bit-identically — without a
conditioning image, with one as the first frame, and with one at a later frame (extra tokens)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from tiny_diffusers import eval_mode, frames_of, red_image, tiny_ltx_pipeline

import diffcache
from diffcache.adapters import find_adapter
from diffcache.adapters.ltx import grid_from_coords
from diffcache.errors import NothingSkippedWarning, UnsupportedModelError

STEPS = 8
CONDITIONS = {"none": None, "first frame": 0, "later frame": 8}


@pytest.fixture(scope="module")
def pipe():
    from diffusers import LTXConditionPipeline

    base = tiny_ltx_pipeline(num_layers=3)
    return eval_mode(LTXConditionPipeline(**base.components))


def _call(pipe, frame_index, steps=STEPS):
    image = {} if frame_index is None else dict(image=red_image(32), frame_index=frame_index)
    return frames_of(pipe(**image, prompt="a cat surfing", negative_prompt="dog", height=32, width=32, num_frames=9,
                          num_inference_steps=steps, guidance_scale=5.0, output_type="np",
                          generator=torch.Generator().manual_seed(0)))


def _forward_kwargs(pipe, frame_index):
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, a, k: seen.append(dict(k)), with_kwargs=True)
    try:
        _call(pipe, frame_index, steps=1)
    finally:
        hook.remove()
    return seen[0]


@pytest.mark.parametrize("condition", list(CONDITIONS))
def test_grid_from_video_coords(pipe, condition):
    """3 latent frames of 8 × 8 tokens, plus one prepended conditioning frame for an image at a later frame."""
    kwargs = _forward_kwargs(pipe, CONDITIONS[condition])
    assert kwargs.get("num_frames") is None and kwargs["video_coords"] is not None
    frames = 4 if condition == "later frame" else 3
    assert kwargs["hidden_states"].shape[1] == frames * 64
    assert find_adapter(pipe.transformer).token_layout(pipe.transformer, (), kwargs) == (frames, 8, 8)


def test_coordinates_without_a_grid_are_refused():
    coords = torch.stack(torch.meshgrid(torch.arange(2.0), torch.arange(3.0), torch.arange(4.0), indexing="ij"))
    coords = coords.reshape(1, 3, 24)
    assert grid_from_coords(coords) == (2, 3, 4)
    assert grid_from_coords(torch.stack([coords, coords + 1], dim=-1)) == (2, 3, 4)  # LTX-2's [start, end)
    with pytest.raises(UnsupportedModelError, match="do not form whole frames"):
        grid_from_coords(coords[:, :, torch.randperm(24, generator=torch.Generator().manual_seed(0))])
    with pytest.raises(UnsupportedModelError, match="do not form whole frames"):
        grid_from_coords(coords[:, :, 1:])


@pytest.mark.parametrize("condition", list(CONDITIONS))
@pytest.mark.parametrize("method, preset", [("fastercache", None), ("adacache", "fast-moreg")])
def test_token_grid_methods_run_and_disable_bit_identically(pipe, condition, method, preset):
    frame_index = CONDITIONS[condition]
    reference = _call(pipe, frame_index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        handle = diffcache.enable(pipe, method, preset=preset)
        try:
            cached = _call(pipe, frame_index)
        finally:
            report = handle.report()
            handle.disable()
    steps = report.calls[-1].steps
    assert len(steps) == STEPS and np.isfinite(cached).all() and cached.shape == reference.shape
    if method == "fastercache":  # CFG-Cache rebuilt uncond from cond on the output laid out as frames
        assert any(s.values.get("uncond") == "rebuilt" for s in steps)
    else:  # MoReg measured motion between frames of the residual
        assert any("motion_raw" in s.values for s in steps)
    np.testing.assert_array_equal(_call(pipe, frame_index), reference)

"""SkyReels-V2 beyond the contract's SkyReelsV2Pipeline: the image-to-video and the three diffusion-forcing
pipelines run the step- and block-level methods; the asynchronous diffusion-forcing loop is refused at its first
forward; a long video is one call per window; HSA refuses causal blocks; the token-sparse forward reproduces the
model's forward, per-frame timesteps and fps included."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from tiny_families.skyreels_v2 import (i2v_call, skyreels_call, tiny_skyreels_v2_df_pipeline,
                                       tiny_skyreels_v2_i2v_pipeline, tiny_skyreels_v2_pipeline)
from tiny_parts import red_image

import diffcache
from diffcache.adapters import find_adapter
from diffcache.errors import CallRefusedError, NothingSkippedWarning, UnsupportedModelError

STEPS = 6
PIPELINES = {
    "SkyReelsV2ImageToVideoPipeline": (tiny_skyreels_v2_i2v_pipeline, i2v_call, {}),
    "SkyReelsV2DiffusionForcingPipeline": (lambda: tiny_skyreels_v2_df_pipeline("t2v"), skyreels_call,
                                           dict(base_num_frames=5)),
    "SkyReelsV2DiffusionForcingImageToVideoPipeline": (lambda: tiny_skyreels_v2_df_pipeline("i2v"), i2v_call,
                                                       dict(base_num_frames=5)),
    "SkyReelsV2DiffusionForcingVideoToVideoPipeline": (
        lambda: tiny_skyreels_v2_df_pipeline("v2v"), skyreels_call,
        dict(video=[red_image(32)] * 5, num_frames=9, base_num_frames=9, overlap_history=5)),
}
_BUILT: dict = {}


def _pipe(name):
    if name not in _BUILT:
        _BUILT[name] = PIPELINES[name][0]()
    return _BUILT[name]


def _run(name, steps=STEPS, **extra):
    _, call, options = PIPELINES[name]
    return call(_pipe(name), steps, **{**options, **extra})


@pytest.mark.parametrize("method, options", [
    ("fbcache", dict(threshold=0.3)),  # the random tiny model's first-block residual settles enough for reuse
    ("adacache", {}),
    ("teacache", dict(coefficients=(1.0, 0.0), threshold=0.3)),  # no SkyReels-V2 preset: own coefficients
])
@pytest.mark.parametrize("name", list(PIPELINES))
def test_skyreels_pipelines_run_the_methods(name, method, options):
    pipe = _pipe(name)
    reference = _run(name)
    assert type(pipe).__name__ == name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        handle = diffcache.enable(pipe, method, **options)
        try:
            cached = _run(name)
        finally:
            handle.disable()
    call = handle.report().calls[-1]
    assert np.isfinite(cached).all() and cached.shape == reference.shape
    assert call.num_steps == STEPS and len(call.steps) == STEPS and len(handle.report().calls) == 1
    assert all(step.branches == ["cond", "uncond"] for step in call.steps)
    if method != "adacache":  # AdaCache's codebook at 6 steps keeps every step of this random model
        assert sum(step.blocks_reused for step in call.steps) > 0
    np.testing.assert_array_equal(_run(name), reference)  # disable: as if never enabled


def test_skyreels_diffusion_forcing_asynchronous_loop_is_refused_before_any_work():
    """ar_step > 0 runs more iterations than the scheduler has timesteps (frames at their own points of the
    schedule): refused at the first forward, naming the pipeline and what works."""
    name = "SkyReelsV2DiffusionForcingPipeline"
    pipe = _pipe(name)
    reference = _run(name)
    ran = []
    hook = pipe.transformer.blocks[0].register_forward_pre_hook(lambda *a: ran.append(1))
    handle = diffcache.enable(pipe, "fbcache")
    try:
        with pytest.raises(CallRefusedError, match=f"{name} runs 7 denoising iterations over 6 timesteps.*ar_step=0"):
            _run(name, ar_step=1)
    finally:
        handle.disable()
        hook.remove()
    assert not ran and not handle.report().calls
    np.testing.assert_array_equal(_run(name), reference)


def test_skyreels_diffusion_forcing_synchronous_steps_follow_the_scheduler():
    """Synchronous diffusion forcing: one forward per branch and step, the step tracker reading the last frame's
    timestep (the image-to-video prefix frame sits at timestep 0)."""
    name = "SkyReelsV2DiffusionForcingImageToVideoPipeline"
    pipe = _pipe(name)
    timesteps = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a, k: timesteps.append(k["timestep"].clone()), with_kwargs=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        handle = diffcache.enable(pipe, "fbcache")
        try:
            _run(name)
        finally:
            handle.disable()
            hook.remove()
    assert timesteps[0].shape == (1, 2) and timesteps[0][0, 0] == 0  # per latent frame; the prefix first
    steps = handle.report().calls[-1].steps
    expected = [float(t[0, -1]) for t in timesteps[0::2]]
    assert [float(t) for t in pipe.scheduler.timesteps] == expected
    assert [s.step for s in steps] == list(range(STEPS))


def test_skyreels_long_video_is_one_call_per_window():
    name = "SkyReelsV2DiffusionForcingPipeline"
    pipe = _pipe(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        handle = diffcache.enable(pipe, "adacache")
        try:
            frames = skyreels_call(pipe, STEPS, num_frames=9, base_num_frames=5, overlap_history=1)
        finally:
            handle.disable()
    assert np.isfinite(frames).all()
    assert [(c.num_steps, len(c.steps)) for c in handle.report().calls] == [(STEPS, STEPS), (STEPS, STEPS)]


def test_skyreels_hsa_refuses_causal_blocks_before_any_work():
    """Causal blocks (``num_frame_per_block`` > 1: the diffusion-forcing pipelines' ``causal_block_size``, which stays
    set on the transformer) give self-attention a mask HSA's synchronised attention does not have."""
    pipe = tiny_skyreels_v2_pipeline()
    pipe.transformer._set_ar_attention(5)
    ran = []
    hook = pipe.transformer.blocks[0].register_forward_pre_hook(lambda *a: ran.append(1))
    handle = diffcache.enable(pipe, "hsa")
    try:
        with pytest.raises(CallRefusedError, match="causally in blocks of 5 frames.*causal_block_size=1"):
            skyreels_call(pipe, 10)
    finally:
        handle.disable()
        hook.remove()
    assert not ran
    pipe.transformer._set_ar_attention(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        with diffcache.enable(pipe, "hsa") as handle:
            frames = skyreels_call(pipe, 10)
    assert np.isfinite(frames).all()
    assert any((s.active_fraction or 1) < 1 for s in handle.report().calls[-1].steps)


def test_skyreels_hsa_refuses_the_diffusion_forcing_sampler():
    """The diffusion-forcing pipelines sample with UniPC (per frame); HSA's cached Euler update is exact only for
    flow-matching Euler, which these pipelines cannot use (their loop passes integer timesteps, which
    FlowMatchEulerDiscreteScheduler.step refuses)."""
    with pytest.raises(UnsupportedModelError, match="UniPCMultistepScheduler"):
        diffcache.enable(_pipe("SkyReelsV2DiffusionForcingPipeline"), "hsa")


def _forward_kwargs(pipe, call, steps=1, **extra):
    forwards = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, a, k: forwards.append(dict(k)), with_kwargs=True)
    try:
        call(pipe, steps, **extra)
    finally:
        hook.remove()
    return {**forwards[0], "return_dict": False}


@pytest.mark.parametrize("kind", ["t2v", "i2v", "diffusion-forcing"])
def test_skyreels_hsa_sparse_forward_is_the_forward_for_any_token_order(kind):
    if kind == "t2v":
        pipe, kwargs = tiny_skyreels_v2_pipeline(), None
        kwargs = _forward_kwargs(pipe, skyreels_call)
    elif kind == "i2v":
        pipe = _pipe("SkyReelsV2ImageToVideoPipeline")
        kwargs = _forward_kwargs(pipe, i2v_call)
    else:  # per-frame timesteps, all different, and the fps embedding
        pipe = _pipe("SkyReelsV2DiffusionForcingPipeline")
        kwargs = _forward_kwargs(pipe, skyreels_call, base_num_frames=5)
        kwargs["timestep"] = torch.tensor([[700.0, 300.0]])
        assert pipe.transformer.config.inject_sample_info and kwargs["enable_diffusion_forcing"]
    model = pipe.transformer
    adapter = find_adapter(model)
    with torch.no_grad():
        full = adapter.output_tokens(model, model(**kwargs)[0])
        order = torch.randperm(full.shape[1], generator=torch.Generator().manual_seed(0))[None]
        sparse = adapter.sparse_forward(model, (), kwargs, order)
    torch.testing.assert_close(sparse, full[:, order[0]], rtol=1e-4, atol=1e-5)

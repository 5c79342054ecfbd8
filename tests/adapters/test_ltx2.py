"""LTX-2 beyond the method contract (which runs every method on the tiny ``LTX2Pipeline``, CFG only):

* the token-sparse forward HSA runs is the model's own forward: with every video token active it gives the
  model's output, and for a subset of tokens (the K/V cache filled by a full forward of the same inputs) it gives
  the model's output at those tokens — video and audio, text-to-video and image-to-video (per-token timesteps);
* HSA at ``runtime=1.0`` computes every token at every step and gives the uncached video and audio;
* the block- and step-level caches cache *both* streams: a reused step on unchanged inputs gives back the computed
  step's video and audio;
* ``LTX2ImageToVideoPipeline`` and the pipeline's default three forwards per step (CFG, spatio-temporal and
  modality guidance: three branches) run with the methods and disable bit-identically.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from tiny_families.ltx2 import ltx2_call, tiny_ltx2_i2v_pipeline, tiny_ltx2_pipeline

import diffcache
from diffcache.adapters import find_adapter
from diffcache.errors import NothingSkippedWarning
from diffcache.methods.hsa import _BranchState


@pytest.fixture(scope="module")
def pipe():
    return tiny_ltx2_pipeline()


@pytest.fixture(scope="module")
def i2v_pipe():
    return tiny_ltx2_i2v_pipeline()


def _first_forward(pipe, call):
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, a, k: seen.append(dict(k)), with_kwargs=True)
    try:
        call(pipe, 2)
    finally:
        hook.remove()
    return seen[0]


def _quiet_enable(pipe, method, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        return diffcache.enable(pipe, method, **options)


@pytest.mark.parametrize("kind", ["t2v", "i2v"])
def test_sparse_forward_is_the_models_forward(pipe, i2v_pipe, kind):
    pipe = pipe if kind == "t2v" else i2v_pipe
    kwargs = _first_forward(pipe, ltx2_call(image=kind == "i2v"))
    model = pipe.transformer
    if kind == "i2v":
        assert kwargs["timestep"].ndim == 2  # per-token video timesteps: the first frame is given
    with torch.no_grad():
        video, audio = model(**kwargs)
    adapter = find_adapter(model)
    handle = diffcache.enable(pipe, "hsa")
    runtime = handle.runtime
    try:
        runtime.branch = _BranchState(len(runtime.layers))
        with torch.no_grad():  # a full forward through the synchronised attention fills the K/V cache
            full_video, full_audio = type(model).forward(model, **kwargs)
            torch.testing.assert_close(full_video, video)
            torch.testing.assert_close(full_audio, audio)
            batch, tokens = kwargs["hidden_states"].shape[:2]
            generator = torch.Generator().manual_seed(0)
            subset = torch.stack([torch.randperm(tokens, generator=generator)[:tokens // 3].sort().values
                                  for _ in range(batch)])
            for active in (torch.arange(tokens).expand(batch, -1), subset):
                runtime.active = active
                sparse_video, sparse_audio = adapter.sparse_forward(model, (), kwargs, active)
                expected = video.gather(1, active[:, :, None].expand(-1, -1, video.shape[-1]))
                torch.testing.assert_close(sparse_video, expected)
                torch.testing.assert_close(sparse_audio, audio)  # the audio saw every video token's K/V
            # the cache is read: stale keys for the inactive tokens change the active tokens' outputs
            runtime.branch.kv[0]["key"].add_(1.0)
            sparse_video, _ = adapter.sparse_forward(model, (), kwargs, subset)
            assert not torch.allclose(sparse_video, video.gather(1, subset[:, :, None].expand(-1, -1, video.shape[-1])))
    finally:
        runtime.branch, runtime.active = None, None
        handle.disable()


def test_hsa_at_full_runtime_gives_the_uncached_output(pipe):
    call = ltx2_call()
    reference = call(pipe, 8)
    handle = _quiet_enable(pipe, "hsa", runtime=1.0)
    try:
        cached = call(pipe, 8)
    finally:
        report = handle.report()
        handle.disable()
    assert all(s.active_fraction == 1.0 for s in report.calls[-1].steps)
    np.testing.assert_allclose(cached, reference, rtol=0, atol=1e-5)


def test_hsa_skips_video_tokens_and_keeps_the_audio(pipe):
    call = ltx2_call()
    handle = _quiet_enable(pipe, "hsa", preset="hsa-50")
    try:
        cached = call(pipe, 10)
    finally:
        report = handle.report()
        handle.disable()
    steps = report.calls[-1].steps
    assert len(steps) == 10 and np.isfinite(cached).all()
    assert min(s.active_fraction for s in steps) < 1.0


@pytest.mark.parametrize("method, options", [("fbcache", dict(threshold=1e9)),
                                             ("adacache", dict(preset="fast", codebook=((1.0, 2),)))])
def test_a_reused_step_gives_back_both_streams(pipe, method, options):
    """The same inputs at every step: a reused step must return the computed step's video *and* audio."""
    kwargs = _first_forward(pipe, ltx2_call())
    model = pipe.transformer
    steps = 6
    handle = _quiet_enable(model, method, num_inference_steps=steps, **options)
    outputs = []
    try:
        with torch.no_grad():
            for step in range(steps):
                with model.cache_context("cond_uncond", step_index=step, num_inference_steps=steps):
                    outputs.append(model(**{**kwargs, "return_dict": False}))
    finally:
        report = handle.report()
        handle.disable()
    reused = [i for i, s in enumerate(report.calls[-1].steps) if s.blocks_reused]
    assert reused, "nothing was reused"
    for i in reused:
        torch.testing.assert_close(outputs[i][0], outputs[0][0])
        torch.testing.assert_close(outputs[i][1], outputs[0][1])


# TeaCache has no published LTX-2 coefficients (its default preset is refused): own ones, as from calibrate
@pytest.mark.parametrize("method, options", [("fbcache", {}), ("adacache", {}), ("pab", {}), ("fastercache", {}),
                                             ("hsa", {}), ("teacache", dict(coefficients=(1.0, 0.0), threshold=0.2))])
@pytest.mark.parametrize("kind", ["i2v", "three-branches"])
def test_other_pipelines_and_branches(pipe, i2v_pipe, kind, method, options):
    pipe = i2v_pipe if kind == "i2v" else pipe
    call = ltx2_call(image=kind == "i2v", extra_guidance=kind == "three-branches")
    steps = 8
    reference = call(pipe, steps)
    handle = _quiet_enable(pipe, method, **options)
    try:
        cached = call(pipe, steps)
    finally:
        report = handle.report()
        handle.disable()
    records = report.calls[-1].steps
    assert len(records) == steps and np.isfinite(cached).all() and cached.shape == reference.shape
    if kind == "three-branches":
        assert all(r.branches == ["cond_uncond", "uncond_stg", "uncond_modality"] for r in records)
    if method == "teacache":
        assert any(r.blocks_reused for r in records), "teacache reused nothing"
    np.testing.assert_array_equal(call(pipe, steps), reference)


@pytest.fixture(scope="module")
def condition_pipe():
    from diffusers import LTX2ConditionPipeline
    from tiny_families.ltx2 import tiny_ltx2_components
    from tiny_parts import eval_mode

    return eval_mode(LTX2ConditionPipeline(**tiny_ltx2_components()))


def _condition_call(index: int):
    """``LTX2ConditionPipeline`` with the red image as a condition at latent frame ``index``: 0 replaces the first
    frame; a later one is appended to the sequence as one more latent frame of keyframe tokens."""
    from diffusers.pipelines.ltx2 import LTX2VideoCondition
    from tiny_families.ltx2 import SIZE, frames_and_audio
    from tiny_parts import red_image

    def call(pipe, steps):
        return frames_and_audio(pipe(
            conditions=[LTX2VideoCondition(frames=red_image(32), index=index, crf=0)], prompt="a cat surfing",
            negative_prompt="dog", num_inference_steps=steps, guidance_scale=5.0, audio_guidance_scale=5.0,
            stg_scale=0.0, audio_stg_scale=0.0, modality_scale=1.0, audio_modality_scale=1.0, max_sequence_length=16,
            output_type="np", generator=torch.Generator().manual_seed(0), **SIZE))
    return call


@pytest.mark.parametrize("index", [0, 2])
def test_condition_pipeline_grid_with_keyframe_tokens(condition_pipe, index):
    kwargs = _first_forward(condition_pipe, _condition_call(index))
    frames = 3 if index == 0 else 4  # an appended keyframe is one more latent frame of 8 x 8 tokens
    assert kwargs["num_frames"] == 3 and kwargs["hidden_states"].shape[1] == frames * 64
    assert find_adapter(condition_pipe.transformer).token_layout(condition_pipe.transformer, (), kwargs) == (frames, 8, 8)


@pytest.mark.parametrize("method", ["adacache", "fastercache", "hsa"])
@pytest.mark.parametrize("index", [0, 2])
def test_condition_pipeline_methods(condition_pipe, index, method):
    call = _condition_call(index)
    reference = call(condition_pipe, 8)
    handle = _quiet_enable(condition_pipe, method)
    try:
        cached = call(condition_pipe, 8)
    finally:
        report = handle.report()
        handle.disable()
    assert len(report.calls[-1].steps) == 8 and np.isfinite(cached).all() and cached.shape == reference.shape
    np.testing.assert_array_equal(call(condition_pipe, 8), reference)

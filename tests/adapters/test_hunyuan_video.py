"""The HunyuanVideo adapters on their tiny real pipelines: the block stack and split points, the TeaCache signal
against the official TeaCache4HunyuanVideo formula, AdaCache's split on dual-stream blocks, the image-to-video
pipelines (HunyuanVideoImageToVideoPipeline with token-replace blocks, HunyuanVideo15ImageToVideoPipeline) and
FramePack's sections as the step tracker sees them. The method contract covers the text-to-video pipelines
(tests/test_method_contract.py -k Hunyuan)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from tiny_families.hunyuan_video import (framepack_call, hunyuan15_i2v_call, hunyuan_i2v_call, hunyuan_video_call,
                                         tiny_framepack_pipeline, tiny_hunyuan15_i2v_pipeline,
                                         tiny_hunyuan_i2v_pipeline, tiny_hunyuan_video_pipeline)

import diffcache
from diffcache.adapters import find_adapter
from diffcache.errors import NothingSkippedWarning, UnsupportedModelError

T2V_CALL = hunyuan_video_call(dict(height=32, width=32, num_frames=9))


@pytest.fixture(scope="module")
def t2v():
    return tiny_hunyuan_video_pipeline()


def _enable(pipe, method, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        return diffcache.enable(pipe, method, **options)


def test_blocks_in_execution_order_and_their_split_points(t2v):
    model = t2v.transformer
    adapter = find_adapter(model)
    blocks = adapter.blocks(model)
    assert blocks == [*model.transformer_blocks, *model.single_transformer_blocks]
    assert [adapter.split_module(b) for b in blocks] == [b.norm2 for b in model.transformer_blocks] + [None]
    assert all(adapter.attention_modules(b) == {"self": b.attn} for b in blocks)


def test_modulated_input_is_the_official_teacache_signal(t2v):
    """TeaCache4HunyuanVideo: ``modulate(img_norm1(img), shift=img_mod1_shift, scale=img_mod1_scale)`` with
    ``img_mod`` = SiLU + Linear of the conditioning vector, chunked in 6 (shift, scale first), and ``img_norm1`` a
    LayerNorm without affine, eps 1e-6."""
    model = t2v.transformer
    block = model.transformer_blocks[0]
    seen = {}
    hook = block.register_forward_pre_hook(lambda m, a, k: seen.setdefault("call", (a, k)), with_kwargs=True)
    T2V_CALL(t2v, 1, guidance=1.0)
    hook.remove()
    args, kwargs = seen["call"]
    img, vec = args[0], args[2]
    shift, scale = block.norm1.linear(torch.nn.functional.silu(vec)).chunk(6, dim=-1)[:2]
    official = torch.nn.functional.layer_norm(img, (img.shape[-1],), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    torch.testing.assert_close(find_adapter(model).modulated_input(block, args, kwargs), official, rtol=0, atol=1e-6)


def test_adacache_split_is_exact_on_dual_stream_blocks():
    """Zeroing the joint attention's video output zeros a dual-stream metric block's self-attention residual (the
    split point is the video stream's norm2), while the stack's residual — one per stream, video and text — is not
    zero: cross-stream attention is gone, the MLPs still update both streams."""
    pipe = tiny_hunyuan_video_pipeline()
    model = pipe.transformer
    for block in model.transformer_blocks:
        torch.nn.init.zeros_(block.attn.to_out[0].weight)
        torch.nn.init.zeros_(block.attn.to_out[0].bias)
    with _enable(pipe, "adacache", preset="fast", metric_blocks=0) as handle:
        T2V_CALL(pipe, 6, guidance=1.0)
        states = list(handle.runtime.states.values())
        assert any(state.metric for state in states)
        for state in states:
            assert all(float(m.abs().max()) == 0.0 for m in state.metric.values() if m is not None)
            assert len(state.residual) == 2  # both streams
            assert all(float(r.abs().max()) > 0 for r in state.residual)


def test_adacache_reused_blocks_return_the_computed_output(t2v):
    model = t2v.transformer
    seen = {}
    hook = model.register_forward_pre_hook(lambda m, a, k: seen.setdefault("call", (a, k)), with_kwargs=True)
    T2V_CALL(t2v, 1, guidance=1.0)
    hook.remove()
    args, kwargs = seen["call"]
    kwargs = {k: v for k, v in kwargs.items() if k != "return_dict"}
    outputs = []
    with _enable(model, "adacache", preset="fast", num_inference_steps=30) as handle:
        for step in range(3):  # identical inputs: steps 1, 2 computed, step 3 reused (distance 0 -> rate 6)
            with model.cache_context("cond", step_index=step, num_inference_steps=30):
                outputs.append(model(*args, **kwargs, return_dict=False)[0])
        steps = handle.report().calls[-1].steps
    assert [s.computed for s in steps] == [True, True, False]
    torch.testing.assert_close(outputs[2], outputs[1], atol=1e-5, rtol=1e-5)


def test_framepack_refuses_what_needs_a_token_grid():
    pipe = tiny_framepack_pipeline()
    with pytest.raises(UnsupportedModelError, match="fastercache does not support HunyuanVideo Framepack.*token grid"):
        diffcache.enable(pipe, "fastercache")
    with pytest.raises(UnsupportedModelError, match="adacache:fast-moreg needs a token grid"):
        diffcache.enable(pipe, "adacache")
    with pytest.raises(UnsupportedModelError, match="hsa does not support HunyuanVideo Framepack.*token-sparse"):
        diffcache.enable(pipe, "hsa")


def test_framepack_sections_are_calls_of_the_report():
    """Two sections (9 frames, a 5-frame window): one pipeline call is two calls in the report, each a full
    denoising loop of its own steps."""
    pipe = tiny_framepack_pipeline()
    call = framepack_call(num_frames=9, latent_window_size=2)
    reference = call(pipe, 6)
    with _enable(pipe, "fbcache", threshold=0.5) as handle:
        cached = call(pipe, 6)
        calls = handle.report().calls
    assert [(c.num_steps, len(c.steps)) for c in calls] == [(6, 6), (6, 6)]
    assert np.isfinite(cached).all() and cached.shape == reference.shape
    np.testing.assert_array_equal(call(pipe, 6), reference)


IMAGE_TO_VIDEO = {  # and HunyuanVideo's text-to-video pipeline, on which the contract's TeaCache preset is refused
    "HunyuanVideoPipeline": (tiny_hunyuan_video_pipeline, T2V_CALL),
    "HunyuanVideoImageToVideoPipeline": (tiny_hunyuan_i2v_pipeline, hunyuan_i2v_call),
    "HunyuanVideo15ImageToVideoPipeline": (tiny_hunyuan15_i2v_pipeline, hunyuan15_i2v_call),
    "HunyuanVideoFramepackPipeline": (tiny_framepack_pipeline, framepack_call()),
}


@pytest.mark.parametrize("pipeline", IMAGE_TO_VIDEO)
@pytest.mark.parametrize("method, options", [
    ("fbcache", {"threshold": 0.5}),
    ("adacache", {"preset": "fast", "codebook": ((100.0, 3),)}),  # rate 3: the published codebooks at 6 steps are 1
    ("teacache", {"coefficients": (1.0, 0.0), "threshold": 0.5}),
])
def test_image_to_video_pipelines(pipeline, method, options):
    build, call = IMAGE_TO_VIDEO[pipeline]
    pipe = build()
    assert type(pipe).__name__ == pipeline
    reference = call(pipe, 6)
    with _enable(pipe, method, **options) as handle:
        cached = call(pipe, 6)
        report = handle.report().calls[-1]
    assert np.isfinite(cached).all() and cached.shape == reference.shape
    assert len(report.steps) == report.num_steps == 6
    assert sum(s.blocks_reused for s in report.steps) > 0
    np.testing.assert_array_equal(call(pipe, 6), reference)  # disabled: bit-identical to never enabling


def test_token_replace_modulated_input_modulates_the_first_frame_apart():
    """HunyuanVideo-I2V: the first frame's tokens get the token-replace modulation, the others the timestep's."""
    pipe = tiny_hunyuan_i2v_pipeline()
    model = pipe.transformer
    block = model.transformer_blocks[0]
    seen = {}
    hook = block.register_forward_pre_hook(lambda m, a, k: seen.setdefault("call", (a, k)), with_kwargs=True)
    hunyuan_i2v_call(pipe, 1, guidance=1.0)
    hook.remove()
    args, kwargs = seen["call"]
    img, temb, token_replace_emb, num_tokens = args[0], args[2], args[5], args[6]
    signal = find_adapter(model).modulated_input(block, args, kwargs)
    normed = torch.nn.functional.layer_norm(img, (img.shape[-1],), eps=1e-6)
    for emb, tokens in ((token_replace_emb, slice(None, num_tokens)), (temb, slice(num_tokens, None))):
        shift, scale = block.norm1.linear(torch.nn.functional.silu(emb)).chunk(6, dim=-1)[:2]
        expected = normed[:, tokens] * (1 + scale[:, None]) + shift[:, None]
        torch.testing.assert_close(signal[:, tokens], expected, rtol=0, atol=1e-6)

"""HSA on LTX-Video (``LTXVideoTransformer3DModel``) beyond the method contract (which runs it on the tiny
``LTXPipeline``):

* the token-sparse forward is the model's own forward: with every token active it gives the model's output, and for
  a subset of tokens (the K/V cache filled by a full forward of the same inputs) the model's output at those
  tokens — text-to-video (``LTXPipeline``: RoPE from the sizes), image-to-video (``LTXImageToVideoPipeline``:
  per-token timesteps, the first frame's are 0) and ``LTXConditionPipeline`` (RoPE from ``video_coords``, a
  conditioning frame prepended to the sequence);
* HSA at ``runtime=1.0`` gives the uncached video; a preset skips tokens on some steps, gives a finite video and
  ``disable()`` gives back the uncached pipeline bit for bit;
* a self-attention processor the synchronised attention does not reproduce is refused.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from diffusers.models.transformers.transformer_ltx import LTXVideoAttnProcessor
from tiny_diffusers import eval_mode, frames_of, red_image, tiny_ltx_pipeline

import diffcache
from diffcache.adapters import find_adapter
from diffcache.errors import NothingSkippedWarning, UnsupportedModelError
from diffcache.methods.hsa import _BranchState

KINDS = ("t2v", "i2v", "condition")


@pytest.fixture(scope="module")
def pipes():
    from diffusers import LTXConditionPipeline, LTXImageToVideoPipeline

    base = tiny_ltx_pipeline(num_layers=2)
    return {"t2v": base, "i2v": eval_mode(LTXImageToVideoPipeline(**base.components)),
            "condition": eval_mode(LTXConditionPipeline(**base.components))}


def _call(pipe, kind, steps, guidance=5.0):
    image = {"t2v": {}, "i2v": dict(image=red_image(32)), "condition": dict(image=red_image(32), frame_index=8)}
    return frames_of(pipe(**image[kind], prompt="a cat surfing", negative_prompt="dog", height=32, width=32,
                          num_frames=9, num_inference_steps=steps, guidance_scale=guidance, output_type="np",
                          generator=torch.Generator().manual_seed(0)))


def _first_forward(pipe, kind):
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, a, k: seen.append(dict(k)), with_kwargs=True)
    try:
        _call(pipe, kind, 2)
    finally:
        hook.remove()
    return seen[0]


def _quiet_enable(pipe, method, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        return diffcache.enable(pipe, method, **options)


def _at(tensor, active):
    return tensor.gather(1, active[:, :, None].expand(-1, -1, tensor.shape[-1]))


@pytest.mark.parametrize("kind", KINDS)
def test_sparse_forward_is_the_models_forward(pipes, kind):
    pipe = pipes[kind]
    kwargs = {**_first_forward(pipe, kind), "return_dict": False}
    model = pipe.transformer
    if kind == "i2v":  # per-token timesteps: the first latent frame (8 x 8 tokens) is given, timestep 0
        assert kwargs["timestep"].shape == kwargs["hidden_states"].shape[:2]
        assert (kwargs["timestep"][:, :64] == 0).all() and (kwargs["timestep"][:, 64:] > 0).all()
    if kind == "condition":  # RoPE from video_coords; a conditioning frame prepended (4 latent frames)
        assert kwargs.get("num_frames") is None and kwargs["video_coords"] is not None
        assert kwargs["hidden_states"].shape[1] == 4 * 64
    with torch.no_grad():
        (velocity,) = model(**kwargs)
    adapter = find_adapter(model)
    handle = diffcache.enable(pipe, "hsa")
    runtime = handle.runtime
    try:
        runtime.branch = _BranchState(len(runtime.layers))
        with torch.no_grad():  # a full forward through the synchronised attention fills the K/V cache
            (full,) = type(model).forward(model, **kwargs)
            torch.testing.assert_close(full, velocity)
            batch, tokens = kwargs["hidden_states"].shape[:2]
            generator = torch.Generator().manual_seed(0)
            subset = torch.stack([torch.randperm(tokens, generator=generator)[:tokens // 3].sort().values
                                  for _ in range(batch)])
            for active in (torch.arange(tokens).expand(batch, -1), subset):
                runtime.active = active
                sparse = adapter.sparse_forward(model, (), kwargs, active)
                assert sparse.shape == (batch, active.shape[1], velocity.shape[-1])
                torch.testing.assert_close(sparse, _at(velocity, active))
            # the cache is read: stale keys for the inactive tokens change the active tokens' outputs
            runtime.branch.kv[0]["key"].add_(1.0)
            sparse = adapter.sparse_forward(model, (), kwargs, subset)
            assert not torch.allclose(sparse, _at(velocity, subset))
    finally:
        runtime.branch, runtime.active = None, None
        handle.disable()


@pytest.mark.parametrize("kind", KINDS)
def test_hsa_at_full_runtime_gives_the_uncached_output(pipes, kind):
    pipe = pipes[kind]
    reference = _call(pipe, kind, 8)
    handle = _quiet_enable(pipe, "hsa", runtime=1.0)
    try:
        cached = _call(pipe, kind, 8)
    finally:
        report = handle.report()
        handle.disable()
    steps = report.calls[-1].steps
    assert len(steps) == 8 and all(s.active_fraction == 1.0 for s in steps)
    np.testing.assert_allclose(cached, reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_hsa_skips_tokens_and_disables_bit_identically(pipes, kind):
    pipe = pipes[kind]
    reference = _call(pipe, kind, 20)
    handle = _quiet_enable(pipe, "hsa", preset="hsa-50")
    try:
        cached = _call(pipe, kind, 20)
    finally:
        report = handle.report()
        handle.disable()
    steps = report.calls[-1].steps
    assert len(steps) == 20 and np.isfinite(cached).all() and cached.shape == reference.shape
    fractions = [s.active_fraction for s in steps]
    assert min(fractions) < 1.0 and fractions[0] == fractions[-1] == 1.0
    assert all(s.blocks_computed == 2 for s in steps)  # every block runs, for the active tokens
    np.testing.assert_array_equal(_call(pipe, kind, 20), reference)


def test_another_self_attention_processor_is_refused():
    class TracingProcessor(LTXVideoAttnProcessor):
        pass

    pipe = tiny_ltx_pipeline()
    pipe.transformer.transformer_blocks[0].attn1.set_processor(TracingProcessor())
    with pytest.raises(UnsupportedModelError, match="LTXVideoAttnProcessor.*TracingProcessor"):
        diffcache.enable(pipe, "hsa")

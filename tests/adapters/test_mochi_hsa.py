"""HSA on Mochi beyond the method contract (which runs it on the tiny 2-token ``MochiPipeline``):

* the token-sparse forward is the model's forward: with every video token active (in any order) it gives the
  model's output, and for a subset of tokens (the K/V cache filled by a full forward of the same inputs) it gives
  the model's output at those tokens — the video output and the text stream after every block — with per-sample
  text masks of different lengths (batched CFG: a short negative prompt and a longer prompt);
* the K/V cache is read: stale keys of the inactive tokens change the active tokens' outputs;
* other attention processors are refused;
* HSA in ``MochiPipeline`` at 20 steps skips tokens, stays finite, and ``disable()`` is bit-identical.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from tiny_families.mochi import tiny_mochi_pipeline

import diffcache
from diffcache.adapters import find_adapter
from diffcache.errors import NothingSkippedWarning, UnsupportedModelError
from diffcache.methods.hsa import _BranchState

# 32 × 48 px, 7 frames: a 2 × 4 × 6 latent, 2 × 2 × 3 = 12 video tokens (the contract's size has only 2)
HSA_SIZE = dict(height=32, width=48, num_frames=7, max_sequence_length=16)


@pytest.fixture(scope="module")
def pipe():
    return tiny_mochi_pipeline()


def _inputs(model, batch=2, frames=3, height=8, width=10, text=16, seed=0):
    """Forward arguments with ``frames × height/2 × width/2`` video tokens and per-sample text masks of different
    lengths (row 0: 5 valid tokens, row 1: 11)."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, text, dtype=torch.long)
    for row in range(batch):
        mask[row, :5 + 6 * row] = 1
    return dict(hidden_states=torch.randn(batch, model.config.in_channels, frames, height, width, generator=generator),
                encoder_hidden_states=torch.randn(batch, text, model.config.text_embed_dim, generator=generator),
                timestep=torch.tensor([700.0] * batch), encoder_attention_mask=mask, return_dict=False)


def _record_text(model, seen: list):
    """Hooks that append every block's returned text stream to ``seen``."""
    return [block.register_forward_hook(lambda m, a, out: seen.append(out[1])) for block in model.transformer_blocks]


def _gather(tokens, active):
    return tokens.gather(1, active[:, :, None].expand(-1, -1, tokens.shape[-1]))


def test_sparse_forward_is_the_models_forward(pipe):
    model = pipe.transformer
    adapter = find_adapter(model)
    kwargs = _inputs(model)
    reference_texts = []
    hooks = _record_text(model, reference_texts)
    with torch.no_grad():
        (reference,) = model(**kwargs)
    for hook in hooks:
        hook.remove()
    tokens = adapter.output_tokens(model, reference)
    batch, count = tokens.shape[:2]
    assert count == 3 * 4 * 5
    torch.testing.assert_close(adapter.tokens_to_output(model, tokens, (3, 4, 5)), reference, rtol=0, atol=0)
    with pytest.warns(UserWarning, match="bare denoiser"):
        handle = diffcache.enable(model, "hsa", num_inference_steps=20)
    runtime = handle.runtime
    try:
        runtime.branch = _BranchState(len(runtime.layers))
        with torch.no_grad():  # a full forward through the synchronised attention fills the K/V cache
            (full,) = type(model).forward(model, **kwargs)
            torch.testing.assert_close(full, reference)
            assert all(kv["key"].shape[1] == count for kv in runtime.branch.kv)
            generator = torch.Generator().manual_seed(1)
            every = torch.stack([torch.randperm(count, generator=generator) for _ in range(batch)])  # any order
            subset = torch.stack([torch.randperm(count, generator=generator)[:count // 3].sort().values
                                  for _ in range(batch)])
            for active in (every, subset):
                runtime.active = active
                texts = []
                hooks = _record_text(model, texts)
                try:
                    sparse = adapter.sparse_forward(model, (), kwargs, active)
                finally:
                    for hook in hooks:
                        hook.remove()
                torch.testing.assert_close(sparse, _gather(tokens, active))
                assert len(texts) == len(reference_texts)
                for text, expected in zip(texts, reference_texts):  # the text saw every video token's K/V
                    torch.testing.assert_close(text, expected)
            # the cache is read: stale keys for the inactive tokens change the active tokens' outputs
            runtime.branch.kv[0]["key"].add_(1.0)
            sparse = adapter.sparse_forward(model, (), kwargs, subset)
            assert not torch.allclose(sparse, _gather(tokens, subset))
    finally:
        runtime.branch, runtime.active = None, None
        handle.disable()


def test_other_attention_processors_are_refused():
    from diffusers.models.attention_processor import AttnProcessor2_0

    pipe = tiny_mochi_pipeline(num_layers=2)
    pipe.transformer.transformer_blocks[1].attn1.processor = AttnProcessor2_0()  # MochiAttention has no setter
    with pytest.raises(UnsupportedModelError, match="uses AttnProcessor2_0; restore the default processor"):
        diffcache.enable(pipe, "hsa")


def _call(pipe, steps):
    return pipe(prompt="a cat surfing on a wave", negative_prompt="dog", num_inference_steps=steps,
                guidance_scale=5.0, output_type="latent", generator=torch.Generator().manual_seed(0),
                **HSA_SIZE).frames


def test_hsa_in_the_pipeline(pipe):
    reference = _call(pipe, 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        handle = diffcache.enable(pipe, "hsa", preset="hsa-50")
    try:
        cached = _call(pipe, 20)
    finally:
        report = handle.report()
        handle.disable()
    steps = report.calls[-1].steps
    assert len(steps) == 20 and torch.isfinite(cached).all() and cached.shape == reference.shape
    assert min(s.active_fraction for s in steps) < 1.0
    assert not torch.equal(cached, reference)  # tokens were really skipped
    np.testing.assert_array_equal(_call(pipe, 20).numpy(), reference.numpy())  # disable: bit-identical


def test_hsa_at_full_runtime_gives_the_uncached_output(pipe):
    reference = _call(pipe, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        handle = diffcache.enable(pipe, "hsa", runtime=1.0)
    try:
        cached = _call(pipe, 8)
    finally:
        report = handle.report()
        handle.disable()
    assert all(s.active_fraction == 1.0 for s in report.calls[-1].steps)
    torch.testing.assert_close(cached, reference, rtol=0, atol=1e-5)

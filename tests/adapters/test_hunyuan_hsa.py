"""HSA on HunyuanVideo (``HunyuanVideoAdapter``'s token-sparse forward) beyond the method contract:

* the sparse forward is the model's forward with the inactive video tokens gathered out: with every video token
  active it gives the model's output, and for a subset (the K/V cache filled by a full forward of the same inputs)
  the model's output at those tokens — text-to-video (text padding masks that differ per sample) and
  HunyuanVideo-I2V's token-replace blocks (first-frame tokens in different numbers per sample);
* the K/V cache is read (stale keys change the result) and the token order is the model's unpatchify order;
* HSA end to end in ``HunyuanVideoPipeline`` and ``HunyuanVideoImageToVideoPipeline``: finite, some steps sparse,
  ``runtime=1`` gives the uncached video, ``disable()`` is bit-identical to never enabling;
* a processor the synchronised attention does not reproduce is refused.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from tiny_families.hunyuan_video import (hunyuan_i2v_call, hunyuan_video_call, tiny_hunyuan_i2v_pipeline,
                                         tiny_hunyuan_video_pipeline)

import diffcache
from diffcache.adapters import find_adapter
from diffcache.errors import NothingSkippedWarning, UnsupportedModelError
from diffcache.methods.hsa import _BranchState

#: 64 × 64 px, 9 frames: 3 latent frames of 4 × 4 tokens (48 video tokens)
T2V_CALL = hunyuan_video_call(dict(height=64, width=64, num_frames=9))


@pytest.fixture(scope="module")
def t2v():
    return tiny_hunyuan_video_pipeline()


@pytest.fixture(scope="module")
def i2v():
    return tiny_hunyuan_i2v_pipeline()


def _first_forward(pipe, call, **options):
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, a, k: seen.append(dict(k)), with_kwargs=True)
    try:
        call(pipe, 1, guidance=1.0, **options)
    finally:
        hook.remove()
    return seen[0]


def _batch_of_two(kwargs):
    """Two samples with different latents and different text padding (sample 1 keeps 2 valid text tokens)."""
    if kwargs["hidden_states"].shape[0] == 1:  # the I2V pipeline makes one video per prompt (diffusers 0.42.1)
        g = torch.Generator().manual_seed(1)
        kwargs = {k: torch.cat([v, v]) if torch.is_tensor(v) else v for k, v in kwargs.items()}
        kwargs["hidden_states"][1] += 0.5 * torch.randn(kwargs["hidden_states"].shape[1:], generator=g)
    mask = kwargs["encoder_attention_mask"].clone()
    mask[1, 2:] = 0
    assert not torch.equal(mask[0], mask[1])
    return {**kwargs, "encoder_attention_mask": mask}


def _quiet_enable(pipe, method, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        return diffcache.enable(pipe, method, **options)


@pytest.mark.parametrize("kind", ["t2v", "i2v"])
def test_sparse_forward_is_the_models_forward(t2v, i2v, kind):
    pipe = t2v if kind == "t2v" else i2v
    kwargs = _batch_of_two(_first_forward(pipe, T2V_CALL, per_prompt=2) if kind == "t2v"
                           else _first_forward(pipe, hunyuan_i2v_call))
    model = pipe.transformer
    if kind == "i2v":
        assert model.config.image_condition_type == "token_replace"
    with torch.no_grad():
        reference = model(**kwargs)[0]
    adapter = find_adapter(model)
    grid = adapter.token_layout(model, (), kwargs)
    tokens = adapter.output_tokens(model, reference)
    batch, count = tokens.shape[:2]
    assert count == grid[0] * grid[1] * grid[2]
    assert torch.equal(adapter.tokens_to_output(model, tokens, grid), reference)
    # the token order is the model's: token 0 is the patch at the first frame's top-left corner
    p = model.config.patch_size
    assert torch.equal(tokens[:, 0].view(batch, -1, p, p), reference[:, :, 0, :p, :p])

    handle = diffcache.enable(pipe, "hsa")
    runtime = handle.runtime
    assert len(runtime.layers) == len(model.transformer_blocks) + len(model.single_transformer_blocks)
    try:
        runtime.branch = _BranchState(len(runtime.layers))
        with torch.no_grad():  # a full forward through the synchronised attention fills the K/V cache
            full = type(model).forward(model, **kwargs)[0]
            assert torch.equal(full, reference)  # it computes exactly what HunyuanVideoAttnProcessor2_0 does
            generator = torch.Generator().manual_seed(0)
            subset = torch.stack([torch.randperm(count, generator=generator)[:count // 2].sort().values
                                  for _ in range(batch)])
            shuffled = torch.stack([torch.randperm(count, generator=generator) for _ in range(batch)])
            first_frame = grid[1] * grid[2]
            if kind == "i2v":  # the token-replace modulation meets a different number of first-frame tokens per row
                subset[0, 0] = 0
                subset[1, :2] = 0
                subset = subset.sort(dim=1).values
                counts = (subset < first_frame).sum(1)
                assert counts.min() >= 1 and counts[0] != counts[1], counts
            for active in (torch.arange(count).expand(batch, -1), subset, shuffled):
                runtime.active = active
                sparse = adapter.sparse_forward(model, (), kwargs, active)
                expected = tokens.gather(1, active[:, :, None].expand(-1, -1, tokens.shape[-1]))
                torch.testing.assert_close(sparse, expected, atol=1e-5, rtol=1e-4)
            # the cache is read: stale keys for the inactive tokens change the active tokens' outputs
            runtime.branch.kv[-1]["key"].add_(1.0)
            runtime.active = subset
            stale = adapter.sparse_forward(model, (), kwargs, subset)
            assert not torch.allclose(stale, tokens.gather(1, subset[:, :, None].expand(-1, -1, tokens.shape[-1])))
    finally:
        runtime.branch = runtime.active = None
        handle.disable()


def test_hsa_end_to_end_in_hunyuan_video_pipeline(t2v):
    reference = T2V_CALL(t2v, 20, guidance=5.0)  # true CFG: two calls (branches) per step
    handle = _quiet_enable(t2v, "hsa")
    try:
        cached = T2V_CALL(t2v, 20, guidance=5.0)
    finally:
        report = handle.report()
        handle.disable()
    steps = report.calls[-1].steps
    assert len(steps) == 20 and np.isfinite(cached).all()
    fractions = [s.active_fraction for s in steps]
    assert min(fractions) < 0.5 and fractions[0] == 1.0 and fractions[-1] == 1.0, fractions
    assert not np.array_equal(cached, reference)
    assert np.array_equal(T2V_CALL(t2v, 20, guidance=5.0), reference)  # disable(): as if never enabled


def test_hsa_at_full_runtime_gives_the_uncached_video(t2v):
    reference = T2V_CALL(t2v, 8, guidance=5.0, per_prompt=2)
    with _quiet_enable(t2v, "hsa", runtime=1.0) as handle:
        cached = T2V_CALL(t2v, 8, guidance=5.0, per_prompt=2)
        report = handle.report()
    assert all(s.active_fraction == 1.0 for s in report.calls[-1].steps)
    np.testing.assert_allclose(cached, reference, rtol=0, atol=1e-5)


def test_hsa_end_to_end_in_the_image_to_video_pipeline(i2v):
    """HunyuanVideo-I2V (token-replace blocks); the pipeline steps every latent frame but the first (the image)."""
    reference = hunyuan_i2v_call(i2v, 12, guidance=5.0)
    handle = _quiet_enable(i2v, "hsa", preset="hsa-50")
    try:
        cached = hunyuan_i2v_call(i2v, 12, guidance=5.0)
    finally:
        report = handle.report()
        handle.disable()
    fractions = [s.active_fraction for s in report.calls[-1].steps]
    assert len(fractions) == 12 and min(fractions) < 1 and np.isfinite(cached).all(), fractions
    assert np.array_equal(hunyuan_i2v_call(i2v, 12, guidance=5.0), reference)


def test_another_attention_processor_is_refused():
    from diffusers.models.attention_processor import AttnProcessor2_0

    pipe = tiny_hunyuan_video_pipeline()
    pipe.transformer.single_transformer_blocks[0].attn.set_processor(AttnProcessor2_0())
    with pytest.raises(UnsupportedModelError, match="HunyuanVideoAttnProcessor2_0"):
        diffcache.enable(pipe, "hsa")


def test_latent_concat_image_to_video_model():
    """HunyuanVideo-I2V-33ch / SkyReels-V1 (``image_condition_type="latent_concat"``: the image latents and a mask
    concatenated to the channels, plain blocks): the sparse forward of a subset is the model's at those tokens."""
    from diffusers import HunyuanVideoTransformer3DModel
    from tiny_families.hunyuan_video import _transformer_config

    torch.manual_seed(0)
    model = HunyuanVideoTransformer3DModel(**{**_transformer_config(1, 1), "in_channels": 9,
                                              "image_condition_type": "latent_concat"}).eval()
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(2, 6)
    mask[0, 4:] = 0
    kwargs = dict(hidden_states=torch.randn(2, 9, 2, 8, 8, generator=g), timestep=torch.tensor([300.0, 900.0]),
                  encoder_hidden_states=torch.randn(2, 6, 16, generator=g), encoder_attention_mask=mask,
                  pooled_projections=torch.randn(2, 8, generator=g), guidance=torch.tensor([6000.0, 6000.0]),
                  return_dict=False)
    with torch.no_grad():
        reference = model(**kwargs)[0]
    assert reference.shape == (2, 4, 2, 8, 8)
    with pytest.warns(UserWarning, match="bare denoiser"):
        handle = diffcache.enable(model, "hsa", num_inference_steps=10)
    runtime, adapter = handle.runtime, handle.runtime.adapter
    try:
        runtime.branch, runtime.active = _BranchState(len(runtime.layers)), None
        with torch.no_grad():
            type(model).forward(model, **kwargs)  # fills the K/V cache
            subset = torch.stack([torch.randperm(32, generator=g)[:9] for _ in range(2)])
            runtime.active = subset
            sparse = adapter.sparse_forward(model, (), kwargs, subset)
    finally:
        runtime.branch = runtime.active = None
        handle.disable()
    tokens = adapter.output_tokens(model, reference)
    torch.testing.assert_close(sparse, tokens.gather(1, subset[:, :, None].expand(-1, -1, tokens.shape[-1])),
                               atol=1e-5, rtol=1e-4)

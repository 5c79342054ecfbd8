"""Stacking caches: diffcache on a denoiser that already has diffusers' own cache (``enable_cache``) or a
cache-dit cache is refused, naming the other cache and how to remove it; another cache enabled after diffcache is
caught at the next forward, which is refused before any work."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.hooks import (FasterCacheConfig, FirstBlockCacheConfig, MagCacheConfig, PyramidAttentionBroadcastConfig,
                             TaylorSeerCacheConfig, apply_first_block_cache)
from tiny_diffusers import tiny_wan_pipeline

import diffcache
from diffcache.errors import ForeignCacheError, MethodAlreadyEnabledError

STEPS = 3
pytestmark = pytest.mark.filterwarnings("ignore::diffcache.errors.NothingSkippedWarning")  # 3 steps skip little


@pytest.fixture(scope="module")
def pipe():
    return tiny_wan_pipeline(num_layers=2)


def run(pipe, steps: int = STEPS):
    return pipe(prompt="a cat surfing", negative_prompt="dog", height=16, width=16, num_frames=5,
                num_inference_steps=steps, guidance_scale=5.0, output_type="latent",
                generator=torch.Generator().manual_seed(0)).frames


def diffusers_configs(pipe):
    timestep = lambda: pipe.current_timestep  # noqa: E731 - what PAB / FasterCache read the timestep from
    return {
        "FirstBlockCache": FirstBlockCacheConfig(threshold=0.1),
        "PyramidAttentionBroadcast": PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                                                     current_timestep_callback=timestep),
        "FasterCache": FasterCacheConfig(current_timestep_callback=timestep),
        "TaylorSeerCache": TaylorSeerCacheConfig(),
        "MagCache": MagCacheConfig(mag_ratios=[1.0] * STEPS, num_inference_steps=STEPS),
    }


def block_calls(pipe) -> list:
    """A list that grows by one entry per block forward of the transformer (counted outside every hook)."""
    calls = []
    for block in pipe.transformer.blocks:
        block.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("cache", ["FirstBlockCache", "PyramidAttentionBroadcast", "FasterCache", "TaylorSeerCache",
                                   "MagCache"])
def test_enable_refuses_a_model_with_a_diffusers_cache(pipe, cache):
    transformer = pipe.transformer
    transformer.enable_cache(diffusers_configs(pipe)[cache])
    try:
        assert transformer.is_cache_enabled
        with pytest.raises(ForeignCacheError, match=rf"diffusers' {cache} cache .*WanTransformer3DModel\.disable_cache\(\)"):
            diffcache.enable(pipe, "fbcache")
        with pytest.raises(MethodAlreadyEnabledError):  # one family of "something is already enabled" errors
            diffcache.enable(pipe.transformer, "pab")
        assert not hasattr(transformer, "_diffcache_handle")
        assert not any(name.startswith("diffcache") for m in transformer.modules()
                       for name in getattr(getattr(m, "_diffusers_hook", None), "hooks", {}))
    finally:
        transformer.disable_cache()
    with diffcache.enable(pipe, "fbcache") as handle:  # removed as the message says: diffcache enables
        run(pipe)
    assert len(handle.report().calls) == 1


def test_enable_refuses_diffusers_cache_hooks_applied_directly(pipe):
    """``apply_first_block_cache`` registers the hooks without setting ``_cache_config``: found in the registry."""
    transformer = pipe.transformer
    apply_first_block_cache(transformer, FirstBlockCacheConfig(threshold=0.1))
    registry = transformer._diffusers_hook
    try:
        assert not transformer.is_cache_enabled
        with pytest.raises(ForeignCacheError, match="diffusers' FirstBlockCache cache .*remove_hook"):
            diffcache.enable(pipe, "teacache", coefficients=(1.0, 0.0), threshold=0.1)
    finally:
        registry.remove_hook("fbc_leader_block_hook", recurse=True)
        registry.remove_hook("fbc_block_hook", recurse=True)
    diffcache.enable(pipe, "teacache", coefficients=(1.0, 0.0), threshold=0.1).disable()


def test_a_diffusers_cache_enabled_after_diffcache_is_refused_at_the_next_forward(pipe):
    reference = run(pipe)
    handle = diffcache.enable(pipe, "adacache", preset="fast")
    run(pipe)
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.1))
    calls = block_calls(pipe)
    try:
        with pytest.raises(ForeignCacheError, match="FirstBlockCache cache .*after diffcache's adacache.*before any work"):
            run(pipe)
        assert calls == []  # refused before any block ran
    finally:
        pipe.transformer.disable_cache()
    run(pipe)  # the other cache removed: diffcache runs again, and its report has the calls that ran
    assert len(handle.report().calls) == 2
    handle.disable()
    np.testing.assert_array_equal(run(pipe), reference)
    for block in pipe.transformer.blocks:
        block._forward_pre_hooks.clear()


def test_diffusers_hooks_applied_after_diffcache_are_found_at_the_next_call(pipe):
    with diffcache.enable(pipe, "pab"):
        apply_first_block_cache(pipe.transformer, FirstBlockCacheConfig(threshold=0.1))
        try:
            with pytest.raises(ForeignCacheError, match="FirstBlockCache"):
                run(pipe)
        finally:
            pipe.transformer._diffusers_hook.remove_hook("fbc_leader_block_hook", recurse=True)
            pipe.transformer._diffusers_hook.remove_hook("fbc_block_hook", recurse=True)
        run(pipe)


def cache_dit_stand_in(pipe):
    """What ``cache_dit.enable_cache(pipe)`` leaves on a pipeline (github.com/vipshop/cache-dit,
    src/cache_dit/caching/cache_adapters/cache_adapter.py at f86744a): on the transformer, ``mock_transformer``
    keeps the original forward in ``_original_forward``, replaces ``forward`` and sets ``_context_manager``,
    ``_context_names`` and ``_is_cached = True``; on the pipeline, ``create_context`` sets ``_context_manager``
    (per instance) and wraps ``type(pipe).__call__`` (the class-level ``_is_cached`` / ``_original_call`` are left
    out here so as not to change WanPipeline for the other tests). Returns the undo (``cache_dit.disable_cache``)."""
    transformer = pipe.transformer
    original = transformer.forward
    transformer._original_forward = original
    transformer.forward = lambda *args, **kwargs: original(*args, **kwargs)
    transformer._context_manager = object()
    transformer._context_names = ["blocks_0"]
    transformer._is_cached = True
    pipe._context_manager = transformer._context_manager

    def disable_cache():
        transformer.forward = transformer._original_forward
        for name in ("_original_forward", "_context_manager", "_context_names", "_is_cached"):
            delattr(transformer, name)
        del pipe._context_manager
    return disable_cache


def test_enable_refuses_a_cache_dit_pipeline(pipe):
    disable_cache = cache_dit_stand_in(pipe)
    try:
        for target in (pipe, pipe.transformer):
            with pytest.raises(ForeignCacheError, match=r"cache-dit cache .*cache_dit\.disable_cache\(pipe\)"):
                diffcache.enable(target, "fbcache")
    finally:
        disable_cache()
    diffcache.enable(pipe, "fbcache").disable()


def test_cache_dit_enabled_after_diffcache_is_refused_at_the_next_forward(pipe):
    with diffcache.enable(pipe, "fbcache"):
        disable_cache = cache_dit_stand_in(pipe)
        calls = block_calls(pipe)
        try:
            with pytest.raises(ForeignCacheError, match="cache-dit cache .*after diffcache's fbcache"):
                run(pipe)
            assert calls == []
        finally:
            disable_cache()
            for block in pipe.transformer.blocks:
                block._forward_pre_hooks.clear()
        run(pipe)

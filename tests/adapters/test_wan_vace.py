"""WanVACE: the control hints the model adds after given main blocks are added once per forward, also on a step a
run-level cache reuses; HSA's token-sparse forward reproduces the model's forward (control blocks included)."""

from __future__ import annotations

import warnings

import pytest
import torch
from tiny_families.wan_vace import tiny_wan_vace_pipeline, vace_call

import diffcache
from diffcache.adapters import find_adapter
from diffcache.errors import NothingSkippedWarning


@pytest.fixture(scope="module")
def vace():
    pipe = tiny_wan_vace_pipeline()
    forwards = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, a, k: forwards.append(dict(k)), with_kwargs=True)
    try:
        vace_call(pipe, 1)
    finally:
        hook.remove()
    return pipe, {**forwards[0], "return_dict": False}  # the cond forward of a real call


@pytest.mark.parametrize("method, options", [
    ("fbcache", dict(threshold=1.0)),
    ("teacache", dict(threshold=1e9, coefficients=(1.0, 0.0), compute_last_step=False)),
])
def test_a_reused_step_adds_the_hints_once(vace, method, options):
    """Two steps with identical inputs: the second reuses the cached run, and its output equals the computed one.
    A cached residual that kept the hints would count them twice (the model adds this step's hints again)."""
    pipe, kwargs = vace
    model = pipe.transformer
    with torch.no_grad():
        reference = model(**kwargs)[0]
    assert model.config.vace_layers == [0, 2]  # hints after the first (head) block and inside the cached run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        handle = diffcache.enable(model, method, **options)
        outputs = []
        try:
            with torch.no_grad():
                for step in range(2):
                    with model.cache_context("cond", step_index=step, num_inference_steps=2):
                        outputs.append(model(**kwargs)[0])
        finally:
            handle.disable()
    steps = handle.report().calls[-1].steps
    assert steps[0].blocks_reused == 0 and steps[1].blocks_reused > 0
    torch.testing.assert_close(outputs[0], reference, rtol=0, atol=0)
    torch.testing.assert_close(outputs[1], reference, rtol=1e-4, atol=1e-5)


def test_hsa_sparse_forward_is_the_forward_for_any_token_order(vace):
    """The sparse forward over every token, in a shuffled order, gives the model's outputs in that order: the
    control tokens, hints, rotary positions and modulation are gathered at the right tokens."""
    pipe, kwargs = vace
    model = pipe.transformer
    adapter = find_adapter(model)
    with torch.no_grad():
        full = adapter.output_tokens(model, model(**kwargs)[0])
        order = torch.randperm(full.shape[1], generator=torch.Generator().manual_seed(0))[None]
        sparse = adapter.sparse_forward(model, (), kwargs, order)
    torch.testing.assert_close(sparse, full[:, order[0]], rtol=1e-4, atol=1e-5)
    assert [m for m in adapter.self_attention_modules(model)][:2] == [b.attn1 for b in model.vace_blocks]

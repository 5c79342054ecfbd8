"""Wan 2.2 A14B: one method enabled on a pipeline with two experts (``transformer`` for high noise,
``transformer_2`` for low noise) — steps counted on the whole loop, each expert with its own cache, warm-up and
config, nothing cached by one reused by the other."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from tiny_families.wan22_a14b import tiny_wan22_a14b_pipeline

import diffcache
from diffcache.errors import ConfigError, NothingSkippedWarning
from diffcache.experts import boundary_timestep, expert_phase

STEPS = 8


@pytest.fixture(scope="module")
def pipe():
    return tiny_wan22_a14b_pipeline()


def _run(pipe, steps=STEPS, guidance=5.0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        return pipe(prompt="a cat surfing", negative_prompt="dog", num_inference_steps=steps, guidance_scale=guidance,
                    height=32, width=32, num_frames=5, output_type="np",
                    generator=torch.Generator().manual_seed(0)).frames


def _high_noise_steps(pipe, steps=STEPS) -> int:
    pipe.scheduler.set_timesteps(steps)
    return int((pipe.scheduler.timesteps >= boundary_timestep(pipe)).sum())


def test_the_phases_follow_the_pipelines_own_switch(pipe):
    high = _high_noise_steps(pipe)
    assert 0 < high < STEPS  # the tiny schedule crosses the boundary
    seen = []
    hooks = [m.register_forward_pre_hook(lambda mod, a, k, n=n: seen.append(n), with_kwargs=True)
             for n, m in (("transformer", pipe.transformer), ("transformer_2", pipe.transformer_2))]
    try:
        _run(pipe)
    finally:
        for h in hooks:
            h.remove()
    assert seen == ["transformer"] * (2 * high) + ["transformer_2"] * (2 * (STEPS - high))
    assert expert_phase(pipe, "transformer", STEPS) == range(0, high)
    assert expert_phase(pipe, "transformer_2", STEPS) == range(high, STEPS)


@pytest.mark.parametrize("method", ["fbcache", "adacache", "teacache", "pab", "fastercache", "hsa"])
def test_steps_count_the_whole_loop_and_each_expert_starts_afresh(pipe, method):
    steps = 16 if method == "hsa" else STEPS  # HSA's dense warm-up and tail need enough steps in each phase
    high = _high_noise_steps(pipe, steps)
    # no published TeaCache coefficients for Wan 2.2: the rule on its own (identity) polynomial
    options = dict(coefficients=(1.0, 0.0), threshold=0.3) if method == "teacache" else {}
    handle = diffcache.enable(pipe, method, **options)
    try:
        frames = _run(pipe, steps)
        report = handle.report()
    finally:
        handle.disable()
    assert np.isfinite(frames).all()
    call = report.calls[-1]
    assert call.num_steps == steps and [s.step for s in call.steps] == list(range(steps))
    assert [s.expert for s in call.steps] == ["transformer"] * high + ["transformer_2"] * (steps - high)
    # the low-noise expert's first step is step `high` of the loop, and it computes everything: its cache is its
    # own (nothing the high-noise expert cached is reused) and its warm-up starts there
    first_low = call.steps[high]
    assert first_low.computed and first_low.blocks_reused == 0
    assert first_low.active_fraction in (None, 1.0)
    assert call.steps[0].computed and call.steps[0].blocks_reused == 0
    low = handle.parts[1]
    assert low.expert == "transformer_2" and low.runtime.report.calls[-1].num_steps == steps - high
    assert "transformer_2" in report.summary()
    if method == "hsa":  # token-sparse steps in both phases, and the token step counts cover the whole loop
        assert any(s.active_fraction < 1 for s in call.steps[:high])
        assert any(s.active_fraction < 1 for s in call.steps[high:])
        assert np.asarray(call.token_steps).max() <= steps


def test_teacache_default_refuses_wan22_for_want_of_published_coefficients(pipe):
    with pytest.raises(diffcache.UnsupportedModelError, match="Wan 2.2 has no published TeaCache coefficients"):
        diffcache.enable(pipe, "teacache")


def test_hsa_refuses_a_phase_too_short_for_its_runtime_and_says_which_expert(pipe):
    from diffcache.errors import HSABudgetError

    handle = diffcache.enable(pipe, "hsa")
    try:
        with pytest.raises(HSABudgetError, match="transformer runs 4 steps"):
            _run(pipe)
    finally:
        handle.disable()


def test_nothing_cached_by_one_expert_is_reused_by_the_other(pipe):
    """Each expert has its own runtime on its own module, and the low-noise expert's first step reuses nothing
    although the high-noise expert's last steps did."""
    handle = diffcache.enable(pipe, "fbcache", threshold=0.5)
    try:
        _run(pipe)
        high_cache = handle.parts[0].runtime
        low_cache = handle.parts[1].runtime
        assert high_cache is not low_cache
        assert high_cache.model is pipe.transformer and low_cache.model is pipe.transformer_2
        reused = [s.blocks_reused for s in handle.report().calls[-1].steps]
    finally:
        handle.disable()
    high = _high_noise_steps(pipe)
    assert reused[high] == 0 and any(reused[:high]) and any(reused[high + 1:])


def test_an_expert_frees_its_cache_when_the_other_takes_over(pipe):
    """Only the running expert's cache is held: at the switch the high-noise expert drops what it cached."""
    from diffcache.bench.measure import tensor_bytes

    handle = diffcache.enable(pipe, "adacache")
    sizes = []
    hook = pipe.transformer_2.register_forward_hook(  # after each low-noise forward
        lambda *a: sizes.append((tensor_bytes(handle.parts[0].runtime), tensor_bytes(handle.parts[1].runtime))))
    try:
        _run(pipe)
    finally:
        hook.remove()
        handle.disable()
    assert sizes and all(high == 0 for high, _ in sizes) and all(low > 0 for _, low in sizes)


def test_each_expert_can_have_its_own_config(pipe):
    handle = diffcache.enable(pipe, "fbcache", threshold=0.05, experts={"transformer_2": {"threshold": 0.5}})
    try:
        _run(pipe)
        report = handle.report()
    finally:
        handle.disable()
    assert [p.config.threshold for p in handle.parts] == [0.05, 0.5]
    assert report.config["experts"]["transformer_2"]["threshold"] == 0.5
    with pytest.raises(ConfigError, match="transformer_2"):
        diffcache.enable(pipe, "fbcache", experts={"transformer_3": {"threshold": 0.5}})


def test_two_calls_with_different_step_counts_and_without_guidance(pipe):
    handle = diffcache.enable(pipe, "fbcache")
    try:
        _run(pipe, steps=STEPS)
        _run(pipe, steps=STEPS + 4, guidance=1.0)
        calls = handle.report().calls
    finally:
        handle.disable()
    assert [(c.call_index, c.num_steps, len(c.steps)) for c in calls] == [(0, STEPS, STEPS), (1, STEPS + 4, STEPS + 4)]
    assert all(s.branches == ["cond"] for s in calls[1].steps)


def test_a_call_that_never_reaches_the_second_expert_is_still_one_call():
    pipe = tiny_wan22_a14b_pipeline(boundary_ratio=None)  # only `transformer` runs
    handle = diffcache.enable(pipe, "fbcache")
    try:
        _run(pipe)
        _run(pipe)
        calls = handle.report().calls
    finally:
        handle.disable()
    assert [(c.call_index, len(c.steps)) for c in calls] == [(0, STEPS), (1, STEPS)]
    assert {s.expert for c in calls for s in c.steps} == {"transformer"}


def test_disable_is_bit_identical_on_both_experts(pipe):
    reference = _run(pipe)
    handle = diffcache.enable(pipe, "adacache")
    _run(pipe)
    handle.disable()
    np.testing.assert_array_equal(_run(pipe), reference)
    assert not hasattr(pipe.transformer, "_diffcache_handle") and not hasattr(pipe.transformer_2, "_diffcache_handle")


@pytest.mark.parametrize("method", ["fbcache", "hsa"])
def test_a_bare_expert_enabled_alone_has_its_own_warm_up(pipe, method):
    """Enabling on one expert module (not the pipeline) caches that module only: its phase starts at its first
    step, so its warm-up is its own (HSA no longer finds no warm-up to measure), and the report numbers the steps on
    the whole loop."""
    steps = 16
    high = _high_noise_steps(pipe, steps)
    handle = diffcache.enable(pipe.transformer_2, method)
    try:
        frames = _run(pipe, steps)
        call = handle.report().calls[-1]
    finally:
        handle.disable()
    assert np.isfinite(frames).all() and len(handle.parts) == 1
    assert call.num_steps == steps and [s.step for s in call.steps] == list(range(high, steps))
    assert call.steps[0].computed and call.steps[0].blocks_reused == 0
    if method == "hsa":
        assert any(s.active_fraction < 1 for s in call.steps)
    else:
        assert any(s.blocks_reused for s in call.steps)

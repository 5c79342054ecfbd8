"""EasyCache (arXiv:2507.02860): the rule by hand, the runtime against a port of the official Wan 2.1 decision code
replayed on the denoiser's recorded inputs and outputs, the presets and bad configs; and the ``forecast`` option
of the residual-reuse methods (docs/methods/forecasting.md)."""

from __future__ import annotations

import warnings

import pytest
import torch
from tiny_diffusers import tiny_wan_pipeline, video_call

import diffcache
from diffcache.context import StepContext
from diffcache.errors import ConfigError, NothingSkippedWarning
from diffcache.methods.easycache import EasyCacheConfig, easycache_decision
from diffcache.methods.fbcache import FBCacheConfig
from diffcache.methods.residual_cache import BranchState, ResidualCacheRuntime
from diffcache.methods.teacache import TeaCacheConfig

PROMPT = "a red circle moving left"


def generate(pipe, steps=30, **kwargs):
    kwargs.setdefault("guidance_scale", 5.0)
    return pipe(PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="np",
                **kwargs).frames


# -- the official decision code, ported ----------------------------------------------------------------------------
def official_wan_easycache(inputs, outputs, thresh, ret_steps, sample_steps):
    """A port of ``easycache_forward`` in the official ``EasyCache4Wan2.1/easycache_generate.py`` (its state and
    decisions only), over the calls of one generation: ``inputs[c]`` / ``outputs[c]`` are the latent input and the
    output of call ``c`` (even calls cond, odd uncond; an output is read only where the call computes). As there:
    ``ret_steps = 10 * 2`` and ``cutoff_steps = sample_steps * 2 - 2`` are counted in calls; the means are taken in
    float32 here (diffcache's documented departure). Returns, per call, whether it computed, and the ``k`` in force
    at each cond call."""
    ret, cutoff = ret_steps * 2, sample_steps * 2 - 2
    accumulated_error_even, k = 0, None
    previous_raw_input_even = previous_raw_output_even = previous_raw_output_odd = prev_prev_raw_input_even = None
    should_calc_current_pair = True
    computed, ks = [], []
    for cnt, (raw_input, output) in enumerate(zip(inputs, outputs)):
        raw_input = raw_input.float()
        is_even = cnt % 2 == 0
        if is_even:
            ks.append(k)
            if cnt < ret or cnt >= cutoff:
                should_calc_current_pair = True
                accumulated_error_even = 0
            else:
                if previous_raw_input_even is not None and previous_raw_output_even is not None:
                    raw_input_change = (raw_input - previous_raw_input_even).abs().mean()
                    if k is not None:
                        output_norm = previous_raw_output_even.abs().mean()
                        pred_change = k * (raw_input_change / output_norm)
                        accumulated_error_even += pred_change
                        if accumulated_error_even < thresh:
                            should_calc_current_pair = False
                        else:
                            should_calc_current_pair = True
                            accumulated_error_even = 0
                    else:
                        should_calc_current_pair = True
                else:
                    should_calc_current_pair = True
            previous_raw_input_even = raw_input.clone()
        if is_even and not should_calc_current_pair and previous_raw_output_even is not None:
            computed.append(False)
            continue
        if not is_even and not should_calc_current_pair and previous_raw_output_odd is not None:
            computed.append(False)
            continue
        computed.append(True)
        output = output.float()
        if is_even:
            if previous_raw_output_even is not None:
                output_change = (output - previous_raw_output_even).abs().mean()
                if prev_prev_raw_input_even is not None:
                    input_change = (previous_raw_input_even - prev_prev_raw_input_even).abs().mean()
                    k = output_change / input_change
            prev_prev_raw_input_even = previous_raw_input_even
            previous_raw_output_even = output.clone()
        else:
            previous_raw_output_odd = output.clone()
    return computed, ks


class DenoiserRecorder:
    """Every forward of the denoiser: its latent input, its output, and whether any block did work."""

    def __init__(self, model):
        self.inputs, self.outputs, self.worked = [], [], []
        self._handles = [
            model.register_forward_pre_hook(self._pre, with_kwargs=True),
            model.register_forward_hook(self._post),
        ]
        for block in model.blocks:
            for leaf in block.modules():
                if not list(leaf.children()) and any(True for _ in leaf.parameters(False)):
                    self._handles.append(leaf.register_forward_hook(self._leaf))

    def _pre(self, module, args, kwargs):
        self.inputs.append(kwargs["hidden_states"].detach().clone())
        self.worked.append(False)

    def _leaf(self, module, args, output):
        self.worked[-1] = True

    def _post(self, module, args, output):
        self.outputs.append((output[0] if isinstance(output, tuple) else output.sample).detach().clone())

    def remove(self):
        for handle in self._handles:
            handle.remove()


@pytest.mark.parametrize("preset,options", [("default", {}), ("wan2.1", {"threshold": 0.1, "warmup_steps": 5})])
def test_runtime_equals_the_official_decisions_on_tiny_shapes(shipped_pipe, preset, options):
    steps = 30
    recorder = DenoiserRecorder(shipped_pipe.transformer)
    try:
        with diffcache.enable(shipped_pipe, "easycache", preset=preset, **options) as handle:
            generate(shipped_pipe, steps=steps)
    finally:
        recorder.remove()
    config = handle.config
    call = handle.report().calls[-1]
    assert [s.branches for s in call.steps] == [["cond", "uncond"]] * steps  # split CFG: cond first, as in Wan
    computed, ks = official_wan_easycache(recorder.inputs, recorder.outputs, config.threshold, config.warmup_steps,
                                          steps)
    assert recorder.worked == computed  # every call: the blocks ran exactly where the official code computes
    assert [s.computed for s in call.steps] == computed[0::2]
    assert 0 < sum(computed) < 2 * steps  # something was reused, and not everything
    for step, k in zip(call.steps, ks):  # the rate in force at each cond call, as the official code had it
        if "k" in step.values:
            assert step.values["k"] == pytest.approx(float(k), rel=1e-5)
    blocks = len(shipped_pipe.transformer.blocks)
    for s in call.steps:
        assert (s.blocks_computed, s.blocks_reused) in ((2 * blocks, 0), (0, 2 * blocks))


def test_uncond_follows_the_cond_decision_and_keeps_its_own_residual(shipped_pipe):
    with diffcache.enable(shipped_pipe, "easycache") as handle:
        generate(shipped_pipe, steps=20)
        states = handle.runtime.states
    assert set(states) == {"cond", "uncond"}
    assert not torch.equal(states["cond"].residual[0], states["uncond"].residual[0])
    assert "x_prev" in states["cond"].values and "x_prev" not in states["uncond"].values  # cond alone decides
    steps = handle.report().calls[-1].steps
    assert all(s.computed for s in steps[:10]) and steps[-1].computed  # warm-up 10, the last step


# -- the rule by hand ----------------------------------------------------------------------------------------------
def test_the_rule_by_hand():
    # k = 2, input change 0.01 per step, output norm 1: pred = 2 * 0.01 / 1 = 0.02 per step; threshold 0.05
    accumulated, trace = 0.0, []
    for _ in range(4):
        compute, accumulated, pred = easycache_decision(accumulated, 2.0, 0.01, 1.0, 0.05, forced=False)
        trace.append((compute, round(accumulated, 10), round(pred, 10)))
    # 0.02 and 0.04 stay under 0.05 (reused); 0.06 does not: computed, the sum reset; then 0.02 again
    assert trace == [(False, 0.02, 0.02), (False, 0.04, 0.02), (True, 0.0, 0.02), (False, 0.02, 0.02)]
    assert easycache_decision(0.04, 2.0, 0.01, 1.0, 0.05, forced=True) == (True, 0.0, None)  # warm-up / last step
    assert easycache_decision(0.04, None, 0.01, 1.0, 0.05, forced=False) == (True, 0.04, None)  # no k yet: computed
    # the rate scales the input change into the relative output change: k = 0.5, input change 0.2, |v| = 2
    assert easycache_decision(0.0, 0.5, 0.2, 2.0, 0.1, forced=False)[2] == pytest.approx(0.05)


def test_presets_are_the_official_values():
    assert EasyCacheConfig.from_preset("wan2.1").to_dict() | {"preset": ""} == EasyCacheConfig(
        threshold=0.05, warmup_steps=10, last_steps=1).to_dict()
    assert (EasyCacheConfig.from_preset("hunyuanvideo").threshold,
            EasyCacheConfig.from_preset("hunyuanvideo").warmup_steps) == (0.025, 5)
    assert [EasyCacheConfig.from_preset(p).threshold for p in ("wan2.1-fast", "wan2.1-faster")] == [0.1, 0.2]
    assert EasyCacheConfig.from_preset(None).preset == "default"


@pytest.mark.parametrize("options,match", [
    ({"threshold": -0.1}, "threshold must be a number >= 0"),
    ({"threshold": True}, "threshold must be a number >= 0"),
    ({"warmup_steps": -1}, "warmup_steps must be an integer >= 0"),
    ({"warmup_steps": 2.5}, "warmup_steps must be an integer >= 0"),
    ({"last_steps": "1"}, "last_steps must be an integer >= 0"),
    ({"forecast": "quadratic"}, "forecast must be one of 'none', 'linear', got 'quadratic'"),
])
def test_bad_configs_name_what_is_accepted(options, match):
    with pytest.raises(ConfigError, match=match):
        EasyCacheConfig(**options)


def test_a_call_that_reuses_nothing_warns_with_advice(shipped_pipe):
    with pytest.warns(NothingSkippedWarning,
                      match="easycache:default reused nothing.*never stayed under threshold 0.*raise the threshold"):
        with diffcache.enable(shipped_pipe, "easycache", warmup_steps=3, threshold=0.0):
            generate(shipped_pipe, steps=8)


# -- forecasting (docs/methods/forecasting.md) ---------------------------------------------------------------------
@pytest.mark.parametrize("config_class", [EasyCacheConfig, FBCacheConfig, TeaCacheConfig])
def test_forecast_option_is_validated(config_class):
    with pytest.raises(ConfigError, match="forecast must be one of 'none', 'linear'"):
        config_class(forecast="cubic", **({"coefficients": (1.0, 0.0), "threshold": 0.1}
                                          if config_class is TeaCacheConfig else {}))


def test_linear_forecast_equals_the_formula_by_hand():
    pipe = tiny_wan_pipeline(num_layers=3)
    pipe.set_progress_bar_config(disable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        with diffcache.enable(pipe, "fbcache", forecast="linear") as handle:
            video_call(dict(height=16, width=16, num_frames=5))(pipe, 3)
            runtime = handle.runtime
            # computed steps s0 = 3 and s1 = 5 with residuals r0, r1; reused at k = 8:
            # r(8) = r1 + (r1 − r0)·(8 − 5)/(5 − 3) = r1 + 1.5·(r1 − r0)
            r0, r1 = torch.tensor([[1.0, 2.0]]), torch.tensor([[2.0, 2.5]])
            state = BranchState(residual=(r1,), residual_step=5, previous=(3, (r0,)))
            runtime.ctx = StepContext(call_index=0, step=8, num_steps=10, branch="cond")
            (forecast,) = runtime.reused_residual(state, r1)
            assert torch.equal(forecast, torch.tensor([[3.5, 3.25]]))
            assert runtime.step_record.values["forecast"] == 1.5
            # one computed step only, or shapes that differ: plain reuse
            assert runtime.reused_residual(BranchState(residual=(r1,), residual_step=5), r1)[0] is r1
            other = BranchState(residual=(r1,), residual_step=5, previous=(3, (torch.zeros(3),)))
            assert runtime.reused_residual(other, r1)[0] is r1
            # keep_residual keeps the one it replaces, with its step
            runtime.ctx = StepContext(call_index=0, step=9, num_steps=10, branch="cond")
            runtime.keep_residual(state, (r0,))
            assert state.residual_step == 9 and state.previous[0] == 5 and state.previous[1][0] is r1


@pytest.mark.parametrize("method,options", [("fbcache", {"threshold": 0.08}),
                                            ("teacache", {"coefficients": (1.0, 0.0), "threshold": 0.3}),
                                            ("easycache", {"threshold": 0.3, "warmup_steps": 2})])
def test_forecast_none_is_plain_reuse_and_linear_extrapolates(method, options, monkeypatch):
    pipe = tiny_wan_pipeline(num_layers=3)
    pipe.set_progress_bar_config(disable=True)
    run = video_call(dict(height=16, width=16, num_frames=5))

    def cached(**more):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NothingSkippedWarning)
            with diffcache.enable(pipe, method, **options, **more) as handle:
                frames = run(pipe, 12)
        return frames, handle.report().calls[-1]

    plain, plain_call = cached()
    linear, linear_call = cached(forecast="linear")
    # the code before the option: a reused step added the cached residual as it is
    monkeypatch.setattr(ResidualCacheRuntime, "reused_residual", lambda self, state, like: self.unstash(state.residual,
                                                                                                          like))
    before, _ = cached()
    assert (plain == before).all()  # "none": bit-identical to before
    assert sum(s.blocks_reused for s in plain_call.steps) > 0
    assert all("forecast" not in s.values for s in plain_call.steps)
    weights = [s.values["forecast"] for s in linear_call.steps if "forecast" in s.values]
    if method == "fbcache":  # on this random model it reuses only before its second computed step: nothing to
        assert not weights and (linear == plain).all()  # extrapolate from, so plain reuse
        return
    assert weights and all(w > 0 for w in weights)
    assert not (linear == plain).all()

"""AdaCache + MoReg: the schedule against hand-worked examples, the adapters on tiny real diffusers pipelines,
cond/uncond separation, resets, disable(), and the report against independent counts."""

import dataclasses

import numpy as np
import pytest
import torch
from diffusers.hooks.hooks import ModelHook
from tiny_diffusers import TINY_PIPELINES, VIDEO_FAMILIES

import diffcache
from diffcache.methods import framework
from diffcache.methods.adacache import (AdaCacheConfig, AdaCacheRuntime, AdaCacheSchedule, _MidProbe, codebook_for,
                                        moreg_window_for, motion_score)
from diffcache.methods.framework import relative_change

PROMPT = "a red circle moving left"


def schedule(preset="fast", num_steps=30, **overrides):
    return AdaCacheSchedule(AdaCacheConfig.from_preset(preset, **overrides), num_steps)


# -- the schedule, by hand -----------------------------------------------------------------------------------------
def test_codebook_lookup_is_strictly_less_than():
    s = schedule("fast")
    assert s.lookup(0.0) == 6
    assert s.lookup(0.0799) == 6
    assert s.lookup(0.08) == 5  # not < 0.08: the next threshold
    assert s.lookup(0.39) == 2
    assert s.lookup(0.40) == 1
    assert s.lookup(5.0) == 1  # beyond every threshold: the last rate


def test_rate_takes_effect_from_the_next_step_and_steps_1_T_1_T_are_always_computed():
    s = schedule("fast", num_steps=10, codebook=codebook_for("fast", 30))
    computed = []
    # hand-worked: d at each computed step (already relative L1; the rate in force divides it)
    metrics = {1: None, 2: 0.10, 7: 0.05 * 5}
    for step in range(1, 11):
        if s.should_compute(step):
            computed.append(step)
            s.update(step, metrics.get(step, 0.01))
    # step 1: no metric, rate 1 -> step 2; step 2: d=0.10/1 -> rate 5 -> step 7;
    # step 7: d=0.25/5=0.05 -> rate 6 -> step 13 > T, but 9 (T-1) and 10 (T) are always computed
    assert computed == [1, 2, 7, 9, 10]


def test_distance_is_divided_by_the_rate_in_force():
    s = schedule("fast")
    s.update(1, None)
    values = s.update(2, 0.30)  # rate 1 in force: d = 0.30 -> rate 3
    assert values["distance"] == pytest.approx(0.30) and s.rate == 3
    values = s.update(5, 0.30)  # rate 3 in force: d = 0.10 -> rate 5
    assert values["distance"] == pytest.approx(0.10) and s.rate == 5


def test_official_moreg_window_power_and_gradient():
    s = schedule("fast-moreg", num_steps=30)
    assert s.window == (4, 26)
    s.update(1, None, motion=0.2)  # outside the window: m = 1
    assert s.motion_prev == 1.0
    values = s.update(2, 0.05, motion=0.2)  # still outside: m = 1, grad = 10*(1-1)/1 = 0
    assert values["motion"] == 1.0 and values["motion_gradient"] == 0.0
    assert values["distance"] == pytest.approx(0.05) and s.rate == 6
    values = s.update(8, 0.6, motion=0.385)  # inside the window: m = (0.385/0.385)^8 = 1
    assert values["motion"] == pytest.approx(1.0)
    values = s.update(9, 0.06, motion=0.385 / 2)  # m = 0.5^8; grad = 10 (m - 1) / rate
    m = 0.5 ** 8
    rate_in_force = 5  # d at step 8 was 0.6 / 6 (rate 6 in force) = 0.1 -> rate 5
    gradient = 10 * (m - 1.0) / rate_in_force
    assert values["motion"] == pytest.approx(m)
    assert values["motion_gradient"] == pytest.approx(gradient)
    assert values["distance"] == pytest.approx(0.06 / rate_in_force * (m + abs(gradient)))
    values = s.update(27, 0.01, motion=0.385 / 2)  # after the window: m = 1 again
    assert values["motion"] == 1.0


def test_paper_moreg_uses_the_signed_gradient_over_the_step_gap():
    s = schedule("fast-moreg-paper", num_steps=30)
    s.update(1, None, motion=0.3)
    values = s.update(4, 0.2, motion=0.2)  # gap 3, rate in force 1: d = 0.2 * (0.2 + (0.2-0.3)/3)
    assert values["distance"] == pytest.approx(0.2 * (0.2 - 0.1 / 3))


def test_codebooks_and_windows_for_other_step_counts():
    assert codebook_for("fast", 30)[0] == (0.08, 6)
    assert codebook_for("fast", 100)[0] == (0.03, 12)
    assert [r for _, r in codebook_for("fast", 50)] == [10, 8, 7, 5, 3, 2]  # 30-step rates x 50/30, rounded
    assert [r for _, r in codebook_for("slow", 100)] == [10, 7, 3, 3, 3, 3]  # no published slow@100: 30 x 100/30
    assert [r for _, r in codebook_for("fast", 10)] == [2, 2, 1, 1, 1, 1]
    assert moreg_window_for(30) == (4, 26) and moreg_window_for(100) == (10, 90)
    assert moreg_window_for(60) == (6, 54)


def test_motion_score_of_a_single_frame_leaves_the_distance_alone():
    assert motion_score(torch.ones(1, 4, 3), tokens_per_frame=4) is None
    s = schedule("fast-moreg", num_steps=30)
    s.update(1, None, motion=None)
    values = s.update(5, 0.3, motion=None)
    assert values["distance"] == pytest.approx(0.3) and "motion" not in values


def test_metrics_by_hand():
    cache = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    assert relative_change(cache, cache * 0.5) == pytest.approx(0.5)
    frames = torch.tensor([[[1.0], [1.0], [3.0], [3.0]]])  # 2 frames of 2 tokens: |3-1|*2 / (6 + 2)
    assert motion_score(frames, tokens_per_frame=2) == pytest.approx(4 / 8)


@pytest.mark.parametrize("overrides,match", [
    ({"codebook": ((0.2, 3), (0.1, 2))}, "strictly increasing"),
    ({"codebook": ((0.1, -1), (0.2, 2))}, "integers >= 1"),
    ({"codebook": ((0.1, 0),)}, "integers >= 1"),
    ({"speed": "medium"}, "'fast' or 'slow'"),
    ({"moreg": "yes"}, "'official' or 'paper'"),
    ({"moreg_window": (10, 4)}, "start <= end"),
    ({"moreg_window": 5}, "moreg_window must be"),
    ({"metric_blocks": "middle"}, "metric_blocks must be"),
    ({"moreg_norm": "x"}, "moreg_norm must be a number"),
    ({"codebook": 0.1}, "sequence of \\(threshold, rate\\) pairs"),
])
def test_bad_configs_say_what_is_accepted(overrides, match):
    with pytest.raises(ValueError, match=match):
        AdaCacheConfig.from_preset("fast", **overrides)


# -- on the embedded pipeline --------------------------------------------------------------------------------------
def generate(pipe, steps=12, **kwargs):
    kwargs.setdefault("guidance_scale", 5.0)
    return pipe(PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="np",
                **kwargs).frames


def count_attention_runs(model):
    counts = []
    handles = [block.attn1.register_forward_hook(lambda *a: counts.append(1)) for block in model.blocks]
    return counts, handles


def test_report_matches_independently_counted_block_runs_and_disable_is_bit_identical(shipped_pipe):
    reference = generate(shipped_pipe, steps=30)
    counts, hooks = count_attention_runs(shipped_pipe.transformer)
    with diffcache.enable(shipped_pipe, "adacache", preset="fast") as handle:
        cached = generate(shipped_pipe, steps=30)
        report = handle.report()
    for hook in hooks:
        hook.remove()
    call = report.calls[-1]
    blocks = len(shipped_pipe.transformer.blocks)
    assert len(counts) == call.block_forwards == call.computed_steps * blocks * 2  # two branches (split CFG)
    assert 3 <= call.computed_steps < 30
    assert [s.step for s in call.steps if s.computed][:1] == [0] and call.steps[-1].computed and call.steps[-2].computed
    assert not np.array_equal(cached, reference)
    assert np.array_equal(generate(shipped_pipe, steps=30), reference)  # after disable()


def test_a_fully_computed_schedule_reproduces_the_uncached_output(shipped_pipe):
    """With every step computed, the hooks only observe: the output must match the plain run."""
    reference = generate(shipped_pipe)
    with diffcache.enable(shipped_pipe, "adacache", preset="fast", codebook=((1e9, 1),)) as handle:
        out = generate(shipped_pipe)
    assert handle.report().computed_steps() == 12
    assert np.array_equal(out, reference)


def test_split_cfg_keeps_cond_and_uncond_caches_apart(shipped_pipe):
    with diffcache.enable(shipped_pipe, "adacache", preset="fast") as handle:
        generate(shipped_pipe, steps=30)
        runtime = handle.runtime
        assert set(runtime.states) == {"cond", "uncond"}
        # the stack's residual sees the text (cross-attention): it differs between the branches
        cond, uncond = runtime.states["cond"].residual[0], runtime.states["uncond"].residual[0]
        assert not torch.equal(cond, uncond)
        # one schedule decision per step: both branches of a step agree
        for record in handle.report().calls[-1].steps:
            assert record.branches == ["cond", "uncond"]
            assert record.blocks_computed in (0, 2 * runtime.num_blocks)


def test_split_and_batched_cfg_give_the_same_video(shipped_pipe):
    with diffcache.enable(shipped_pipe, "adacache", preset="fast-moreg") as handle:
        split = generate(shipped_pipe, steps=30, cfg_mode="split")
        batched = generate(shipped_pipe, steps=30, cfg_mode="batched")
        calls = handle.report().calls
    assert [s.computed for s in calls[0].steps] == [s.computed for s in calls[1].steps]
    np.testing.assert_allclose(split, batched, atol=1e-4)


def test_state_resets_on_repeated_and_interrupted_calls(shipped_pipe):
    with diffcache.enable(shipped_pipe, "adacache") as handle:
        first = generate(shipped_pipe, steps=30)
        second = generate(shipped_pipe, steps=30)

        def explode(pipe, step, timestep, kwargs):
            if step == 9:
                raise KeyboardInterrupt
            return kwargs

        with pytest.raises(KeyboardInterrupt):
            generate(shipped_pipe, steps=30, callback_on_step_end=explode)
        third = generate(shipped_pipe, steps=30)
        calls = handle.report().calls
    assert np.array_equal(first, second) and np.array_equal(first, third)
    assert len(calls) == 4 and len(calls[2].steps) == 10 and len(calls[3].steps) == 30


# -- the API -------------------------------------------------------------------------------------------------------
def test_unknown_method_and_preset_list_the_valid_ones(random_pipe):
    with pytest.raises(diffcache.UnknownMethodError, match="methods: .*adacache"):
        diffcache.enable(random_pipe, "adacash")
    with pytest.raises(diffcache.UnknownMethodError, match="presets: fast, slow, fast-moreg"):
        diffcache.enable(random_pipe, "adacache", preset="fastest")
    with pytest.raises(TypeError, match="no option 'thresholds'"):
        diffcache.enable(random_pipe, "adacache", thresholds=(0.1,))


def test_unsupported_model_names_the_supported_families():
    with pytest.raises(diffcache.UnsupportedModelError, match="Wan .*CogVideoX.*LTX-Video"):
        diffcache.enable(torch.nn.Linear(2, 2), "adacache")


def test_a_second_method_raises_unless_replace(random_pipe):
    first = diffcache.enable(random_pipe, "adacache", preset="fast")
    try:
        with pytest.raises(diffcache.MethodAlreadyEnabledError, match="adacache:fast is already enabled"):
            diffcache.enable(random_pipe, "adacache", preset="slow")
        second = diffcache.enable(random_pipe, "adacache", preset="slow", replace=True)
        assert not first.enabled and second.enabled and second.config.preset == "slow"
    finally:
        diffcache.disable(random_pipe)
    assert not hasattr(random_pipe.transformer, "_diffcache_handle")


def test_a_failed_enable_leaves_the_model_untouched(random_pipe):
    reference = generate(random_pipe, steps=4)
    with pytest.raises(ValueError, match="out of range"):
        diffcache.enable(random_pipe, "adacache", metric_blocks=(9,))
    with pytest.raises(ValueError, match="num_inference_steps must be a positive integer"):
        diffcache.enable(random_pipe, "adacache", num_inference_steps=0)
    assert not hasattr(random_pipe.transformer, "_diffcache_handle")
    assert np.array_equal(generate(random_pipe, steps=4), reference)
    with diffcache.enable(random_pipe, "adacache", metric_blocks=(1,)) as handle:  # no leftover hooks in the way
        generate(random_pipe, steps=4)
    assert handle.report().computed_steps() == 4


def test_config_object_and_list_methods(random_pipe):
    config = AdaCacheConfig.from_preset("slow-moreg", metric_blocks=(0, 4))
    with diffcache.enable(random_pipe, config) as handle:
        generate(random_pipe, steps=8)
        assert handle.runtime.metric_blocks == (0, 4)
    (info,) = [m for m in diffcache.list_methods() if m.name == "adacache"]
    assert info.default_preset == "fast-moreg" and "slow-moreg" in info.presets and "CogVideoX" in info.families


def test_enable_on_the_denoiser_module_in_a_hand_written_loop(shipped_pipe):
    model = shipped_pipe.transformer
    text = shipped_pipe.encode_prompt([PROMPT])
    x = torch.randn(1, 12, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    sigmas = torch.linspace(1, 0, 31)
    with diffcache.enable(model, "adacache", preset="fast", num_inference_steps=30) as handle:
        for i in range(30):
            v = model(hidden_states=x, timestep=sigmas[i:i + 1] * 1000, encoder_hidden_states=text).sample
            x = x + (sigmas[i + 1] - sigmas[i]) * v
    assert handle.report().calls[-1].num_steps == 30 and handle.report().computed_steps() < 30


# -- adapters on tiny real diffusers pipelines ---------------------------------------------------------------------
FAMILIES = VIDEO_FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_residual_split_is_exact(family):
    """Zeroing self-attention's output projection must zero the metric block's self-attention residual (the split
    point is right after self-attention) while the stack's residual (cross-attention, MLP) is not zero."""
    build, size = FAMILIES[family]
    pipe = build(num_layers=3)
    model = pipe.transformer
    adapter = diffcache.adapters.find_adapter(model)
    assert len(adapter.blocks(model)) == 3
    for block in adapter.blocks(model):
        attention = adapter.attention_modules(block)["self"]
        torch.nn.init.zeros_(attention.to_out[0].weight)
        torch.nn.init.zeros_(attention.to_out[0].bias)
    with diffcache.enable(pipe, "adacache", preset="fast") as handle:
        pipe(prompt="a cat", num_inference_steps=6, output_type="latent", generator=torch.Generator().manual_seed(0),
             **size)
        states = handle.runtime.states.values()
        assert any(state.metric for state in states)
        for state in states:
            assert all(float(a.abs().max()) == 0.0 for a in state.metric.values())
            assert float(state.residual[0].abs().max()) > 0
        assert handle.report().calls[-1].steps[1].values["rel_l1"] == 0.0  # both residuals zero


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_reused_block_returns_the_computed_output(family):
    build, size = FAMILIES[family]
    pipe = build(num_layers=3)
    model = pipe.transformer
    # drive the denoiser directly with identical inputs at steps 1, 2 (computed) and 3 (reused: d = 0 -> rate 6)
    inputs = {}

    def grab(module, args, kwargs):
        inputs.setdefault("call", (args, kwargs))

    handle_grab = model.register_forward_pre_hook(grab, with_kwargs=True)
    pipe(prompt="a cat", num_inference_steps=2, output_type="latent", **size)
    handle_grab.remove()
    args, kwargs = inputs["call"]
    kwargs = {k: v for k, v in kwargs.items() if k != "return_dict"}
    outputs = []
    with diffcache.enable(model, "adacache", preset="fast", num_inference_steps=30) as handle:
        for step in range(3):
            with model.cache_context("cond", step_index=step, num_inference_steps=30):
                outputs.append(model(*args, **kwargs, return_dict=False)[0])
        steps = handle.report().calls[-1].steps
    assert [s.computed for s in steps] == [True, True, False]
    assert steps[1].values["rel_l1"] == 0.0 and steps[1].values["rate"] == 6
    torch.testing.assert_close(outputs[2], outputs[1], atol=1e-5, rtol=1e-5)


# -- the stack's residual against the per-block cache it replaces ------------------------------------------------
class _PerBlockHook(ModelHook):
    """The former implementation, kept as the reference: every block caches its two residuals (self-attention, and
    the rest) per branch and, on a reused step, returns ``input + both``."""

    def __init__(self, runtime, index, probes):
        super().__init__()
        self.runtime, self.index, self.probes = runtime, index, probes

    def new_forward(self, module, *args, **kwargs):
        runtime, adapter = self.runtime, self.runtime.adapter
        streams = adapter.block_streams(module, args, kwargs)
        cache = runtime.caches.setdefault(runtime.ctx.branch, [None] * runtime.num_blocks)
        entry = cache[self.index]
        if not runtime.compute and entry is not None and entry[0][0].shape == streams[0].shape:
            runtime.count_block(computed=False)
            attention, rest = entry
            return adapter.make_block_output(tuple(
                x + a.to(x.dtype) + b.to(x.dtype) for x, a, b in zip(streams, attention, rest)))
        for probe in self.probes:
            probe.captured = None
        output = self.fn_ref.original_forward(*args, **kwargs)
        outputs = adapter.output_streams(output)
        if not self.probes:
            mid = outputs
        else:
            mid = tuple(stream for probe in self.probes for stream in probe.captured)
            mid = (*mid, *streams[len(mid):])
        attention = tuple((m.to(x.dtype) - x).detach() for m, x in zip(mid, streams))
        rest = tuple((o - m.to(o.dtype)).detach() for o, m in zip(outputs, mid))
        if self.index in runtime.metric_blocks and runtime.ctx.first_in_step:
            runtime.observe_per_block(self.index, entry[0][0] if entry is not None else None, attention[0])
        cache[self.index] = (attention, rest)
        runtime.count_block(computed=True)
        return output


class PerBlockAdaCache(AdaCacheRuntime):
    """AdaCache as it was: two residuals per block per branch (the reference the stack's residual must match)."""

    def install(self):
        blocks = self.adapter.blocks(self.model)
        self.num_blocks, self.blocks = len(blocks), blocks
        self.metric_blocks = tuple(b % len(blocks) for b in (self.config.metric_blocks or (len(blocks) // 2,)))
        for index, block in enumerate(blocks):
            split = self.adapter.split_module(block)
            modules = () if split is None else split if isinstance(split, tuple) else (split,)
            probes = [_MidProbe(self.adapter) for _ in modules]
            for module, probe in zip(modules, probes):
                self.add_hook(module, probe, self.HOOK + "_split")
            self.add_hook(block, _PerBlockHook(self, index, probes))
        self.clear()

    def clear(self):
        self.caches = {}
        super().clear()

    def observe_per_block(self, index, cached, residual):
        rel = relative_change(cached, residual) if cached is not None else None
        motion = None
        if self.config.moreg is not None:
            tokens = self.adapter.frame_major_tokens(self.blocks[index], residual, self._grid)
            motion = motion_score(tokens, self._tokens_per_frame, self.config.moreg_frame_stride)
        self._observed[index] = (rel, motion)


def _run(pipe, call, runtime_class, monkeypatch, steps, **options):
    """A call with ``runtime_class`` standing in for AdaCache's runtime: the frames, the call's report and the
    runtime's per-branch states as they were at the end of the call."""
    info = framework.method_info("adacache")
    with monkeypatch.context() as patch:
        patch.setitem(framework._METHODS, "adacache", dataclasses.replace(info, runtime_class=runtime_class))
        with diffcache.enable(pipe, "adacache", **options) as handle:
            frames = call(pipe, steps)
            states = dict(getattr(handle.runtime, "states", {}))
            metric_blocks = handle.runtime.metric_blocks
    return frames, handle.report().calls[-1], states, metric_blocks


#: family: (enable options, streams per block); a forced rate of 2 reuses steps 3 and 5 of 7
EQUIVALENCE = {
    "Wan": (dict(preset="fast-moreg", codebook=((1e9, 2),)), 1),
    "CogVideoX": (dict(preset="fast", codebook=((1e9, 2),)), 2),  # batched CFG; video and text streams
    "HunyuanVideo": (dict(preset="fast-moreg", codebook=((1e9, 2),), metric_blocks=(0, 2)), 2),  # 2 double, 1 single
    "LTX-2": (dict(preset="fast", codebook=((1e9, 2),)), 2),  # video and audio, a split point each
    "WanVACE": (dict(preset="fast-moreg", codebook=((1e9, 2),)), 1),  # hints added between blocks
    "Latte": (dict(preset="fast-moreg", codebook=((1e9, 2),)), 1),  # alternating layouts (run_output_streams)
}
SLOW_FAMILIES = ("WanVACE", "Latte")  # the slowest tiny pipelines: run with -m slow


@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.slow) if f in SLOW_FAMILIES else f
                                    for f in EQUIVALENCE])
def test_the_stack_residual_gives_the_per_block_output_and_decisions(family, monkeypatch):
    """Caching one residual for the whole stack gives the output of caching two per block (float rounding apart),
    with the same steps computed and the same metric values, rates and motion scores; the cache holds, per CFG
    branch, one residual per stream, and the metric blocks' self-attention residuals for the deciding branch only."""
    build, call, _ = TINY_PIPELINES[family]
    pipe = build()
    options, streams = EQUIVALENCE[family]
    new, new_call, states, metric_blocks = _run(pipe, call, AdaCacheRuntime, monkeypatch, 7, **options)
    old, old_call, _, _ = _run(pipe, call, PerBlockAdaCache, monkeypatch, 7, **options)
    assert [s.computed for s in new_call.steps] == [s.computed for s in old_call.steps]
    assert [s.step for s in new_call.steps if not s.computed] == [2, 4]
    assert [s.blocks_reused for s in new_call.steps] == [s.blocks_reused for s in old_call.steps]
    for a, b in zip(new_call.steps, old_call.steps):
        assert a.values.keys() == b.values.keys()
        assert a.values.get("rate") == b.values.get("rate")
        for key in a.values:  # MoReg raises the motion score to the 8th power: rounding grows
            assert a.values[key] == pytest.approx(b.values[key], rel=1e-3, abs=1e-6), key
    np.testing.assert_allclose(new, old, atol=1e-5, rtol=1e-5)
    assert states and all(len(state.residual) == streams for state in states.values())
    assert all(state.run_input is state.last_output is state.added is None for state in states.values())
    deciding = [branch for branch, state in states.items() if state.metric]
    assert len(deciding) == 1 and sorted(states[deciding[0]].metric) == sorted(metric_blocks)


@pytest.mark.slow
def test_the_default_schedule_decides_as_the_per_block_cache(monkeypatch):
    """With rates chosen by the metric (not forced), the steps computed and the rates are those of the per-block
    cache."""
    build, call, _ = TINY_PIPELINES["Wan"]
    pipe = build()
    options = dict(preset="fast-moreg", codebook=((0.5, 3), (1.0, 2), (2.0, 1)))
    new, new_call, _, _ = _run(pipe, call, AdaCacheRuntime, monkeypatch, 12, **options)
    old, old_call, _, _ = _run(pipe, call, PerBlockAdaCache, monkeypatch, 12, **options)
    decisions = [(s.computed, s.values.get("rate")) for s in new_call.steps]
    assert decisions == [(s.computed, s.values.get("rate")) for s in old_call.steps]
    print(decisions)
    np.testing.assert_allclose(new, old, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["LTX-Video", "CogVideoX"])
def test_the_cache_keeps_the_dtype_of_the_streams_in_bf16(family):
    """In a bf16 model every cached tensor is bf16 (the dtype of the stream the block receives; LTX-Video's blocks
    hand back float32 tensors in places) and the metric values are finite floats computed in float32."""
    build, call, _ = TINY_PIPELINES[family]
    pipe = build().to(torch.bfloat16)
    with diffcache.enable(pipe, "adacache", preset="fast-moreg", codebook=((1e9, 2),)) as handle:
        frames = call(pipe, 5)
        states = dict(handle.runtime.states)
        steps = handle.report().calls[-1].steps
    held = [t for state in states.values() for t in (*state.residual, *state.metric.values())]
    assert held and {t.dtype for t in held} == {torch.bfloat16}
    assert not all(s.computed for s in steps) and np.isfinite(np.asarray(frames, dtype=np.float32)).all()
    assert all(np.isfinite(v) for s in steps for k, v in s.values.items() if k in ("rel_l1", "motion", "distance"))

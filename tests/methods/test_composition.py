"""Caches at different levels, combined (diffcache.composition): the composed run's decisions are each level's own
rule replayed by hand, a documented equivalence holds bit for bit, refusals say which and why, bench specs parse,
and disable() gives back the uncached output bit for bit."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import diffcache
from diffcache.bench.specs import MethodSpec, parse_methods
from diffcache.composition import ComposedConfig, ComposedReport, compose
from diffcache.errors import CompositionError, ConfigError, MethodSilentWarning, NothingSkippedWarning
from diffcache.methods.fastercache import CFGCacheConfig, FasterCacheConfig, plan
from diffcache.methods.framework import relative_change
from diffcache.methods.teacache import TeaCacheConfig, teacache_schedule

PROMPT = "a red circle moving left"
STEPS = 16


def generate(pipe, steps=STEPS, cfg_mode="split", prompt=PROMPT):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        return pipe(prompt, num_inference_steps=steps, guidance_scale=5.0, output_type="np", cfg_mode=cfg_mode,
                    generator=torch.Generator().manual_seed(0)).frames


# -- levels --------------------------------------------------------------------------------------------------------
def test_each_method_declares_its_levels():
    levels = {info.name: info.config_class.from_preset(None).levels() for info in diffcache.list_methods()}
    assert levels["fastercache"] == {"attention", "cfg"} and levels["cfg-cache"] == {"cfg"}
    assert FasterCacheConfig(cfg_cache=False).levels() == {"attention"}
    assert FasterCacheConfig(attention_reuse=False).levels() == {"cfg"}
    assert all(levels[m] == {"step"} for m in ("teacache", "fbcache", "adacache", "deepcache", "easycache"))
    assert levels["pab"] == {"attention"} and levels["hsa"] == {"token"}


def test_cfg_cache_has_the_cfg_options_and_fastercaches_schedules_only():
    config = CFGCacheConfig.from_preset("official-latte", enhance="low")
    assert config.schedule == "official-latte" and not config.attention_reuse and config.cfg_cache
    assert set(CFGCacheConfig.PRESETS) == set(FasterCacheConfig.PRESETS)
    with pytest.raises(diffcache.UnknownOptionError, match="has no option 'attention_reuse'"):
        CFGCacheConfig.from_preset(None, attention_reuse=True)
    with pytest.raises(ConfigError, match="schedule must be one of"):
        CFGCacheConfig(schedule="nope")


# -- refusals ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("methods,match", [
    ("teacache+fbcache", "teacache and fbcache both act on the step level"),
    ("fastercache+cfg-cache", "fastercache and cfg-cache both act on the cfg level.*cfg_cache=False"),
    ("fastercache+pab", "both act on the attention level"),
    ("hsa+teacache", "hsa cannot be combined with teacache \\(step level\\): HSA's token-sparse forward"),
    ("hsa+cfg-cache", "hsa cannot be combined with cfg-cache \\(cfg level\\)"),
    ("pab+hsa", "hsa cannot be combined with pab \\(attention level\\)"),
    ("fbcache+pab", "pab \\(attention level\\) cannot run inside fbcache \\(step level\\): its decision reads block "
                    "residuals"),
    ("adacache+pab", "cannot run inside adacache"),
    ("easycache+pab", "cannot run inside easycache \\(step level\\): its decision reads the denoiser's output"),
    ("easycache+teacache", "both act on the step level"),
    ("teacache+teacache", "teacache is given twice"),
])
def test_refusals_say_which_why_and_what_combines(methods, match):
    with pytest.raises(CompositionError, match=match) as error:
        compose(methods)
    assert "Combinable: one method per level" in str(error.value) and "teacache+cfg-cache" in str(error.value)
    with pytest.raises(CompositionError, match=match):
        MethodSpec.parse(methods)


def test_compositions_that_combine():
    assert compose("teacache+cfg-cache").ordered()[0].__class__ is CFGCacheConfig  # CFG outermost
    for methods in ("fbcache+cfg-cache", "adacache+cfg-cache", "teacache+pab", "teacache+pab+cfg-cache",
                    "teacache+fastercache", "pab+cfg-cache", "easycache+cfg-cache"):
        compose(methods)
    compose([FasterCacheConfig(cfg_cache=False), "cfg-cache:paper"])


def test_a_composition_takes_options_per_part_only(random_pipe):
    with pytest.raises(ConfigError, match="cannot be given to a composition as a whole"):
        diffcache.enable(random_pipe, "fbcache+cfg-cache", threshold=0.2)
    with pytest.raises(ConfigError, match="a preset per part"):
        diffcache.enable(random_pipe, "fbcache+cfg-cache", preset="fast")
    assert not hasattr(random_pipe.transformer, "_diffcache_handle")


# -- the worked example: teacache + cfg-cache on tiny-shapes-t2v, split CFG ----------------------------------------
@pytest.mark.slow  # three or more 16-step calls of the shipped model
def test_teacache_plus_cfg_cache_is_each_rule_replayed_by_hand(shipped_pipe):
    """Per branch, the signal TeaCache reads (block 0's modulated input) and whether the blocks really ran are
    observed outside diffcache; the composed run's decisions are then TeaCache's rule replayed on the cond branch,
    and on the uncond branch with the calls CFG-Cache answered removed (a branch that missed the previous step
    computes), and CFG-Cache's schedule for which uncond calls never reach the model."""
    model = shipped_pipe.transformer
    reference = generate(shipped_pipe)
    handle = diffcache.enable(shipped_pipe, [TeaCacheConfig.from_preset("tiny-shapes-t2v"), "cfg-cache"])
    adapter = handle.parts[0].runtime.adapter
    seen = []  # (step, branch, signal) per block-0 call that reached the blocks
    ran = []  # (step, branch) per forward in which the last block really ran
    hooks = [model.blocks[0].register_forward_pre_hook(
        lambda m, a, k: seen.append((handle.tracker.current.step, handle.tracker.current.branch,
                                     adapter.modulated_input(m, a, k).detach().clone())), with_kwargs=True),
        model.blocks[-1].ffn.register_forward_hook(
            lambda m, a, o: ran.append((handle.tracker.current.step, handle.tracker.current.branch)))]
    try:
        cached = generate(shipped_pipe)
    finally:
        for h in hooks:
            h.remove()
    report = handle.report()
    tea = next(p.config for p in handle.parts if isinstance(p.config, TeaCacheConfig))
    handle.disable()
    np.testing.assert_array_equal(generate(shipped_pipe), reference)  # disable: bit-identical

    # CFG-Cache: uncond is rebuilt exactly where its schedule says (a full step came first)
    schedule = CFGCacheConfig.from_preset("default").schedule
    rebuilt = [c - 1 for c in range(1, STEPS + 1) if plan(schedule, c, STEPS).skip_uncond]
    assert rebuilt and [s.step for s in report.parts["cfg-cache"].calls[-1].steps
                        if s.values.get("uncond") == "rebuilt"] == rebuilt
    assert sorted({step for step, branch, _ in seen if branch == "uncond"}) == [
        s for s in range(STEPS) if s not in rebuilt]  # an answered uncond call never reaches the blocks

    # TeaCache's rule, replayed per branch on the signals it saw
    def replay(branch):
        steps = [(step, signal) for step, b, signal in seen if b == branch]
        computed, accumulated, previous = {}, 0.0, (None, None)
        poly = np.poly1d(tea.coefficients)
        for step, signal in steps:
            rel = None if previous[1] is None else relative_change(previous[1], signal)
            forced = (step < tea.warmup_steps or (tea.compute_last_step and step == STEPS - 1) or rel is None
                      or previous[0] != step - 1)  # a branch that missed the previous step computes
            if forced:
                accumulated, computed[step] = 0.0, True
            else:
                accumulated += float(poly(rel))
                computed[step] = accumulated >= tea.threshold
                accumulated = 0.0 if computed[step] else accumulated
            previous = (step, signal)
        return computed

    for branch in ("cond", "uncond"):
        expected = replay(branch)
        assert {step for step, b in ran if b == branch} == {step for step, c in expected.items() if c}, branch
    # on the cond branch (which runs every step) this is TeaCache's own schedule function
    cond_signals = [signal for _, b, signal in seen if b == "cond"]
    rels = [None] + [relative_change(a, b) for a, b in zip(cond_signals, cond_signals[1:])]
    assert teacache_schedule(rels, tea.coefficients, tea.threshold, tea.warmup_steps, tea.compute_last_step) == [
        replay("cond")[s] for s in range(STEPS)]
    assert 0 < sum(replay("cond").values()) < STEPS  # the example both reuses and computes

    # the composed report: each level's own report, and one step table whose counts are the blocks that ran
    assert isinstance(report, ComposedReport) and list(report.parts) == ["cfg-cache", "teacache"]
    merged = report.calls[-1]
    blocks = len(model.blocks)
    for record in merged.steps:
        ran_here = sum(1 for step, _ in ran if step == record.step)
        assert record.blocks_computed == ran_here * blocks
        assert record.blocks_computed + record.blocks_reused == 2 * blocks  # both branches' blocks, run or not
        assert record.computed == report.parts["teacache"].calls[-1].steps[record.step].computed
        assert (record.values.get("cfg-cache.uncond") == "rebuilt") == (record.step in rebuilt)
    text = str(report)
    assert "levels, outermost first: cfg-cache (cfg), teacache (step)" in text
    assert f"uncond rebuilt at {len(rebuilt)}" in text
    assert not np.array_equal(cached, reference) and np.isfinite(cached).all()


@pytest.mark.slow  # three or more 16-step calls of the shipped model
def test_fastercache_is_its_attention_level_composed_with_cfg_cache(shipped_pipe):
    """The documented equivalence: FasterCache = its attention level (cfg_cache=False) + cfg-cache, bit for bit,
    with split CFG and with batched CFG (where the cut cond-only call reaches the attention level as ``cond``)."""
    for cfg_mode in ("split", "batched"):
        with diffcache.enable(shipped_pipe, "fastercache"):
            whole = generate(shipped_pipe, cfg_mode=cfg_mode)
        with diffcache.enable(shipped_pipe, [FasterCacheConfig(cfg_cache=False), "cfg-cache"]) as handle:
            composed = generate(shipped_pipe, cfg_mode=cfg_mode)
        np.testing.assert_array_equal(composed, whole)
        assert handle.report().parts["cfg-cache"].calls[-1].steps[-2].values.get("uncond") == "rebuilt"


@pytest.mark.slow  # three or more 16-step calls of the shipped model
def test_teacache_plus_cfg_cache_with_batched_cfg(shipped_pipe):
    """With batched CFG a cut call reaches TeaCache as a cond forward: its cond state is kept apart from the full
    batch's, so it reuses between cut steps and computes when the batch changes."""
    reference = generate(shipped_pipe, cfg_mode="batched")
    tea = TeaCacheConfig.from_preset("tiny-shapes-t2v", threshold=0.2)  # reuses within the runs of cut steps
    with diffcache.enable(shipped_pipe, [tea, "cfg-cache"]) as handle:
        video = generate(shipped_pipe, cfg_mode="batched")
    tea = handle.report().parts["teacache"].calls[-1].steps
    rebuilt = {s.step for s in handle.report().parts["cfg-cache"].calls[-1].steps if s.values.get("uncond")}
    assert any(not s.computed for s in tea if s.step in rebuilt)  # reuse between cut steps
    for s in tea:  # the step after a change of batch (full ↔ cut) computes
        if s.step and ((s.step in rebuilt) != (s.step - 1 in rebuilt)):
            assert s.computed, s.step
    assert np.isfinite(video).all() and video.shape == reference.shape
    np.testing.assert_array_equal(generate(shipped_pipe, cfg_mode="batched"), reference)


# -- attention inside the step level -------------------------------------------------------------------------------
@pytest.mark.slow  # three or more 16-step calls of the shipped model
def test_pab_inside_teacache(shipped_pipe):
    """PAB's attention hooks run only in the forwards whose blocks TeaCache runs; on a step TeaCache reuses, PAB
    counts nothing. Three levels also combine (teacache+pab+cfg-cache)."""
    reference = generate(shipped_pipe)
    with diffcache.enable(shipped_pipe, "teacache:tiny-shapes-t2v+pab") as handle, warnings.catch_warnings():
        warnings.simplefilter("error", MethodSilentWarning)  # a step TeaCache reuses leaves PAB nothing to run
        video = generate(shipped_pipe)
    report = handle.report()
    tea, pab = (report.parts[name].calls[-1].steps for name in ("teacache", "pab"))
    assert any(s.blocks_reused for s in pab) and any(not s.computed for s in tea)
    for t, p in zip(tea, pab):
        if t.blocks_computed == 0:  # TeaCache reused every branch's blocks: no attention ran or was reused
            assert p.blocks_computed + p.blocks_reused == 0
    assert [s.blocks_computed for s in report.calls[-1].steps] == [s.blocks_computed for s in tea]
    assert np.isfinite(video).all() and not np.array_equal(video, reference)
    with diffcache.enable(shipped_pipe, "teacache:tiny-shapes-t2v+pab+cfg-cache") as handle:
        three = generate(shipped_pipe)
    assert list(handle.report().parts) == ["cfg-cache", "teacache", "pab"] and np.isfinite(three).all()
    np.testing.assert_array_equal(generate(shipped_pipe), reference)


# -- the handle ----------------------------------------------------------------------------------------------------
def test_handle_hooks_disable_and_one_tracker(random_pipe):
    model = random_pipe.transformer
    reference = generate(random_pipe, steps=8)
    handle = diffcache.enable(random_pipe, ["fbcache:fast", CFGCacheConfig.from_preset("paper")])
    assert handle.method == "fbcache+cfg-cache" and isinstance(handle.config, ComposedConfig)
    assert len({id(part.tracker) for part in handle.parts}) == 1
    assert [type(r).__name__ for r in handle.tracker.listeners] == ["CFGCacheRuntime", "FBCacheRuntime"]
    order = list(model._diffusers_hook._hook_order)
    assert order.index("diffcache_cfgcache_cfg") < order.index("diffcache_step_tracker")  # tracker outermost
    assert "diffcache_fbcache" in model.blocks[0]._diffusers_hook.hooks
    with pytest.raises(diffcache.MethodAlreadyEnabledError, match="fbcache\\+cfg-cache:fast\\+paper"):
        diffcache.enable(random_pipe, "pab")
    generate(random_pipe, steps=8)
    handle.disable()
    assert not [n for n, m in model.named_modules() if getattr(m, "_diffusers_hook", None) is not None
                and m._diffusers_hook.hooks]
    np.testing.assert_array_equal(generate(random_pipe, steps=8), reference)


def test_preset_file_of_a_composition(random_pipe, tmp_path):
    """The layout ``diffcache tune`` writes: {"method": "a+b", "configs": {"a": {...}, "b": {...}}}."""
    composed = compose(["fbcache:fast", "cfg-cache:paper"])
    path = tmp_path / "tuned.json"
    data = composed.to_dict()
    data["configs"]["fbcache"]["threshold"] = 0.3
    path.write_text(json.dumps(data))
    with diffcache.enable(random_pipe, "fbcache+cfg-cache", preset=str(path)) as handle:
        assert handle.config.configs[0].threshold == 0.3 and handle.config.configs[1].schedule == "paper"
    with pytest.raises(ConfigError, match="is for fbcache\\+cfg-cache, not teacache\\+cfg-cache"):
        diffcache.enable(random_pipe, "teacache+cfg-cache", preset=str(path))
    assert ComposedConfig.from_dict(composed.to_dict()) == composed


def test_cache_bytes_of_a_composition_are_its_parts():
    from diffcache.memory import cache_bytes

    total = cache_bytes("fbcache+cfg-cache", "wan2.1-1.3b", 480, 832, 81, cfg="split")
    parts = [cache_bytes(m, "wan2.1-1.3b", 480, 832, 81, cfg="split") for m in ("cfg-cache", "fbcache")]
    assert total.total == sum(p.total for p in parts) > 0
    assert all(name.split(": ")[0] in ("cfg-cache", "fbcache") for name in total.parts)


# -- the benchmark's specs -----------------------------------------------------------------------------------------
def test_bench_specs():
    specs = parse_methods("none,teacache+cfg-cache,fbcache:fast+cfg-cache:default[enhance='low'],"
                          "teacache:tiny-shapes-t2v+cfg-cache")
    assert [s.label for s in specs] == ["none", "teacache:auto+cfg-cache:default",
                                        "fbcache:fast+cfg-cache:default[enhance=low]",
                                        "teacache:tiny-shapes-t2v+cfg-cache:default"]
    method, arguments = specs[2].enable_arguments()
    assert arguments == {} and [type(c).__name__ for c in method] == ["FBCacheConfig", "CFGCacheConfig"]
    assert method[0].threshold == 0.15 and method[1].enhance == "low"
    assert specs[1].kind == "method" and specs[1].name == "teacache+cfg-cache"
    with pytest.raises(diffcache.UnknownMethodError, match="only diffcache methods combine"):
        MethodSpec.parse("none+teacache")
    with pytest.raises(diffcache.UnknownMethodError, match="unknown preset 'x' of fbcache"):
        MethodSpec.parse("fbcache:x+cfg-cache")

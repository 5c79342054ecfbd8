"""The contract every method keeps on every adapter: each registered method × each built-in adapter's tiny real
pipeline (tests/tiny_diffusers.py: TINY_PIPELINES, and one file per family in tests/tiny_families/). A new method or adapter is covered without editing this file.

Where the adapter lacks a capability the method needs, ``enable`` must refuse, naming what is missing, and leave
the model untouched; where only the method's default preset needs more than the adapter has (AdaCache's MoReg and a
family without a token grid), that preset is refused as such and the contract runs with the first preset that fits.
Where it can run:

* ``disable()`` gives back output bit-identical to never enabling; a failed ``enable`` leaves the model untouched;
* the report is honest: work the report says it skipped is really skipped, counted independently of the method
  (the output sizes of every parameterised leaf module); for block-level methods, its block counts equal the
  block calls that did (or did not do) any work;
* with CFG as two calls per step, what the cond branch gets does not depend on the uncond branch;
* a method whose hooks do not run warns (``MethodSilentWarning``);
* two consecutive calls with different step counts are two calls in the report, each with its own steps;
* guidance 1 (no CFG) and two videos per prompt give finite output of the right shape and a full report.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from tiny_diffusers import TINY_PIPELINES

import diffcache
from diffcache.adapters import find_adapter, registered_adapters
from diffcache.context import TRACKER_HOOK
from diffcache.errors import CallRefusedError, MethodSilentWarning, NothingSkippedWarning, UnsupportedModelError
from diffcache.methods.framework import missing_capabilities

STEPS = 8
METHODS = [info.name for info in diffcache.list_methods()]
FAMILIES = [adapter.family for adapter in registered_adapters() if adapter.__module__.startswith("diffcache.")]
_PIPES: dict = {}
_SEVERAL_SHAPES: dict = {}  # family -> output shape of an uncached guidance-1, two-videos call


def test_every_built_in_adapter_has_a_tiny_pipeline():
    assert set(FAMILIES) <= set(TINY_PIPELINES), "add the new family's tiny pipeline to tests/tiny_families/"


def _pipe(family):
    if family not in _PIPES:
        build, call, split = TINY_PIPELINES[family]
        _PIPES[family] = (build(), call, split)
    return _PIPES[family]


def _denoiser(pipe):
    return pipe.transformer if hasattr(pipe, "transformer") else pipe.unet


def _denoisers(pipe) -> torch.nn.ModuleList:
    """Every denoiser of the pipeline (Wan 2.2 A14B: both experts), as one module for counting and hook checks."""
    second = getattr(pipe, "transformer_2", None)
    return torch.nn.ModuleList([_denoiser(pipe)] + ([second] if second is not None else []))


def _untouched(models, before) -> bool:
    return _hooks(models) == before and not any(hasattr(m, "_diffcache_handle") for m in models)


def _hooks(model) -> dict:
    """Every diffusers hook on the model and its submodules: {module name: [hook names]}."""
    return {name: list(module._diffusers_hook.hooks) for name, module in model.named_modules()
            if getattr(module, "_diffusers_hook", None) is not None and module._diffusers_hook.hooks}


class LeafWork:
    """Counts, independently of any method, the work done by every parameterised leaf module (summed output
    sizes), and for chosen modules which of their calls did any work."""

    def __init__(self, model, watched=()):
        self.total = 0
        self.calls: list[bool] = []  # one entry per call of a watched module: did any leaf inside run?
        self._running: list[bool] = []
        self._handles = []
        leaves = [m for m in model.modules() if not list(m.children()) and any(True for _ in m.parameters(False))]
        for leaf in leaves:
            self._handles.append(leaf.register_forward_hook(self._leaf))
        for module in watched:
            self._handles.append(module.register_forward_pre_hook(self._enter))
            self._handles.append(module.register_forward_hook(self._leave))

    def _leaf(self, module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        self.total += out.numel() if isinstance(out, torch.Tensor) else 1
        self._running = [True] * len(self._running)

    def _enter(self, module, args):
        self._running.append(False)

    def _leave(self, module, args, output):
        self.calls.append(self._running.pop())

    def remove(self):
        for handle in self._handles:
            handle.remove()


def _enable(pipe, method, preset=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        return diffcache.enable(pipe, method, preset=preset)


def _runnable_preset(info, adapter):
    """The method's default preset (``None``), or where that needs a capability the family lacks while the method
    itself fits it (AdaCache's MoReg on a family without a token grid) the first preset that does not; a method
    that does not fit the family gives ``None`` too (and is refused)."""
    if family_fits(info, adapter) and missing_capabilities(info.config_class.from_preset(None), adapter):
        return next(p for p in info.presets if not missing_capabilities(info.config_class.from_preset(p), adapter))
    return None


def family_fits(info, adapter) -> bool:
    return adapter.family in info.families


@pytest.mark.parametrize("family", list(TINY_PIPELINES))
@pytest.mark.parametrize("method", METHODS)
def test_method_contract(method, family, monkeypatch):
    pipe, call, split_cfg = _pipe(family)
    models = _denoisers(pipe)
    adapter = find_adapter(models[0])
    family = adapter.family  # a case of TINY_PIPELINES may be one pipeline of a family (Wan 2.2 A14B of Wan)
    info = next(i for i in diffcache.list_methods() if i.name == method)
    config = info.config_class.from_preset(None)
    before = _hooks(models)
    preset = _runnable_preset(info, adapter)
    if preset is not None:  # the default preset's options need what the family lacks: refused as such, then run
        with pytest.raises(UnsupportedModelError, match=f"{method}:{config.preset} needs .*which the {family} adapter"):
            diffcache.enable(pipe, method)
        assert _untouched(models, before)
        config = info.config_class.from_preset(preset)
    reference = call(pipe, STEPS)
    per_prompt = 2 if getattr(call, "many", True) else 1
    if family not in _SEVERAL_SHAPES:  # what the pipeline itself gives (CogVideoX always makes one video per prompt)
        _SEVERAL_SHAPES[family] = call(pipe, 2, guidance=1.0, per_prompt=per_prompt).shape
    several_shape = _SEVERAL_SHAPES[family]

    if missing_capabilities(config, adapter):  # not applicable: a refusal that names what is missing
        with pytest.raises(UnsupportedModelError, match=f"{method} does not support {family} models.*it needs"):
            diffcache.enable(pipe, method)
        assert _untouched(models, before)
        assert family not in info.families
        return
    assert family in info.families
    try:
        handle = _enable(pipe, method, preset)
    except UnsupportedModelError as error:  # a config-level refusal (e.g. a preset fitted on another family)
        assert family in str(error) and _untouched(models, before)
        return

    # the report is honest: skipped work is really skipped, and block counts are block calls
    blocks = [block for model in models for block in adapter.blocks(model)]
    counted = {id(m) for part in handle.parts for m, name in part.runtime._hooked if name == part.runtime.HOOK}
    block_level = counted and counted <= {id(b) for b in blocks}
    work = LeafWork(models, blocks if block_level else ())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NothingSkippedWarning)
            cached = call(pipe, STEPS)
    except CallRefusedError as error:  # refused as the call began, before any work, saying what would work
        assert work.total == 0 and str(error)
        handle.disable()
        assert _untouched(models, before)
        return
    finally:
        work.remove()
    report_call = handle.report().calls[-1]
    assert len(report_call.steps) == STEPS and report_call.num_steps == STEPS
    assert np.isfinite(cached).all() and cached.shape == reference.shape
    reused = (sum(s.blocks_reused for s in report_call.steps)
              or any((s.active_fraction or 1.0) < 1.0 for s in report_call.steps))
    baseline = LeafWork(models)
    handle.disable()
    np.testing.assert_array_equal(call(pipe, STEPS), reference)  # disable: bit-identical to never enabling
    baseline.remove()
    assert _untouched(models, before)
    if reused:
        assert work.total < baseline.total, "the report says work was reused, but as much work was done"
    else:
        assert work.total >= baseline.total
    if block_level:
        assert sum(s.blocks_computed for s in report_call.steps) == sum(work.calls)
        assert sum(s.blocks_reused for s in report_call.steps) == len(work.calls) - sum(work.calls)

    # a failed enable leaves the model untouched
    original = info.runtime_class.install

    def failing_install(self):
        original(self)
        raise RuntimeError("install failed half way")

    monkeypatch.setattr(info.runtime_class, "install", failing_install)
    with pytest.raises(RuntimeError, match="install failed half way"):
        diffcache.enable(pipe, method, preset=preset)
    monkeypatch.undo()
    assert _untouched(models, before)
    np.testing.assert_array_equal(call(pipe, STEPS), reference)

    # two calls with different step counts: two calls in the report, each with its own steps
    handle = _enable(pipe, method, preset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        call(pipe, STEPS)
        call(pipe, STEPS + 2)
    assert [(c.num_steps, len(c.steps)) for c in handle.report().calls] == [(STEPS, STEPS), (STEPS + 2, STEPS + 2)]

    # guidance 1 (no CFG: one denoiser call per step) and two videos per prompt
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        try:
            several = call(pipe, STEPS, guidance=1.0, per_prompt=per_prompt)
        except CallRefusedError as error:  # refused as the call began, saying what would work
            assert "guidance" in str(error) or "CFG" in str(error), error
            several = None
    if several is not None:
        assert np.isfinite(several).all()
        assert several.shape == several_shape  # as the pipeline gives it uncached
        assert [(c.num_steps, len(c.steps)) for c in handle.report().calls][-1] == (STEPS, STEPS)
    handle.disable()


def _recorded_forwards(pipe, call, negative):
    """The denoiser's keyword arguments of every forward of an uncached call, with the branch it ran in."""
    model = _denoiser(pipe)
    forwards = []
    hook = model.register_forward_pre_hook(lambda m, a, k: forwards.append(dict(k)), with_kwargs=True)
    try:
        call(pipe, STEPS, negative=negative)
    finally:
        hook.remove()
    assert len(forwards) == 2 * STEPS, "expected a cond and an uncond forward per step"
    return forwards


@pytest.mark.parametrize("family", [f for f in TINY_PIPELINES if TINY_PIPELINES[f][2]])
@pytest.mark.parametrize("method", METHODS)
def test_cond_branch_does_not_depend_on_the_uncond_branch(method, family):
    """With CFG as two calls per step, what the cond branch gets does not depend on what the uncond branch sees:
    the same cond inputs replayed beside two different uncond input sequences give bit-identical cond outputs
    (cached tensors and per-branch decisions never cross branches). Two methods decide for both branches at once
    by design, and are checked with that part off or skipped: FasterCache's CFG-Cache rebuilds uncond *from* cond,
    and HSA allocates one token grouping for both branches from both branches' velocity changes."""
    pipe, call, _ = _pipe(family)
    model = _denoiser(pipe)
    info = next(i for i in diffcache.list_methods() if i.name == method)
    preset = _runnable_preset(info, find_adapter(model))
    if missing_capabilities(info.config_class.from_preset(preset), find_adapter(model)):
        pytest.skip(f"{method} does not apply to {family}")
    if len(_denoisers(pipe)) > 1:
        pytest.skip("the replay drives one denoiser; the experts' branches are checked in tests/test_experts.py")
    if method == "hsa":
        pytest.skip("HSA allocates one token grouping for both branches from both branches' velocity changes")
    overrides = {"cfg_cache": False} if method == "fastercache" else {}
    try:  # a config-level refusal (a preset fitted on another family) is test_method_contract's to check
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            diffcache.enable(pipe, method, preset, **overrides).disable()
    except UnsupportedModelError as error:
        pytest.skip(f"refused: {error}")
    first, second = _recorded_forwards(pipe, call, "dog"), _recorded_forwards(pipe, call, "the beach running")
    cond = first[0::2]  # WanPipeline-style loops run cond, then uncond, in every step

    def replay(uncond):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NothingSkippedWarning)
            handle = diffcache.enable(pipe, method, preset=preset, **overrides)
            outputs = []
            try:
                for step in range(STEPS):
                    for branch, kwargs in (("cond", cond[step]), ("uncond", uncond[step])):
                        with model.cache_context(branch, step_index=step, num_inference_steps=STEPS):
                            out = model(**{**kwargs, "return_dict": False})[0]
                        if branch == "cond":
                            outputs.append(out.detach().clone())
            finally:
                handle.disable()
        return outputs

    a, b = replay(first[1::2]), replay(second[1::2])
    assert not torch.equal(first[1]["encoder_hidden_states"], second[1]["encoder_hidden_states"])
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("family", list(TINY_PIPELINES))
@pytest.mark.parametrize("method", METHODS)
def test_a_method_whose_hooks_do_not_run_warns(method, family):
    pipe, call, _ = _pipe(family)
    model = _denoiser(pipe)
    info = next(i for i in diffcache.list_methods() if i.name == method)
    preset = _runnable_preset(info, find_adapter(model))
    if missing_capabilities(info.config_class.from_preset(preset), find_adapter(model)):
        pytest.skip(f"{method} does not apply to {family}")
    try:
        handle = _enable(pipe, method, preset)
    except UnsupportedModelError as error:
        pytest.skip(f"refused: {error}")
    try:
        for denoiser in _denoisers(pipe):
            for name, module in denoiser.named_modules():  # as if the hooked modules had been replaced after enable()
                registry = getattr(module, "_diffusers_hook", None)
                for hook in list(registry.hooks) if registry is not None else []:
                    if not (module is denoiser and hook == TRACKER_HOOK):
                        registry.remove_hook(hook, recurse=False)
        with pytest.warns(MethodSilentWarning, match="none of its hooks ran"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NothingSkippedWarning)
                call(pipe, STEPS)
    finally:
        handle.disable()

"""Every method with the offload modes of diffusers and accelerate, in both orders of enabling, on tiny real
pipelines (Wan: split CFG; LTX-Video: batched CFG, packed tokens; Stable Diffusion U-Net for DeepCache).

The machine has no accelerator, so every mode runs with the execution / onload device ``cpu``: the hooks are all
installed and run (accelerate's ``_hf_hook`` wrapping ``forward``, sequential offload's weights on the ``meta``
device between calls of a module, group offloading's ``HookRegistry`` hooks), only the copies are CPU to CPU. What
is checked, per method, mode and order:

* both calls' output equals the same method without offload (tight ``allclose``) and the report is the same, step by
  step — the second call shows that model offload's per-call re-hooking (``maybe_free_model_hooks``) keeps diffcache;
* the offload hooks still run during the cached calls and after ``disable()`` (counted on their ``pre_forward``),
  so neither side dropped the other's hooks; after ``disable()`` the output equals the uncached one.

Sequential offload is applied as ``enable_sequential_cpu_offload`` does (accelerate's ``cpu_offload`` on every
component) with the device ``cpu``: the pipeline method itself turns ``"cpu"`` into ``"cpu:0"``, and accelerate
1.15 then fails on any pipeline, without diffcache (its ``set_module_tensor_to_device`` takes ``cpu:0`` and ``cpu``
for different devices). ``use_stream=True`` needs a CUDA device (diffusers refuses a CPU onload device); its test
is skipped here.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from tiny_diffusers import TINY_PIPELINES

import diffcache
from diffcache.errors import ConfigError, NothingSkippedWarning
from diffcache.report import CallReport, Report

STEPS = 6
#: options that make each method reuse something in a short call of a tiny random model
OPTIONS = {"adacache": dict(codebook=((10.0, 2),)), "teacache": dict(coefficients=(0.0, 1.0, 0.0), threshold=0.5), "deepcache": dict(interval=2),
           "hsa": dict(runtime=0.8), "easycache": dict(warmup_steps=2, threshold=1.0)}
CASES = ([("Wan", m) for m in ("adacache", "fastercache", "hsa", "teacache", "fbcache", "pab")]
         + [("LTX-Video", m) for m in ("adacache", "fastercache", "hsa", "teacache", "fbcache", "pab")]
         + [("Stable Diffusion U-Net", "deepcache"), ("Wan", "easycache")])
DEFAULT_FAMILIES = ("Wan", "Stable Diffusion U-Net")  #: LTX-Video runs in the slow matrix only
DEFAULT_CASES = [case for case in CASES if case[0] in DEFAULT_FAMILIES]
MODES = ("model", "sequential", "group-block", "group-leaf", "apply-group")
ORDERS = ("offload-first", "cache-first")
_REFERENCE: dict = {}


def _denoiser(pipe):
    return pipe.transformer if hasattr(pipe, "transformer") else pipe.unet


def _offload(pipe, mode: str) -> None:
    cpu = torch.device("cpu")
    if mode == "model":
        pipe.enable_model_cpu_offload(device="cpu")
    elif mode == "sequential":  # what enable_sequential_cpu_offload does, with the device "cpu" (module docstring)
        from accelerate import cpu_offload

        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                cpu_offload(component, cpu, offload_buffers=len(component._parameters) > 0)
    elif mode == "group-block":
        _denoiser(pipe).enable_group_offload(cpu, cpu, offload_type="block_level", num_blocks_per_group=1)
    elif mode == "group-leaf":
        _denoiser(pipe).enable_group_offload(cpu, cpu, offload_type="leaf_level")
    elif mode == "apply-group":
        from diffusers.hooks import apply_group_offloading

        apply_group_offloading(_denoiser(pipe), cpu, cpu, offload_type="block_level", num_blocks_per_group=2)


class OffloadCalls:
    """Counts the calls of the offload hooks' ``pre_forward`` on the denoiser's modules: accelerate's (looked up as
    ``module._hf_hook`` at every call, so counted on their classes: model offload replaces its hook objects after
    every call) and diffusers' group-offloading hooks (counted on their registry entries)."""

    def __init__(self, model, monkeypatch):
        from accelerate.hooks import AlignDevicesHook, CpuOffload

        self.count = 0
        modules = {id(m) for m in model.modules()}
        for cls in (AlignDevicesHook, CpuOffload):
            monkeypatch.setattr(cls, "pre_forward", self._counted(cls.pre_forward, modules))
        for module in model.modules():
            registry = getattr(module, "_diffusers_hook", None)
            if registry is not None and "group_offloading" in registry.hooks:
                fn_ref = registry._fn_refs[registry._hook_order.index("group_offloading")]
                fn_ref.pre_forward = self._counted(fn_ref.pre_forward, None)

    def _counted(self, pre_forward, modules):
        def counted(*args, **kwargs):
            module = args[1] if modules is not None else None  # (hook, module, ...) on the class
            if modules is None or id(module) in modules:
                self.count += 1
            return pre_forward(*args, **kwargs)
        return counted


def _enable(pipe, method):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        return diffcache.enable(pipe, method, **OPTIONS.get(method, {}))


def _call(family, pipe):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        return np.asarray(TINY_PIPELINES[family][1](pipe, STEPS))


def _steps(call):
    return [(s.step, s.computed, s.blocks_computed, s.blocks_reused, s.active_fraction, tuple(s.branches))
            for s in call.steps]


def _reference(family, method):
    """(uncached output, the method's output and its call's steps) without offload."""
    if (family, method) not in _REFERENCE:
        pipe = TINY_PIPELINES[family][0]()
        uncached = _call(family, pipe)
        handle = _enable(pipe, method)
        cached = _call(family, pipe)
        steps = _steps(handle.report().calls[0])
        handle.disable()
        assert any(s[3] or (s[4] is not None and s[4] < 1) for s in steps), f"{method} reused nothing"
        _REFERENCE[(family, method)] = (uncached, cached, steps)
    return _REFERENCE[(family, method)]


def _check(family, method, mode, order, monkeypatch):
    uncached, cached, steps = _reference(family, method)
    pipe = TINY_PIPELINES[family][0]()
    if order == "offload-first":
        _offload(pipe, mode)
        handle = _enable(pipe, method)
    else:
        handle = _enable(pipe, method)
        _offload(pipe, mode)
    calls = OffloadCalls(_denoiser(pipe), monkeypatch)
    outputs = [_call(family, pipe), _call(family, pipe)]
    during = calls.count
    report = handle.report()
    handle.disable()
    after = _call(family, pipe)
    for output in outputs:
        np.testing.assert_allclose(output, cached, rtol=1e-5, atol=1e-6)
    assert [_steps(call) for call in report.calls] == [steps, steps]
    assert during > 0 and calls.count > during, "the offload hooks stopped running"
    np.testing.assert_allclose(after, uncached, rtol=1e-5, atol=1e-6)


def _default_run(index: int) -> tuple[str, str]:
    """The (mode, order) of case ``index`` run by default; the whole matrix is slow-marked."""
    return MODES[index % len(MODES)], ORDERS[index % len(ORDERS)]


@pytest.mark.parametrize("family,method", DEFAULT_CASES, ids=[f"{f}-{m}" for f, m in DEFAULT_CASES])
def test_method_under_offload(family, method, monkeypatch):
    """One mode and order per case (rotating, so every mode and both orders run by default)."""
    _check(family, method, *_default_run(CASES.index((family, method))), monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family,method", CASES, ids=[f"{f}-{m}" for f, m in CASES])
def test_method_under_offload_matrix(family, method, mode, order, monkeypatch):
    if family in DEFAULT_FAMILIES and (mode, order) == _default_run(CASES.index((family, method))):
        pytest.skip("run by test_method_under_offload")
    _check(family, method, mode, order, monkeypatch)


def test_disable_keeps_accelerate_hook_when_cache_came_first():
    """diffcache enabled first, model offload after: disable() leaves accelerate's wrapper on the transformer."""
    pipe = TINY_PIPELINES["Wan"][0]()
    handle = _enable(pipe, "fbcache")
    pipe.enable_model_cpu_offload(device="cpu")
    wrapper = pipe.transformer.forward
    handle.disable()
    assert pipe.transformer.forward is wrapper and hasattr(pipe.transformer, "_hf_hook")
    assert not pipe.transformer._diffusers_hook.hooks  # and nothing of diffcache is left beneath it


@pytest.mark.skipif(not torch.cuda.is_available(), reason="use_stream needs a CUDA onload device")
@pytest.mark.parametrize("method", ["fbcache", "adacache", "teacache"])
def test_group_offload_with_stream_cuda(method):
    """Prefetching (use_stream=True) on CUDA: reused blocks do not break the prefetch chain (untested here)."""
    family = "Wan"
    _, cached, steps = _reference(family, method)
    pipe = TINY_PIPELINES[family][0]()
    _denoiser(pipe).enable_group_offload(torch.device("cuda"), torch.device("cpu"), offload_type="block_level",
                                         num_blocks_per_group=1, use_stream=True)
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module) and component is not _denoiser(pipe):
            component.to("cuda")
    handle = _enable(pipe, method)
    output = _call(family, pipe)
    np.testing.assert_allclose(output, cached, rtol=1e-3, atol=1e-4)
    assert _steps(handle.report().calls[0]) == steps


# -- cache_device ----------------------------------------------------------------------------------------------------
CACHE_CASES = [("Wan", m) for m in ("adacache", "fastercache", "hsa", "teacache", "fbcache", "pab")] + [
    ("Stable Diffusion U-Net", "deepcache")]
_CACHE_DEFAULT = {"fastercache", "hsa", "deepcache"}  #: the others (same stash/unstash path) run with -m slow
CACHE_PARAMS = [pytest.param(f, m, id=f"{f}-{m}", marks=() if m in _CACHE_DEFAULT else pytest.mark.slow)
                for f, m in CACHE_CASES]


class StashLedger:
    """Counts, independently of the report, the bytes of every tensor the runtime hands to and takes from its cache
    device (wrapping its stash / unstash)."""

    def __init__(self, runtime):
        self.to = self.back = 0
        stash, unstash = runtime.stash, runtime.unstash

        def size(value):
            if isinstance(value, torch.Tensor):
                return value.numel() * value.element_size()
            return sum(size(v) for v in value) if isinstance(value, (tuple, list)) else 0

        def counted_stash(value):
            self.to += size(value)
            return stash(value)

        def counted_unstash(value, like=None):
            self.back += size(value)
            return unstash(value, like)
        runtime.stash, runtime.unstash = counted_stash, counted_unstash


@pytest.mark.parametrize("family,method", CACHE_PARAMS)
def test_cache_device_cpu(family, method):
    """cache_device='cpu' with the model on the CPU: bit-identical output, the same decisions, and the report's
    bytes equal what the method stored and fetched (counted on the stash/unstash calls; both > 0)."""
    _, cached, steps = _reference(family, method)
    pipe = TINY_PIPELINES[family][0]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        handle = diffcache.enable(pipe, method, cache_device="cpu", **OPTIONS.get(method, {}))
    assert handle.runtime.cache_device == torch.device("cpu")
    ledger = StashLedger(handle.runtime)
    output = _call(family, pipe)
    call = handle.report().calls[0]
    np.testing.assert_array_equal(output, cached)
    assert _steps(call) == steps
    assert call.bytes_to_cache_device == ledger.to > 0
    assert call.bytes_from_cache_device == ledger.back > 0
    assert "cache device:" in handle.report().summary()
    handle.disable()


@pytest.mark.parametrize("device", ["bogus", "meta", "cuda:7"])
def test_cache_device_refused(device):
    pipe = TINY_PIPELINES["Wan"][0]()
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(ConfigError, match=r"cache_device=.*accepted: None, 'cpu'"):
        diffcache.enable(pipe, "fbcache", cache_device=device)
    assert not hasattr(pipe.transformer, "_diffcache_handle")


def test_stash_copies_and_counts():
    """stash makes a copy on the cache device (not the cached tensor itself) and unstash brings it to ``like``."""
    from diffcache.methods.framework import Runtime

    runtime = Runtime.__new__(Runtime)
    runtime.report = Report("x", {})
    runtime.report.calls.append(CallReport(0, 1))
    runtime.cache_device, runtime.compute_device = torch.device("cpu"), None
    value = torch.arange(6.0)
    kept = runtime.stash((value, None))
    assert kept[1] is None and kept[0].data_ptr() != value.data_ptr() and torch.equal(kept[0], value)
    back = runtime.unstash(kept, value)
    assert torch.equal(back[0], value)
    assert runtime.report.calls[0].bytes_to_cache_device == runtime.report.calls[0].bytes_from_cache_device == 24

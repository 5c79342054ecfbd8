"""Every method with the model in bf16 and in fp16, on the tiny real pipelines (tests/tiny_diffusers.py).

The pipeline is put in the dtype as ``from_pretrained(torch_dtype=...)`` loads it: every weight in the dtype except
the modules the model class keeps in float32 (``_keep_in_fp32_modules``: Wan's time embedder, norms, modulation
table). Every tiny pipeline here, text encoders and VAEs included, runs in bf16 and in fp16 on the CPU.

For each method × family × dtype, with the method's default preset (or the first that fits the family, as the
contract test does; TeaCache, which refuses a model without published coefficients, with its own linear
polynomial), a few steps are run and checked:

* the output is finite and the report says something was reused;
* every floating-point tensor the runtime holds after the call has the model's dtype, except the documented
  float32 ones (docs/dtypes.md: FasterCache's frequency deltas, HSA's token scores);
* no module of the denoiser returns a dtype it does not return uncached (no method upcasts an activation, and a
  reused output has the dtype of the computed one);
* the decision values in the report are Python floats equal to a float64 recomputation from the tensors the
  method saw (TeaCache's relative L1, First-Block-Cache's residual change);

and the decision metrics themselves are checked on fp16 tensors whose sums overflow fp16 (finite, equal to the
float64 value).

The default run has bf16 on Wan (every method that fits it) and the Stable Diffusion U-Net (DeepCache) and fp16 on
Wan; every other case (fp16 DeepCache, CogVideoX, LTX-Video, HunyuanVideo, Mochi, LTX-2) runs under ``-m slow``.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.hooks.hooks import HookRegistry, ModelHook
from diffusers.models.cache_utils import CacheMixin
from tiny_diffusers import TINY_PIPELINES

import diffcache
from diffcache.adapters import find_adapter
from diffcache.context import StepTracker, install_tracker
from diffcache.errors import NothingSkippedWarning
from diffcache.methods.framework import missing_capabilities, relative_change
from diffcache.report import Report

STEPS = 8
STEPS_FOR = {"Stable Diffusion U-Net": 4}  # DeepCache's interval 3 reuses steps 1 and 2
FAMILIES = ["Wan", "CogVideoX", "LTX-Video", "HunyuanVideo", "Mochi", "LTX-2", "Stable Diffusion U-Net"]
#: the cases of the default run (the others are marked slow: ``-m slow``); the U-Nets cost ~0.7 s a forward in
#: bf16 / fp16 on a CPU
FAST_FAMILIES = {"bf16": {"Wan", "Stable Diffusion U-Net"}, "fp16": {"Wan"}}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: own TeaCache coefficients (rescaled change = relative L1 change): the tiny models have no published ones
TEACACHE_OPTIONS = {"coefficients": (1.0, 0.0), "threshold": 0.6}
#: runtime attributes documented (docs/dtypes.md) to hold float32 / complex64 tensors whatever the model's dtype
#: (FasterCache's deltas of a stream without 2-D maps, LTX-2's audio, are in the model's dtype)
FLOAT32_STATE = {"fastercache": ("deltas",), "cfg-cache": ("deltas",), "hsa": ("scores",)}
#: a family whose tiny model cannot meet the default preset (HSA: Mochi's tiny grid has 2 tokens, and at 8 steps
#: hsa-50's cheapest allocation costs 0.70 of the full run, a documented refusal) runs this preset instead
PRESET_FOR = {("hsa", "Mochi"): ("hsa-75", {})}
#: First-Block-Cache's default threshold (0.1) reuses nothing on the tiny random HunyuanVideo and Mochi models (their
#: first block's residual changes by more at every step, in float32 too): a threshold that reuses
PRESET_FOR.update({("fbcache", family): (None, {"threshold": 2.0}) for family in ("HunyuanVideo", "Mochi")})
#: known failures in methods another change fixes (flipped to passing at its merge)
XFAIL: dict[tuple[str, str, str], str] = {}

_PIPES: dict = {}
_REFERENCE_DTYPES: dict = {}


def as_loaded(pipe, dtype):
    """``pipe`` in ``dtype`` as ``from_pretrained(torch_dtype=dtype)`` would load it: each component cast, the
    parameters under a module the model class keeps in float32 (``_keep_in_fp32_modules``) back in float32."""
    pipe.to(dtype)
    for component in pipe.components.values():
        keep = getattr(component, "_keep_in_fp32_modules", None) if isinstance(component, torch.nn.Module) else None
        if keep:
            for name, parameter in component.named_parameters():
                if any(part in keep for part in name.split(".")):
                    parameter.data = parameter.data.float()
    return pipe


def _denoiser(pipe):
    return pipe.transformer if hasattr(pipe, "transformer") else pipe.unet


def _pipe(family, dtype_name):
    key = (family, dtype_name)
    if key not in _PIPES:
        build, call, _ = TINY_PIPELINES[family]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _PIPES[key] = (as_loaded(build(), DTYPES[dtype_name]), call)
    return _PIPES[key]


def floating_tensors(obj, path="runtime", seen=None):
    """``(path, tensor)`` for every floating-point or complex tensor reachable from ``obj`` through attributes,
    dicts, lists, tuples and dataclasses; modules (the model's weights) and pipelines are not entered."""
    seen = set() if seen is None else seen
    if id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, bool, torch.nn.Module)):
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            yield path, obj
        return
    if isinstance(obj, Report) or type(obj).__module__.startswith(("diffusers.pipelines",
                                                                                     "diffusers.schedulers")):
        return
    if isinstance(obj, dict):
        items = ((f"{path}[{k!r}]", v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(obj))
    elif dataclasses.is_dataclass(obj) or hasattr(obj, "__dict__"):
        items = ((f"{path}.{k}", v) for k, v in vars(obj).items())
    else:
        return
    for sub_path, value in items:
        yield from floating_tensors(value, sub_path, seen)


class OutputDtypes:
    """The dtypes of the floating-point tensors every module of ``model`` returns: {module name: set of dtypes}."""

    def __init__(self, model):
        self.dtypes: dict[str, set] = {}
        self._handles = [module.register_forward_hook(self._hook(name or "<denoiser>"))
                         for name, module in model.named_modules()]

    def _hook(self, name):
        def hook(module, args, output):
            found = self.dtypes.setdefault(name, set())
            for tensor in _tensors(output):
                if tensor.is_floating_point():
                    found.add(tensor.dtype)
        return hook

    def remove(self):
        for handle in self._handles:
            handle.remove()


def _tensors(output):
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, (tuple, list)):
        for item in output:
            yield from _tensors(item)
    elif hasattr(output, "to_tuple"):
        yield from _tensors(output.to_tuple())


def _quiet_call(call, pipe, steps=STEPS):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        return call(pipe, steps)


def _reference_dtypes(family, dtype_name):
    """What every module of the denoiser returns in an uncached call."""
    key = (family, dtype_name)
    if key not in _REFERENCE_DTYPES:
        pipe, call = _pipe(family, dtype_name)
        watch = OutputDtypes(_denoiser(pipe))
        try:
            _quiet_call(call, pipe, 2)  # the dtypes do not depend on the number of steps
        finally:
            watch.remove()
        _REFERENCE_DTYPES[key] = watch.dtypes
    return _REFERENCE_DTYPES[key]


def _options(info, adapter):
    """The preset and options a method runs with on this family (as the contract test chooses them)."""
    if info.name == "teacache":
        return None, dict(TEACACHE_OPTIONS)
    if info.name == "easycache":  # the official warm-up of 10 steps leaves nothing to reuse in 8
        return None, {"warmup_steps": 2, "threshold": 1.0}
    if (info.name, adapter.family) in PRESET_FOR:
        preset, options = PRESET_FOR[info.name, adapter.family]
        return preset, dict(options)
    default = info.config_class.from_preset(None)
    if missing_capabilities(default, adapter):
        return next(p for p in info.presets if not missing_capabilities(info.config_class.from_preset(p), adapter)), {}
    return None, {}


class SignalRecorder:
    """Records, per call of block 0, what TeaCache (the modulated input) or First-Block-Cache (block 0's own
    residual) decides on, so the report's values can be recomputed in float64. Installed before ``enable``: for
    First-Block-Cache it is a diffusers hook *inside* the method's (block 0's own output, not the reused stack's)."""

    NAME = "dtype_test_recorder"

    def __init__(self, method, adapter, model):
        self.seen: list[torch.Tensor] = []
        self.block = block = adapter.blocks(model)[0]
        self._handles = []
        if method == "teacache":
            def pre(module, args, kwargs):
                self.seen.append(adapter.modulated_input(module, args, kwargs).detach().clone())
            self._handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
            return
        recorder = self

        class Inner(ModelHook):
            def new_forward(self, module, *args, **kwargs):
                before = adapter.block_streams(module, args, kwargs)[0].detach().clone()
                output = self.fn_ref.original_forward(*args, **kwargs)
                recorder.seen.append((adapter.output_streams(output)[0] - before).detach())
                return output

        HookRegistry.check_if_exists_or_initialize(block).register_hook(Inner(), self.NAME)

    def remove(self):
        for handle in self._handles:
            handle.remove()
        registry = getattr(self.block, "_diffusers_hook", None)
        if registry is not None and self.NAME in registry.hooks:
            registry.remove_hook(self.NAME, recurse=False)


def _f64_change(previous, current) -> float:
    previous, current = previous.double(), current.double()
    return float((previous - current).abs().sum() / previous.abs().sum())


def _check_decision_values(method, recorder, report_call, branches_per_step):
    """The report's relative changes equal a float64 recomputation from the tensors block 0 saw (cond branch)."""
    values = [step.values for step in report_call.steps]
    for step in values:
        for name, value in step.items():
            if isinstance(value, float) or name in ("rel_l1", "diff", "accumulated"):
                assert type(value) is float and np.isfinite(value), (name, value)
    cond = recorder.seen[0::branches_per_step]
    assert len(cond) == STEPS
    key = "rel_l1" if method == "teacache" else "diff"
    checked = 0
    last_computed = cond[0]
    for step in range(1, STEPS):
        if method == "teacache":
            expected = _f64_change(cond[step - 1], cond[step])
        else:  # First-Block-Cache compares with the residual of the last computed step
            expected = _f64_change(last_computed, cond[step])
        if key in values[step]:
            assert values[step][key] == pytest.approx(expected, rel=1e-4, abs=1e-7), (step, values[step][key],
                                                                                       expected)
            checked += 1
        if method == "fbcache" and report_call.steps[step].computed:
            last_computed = cond[step]
    assert checked > 0


def _cases():
    cases = []
    for info in diffcache.list_methods():
        for family in FAMILIES:
            if family not in info.families:
                continue
            for dtype_name in DTYPES:
                marks = []
                if family not in FAST_FAMILIES[dtype_name]:
                    marks.append(pytest.mark.slow)
                reason = XFAIL.get((info.name, family, dtype_name))
                if reason:
                    marks.append(pytest.mark.xfail(strict=True, reason=reason))
                cases.append(pytest.param(info.name, family, dtype_name, marks=marks,
                                          id=f"{info.name}-{family}-{dtype_name}"))
    return cases


@pytest.mark.parametrize("method, family, dtype_name", _cases())
def test_method_keeps_the_models_dtype(method, family, dtype_name):
    pipe, call = _pipe(family, dtype_name)
    model = _denoiser(pipe)
    dtype = DTYPES[dtype_name]
    assert model.dtype == dtype
    reference = _reference_dtypes(family, dtype_name)
    adapter = find_adapter(model)
    info = next(i for i in diffcache.list_methods() if i.name == method)
    preset, options = _options(info, adapter)
    recorder = SignalRecorder(method, adapter, model) if method in ("teacache", "fbcache") else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        handle = diffcache.enable(pipe, method, preset=preset, **options)
    watch = OutputDtypes(model)
    try:
        frames = _quiet_call(call, pipe, STEPS_FOR.get(family, STEPS))
        report_call = handle.report().calls[-1]
        state = [(path, tensor) for part in handle.parts
                 for path, tensor in floating_tensors(part.runtime)]
    finally:
        watch.remove()
        handle.disable()
        if recorder is not None:
            recorder.remove()

    assert np.isfinite(frames).all()
    assert len(report_call.steps) == STEPS_FOR.get(family, STEPS)
    assert (sum(s.blocks_reused for s in report_call.steps)
            or any((s.active_fraction or 1.0) < 1.0 for s in report_call.steps)), "nothing was reused"

    documented = FLOAT32_STATE.get(method, ())
    wrong = [f"{path}: {tensor.dtype}" for path, tensor in state
             if tensor.dtype != dtype and not any(f".{name}" in path for name in documented)]
    assert not wrong, f"runtime state not in {dtype}: {wrong[:8]}"
    for path, tensor in state:
        if any(f".{name}" in path for name in documented):
            assert tensor.dtype in (dtype, torch.float32, torch.complex64), (path, tensor.dtype)

    upcast = {name: sorted(map(str, found - reference.get(name, set()))) for name, found in watch.dtypes.items()
              if found - reference.get(name, set())}
    assert not upcast, f"modules returned dtypes they do not return uncached: {upcast}"
    assert watch.dtypes["<denoiser>"] <= {dtype, torch.float32} and watch.dtypes["<denoiser>"] == reference["<denoiser>"]

    if recorder is not None:
        branches = len(report_call.steps[0].branches)
        _check_decision_values(method, recorder, report_call, branches)


# -- the decision metrics on fp16 tensors whose fp16 sums overflow -------------------------------------------------
def _large_fp16(seed=0, shape=(2, 64, 1024)):
    """Activations of magnitude ~100: every element fits fp16 (max 65504), their sums do not."""
    generator = torch.Generator().manual_seed(seed)
    previous = 100 * (1 + torch.rand(shape, generator=generator))
    current = previous * (1 + 0.05 * torch.randn(shape, generator=generator))
    return previous.half(), current.half()


def test_the_sums_of_these_activations_overflow_fp16():
    previous, current = _large_fp16()
    assert torch.isfinite(previous).all() and torch.isfinite(current).all()
    assert not torch.isfinite(previous.abs().sum(dtype=torch.float16))  # what a metric in fp16 would divide by


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_relative_change_is_computed_in_float32(dtype):
    """TeaCache's, First-Block-Cache's (and AdaCache's) relative L1 change: finite and equal to the float64 value
    where an fp16 sum overflows, and a Python float."""
    previous, current = (t.to(dtype) for t in _large_fp16())
    value = relative_change(previous, current)
    assert type(value) is float and np.isfinite(value)
    assert value == pytest.approx(_f64_change(previous, current), rel=1e-5)


def test_hsa_token_change_is_computed_in_float32():
    """HSA's per-token velocity change: differences that overflow fp16 (values of opposite sign near its
    maximum), and channel sums that do, give the float64 value, in float32."""
    from diffcache.methods.hsa import token_change

    previous, current = _large_fp16(shape=(2, 16, 1024))
    previous[:, :4], current[:, :4] = 30000.0, -40000.0  # both fit fp16; their difference (70000) does not
    change = token_change(previous, current)
    assert change.dtype == torch.float32 and torch.isfinite(change).all()
    expected = (current.double() - previous.double()).abs().sum(-1) / previous.double().abs().sum(-1)
    torch.testing.assert_close(change.double(), expected, rtol=1e-5, atol=0)


def test_fastercache_frequency_split_of_fp16_maps():
    """FasterCache's CFG-Cache: the spectra of fp16 maps whose sums (the DC term) overflow fp16 are taken in float32
    (the deltas are complex64, documented), and the rebuilt uncond is back in fp16, finite and equal to the
    float64 rebuild."""
    from diffcache.methods.fastercache import rebuild_uncond, split_delta

    cond, uncond = (t.view(2, 4, 64, 64) for t in _large_fp16(shape=(2, 256, 64)))
    assert not torch.isfinite(cond.sum(dtype=torch.float16))
    low, high = split_delta(uncond, cond, radius=12)
    assert low.dtype == high.dtype == torch.complex64
    assert torch.isfinite(torch.view_as_real(low)).all() and torch.isfinite(torch.view_as_real(high)).all()
    rebuilt = rebuild_uncond(cond, low, high, 1.1, 1.2)
    assert rebuilt.dtype == torch.float16 and torch.isfinite(rebuilt).all()
    c, u = cond.double(), uncond.double()
    spectrum = lambda x: torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))  # noqa: E731
    delta = spectrum(u) - spectrum(c)
    y = torch.arange(64).view(-1, 1) - 32
    x = torch.arange(64).view(1, -1) - 32
    mask = (y**2 + x**2) <= 12**2
    expected = torch.fft.ifft2(torch.fft.ifftshift(spectrum(c) + delta * mask * 1.1 + delta * ~mask * 1.2,
                                                   dim=(-2, -1))).real
    torch.testing.assert_close(rebuilt.double(), expected, rtol=2e-3, atol=0.1)


# -- step tracking with low-precision timesteps -------------------------------------------------------------------
class _Echo(torch.nn.Module, CacheMixin):
    def forward(self, hidden_states, timestep):
        return hidden_states


class _Pipeline:
    def __init__(self, scheduler):
        self.scheduler = scheduler


class _Steps:
    def __init__(self):
        self.seen = []

    def begin_call(self, index, num_steps):
        pass

    def begin_forward(self, ctx, args, kwargs):
        self.seen.append((ctx.call_index, ctx.step, ctx.num_steps, ctx.branch))

    def end_forward(self, ctx):
        pass


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("num_steps", [8, 50])
def test_steps_are_found_from_timesteps_in_the_models_dtype(dtype, num_steps):
    """HunyuanVideo's and Mochi's pipelines hand the denoiser ``t.to(latents.dtype)`` (956.25 → 956 in bf16), which
    is not among the scheduler's float32 timesteps: each forward is still its own step, also at 50 steps of a
    shift-7 flow schedule, where neighbouring timesteps round to the same bf16 value."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    scheduler.set_timesteps(num_steps)
    rounded = scheduler.timesteps.to(dtype)
    if dtype == torch.bfloat16 and num_steps == 50:
        assert len(set(rounded.tolist())) < num_steps  # the case of repeated rounded timesteps is exercised
    assert not torch.equal(rounded.float(), scheduler.timesteps.float())
    pipeline, model, steps = _Pipeline(scheduler), _Echo(), _Steps()
    tracker = StepTracker(lambda args, kwargs: kwargs["timestep"], pipeline)
    tracker.listeners.append(steps)
    install_tracker(model, tracker)
    x = torch.zeros(1, dtype=dtype)
    for _ in range(2):
        for t in scheduler.timesteps:
            for branch in ("cond", "uncond"):
                with model.cache_context(branch):
                    model(hidden_states=x, timestep=t.expand(1).to(dtype))
    assert steps.seen == [(call, step, num_steps, branch) for call in range(2) for step in range(num_steps)
                          for branch in ("cond", "uncond")]

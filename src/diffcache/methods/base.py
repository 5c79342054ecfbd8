"""The method framework: configs with presets, the registry ``list_methods()`` reads, the :class:`Handle` that
``diffcache.enable`` returns, and the :class:`Report` it writes.

A method is three things in its own file under ``methods/``:

* a config dataclass (subclass :class:`MethodConfig`) whose ``PRESETS`` name sets of field values and whose
  ``validate()`` rejects bad values with the valid range;
* a runtime (subclass :class:`Runtime`) that installs its diffusers hooks through an adapter, hears from the step
  tracker (``begin_call`` / ``begin_forward`` / ``end_forward``) and records what it did;
* one :func:`register` call.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from diffusers.hooks.hooks import HookRegistry

from ..adapters.base import Adapter, UnsupportedModelError, find_adapter
from ..context import TRACKER_HOOK, StepContext, StepTracker, install_tracker
from ..errors import (CallRefusedError, MethodAlreadyEnabledError, MethodSilentWarning, NothingSkippedWarning,
                      UnknownMethodError)


# -- configs -------------------------------------------------------------------------------------------------------
@dataclass
class MethodConfig:
    """Base of every method's config. Subclasses set ``PRESETS`` (name → field values) and ``DEFAULT_PRESET``."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    DEFAULT_PRESET: ClassVar[str] = ""
    preset: str = ""

    @classmethod
    def from_preset(cls, preset: str | None = None, **overrides):
        """The config of ``preset`` (the method's default preset when ``None``) with ``overrides`` applied."""
        name = preset or cls.DEFAULT_PRESET
        if name not in cls.PRESETS:
            raise UnknownMethodError(f"unknown preset {name!r}; presets: {', '.join(cls.PRESETS)}.")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise TypeError(
                f"{cls.__name__} has no option {', '.join(map(repr, unknown))}; options: "
                f"{', '.join(sorted(fields - {'preset'}))}."
            )
        config = cls(**{**cls.PRESETS[name], **overrides, "preset": name})
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field and its valid range."""

    def check_model(self, family: str, pipeline) -> None:
        """Refuse (or warn about) a config that does not fit this model family; by default every config fits."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- the registry --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodInfo:
    """One row of :func:`list_methods`."""

    name: str
    summary: str
    presets: tuple[str, ...]
    default_preset: str
    families: tuple[str, ...]
    config_class: type
    runtime_class: type = field(repr=False)


_METHODS: dict[str, MethodInfo] = {}


def register(name: str, summary: str, config_class: type[MethodConfig], runtime_class: type, families: tuple[str, ...]):
    _METHODS[name] = MethodInfo(name, summary, tuple(config_class.PRESETS), config_class.DEFAULT_PRESET,
                                families, config_class, runtime_class)


def list_methods() -> list[MethodInfo]:
    """Every method: its name, one-line summary, presets (default first listed in ``default_preset``) and the
    model families it supports."""
    from . import _load_all  # noqa: F401 - registers the built-in methods

    return list(_METHODS.values())


def method_info(name: str) -> MethodInfo:
    list_methods()
    if name not in _METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; methods: {', '.join(_METHODS)}.")
    return _METHODS[name]


def _info_for_config(config: MethodConfig) -> MethodInfo:
    list_methods()
    for info in _METHODS.values():
        if type(config) is info.config_class:
            return info
    raise UnknownMethodError(f"{type(config).__name__} is not the config of a registered method.")


# -- the report ----------------------------------------------------------------------------------------------------
@dataclass
class StepRecord:
    """What a method did at one step of one call (all branches of the step together)."""

    step: int  #: 0-based
    computed: bool  #: the step's blocks were computed (not reused)
    branches: list[str] = field(default_factory=list)
    blocks_computed: int = 0  #: block forwards actually run, summed over the step's branches
    blocks_reused: int = 0  #: block forwards answered from the cache
    active_fraction: float | None = None  #: share of the tokens computed (token-level methods such as HSA)
    values: dict[str, Any] = field(default_factory=dict)  #: the method's metric values and decisions


@dataclass
class CallReport:
    call_index: int
    num_steps: int
    steps: list[StepRecord] = field(default_factory=list)

    @property
    def computed_steps(self) -> int:
        return sum(record.computed for record in self.steps)

    @property
    def block_forwards(self) -> int:
        return sum(record.blocks_computed for record in self.steps)

    @property
    def token_fraction(self) -> float:
        """Share of the token-steps computed (1.0 unless a token-level method such as HSA skipped tokens)."""
        if not self.steps:
            return 1.0
        return sum(1.0 if r.active_fraction is None else r.active_fraction for r in self.steps) / len(self.steps)


@dataclass
class Report:
    """Per pipeline call and step: computed or reused, block counts, and the values that decided it."""

    method: str
    config: dict
    calls: list[CallReport] = field(default_factory=list)

    def computed_steps(self, call: int = -1) -> int:
        return self.calls[call].computed_steps if self.calls else 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=float)

    def summary(self) -> str:
        lines = [f"{self.method} ({self.config.get('preset', '')}): {len(self.calls)} call(s)"]
        for call in self.calls:
            lines.append(f"call {call.call_index}: {call.computed_steps}/{call.num_steps} steps computed, "
                         f"{call.block_forwards} block forwards")
            for record in call.steps:
                values = " ".join(f"{k}={_fmt(v)}" for k, v in record.values.items())
                mark = "compute" if record.computed else "reuse  "
                lines.append(f"  step {record.step + 1:>3} {mark} [{','.join(record.branches)}] "
                             f"blocks {record.blocks_computed}/{record.blocks_computed + record.blocks_reused} {values}")
        return "\n".join(lines)

    __str__ = summary


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# -- helpers shared by the methods ---------------------------------------------------------------------------------
@torch.no_grad()
def relative_l1(reference: torch.Tensor, current: torch.Tensor) -> float:
    """``||reference − current||_1 / ||reference||_1`` over the whole tensor (the same as the ratio of means)."""
    reference, current = reference.float(), current.float()
    return float((reference - current).abs().sum() / reference.abs().sum().clamp_min(1e-12))


def detached(output):
    """A tensor, or a (nested) tuple of tensors, detached from autograd: what a cache keeps."""
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, tuple):
        return tuple(detached(o) for o in output)
    return output


# -- runtimes ------------------------------------------------------------------------------------------------------
class Runtime:
    """Base of a method's runtime. Keeps the report; subclasses install hooks and decide."""

    HOOK = "diffcache_method"

    def __init__(self, config: MethodConfig, adapter: Adapter, model: torch.nn.Module, method: str):
        self.config = config
        self.adapter = adapter
        self.model = model
        self.pipeline = None  #: the pipeline when enabled on one (its flags, e.g. do_classifier_free_guidance)
        self.report = Report(method, config.to_dict())
        self._hooked: list[tuple[torch.nn.Module, str]] = []
        self._block_calls_this_forward = 0
        self._warned_silent = False

    # hook bookkeeping
    def add_hook(self, module: torch.nn.Module, hook, name: str | None = None) -> None:
        name = name or self.HOOK
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
        self._hooked.append((module, name))

    def install(self) -> None:
        raise NotImplementedError

    def remove(self) -> None:
        for module, name in reversed(self._hooked):
            registry = getattr(module, "_diffusers_hook", None)
            if registry is not None:
                registry.remove_hook(name, recurse=False)
        self._hooked.clear()
        HookRegistry.check_if_exists_or_initialize(self.model).invalidate_child_registries_cache()
        self.clear()

    def clear(self) -> None:
        """Drop cached tensors and per-call state (subclasses extend; called at every new call)."""
        self.ctx: StepContext | None = None

    # tracker protocol
    def begin_call(self, call_index: int, num_steps: int) -> None:
        self.report.calls.append(CallReport(call_index, num_steps))
        self.clear()

    def begin_forward(self, ctx: StepContext, args: tuple, kwargs: dict) -> None:
        self.ctx = ctx
        self._block_calls_this_forward = 0
        call = self.report.calls[-1]
        if ctx.first_in_step or not call.steps:
            call.steps.append(StepRecord(ctx.step, computed=False))
        call.steps[-1].branches.append(ctx.branch)

    def nothing_skipped_hint(self) -> str:
        """What to change when a call skipped nothing (a method overrides this with its own knob)."""
        return "try a faster preset"

    def could_skip(self, num_steps: int) -> bool:
        """Whether the rules leave any step of a ``num_steps`` call that may be reused (no warning otherwise)."""
        return num_steps > 2

    def end_forward(self, ctx: StepContext) -> None:
        call = self.report.calls[-1]
        if (ctx.first_in_step and ctx.step == call.num_steps - 1 and self.could_skip(call.num_steps)
                and not any(s.blocks_reused or (s.active_fraction or 1) < 1 for s in call.steps)):
            warnings.warn(
                f"{self.report.method}:{self.config.preset} reused nothing in this {call.num_steps}-step call: every "
                f"step was computed, so it only added overhead. {self.nothing_skipped_hint()}.",
                NothingSkippedWarning, stacklevel=2,
            )
        if self._block_calls_this_forward == 0 and not self._warned_silent:
            self._warned_silent = True
            warnings.warn(
                f"{self.report.method}: none of its hooks ran during a forward of {type(self.model).__name__}; "
                "it is doing nothing. Was the model's block list replaced after enable()?",
                MethodSilentWarning, stacklevel=2,
            )

    @property
    def step_record(self) -> StepRecord:
        return self.report.calls[-1].steps[-1]

    def count_block(self, computed: bool) -> None:
        self._block_calls_this_forward += 1
        if computed:
            self.step_record.blocks_computed += 1
        else:
            self.step_record.blocks_reused += 1


class _TrackerBridge:
    """Adapts the tracker's listener calls (which do not carry the forward's arguments) to the runtime."""

    def __init__(self, runtime: Runtime, tracker: StepTracker):
        self.runtime = runtime
        self.tracker = tracker

    def begin_call(self, call_index, num_steps):
        self.runtime.begin_call(call_index, num_steps)

    def begin_forward(self, ctx):
        self.runtime.begin_forward(ctx, *self.tracker.forward_arguments)

    def end_forward(self, ctx):
        self.runtime.end_forward(ctx)


# -- enable / handle -----------------------------------------------------------------------------------------------
def denoiser_of(target) -> tuple[torch.nn.Module, Any]:
    """``(denoiser, pipeline or None)`` for a pipeline or a denoiser module."""
    if isinstance(target, torch.nn.Module):
        return target, None
    for attribute in ("transformer", "unet"):
        module = getattr(target, attribute, None)
        if isinstance(module, torch.nn.Module):
            return module, target
    raise UnsupportedModelError(
        f"diffcache.enable needs a diffusers pipeline (with a .transformer or .unet) or the denoiser module itself; "
        f"got {type(target).__name__}."
    )


class Handle:
    """What :func:`diffcache.enable` returns. ``report()`` says what the method did; ``disable()`` removes every
    hook (the output is then bit-identical to never having enabled). Usable as a context manager."""

    def __init__(self, info: MethodInfo, config: MethodConfig, model, pipeline, runtime: Runtime, tracker: StepTracker):
        self.info = info
        self.config = config
        self.model = model
        self.pipeline = pipeline
        self.runtime = runtime
        self.tracker = tracker
        self.enabled = True

    @property
    def method(self) -> str:
        return self.info.name

    def report(self) -> Report:
        return self.runtime.report

    def reset(self) -> None:
        """Forget the call in progress and the cached tensors; the next forward starts a new call."""
        self.tracker.reset()
        self.runtime.clear()

    def disable(self) -> None:
        """Remove every hook this method installed. Safe to call twice."""
        if not self.enabled:
            return
        self.runtime.remove()
        registry = getattr(self.model, "_diffusers_hook", None)
        if registry is not None:
            registry.remove_hook(TRACKER_HOOK, recurse=False)
            registry.invalidate_child_registries_cache()
        if getattr(self.model, "_diffcache_handle", None) is self:
            del self.model._diffcache_handle
        self.enabled = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.disable()
        return False

    def __repr__(self):
        state = "enabled" if self.enabled else "disabled"
        return f"<diffcache {self.info.name}:{self.config.preset} on {type(self.model).__name__}, {state}>"


def enable(target, method: str | MethodConfig, preset: str | None = None, *, replace: bool = False,
           num_inference_steps: int | None = None, **overrides) -> Handle:
    """Enable a caching method on a pipeline or on its denoiser module.

    ``method`` is a name from :func:`list_methods` (with an optional ``preset`` and field ``overrides``) or a
    config object (``AdaCacheConfig(...)``). One method at a time per model: enabling a second one raises
    :class:`MethodAlreadyEnabledError` unless ``replace=True``, which disables the first.
    ``num_inference_steps`` is needed only for a bare denoiser driven by a loop that gives no step information
    (see :mod:`diffcache.context`).
    """
    model, pipeline = denoiser_of(target)
    if isinstance(method, MethodConfig):
        if preset is not None:
            raise TypeError("pass either a config object or a method name with a preset, not both")
        info = _info_for_config(method)
        config = dataclasses.replace(method, **overrides) if overrides else method
        config.validate()
    else:
        info = method_info(method)
        config = info.config_class.from_preset(preset, **overrides)
    adapter = find_adapter(model)
    if info.families and adapter.family not in info.families:
        raise UnsupportedModelError(
            f"{info.name} does not support {adapter.family} models; it supports: {', '.join(info.families)}."
        )
    if num_inference_steps is not None and (not isinstance(num_inference_steps, int) or num_inference_steps < 1):
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
    if pipeline is not None and isinstance(getattr(pipeline, "transformer_2", None), torch.nn.Module):
        raise UnsupportedModelError(
            f"{type(pipeline).__name__} has two denoisers (transformer for high noise, transformer_2 for low noise, "
            "as in Wan 2.2 A14B); diffcache does not coordinate one schedule across both yet. Enable on each module "
            "separately (diffcache.enable(pipe.transformer, ...), diffcache.enable(pipe.transformer_2, ...)) to "
            "cache each phase on its own."
        )
    config.check_model(adapter.family, pipeline)
    existing = getattr(model, "_diffcache_handle", None)
    if existing is not None and existing.enabled:
        if not replace:
            raise MethodAlreadyEnabledError(
                f"{existing.method}:{existing.config.preset} is already enabled on this {type(model).__name__}; call "
                "its handle's disable() first, or pass replace=True to swap methods."
            )
        existing.disable()

    runtime = info.runtime_class(config, adapter, model, info.name)
    runtime.pipeline = pipeline
    tracker = StepTracker(lambda args, kwargs: adapter.timestep(model, args, kwargs), pipeline, num_inference_steps)
    tracker.listeners.append(_TrackerBridge(runtime, tracker))
    try:
        runtime.install()
        install_tracker(model, tracker)  # last registered = outermost: the context is known before any method hook
    except Exception:
        runtime.remove()  # leave the model as it was
        raise
    handle = Handle(info, config, model, pipeline, runtime, tracker)
    model._diffcache_handle = handle
    return handle

"""The method framework: the config base with presets, the registry :func:`list_methods` reads, and the
:class:`Runtime` a method's hooks report to.

A method is one file under ``methods/`` holding

* its config, a dataclass subclassing :class:`MethodConfig`: ``PRESETS`` name sets of field values,
  ``REQUIRES`` names the adapter capabilities (:mod:`diffcache.adapters.capabilities`) it needs, and
  ``validate()`` — run on construction — rejects bad values naming the field and its range;
* its pure rule (schedules, thresholds: plain functions tested against worked examples);
* its hooks and a :class:`Runtime` subclass that installs them through the adapter and hears from the step
  tracker (``begin_call`` / ``begin_forward`` / ``end_forward``, with the forward's arguments);
* one :func:`register` call.

Nothing here runs a pipeline, plots or writes files.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from diffusers.hooks.hooks import HookRegistry

from ..adapters.base import Adapter, registered_adapters
from ..adapters.capabilities import DESCRIPTIONS, has_capability
from ..context import StepContext
from ..distributed import context_parallel_group, global_sums
from ..errors import ConfigError, MethodSilentWarning, NothingSkippedWarning, UnknownMethodError, UnknownOptionError
from ..hooking import register_hook, remove_hook
from ..memory import measured_cache_bytes
from ..report import CallReport, Report, StepRecord, call_summary

logger = logging.getLogger("diffcache")


# -- configs -------------------------------------------------------------------------------------------------------
@dataclass
class MethodConfig:
    """Base of every method's config.

    Subclasses set ``PRESETS`` (name → field values), ``DEFAULT_PRESET`` and ``REQUIRES`` (the adapter
    capabilities the method needs). A config validates itself on construction (``__post_init__`` calls
    :meth:`validate`), so a config object that exists is a valid one.

    Args:
        preset: the name of the preset the config was made from (``""`` for a hand-made config).
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    DEFAULT_PRESET: ClassVar[str] = ""
    REQUIRES: ClassVar[tuple[type, ...]] = ()
    #: the levels the method acts on (:mod:`diffcache.composition`): ``"cfg"`` (the guidance branches), ``"step"``
    #: (whole steps of the block stack), ``"token"`` (tokens within a step), ``"attention"`` (attention outputs)
    LEVELS: ClassVar[frozenset[str]] = frozenset()
    #: what a step-level decision reads: ``"input"`` (the blocks' input, before any attention runs), ``"blocks"``
    #: (a block's residual, attention output included) or ``"output"`` (the denoiser's output); ``""`` for a method
    #: that is not step-level
    DECISION_READS: ClassVar[str] = ""
    preset: str = ""

    def __post_init__(self) -> None:
        try:
            self.validate()  # the method's own checks first: their messages name the field's range
        except TypeError:  # a value of the wrong kind that the method's checks compared: say so instead
            self.check_types()
            raise
        self.check_types()

    def check_types(self) -> None:
        """Refuse, naming the field, a value of the wrong kind for its declared type (``bool`` fields take
        ``True``/``False``; ``int`` fields whole numbers; ``float`` fields numbers; ``str`` fields text), a NaN or
        infinite number field, and NaN inside a tuple, list or dict (a threshold of NaN would silently never fire;
        infinity stays allowed there, as the open bound of a codebook's last row)."""
        import math
        import typing

        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value, declared = getattr(self, field.name), hints.get(field.name)
            name = f"{type(self).__name__}.{field.name}"
            kinds = {bool: "True or False", int: "a whole number", float: "a number", str: "text"}
            if declared in kinds:
                ok = (isinstance(value, bool) if declared is bool else
                      isinstance(value, str) if declared is str else
                      isinstance(value, int) and not isinstance(value, bool) if declared is int else
                      isinstance(value, (int, float)) and not isinstance(value, bool))
                if not ok:
                    raise ConfigError(f"{name} must be {kinds[declared]}, got {value!r} "
                                      f"({type(value).__name__}).")

            def no_nan(item) -> bool:  # inside a tuple, list or dict: infinity is a bound (a codebook's last row)
                if isinstance(item, float):
                    return not math.isnan(item)
                if isinstance(item, (tuple, list)):
                    return all(no_nan(x) for x in item)
                if isinstance(item, dict):
                    return all(no_nan(x) for x in item.values())
                return True

            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}.")
            if not no_nan(value):
                raise ConfigError(f"{name} holds NaN ({value!r}); NaN compares false with everything.")

    @classmethod
    def from_preset(cls, preset: str | None = None, **overrides):
        """The config of ``preset`` (the method's default preset when ``None``) with ``overrides`` applied. A name
        ending in ``.json`` that is no preset is a preset file (:meth:`from_preset_file`)."""
        name = preset or cls.DEFAULT_PRESET
        if name not in cls.PRESETS and str(name).endswith(PRESET_FILE_SUFFIX):
            return cls.from_preset_file(name, **overrides)
        if name not in cls.PRESETS:
            raise UnknownMethodError(f"unknown preset {name!r}; presets: {', '.join(cls.PRESETS)}.")
        cls.check_options(overrides)
        return cls(**{**cls.PRESETS[name], **overrides, "preset": name})

    @classmethod
    def from_preset_file(cls, path, **overrides):
        """The config a preset file describes (as ``diffcache tune`` writes it: ``{"method": NAME, "preset": BASE,
        "options": {...}, ...}``): ``BASE`` with the file's options, then ``overrides``. A file for another method, a
        file that is not JSON or has no ``options``, and options the config does not have are refused. The
        config's ``preset`` is the file's path."""
        path = str(path)
        data = read_preset_file(path, cls)
        options = data.get("options")
        if not isinstance(options, dict):
            raise ConfigError(f"{path} is not a preset file (it has no 'options' object); write one with "
                              "`diffcache tune METHOD --min-psnr DB` or `--speedup X`.")
        base = data.get("preset") or cls.DEFAULT_PRESET
        if not isinstance(base, str) or base.endswith(PRESET_FILE_SUFFIX) or base not in cls.PRESETS:
            raise ConfigError(f"{path}: its base preset {base!r} is not a preset of {cls.__name__} "
                              f"({', '.join(cls.PRESETS)}).")
        cls.check_options(options)
        cls.check_options(overrides)
        config = cls.from_preset(base, **{**options, **overrides})
        return dataclasses.replace(config, preset=path)

    @classmethod
    def check_options(cls, options: dict) -> None:
        """Raise :class:`~diffcache.errors.UnknownOptionError` for a name that is not a field of this config."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise UnknownOptionError(
                f"{cls.__name__} has no option {', '.join(map(repr, unknown))}; options: "
                f"{', '.join(sorted(fields - {'preset'}))}."
            )

    def validate(self) -> None:
        """Raise :class:`~diffcache.errors.ConfigError` naming the bad field and its valid range."""

    def required_capabilities(self) -> tuple[type, ...]:
        """The adapter capabilities this config needs (``REQUIRES``, plus any an option adds)."""
        return self.REQUIRES

    def levels(self) -> frozenset[str]:
        """The levels this config acts on (``LEVELS``; a method whose options switch a level off overrides it)."""
        return frozenset(self.LEVELS)

    def check_model(self, family: str, pipeline) -> None:
        """Refuse (or warn about) a config that does not fit this model family; by default every config fits."""

    def for_model(self, family: str, model: torch.nn.Module, pipeline) -> "MethodConfig":
        """The config to run on ``model`` (of ``family``, in ``pipeline`` or ``None``): by default this one. A method
        whose values depend on the model (TeaCache's fitted coefficients) returns the config with them filled in,
        or refuses with :class:`~diffcache.errors.UnsupportedModelError`."""
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: how a preset name that is a file ends (:meth:`MethodConfig.from_preset_file`)
PRESET_FILE_SUFFIX = ".json"


def read_preset_file(path: str, config_class: type) -> dict:
    """The JSON object in preset file ``path``, checked to be for ``config_class``'s method (its ``method`` key;
    a file without one is taken as this method's). Read here, not with :mod:`diffcache.files`: methods import no
    files module."""
    import json
    from pathlib import Path

    file = Path(path).expanduser()
    method = method_name(config_class)
    if not file.is_file():
        raise UnknownMethodError(f"preset file {file} does not exist; presets of {method or config_class.__name__}: "
                                 f"{', '.join(config_class.PRESETS)}, or a .json file written by `diffcache tune`.")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ConfigError(f"preset file {file} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"preset file {file} holds no JSON object")
    named = data.get("method", method)
    if method is not None and named != method:
        hint = (f"it combines several methods; load it with diffcache.tune.load_preset('{file}')" if "+" in str(named)
                else f"use it with diffcache.enable(pipe, {named!r}, preset='{file}') or --methods {named}:{file}")
        raise ConfigError(f"preset file {file} is for {named}, not {method}: {hint}.")
    return data


def method_name(config_class: type) -> str | None:
    """The registered name of the method whose config class is ``config_class`` (``None`` for an unregistered
    one)."""
    list_methods()
    return next((info.name for info in _METHODS.values() if info.config_class is config_class), None)


# -- the registry --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodInfo:
    """One row of :func:`list_methods`."""

    name: str
    summary: str
    config_class: type
    runtime_class: type = field(repr=False)

    @property
    def presets(self) -> tuple[str, ...]:
        return tuple(self.config_class.PRESETS)

    @property
    def default_preset(self) -> str:
        return self.config_class.DEFAULT_PRESET

    @property
    def requires(self) -> tuple[type, ...]:
        return self.config_class.REQUIRES

    @property
    def families(self) -> tuple[str, ...]:
        """The families of the registered adapters that have every capability the method needs."""
        return tuple(dict.fromkeys(adapter.family for adapter in registered_adapters()
                                   if all(has_capability(adapter, c) for c in self.requires)))


_METHODS: dict[str, MethodInfo] = {}


def register(name: str, summary: str, config_class: type[MethodConfig], runtime_class: type) -> None:
    """Make a method available to :func:`diffcache.enable` and :func:`list_methods` under ``name``."""
    _METHODS[name] = MethodInfo(name, summary, config_class, runtime_class)


def list_methods() -> list[MethodInfo]:
    """Every method: its name, one-line summary, presets (``default_preset`` the default) and the model families
    it supports (derived from the registered adapters)."""
    from . import adacache, deepcache, easycache, fastercache, fbcache, hsa, pab, teacache  # noqa: F401 - the built-ins

    return sorted(_METHODS.values(), key=lambda info: info.name)  # by name: not by which module was imported first


def method_info(name: str) -> MethodInfo:
    list_methods()
    if name not in _METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; methods: {', '.join(sorted(_METHODS))}.")
    return _METHODS[name]


def info_for_config(config: MethodConfig) -> MethodInfo:
    list_methods()
    for info in _METHODS.values():
        if type(config) is info.config_class:
            return info
    raise UnknownMethodError(f"{type(config).__name__} is not the config of a registered method.")


def missing_capabilities(config: MethodConfig, adapter: Adapter) -> list[str]:
    """What ``config`` needs that ``adapter`` lacks, described for people."""
    return [DESCRIPTIONS.get(c, c.__name__) for c in config.required_capabilities() if not has_capability(adapter, c)]


# -- helpers shared by the methods ---------------------------------------------------------------------------------
@torch.no_grad()
def relative_change(previous: torch.Tensor, current: torch.Tensor, group=None) -> float:
    """How much a tensor changed between two steps: ``||previous − current||_1 / ||previous||_1`` over the whole
    tensor (the same as the ratio of means), computed in float32. The quality metric of a video against its
    reference is another function, :func:`diffcache.quality.protocols.relative_l1` (test first, then reference).

    ``group``: the context-parallel group whose ranks each hold a shard of the tokens (``Runtime.cp_group``); the
    two sums are then added over the ranks (:func:`diffcache.distributed.global_sums`), so every rank gets the
    change of the whole sequence."""
    previous, current = previous.float(), current.float()
    numerator, denominator = (previous - current).abs().sum(), previous.abs().sum()
    if group is not None:
        numerator, denominator = global_sums(numerator, denominator, group=group)
    return float(numerator / denominator.clamp_min(1e-12))


def detached(output):
    """A tensor, or a (nested) tuple of tensors, detached from autograd: what a cache keeps."""
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, tuple):
        return tuple(detached(o) for o in output)
    return output


def classifier_free_guidance(pipeline) -> bool:
    """Whether ``pipeline``'s current call guides with classifier-free guidance, read as the call's first forward
    runs: its ``do_classifier_free_guidance`` flag, or — CogVideoX and Allegro pipelines have none — whether its
    ``guidance_scale`` is above 1, the rule those pipelines apply (read before CogVideoX's dynamic CFG changes it in
    the loop). ``False`` for a bare denoiser: an even batch there may be two prompts."""
    if pipeline is None:
        return False
    flag = getattr(pipeline, "do_classifier_free_guidance", None)
    if flag is not None:
        return bool(flag)
    scale = getattr(pipeline, "_guidance_scale", None)
    return isinstance(scale, (int, float)) and scale > 1


def check_cache_device(device) -> torch.device | None:
    """``device`` as a :class:`torch.device` a cache can live on, or ``None``. Accepted: ``"cpu"`` and the
    accelerators this process can use (``"cuda"``, ``"cuda:1"`` …, ``"xpu"``, ``"mps"``); anything else (an unknown
    name, ``"meta"``, which keeps no data, an accelerator that is not there) is refused with
    :class:`~diffcache.errors.ConfigError`."""
    if device is None:
        return None
    accepted = "accepted: None, 'cpu' or an accelerator this process can use ('cuda', 'cuda:0', …)"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"cache_device={device!r} is not a device ({error}); {accepted}.") from None
    if device.type == "meta":
        raise ConfigError(f"cache_device='meta' keeps no data, so a cache there could never be reused; {accepted}.")
    if device.type != "cpu":
        module = getattr(torch, device.type, None)
        available = module is not None and hasattr(module, "is_available") and module.is_available()
        count = module.device_count() if available and hasattr(module, "device_count") else 1
        if not available or (device.index is not None and device.index >= count):
            raise ConfigError(f"cache_device={str(device)!r} is not available in this process; {accepted}.")
    return device


# -- runtimes ------------------------------------------------------------------------------------------------------
class Runtime:
    """Base of a method's runtime. Keeps the report; subclasses install hooks and decide."""

    HOOK = "diffcache_method"

    def __init__(self, config: MethodConfig, adapter: Adapter, model: torch.nn.Module, method: str):
        self.config = config
        self.adapter = adapter
        self.model = model
        self.pipeline = None  #: the pipeline when enabled on one (its flags, e.g. do_classifier_free_guidance)
        self.guided = False  #: whether the current call guides (:func:`classifier_free_guidance`, set per call)
        self.report = Report(method, config.to_dict())
        self._hooked: list[tuple[torch.nn.Module, str]] = []
        self._block_calls_this_forward = 0
        self._warned_silent = False
        self._cores: list = []  #: the CompiledCores holding compiled blocks' wrappers (diffcache.compile)
        self.cp_group = None  #: the model's context-parallel group (set at every call), or None in one process
        self.cache_device: torch.device | None = None  #: where cached tensors are kept (``None``: where computed)
        self.compute_device: torch.device | None = None  #: the device of the forward in progress (its first tensor)
        #: in a composition (:mod:`diffcache.composition`), weak references to the runtimes of the levels inside this
        #: one; ``answered_outside`` is set on those when this one reused work in a forward (their hooks may then
        #: have had nothing to run: no silent-method warning)
        self.inner: list = []
        self.answered_outside = False
        self._reused_this_forward = False

    # cache placement (``diffcache.enable(..., cache_device=...)``)
    def use_cache_device(self, device) -> None:
        """Keep this method's cached tensors on ``device`` (``None``: where they were computed); see
        :func:`check_cache_device` for what is accepted."""
        self.cache_device = check_cache_device(device)

    def stash(self, value):
        """``value`` (a tensor, or a tuple / list of them, nested; ``None`` passes) as the cache keeps it: a copy on
        the cache device when one is set — into pinned memory when it comes from CUDA to the CPU, copied with
        ``non_blocking=True`` — else ``value`` itself. The bytes copied are added to the call's
        ``bytes_to_cache_device``."""
        return value if self.cache_device is None else self._stash_tree(value)

    def _stash_tree(self, value):
        if isinstance(value, (tuple, list)):
            return type(value)(self._stash_tree(v) for v in value)
        if not isinstance(value, torch.Tensor):
            return value
        pin = self.cache_device.type == "cpu" and value.device.type == "cuda" and torch.cuda.is_available()
        copy = torch.empty_like(value, device=self.cache_device, pin_memory=pin)
        copy.copy_(value, non_blocking=True)
        self._count_bytes("bytes_to_cache_device", value)
        return copy

    def unstash(self, value, like: torch.Tensor | None = None):
        """A cached ``value`` (as :meth:`stash` returned it) on the compute device — ``like``'s device, else the
        current forward's — copied with ``non_blocking=True``; the bytes are added to the call's
        ``bytes_from_cache_device``. Without a cache device, ``value`` itself."""
        if self.cache_device is None:
            return value
        return self._unstash_tree(value, like.device if like is not None else self.compute_device)

    def _unstash_tree(self, value, device):
        if isinstance(value, (tuple, list)):
            return type(value)(self._unstash_tree(v, device) for v in value)
        if not isinstance(value, torch.Tensor):
            return value
        self._count_bytes("bytes_from_cache_device", value)
        return value if device is None else value.to(device, non_blocking=True)

    def _count_bytes(self, field_name: str, tensor: torch.Tensor) -> None:
        if self.report.calls:
            call = self.report.calls[-1]
            setattr(call, field_name, getattr(call, field_name) + tensor.numel() * tensor.element_size())

    # hook bookkeeping
    def add_hook(self, module: torch.nn.Module, hook, name: str | None = None) -> None:
        name = name or self.HOOK
        register_hook(module, hook, name)  # beneath offload's hooks (diffcache.hooking)
        self._hooked.append((module, name))

    def install(self) -> None:
        raise NotImplementedError

    def remove(self) -> None:
        for core in self._cores:  # first: a hook's forward must be the real one again before it is removed
            core.release()
        self._cores.clear()
        for module, name in reversed(self._hooked):
            remove_hook(module, name)
        self._hooked.clear()
        HookRegistry.check_if_exists_or_initialize(self.model).invalidate_child_registries_cache()
        self.clear()

    def clear(self) -> None:
        """Drop cached tensors and per-call state (subclasses extend; called at every new call)."""
        self.ctx: StepContext | None = None

    # tracker protocol
    def begin_call(self, call_index: int, num_steps: int) -> None:
        self.report.calls.append(CallReport(call_index, num_steps))
        self.cp_group = context_parallel_group(self.model)  # parallelism may have been enabled after diffcache
        self.clear()
        self.guided = classifier_free_guidance(self.pipeline)
        self.take_compiled_regions()

    def take_compiled_regions(self) -> None:
        """Keep this method's decisions out of ``torch.compile``'s regions (:mod:`diffcache.compile`): refuse a hook
        inside a compiled block, and run the hooks of a compiled block eagerly around its compiled forward. At every
        call, so a model compiled after :func:`diffcache.enable` is found too."""
        from ..compile import check_regions, seat

        modules = list({id(m): m for m, _ in self._hooked}.values())
        eager = self.eager_regions()
        check_regions(self.model, modules, self.report.method, eager)
        names = {name for _, name in self._hooked}
        eager_ids = {id(m) for m in eager}
        self._cores.extend(core for core in (seat(m, names, id(m) in eager_ids) for m in modules) if core is not None)

    def eager_regions(self) -> list[torch.nn.Module]:
        """The hooked blocks this method runs uncompiled under regional compilation, because it hooks modules
        inside them (:mod:`diffcache.compile`); the other blocks run the user's compiled forward. None by default."""
        return []

    def end_phase(self) -> None:
        """The pipeline moved on to another expert for the rest of the call (Wan 2.2 A14B): drop the cache."""
        self.clear()

    def inner_runtimes(self) -> list["Runtime"]:
        """The runtimes of the levels inside this one in a composition (none for a method enabled alone)."""
        return [runtime for runtime in (ref() for ref in self.inner) if runtime is not None]

    def begin_forward(self, ctx: StepContext, args: tuple, kwargs: dict) -> None:
        self.ctx = ctx
        self.answered_outside = self._reused_this_forward = False
        if self.cache_device is not None:
            self.compute_device = next((v.device for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)),
                                       self.compute_device)
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
        if self._reused_this_forward:  # (the tracker tells the outermost level first)
            for inner in self.inner_runtimes():
                inner.answered_outside = True
        call = self.report.calls[-1]
        call.peak_cache_bytes = max(call.peak_cache_bytes, measured_cache_bytes(self))
        self._log_call_end(ctx, call)
        if (ctx.first_in_step and ctx.step == call.num_steps - 1 and self.could_skip(call.num_steps)
                and not any(s.blocks_reused or (s.active_fraction is not None and s.active_fraction < 1)
                            for s in call.steps)):
            warnings.warn(
                f"{self.report.method}:{self.config.preset} reused nothing in this {call.num_steps}-step call: every "
                f"step was computed, so it only added overhead. {self.nothing_skipped_hint()}.",
                NothingSkippedWarning, stacklevel=2,
            )
        if self._block_calls_this_forward == 0 and not self._warned_silent and not self.answered_outside:
            self._warned_silent = True
            warnings.warn(
                f"{self.report.method}: none of its hooks ran during a forward of {type(self.model).__name__}; "
                "it is doing nothing. Was the model's block list replaced after enable()?",
                MethodSilentWarning, stacklevel=2,
            )

    def _log_call_end(self, ctx: StepContext, call: CallReport) -> None:
        """One INFO line on the ``diffcache`` logger when the last branch of a call's last step has run (as many
        branches as the step before had)."""
        if ctx.step != call.num_steps - 1 or not logger.isEnabledFor(logging.INFO):
            return
        expected = len(call.steps[-2].branches) if len(call.steps) > 1 else 1
        if len(call.steps[-1].branches) == expected:
            logger.info(call_summary(self.report.method, self.config.preset, call))

    @property
    def step_record(self) -> StepRecord:
        return self.report.calls[-1].steps[-1]

    def count_block(self, computed: bool) -> None:
        self._block_calls_this_forward += 1
        if computed:
            self.step_record.blocks_computed += 1
        else:
            self.step_record.blocks_reused += 1
            self._reused_this_forward = True



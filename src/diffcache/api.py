"""The one call path: :func:`enable` → adapter → method runtime → step tracker, the :class:`Handle` it returns,
and :func:`disable`.

Usage::

    with diffcache.enable(pipe, "adacache", preset="fast") as handle:
        video = pipe(prompt, num_inference_steps=30).frames
        print(handle.report())
"""

from __future__ import annotations

import copy
import dataclasses
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .adapters.base import find_adapter
from .context import StepTracker, TrackerGroup, install_tracker, remove_tracker
from .distributed import arrange_hooks
from .errors import ConfigError, MethodAlreadyEnabledError, UnknownMethodError, UnsupportedModelError
from .experts import experts_of, phase_function
from .methods.framework import (MethodConfig, MethodInfo, Runtime, check_cache_device, info_for_config, list_methods,
                                method_info, missing_capabilities)
from .report import CallReport, Report
from .stacking import refuse_foreign_caches


def denoiser_of(target) -> tuple[torch.nn.Module, Any]:
    """``(denoiser, pipeline or None)`` for a pipeline or a denoiser module."""
    from .compile import unwrap_compiled

    if isinstance(target, torch.nn.Module):
        return unwrap_compiled(target), None
    for attribute in ("transformer", "unet"):
        module = getattr(target, attribute, None)
        if isinstance(module, torch.nn.Module):
            return unwrap_compiled(module), target
    raise UnsupportedModelError(
        f"diffcache.enable needs a diffusers pipeline (with a .transformer or .unet) or the denoiser module itself; "
        f"got {type(target).__name__}."
    )


@dataclass
class Part:
    """One denoiser a handle caches: the whole model, or one expert of a multi-expert pipeline (Wan 2.2 A14B)."""

    expert: str | None  #: ``"transformer"`` / ``"transformer_2"`` for an expert, ``None`` for a single denoiser
    model: torch.nn.Module
    config: MethodConfig
    runtime: Runtime
    tracker: StepTracker


class Handle:
    """What :func:`diffcache.enable` returns. ``report()`` says what the method did; ``disable()`` removes every
    hook (the output is then bit-identical to never having enabled). Usable as a context manager.

    On a pipeline with two experts (Wan 2.2 A14B) the handle holds one :class:`Part` per expert (``parts``), each
    with its own config, runtime (cache state) and tracker; ``report()`` merges them into one report over the whole
    loop, each step record naming the expert that ran it. ``model``, ``config``, ``runtime`` and ``tracker`` are
    those of the first part.

    A composition (``enable(pipe, "teacache+cfg-cache")``, :mod:`diffcache.composition`) holds one part per method
    (and expert), all parts of a denoiser driven by one tracker; ``config`` is then the
    :class:`~diffcache.composition.ComposedConfig` and ``report()`` a :class:`~diffcache.composition.ComposedReport`."""

    def __init__(self, info: MethodInfo, parts: list[Part], pipeline, composition=None):
        self.info = info
        self.parts = parts
        self.pipeline = pipeline
        self.composition = composition  #: the ComposedConfig of a composition, else None
        self.enabled = True

    @property
    def model(self):
        return self.parts[0].model

    @property
    def config(self) -> MethodConfig:
        return self.composition if self.composition is not None else self.parts[0].config

    @property
    def runtime(self) -> Runtime:
        return self.parts[0].runtime

    @property
    def tracker(self) -> StepTracker:
        return self.parts[0].tracker

    @property
    def method(self) -> str:
        return self.info.name

    def report(self) -> Report:
        """What the method did, per call and step, steps numbered on the whole loop. With several experts, or a call
        that began after step 0 (an expert enabled on its own), it is built from the runtimes' reports at each call
        of ``report()`` (a new object), each step's ``expert`` naming the denoiser that ran it. A composition's is a
        :class:`~diffcache.composition.ComposedReport` over its methods' reports."""
        if self.composition is None:
            return _method_report(self.info.name, self.parts)
        from .composition import compose_report

        methods = list(dict.fromkeys(part.runtime.report.method for part in self.parts))  # outermost first
        of = {name: [part for part in self.parts if part.runtime.report.method == name] for name in methods}
        return compose_report(self.info.name, self.composition.to_dict(), [
            (name, of[name][0].config, _method_report(name, of[name]),
             getattr(type(of[name][0].runtime), "answered_share", None)) for name in methods])

    def state_roots(self) -> list:
        """The objects that hold the method's cached tensors (for measuring cache memory; read, never change)."""
        return [part.runtime for part in self.parts]

    def reset(self) -> None:
        """Forget the call in progress and the cached tensors; the next forward starts a new call."""
        self.tracker.reset()
        for part in self.parts:
            part.runtime.clear()

    def _restore(self) -> None:
        """Install this handle's hooks again (``enable(..., replace=True)`` whose new method failed to install);
        its report is kept, and the next forward starts a new call."""
        _install(self.parts)
        for part in self.parts:
            part.model._diffcache_handle = self
        self.tracker.reset()
        self.enabled = True

    def disable(self) -> None:
        """Remove every hook this method installed. Safe to call twice."""
        if not self.enabled:
            return
        for part in self.parts:
            part.runtime.remove()
            remove_tracker(part.model)
            if getattr(part.model, "_diffcache_handle", None) is self:
                del part.model._diffcache_handle
        self.enabled = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.disable()
        return False

    def __repr__(self):
        state = "enabled" if self.enabled else "disabled"
        on = " + ".join(type(part.model).__name__ for part in self.parts)
        return f"<diffcache {self.info.name}:{self.config.preset} on {on}, {state}>"


def _method_report(method: str, parts: list[Part]) -> Report:
    """One method's report over its parts (one per expert)."""
    if len(parts) == 1 and not any(phase.start for phase in parts[0].tracker.phases.values()):
        return parts[0].runtime.report  # every call ran from step 0: the runtime's own steps are the loop's
    return _merged_report(method, parts)


def _install(parts: list[Part]) -> None:
    """Install the parts' hooks, per denoiser: its methods innermost level first (a later hook on a module wraps an
    earlier one), then its tracker, outermost. On a failure every hook installed so far is removed again."""
    installed = []
    try:
        for model in list({id(part.model): part.model for part in parts}.values()):
            own = [part for part in parts if part.model is model]
            for part in reversed(own):
                installed.append(part)
                part.runtime.install()
            install_tracker(model, own[0].tracker)  # last registered = outermost: the context comes first
            arrange_hooks(model)  # around diffusers' context-parallel hooks: see diffcache.distributed
    except Exception:
        for part in installed:  # leave the models as they were
            part.runtime.remove()
            remove_tracker(part.model)
        raise


def _merged_report(method: str, parts: list[Part]) -> Report:
    """One report over the whole loop from the experts' reports: each expert's steps moved to their place in the
    loop (its phase's offset) and marked with the expert's name; token step counts added up."""
    configs = {part.expert: part.config.to_dict() for part in parts}
    first = next(iter(configs.values()))
    merged = Report(method, {**first, "experts": configs} if len({str(c) for c in configs.values()}) > 1 else first)
    group = parts[0].tracker.group
    by_call: dict[int, list] = {}
    for part in parts:
        for call in part.runtime.report.calls:
            by_call.setdefault(call.call_index, []).append((part, call))
    for index in sorted(by_call):
        out = CallReport(index, group.call_steps.get(index, sum(c.num_steps for _, c in by_call[index])))
        tokens = []
        for part, call in by_call[index]:
            offset = part.tracker.phases[index].start
            for record in call.steps:
                out.steps.append(dataclasses.replace(copy.deepcopy(record), step=record.step + offset,
                                                     expert=part.expert))
            if call.token_steps is not None:
                tokens.append(np.asarray(call.token_steps))
            out.bytes_to_cache_device += call.bytes_to_cache_device
            out.bytes_from_cache_device += call.bytes_from_cache_device
        out.steps.sort(key=lambda record: record.step)
        out.peak_cache_bytes = max(call.peak_cache_bytes for _, call in by_call[index])
        if tokens and len({t.shape for t in tokens}) == 1:
            out.token_steps = sum(tokens).tolist()
        merged.calls.append(out)
    return merged


def enable(target, method: str | MethodConfig, preset: str | None = None, *, replace: bool = False,
           num_inference_steps: int | None = None, experts: dict | None = None, cache_device=None,
           **overrides) -> Handle:
    """Enable a caching method on a pipeline or on its denoiser module.

    ``method`` is a name from :func:`list_methods` (with an optional ``preset`` and field ``overrides``) or a
    config object (``AdaCacheConfig(...)``). One method at a time per model: enabling a second one raises
    :class:`MethodAlreadyEnabledError` unless ``replace=True``, which disables the first.
    ``num_inference_steps`` is needed only for a bare denoiser driven by a loop that gives no step information
    (see :mod:`diffcache.context`).

    On a pipeline with two experts (Wan 2.2 A14B: ``transformer`` and ``transformer_2``) the method is enabled on
    both, each with its own cache and warm-up over the steps it runs (:mod:`diffcache.experts`); ``experts`` gives
    one expert a config of its own: ``{"transformer_2": "preset-name" | {"field": value, "preset": ...} |
    config object}`` (the others keep ``method``/``preset``/``overrides``).

    Methods at different levels combine (:mod:`diffcache.composition`): ``method`` as a list of parts
    (``["teacache", "cfg-cache:default"]``, config objects, or both), ``"teacache+cfg-cache"``, or a
    :class:`~diffcache.composition.ComposedConfig`; each part gets its preset from ``"name:preset"`` or its config
    object, and ``preset`` may be a JSON preset file of the whole composition. Combinations whose levels or rules
    conflict are refused with :class:`~diffcache.errors.CompositionError`.
    """
    model, pipeline = denoiser_of(target)
    _check_not_whole_compiled(target, pipeline, model)
    cache_device = check_cache_device(cache_device)
    from .composition import CompositionInfo, is_composition, resolve

    composition = resolve(method, preset, overrides) if is_composition(method) else None
    if composition is not None and len(composition.configs) == 1:  # a list of one method: that method
        method, preset, composition = composition.configs[0], None, None
    if composition is not None:
        if experts is not None:
            raise ConfigError("experts= gives one method's configs per expert; a composition runs its methods on "
                              "every expert with the configs given (enable each expert's denoiser on its own for "
                              "different ones)")
        members = [(info_for_config(c), c) for c in composition.ordered()]  # outermost level first
        info, config = CompositionInfo(composition.name, tuple(i for i, _ in members)), composition
    elif isinstance(method, MethodConfig):
        if preset is not None:
            raise TypeError("pass either a config object or a method name with a preset, not both")
        info = info_for_config(method)
        if overrides:
            type(method).check_options(overrides)
        config = dataclasses.replace(method, **overrides) if overrides else method
    else:
        try:
            info = method_info(method)
        except UnknownMethodError as error:  # the CLI's "name:preset", passed to Python as one string
            base, _, named_preset = method.partition(":")
            if named_preset and preset is None and base in {i.name for i in list_methods()}:
                raise UnknownMethodError(f"{error} To pick a preset from Python, pass it apart: "
                                         f"enable(pipe, {base!r}, {named_preset!r}).") from None
            raise
        config = info.config_class.from_preset(preset, **overrides)
    if composition is None:
        members = [(info, config)]
    if num_inference_steps is not None and (not isinstance(num_inference_steps, int) or num_inference_steps < 1):
        raise ConfigError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
    from .compile import check_not_whole_compiled, unwrap_compiled

    expert_models = experts_of(pipeline)
    for _, expert_model in expert_models:
        check_not_whole_compiled(unwrap_compiled(expert_model), expert_model)
    expert_models = [(name, unwrap_compiled(expert_model)) for name, expert_model in expert_models]
    if experts is not None:
        names = [name for name, _ in expert_models]
        unknown = sorted(set(experts) - set(names)) if isinstance(experts, dict) else None
        if unknown is None or unknown:
            raise ConfigError(
                f"experts= must map expert names to configs; {type(target).__name__} has "
                + (f"the experts {', '.join(names)}" if names else "a single denoiser, so it takes no experts=")
                + (f" (got {', '.join(map(repr, unknown))})" if unknown else ""))
    denoisers = expert_models or [(None, model)]
    part_configs = []  # per denoiser: (expert, module, [(method info, its config fitted to the model)])
    for name, module in denoisers:
        fitted = []
        for member, member_config in members:
            member_config = _expert_config(member, member_config, (experts or {}).get(name))
            fitted.append((member, _check_fits(member, member_config, find_adapter(module), module, pipeline)))
        part_configs.append((name, module, fitted))
    for _, module, _ in part_configs:  # another library's cache on the denoiser (diffusers' enable_cache, cache-dit)
        refuse_foreign_caches(module, pipeline, info.name)
    existing = _existing_handle([module for _, module, _ in part_configs], replace)

    group = TrackerGroup()
    parts = []
    for name, module, fitted in part_configs:
        adapter = find_adapter(module)
        tracker = StepTracker(_timestep_reader(adapter, module, pipeline), pipeline, num_inference_steps, group=group,
                              expert=name,
                              phase=phase_function(pipeline, name) if name is not None else None)
        runtimes = []
        for member, part_config in fitted:  # outermost level first: the tracker tells them in that order
            runtime = member.runtime_class(part_config, adapter, module, member.name)
            runtime.pipeline = pipeline
            runtime.use_cache_device(cache_device)
            tracker.listeners.append(runtime)
            parts.append(Part(name, module, part_config, runtime, tracker))
            runtimes.append(runtime)
        for index, runtime in enumerate(runtimes):  # weak: a cache measured from one runtime holds only its own
            runtime.inner = [weakref.ref(inner) for inner in runtimes[index + 1:]]
    try:
        _install(parts)
    except Exception:
        if existing is not None:  # with replace=True, the replaced method again
            existing._restore()
        raise
    handle = Handle(info, parts, pipeline, composition)
    for part in parts:
        part.model._diffcache_handle = handle
    return handle


def _check_not_whole_compiled(target, pipeline, model) -> None:
    """Refuse a denoiser compiled as a whole (:mod:`diffcache.compile`), given as ``torch.compile(model)``'s wrapper
    or compiled in place; each expert of a multi-expert pipeline is checked where its parts are built."""
    from .compile import check_not_whole_compiled

    given = target if pipeline is None else next(
        (getattr(pipeline, a) for a in ("transformer", "unet") if isinstance(getattr(pipeline, a, None), torch.nn.Module)),
        model)
    check_not_whole_compiled(model, given)


def _timestep_reader(adapter, model, pipeline):
    """What the tracker calls before every forward: the adapter refuses a loop it cannot follow, then gives the
    forward's timestep."""

    def timestep_of(args, kwargs):
        adapter.check_forward(model, pipeline, args, kwargs)  # a loop the tracker cannot follow is refused here
        return adapter.timestep(model, args, kwargs)
    return timestep_of


def _expert_config(info: MethodInfo, config: MethodConfig, given) -> MethodConfig:
    """An expert's config: ``config``, or what ``experts=`` gives for it (a preset name, a dict of fields with an
    optional ``"preset"``, or a config object of the same method)."""
    if given is None:
        return config
    if isinstance(given, str):
        return info.config_class.from_preset(given)
    if isinstance(given, dict):
        given = dict(given)
        return info.config_class.from_preset(given.pop("preset", None), **given)
    if isinstance(given, info.config_class):
        return given
    raise ConfigError(f"experts= values must be a preset name, a dict of {info.name} options or a "
                      f"{info.config_class.__name__}; got {type(given).__name__}")


def _check_fits(info: MethodInfo, config: MethodConfig, adapter, model, pipeline) -> MethodConfig:
    """Refuse a method or option the model's family cannot serve, naming the missing capability; the config to run
    on the model (:meth:`MethodConfig.for_model`)."""
    missing = missing_capabilities(config, adapter)
    if missing and adapter.family in info.families:  # the method fits the family, this option does not
        raise UnsupportedModelError(
            f"{info.name}:{config.preset or 'this configuration'} needs {' and '.join(missing)}, which the "
            f"{adapter.family} adapter does not provide; choose a preset or options that do not need it "
            f"(presets: {', '.join(info.presets)})."
        )
    if missing:
        raise UnsupportedModelError(
            f"{info.name} does not support {adapter.family} models; it supports: {', '.join(info.families)} "
            f"(it needs {' and '.join(missing)}, which the {adapter.family} adapter does not provide)."
        )
    _check_sampler(info, pipeline)
    config = config.for_model(adapter.family, model, pipeline)
    config.check_model(adapter.family, pipeline)
    return config


#: methods that reuse a step's outputs or features in later steps on a fixed schedule, without measuring whether the
#: input changed: PAB's broadcast ranges, FasterCache's feature reuse, DeepCache's cache interval
FIXED_SCHEDULE_METHODS = ("pab", "fastercache", "deepcache")
#: multistep consistency samplers: each step predicts the clean sample and re-noises it with fresh noise
CONSISTENCY_SAMPLERS = ("LCMScheduler", "FlowMatchLCMScheduler", "TCDScheduler")


def _check_sampler(info: MethodInfo, pipeline) -> None:
    """Refuse a fixed-schedule method on a consistency sampler (a few-step student of ``diffcache distill``, an LCM):
    there consecutive steps see different fresh noise, so the near-identical features those methods reuse are not
    there, and a 1–8 step run has no redundant steps to skip. Methods that measure the change (fbcache, easycache,
    teacache, adacache) still run: they compute every step their measure asks for."""
    scheduler = getattr(pipeline, "scheduler", None)
    names = [c.__name__ for c in type(scheduler).__mro__] if scheduler is not None else []
    sampler = next((n for n in names if n in CONSISTENCY_SAMPLERS), None)
    if info.name in FIXED_SCHEDULE_METHODS and sampler is not None:
        raise UnsupportedModelError(
            f"{info.name} reuses work across steps on a fixed schedule, and this pipeline samples with "
            f"{type(scheduler).__name__}" + (f" (a {sampler})" if sampler != type(scheduler).__name__ else "")
            + ", a consistency sampler: every step re-noises its clean estimate with fresh noise, so "
            "consecutive steps do not share the features it would reuse. Use a method that measures the change "
            "(fbcache, easycache, adacache), or cache the teacher instead.")


def _existing_handle(models: list, replace: bool):
    """The handle already enabled on any of ``models`` (disabled when ``replace``), or ``None``."""
    for model in models:
        existing = getattr(model, "_diffcache_handle", None)
        if existing is not None and existing.enabled:
            if not replace:
                raise MethodAlreadyEnabledError(
                    f"{existing.method}:{existing.config.preset} is already enabled on this {type(model).__name__}; "
                    "call its handle's disable() first, or pass replace=True to swap methods."
                )
            existing.disable()
            return existing
    return None


def disable(target) -> None:
    """Disable whatever diffcache method is enabled on a pipeline or denoiser (no-op when none is)."""
    model, _ = denoiser_of(target)
    handle = getattr(model, "_diffcache_handle", None)
    if handle is not None:
        handle.disable()

"""The one call path: :func:`enable` → adapter → method runtime → step tracker, the :class:`Handle` it returns,
and :func:`disable`.

Usage::

    with diffcache.enable(pipe, "adacache", preset="fast") as handle:
        video = pipe(prompt, num_inference_steps=30).frames
        print(handle.report())
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .adapters.base import find_adapter
from .context import TRACKER_HOOK, StepTracker, install_tracker
from .errors import ConfigError, MethodAlreadyEnabledError, UnsupportedModelError
from .methods.framework import MethodConfig, MethodInfo, Runtime, info_for_config, method_info, missing_capabilities
from .report import Report


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

    def state_roots(self) -> list:
        """The objects that hold the method's cached tensors (for measuring cache memory; read, never change)."""
        return [self.runtime]

    def reset(self) -> None:
        """Forget the call in progress and the cached tensors; the next forward starts a new call."""
        self.tracker.reset()
        self.runtime.clear()

    def _restore(self) -> None:
        """Install this handle's hooks again (``enable(..., replace=True)`` whose new method failed to install);
        its report is kept, and the next forward starts a new call."""
        self.runtime.install()
        self.tracker.reset()
        install_tracker(self.model, self.tracker)
        self.model._diffcache_handle = self
        self.enabled = True

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
        info = info_for_config(method)
        if overrides:
            type(method).check_options(overrides)
        config = dataclasses.replace(method, **overrides) if overrides else method
    else:
        info = method_info(method)
        config = info.config_class.from_preset(preset, **overrides)
    adapter = find_adapter(model)
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
    if num_inference_steps is not None and (not isinstance(num_inference_steps, int) or num_inference_steps < 1):
        raise ConfigError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
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
    else:
        existing = None

    runtime = info.runtime_class(config, adapter, model, info.name)
    runtime.pipeline = pipeline

    def timestep_of(args, kwargs):
        adapter.check_forward(model, pipeline, args, kwargs)  # a loop the tracker cannot follow is refused here
        return adapter.timestep(model, args, kwargs)

    tracker = StepTracker(timestep_of, pipeline, num_inference_steps)
    tracker.listeners.append(runtime)
    try:
        runtime.install()
        install_tracker(model, tracker)  # last registered = outermost: the context is known before any method hook
    except Exception:
        runtime.remove()  # leave the model as it was: with replace=True, the replaced method enabled again
        if existing is not None:
            existing._restore()
        raise
    handle = Handle(info, config, model, pipeline, runtime, tracker)
    model._diffcache_handle = handle
    return handle


def disable(target) -> None:
    """Disable whatever diffcache method is enabled on a pipeline or denoiser (no-op when none is)."""
    model, _ = denoiser_of(target)
    handle = getattr(model, "_diffcache_handle", None)
    if handle is not None:
        handle.disable()

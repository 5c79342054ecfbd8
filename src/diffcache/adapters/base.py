"""The core contract every adapter fulfils, and the registry that finds the adapter of a model.

An adapter is the only code that touches a denoiser's attributes. The core contract (:class:`Adapter`) is what
every method may rely on:

* ``family`` / ``model_classes`` / ``examples`` / ``matches(model)``: which models it serves;
* ``blocks(model)``: the model's blocks in execution order (the unit a method hooks and counts);
* ``timestep(model, args, kwargs)``: the timestep given to the denoiser's forward (the step tracker's clue);
* ``check_forward(model, pipeline, args, kwargs)``: refuse a loop the step tracker cannot follow (no-op by default).

Everything else is an optional, named capability (:mod:`diffcache.adapters.capabilities`): an adapter declares
one by subclassing it, and a method declares the capabilities it needs. The model families a method supports
are derived from the registered adapters that have them — never listed by hand.

A model family is added by one file that ends in::

    @register_adapter
    class MyFamilyAdapter(Adapter, BlockStack, AttentionRoles):
        family = "MyFamily"
        model_classes = ("MyTransformer3DModel",)
        ...

and the same decorator works from outside the package, for a user's own model.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, ClassVar

import torch
from diffusers.utils import scale_lora_layers, unscale_lora_layers

from ..errors import UnsupportedModelError


@functools.lru_cache(maxsize=256)
def parameter_names(function) -> tuple[str, ...]:
    """The names of ``function``'s parameters, ``self`` left out (read once per function: hooks ask at every block
    call, and ``inspect.signature`` costs tens of microseconds)."""
    parameters = tuple(inspect.signature(function).parameters)
    return parameters[1:] if parameters and parameters[0] == "self" else parameters


def argument(function, args: tuple, kwargs: dict, name: str, default: Any = None) -> Any:
    """The value of parameter ``name`` of ``function`` in a call with ``args`` / ``kwargs``."""
    if name in kwargs:
        return kwargs[name]
    try:
        parameters = parameter_names(function)
    except TypeError:  # an unhashable callable: read its signature every time
        parameters = parameter_names.__wrapped__(function)
    if name not in parameters:
        return default
    position = parameters.index(name)
    return args[position] if position < len(args) else default


@contextlib.contextmanager
def lora_scaled(model: torch.nn.Module, attention_kwargs: dict | None):
    """The LoRA scale of a forward's ``attention_kwargs`` applied to ``model`` while the block runs, as diffusers'
    ``@apply_lora_scale`` decorator of the model's own forward does (for an adapter's re-implemented forward)."""
    scale = (attention_kwargs or {}).get("scale", 1.0)
    if scale != 1.0:
        scale_lora_layers(model, scale)
    try:
        yield
    finally:
        if scale != 1.0:
            unscale_lora_layers(model, scale)


class Adapter:
    """The core contract: one subclass per architecture family, registered with :func:`register_adapter`."""

    family: ClassVar[str] = ""  #: the family's name, as users see it in errors and in ``list_methods()``
    model_classes: ClassVar[tuple[str, ...]] = ()  #: class names (any in the model's MRO) this adapter handles
    examples: ClassVar[str] = ""  #: a few real models of the family, for docs and errors

    @classmethod
    def matches(cls, model: torch.nn.Module) -> bool:
        """Whether this adapter serves ``model`` (by default: a class in its MRO is named in ``model_classes``)."""
        return any(klass.__name__ in cls.model_classes for klass in type(model).__mro__)

    def blocks(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """The model's blocks in execution order."""
        return list(model.transformer_blocks)

    def timestep(self, model: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        """The timestep passed to the denoiser's forward (a number or a tensor, per sample or per token)."""
        return argument(type(model).forward, args, kwargs, "timestep")

    def check_forward(self, model: torch.nn.Module, pipeline, args: tuple, kwargs: dict) -> None:
        """Refuse (:class:`~diffcache.errors.CallRefusedError`) a forward whose denoising loop diffcache cannot
        follow (the step tracker asks before every forward, so a call is refused at its first forward, before any
        work). ``pipeline`` is the pipeline enabled on, or ``None``. By default every forward is followed."""


_ADAPTERS: list[type[Adapter]] = []


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: make ``cls`` the adapter of the models it ``matches``.

    Adapters registered later are tried first, so a user's adapter (registered after the built-in ones) takes
    precedence over a built-in one for the same class. Registering the same class twice is a no-op."""
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise TypeError(f"register_adapter decorates a subclass of diffcache.adapters.Adapter, got {cls!r}")
    if not cls.family or not (cls.model_classes or cls.matches is not Adapter.matches):
        raise TypeError(f"{cls.__name__} must set `family` and `model_classes` (or override `matches`)")
    if cls not in _ADAPTERS:
        _ADAPTERS.append(cls)
    return cls


def registered_adapters() -> list[type[Adapter]]:
    """Every registered adapter class, in registration order (the built-in ones first: importing
    :mod:`diffcache.adapters` registers them)."""
    return list(_ADAPTERS)


def describe(adapter: type[Adapter]) -> str:
    return f"{adapter.family} ({', '.join(adapter.model_classes)}: e.g. {adapter.examples})"


def supported_families() -> list[str]:
    return [describe(adapter) for adapter in registered_adapters()]


def find_adapter(model: torch.nn.Module) -> Adapter:
    """The adapter for ``model``, or :class:`~diffcache.errors.UnsupportedModelError` naming the supported
    families."""
    for adapter in reversed(registered_adapters()):
        if adapter.matches(model):
            return adapter()
    raise UnsupportedModelError(
        f"diffcache has no adapter for {type(model).__name__}; supported model families: "
        f"{'; '.join(supported_families())}. A family of your own is one class decorated with "
        "diffcache.register_adapter (see the docs: contributing/adding-a-model)."
    )

"""What a method may know about a model: the :class:`Adapter` interface, and how the right adapter is found.

An adapter is the only code that knows a denoiser's insides. For a transformer it tells

* ``blocks(model)``: the transformer blocks, in order (``first_block`` is ``blocks[0]``);
* ``block_streams`` / ``make_block_output``: the tensors a block updates residually (the video tokens, and for
  joint-attention models such as CogVideoX also the text tokens) and how to rebuild the block's return value;
* ``split_module(block)`` / ``split_streams``: a submodule whose input is the block's state *after* its
  self-attention residual was added, so a block's update splits into its two residual parts — self-attention,
  and cross-attention + MLP (AdaCache caches both);
* ``attention_modules(block)``: the block's attention modules by role (``"self"``, ``"cross"``);
* ``token_layout(model, args, kwargs)``: the token grid ``(frames, height, width)`` of a forward, tokens ordered
  frame-major;
* ``timestep(args, kwargs)``: the timestep passed to the denoiser's forward;
* ``teacache_signal(block, args, kwargs)``: the modulated input TeaCache reads at the first block;
* ``output_frames(model, output, args, kwargs)``: the denoiser output as per-frame 2-D maps (FasterCache's FFT).

Adding a model family is adding one adapter to ``registered_adapters()`` below, nothing else.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from ..errors import UnsupportedModelError



def argument(function, args: tuple, kwargs: dict, name: str, default: Any = None) -> Any:
    """The value of parameter ``name`` of ``function`` in a call with ``args`` / ``kwargs``."""
    if name in kwargs:
        return kwargs[name]
    parameters = list(inspect.signature(function).parameters)
    if parameters and parameters[0] == "self":
        parameters = parameters[1:]
    position = parameters.index(name)
    return args[position] if position < len(args) else default


class Adapter:
    """Base class; one subclass per architecture family."""

    family: str = ""  #: the family's name, as users see it in errors and in ``list_methods()``
    model_classes: tuple[str, ...] = ()  #: diffusers class names this adapter handles
    examples: str = ""  #: a few real models of the family, for docs and errors

    @classmethod
    def matches(cls, model: torch.nn.Module) -> bool:
        return any(klass.__name__ in cls.model_classes for klass in type(model).__mro__)

    # -- structure -----------------------------------------------------------------------------------------------
    def blocks(self, model) -> list[torch.nn.Module]:
        return list(model.transformer_blocks)

    def first_block(self, model) -> torch.nn.Module:
        return self.blocks(model)[0]

    def attention_modules(self, block) -> dict[str, torch.nn.Module]:
        raise NotImplementedError

    # -- residual streams of a block -----------------------------------------------------------------------------
    def block_streams(self, block, args: tuple, kwargs: dict) -> tuple[torch.Tensor, ...]:
        return (argument(type(block).forward, args, kwargs, "hidden_states"),)

    def output_streams(self, output) -> tuple[torch.Tensor, ...]:
        return output if isinstance(output, tuple) else (output,)

    def make_block_output(self, streams: tuple[torch.Tensor, ...]):
        return streams if len(streams) > 1 else streams[0]

    def split_module(self, block) -> torch.nn.Module:
        raise NotImplementedError

    def split_streams(self, split_module, args: tuple, kwargs: dict) -> tuple[torch.Tensor, ...]:
        return (args[0] if args else kwargs["hidden_states"],)

    def teacache_signal(self, block, args: tuple, kwargs: dict) -> torch.Tensor:
        """The cheap input TeaCache watches, from the first block's call: by default the timestep embedding the
        block is modulated with (``temb``: Wan's ``timestep_proj`` — the official retention mode's ``e0`` —
        and CogVideoX's ``emb``, as the official TeaCache code reads them)."""
        return argument(type(block).forward, args, kwargs, "temb")

    def output_frames(self, model, output: torch.Tensor, args: tuple, kwargs: dict):
        """The denoiser's output viewed as ``[..., H, W]`` (one 2-D map per batch item, frame and channel), and the
        function that puts such a view back into the output's layout. Wan ``[B,C,F,H,W]`` and CogVideoX
        ``[B,F,C,H,W]`` already end in ``(H, W)``."""
        return output, lambda view: view

    # -- forward-level facts -------------------------------------------------------------------------------------
    def timestep(self, model, args: tuple, kwargs: dict):
        return argument(type(model).forward, args, kwargs, "timestep")

    def token_layout(self, model, args: tuple, kwargs: dict) -> tuple[int, int, int]:
        raise NotImplementedError


def registered_adapters() -> list[type[Adapter]]:
    from .cogvideox import CogVideoXAdapter
    from .ltx import LTXVideoAdapter
    from .unet import UNet2DAdapter, UNet3DAdapter, UNetSpatioTemporalAdapter
    from .wan import WanAdapter

    return [WanAdapter, CogVideoXAdapter, LTXVideoAdapter, UNet2DAdapter, UNet3DAdapter, UNetSpatioTemporalAdapter]


def supported_families() -> list[str]:
    return [f"{adapter.family} ({', '.join(adapter.model_classes)}: e.g. {adapter.examples})"
            for adapter in registered_adapters()]


def find_adapter(model: torch.nn.Module) -> Adapter:
    """The adapter for ``model``, or :class:`UnsupportedModelError` naming the supported families."""
    for adapter in registered_adapters():
        if adapter.matches(model):
            return adapter()
    raise UnsupportedModelError(
        f"diffcache has no adapter for {type(model).__name__}; supported model families: "
        f"{'; '.join(supported_families())}."
    )

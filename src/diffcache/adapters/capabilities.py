"""Optional capabilities an adapter can have, each a named protocol.

An adapter declares a capability by subclassing it (``class WanAdapter(Adapter, BlockStack, SplitBlocks, …)``),
which also gives it the capability's default implementations; a method declares the capabilities it needs in its
config (``REQUIRES``, and ``required_capabilities()`` for those an option adds, as MoReg adds ``TokenGrid``).
:func:`has_capability` is the one check, and a method's supported families are the registered adapters that have
all its capabilities.

| capability | what the adapter tells | needed by |
|---|---|---|
| `BlockStack` | the residual streams a block updates | step- and block-level caches |
| `SplitBlocks` | a block's split point after self-attention, or that it has none (parallel attention + MLP) | AdaCache |
| `AttentionRoles` | a block's attention modules by role | PAB, FasterCache |
| `ModulatedInput` | the cheap modulated input of the first block | TeaCache |
| `TokenGrid` | the `(frames, height, width)` token grid, and the output as per-frame 2-D maps | MoReg, FasterCache |
| `BatchedArguments` | how to cut a batched-CFG forward to one half | FasterCache |
| `TokenSparseForward` | a forward over a subset of the tokens with a K/V cache of the whole sequence | HSA |
| `UNetSkipBranches` | a U-Net's down / mid / up path and skip branches | DeepCache |
"""

from __future__ import annotations

import inspect
from typing import Callable, Protocol

import torch

from .base import argument


def has_capability(adapter, capability: type) -> bool:
    """Whether an adapter (class or instance) declares ``capability`` (by subclassing it)."""
    cls = adapter if isinstance(adapter, type) else type(adapter)
    return capability in cls.__mro__


class BlockStack(Protocol):
    """The blocks form a residual stack: each maps its streams to updated streams of the same shapes (the video
    tokens, and for joint-attention models such as CogVideoX also the text tokens)."""

    def block_streams(self, block: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[torch.Tensor, ...]:
        """The streams a block's call updates, from its arguments."""
        return (argument(type(block).forward, args, kwargs, "hidden_states"),)

    def output_streams(self, output) -> tuple[torch.Tensor, ...]:
        """The updated streams, from a block's return value."""
        return output if isinstance(output, tuple) else (output,)

    def make_block_output(self, streams: tuple[torch.Tensor, ...]):
        """A block's return value made of ``streams`` (the inverse of :meth:`output_streams`)."""
        return streams if len(streams) > 1 else streams[0]


class SplitBlocks(Protocol):
    """A block's update splits at one module whose input is the block state after its self-attention residual
    was added: self-attention, then cross-attention + MLP (AdaCache caches the two parts).

    ``split_module`` returns ``None`` for a block without such a point (attention and MLP in parallel, as in
    HunyuanVideo's single-stream blocks): its whole update is then one part. A stream the split module does not see
    (``split_streams`` gives fewer streams than the block updates: HunyuanVideo's text stream, normalised by its own
    ``norm2_context``) keeps its whole update as one part too."""

    def split_module(self, block: torch.nn.Module) -> torch.nn.Module | None:
        raise NotImplementedError

    def split_streams(self, split_module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[torch.Tensor, ...]:
        """The block state at the split point, from the split module's arguments."""
        return (args[0] if args else kwargs["hidden_states"],)


class AttentionRoles(Protocol):
    """A block's attention modules by role: ``"self"`` (over the video tokens, or joint over text and video),
    ``"cross"`` (to the text), ``"temporal"`` / ``"spatial"`` where a family separates them."""

    def attention_modules(self, block: torch.nn.Module) -> dict[str, torch.nn.Module]:
        raise NotImplementedError


class ModulatedInput(Protocol):
    """The cheap input TeaCache watches, read at the first block's call."""

    def modulated_input(self, block: torch.nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        """By default the timestep embedding the block is modulated with (``temb``: Wan's ``timestep_proj`` — the
        official TeaCache retention mode's ``e0`` — and CogVideoX's ``emb``, as the official TeaCache code reads
        them)."""
        return argument(type(block).forward, args, kwargs, "temb")


class TokenGrid(Protocol):
    """The token grid of a forward and the output's per-frame layout."""

    def token_layout(self, model: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[int, int, int]:
        """The token grid ``(frames, height, width)`` of a forward; tokens are ordered frame-major."""
        raise NotImplementedError

    def output_frames(self, model: torch.nn.Module, output: torch.Tensor, args: tuple, kwargs: dict
                      ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """The denoiser's output viewed as ``[..., H, W]`` (one 2-D map per batch item, frame and channel), and the
        function that puts such a view back into the output's layout. By default the output already ends in
        ``(H, W)`` (Wan ``[B, C, F, H, W]``, CogVideoX ``[B, F, C, H, W]``)."""
        return output, lambda view: view


class BatchedArguments(Protocol):
    """Which forward arguments carry the batch (for cutting a batched-CFG forward ``[uncond, cond]`` to a half)."""

    #: the denoiser forward's arguments whose first dimension is the batch
    batched_arguments: tuple[str, ...] = ("hidden_states", "encoder_hidden_states", "timestep",
                                          "encoder_attention_mask", "encoder_hidden_states_image")

    def slice_batch(self, model: torch.nn.Module, args: tuple, kwargs: dict, keep: slice, batch: int
                    ) -> tuple[tuple, dict]:
        """The forward's batched arguments cut to the ``keep`` part of a ``batch``-row batch (the others are
        passed unchanged)."""
        names = [n for n in inspect.signature(type(model).forward).parameters if n != "self"]
        args = list(args)
        for name in self.batched_arguments:
            if name in kwargs and isinstance(kwargs[name], torch.Tensor) and kwargs[name].shape[:1] == (batch,):
                kwargs = {**kwargs, name: kwargs[name][keep]}
            elif name in names and names.index(name) < len(args):
                value = args[names.index(name)]
                if isinstance(value, torch.Tensor) and value.shape[:1] == (batch,):
                    args[names.index(name)] = value[keep]
        return tuple(args), kwargs


class TokenSparseForward(Protocol):
    """A forward over a subset of the tokens whose self-attention keeps a K/V cache of the whole sequence (HSA's
    K/V-cache synchronisation), and the output as tokens."""

    def output_tokens(self, model: torch.nn.Module, output: torch.Tensor) -> torch.Tensor:
        """The denoiser output as tokens ``[B, N, D]``, in the model's own unpatchify order."""
        raise NotImplementedError

    def tokens_to_output(self, model: torch.nn.Module, tokens: torch.Tensor, grid: tuple[int, int, int]
                         ) -> torch.Tensor:
        """The inverse of :meth:`output_tokens`."""
        raise NotImplementedError

    def token_layout(self, model: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[int, int, int]:
        raise NotImplementedError

    def self_attention_modules(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """Every self-attention layer, in order (the layers whose K/V are cached)."""
        raise NotImplementedError

    def check_sparse_attention(self, modules: list[torch.nn.Module]) -> None:
        """Refuse (:class:`~diffcache.errors.UnsupportedModelError`) attention processors the synchronised
        attention does not reproduce."""

    def synced_self_attention(self, attn, hidden_states, rotary_emb, kv: dict | None, active: torch.Tensor | None):
        """Self-attention of ``hidden_states`` through the K/V cache ``kv`` (``active``: token indices, or ``None``
        for every token)."""
        raise NotImplementedError

    def sparse_forward(self, model: torch.nn.Module, args: tuple, kwargs: dict, active: torch.Tensor
                       ) -> torch.Tensor:
        """The forward for the tokens ``active`` (``[B, n]``) only, returning their outputs as tokens."""
        raise NotImplementedError


class UNetSkipBranches(Protocol):
    """A U-Net's down path, mid block and up path, and the skip branches between them (DeepCache)."""

    def down_blocks(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return list(model.down_blocks)

    def mid_block(self, model: torch.nn.Module) -> torch.nn.Module | None:
        return model.mid_block

    def up_blocks(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return list(model.up_blocks)

    def layout(self, model: torch.nn.Module):
        raise NotImplementedError

    def layer_modules(self, block: torch.nn.Module, index: int) -> list[tuple[str, torch.nn.Module]]:
        raise NotImplementedError

    def num_layers(self, block: torch.nn.Module) -> int:
        raise NotImplementedError

    def samplers(self, block: torch.nn.Module, name: str) -> list[tuple[str, torch.nn.Module]]:
        raise NotImplementedError


#: every capability, by name (for error messages and docs)
CAPABILITIES: dict[str, type] = {cls.__name__: cls for cls in (
    BlockStack, SplitBlocks, AttentionRoles, ModulatedInput, TokenGrid, BatchedArguments, TokenSparseForward,
    UNetSkipBranches)}

DESCRIPTIONS: dict[type, str] = {
    BlockStack: "a residual block stack",
    SplitBlocks: "blocks that split after self-attention",
    AttentionRoles: "attention modules by role",
    ModulatedInput: "the first block's modulated input",
    TokenGrid: "a token grid",
    BatchedArguments: "batched-CFG argument layout",
    TokenSparseForward: "a token-sparse forward",
    UNetSkipBranches: "U-Net skip branches",
}

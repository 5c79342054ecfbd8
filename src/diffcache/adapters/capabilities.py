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

from typing import Callable, Protocol

import torch

from .base import argument, parameter_names


def has_capability(adapter, capability: type) -> bool:
    """Whether an adapter (class or instance) declares ``capability`` (by subclassing it)."""
    cls = adapter if isinstance(adapter, type) else type(adapter)
    return capability in cls.__mro__


class BlockStack(Protocol):
    """The blocks form a residual stack: each maps its streams to updated streams of the same shapes (the video
    tokens, and for joint-attention models such as CogVideoX also the text tokens)."""

    #: whether the model's forward adds to the streams between two blocks, outside any block (WanVACE adds its
    #: control hints after given blocks). A cache of a run of blocks then keeps only the blocks' own updates, and
    #: on a reused step what the model adds between the blocks is added afresh, by the model itself.
    adds_between_blocks: bool = False

    def block_streams(self, block: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[torch.Tensor, ...]:
        """The streams a block's call updates, from its arguments."""
        return (argument(type(block).forward, args, kwargs, "hidden_states"),)

    def output_streams(self, output) -> tuple[torch.Tensor, ...]:
        """The updated streams, from a block's return value."""
        return output if isinstance(output, tuple) else (output,)

    def make_block_output(self, streams: tuple[torch.Tensor, ...]):
        """A block's return value made of ``streams`` (the inverse of :meth:`output_streams`)."""
        return streams if len(streams) > 1 else streams[0]

    def run_output_streams(self, model: torch.nn.Module, block: torch.nn.Module, outputs: tuple[torch.Tensor, ...],
                           run_input: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The streams ``outputs`` that ``block``, the last block of the stack, returned, as the output of the run of
        blocks that ``run_input`` entered (what a step-level cache subtracts ``run_input`` from): in ``run_input``'s
        token layout, and less what the model's forward adds between blocks by itself (it adds that again on a
        reused step, where the blocks pass their inputs through). By default ``outputs`` as they are: every block
        has one layout and nothing is added between blocks (Latte's alternating spatial/temporal blocks differ)."""
        return outputs


class SplitBlocks(Protocol):
    """A block's update splits at one module whose input is the block state after its self-attention residual
    was added: self-attention, then cross-attention + MLP (AdaCache caches the two parts).

    ``split_module`` returns ``None`` for a block without such a point (attention and MLP in parallel, as in
    HunyuanVideo's single-stream blocks): its whole update is then one part. A block whose streams have their own
    self-attention each (LTX-2: video and audio) returns one module per stream, in the order of
    :meth:`BlockStack.block_streams`; each module's :meth:`split_streams` then gives its own stream. A stream no
    split module sees (HunyuanVideo's text stream, normalised by its own ``norm2_context``; Mochi's text, updated
    after the video MLP) keeps its whole update as one part."""

    def split_module(self, block: torch.nn.Module) -> torch.nn.Module | tuple[torch.nn.Module, ...] | None:
        raise NotImplementedError

    def split_streams(self, split_module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[torch.Tensor, ...]:
        """The block state at the split point, from the split module's arguments."""
        return (args[0] if args else kwargs["hidden_states"],)


class AttentionRoles(Protocol):
    """A block's attention modules by role: ``"self"`` (over the video tokens, or joint over text and video),
    ``"cross"`` (to the text), ``"temporal"`` / ``"spatial"`` where a family separates them.

    A model with a second token stream names that stream's attentions ``"<role>.<stream>"`` (LTX-2's
    ``"self.audio"``, ``"cross.audio"``): a method that treats attentions by role reads the part before the dot
    (PAB), one that needs the video stream's own attention asks for the plain role (FasterCache's ``"self"``).
    Roles with no such meaning to a method (LTX-2's ``"audio_to_video"``) are left alone by it."""

    def attention_modules(self, block: torch.nn.Module) -> dict[str, torch.nn.Module]:
        raise NotImplementedError


class ModulatedInput(Protocol):
    """The cheap input TeaCache watches, read at the first block's call."""

    def modulated_input(self, block: torch.nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        """By default the timestep embedding the block is modulated with (``temb``: Wan's ``timestep_proj`` — the
        official TeaCache retention mode's ``e0`` — and CogVideoX's ``emb``, as the official TeaCache code reads
        them)."""
        return argument(type(block).forward, args, kwargs, "temb")


def adaln_single_modulated_input(block: torch.nn.Module, hidden: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
    """``norm1(x)·(1 + scale_msa) + shift_msa`` of a PixArt-style block (adaLN-single: the block's
    ``scale_shift_table`` plus the model's shared 6-way timestep embedding, as Latte's and Allegro's blocks compute
    it): the modulated input TeaCache reads in those families."""
    table = block.scale_shift_table[None] + embedding.reshape(hidden.shape[0], 6, -1)
    shift_msa, scale_msa = table.chunk(6, dim=1)[:2]
    return block.norm1(hidden) * (1 + scale_msa) + shift_msa


class TokenGrid(Protocol):
    """The token grid of a forward and the output's per-frame layout."""

    def token_layout(self, model: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[int, int, int]:
        """The token grid ``(frames, height, width)`` of a forward; tokens are ordered frame-major."""
        raise NotImplementedError

    def frame_major_tokens(self, block: torch.nn.Module, tokens: torch.Tensor, grid: tuple[int, int, int]
                           ) -> torch.Tensor:
        """A block's tokens (its residual) as ``[B, frames·height·width, D]``, frame-major, for a forward with token
        grid ``grid`` (MoReg's motion score compares frames). By default they already are."""
        return tokens

    def output_frames(self, model: torch.nn.Module, output: torch.Tensor, args: tuple, kwargs: dict
                      ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """The denoiser's output viewed as ``[..., H, W]`` (one 2-D map per batch item, frame and channel), and the
        function that puts such a view back into the output's layout. By default the output already ends in
        ``(H, W)`` (Wan ``[B, C, F, H, W]``, CogVideoX ``[B, F, C, H, W]``)."""
        return output, lambda view: view

    def output_stream_frames(self, model: torch.nn.Module, outputs: tuple[torch.Tensor, ...], args: tuple,
                             kwargs: dict) -> list:
        """One entry per output tensor of the denoiser (``outputs``, in the order its forward returns them): the
        ``(view, back)`` pair of :meth:`output_frames`, or ``None`` for an output with no 2-D maps (LTX-2's audio:
        FasterCache then rebuilds it from the plain difference). By default the denoiser has one output."""
        return [self.output_frames(model, outputs[0], args, kwargs)] + [None] * (len(outputs) - 1)


class BatchedArguments(Protocol):
    """Which forward arguments carry the batch (for cutting a batched-CFG forward ``[uncond, cond]`` to a half)."""

    #: the denoiser forward's arguments whose first dimension is the batch
    batched_arguments: tuple[str, ...] = ("hidden_states", "encoder_hidden_states", "timestep",
                                          "encoder_attention_mask", "encoder_hidden_states_image")

    def slice_batch(self, model: torch.nn.Module, args: tuple, kwargs: dict, keep: slice, batch: int
                    ) -> tuple[tuple, dict]:
        """The forward's batched arguments cut to the ``keep`` part of a ``batch``-row batch (the others are
        passed unchanged)."""
        names = parameter_names(type(model).forward)
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

    def check_sparse_call(self, model: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Refuse (:class:`~diffcache.errors.CallRefusedError`) a call whose forward the token-sparse forward does
        not reproduce; HSA asks at the first forward of each call, before any work. By default every call fits."""

    #: how many of :meth:`self_attention_modules` belong to one block (HSA counts a block at the first of them):
    #: 1 for Wan, 2 for LTX-2 (video self-attention and the video-to-audio attention, whose keys are video tokens)
    kv_layers_per_block: int = 1

    def synced_self_attention(self, attn, hidden_states, rotary_emb, kv: dict | None, active: torch.Tensor | None):
        """Self-attention of ``hidden_states`` through the K/V cache ``kv`` (``active``: token indices, or ``None``
        for every token)."""
        raise NotImplementedError

    #: the name of the rotary embedding among the layer's forward arguments (Wan: rotary_emb; LTX: image_rotary_emb)
    ROTARY_ARGUMENT = "rotary_emb"

    def synced_attention_call(self, attn, args: tuple, kwargs: dict, kv: dict | None, active: torch.Tensor | None):
        """A call of a hooked layer (one of :meth:`self_attention_modules`) during HSA's forward: its output
        through the K/V cache, or ``None`` for a call the cache does not serve (the layer's own forward then
        runs). By default the layer's forward is ``(hidden_states, encoder_hidden_states, attention_mask,
        rotary_emb)`` (Wan) and only a call without ``encoder_hidden_states`` and ``attention_mask`` is served,
        by :meth:`synced_self_attention`."""
        forward = type(attn).forward
        if (argument(forward, args, kwargs, "encoder_hidden_states") is not None
                or argument(forward, args, kwargs, "attention_mask") is not None):
            return None
        return self.synced_self_attention(attn, argument(forward, args, kwargs, "hidden_states"),
                                          argument(forward, args, kwargs, self.ROTARY_ARGUMENT), kv, active)

    def sparse_forward(self, model: torch.nn.Module, args: tuple, kwargs: dict, active: torch.Tensor
                       ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The forward for the tokens ``active`` (``[B, n]``) only, returning their outputs as tokens; a model with
        further outputs computed in full (LTX-2's audio) returns ``(tokens, *those outputs)``."""
        raise NotImplementedError

    def sparse_output(self, model: torch.nn.Module, velocity: torch.Tensor, extra: tuple, return_dict: bool):
        """The denoiser's return value made of the assembled ``velocity`` and the ``extra`` outputs of
        :meth:`sparse_forward`, as its forward returns it (``return_dict``)."""
        if return_dict:
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            return Transformer2DModelOutput(sample=velocity)
        return (velocity, *extra)


def sync_kv(kv: dict | None, key: torch.Tensor, value: torch.Tensor, active: torch.Tensor | None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """HSA's K/V-cache synchronisation for one attention layer: the keys and values ``[B, N|n, heads, head_dim]``
    to attend to. With ``active`` ``None`` (every token computed) they are the fresh ones, kept in ``kv`` (unless it
    is ``None``: no sparse step follows); otherwise the fresh ones of the tokens ``active`` (``[B, n]``) overwrite
    their slots of the cache in place, and the whole cache of ``N`` tokens is returned."""
    if active is None:
        if kv is not None:
            kv["key"], kv["value"] = key, value
        return key, value
    if not kv or kv["key"].shape[0] != key.shape[0]:
        raise RuntimeError("HSA: a token-sparse step came before any full step of this branch")
    index = active[:, :, None, None].expand(-1, -1, *key.shape[2:])
    kv["key"].scatter_(1, index, key)  # the cache is ours alone: overwrite the active slots in place
    kv["value"].scatter_(1, index, value)
    return kv["key"], kv["value"]


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


def heads_qkv(attn, hidden_states: torch.Tensor, added: bool = False):
    """Queries, keys and values of ``hidden_states`` split into heads (``[B, N, heads, head_dim]``), with the
    layer's query/key norms applied, as diffusers' joint-attention processors compute them: through ``to_q`` /
    ``to_k`` / ``to_v`` and ``norm_q`` / ``norm_k``, or (``added``) the text stream's ``add_q_proj`` /
    ``add_k_proj`` / ``add_v_proj`` and ``norm_added_q`` / ``norm_added_k``."""
    names = (("add_q_proj", "add_k_proj", "add_v_proj", "norm_added_q", "norm_added_k") if added
             else ("to_q", "to_k", "to_v", "norm_q", "norm_k"))
    query, key, value = (getattr(attn, name)(hidden_states).unflatten(2, (attn.heads, -1)) for name in names[:3])
    norm_q, norm_k = getattr(attn, names[3], None), getattr(attn, names[4], None)
    if norm_q is not None:
        query = norm_q(query)
    if norm_k is not None:
        key = norm_k(key)
    return query, key, value

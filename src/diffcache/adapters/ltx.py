"""LTX-Video (``LTXVideoTransformer3DModel``): tokens arrive packed ``[B, F·H·W, C]``, frame-major.

Block: ``x += attn1(norm1 x)·gate``; ``x += attn2(x, text)``; ``x += ff(norm2 x)·gate``. The input of ``attn2`` is
the state after self-attention. The grid comes from the forward's ``num_frames``, ``height``, ``width``
(``LTXPipeline``), or, where the forward gets ``video_coords`` instead (``LTXConditionPipeline``), from those
coordinates (:func:`grid_from_coords`): there the sequence may begin with conditioning tokens (a conditioning image
or video placed at a later frame is prepended as whole latent frames of the same height and width), and these
count as frames of the grid, in sequence order.

**Token-sparse forward** (HSA, arXiv:2605.06892): :meth:`LTXVideoAdapter.sparse_forward` mirrors
``LTXVideoTransformer3DModel.forward`` (diffusers 0.42.1, ``models/transformers/transformer_ltx.py``) with the
inactive tokens gathered out. The RoPE is computed for the whole sequence exactly as the forward computes it (from
``num_frames``/``height``/``width`` with ``rope_interpolation_scale``, or from ``video_coords``) and taken at the
active tokens; ``proj_in`` and the timestep modulation run on the active tokens (with their own timesteps where
these are per token: ``LTXImageToVideoPipeline`` and ``LTXConditionPipeline`` give the conditioning tokens timestep
0, or less than the others); in every block the self-attention (``attn1``) computes Q, K, V of the active tokens,
their K/V overwrite their slots in the layer's K/V cache of all ``N`` tokens and their queries attend to all of them;
the text cross-attention (``attn2``), the feed-forward and the output projection run on the active tokens. With
every token active it is the model's forward (tests/adapters/test_ltx_hsa.py checks it to float tolerance).
Supported: diffusers' ``LTXVideoAttnProcessor`` in the self-attentions; refused: any other processor there, and
context parallelism.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_ltx import apply_rotary_emb

from ..errors import UnsupportedModelError
from ..memory import Shapes, heads_width, register_shapes
from .base import Adapter, argument, lora_scaled, register_adapter
from .capabilities import (AttentionRoles, BatchedArguments, BlockStack, ModulatedInput, SplitBlocks, TokenGrid,
                           TokenSparseForward, sync_kv)

_PROCESSOR = "LTXVideoAttnProcessor"


@register_adapter
class LTXVideoAdapter(Adapter, BlockStack, SplitBlocks, AttentionRoles, ModulatedInput, TokenGrid, BatchedArguments,
                      TokenSparseForward):
    family = "LTX-Video"
    model_classes = ("LTXVideoTransformer3DModel",)
    examples = "LTX-Video 0.9.x"
    batched_arguments = (*BatchedArguments.batched_arguments, "video_coords")

    def attention_modules(self, block):
        return {"self": block.attn1, "cross": block.attn2}

    def split_module(self, block):
        return block.attn2

    def modulated_input(self, block, args, kwargs):
        """The official TeaCache4LTX-Video signal: block 0's ``norm1(x) * (1 + scale_msa) + shift_msa``."""
        forward = type(block).forward
        hidden = argument(forward, args, kwargs, "hidden_states")
        temb = argument(forward, args, kwargs, "temb")
        table = block.scale_shift_table
        ada = table[None, None].to(temb.device) + temb.reshape(hidden.size(0), temb.size(1), table.shape[0], -1)
        shift_msa, scale_msa = ada[:, :, 0], ada[:, :, 1]
        return block.norm1(hidden) * (1 + scale_msa) + shift_msa

    def output_frames(self, model, output, args, kwargs):
        """Packed ``[B, F·H·W, C]`` → ``[B, F, C, H, W]``, and back."""
        frames, height, width = self.token_layout(model, args, kwargs)
        batch, _, channels = output.shape
        view = output.reshape(batch, frames, height, width, channels).permute(0, 1, 4, 2, 3)
        return view, lambda v: v.permute(0, 1, 3, 4, 2).reshape(batch, frames * height * width, channels)

    def token_layout(self, model, args, kwargs):
        forward = type(model).forward
        frames = argument(forward, args, kwargs, "num_frames")
        height = argument(forward, args, kwargs, "height")
        width = argument(forward, args, kwargs, "width")
        if None not in (frames, height, width):
            return frames, height, width  # the token grid: LTX's RoPE uses these directly
        coords = argument(forward, args, kwargs, "video_coords")
        if coords is None:
            raise UnsupportedModelError(
                "this LTX-Video forward gives neither num_frames/height/width nor video_coords, so diffcache cannot "
                "tell its token grid (needed by MoReg and FasterCache); pass num_frames, height and width.")
        return grid_from_coords(coords)

    # -- token-sparse forward (HSA) ----------------------------------------------------------------------------
    def output_tokens(self, model, output):
        """The velocity is already tokens ``[B, N, C]`` in the model's order."""
        return output

    def tokens_to_output(self, model, tokens, grid):
        return tokens

    def self_attention_modules(self, model):
        return [block.attn1 for block in model.transformer_blocks]

    def check_sparse_attention(self, modules):
        """The synchronised attention re-implements diffusers' ``LTXVideoAttnProcessor``; refuse anything else (a
        custom processor, context parallelism) rather than silently drop it."""
        for module in modules:
            processor = module.processor
            parallel = getattr(processor, "_parallel_config", None)
            if type(processor).__name__ != _PROCESSOR or parallel is not None:
                raise UnsupportedModelError(
                    f"HSA's synchronised attention replaces diffusers' {_PROCESSOR}, but an LTX-Video self-attention "
                    f"layer uses {type(processor).__name__}" + (" with context parallelism" if parallel else "")
                    + f"; restore the default processor (model.set_attn_processor({_PROCESSOR}())) to use HSA.")

    ROTARY_ARGUMENT = "image_rotary_emb"  #: LTXAttention.forward(hidden_states, encoder_hidden_states, mask, this)

    def synced_self_attention(self, attn, hidden_states, rotary_emb, kv, active):
        """Self-attention with a K/V cache of the whole sequence: the operations of diffusers'
        ``LTXVideoAttnProcessor`` (Q/K RMS-normed across heads, then rotated by ``rotary_emb`` = ``(cos, sin)`` at
        the tokens of ``hidden_states``). ``active`` ``None``: every token, and their K/V are stored in ``kv``
        (unless ``kv`` is ``None``: no sparse step follows); else the token indices ``[B, n]`` of
        ``hidden_states``: their fresh K/V overwrite their slots and their queries attend to all ``N``."""
        query = attn.norm_q(attn.to_q(hidden_states))
        key = attn.norm_k(attn.to_k(hidden_states))
        value = attn.to_v(hidden_states)
        if rotary_emb is not None:
            query = apply_rotary_emb(query, rotary_emb)
            key = apply_rotary_emb(key, rotary_emb)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        key, value = sync_kv(kv, key, value, active)
        out = dispatch_attention_fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                    backend=getattr(attn.processor, "_attention_backend", None), parallel_config=None)
        out = out.flatten(2, 3).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))

    def sparse_forward(self, model, args, kwargs, active):
        """``LTXVideoTransformer3DModel.forward`` for the tokens ``active`` (``[B, n]`` indices into the ``N``
        tokens) only; returns their velocities ``[B, n, C]``. The LoRA scale in ``attention_kwargs`` is applied as
        the forward's ``@apply_lora_scale`` decorator does."""
        forward = type(model).forward
        values = {name: argument(forward, args, kwargs, name) for name in (
            "hidden_states", "encoder_hidden_states", "timestep", "encoder_attention_mask", "num_frames", "height",
            "width", "rope_interpolation_scale", "video_coords")}
        with lora_scaled(model, argument(forward, args, kwargs, "attention_kwargs")):
            return _sparse_forward(model, active=active, **values)


def _sparse_forward(model, hidden_states, encoder_hidden_states, timestep, encoder_attention_mask, num_frames,
                    height, width, rope_interpolation_scale, video_coords, active):
    """The body of ``LTXVideoTransformer3DModel.forward`` with the inactive tokens gathered out."""
    tokens = hidden_states.shape[1]
    cos, sin = model.rope(hidden_states, num_frames, height, width, rope_interpolation_scale, video_coords)
    rotary = (_gather(cos, active), _gather(sin, active))  # the RoPE at the active tokens' coordinates

    if encoder_attention_mask is not None and encoder_attention_mask.ndim == 2:
        encoder_attention_mask = (1 - encoder_attention_mask.to(hidden_states.dtype)) * -10000.0
        encoder_attention_mask = encoder_attention_mask.unsqueeze(1)

    batch_size = hidden_states.size(0)
    hidden_states = model.proj_in(_gather(hidden_states, active))

    if timestep.ndim == 2 and timestep.shape[1] == tokens:  # per-token timesteps (conditioning tokens: lower)
        timestep = timestep.gather(1, active)
    temb, embedded_timestep = model.time_embed(timestep.flatten(), batch_size=batch_size,
                                               hidden_dtype=hidden_states.dtype)
    temb = temb.view(batch_size, -1, temb.size(-1))
    embedded_timestep = embedded_timestep.view(batch_size, -1, embedded_timestep.size(-1))

    encoder_hidden_states = model.caption_projection(encoder_hidden_states)
    encoder_hidden_states = encoder_hidden_states.view(batch_size, -1, hidden_states.size(-1))

    for block in model.transformer_blocks:
        if torch.is_grad_enabled() and model.gradient_checkpointing:
            hidden_states = model._gradient_checkpointing_func(block, hidden_states, encoder_hidden_states, temb,
                                                               rotary, encoder_attention_mask)
        else:
            hidden_states = block(hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states, temb=temb,
                                  image_rotary_emb=rotary, encoder_attention_mask=encoder_attention_mask)

    scale_shift_values = model.scale_shift_table[None, None] + embedded_timestep[:, :, None]
    shift, scale = scale_shift_values[:, :, 0], scale_shift_values[:, :, 1]
    hidden_states = model.norm_out(hidden_states)
    hidden_states = hidden_states * (1 + scale) + shift
    return model.proj_out(hidden_states)


def _gather(tensor: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """``tensor`` ``[B, N, D]`` at the token indices ``active`` (``[B, n]``)."""
    return tensor.gather(1, active[:, :, None].expand(-1, -1, tensor.shape[-1]))


def grid_from_coords(coords: torch.Tensor) -> tuple[int, int, int]:
    """The token grid ``(frames, height, width)`` of a packed, frame-major sequence from its RoPE coordinates
    ``[B, 3, N]`` (LTX-Video's ``video_coords``) or ``[B, 3, N, 2]`` (LTX-2's ``[start, end)`` patch bounds; the
    starts are read), axis 1 being (frame, row, column) in any units. ``height`` and ``width`` are the numbers of
    distinct rows and columns; every run of ``height·width`` tokens must be one frame laid out row-major (the same
    time, every row and column in ascending order), as LTX's pipelines build them, conditioning tokens included.
    Anything else (tokens dropped or reordered) has no grid, and is refused."""
    if coords.ndim == 4:
        coords = coords[..., 0]
    if coords.ndim != 3 or coords.shape[1] != 3:
        raise UnsupportedModelError(f"video_coords of shape {tuple(coords.shape)} are not [B, 3, N] (or [B, 3, N, 2]) "
                                    "token coordinates; diffcache cannot tell the token grid from them.")
    time, rows, cols = coords[0, 0], coords[0, 1], coords[0, 2]
    row_values, col_values = torch.unique(rows), torch.unique(cols)
    height, width = row_values.numel(), col_values.numel()
    per_frame = height * width
    tokens = coords.shape[2]
    frames = tokens // per_frame
    grid = (tokens % per_frame == 0
            and torch.equal(rows.view(frames, per_frame), row_values.repeat_interleave(width).expand(frames, -1))
            and torch.equal(cols.view(frames, per_frame), col_values.repeat(height).expand(frames, -1))
            and torch.equal(time.view(frames, per_frame), time.view(frames, per_frame)[:, :1].expand(-1, per_frame)))
    if not grid:
        raise UnsupportedModelError(
            f"the {tokens} video_coords of this forward do not form whole frames of a {height}x{width} token grid in "
            "frame-major, row-major order, so the token-grid methods (MoReg, FasterCache's CFG-Cache) cannot lay "
            "them out as frames; LTX's own pipelines build such coordinates.")
    return frames, height, width


@register_shapes("LTX-Video", vae_spatial=32, vae_temporal=8, text_tokens=128, cfg="batched")
def ltx_shapes(config: dict, latent: tuple[int, int, int], text_tokens: int) -> Shapes:
    """Cache shapes (:mod:`diffcache.memory`): one video stream of ``N`` packed tokens × ``heads·head_dim``; each
    block's self- and cross-attention output ``N × width``; TeaCache's signal, block 0's modulated input
    ``N × width``."""
    frames, height, width = latent
    p, pt = config.get("patch_size", 1), config.get("patch_size_t", 1)
    tokens, dim = (frames // pt) * (height // p) * (width // p), heads_width(config)
    return Shapes("LTX-Video", tokens, dim, streams=(tokens * dim,),
                  attention=tuple({"self": tokens * dim, "cross": tokens * dim} for _ in range(config["num_layers"])),
                  kv=(tokens * dim,) * config["num_layers"], signal=tokens * dim,
                  output=config.get("out_channels", 128) * frames * height * width)

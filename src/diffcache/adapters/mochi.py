"""Mochi 1 (``MochiTransformer3DModel``, diffusers ``transformer_mochi.py``; Genmo, github.com/genmoai/mochi):
dual-stream blocks with one joint attention over video and text.

Block (``MochiTransformerBlock``): ``x' = norm1(x, temb)`` and ``e' = norm1_context(e, temb)``;
``(a, a_e) = attn1(x', e')`` (one attention over both streams, per-sample text masks); then, in this order,
``x += norm2(a)·tanh(gate)``, ``x += norm4(ff(norm3 x))·tanh(gate)``, and (not in the last block)
``e += norm2_context(a_e)·…``, ``e += norm4_context(ff_context(norm3_context e))·…``. Both streams are updated
residually, so a block cache keeps both. The last block has ``context_pre_only``: it reads the text but returns
it unchanged (its residual is zero).

Split point (AdaCache): ``norm3``, whose input is the video stream after its attention residual. The text stream is
updated only after the video MLP, so no module sees both streams after attention: AdaCache caches the text update
of a block as one part (it only ever reuses a block's two parts together, and its metric reads the video stream).

Tokens: latents ``[B, C, F, H, W]`` are patchified per frame by ``patch_size`` into frame-major tokens
``[B, F·(H/p)·(W/p), D]``; the output is ``[B, C, F, H, W]``. MochiPipeline runs CFG batched ``[uncond, cond]``.

TeaCache signal (``modulated_input``): as the official TeaCache4Mochi (github.com/ali-vilab/TeaCache,
``TeaCache4Mochi/teacache_mochi.py``: ``self.transformer_blocks[0].norm1(inp, temb_)[0]``): block 0's
``norm1(x, temb)``, the RMS-normed video tokens scaled by ``1 + scale_msa``.

Token-sparse forward (HSA, arXiv:2605.06892) over the *video* tokens; the text tokens (at most 256) are always
all computed. ``sparse_forward`` mirrors ``MochiTransformer3DModel.forward`` with the inactive video tokens
gathered out: the timestep/caption embedding and the patch embedding (one convolution per frame) run in full, then
the active tokens are gathered from the patch tokens and from Mochi's RoPE table (each keeps its own position), and
every block runs as it is on the active video tokens and all text tokens — its video modulation, norms and MLP on
the active tokens only, its text path in full (the last block's ``context_pre_only`` included). Its joint attention
(``attn1``) is served through a K/V cache of the video tokens (``synced_attention_call``), the operations of
``MochiAttnProcessor2_0``: the queries are the active video tokens and the sample's valid text tokens, the
keys/values all ``N`` cached video tokens (the active ones' fresh, post-RoPE keys overwrite their slots) and the
valid text tokens' fresh ones, per sample, with the text outputs packed after the video outputs and zero-padded to
the text length as the processor does. ``norm_out`` and ``proj_out`` then run on the active tokens; their outputs
are tokens in the unpatchify order of the forward (``output_tokens``). With every video token active this is the
model's forward (tests/adapters/test_mochi_hsa.py checks it to float tolerance). Refused: any attention processor
but ``MochiAttnProcessor2_0``, and context parallelism.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UnsupportedModelError
from ..memory import Shapes, heads_width, register_shapes
from .base import Adapter, argument, lora_scaled, register_adapter
from .capabilities import (AttentionRoles, BatchedArguments, BlockStack, ModulatedInput, SplitBlocks, TokenGrid,
                           TokenSparseForward, heads_qkv, sync_kv)


@register_adapter
class MochiAdapter(Adapter, BlockStack, SplitBlocks, AttentionRoles, ModulatedInput, TokenGrid, BatchedArguments,
                   TokenSparseForward):
    family = "Mochi"
    model_classes = ("MochiTransformer3DModel",)
    examples = "Mochi 1 preview (genmo/mochi-1-preview)"

    def block_streams(self, block, args, kwargs):
        forward = type(block).forward
        return (argument(forward, args, kwargs, "hidden_states"),
                argument(forward, args, kwargs, "encoder_hidden_states"))

    def attention_modules(self, block):
        return {"self": block.attn1}  # joint attention over video and text

    def split_module(self, block):
        return block.norm3

    def split_streams(self, split_module, args, kwargs):
        """The video stream after self-attention (``norm3``'s input); the text stream has no split point here."""
        return (argument(type(split_module).forward, args, kwargs, "hidden_states"),)

    def modulated_input(self, block, args, kwargs):
        """The official TeaCache4Mochi signal: block 0's ``norm1(hidden_states, temb)[0]``."""
        forward = type(block).forward
        hidden = argument(forward, args, kwargs, "hidden_states")
        temb = argument(forward, args, kwargs, "temb")
        return block.norm1(hidden, temb)[0]

    def token_layout(self, model, args, kwargs):
        latents = argument(type(model).forward, args, kwargs, "hidden_states")
        _, _, frames, height, width = latents.shape
        p = model.config.patch_size
        return frames, height // p, width // p

    # -- token-sparse forward (HSA) ----------------------------------------------------------------------------
    def output_tokens(self, model, output: torch.Tensor) -> torch.Tensor:
        """The output ``[B, C, F, H, W]`` as tokens ``[B, F·(H/p)·(W/p), p·p·C]`` in the order of the forward's
        ``proj_out`` (its unpatchify: ``reshape(B, F, h, w, p, p, C).permute(0, 6, 1, 2, 4, 3, 5)``)."""
        p = model.config.patch_size
        b, c, f, h, w = output.shape
        x = output.reshape(b, c, f, h // p, p, w // p, p)
        return x.permute(0, 2, 3, 5, 4, 6, 1).reshape(b, f * (h // p) * (w // p), p * p * c)

    def tokens_to_output(self, model, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """The unpatchify of ``MochiTransformer3DModel.forward`` (inverse of :meth:`output_tokens`)."""
        p = model.config.patch_size
        f, h, w = grid
        x = tokens.reshape(tokens.shape[0], f, h, w, p, p, -1).permute(0, 6, 1, 2, 4, 3, 5)
        return x.reshape(tokens.shape[0], -1, f, h * p, w * p)

    def self_attention_modules(self, model) -> list[torch.nn.Module]:
        """Every block's joint attention (its keys/values: the video tokens, cached, and the text tokens)."""
        return [block.attn1 for block in model.transformer_blocks]

    def check_sparse_attention(self, modules) -> None:
        """The synchronised attention re-implements diffusers' ``MochiAttnProcessor2_0``; refuse anything else (a
        custom processor, context parallelism) rather than silently drop it."""
        for module in modules:
            processor = module.processor
            parallel = getattr(processor, "_parallel_config", None)
            if type(processor).__name__ != "MochiAttnProcessor2_0" or parallel is not None:
                raise UnsupportedModelError(
                    f"HSA's synchronised attention replaces diffusers' MochiAttnProcessor2_0, but a Mochi joint "
                    f"attention layer uses {type(processor).__name__}"
                    + (" with context parallelism" if parallel is not None else "")
                    + "; restore the default processor (model.set_attn_processor(MochiAttnProcessor2_0())) to use "
                    "HSA.")

    def check_sparse_call(self, model, args, kwargs) -> None:
        if getattr(model, "_parallel_config", None) is not None:
            raise UnsupportedModelError("HSA on Mochi does not support context parallelism: its token-sparse "
                                        "forward gathers tokens the parallel plan would have split; run the model "
                                        "without enable_parallelism().")

    def synced_attention_call(self, attn, args, kwargs, kv, active):
        """A call of a block's ``attn1`` (``hidden_states`` = video, ``encoder_hidden_states`` = text,
        ``attention_mask`` = the text mask, ``image_rotary_emb``): :func:`_synced_joint_attention`."""
        forward = type(attn).forward
        return _synced_joint_attention(
            attn, argument(forward, args, kwargs, "hidden_states"),
            argument(forward, args, kwargs, "encoder_hidden_states"),
            argument(forward, args, kwargs, "attention_mask"), kwargs.get("image_rotary_emb"), kv, active)

    def sparse_forward(self, model, args: tuple, kwargs: dict, active: torch.Tensor) -> torch.Tensor:
        """``MochiTransformer3DModel.forward`` for the video tokens ``active`` (``[B, n]``) only; returns their
        outputs as tokens ``[B, n, p·p·C]`` (the layout of :meth:`output_tokens`)."""
        forward = type(model).forward
        hidden_states = argument(forward, args, kwargs, "hidden_states")
        encoder_hidden_states = argument(forward, args, kwargs, "encoder_hidden_states")
        timestep = argument(forward, args, kwargs, "timestep")
        encoder_attention_mask = argument(forward, args, kwargs, "encoder_attention_mask")
        with lora_scaled(model, argument(forward, args, kwargs, "attention_kwargs")):
            return _sparse_forward(model, hidden_states, encoder_hidden_states, timestep, encoder_attention_mask,
                                   active)


def _sparse_forward(model, hidden_states, encoder_hidden_states, timestep, encoder_attention_mask, active):
    """The body of ``MochiTransformer3DModel.forward`` with the inactive video tokens gathered out."""
    batch_size, _, num_frames, height, width = hidden_states.shape
    p = model.config.patch_size
    temb, encoder_hidden_states = model.time_embed(timestep, encoder_hidden_states, encoder_attention_mask,
                                                   hidden_dtype=hidden_states.dtype)
    tokens = model.patch_embed(hidden_states.permute(0, 2, 1, 3, 4).flatten(0, 1))
    tokens = tokens.unflatten(0, (batch_size, -1)).flatten(1, 2)
    tokens = tokens.gather(1, active[:, :, None].expand(-1, -1, tokens.shape[-1])).contiguous()
    rotary = model.rope(model.pos_frequencies, num_frames, height // p, width // p, device=tokens.device,
                        dtype=torch.float32)
    rotary = tuple(r[active] for r in rotary)  # [N, heads, head_dim/2] -> [B, n, heads, head_dim/2]
    for block in model.transformer_blocks:
        tokens, encoder_hidden_states = block(hidden_states=tokens, encoder_hidden_states=encoder_hidden_states,
                                              temb=temb, encoder_attention_mask=encoder_attention_mask,
                                              image_rotary_emb=rotary)
    return model.proj_out(model.norm_out(tokens, temb))


def _apply_rotary(x, freqs_cos, freqs_sin):
    """Mochi's rotary embedding on interleaved pairs, as ``MochiAttnProcessor2_0`` applies it."""
    x_even = x[..., 0::2].float()
    x_odd = x[..., 1::2].float()
    cos = (x_even * freqs_cos - x_odd * freqs_sin).to(x.dtype)
    sin = (x_even * freqs_sin + x_odd * freqs_cos).to(x.dtype)
    return torch.stack([cos, sin], dim=-1).flatten(-2)


def _synced_joint_attention(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, kv,
                            active):
    """``MochiAttnProcessor2_0`` with the video keys/values through the K/V cache ``kv``.

    ``active`` ``None``: every video token is in ``hidden_states``; the operations are the processor's, and the
    video keys (after ``norm_k`` and RoPE) and values are stored in ``kv`` (unless it is ``None``: no sparse step
    follows). Otherwise ``hidden_states`` holds the video tokens ``active`` (``[B, n]``, with ``image_rotary_emb``
    gathered at their positions): their fresh keys/values overwrite their slots in ``kv`` and, per sample, the
    queries of the active video tokens and of the valid text tokens attend to all ``N`` cached video keys/values and
    the valid text tokens' own. Returns ``(video output [B, n, D], text output [B, S, D_text])``."""
    query, key, value = heads_qkv(attn, hidden_states)

    encoder_query, encoder_key, encoder_value = heads_qkv(attn, encoder_hidden_states, added=True)

    if image_rotary_emb is not None:
        query = _apply_rotary(query, *image_rotary_emb)
        key = _apply_rotary(key, *image_rotary_emb)

    key, value = sync_kv(kv, key, value, active)

    query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    encoder_query, encoder_key, encoder_value = (encoder_query.transpose(1, 2), encoder_key.transpose(1, 2),
                                                 encoder_value.transpose(1, 2))
    sequence_length = query.size(2)  # the video queries: all N tokens, or the n active ones
    encoder_sequence_length = encoder_query.size(2)
    total_length = sequence_length + encoder_sequence_length
    outputs = []
    for idx in range(query.shape[0]):  # per sample: only its valid text tokens take part
        valid = torch.nonzero(attention_mask[idx][None, :].flatten(), as_tuple=False).flatten()
        valid_query = torch.cat([query[idx:idx + 1], encoder_query[idx:idx + 1, :, valid, :]], dim=2)
        valid_key = torch.cat([key[idx:idx + 1], encoder_key[idx:idx + 1, :, valid, :]], dim=2)
        valid_value = torch.cat([value[idx:idx + 1], encoder_value[idx:idx + 1, :, valid, :]], dim=2)
        out = F.scaled_dot_product_attention(valid_query, valid_key, valid_value, dropout_p=0.0, is_causal=False)
        outputs.append(F.pad(out, (0, 0, 0, total_length - out.size(2))))
    hidden_states = torch.cat(outputs, dim=0).transpose(1, 2).flatten(2, 3)
    hidden_states, encoder_hidden_states = hidden_states.split_with_sizes(
        (sequence_length, encoder_sequence_length), dim=1)
    hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
    if hasattr(attn, "to_add_out"):
        encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
    return hidden_states, encoder_hidden_states


@register_shapes("Mochi", vae_spatial=8, vae_temporal=6, text_tokens=256, cfg="batched")
def mochi_shapes(config: dict, latent: tuple[int, int, int], text_tokens: int) -> Shapes:
    """Cache shapes (:mod:`diffcache.memory`): two streams, video (``N`` tokens × ``heads·head_dim``) and text
    (``max_sequence_length`` tokens × ``pooled_projection_dim``). Each block's joint attention returns a video and a
    text output of their own, except the last (``context_pre_only``), whose text output is a view of the joint
    ``(N + text) × width`` one (its own part: ``text × width``). TeaCache's signal: block 0's ``norm1`` of the video tokens."""
    frames, height, width = latent
    p = config["patch_size"]
    tokens, dim = frames * (height // p) * (width // p), heads_width(config)
    text, context = config.get("max_sequence_length", text_tokens), config.get("pooled_projection_dim", 1536)
    layers = config["num_layers"]
    attention = ({"self": tokens * dim + text * context},) * (layers - 1) + ({"self": tokens * dim + (tokens + text) * dim},)
    own = ({"self": tokens * dim + text * context},) * (layers - 1) + ({"self": (tokens + text) * dim},)
    return Shapes("Mochi", tokens, dim, streams=(tokens * dim, text * context), attention=attention, own_attention=own,
                  kv=(tokens * dim,) * layers, signal=tokens * dim,
                  output=(config.get("out_channels") or config["in_channels"]) * frames * height * width)

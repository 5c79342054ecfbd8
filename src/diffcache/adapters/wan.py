"""Wan 2.1 / 2.2 (``WanTransformer3DModel``) and the embedded tiny-shapes-t2v model, which uses the same class.

Block: ``x += attn1(norm1 x)·gate``; ``x += attn2(norm2 x, text)``; ``x += ffn(norm3 x)·gate``. The input of
``norm2`` is the state after self-attention. Latents ``[B, C, F, H, W]`` are patchified by ``patch_size``
``(pt, ph, pw)`` into frame-major tokens.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import _get_qkv_projections

from ..errors import UnsupportedModelError
from ..memory import Shapes, heads_width, register_shapes
from .base import Adapter, argument, lora_scaled, register_adapter
from .capabilities import (AttentionRoles, BatchedArguments, BlockStack, ModulatedInput, SplitBlocks, TokenGrid,
                           TokenSparseForward, sync_kv)


@register_adapter
class WanAdapter(Adapter, BlockStack, SplitBlocks, AttentionRoles, ModulatedInput, TokenGrid, BatchedArguments,
                 TokenSparseForward):
    family = "Wan"
    model_classes = ("WanTransformer3DModel",)
    examples = "Wan2.1-T2V-1.3B/14B, Wan2.2, tiny-shapes-t2v"

    def blocks(self, model):
        return list(model.blocks)

    def attention_modules(self, block):
        return {"self": block.attn1, "cross": block.attn2}

    def split_module(self, block):
        return block.norm2

    def token_layout(self, model, args, kwargs):
        latents = argument(type(model).forward, args, kwargs, "hidden_states")
        pt, ph, pw = model.config.patch_size
        _, _, frames, height, width = latents.shape
        return frames // pt, height // ph, width // pw

    # -- token-sparse forward (HSA) ----------------------------------------------------------------------------
    def output_tokens(self, model, output: torch.Tensor) -> torch.Tensor:
        """The denoiser output ``[B, C, F, H, W]`` as tokens ``[B, N, pt·ph·pw·C]``, in the order of the model's
        own unpatchify (token = one latent patch, frame-major)."""
        pt, ph, pw = model.config.patch_size
        b, c, f, h, w = output.shape
        x = output.reshape(b, c, f // pt, pt, h // ph, ph, w // pw, pw)
        return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, (f // pt) * (h // ph) * (w // pw), pt * ph * pw * c)

    def tokens_to_output(self, model, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Inverse of :meth:`output_tokens` (the unpatchify of ``WanTransformer3DModel.forward``)."""
        pt, ph, pw = model.config.patch_size
        f, h, w = grid
        x = tokens.reshape(tokens.shape[0], f, h, w, pt, ph, pw, -1)
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def self_attention_modules(self, model) -> list[torch.nn.Module]:
        return [block.attn1 for block in model.blocks]

    def check_sparse_attention(self, modules) -> None:
        """The synchronised attention re-implements diffusers' ``WanAttnProcessor``; refuse anything else (a custom
        processor, context parallelism) rather than silently drop it."""
        for module in modules:
            processor = module.processor
            if type(processor).__name__ != "WanAttnProcessor" or getattr(processor, "_parallel_config", None):
                raise UnsupportedModelError(
                    f"HSA's synchronised attention replaces diffusers' WanAttnProcessor, but a self-attention layer "
                    f"uses {type(processor).__name__}"
                    + (" with context parallelism" if getattr(processor, "_parallel_config", None) else "")
                    + "; restore the default processor (model.set_attn_processor(WanAttnProcessor())) to use HSA."
                )

    def synced_self_attention(self, attn, hidden_states, rotary_emb, kv: dict, active: torch.Tensor | None):
        """Self-attention with a K/V cache of the whole sequence (HSA's K/V-cache synchronisation).

        ``active`` is ``None`` (every token: computed exactly as diffusers' ``WanAttnProcessor``, and the K/V of
        all tokens stored in ``kv``) or the token indices ``[B, n]`` of the tokens in ``hidden_states``
        (``[B, n, D]``, with ``rotary_emb`` already gathered at those positions): their fresh K/V overwrite their
        slots in ``kv`` and their queries attend to all ``N`` cached keys and values.
        """
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = _apply_rotary(query, *rotary_emb)
            key = _apply_rotary(key, *rotary_emb)
        key, value = sync_kv(kv, key, value, active)
        processor = attn.processor
        out = dispatch_attention_fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                    backend=getattr(processor, "_attention_backend", None), parallel_config=None)
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))

    def sparse_forward(self, model, args: tuple, kwargs: dict, active: torch.Tensor) -> torch.Tensor:
        """The transformer's forward for the tokens ``active`` (``[B, n]`` indices into the ``N`` tokens) only:
        patch embedding, the timestep modulation, every block (its self-attention through the K/V cache, its
        cross-attention and MLP on the ``n`` tokens) and the output projection. Returns their outputs as tokens
        ``[B, n, pt·ph·pw·C]`` (the layout of :meth:`output_tokens`). Mirrors ``WanTransformer3DModel.forward``
        with the inactive tokens gathered out, so compute shrinks with ``n / N``."""
        forward = type(model).forward
        hidden_states = argument(forward, args, kwargs, "hidden_states")
        timestep = argument(forward, args, kwargs, "timestep")
        encoder_hidden_states = argument(forward, args, kwargs, "encoder_hidden_states")
        encoder_hidden_states_image = argument(forward, args, kwargs, "encoder_hidden_states_image")
        with lora_scaled(model, argument(forward, args, kwargs, "attention_kwargs")):
            return self._sparse_forward(model, hidden_states, timestep, encoder_hidden_states,
                                        encoder_hidden_states_image, active)

    def _sparse_forward(self, model, hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image,
                        active):

        rotary = model.rope(hidden_states)
        rotary = tuple(r[0, :, 0][active][:, :, None] for r in rotary)  # [B, n, 1, head_dim]
        tokens = model.patch_embedding(hidden_states).flatten(2).transpose(1, 2)
        tokens = tokens.gather(1, active[:, :, None].expand(-1, -1, tokens.shape[-1])).contiguous()

        ts_seq_len = None
        if timestep.ndim == 2:  # per-token timesteps (Wan 2.2 TI2V): those of the active tokens
            timestep = timestep.gather(1, active)
            ts_seq_len = timestep.shape[1]
            timestep = timestep.flatten()
        temb, timestep_proj, encoder_hidden_states, encoder_hidden_states_image = model.condition_embedder(
            timestep, encoder_hidden_states, encoder_hidden_states_image, timestep_seq_len=ts_seq_len)
        timestep_proj = timestep_proj.unflatten(2 if ts_seq_len is not None else 1, (6, -1))
        if encoder_hidden_states_image is not None:
            encoder_hidden_states = torch.concat([encoder_hidden_states_image, encoder_hidden_states], dim=1)

        for block in model.blocks:
            tokens = block(tokens, encoder_hidden_states, timestep_proj, rotary)

        if temb.ndim == 3:
            shift, scale = (model.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
            shift, scale = shift.squeeze(2), scale.squeeze(2)
        else:
            shift, scale = (model.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        tokens = (model.norm_out(tokens.float()) * (1 + scale) + shift).type_as(tokens)
        return model.proj_out(tokens)


def _apply_rotary(hidden_states: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding, as ``WanAttnProcessor`` applies it."""
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


@register_shapes("Wan", "SkyReels-V2", "WanVACE", vae_spatial=8, vae_temporal=4, text_tokens=512, cfg="split")
def wan_shapes(config: dict, latent: tuple[int, int, int], text_tokens: int) -> Shapes:
    """Cache shapes (:mod:`diffcache.memory`): one video stream of ``N`` patch tokens × ``heads·head_dim``; each
    block's self- and cross-attention output ``N × width``; TeaCache's signal, the timestep projection ``6 × width``."""
    pt, ph, pw = config["patch_size"]
    frames, height, width = latent
    tokens, dim = (frames // pt) * (height // ph) * (width // pw), heads_width(config)
    return Shapes("Wan", tokens, dim, streams=(tokens * dim,),
                  attention=tuple({"self": tokens * dim, "cross": tokens * dim} for _ in range(config["num_layers"])),
                  kv=(tokens * dim,) * config["num_layers"], signal=6 * dim,
                  output=config.get("out_channels", 16) * frames * height * width)

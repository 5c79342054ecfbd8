"""Wan VACE (``WanVACETransformer3DModel``, diffusers models/transformers/transformer_wan_vace.py): Wan 2.1 with a
control branch (VACE: Jiang et al., 2025, "VACE: All-in-One Video Creation and Editing", arXiv:2503.07598;
official code github.com/ali-vilab/VACE).

Streams and order of one forward:

1. the video latents ``[B, C, F, H, W]`` are patchified (``patch_size`` ``(pt, ph, pw)``) into frame-major tokens
   ``x``; the control latents (``control_hidden_states``: inactive + reactive video latents and the folded mask,
   ``vace_in_channels``) into control tokens ``c`` of the same grid (zero-padded to the video's token count);
2. **all control blocks run first** (``vace_blocks``, ``WanVACETransformerBlock``): block 0 starts from
   ``c = proj_in(c) + x``; each updates ``c`` like a Wan block (self-attention, cross-attention, MLP) and returns
   a hint ``proj_out(c)``;
3. the main blocks (``blocks``, plain ``WanTransformerBlock``: ``x += attn1(norm1 x)·gate``;
   ``x += attn2(norm2 x, text)``; ``x += ffn(norm3 x)·gate``) run in order, and **after main block ``vace_layers[k]``
   the forward itself adds ``hint_k · control_hidden_states_scale[k]``** to ``x`` — outside any block.

What a cache holds, and why it stays correct: the adapter's blocks are the main blocks, and the hints are never
cached. They are recomputed every forward by the control blocks (which no method skips: they run before any
method's decision point, and their input does not depend on the main blocks), and added by the model's own forward.
A block-level cache (AdaCache, PAB, FasterCache) keeps a main block's own update, which excludes the hint added
after it; a cache of a run of blocks (TeaCache, First-Block-Cache) keeps the run's output minus its input *minus
the hints added inside the run* (``adds_between_blocks``): on a reused step the model adds this step's hints
again, so a hint is never counted twice. The price: on a reused step the control blocks still run
(``len(vace_layers)`` blocks of ``num_layers + len(vace_layers)``: 15 of 45 in VACE 1.3B, 8 of 48 in VACE 14B).

The split point of a main block is the input of ``norm2`` (after self-attention), as in Wan. HSA's token-sparse
forward runs the control blocks on the active tokens too, their self-attention through a K/V cache of the whole
control sequence, and adds each hint at the active tokens.
"""

from __future__ import annotations

import torch

from .base import argument, lora_scaled, register_adapter
from .capabilities import BatchedArguments
from .wan import WanAdapter


@register_adapter
class WanVACEAdapter(WanAdapter):
    family = "WanVACE"
    model_classes = ("WanVACETransformer3DModel",)
    examples = "Wan2.1-VACE-1.3B, Wan2.1-VACE-14B"
    adds_between_blocks = True  # the control hints, after the main blocks named in vace_layers
    batched_arguments = (*BatchedArguments.batched_arguments, "control_hidden_states")

    def self_attention_modules(self, model) -> list[torch.nn.Module]:
        """The control blocks' self-attention layers, then the main blocks' (the order of the forward)."""
        return [block.attn1 for block in model.vace_blocks] + [block.attn1 for block in model.blocks]

    def sparse_forward(self, model, args: tuple, kwargs: dict, active: torch.Tensor) -> torch.Tensor:
        """``WanVACETransformer3DModel.forward`` for the tokens ``active`` (``[B, n]``) only: both patch
        embeddings (whole latents, then the active tokens gathered), the control blocks and the main blocks on the
        ``n`` tokens (self-attention through the K/V caches), each hint added at the active tokens after its main
        block, and the output projection. Returns the outputs ``[B, n, pt·ph·pw·C]``."""
        forward = type(model).forward
        control = argument(forward, args, kwargs, "control_hidden_states")
        scale = argument(forward, args, kwargs, "control_hidden_states_scale")
        if scale is None:
            scale = control.new_ones(len(model.config.vace_layers))
        with lora_scaled(model, argument(forward, args, kwargs, "attention_kwargs")):
            return self._vace_sparse_forward(
                model, argument(forward, args, kwargs, "hidden_states"), argument(forward, args, kwargs, "timestep"),
                argument(forward, args, kwargs, "encoder_hidden_states"),
                argument(forward, args, kwargs, "encoder_hidden_states_image"), control, torch.unbind(scale), active)

    def _vace_sparse_forward(self, model, hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image,
                             control, scales, active):
        def gather(tokens):
            return tokens.gather(1, active[:, :, None].expand(-1, -1, tokens.shape[-1])).contiguous()

        rotary = model.rope(hidden_states)
        rotary = tuple(r[0, :, 0][active][:, :, None] for r in rotary)  # [B, n, 1, head_dim]
        tokens = model.patch_embedding(hidden_states).flatten(2).transpose(1, 2)
        control = model.vace_patch_embedding(control).flatten(2).transpose(1, 2)
        padding = control.new_zeros(control.shape[0], tokens.shape[1] - control.shape[1], control.shape[2])
        control = gather(torch.cat([control, padding], dim=1))
        tokens = gather(tokens)

        temb, timestep_proj, encoder_hidden_states, encoder_hidden_states_image = model.condition_embedder(
            timestep, encoder_hidden_states, encoder_hidden_states_image)
        timestep_proj = timestep_proj.unflatten(1, (6, -1))
        if encoder_hidden_states_image is not None:
            encoder_hidden_states = torch.concat([encoder_hidden_states_image, encoder_hidden_states], dim=1)

        hints = []
        for block in model.vace_blocks:
            hint, control = block(tokens, encoder_hidden_states, control, timestep_proj, rotary)
            hints.append(hint)
        pending = list(zip(hints, scales))
        for index, block in enumerate(model.blocks):
            tokens = block(tokens, encoder_hidden_states, timestep_proj, rotary)
            if index in model.config.vace_layers:  # the next hint, in the order of vace_blocks (as the forward pops)
                hint, scale = pending.pop(0)
                tokens = tokens + hint.to(tokens.device) * scale

        shift, scale = (model.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        tokens = (model.norm_out(tokens.float()) * (1 + scale) + shift).type_as(tokens)
        return model.proj_out(tokens)

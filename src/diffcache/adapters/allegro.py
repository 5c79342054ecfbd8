"""Allegro (``AllegroTransformer3DModel``, diffusers ``transformer_allegro.py``; Rhymes AI, arXiv:2410.15458):
single-stream blocks with self-attention and cross-attention to the text.

Block (``AllegroTransformerBlock``, PixArt-style ``ada_norm_single``): ``x += attn1(norm1(x)·(1+scale)+shift)·gate``;
``x += attn2(x, text)`` (no norm before it); ``x += ff(norm2(x)·(1+scale)+shift)·gate``. Only the video stream is
updated (the text is the same for every block).

Split point (AdaCache): ``attn2``, whose input is the state after the self-attention residual.

Tokens: latents ``[B, C, F, H, W]`` are patchified per frame by ``patch_size`` (``patch_size_t`` is 1 in Allegro)
into frame-major tokens ``[B, F·(H/p)·(W/p), D]``; the output is ``[B, C, F, H, W]``. AllegroPipeline runs CFG
batched ``[uncond, cond]`` with a DDPM-family scheduler (not flow matching, so HSA does not apply).

TeaCache signal (``modulated_input``): there is no official TeaCache for Allegro; this is the paper's
timestep-embedding-modulated noisy input (arXiv:2411.19108), block 0's ``norm1(x)·(1+scale_msa)+shift_msa``, read
the way TeaCache4LTX-Video reads it from the same PixArt-style block. No coefficients are fitted for it.
"""

from __future__ import annotations

from .base import Adapter, argument, register_adapter
from .capabilities import (AttentionRoles, BatchedArguments, BlockStack, ModulatedInput, SplitBlocks, TokenGrid,
                           adaln_single_modulated_input)


@register_adapter
class AllegroAdapter(Adapter, BlockStack, SplitBlocks, AttentionRoles, ModulatedInput, TokenGrid, BatchedArguments):
    family = "Allegro"
    model_classes = ("AllegroTransformer3DModel",)
    examples = "Allegro (rhymes-ai/Allegro)"

    def attention_modules(self, block):
        return {"self": block.attn1, "cross": block.attn2}

    def split_module(self, block):
        return block.attn2

    def modulated_input(self, block, args, kwargs):
        """Block 0's ``norm1(x)·(1 + scale_msa) + shift_msa``, as ``AllegroTransformerBlock.forward`` computes it."""
        forward = type(block).forward
        return adaln_single_modulated_input(block, argument(forward, args, kwargs, "hidden_states"),
                                            argument(forward, args, kwargs, "temb"))

    def token_layout(self, model, args, kwargs):
        latents = argument(type(model).forward, args, kwargs, "hidden_states")
        _, _, frames, height, width = latents.shape
        p, pt = model.config.patch_size, model.config.patch_size_t
        return frames // pt, height // p, width // p

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

HSA is not offered: its token-sparse forward would have to re-implement ``MochiAttnProcessor2_0`` (joint
attention with per-sample text masks and Mochi's RoPE) through a K/V cache, which is not done here.
"""

from __future__ import annotations

from .base import Adapter, argument, register_adapter
from .capabilities import AttentionRoles, BatchedArguments, BlockStack, ModulatedInput, SplitBlocks, TokenGrid


@register_adapter
class MochiAdapter(Adapter, BlockStack, SplitBlocks, AttentionRoles, ModulatedInput, TokenGrid, BatchedArguments):
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

"""CogVideoX 1.0 / 1.5 (``CogVideoXTransformer3DModel``): joint attention over text and video tokens.

Block: ``(x, e) += attn1(norm1(x, e))·gates`` (one attention over both streams); ``(x, e) += ff(norm2(x, e))·gates``.
Both streams are updated residually, so both are cached. The inputs of ``norm2`` are the two streams after
attention. Latents ``[B, F, C, H, W]``, patch ``patch_size`` (and ``patch_size_t`` in 1.5), frame-major tokens.
"""

from __future__ import annotations

from .base import Adapter, argument, register_adapter
from .capabilities import AttentionRoles, BatchedArguments, BlockStack, ModulatedInput, SplitBlocks, TokenGrid


@register_adapter
class CogVideoXAdapter(Adapter, BlockStack, SplitBlocks, AttentionRoles, ModulatedInput, TokenGrid, BatchedArguments):
    family = "CogVideoX"
    model_classes = ("CogVideoXTransformer3DModel",)
    examples = "CogVideoX-2b, CogVideoX-5b, CogVideoX1.5-5B"

    def block_streams(self, block, args, kwargs):
        forward = type(block).forward
        return (argument(forward, args, kwargs, "hidden_states"), argument(forward, args, kwargs, "encoder_hidden_states"))

    def attention_modules(self, block):
        return {"self": block.attn1}

    def split_module(self, block):
        return block.norm2

    def split_streams(self, split_module, args, kwargs):
        forward = type(split_module).forward
        return (argument(forward, args, kwargs, "hidden_states"), argument(forward, args, kwargs, "encoder_hidden_states"))

    def token_layout(self, model, args, kwargs):
        latents = argument(type(model).forward, args, kwargs, "hidden_states")
        _, frames, _, height, width = latents.shape
        p = model.config.patch_size
        pt = model.config.patch_size_t or 1
        return (frames + pt - 1) // pt, height // p, width // p

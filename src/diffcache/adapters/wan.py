"""Wan 2.1 / 2.2 (``WanTransformer3DModel``) and the embedded tiny-shapes-t2v model, which uses the same class.

Block: ``x += attn1(norm1 x)·gate``; ``x += attn2(norm2 x, text)``; ``x += ffn(norm3 x)·gate``. The input of
``norm2`` is the state after self-attention. Latents ``[B, C, F, H, W]`` are patchified by ``patch_size``
``(pt, ph, pw)`` into frame-major tokens.
"""

from __future__ import annotations

from .base import Adapter, argument


class WanAdapter(Adapter):
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

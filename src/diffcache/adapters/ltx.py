"""LTX-Video (``LTXVideoTransformer3DModel``): tokens arrive packed ``[B, F·H·W, C]``, frame-major.

Block: ``x += attn1(norm1 x)·gate``; ``x += attn2(x, text)``; ``x += ff(norm2 x)·gate``. The input of ``attn2`` is
the state after self-attention. The grid comes from the forward's ``num_frames``, ``height``, ``width``.
"""

from __future__ import annotations

from .base import Adapter, argument


class LTXVideoAdapter(Adapter):
    family = "LTX-Video"
    model_classes = ("LTXVideoTransformer3DModel",)
    examples = "LTX-Video 0.9.x"

    def attention_modules(self, block):
        return {"self": block.attn1, "cross": block.attn2}

    def split_module(self, block):
        return block.attn2

    def token_layout(self, model, args, kwargs):
        forward = type(model).forward
        frames = argument(forward, args, kwargs, "num_frames")
        height = argument(forward, args, kwargs, "height")
        width = argument(forward, args, kwargs, "width")
        p, pt = model.config.patch_size, model.config.patch_size_t
        return frames // pt, height // p, width // p

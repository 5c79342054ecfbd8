"""LTX-Video (``LTXVideoTransformer3DModel``): tokens arrive packed ``[B, F·H·W, C]``, frame-major.

Block: ``x += attn1(norm1 x)·gate``; ``x += attn2(x, text)``; ``x += ff(norm2 x)·gate``. The input of ``attn2`` is
the state after self-attention. The grid comes from the forward's ``num_frames``, ``height``, ``width``.
"""

from __future__ import annotations

from ..errors import UnsupportedModelError
from .base import Adapter, argument, register_adapter
from .capabilities import AttentionRoles, BatchedArguments, BlockStack, ModulatedInput, SplitBlocks, TokenGrid


@register_adapter
class LTXVideoAdapter(Adapter, BlockStack, SplitBlocks, AttentionRoles, ModulatedInput, TokenGrid, BatchedArguments):
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
        if None in (frames, height, width):
            raise UnsupportedModelError(
                "this LTX-Video forward gives no num_frames/height/width (as LTXConditionPipeline calls it, with "
                "video_coords and conditioning tokens); diffcache's token-grid methods (MoReg, FasterCache's "
                "CFG-Cache) support LTXPipeline's calls only.")
        return frames, height, width  # the token grid: LTX's RoPE uses these directly

"""LTX-Video (``LTXVideoTransformer3DModel``): tokens arrive packed ``[B, F·H·W, C]``, frame-major.

Block: ``x += attn1(norm1 x)·gate``; ``x += attn2(x, text)``; ``x += ff(norm2 x)·gate``. The input of ``attn2`` is
the state after self-attention. The grid comes from the forward's ``num_frames``, ``height``, ``width``
(``LTXPipeline``), or, where the forward gets ``video_coords`` instead (``LTXConditionPipeline``), from those
coordinates (:func:`grid_from_coords`): there the sequence may begin with conditioning tokens (a conditioning image
or video placed at a later frame is prepended as whole latent frames of the same height and width), and these
count as frames of the grid, in sequence order.
"""

from __future__ import annotations

import torch

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
        if None not in (frames, height, width):
            return frames, height, width  # the token grid: LTX's RoPE uses these directly
        coords = argument(forward, args, kwargs, "video_coords")
        if coords is None:
            raise UnsupportedModelError(
                "this LTX-Video forward gives neither num_frames/height/width nor video_coords, so diffcache cannot "
                "tell its token grid (needed by MoReg and FasterCache); pass num_frames, height and width.")
        return grid_from_coords(coords)


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

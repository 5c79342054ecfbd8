"""Latte (``LatteTransformer3DModel``, diffusers ``latte_transformer_3d.py``; Ma et al., arXiv:2401.03048,
github.com/Vchitect/Latte): alternating spatial and temporal transformer blocks.

Blocks, in execution order: ``transformer_blocks[0]``, ``temporal_transformer_blocks[0]``,
``transformer_blocks[1]``, … (:meth:`LatteAdapter.blocks`). Both kinds are PixArt-style ``BasicTransformerBlock``
(``ada_norm_single``):

* spatial block, tokens ``[B·F, N, D]`` (one row per frame, ``N`` patches): ``x += attn1(mod(norm1 x))·gate``
  (spatial self-attention), ``x += attn2(x, text)`` (cross-attention, no norm before it), ``x += ff(…)·gate``;
* temporal block, tokens ``[B·N, F, D]`` (one row per patch): ``x += attn1(…)·gate`` (temporal self-attention),
  ``x += ff(norm2 …)·gate`` (no cross-attention).

The model's forward reshapes between them (``[B·F, N, D]`` ↔ ``[B·N, F, D]``, sample-major) and, before the first
temporal block (when ``F > 1``), adds the temporal position embedding ``temp_pos_embed``. A step-level residual
(First-Block-Cache, TeaCache: the last block's output minus the run's input) is therefore taken in the spatial
layout, with that embedding taken off (:meth:`LatteAdapter.run_output_streams`): on a reused step the forward still
reshapes and adds the embedding around blocks that pass their input through.

Split point (AdaCache): ``attn2`` in a spatial block (its input is the state after self-attention), ``norm2`` in a
temporal block (the MLP's norm, whose input is the state after self-attention).

Attention roles (PAB, FasterCache): ``"spatial"`` and ``"cross"`` in spatial blocks, ``"temporal"`` in temporal
blocks, as PAB was designed on Latte (arXiv:2408.12588, VideoSys' ``LattePABConfig``).

Tokens: latents ``[B, C, F, H, W]`` (LattePipeline's image VAE: one latent frame per video frame), patch
``patch_size``; the output ``[B, C_out, F, H, W]``. LattePipeline runs CFG batched ``[uncond, cond]`` with a DDPM-family
scheduler (not flow matching, so HSA does not apply). With ``enable_temporal_attentions=False`` the temporal blocks
do not run, and the step-level caches, whose run ends at the last temporal block, reuse nothing (they warn).

TeaCache signal (``modulated_input``): as the official TeaCache Latte experiment (github.com/ali-vilab/TeaCache,
``eval/teacache/experiments/latte.py``): spatial block 0's ``norm1(x)·(1 + scale_msa) + shift_msa`` with the
spatial timestep embedding.
"""

from __future__ import annotations

from .base import Adapter, argument, register_adapter
from .capabilities import (AttentionRoles, BatchedArguments, BlockStack, ModulatedInput, SplitBlocks, TokenGrid,
                           adaln_single_modulated_input)


@register_adapter
class LatteAdapter(Adapter, BlockStack, SplitBlocks, AttentionRoles, ModulatedInput, TokenGrid, BatchedArguments):
    family = "Latte"
    model_classes = ("LatteTransformer3DModel",)
    examples = "Latte-1 (maxin-cn/Latte-1)"

    def blocks(self, model):
        return [block for pair in zip(model.transformer_blocks, model.temporal_transformer_blocks) for block in pair]

    @staticmethod
    def _temporal(block) -> bool:
        return block.attn2 is None  # the temporal blocks are built without cross-attention

    def attention_modules(self, block):
        if self._temporal(block):
            return {"temporal": block.attn1}
        return {"spatial": block.attn1, "cross": block.attn2}

    def split_module(self, block):
        return block.norm2 if self._temporal(block) else block.attn2

    def run_output_streams(self, model, block, outputs, run_input):
        """The last (temporal) block's output ``[B·N, F, D]`` as the spatial-layout ``[B·F, N, D]`` output of the run
        that ``run_input`` (spatial layout) entered, less the temporal position embedding the forward adds before
        the first temporal block (when ``F > 1``), which it adds again on a reused step."""
        (tokens,), (entered,) = outputs, run_input
        if not self._temporal(block):
            return outputs
        patches, frames, width = entered.shape[1], tokens.shape[1], tokens.shape[2]
        if frames > 1:
            tokens = tokens - model.temp_pos_embed.to(tokens.dtype)
        batch = tokens.shape[0] // patches
        return (tokens.reshape(batch, patches, frames, width).permute(0, 2, 1, 3).reshape(-1, patches, width),)

    def modulated_input(self, block, args, kwargs):
        """The official TeaCache Latte signal: spatial block 0's ``norm1(x)·(1 + scale_msa) + shift_msa``."""
        forward = type(block).forward
        return adaln_single_modulated_input(block, argument(forward, args, kwargs, "hidden_states"),
                                            argument(forward, args, kwargs, "timestep"))

    def token_layout(self, model, args, kwargs):
        latents = argument(type(model).forward, args, kwargs, "hidden_states")
        _, _, frames, height, width = latents.shape
        p = model.config.patch_size
        return frames, height // p, width // p

    def frame_major_tokens(self, block, tokens, grid):
        """A spatial block's ``[B·F, N, D]`` or a temporal block's ``[B·N, F, D]`` tokens as ``[B, F·N, D]``."""
        frames, height, width = grid
        patches = height * width
        if self._temporal(block):
            batch = tokens.shape[0] // patches
            tokens = tokens.reshape(batch, patches, frames, -1).permute(0, 2, 1, 3)
        return tokens.reshape(-1, frames * patches, tokens.shape[-1])

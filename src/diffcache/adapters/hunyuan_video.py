"""HunyuanVideo (``HunyuanVideoTransformer3DModel``, Kong et al., 2024, arXiv:2412.03603; official code:
github.com/Tencent/HunyuanVideo), its FramePack variant (``HunyuanVideoFramepackTransformer3DModel``, Zhang &
Agrawala, 2025, arXiv:2504.12626; github.com/lllyasviel/FramePack) and HunyuanVideo-1.5
(``HunyuanVideo15Transformer3DModel``, github.com/Tencent-Hunyuan/HunyuanVideo-1.5), as diffusers 0.42.1 has them
(``models/transformers/transformer_hunyuan_video.py``, ``transformer_hunyuan_video_framepack.py``,
``transformer_hunyuan_video15.py``).

**Blocks, in execution order.** ``transformer_blocks`` (dual-stream), then ``single_transformer_blocks``
(single-stream; HunyuanVideo-1.5 has none). Every block is called ``block(hidden_states, encoder_hidden_states,
temb, attention_mask, rotary_emb, …)`` and returns ``(hidden_states, encoder_hidden_states)``, so every block
updates two residual streams, the video tokens and the text tokens, and both are cached (as CogVideoX's).

* Dual-stream (``HunyuanVideoTransformerBlock``, its token-replace I2V form, ``HunyuanVideo15TransformerBlock``):
  ``(x, c) += attn(norm1(x, temb), norm1_context(c, temb))·gates`` — one joint attention (``attn``, role
  ``"self"``) over video and text tokens, each stream with its own projections —, then ``x += ff(norm2 x)·gate``,
  ``c += ff_context(norm2_context c)·gate``. Split point: ``norm2``, whose input is the video stream after the
  attention residual was added (the text stream's own split point, ``norm2_context``, is a separate module: AdaCache
  keeps the text stream's update whole).
* Single-stream (``HunyuanVideoSingleTransformerBlock`` and its token-replace form): text and video are concatenated
  and ``[x, c] += proj_out([attn(norm [x, c]), mlp(norm [x, c])])·gate`` — attention and MLP in **parallel** from the
  same normalised input, so there is no state "after self-attention": ``split_module`` is ``None``.

**Tokens.** Latents ``[B, C, F, H, W]`` are patchified by ``(patch_size_t, patch_size, patch_size)`` into frame-major
video tokens; the text stream is the refined LLM tokens (HunyuanVideo: Llama, padded to ``max_sequence_length`` and
masked in attention), in FramePack preceded by the SigLIP image tokens, in 1.5 the image, ByT5 and Qwen2.5-VL tokens
(valid ones first). FramePack's video stream is not a plain grid: clean-history tokens at 4×, 2× and 1× downsampling
come first, then the section's window (the output is its last ``F·H·W`` tokens), so its adapter declares no
``TokenGrid``.

**TeaCache signal** (``modulated_input``): the official TeaCache4HunyuanVideo code (github.com/ali-vilab/TeaCache,
``TeaCache4HunyuanVideo/teacache_sample_video.py``) reads the first double block's
``modulate(img_norm1(img), shift=img_mod1_shift, scale=img_mod1_scale)`` — in diffusers the first output of block
0's ``norm1(hidden_states, emb=temb)`` (``AdaLayerNormZero``: ``LayerNorm(x)·(1 + scale_msa) + shift_msa``), the
video tokens only.
"""

from __future__ import annotations

from ..errors import UnsupportedModelError
from .base import Adapter, argument, register_adapter
from .capabilities import AttentionRoles, BatchedArguments, BlockStack, ModulatedInput, SplitBlocks, TokenGrid

#: blocks whose attention and MLP run in parallel (no split point after self-attention)
SINGLE_STREAM_BLOCKS = ("HunyuanVideoSingleTransformerBlock", "HunyuanVideoTokenReplaceSingleTransformerBlock")
#: dual-stream blocks whose ``norm1`` also takes the first frame's token-replace modulation (HunyuanVideo-I2V)
TOKEN_REPLACE_BLOCKS = ("HunyuanVideoTokenReplaceTransformerBlock", "HunyuanVideoTokenReplaceSingleTransformerBlock")


class HunyuanVideoBaseAdapter(Adapter, BlockStack, SplitBlocks, AttentionRoles, ModulatedInput):
    """What the three HunyuanVideo families share: the dual-stream / single-stream block stack (not registered
    itself: each family below is)."""

    def blocks(self, model):
        return list(model.transformer_blocks) + list(getattr(model, "single_transformer_blocks", None) or [])

    def block_streams(self, block, args, kwargs):
        forward = type(block).forward
        return (argument(forward, args, kwargs, "hidden_states"), argument(forward, args, kwargs, "encoder_hidden_states"))

    def attention_modules(self, block):
        return {"self": block.attn}  # joint attention over video and text tokens

    def split_module(self, block):
        """``norm2`` of a dual-stream block (its input: the video stream after the attention residual); ``None`` for
        a single-stream block (attention and MLP in parallel)."""
        if type(block).__name__ in SINGLE_STREAM_BLOCKS:
            return None
        return block.norm2

    def modulated_input(self, block, args, kwargs):
        """The official TeaCache4HunyuanVideo signal: block 0's ``norm1(x, temb)`` output, ``LayerNorm(x)·(1 +
        scale_msa) + shift_msa`` over the video tokens. With HunyuanVideo-I2V's token-replace blocks, ``norm1`` also
        takes the first frame's modulation (``token_replace_emb``) as the block itself calls it; a first block that
        is single-stream gives its ``norm`` of the video tokens."""
        forward = type(block).forward
        hidden = argument(forward, args, kwargs, "hidden_states")
        temb = argument(forward, args, kwargs, "temb")
        name = type(block).__name__
        norm = block.norm if name in SINGLE_STREAM_BLOCKS else block.norm1
        if name in TOKEN_REPLACE_BLOCKS:
            token_replace_emb = argument(forward, args, kwargs, "token_replace_emb")
            num_tokens = argument(forward, args, kwargs, "num_tokens")
            if token_replace_emb is None or num_tokens is None:
                raise UnsupportedModelError(f"{name} was called without token_replace_emb / num_tokens, which its "
                                            "norm1 needs; TeaCache reads the modulated input as the block computes it")
            return norm(hidden, temb, token_replace_emb, num_tokens)[0]
        return norm(hidden, emb=temb)[0]


class PatchGrid(TokenGrid):
    def token_layout(self, model, args, kwargs):
        latents = argument(type(model).forward, args, kwargs, "hidden_states")
        _, _, frames, height, width = latents.shape
        p, pt = model.config.patch_size, model.config.patch_size_t
        return frames // pt, height // p, width // p
    # output_frames: the default (the output is [B, C, F, H, W], already ending in (H, W))


@register_adapter
class HunyuanVideoAdapter(HunyuanVideoBaseAdapter, PatchGrid, BatchedArguments):
    family = "HunyuanVideo"
    model_classes = ("HunyuanVideoTransformer3DModel",)
    examples = "HunyuanVideo (T2V, 13B), HunyuanVideo-I2V, SkyReels-V1"
    batched_arguments = ("hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask",
                         "pooled_projections", "guidance")

"""HunyuanVideo-1.5 (``HunyuanVideo15Transformer3DModel``; official code: github.com/Tencent-Hunyuan/HunyuanVideo-1.5;
diffusers ``transformer_hunyuan_video15.py``).

54 dual-stream blocks (``HunyuanVideo15TransformerBlock``, HunyuanVideo's dual-stream block with its own attention
processor) and no single-stream blocks: each updates the video and the text stream residually (split point
``norm2``: the video stream after the joint attention; see :mod:`diffcache.adapters.hunyuan_video`). Latents
``[B, C, F, H, W]`` (the 32 latent channels concatenated with the condition latents and mask: 65 in) are patchified
by ``patch_size`` 1 into frame-major tokens. The text stream is the SigLIP image tokens (zeroed and masked for
text-to-video), the ByT5 glyph tokens and the Qwen2.5-VL tokens, valid ones first.
"""

from __future__ import annotations

from .base import register_adapter
from .capabilities import BatchedArguments
from .hunyuan_video import HunyuanVideoBaseAdapter, PatchGrid


@register_adapter
class HunyuanVideo15Adapter(HunyuanVideoBaseAdapter, PatchGrid, BatchedArguments):
    """HunyuanVideo-1.5: dual-stream blocks only (54 in the released model); the TeaCache signal is
    HunyuanVideo's (block 0's ``norm1`` output): the official TeaCache has no HunyuanVideo-1.5 code."""

    family = "HunyuanVideo-1.5"
    model_classes = ("HunyuanVideo15Transformer3DModel",)
    examples = "HunyuanVideo-1.5 480p/720p T2V and I2V (8.3B)"
    batched_arguments = ("hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask",
                         "timestep_r", "encoder_hidden_states_2", "encoder_attention_mask_2", "image_embeds")

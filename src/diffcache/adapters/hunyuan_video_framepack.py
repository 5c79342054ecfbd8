"""HunyuanVideo FramePack (``HunyuanVideoFramepackTransformer3DModel``, Zhang & Agrawala, 2025, arXiv:2504.12626;
official code: github.com/lllyasviel/FramePack; diffusers ``transformer_hunyuan_video_framepack.py``).

The blocks are HunyuanVideo's own (``HunyuanVideoTransformerBlock`` then ``HunyuanVideoSingleTransformerBlock``;
see :mod:`diffcache.adapters.hunyuan_video` for streams, split points and the TeaCache signal). What differs is the
token layout: the video stream is the clean-history tokens (4×, 2× and 1× downsampled, each patchified by its own
convolution) followed by the current section's window tokens, and the output is the last ``F·H·W`` of them; the
text stream is the SigLIP image tokens followed by the refined Llama tokens (cut to their valid length when the batch
is one sample). ``HunyuanVideoFramepackPipeline`` samples a video section by section, each section one full
denoising loop over a fresh schedule, so the step tracker sees each section as one call of ``num_inference_steps``
steps.
"""

from __future__ import annotations

from .base import register_adapter
from .hunyuan_video import HunyuanVideoBaseAdapter


@register_adapter
class HunyuanVideoFramepackAdapter(HunyuanVideoBaseAdapter):
    """FramePack samples a video section by section, each section one full denoising loop (the step tracker sees
    each section as one call: the schedule starts again). No ``TokenGrid``: the video stream is history tokens at
    three resolutions followed by the section's window, not one ``(frames, height, width)`` grid."""

    family = "HunyuanVideo Framepack"
    model_classes = ("HunyuanVideoFramepackTransformer3DModel",)
    examples = "FramePackI2V_HY, FramePack_F1_I2V_HY"

"""Tiny AnimateDiff pipelines (a U-Net video family: DeepCache).

AnimateDiff (``AnimateDiffPipeline``, ``AnimateDiffVideoToVideoPipeline``, ``AnimateDiffSDXLPipeline``): a tiny
``UNet2DConditionModel`` plus a ``MotionAdapter`` built from config; the pipeline turns them into a
``UNetMotionModel`` (``UNetMotionModel.from_unet2d``). Batched CFG (``[uncond, cond]`` in one forward).
"""

from __future__ import annotations

import torch
from tiny_parts import clip_text, clip_tokenizer, eval_mode, tiny_vae, video_call

SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", steps_offset=1, clip_sample=False,
                set_alpha_to_one=False)


def tiny_motion_adapter(block_out_channels=(8, 16, 16, 16), mid_block: bool = True):
    """A ``MotionAdapter`` (AnimateDiff's motion modules) for a U-Net of ``block_out_channels``."""
    from diffusers import MotionAdapter

    return MotionAdapter(block_out_channels=block_out_channels, motion_layers_per_block=2, motion_norm_num_groups=4,
                         motion_num_attention_heads=2, motion_max_seq_length=16, use_motion_mid_block=mid_block)


def tiny_sd15_unet2d():
    """Stable Diffusion 1.5's U-Net layout in miniature (4 blocks of 2 layers, cross-attention in the first three)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16, 16, 16), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=4)


def tiny_animatediff_pipeline(seed: int = 0, video_to_video: bool = False):
    """An ``AnimateDiffPipeline`` (or ``AnimateDiffVideoToVideoPipeline``) with SD 1.5's U-Net layout and a motion
    adapter with a motion mid block, a tiny CLIP text encoder and a tiny VAE (factor 2)."""
    from diffusers import AnimateDiffPipeline, AnimateDiffVideoToVideoPipeline, DDIMScheduler

    torch.manual_seed(seed)
    unet = tiny_sd15_unet2d()
    adapter = tiny_motion_adapter()
    tokenizer = clip_tokenizer()
    cls = AnimateDiffVideoToVideoPipeline if video_to_video else AnimateDiffPipeline
    return eval_mode(cls(vae=tiny_vae(), text_encoder=clip_text(tokenizer), tokenizer=tokenizer, unet=unet,
                         motion_adapter=adapter, scheduler=DDIMScheduler(**SCHEDULE)))


def tiny_animatediff_sdxl_pipeline(seed: int = 0):
    """An ``AnimateDiffSDXLPipeline``: SDXL's U-Net layout (3 blocks, added text/time embedding), a motion adapter
    without a motion mid block (as the SDXL beta adapter), two tiny CLIP text encoders."""
    from diffusers import AnimateDiffSDXLPipeline, DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16, 16), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        cross_attention_dim=64, attention_head_dim=2, norm_num_groups=4, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=80)
    adapter = tiny_motion_adapter((8, 16, 16), mid_block=False)
    tokenizer = clip_tokenizer()
    return eval_mode(AnimateDiffSDXLPipeline(
        vae=tiny_vae(), text_encoder=clip_text(tokenizer), text_encoder_2=clip_text(tokenizer, projection=True),
        tokenizer=tokenizer, tokenizer_2=clip_tokenizer(), unet=unet, motion_adapter=adapter,
        scheduler=DDIMScheduler(**SCHEDULE), force_zeros_for_empty_prompt=True))


TINY_PIPELINES = {
    # AnimateDiffPipeline ignores num_videos_per_prompt (always one video per prompt), as the pipeline gives it
    "AnimateDiff": (tiny_animatediff_pipeline, video_call(dict(height=32, width=32, num_frames=3)), False),
}

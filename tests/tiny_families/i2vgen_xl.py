"""A tiny I2VGen-XL pipeline (a U-Net video family: DeepCache).

``I2VGenXLPipeline`` (image-to-video, diffusers' deprecated pipelines, still exported): a tiny ``I2VGenXLUNet``,
CLIP text and vision encoders and a ``CLIPImageProcessor`` (the pipeline crops the image to the processor's
``crop_size``). Batched CFG (``[uncond, cond]`` in one forward).

The call passes ``clip_skip=None``: the pipeline's default ``clip_skip=1`` reads ``text_encoder.text_model``, which
transformers 5's ``CLIPTextModel`` no longer has (its layers sit on the model itself), so the default fails there
with an ``AttributeError`` — with or without diffcache. It also seeds torch's global RNG: the pipeline samples the
encoded image's latents (``vae.encode(image).latent_dist.sample()``) without the call's ``generator``, so two calls
with the same generator differ unless the global RNG is seeded too.
"""

from __future__ import annotations

import torch
from tiny_parts import clip_text, clip_tokenizer, eval_mode, frames_of, red_image, tiny_vae

SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", steps_offset=1, clip_sample=False,
                set_alpha_to_one=False)


def tiny_i2vgen_xl_unet():
    """A ``I2VGenXLUNet`` of 3 blocks of 2 layers (3 in the up blocks): resnet, temporal conv, spatial and temporal
    attention, as ModelScope's, behind an image-latent stem and ``transformer_in``."""
    from diffusers import I2VGenXLUNet

    return I2VGenXLUNet(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16, 16), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=4)


def tiny_i2vgen_xl_pipeline(seed: int = 0):
    """An ``I2VGenXLPipeline`` (image-to-video, batched CFG, DDIM) with a tiny ``I2VGenXLUNet``, CLIP text and
    vision encoders (projection 32 = the U-Net's cross-attention width) and a tiny VAE (factor 2)."""
    from diffusers import DDIMScheduler, I2VGenXLPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet = tiny_i2vgen_xl_unet()
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=32, num_hidden_layers=1, num_attention_heads=4, image_size=32,
        intermediate_size=37, patch_size=8))
    tokenizer = clip_tokenizer()
    return eval_mode(I2VGenXLPipeline(
        vae=tiny_vae(), text_encoder=clip_text(tokenizer), tokenizer=tokenizer, image_encoder=image_encoder,
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32), unet=unet,
        scheduler=DDIMScheduler(**SCHEDULE)))


def i2vgen_xl_call(pipe, steps: int, guidance: float = 5.0, per_prompt: int = 1, seed: int = 0,
                   negative: str = "dog"):
    torch.manual_seed(seed)  # the pipeline samples the image latents with the global RNG, not with `generator`
    return frames_of(pipe(prompt="a cat surfing", image=red_image(32), negative_prompt=negative, height=32, width=32,
                          num_frames=3, num_inference_steps=steps, guidance_scale=guidance,
                          num_videos_per_prompt=per_prompt, decode_chunk_size=3, output_type="np", clip_skip=None,
                          generator=torch.Generator().manual_seed(seed)))


i2vgen_xl_call.many = True

TINY_PIPELINES = {"I2VGen-XL": (tiny_i2vgen_xl_pipeline, i2vgen_xl_call, False)}

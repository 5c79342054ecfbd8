"""Tiny random-weight diffusers pipelines assembled offline (no network): real pipeline classes, tiny configs."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from tiny_parts import (WAN_TRANSFORMER, WORDS, clip_text, clip_tokenizer, eval_mode, frames_of, red_image, tiny_t5, tiny_vae,  # noqa: F401
                        video_call, wan_text_and_vae, word_tokenizer)


def tiny_wan_pipeline(seed: int = 0, num_layers: int = 2):
    """A ``WanPipeline`` with a 2-block ``WanTransformer3DModel``, a tiny UMT5 encoder and a tiny Wan VAE."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    parts = wan_text_and_vae(seed)
    transformer = WanTransformer3DModel(**WAN_TRANSFORMER, num_layers=num_layers)
    return eval_mode(WanPipeline(**parts, transformer=transformer,
                                 scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0)))


def tiny_cogvideox_pipeline(seed: int = 0, num_layers: int = 1):
    """A ``CogVideoXPipeline`` (batched CFG) with a 1-block transformer, tiny T5 and tiny CogVideoX VAE."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    tokenizer = word_tokenizer()
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2,
        text_embed_dim=32, num_layers=num_layers, sample_width=2, sample_height=2, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=226)  # the pipeline default
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4)
    return eval_mode(CogVideoXPipeline(tokenizer=tokenizer, text_encoder=tiny_t5(len(tokenizer)), vae=vae,
                                   transformer=transformer, scheduler=CogVideoXDDIMScheduler()))


def tiny_ltx_pipeline(seed: int = 0, num_layers: int = 1):
    """An ``LTXPipeline`` (batched CFG, packed tokens) with a 1-block transformer, tiny T5 and tiny LTX VAE."""
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(seed)
    tokenizer = word_tokenizer()
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4, attention_head_dim=8,
        cross_attention_dim=32, num_layers=num_layers, caption_channels=32)
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1, 1, 1, 1), timestep_conditioning=False,
        patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False)
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    return eval_mode(LTXPipeline(tokenizer=tokenizer, text_encoder=tiny_t5(len(tokenizer)), vae=vae,
                             transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler()))


# builder and a small video size for each family, for tests that run every adapter inside its real pipeline
VIDEO_FAMILIES = {
    "wan": (tiny_wan_pipeline, dict(height=16, width=16, num_frames=5)),
    "cogvideox": (tiny_cogvideox_pipeline, dict(height=16, width=16, num_frames=9)),
    "ltx": (tiny_ltx_pipeline, dict(height=32, width=32, num_frames=9)),
}


# -- U-Net pipelines (DeepCache) -------------------------------------------------------------------------------------
def tiny_sd_unet(seed: int = 0):
    """A ``UNet2DConditionModel`` with Stable Diffusion 1.5's layout (4 blocks, 2 layers each, cross-attention in
    the first three), 8–16 channels wide."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16, 16, 16), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=4)


def tiny_sd_pipeline(seed: int = 0, scheduler: str = "ddim"):
    """A ``StableDiffusionPipeline`` (batched CFG) with SD 1.5's U-Net layout in miniature, a tiny CLIP text
    encoder and a tiny VAE (factor 2): 32 × 32 images from a 16 × 16 latent."""
    from diffusers import DDIMScheduler, PNDMScheduler, StableDiffusionPipeline

    unet = tiny_sd_unet(seed)
    torch.manual_seed(seed + 1)
    tokenizer = clip_tokenizer()
    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                  set_alpha_to_one=False)
    if scheduler == "pndm":  # Stable Diffusion 1.5's own scheduler (PLMS: its first timestep after 0 repeats)
        sched = PNDMScheduler(**common, skip_prk_steps=True)
    else:
        sched = DDIMScheduler(**common, clip_sample=False)
    return eval_mode(StableDiffusionPipeline(vae=tiny_vae(), text_encoder=clip_text(tokenizer), tokenizer=tokenizer,
                                         unet=unet, scheduler=sched, safety_checker=None, feature_extractor=None,
                                         requires_safety_checker=False))


def tiny_sdxl_pipeline(seed: int = 0):
    """A ``StableDiffusionXLPipeline`` with SDXL's U-Net layout (3 blocks: plain, then two with cross-attention,
    the deepest with 2 transformer layers; added text/time embedding) and two tiny CLIP text encoders."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16, 16), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 1, 2),
        cross_attention_dim=64, attention_head_dim=2, norm_num_groups=4, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=80)
    tokenizer = clip_tokenizer()
    return eval_mode(StableDiffusionXLPipeline(
        vae=tiny_vae(), text_encoder=clip_text(tokenizer), text_encoder_2=clip_text(tokenizer, projection=True),
        tokenizer=tokenizer, tokenizer_2=clip_tokenizer(), unet=unet,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         steps_offset=1, timestep_spacing="leading"),
        force_zeros_for_empty_prompt=True, add_watermarker=False))


def tiny_modelscope_pipeline(seed: int = 0):
    """A ``TextToVideoSDPipeline`` (ModelScope text-to-video) with a tiny ``UNet3DConditionModel`` (3 blocks of
    2 layers: resnet, temporal conv, spatial and temporal attention)."""
    from diffusers import DDIMScheduler, TextToVideoSDPipeline, UNet3DConditionModel

    torch.manual_seed(seed)
    unet = UNet3DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16, 16), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=4)
    tokenizer = clip_tokenizer()
    return eval_mode(TextToVideoSDPipeline(
        vae=tiny_vae(), text_encoder=clip_text(tokenizer), tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                                set_alpha_to_one=False, clip_sample=False)))


def tiny_svd_pipeline(seed: int = 0):
    """A ``StableVideoDiffusionPipeline`` (image-to-video, batched CFG, Karras Euler) with a tiny
    ``UNetSpatioTemporalConditionModel``, CLIP image encoder and temporal-decoder VAE."""
    from diffusers import (AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, StableVideoDiffusionPipeline,
                           UNetSpatioTemporalConditionModel)
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=8, in_channels=8, out_channels=4, block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=32, num_attention_heads=4, projection_class_embeddings_input_dim=96,
        addition_time_embed_dim=32)
    vae = AutoencoderKLTemporalDecoder(block_out_channels=(32, 32), in_channels=3, out_channels=3, latent_channels=4,
                                       down_block_types=("DownEncoderBlock2D",) * 2, layers_per_block=1)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=32, num_hidden_layers=1, num_attention_heads=4, image_size=224,
        intermediate_size=37, patch_size=32))  # the pipeline resizes to 224
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
        prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002, steps_offset=1, timestep_spacing="leading",
        timestep_type="continuous", use_karras_sigmas=True)
    return eval_mode(StableVideoDiffusionPipeline(
        vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler,
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32, do_center_crop=True)))


# -- one tiny pipeline per built-in adapter family (the method contract runs every method on each) ------------------
def _svd_call(pipe, steps: int, guidance: float = 5.0, per_prompt: int = 1, seed: int = 0, negative: str = "dog"):
    return frames_of(pipe(red_image(32), height=32, width=32, num_frames=3,
                        decode_chunk_size=3, num_inference_steps=steps, min_guidance_scale=min(guidance, 1.0),
                        max_guidance_scale=guidance, num_videos_per_prompt=per_prompt, output_type="np",
                        generator=torch.Generator().manual_seed(seed)))


#: adapter family -> (build the pipeline, call it → frames / images array, does it run CFG as two calls per step)
TINY_PIPELINES = {
    "Wan": (lambda: tiny_wan_pipeline(num_layers=3), video_call(dict(height=32, width=32, num_frames=5)), True),
    "CogVideoX": (lambda: tiny_cogvideox_pipeline(num_layers=3), video_call(dict(height=16, width=16, num_frames=9)),
                  False),
    "LTX-Video": (lambda: tiny_ltx_pipeline(num_layers=3), video_call(dict(height=32, width=32, num_frames=9)),
                  False),
    "Stable Diffusion U-Net": (tiny_sd_pipeline, video_call(dict(height=32, width=32), many="num_images_per_prompt"), False),
    "ModelScope U-Net": (tiny_modelscope_pipeline, video_call(dict(height=32, width=32, num_frames=3), many=None),
                         False),
    "Stable Video Diffusion U-Net": (tiny_svd_pipeline, _svd_call, False),
}

# -- families added one file each: tests/tiny_families/<family>.py defines TINY_PIPELINES for its adapters -------
for _path in sorted((Path(__file__).parent / "tiny_families").glob("[!_]*.py")):
    TINY_PIPELINES.update(importlib.import_module(f"tiny_families.{_path.stem}").TINY_PIPELINES)

"""Tiny random-weight image-to-video pipelines assembled offline (no network): the real diffusers classes
(``WanImageToVideoPipeline``, ``CogVideoXImageToVideoPipeline``, ``LTXImageToVideoPipeline``,
``LTXConditionPipeline``) with tiny configs, for the command line's ``--image`` / ``--images`` tests. Stable Video
Diffusion is :func:`tiny_diffusers.tiny_svd_pipeline`. Sizes that work: Wan 16 × 16 (9 frames), CogVideoX 16 × 16
only (learned positional embeddings fix the size), LTX 32 × 32 (9 frames)."""

from __future__ import annotations

import torch
from tiny_diffusers import tiny_ltx_pipeline, tiny_svd_pipeline  # noqa: F401 - SVD is an I2V pipeline too
from tiny_parts import WAN_TRANSFORMER, eval_mode, tiny_t5, wan_text_and_vae, word_tokenizer


def tiny_wan_i2v_pipeline(seed: int = 0, num_layers: int = 2):
    """A Wan 2.1-style ``WanImageToVideoPipeline``: the transformer takes 36 channels (16 noise + 4 mask + 16 image
    latents) and the CLIP image embedding (``image_dim`` = the tiny CLIP vision encoder's width)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanTransformer3DModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    parts = wan_text_and_vae(seed)
    transformer = WanTransformer3DModel(**{**WAN_TRANSFORMER, "in_channels": 36}, num_layers=num_layers, image_dim=4)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=4, projection_dim=4, num_hidden_layers=1, num_attention_heads=2, image_size=32,
        intermediate_size=16, patch_size=8))
    return eval_mode(WanImageToVideoPipeline(
        **parts, transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        image_encoder=image_encoder,
        image_processor=CLIPImageProcessor(crop_size=32, size=32)))


def tiny_cogvideox_i2v_pipeline(seed: int = 0, num_layers: int = 2):
    """A CogVideoX-5b-I2V-style ``CogVideoXImageToVideoPipeline``: 8 input channels (4 noise + 4 image latents),
    rotary and learned positional embeddings (hence one size: 16 × 16)."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXImageToVideoPipeline
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    tokenizer = word_tokenizer()
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=2,
        text_embed_dim=32, num_layers=num_layers, sample_width=2, sample_height=2, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=226, use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=True)
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4)
    return eval_mode(CogVideoXImageToVideoPipeline(tokenizer=tokenizer, text_encoder=tiny_t5(len(tokenizer)), vae=vae,
                                               transformer=transformer, scheduler=CogVideoXDDIMScheduler()))


def _ltx_components(seed: int, num_layers: int = 2) -> dict:
    return dict(tiny_ltx_pipeline(seed, num_layers=num_layers).components)


def tiny_ltx_i2v_pipeline(seed: int = 0):
    """An ``LTXImageToVideoPipeline``: the text-to-video LTX parts (the first frame conditions its tokens)."""
    from diffusers import LTXImageToVideoPipeline

    return eval_mode(LTXImageToVideoPipeline(**_ltx_components(seed)))


def tiny_ltx_condition_pipeline(seed: int = 0):
    """An ``LTXConditionPipeline`` (image conditions optional: without one it is text-to-video)."""
    from diffusers import LTXConditionPipeline

    return eval_mode(LTXConditionPipeline(**_ltx_components(seed)))


#: name → (build, size arguments for the command line: height, width, frames, a method that runs on it)
I2V_PIPELINES = {
    "wan-i2v": (tiny_wan_i2v_pipeline, ("16", "16", "5"), "fbcache"),
    "cogvideox-i2v": (tiny_cogvideox_i2v_pipeline, ("16", "16", "9"), "fbcache"),
    "ltx-i2v": (tiny_ltx_i2v_pipeline, ("32", "32", "9"), "fbcache"),
    "svd": (tiny_svd_pipeline, ("32", "32", "3"), "deepcache"),  # a U-Net: DeepCache
}

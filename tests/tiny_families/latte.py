"""The tiny random-weight Latte pipeline (``LattePipeline``, batched CFG) for the method contract."""

from __future__ import annotations

import torch
from tiny_parts import eval_mode, tiny_t5, tiny_vae, video_call, word_tokenizer


def tiny_latte_pipeline(seed: int = 0, num_layers: int = 2, frames: int = 3):
    """A ``LattePipeline`` with ``num_layers`` spatial + ``num_layers`` temporal blocks (learned sigma: 8 output
    channels), a tiny T5 and a tiny image VAE (×2): 16 × 16, ``frames`` frames → 3 latent frames of 4 × 4 patches."""
    from diffusers import DDIMScheduler, LattePipeline, LatteTransformer3DModel

    torch.manual_seed(seed)
    tokenizer = word_tokenizer()
    transformer = LatteTransformer3DModel(
        sample_size=8, num_layers=num_layers, patch_size=2, attention_head_dim=8, num_attention_heads=2,
        caption_channels=32, in_channels=4, cross_attention_dim=16, out_channels=8, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, video_length=frames)
    return eval_mode(LattePipeline(tokenizer=tokenizer, text_encoder=tiny_t5(len(tokenizer)), vae=tiny_vae(),
                                   transformer=transformer, scheduler=DDIMScheduler()))


LATTE_SIZE = dict(height=16, width=16, video_length=3, clean_caption=False)

TINY_PIPELINES = {"Latte": (tiny_latte_pipeline, video_call(LATTE_SIZE, many="num_images_per_prompt"), False)}

"""The tiny random-weight Mochi pipeline (``MochiPipeline``, batched CFG, flow matching) for the method contract."""

from __future__ import annotations

import torch
from tiny_parts import eval_mode, tiny_t5, video_call, word_tokenizer


def tiny_mochi_pipeline(seed: int = 0, num_layers: int = 3):
    """A ``MochiPipeline`` (flow matching) with a ``num_layers``-block transformer (the last one
    ``context_pre_only``), a tiny T5 and a tiny Mochi VAE (×8 spatial, ×6 temporal): 16 × 16, 7 frames → a
    2 × 2 × 2 latent, 2 tokens (the VAE needs 32 channels: 32 norm groups)."""
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel

    torch.manual_seed(seed)
    tokenizer = word_tokenizer()
    transformer = MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=num_layers, pooled_projection_dim=16,
        in_channels=12, text_embed_dim=32, time_embed_dim=4, max_sequence_length=16)
    vae = AutoencoderKLMochi(latent_channels=12, out_channels=3, encoder_block_out_channels=(32, 32, 32, 32),
                             decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1))
    return eval_mode(MochiPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                                   text_encoder=tiny_t5(len(tokenizer)), tokenizer=tokenizer, transformer=transformer))


MOCHI_SIZE = dict(height=16, width=16, num_frames=7, max_sequence_length=16)

TINY_PIPELINES = {"Mochi": (tiny_mochi_pipeline, video_call(MOCHI_SIZE), False)}

"""The tiny random-weight Allegro pipeline (``AllegroPipeline``, batched CFG) for the method contract."""

from __future__ import annotations

import torch
from tiny_parts import eval_mode, tiny_t5, video_call, word_tokenizer


def tiny_allegro_pipeline(seed: int = 0, num_layers: int = 3):
    """An ``AllegroPipeline`` with a ``num_layers``-block transformer, a tiny T5 and a tiny Allegro VAE (×8
    spatial, ×4 temporal, tiled decoding as diffusers' own test): 32 × 32, 8 frames → a 2 × 4 × 4 latent."""
    from diffusers import AllegroPipeline, AllegroTransformer3DModel, AutoencoderKLAllegro, DDIMScheduler

    torch.manual_seed(seed)
    tokenizer = word_tokenizer()
    transformer = AllegroTransformer3DModel(
        num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, num_layers=num_layers,
        cross_attention_dim=24, sample_width=4, sample_height=4, sample_frames=2, caption_channels=32)
    vae = AutoencoderKLAllegro(
        in_channels=3, out_channels=3, down_block_types=("AllegroDownBlock3D",) * 4,
        up_block_types=("AllegroUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4)
    vae.enable_tiling()  # diffusers' Allegro VAE decodes only tiled; its tile (24 frames, 320 px) would leave a
    vae.kernel = vae.stride = (8, 32, 32)  # tiny video undecoded (all zeros): one tile covers the whole of it
    vae.tile_overlap_t = vae.tile_overlap_h = vae.tile_overlap_w = 0
    return eval_mode(AllegroPipeline(tokenizer=tokenizer, text_encoder=tiny_t5(len(tokenizer)), vae=vae,
                                     transformer=transformer, scheduler=DDIMScheduler()))


ALLEGRO_SIZE = dict(height=32, width=32, num_frames=8, max_sequence_length=16, clean_caption=False)

TINY_PIPELINES = {"Allegro": (tiny_allegro_pipeline, video_call(ALLEGRO_SIZE), False)}

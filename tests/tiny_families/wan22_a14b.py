"""Wan 2.2 A14B in miniature: a ``WanPipeline`` with two experts of the Wan architecture — ``transformer`` for the
high-noise steps, ``transformer_2`` for the low-noise ones — switching at ``boundary_ratio`` 0.875 (the value of
Wan2.2-T2V-A14B-Diffusers' model_index.json; I2V uses 0.9)."""

from __future__ import annotations

import torch
from tiny_parts import eval_mode, video_call

BOUNDARY_RATIO = 0.875


def tiny_wan22_a14b_pipeline(seed: int = 0, num_layers: int = 3, boundary_ratio: float | None = BOUNDARY_RATIO):
    from diffusers import WanPipeline, WanTransformer3DModel

    from tiny_diffusers import tiny_wan_pipeline

    base = tiny_wan_pipeline(seed=seed, num_layers=num_layers)
    torch.manual_seed(seed + 7)
    low_noise = WanTransformer3DModel.from_config(base.transformer.config)  # the same architecture, other weights
    return eval_mode(WanPipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae,
                                 transformer=base.transformer, transformer_2=low_noise, scheduler=base.scheduler,
                                 boundary_ratio=boundary_ratio))


TINY_PIPELINES = {
    "Wan 2.2 A14B": (tiny_wan22_a14b_pipeline, video_call(dict(height=32, width=32, num_frames=5)), True),
}

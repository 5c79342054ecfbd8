"""Tiny SkyReels-V2 pipelines: a 3-block ``SkyReelsV2Transformer3DModel`` (hidden 24), the tiny UMT5 encoder and
Wan VAE; split CFG (cond, then uncond, per step).

Like the other Wan-family pipelines but ``WanPipeline``, the SkyReels-V2 pipelines clean a text prompt with
``ftfy`` unconditionally (not installed here), so the calls pass ``prompt_embeds`` / ``negative_prompt_embeds``
made exactly as the pipelines' ``_get_t5_prompt_embeds`` makes them (512 tokens: the image-to-video attention
takes the first ``len − 512`` context tokens as the image's). The contract entry is ``SkyReelsV2Pipeline`` with
deterministic flow-matching Euler at shift 8 (so HSA can run; the pipelines' own ``UniPCMultistepScheduler`` is
used by the tests of the other pipelines, tests/adapters/test_skyreels_v2.py).
"""

from __future__ import annotations

import torch
from tiny_families.wan_vace import t5_embeds
from tiny_parts import WAN_TRANSFORMER, eval_mode, frames_of, red_image, wan_text_and_vae

SIZE = dict(height=32, width=32, num_frames=5)


def _parts(seed: int, **transformer):
    from diffusers import SkyReelsV2Transformer3DModel

    parts = wan_text_and_vae(seed)
    config = {**WAN_TRANSFORMER, "num_layers": 3, **transformer}
    return dict(**parts, transformer=SkyReelsV2Transformer3DModel(**config))


def unipc():
    """The SkyReels-V2 pipelines' own sampler: UniPC on flow sigmas, shift 8."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0)


def tiny_skyreels_v2_pipeline(seed: int = 0, scheduler=None):
    from diffusers import FlowMatchEulerDiscreteScheduler, SkyReelsV2Pipeline

    return eval_mode(SkyReelsV2Pipeline(**_parts(seed),
                                        scheduler=scheduler or FlowMatchEulerDiscreteScheduler(shift=8.0)))


def tiny_skyreels_v2_i2v_pipeline(seed: int = 0):
    """``SkyReelsV2ImageToVideoPipeline``: 36 input channels (latents, mask, first-frame latents) and a tiny CLIP
    image encoder whose states the cross-attention's added K/V read."""
    from diffusers import SkyReelsV2ImageToVideoPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    parts = _parts(seed, in_channels=36, image_dim=32, added_kv_proj_dim=24)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        intermediate_size=37, patch_size=8))
    processor = CLIPImageProcessor(crop_size=32, size=32, do_center_crop=True)
    return eval_mode(SkyReelsV2ImageToVideoPipeline(**parts, image_encoder=image_encoder, image_processor=processor,
                                                    scheduler=unipc()))


def tiny_skyreels_v2_df_pipeline(kind: str = "t2v", seed: int = 0):
    """A diffusion-forcing pipeline (``kind``: ``t2v``, ``i2v`` or ``v2v``) with fps conditioning
    (``inject_sample_info``) and the pipelines' UniPC sampler."""
    import diffusers

    name = {"t2v": "SkyReelsV2DiffusionForcingPipeline", "i2v": "SkyReelsV2DiffusionForcingImageToVideoPipeline",
            "v2v": "SkyReelsV2DiffusionForcingVideoToVideoPipeline"}[kind]
    return eval_mode(getattr(diffusers, name)(**_parts(seed, inject_sample_info=True), scheduler=unipc()))


def embeds(pipe, negative: str, rows: int) -> dict:
    return dict(prompt_embeds=t5_embeds(pipe, "a cat surfing", rows),
                negative_prompt_embeds=t5_embeds(pipe, negative, rows))


def skyreels_call(pipe, steps: int, guidance: float = 5.0, per_prompt: int = 1, seed: int = 0, negative: str = "dog",
                  **extra):
    """A call of any SkyReels-V2 pipeline: ``extra`` adds its own inputs (``image``, ``video``, ``ar_step`` …)."""
    return frames_of(pipe(prompt=None, **embeds(pipe, negative, per_prompt), num_inference_steps=steps, guidance_scale=guidance,
                          output_type="np", generator=torch.Generator().manual_seed(seed), **{**SIZE, **extra}))


def i2v_call(pipe, steps, guidance=5.0, per_prompt=1, seed=0, negative="dog", **extra):
    return skyreels_call(pipe, steps, guidance, per_prompt, seed, negative, image=red_image(32), **extra)


TINY_PIPELINES = {"SkyReels-V2": (tiny_skyreels_v2_pipeline, skyreels_call, True)}

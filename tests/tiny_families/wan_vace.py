"""Tiny ``WanVACEPipeline``: a 3-block ``WanVACETransformer3DModel`` with control (VACE) blocks after main blocks
0 and 2, a tiny UMT5 encoder and the tiny Wan VAE; split CFG (cond, then uncond, per step).

The call passes ``prompt_embeds`` / ``negative_prompt_embeds`` made by the pipeline's own tokenizer and tiny UMT5
exactly as ``_get_t5_prompt_embeds`` makes them (:func:`t5_embeds`): the Wan-family pipelines other than
``WanPipeline`` clean a text prompt with ``ftfy`` unconditionally, and ``ftfy`` is not installed here.

The call gives a control video (a plain red clip) and a mask (generate the right half), so the VACE branch carries
a real control signal. ``WanVACEPipeline`` encodes its control video for one video only (diffusers 0.42:
``conditioning_latents`` keep batch 1 while ``num_videos_per_prompt`` multiplies the latents, and the transformer
then fails), so ``call.many`` is false and the contract does not ask for two videos per prompt.
"""

from __future__ import annotations

import torch
from tiny_parts import WAN_TRANSFORMER, eval_mode, frames_of, wan_text_and_vae

SIZE = dict(height=32, width=32, num_frames=5)


def tiny_wan_vace_pipeline(seed: int = 0, num_layers: int = 3, vace_layers=(0, 2)):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanVACEPipeline, WanVACETransformer3DModel

    parts = wan_text_and_vae(seed)
    # control channels: inactive + reactive latents (2 × 16) and the mask folded to 8 × 8 = 64 channels
    transformer = WanVACETransformer3DModel(**WAN_TRANSFORMER, num_layers=num_layers, vace_layers=list(vace_layers),
                                            vace_in_channels=96)
    return eval_mode(WanVACEPipeline(**parts, transformer=transformer,
                                     scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0)))


def t5_embeds(pipe, text: str, rows: int = 1, max_sequence_length: int = 512) -> torch.Tensor:
    """``text`` embedded as the Wan-family pipelines' ``_get_t5_prompt_embeds`` does (tokens to
    ``max_sequence_length``, the encoder's states cut at the text's length and zero-padded), for ``rows`` videos."""
    inputs = pipe.tokenizer([text], padding="max_length", max_length=max_sequence_length, truncation=True,
                            add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    with torch.no_grad():
        states = pipe.text_encoder(inputs.input_ids, inputs.attention_mask).last_hidden_state
    length = int(inputs.attention_mask.gt(0).sum())
    states = torch.cat([states[:, :length], states.new_zeros(1, max_sequence_length - length, states.shape[-1])], 1)
    return states.repeat(rows, 1, 1)


def control_video(size: int = 32, frames: int = 5):
    """A plain red control clip and a mask that asks to generate its right half."""
    from PIL import Image

    video = [Image.new("RGB", (size, size), (200, 30, 30)) for _ in range(frames)]
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 2, 0, size, size))
    return video, [mask] * frames


def vace_call(pipe, steps: int, guidance: float = 5.0, per_prompt: int = 1, seed: int = 0, negative: str = "dog"):
    video, mask = control_video(SIZE["height"], SIZE["num_frames"])
    return frames_of(pipe(prompt_embeds=t5_embeds(pipe, "a cat surfing"), negative_prompt_embeds=t5_embeds(pipe, negative),
                          video=video, mask=mask, num_inference_steps=steps, guidance_scale=guidance,
                          output_type="np", generator=torch.Generator().manual_seed(seed), **SIZE))


vace_call.many = False

TINY_PIPELINES = {"WanVACE": (tiny_wan_vace_pipeline, vace_call, True)}

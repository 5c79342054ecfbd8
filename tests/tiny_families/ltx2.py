"""LTX-2 (``LTX2VideoTransformer3DModel``): the real ``LTX2Pipeline`` (and ``LTX2ImageToVideoPipeline``,
``LTX2ConditionPipeline`` in tests/adapters/test_ltx2.py) with every
component tiny and random: a 2-block audio-video transformer (video width 16, audio width 8), a tiny Gemma-3
text encoder built from ``transformers``' config classes (``Gemma3ForConditionalGeneration``: 1 text layer of width
32 with the in-memory word tokenizer's vocabulary, and a 1-layer SigLIP vision tower the pipeline never calls), the
text connectors, a video VAE compressing 4× in space and time, the audio VAE and the vocoder.

The tiny word tokenizer works with the pipeline's Gemma prompt path as it is (the pipeline pads on the left and
takes ``max_sequence_length`` tokens; there is no chat template on this path), so prompts are given as text. Image-to-video calls pass ``image_crf=0``: the pipeline's H.264 re-compression of
the conditioning image needs PyAV, which is not installed here.

32 × 32 pixels and 9 frames give 3 × 8 × 8 = 192 video tokens and 9 audio tokens. ``call`` returns, per video, its
frames and its audio waveform flattened side by side, so every check of the method contract (bit-identical
disable, finite output) covers both streams. The contract's call runs CFG only (one batched forward per step:
spatio-temporal and modality guidance off); tests/adapters/test_ltx2.py runs the pipeline's default three forwards
per step (CFG, STG and modality isolation) too.
"""

from __future__ import annotations

import numpy as np
import torch
from tiny_parts import eval_mode, red_image, word_tokenizer

SIZE = dict(height=32, width=32, num_frames=9, frame_rate=25.0)


def tiny_gemma3(vocab_size: int, hidden_size: int = 32):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    text = Gemma3TextConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=37, num_hidden_layers=1,
                            num_attention_heads=4, num_key_value_heads=1, head_dim=8, max_position_embeddings=64,
                            sliding_window=16, pad_token_id=0)
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14)
    return Gemma3ForConditionalGeneration(Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4))


def tiny_ltx2_components(seed: int = 0, num_layers: int = 2) -> dict:
    from diffusers import (AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, FlowMatchEulerDiscreteScheduler,
                           LTX2VideoTransformer3DModel)
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    torch.manual_seed(seed)
    tokenizer = word_tokenizer()
    text_encoder = tiny_gemma3(len(tokenizer))
    transformer = LTX2VideoTransformer3DModel(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
        audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=num_layers, caption_channels=32,
        rope_double_precision=False, rope_type="split", vae_scale_factors=(4, 4, 4))  # the tiny VAE's factors
    connectors = LTX2TextConnectors(
        caption_channels=32, text_proj_in_factor=2, video_connector_num_attention_heads=4,
        video_connector_attention_head_dim=8, video_connector_num_layers=1, video_connector_num_learnable_registers=None,
        audio_connector_num_attention_heads=4, audio_connector_attention_head_dim=8, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None, connector_rope_base_seq_len=32, rope_double_precision=False,
        rope_type="split")
    vae = AutoencoderKLLTX2Video(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
        layers_per_block=(1, 1), decoder_layers_per_block=(1, 1, 1), spatio_temporal_scaling=(True, True),
        decoder_spatio_temporal_scaling=(True, True), decoder_inject_noise=(False, False, False),
        downsample_type=("spatial", "spatiotemporal"), upsample_residual=(False, False), upsample_factor=(1, 1),
        timestep_conditioning=False, patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False)
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=None, in_channels=2,
        resolution=32, latent_channels=2, norm_type="pixel", causality_axis="height", dropout=0.0,
        mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=8)
    vocoder = LTX2Vocoder(in_channels=16, hidden_channels=32, out_channels=2, upsample_kernel_sizes=[4, 4],
                          upsample_factors=[2, 2], resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]],
                          output_sampling_rate=16000)
    return dict(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, audio_vae=audio_vae, text_encoder=text_encoder,
                tokenizer=tokenizer, connectors=connectors, transformer=transformer, vocoder=vocoder)


def tiny_ltx2_pipeline(seed: int = 0, num_layers: int = 2):
    """An ``LTX2Pipeline`` (text to video + audio, batched CFG)."""
    from diffusers import LTX2Pipeline

    return eval_mode(LTX2Pipeline(**tiny_ltx2_components(seed, num_layers)))


def tiny_ltx2_i2v_pipeline(seed: int = 0, num_layers: int = 2):
    """An ``LTX2ImageToVideoPipeline`` (the first frame given: per-token video timesteps)."""
    from diffusers import LTX2ImageToVideoPipeline

    return eval_mode(LTX2ImageToVideoPipeline(**tiny_ltx2_components(seed, num_layers)))


def frames_and_audio(output) -> np.ndarray:
    """``[videos, frame values + audio samples]``: both outputs of an LTX-2 call, one row per video."""
    frames = np.asarray(output.frames)
    audio = output.audio.float().cpu().numpy() if isinstance(output.audio, torch.Tensor) else np.asarray(output.audio)
    return np.concatenate([frames.reshape(frames.shape[0], -1), audio.reshape(audio.shape[0], -1)], axis=1)


def ltx2_call(image: bool = False, extra_guidance: bool = False):
    """``call(pipe, steps, guidance, per_prompt, seed, negative)`` for the method contract. ``extra_guidance``:
    the pipeline's spatio-temporal and modality guidance on (three forwards per step) instead of off."""
    guidance_off = {} if extra_guidance else dict(stg_scale=0.0, audio_stg_scale=0.0, modality_scale=1.0,
                                                  audio_modality_scale=1.0)

    def call(pipe, steps: int, guidance: float = 5.0, per_prompt: int = 1, seed: int = 0, negative: str = "dog"):
        return frames_and_audio(pipe(
            **({"image": red_image(32), "image_crf": 0} if image else {}), prompt="a cat surfing", negative_prompt=negative,
            num_inference_steps=steps, guidance_scale=guidance, audio_guidance_scale=guidance,
            num_videos_per_prompt=per_prompt, max_sequence_length=16, output_type="np",
            generator=torch.Generator().manual_seed(seed), **guidance_off, **SIZE))
    call.many = True
    return call


TINY_PIPELINES = {"LTX-2": (tiny_ltx2_pipeline, ltx2_call(), False)}

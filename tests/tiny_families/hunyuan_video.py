"""Tiny random-weight HunyuanVideo pipelines (real diffusers pipeline classes, tiny configs, built offline):
``HunyuanVideoPipeline``, ``HunyuanVideoImageToVideoPipeline``, ``HunyuanVideoFramepackPipeline``,
``HunyuanVideo15Pipeline`` and ``HunyuanVideo15ImageToVideoPipeline``.

Text encoders: HunyuanVideo and FramePack get a tiny ``LlamaModel`` and a tiny CLIP text model over the in-memory
word tokenizer; the pipelines' own Llama prompt template is used, with ``crop_start`` set to the number of tokens the
word tokenizer makes of the template's system part (95 is Llama's count). HunyuanVideo-1.5 gets a tiny
``Qwen2_5_VLTextModel`` (the word tokenizer with a plain chat template; the crop is again the system message's token
count, 108 in Qwen's tokenizer) and a tiny ``T5EncoderModel`` with the real ``ByT5Tokenizer``; its pipelines'
sequence lengths (1000 Qwen, 256 ByT5 and 729 SigLIP tokens) are cut to 16 / 8 / 9 so a call stays well under a
second. ``HunyuanVideoImageToVideoPipeline`` encodes its prompt with a LLaVA model over a 576-token image prompt
template, impractical in miniature: it is given ``prompt_embeds`` / ``pooled_prompt_embeds`` (fixed random tensors,
one set per prompt word) and no text encoders.

CFG: HunyuanVideo's and FramePack's ``guidance_scale`` is the distilled guidance *embedding*; real CFG, two denoiser
calls per step (cond, uncond), is ``true_cfg_scale`` with a negative prompt, which the tiny calls map the contract's
``guidance`` to. HunyuanVideo-1.5 guides through its ``ClassifierFreeGuidance`` guider (also two calls per step,
named ``pred_cond`` / ``pred_uncond``), rebuilt with the call's ``guidance``.
"""

from __future__ import annotations

import torch
from tiny_parts import eval_mode, frames_of, red_image, tiny_t5, word_tokenizer



def _llama_template(tokenizer) -> dict:
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    system = DEFAULT_PROMPT_TEMPLATE["template"].split("{}")[0]
    return {"template": DEFAULT_PROMPT_TEMPLATE["template"], "crop_start": len(tokenizer(system).input_ids)}


def _tiny_llama(vocab_size: int, hidden: int = 16):
    from transformers import LlamaConfig, LlamaModel

    return LlamaModel(LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=37,
                                  num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2,
                                  pad_token_id=0, bos_token_id=1, eos_token_id=1))  # hidden_states[-3]: 2 layers


def _tiny_clip(vocab_size: int, hidden: int = 8):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=37,
                                        num_attention_heads=4, num_hidden_layers=1, max_position_embeddings=77,
                                        pad_token_id=0, bos_token_id=1, eos_token_id=1))  # the pipeline pads to 77


def _tiny_hunyuan_vae():
    from diffusers import AutoencoderKLHunyuanVideo

    return AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4, spatial_compression_ratio=8, temporal_compression_ratio=4, mid_block_add_attention=True)


def _transformer_config(num_layers: int, num_single_layers: int) -> dict:
    return dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=num_layers,
                num_single_layers=num_single_layers, num_refiner_layers=1, patch_size=2, patch_size_t=1,
                guidance_embeds=True, text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 2, 4))


def tiny_hunyuan_video_pipeline(seed: int = 0, num_layers: int = 2, num_single_layers: int = 1):
    """A ``HunyuanVideoPipeline``: 2 dual-stream + 1 single-stream blocks (hidden 16), tiny Llama + CLIP, tiny VAE."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline, HunyuanVideoTransformer3DModel

    torch.manual_seed(seed)
    tokenizer = word_tokenizer()
    transformer = HunyuanVideoTransformer3DModel(**_transformer_config(num_layers, num_single_layers))
    pipe = HunyuanVideoPipeline(text_encoder=_tiny_llama(len(tokenizer)), tokenizer=tokenizer, transformer=transformer,
                                vae=_tiny_hunyuan_vae(), scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
                                text_encoder_2=_tiny_clip(len(tokenizer)), tokenizer_2=word_tokenizer())
    return eval_mode(pipe)


def hunyuan_video_call(size: dict):
    """``call(pipe, steps, guidance, per_prompt, seed, negative)`` of HunyuanVideoPipeline (``guidance`` →
    ``true_cfg_scale``: two calls per step above 1)."""

    def call(pipe, steps: int, guidance: float = 5.0, per_prompt: int = 1, seed: int = 0, negative: str = "dog"):
        return frames_of(pipe(prompt="a cat surfing", negative_prompt=negative, true_cfg_scale=guidance,
                              num_inference_steps=steps, num_videos_per_prompt=per_prompt,
                              prompt_template=_llama_template(pipe.tokenizer), max_sequence_length=16,
                              output_type="np", generator=torch.Generator().manual_seed(seed), **size))
    call.many = True
    return call


def tiny_hunyuan_i2v_pipeline(seed: int = 0, num_layers: int = 2, num_single_layers: int = 1):
    """A ``HunyuanVideoImageToVideoPipeline`` with HunyuanVideo-I2V's token-replace blocks (first-frame tokens get
    their own modulation) and no text encoders (see the module docs: called with prompt embeddings)."""
    from diffusers import (FlowMatchEulerDiscreteScheduler, HunyuanVideoImageToVideoPipeline,
                           HunyuanVideoTransformer3DModel)

    torch.manual_seed(seed)
    transformer = HunyuanVideoTransformer3DModel(**{**_transformer_config(num_layers, num_single_layers),
                                                    "image_condition_type": "token_replace"})
    pipe = HunyuanVideoImageToVideoPipeline(
        text_encoder=None, tokenizer=None, transformer=transformer, vae=_tiny_hunyuan_vae(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=None, tokenizer_2=None,
        image_processor=None)
    return eval_mode(pipe)


def _prompt_embeds(prompt: str, per_prompt: int, length: int = 16):
    """Fixed random (LLaVA, CLIP-pooled) embeddings of a prompt: one vector per word, then padding (masked)."""
    from tiny_parts import WORDS

    words = prompt.split()
    generator = torch.Generator().manual_seed(sum(WORDS.index(w) + 1 for w in words))
    embeds = torch.zeros(1, length, 16)
    embeds[:, :len(words)] = torch.randn(1, len(words), 16, generator=generator)
    mask = torch.zeros(1, length)
    mask[:, :len(words)] = 1
    pooled = torch.randn(1, 8, generator=generator)
    return (embeds.repeat(per_prompt, 1, 1), pooled.repeat(per_prompt, 1), mask.repeat(per_prompt, 1))


def hunyuan_i2v_call(pipe, steps: int, guidance: float = 5.0, per_prompt: int = 1, seed: int = 0,
                     negative: str = "dog"):
    embeds, pooled, mask = _prompt_embeds("a cat surfing", per_prompt)
    negative_embeds, negative_pooled, negative_mask = _prompt_embeds(negative, per_prompt)
    return frames_of(pipe(image=red_image(32), prompt_embeds=embeds, pooled_prompt_embeds=pooled,
                          prompt_attention_mask=mask, negative_prompt_embeds=negative_embeds,
                          negative_pooled_prompt_embeds=negative_pooled, negative_prompt_attention_mask=negative_mask,
                          true_cfg_scale=guidance, height=32, width=32, num_frames=9, num_inference_steps=steps,
                          output_type="np", generator=torch.Generator().manual_seed(seed)))


def tiny_framepack_pipeline(seed: int = 0, num_layers: int = 2, num_single_layers: int = 1):
    """A ``HunyuanVideoFramepackPipeline``: FramePack's transformer (history patch embedders, SigLIP image
    projection), tiny Llama + CLIP, a tiny SigLIP image encoder."""
    from diffusers import (FlowMatchEulerDiscreteScheduler, HunyuanVideoFramepackPipeline,
                           HunyuanVideoFramepackTransformer3DModel)
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    tokenizer = word_tokenizer()
    transformer = HunyuanVideoFramepackTransformer3DModel(
        **_transformer_config(num_layers, num_single_layers), has_image_proj=True, image_proj_dim=32,
        has_clean_x_embedder=True)
    image_encoder = SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                                         num_attention_heads=4, image_size=32, patch_size=8))
    pipe = HunyuanVideoFramepackPipeline(
        text_encoder=_tiny_llama(len(tokenizer)), tokenizer=tokenizer, transformer=transformer,
        vae=_tiny_hunyuan_vae(), scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=_tiny_clip(len(tokenizer)), tokenizer_2=word_tokenizer(), image_encoder=image_encoder,
        feature_extractor=SiglipImageProcessor(size={"height": 32, "width": 32}))
    return eval_mode(pipe)


def framepack_call(num_frames: int = 5, latent_window_size: int = 2):
    """``call(...)`` of HunyuanVideoFramepackPipeline. The defaults sample one section (a 2-latent-frame window
    is 5 frames); more frames sample several sections, one denoising loop each. ``call.many`` is false: the
    pipeline makes its latents for ``batch_size`` videos, not ``batch_size · num_videos_per_prompt``, so two videos
    per prompt do not run."""

    def call(pipe, steps: int, guidance: float = 5.0, per_prompt: int = 1, seed: int = 0, negative: str = "dog"):
        return frames_of(pipe(image=red_image(32), prompt="a cat surfing", negative_prompt=negative,
                              true_cfg_scale=guidance, num_inference_steps=steps, height=32, width=32,
                              num_frames=num_frames, latent_window_size=latent_window_size,
                              prompt_template=_llama_template(pipe.tokenizer), max_sequence_length=16,
                              output_type="np", generator=torch.Generator().manual_seed(seed)))
    call.many = False
    return call


def _tiny_qwen(vocab_size: int):
    from transformers import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    return Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        vocab_size=vocab_size, hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, rope_theta=1000000.0, pad_token_id=0, bos_token_id=1, eos_token_id=1,
        rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}))


def _hunyuan15_parts(seed: int, num_layers: int, task_type: str):
    from diffusers import AutoencoderKLHunyuanVideo15, HunyuanVideo15Transformer3DModel
    from transformers import ByT5Tokenizer

    torch.manual_seed(seed)
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=num_layers,
        num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=16, text_embed_2_dim=32,
        image_embed_dim=12, rope_axes_dim=(2, 2, 4), target_size=16, task_type=task_type)
    vae = AutoencoderKLHunyuanVideo15(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16),
                                      layers_per_block=1, spatial_compression_ratio=4, temporal_compression_ratio=2,
                                      downsample_match_channel=False, upsample_match_channel=False)
    tokenizer = word_tokenizer()
    tokenizer.chat_template = "{% for message in messages %}{{ message['content'] }} {% endfor %}"
    tokenizer_2 = ByT5Tokenizer()
    return transformer, vae, tokenizer, tokenizer_2


def _shrink_hunyuan15(pipe):
    """The sequence lengths cut to tiny ones, and the crop set to the system message's token count (see the module
    docs)."""
    pipe.tokenizer_max_length, pipe.tokenizer_2_max_length, pipe.vision_num_semantic_tokens = 16, 8, 9
    pipe.prompt_template_encode_start_idx = len(pipe.tokenizer(pipe.system_message + " ").input_ids)
    return eval_mode(pipe)


def tiny_hunyuan15_pipeline(seed: int = 0, num_layers: int = 3):
    """A ``HunyuanVideo15Pipeline``: 3 dual-stream blocks (hidden 16), tiny Qwen2.5-VL text model and ByT5 (T5)
    encoder, tiny HunyuanVideo-1.5 VAE (4× spatial, 2× temporal)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideo15Pipeline
    from diffusers.guiders import ClassifierFreeGuidance

    transformer, vae, tokenizer, tokenizer_2 = _hunyuan15_parts(seed, num_layers, "t2v")
    pipe = HunyuanVideo15Pipeline(
        text_encoder=_tiny_qwen(len(tokenizer)), tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=tiny_t5(len(tokenizer_2)),
        tokenizer_2=tokenizer_2, guider=ClassifierFreeGuidance(guidance_scale=5.0))
    return _shrink_hunyuan15(pipe)


def _set_guidance(pipe, guidance: float) -> None:
    from diffusers.guiders import ClassifierFreeGuidance

    pipe.guider = ClassifierFreeGuidance(guidance_scale=guidance)


def hunyuan15_call(size: dict):
    """``call(...)`` of HunyuanVideo15Pipeline. ``call.many`` is false: the pipeline makes its (zero) image
    embeddings for ``batch_size`` rows, not ``batch_size · num_videos_per_prompt``, so two videos per prompt do not
    run (diffusers 0.42.1)."""

    def call(pipe, steps: int, guidance: float = 5.0, per_prompt: int = 1, seed: int = 0, negative: str = "dog"):
        _set_guidance(pipe, guidance)
        return frames_of(pipe(prompt="a cat surfing", negative_prompt=negative, num_inference_steps=steps,
                              num_videos_per_prompt=per_prompt, output_type="np",
                              generator=torch.Generator().manual_seed(seed), **size))
    call.many = False
    return call


def tiny_hunyuan15_i2v_pipeline(seed: int = 0, num_layers: int = 3):
    """A ``HunyuanVideo15ImageToVideoPipeline``: as :func:`tiny_hunyuan15_pipeline`, with a tiny SigLIP image
    encoder (12 wide, the transformer's ``image_embed_dim``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideo15ImageToVideoPipeline
    from diffusers.guiders import ClassifierFreeGuidance
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    transformer, vae, tokenizer, tokenizer_2 = _hunyuan15_parts(seed, num_layers, "i2v")
    image_encoder = SiglipVisionModel(SiglipVisionConfig(hidden_size=12, intermediate_size=37, num_hidden_layers=1,
                                                         num_attention_heads=2, image_size=32, patch_size=8))
    pipe = HunyuanVideo15ImageToVideoPipeline(
        text_encoder=_tiny_qwen(len(tokenizer)), tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=tiny_t5(len(tokenizer_2)),
        tokenizer_2=tokenizer_2, guider=ClassifierFreeGuidance(guidance_scale=5.0), image_encoder=image_encoder,
        feature_extractor=SiglipImageProcessor(size={"height": 32, "width": 32}))
    return _shrink_hunyuan15(pipe)


def hunyuan15_i2v_call(pipe, steps: int, guidance: float = 5.0, per_prompt: int = 1, seed: int = 0,
                       negative: str = "dog"):
    _set_guidance(pipe, guidance)
    return frames_of(pipe(image=red_image(16), prompt="a cat surfing", negative_prompt=negative, num_frames=9,
                          num_inference_steps=steps, output_type="np", generator=torch.Generator().manual_seed(seed)))


#: adapter family -> (build the pipeline, call it → frames array, does it run CFG as two calls per step)
TINY_PIPELINES = {
    "HunyuanVideo": (tiny_hunyuan_video_pipeline, hunyuan_video_call(dict(height=32, width=32, num_frames=9)), True),
    "HunyuanVideo Framepack": (tiny_framepack_pipeline, framepack_call(), True),
    "HunyuanVideo-1.5": (tiny_hunyuan15_pipeline, hunyuan15_call(dict(height=16, width=16, num_frames=9)), True),
}

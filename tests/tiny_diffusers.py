"""Tiny random-weight diffusers pipelines assembled offline (no network): real pipeline classes, tiny configs."""

from __future__ import annotations

import torch

WORDS = ["a", "cat", "dog", "surfing", "running", "red", "circle", "moving", "left", "on", "the", "beach"]


def word_tokenizer():
    """A word-level fast tokenizer built in memory, with T5-style special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def _eval(pipe):
    """Modules built from configs start in training mode (T5 dropout); from_pretrained would set eval mode."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_wan_pipeline(seed: int = 0, num_layers: int = 2):
    """A ``WanPipeline`` with a 2-block ``WanTransformer3DModel``, a tiny UMT5 encoder and a tiny Wan VAE."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    tokenizer = word_tokenizer()
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=32,
                                               num_layers=1, num_heads=4, relative_attention_num_buckets=8))
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                        in_channels=16, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32,
                                        num_layers=num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                        rope_max_seq_len=32)
    return _eval(WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                             scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0)))


def _tiny_t5(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
                                   relative_attention_num_buckets=8))


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
    return _eval(CogVideoXPipeline(tokenizer=tokenizer, text_encoder=_tiny_t5(len(tokenizer)), vae=vae,
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
    return _eval(LTXPipeline(tokenizer=tokenizer, text_encoder=_tiny_t5(len(tokenizer)), vae=vae,
                             transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler()))


# builder and a small video size for each family, for tests that run every adapter inside its real pipeline
VIDEO_FAMILIES = {
    "wan": (tiny_wan_pipeline, dict(height=16, width=16, num_frames=5)),
    "cogvideox": (tiny_cogvideox_pipeline, dict(height=16, width=16, num_frames=9)),
    "ltx": (tiny_ltx_pipeline, dict(height=32, width=32, num_frames=9)),
}

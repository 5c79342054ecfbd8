"""Parts shared by the tiny random-weight pipelines (tests/tiny_diffusers.py and tests/tiny_families/*.py): an
in-memory word tokenizer, tiny text encoders and VAEs, and the call that runs a pipeline for the method contract."""

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


def eval_mode(pipe):
    """Modules built from configs start in training mode (T5 dropout); from_pretrained would set eval mode."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_t5(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
                                   relative_attention_num_buckets=8))


def clip_text(tokenizer, hidden_size: int = 32, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=37,
                            num_attention_heads=4, num_hidden_layers=1, max_position_embeddings=16,
                            projection_dim=hidden_size, pad_token_id=0, bos_token_id=1, eos_token_id=1)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def clip_tokenizer():
    tokenizer = word_tokenizer()
    tokenizer.model_max_length = 16
    return tokenizer


def tiny_vae(latent_channels: int = 4):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 8), in_channels=3, out_channels=3, latent_channels=latent_channels,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=4, layers_per_block=1)


def frames_of(output):
    import numpy as np

    return np.asarray(output.frames if hasattr(output, "frames") else output.images)


def video_call(size: dict, many: str | None = "num_videos_per_prompt"):

    """``call(pipe, steps, guidance, per_prompt, seed, negative)`` → the frames array of a text-to-video call at
    ``size``; ``many`` is the pipeline's videos-per-prompt argument (``None``: it has none, and ``call.many`` is
    false so the contract does not ask for two videos)."""

    def call(pipe, steps: int, guidance: float = 5.0, per_prompt: int = 1, seed: int = 0, negative: str = "dog"):
        return frames_of(pipe(prompt="a cat surfing", negative_prompt=negative, num_inference_steps=steps,
                            guidance_scale=guidance, output_type="np", generator=torch.Generator().manual_seed(seed),
                            **({many: per_prompt} if many else {}), **size))
    call.many = many is not None
    return call



def red_image(size: int = 32):
    """A plain first frame for image-to-video pipelines."""
    from PIL import Image

    return Image.new("RGB", (size, size), (200, 30, 30))


#: the tiny Wan-architecture transformer every Wan-family test pipeline shares (add ``num_layers`` and what differs)
WAN_TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                       out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, cross_attn_norm=True,
                       qk_norm="rms_norm_across_heads", rope_max_seq_len=32)


def wan_text_and_vae(seed: int) -> dict:
    """The parts every Wan-family pipeline shares, after seeding torch with ``seed``: the word tokenizer, a tiny
    UMT5 encoder and a tiny Wan VAE (build the transformer right after, so its weights follow from ``seed``)."""
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    tokenizer = word_tokenizer()
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=32,
                                               num_layers=1, num_heads=4, relative_attention_num_buckets=8))
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae)

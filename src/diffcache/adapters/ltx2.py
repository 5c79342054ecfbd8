"""LTX-2 (``LTX2VideoTransformer3DModel``; HaCohen et al., 2026, "LTX-2: Efficient Joint Audio-Visual Foundation
Model", arXiv:2601.03233; official code: github.com/Lightricks/LTX-2): one transformer denoises a video and its
audio together, as two token streams.

**Streams.** Video tokens arrive packed ``[B, F·H·W, C]`` (frame-major, row-major; patch size 1 in the released
models), audio tokens ``[B, L, C_a·M]`` (one token per latent audio frame: its channels × mel bins). The forward
returns both velocities, ``(video, audio)`` (``AudioVisualModelOutput(sample, audio_sample)``). Every block updates
both streams, so the block- and step-level caches (fbcache, TeaCache, AdaCache) cache both, as CogVideoX's text
and video streams.

**Block** (``LTX2VideoTransformerBlock.forward``), each sub-layer gated and modulated by the timestep:

1. ``x += attn1(norm1 x)`` (video self-attention, 3-D RoPE); ``a += audio_attn1(audio_norm1 a)`` (audio
   self-attention, 1-D RoPE);
2. ``x += attn2(norm2 x, text)``; ``a += audio_attn2(audio_norm2 a, text)`` (text cross-attention);
3. ``x += audio_to_video_attn(Q = x, K/V = a)``; ``a += video_to_audio_attn(Q = a, K/V = x)`` (audio↔video
   cross-attention, temporal RoPE on both sides; off with ``isolate_modalities``, the modality-guidance pass);
4. ``x += ff(norm3 x)``; ``a += audio_ff(audio_norm3 a)``.

**Split point** (AdaCache): per stream, the input of its text cross-attention's norm — ``norm2`` (video) and
``audio_norm2`` (audio) — is that stream after its self-attention; AdaCache's two residuals per block are then the
self-attention and everything after it, for each stream.

**Attention roles**: ``self`` (video self-attention), ``self.audio``, ``cross`` (video–text), ``cross.audio``,
``audio_to_video`` and ``video_to_audio``. PAB broadcasts the two self-attentions at its self range and the two text
cross-attentions at its cross range; the audio↔video attentions have no PAB range (they mix two streams that both
change) and always run. FasterCache reuses the video self-attention.

**Token grid**: the video's ``(F, H, W)`` from the forward's ``num_frames``/``height``/``width`` (every LTX-2
pipeline passes them), or from ``video_coords`` where the sequence holds more tokens than that grid
(``LTX2ConditionPipeline`` appends keyframe conditions as whole latent frames: they count as frames; a keyframe of
another size has no grid and the token-grid methods refuse it). The audio stream has no 2-D grid the model knows (the mel bins are
packed into the channels), so FasterCache's CFG-Cache rebuilds the audio uncond from the plain last difference
``uncond − cond`` (its frequency split applies to the video).

**Token-sparse forward** (HSA) over the *video* tokens; the audio tokens (a few per second: 25 per second of video at
16 kHz) are always all computed. On a sparse step the model's own forward runs on the active video tokens: their
latents, their ``video_coords`` (so every RoPE — self-attention and the audio↔video one — is taken at their own
positions), and their timesteps where these are per token (image-to-video). Inside each block:

* video self-attention: the active tokens' fresh keys/values overwrite their slots in the layer's K/V cache of all
  ``N`` video tokens (per CFG branch), and their queries attend to all of them (HSA's K/V synchronisation);
* video→audio attention (Q = every audio token, K/V = video): its keys/values come from the video tokens, so it keeps
  the same kind of cache — fresh K/V for the active tokens, the last computed ones for the others — and every audio
  token attends to all ``N`` video tokens, as in the full forward;
* audio→video attention (Q = active video tokens, K/V = every audio token): needs no cache — the audio is complete;
* the text cross-attentions, the MLPs and the audio self-attention run as they are (video: active tokens only).

With every token active this *is* the model's forward (tests/adapters/test_ltx2.py checks it to float tolerance).
Supported processors: diffusers' ``LTX2AudioVideoAttnProcessor`` and ``LTX2PerturbedAttnProcessor`` (spatio-temporal
guidance). Refused: a ``video_self_attention_mask`` (IC-LoRA's reference-token mask), context parallelism, any other
processor.
"""

from __future__ import annotations

import inspect

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_ltx2 import apply_interleaved_rotary_emb, apply_split_rotary_emb

from ..errors import UnsupportedModelError
from .base import Adapter, argument, register_adapter
from .capabilities import (AttentionRoles, BatchedArguments, BlockStack, ModulatedInput, SplitBlocks, TokenGrid,
                           TokenSparseForward, sync_kv)
from .ltx import grid_from_coords

_PROCESSORS = ("LTX2AudioVideoAttnProcessor", "LTX2PerturbedAttnProcessor")


@register_adapter
class LTX2Adapter(Adapter, BlockStack, SplitBlocks, AttentionRoles, ModulatedInput, TokenGrid, BatchedArguments,
                  TokenSparseForward):
    family = "LTX-2"
    model_classes = ("LTX2VideoTransformer3DModel",)
    examples = "LTX-2 19B, LTX-2.3 (Lightricks)"
    batched_arguments = ("hidden_states", "audio_hidden_states", "encoder_hidden_states",
                         "audio_encoder_hidden_states", "timestep", "audio_timestep", "sigma", "audio_sigma",
                         "encoder_attention_mask", "audio_encoder_attention_mask", "video_coords", "audio_coords",
                         "perturbation_mask", "video_self_attention_mask", "video_keyframes_mask")
    kv_layers_per_block = 2

    # -- block stack -------------------------------------------------------------------------------------------
    def block_streams(self, block, args, kwargs):
        forward = type(block).forward
        return (argument(forward, args, kwargs, "hidden_states"), argument(forward, args, kwargs, "audio_hidden_states"))

    def split_module(self, block):
        return (block.norm2, block.audio_norm2)

    def attention_modules(self, block):
        return {"self": block.attn1, "self.audio": block.audio_attn1, "cross": block.attn2,
                "cross.audio": block.audio_attn2, "audio_to_video": block.audio_to_video_attn,
                "video_to_audio": block.video_to_audio_attn}

    def modulated_input(self, block, args, kwargs):
        """Block 0's modulated video input ``norm1(x) * (1 + scale_msa) + shift_msa`` (the signal of the official
        TeaCache4LTX-Video, read the same way here)."""
        forward = type(block).forward
        hidden = argument(forward, args, kwargs, "hidden_states")
        temb = argument(forward, args, kwargs, "temb")
        shift_msa, scale_msa = block.get_mod_params(block.scale_shift_table, temb, hidden.size(0))[:2]
        return block.norm1(hidden) * (1 + scale_msa) + shift_msa

    # -- token grid --------------------------------------------------------------------------------------------
    def token_layout(self, model, args, kwargs):
        forward = type(model).forward
        frames = argument(forward, args, kwargs, "num_frames")
        height = argument(forward, args, kwargs, "height")
        width = argument(forward, args, kwargs, "width")
        tokens = argument(forward, args, kwargs, "hidden_states").shape[1]
        if None not in (frames, height, width):
            pt, p = model.config.patch_size_t, model.config.patch_size  # the token grid of prepare_video_coords
            grid = (-(-frames // pt), -(-height // p), -(-width // p))
            if grid[0] * grid[1] * grid[2] == tokens:
                return grid
        # no sizes, or tokens beyond them (LTX2ConditionPipeline appends keyframe tokens): read the coordinates
        coords = argument(forward, args, kwargs, "video_coords")
        if coords is None:
            raise UnsupportedModelError(f"this LTX-2 forward's {tokens} video tokens are not the num_frames x height "
                                        "x width grid it names, and it gives no video_coords, so diffcache cannot "
                                        "tell its video token grid.")
        return grid_from_coords(coords)

    def output_frames(self, model, output, args, kwargs):
        """Packed video ``[B, F·H·W, C]`` → ``[B, F, C, H, W]``, and back."""
        frames, height, width = self.token_layout(model, args, kwargs)
        batch, _, channels = output.shape
        view = output.reshape(batch, frames, height, width, channels).permute(0, 1, 4, 2, 3)
        return view, lambda v: v.permute(0, 1, 3, 4, 2).reshape(batch, frames * height * width, channels)

    def output_stream_frames(self, model, outputs, args, kwargs):
        """The video's per-frame maps; the audio has none (``None``: FasterCache keeps its plain difference)."""
        return [self.output_frames(model, outputs[0], args, kwargs), *[None] * (len(outputs) - 1)]

    # -- token-sparse forward (HSA) ----------------------------------------------------------------------------
    def output_tokens(self, model, output):
        """The video velocity is already tokens ``[B, N, C]`` in the model's order."""
        return output

    def tokens_to_output(self, model, tokens, grid):
        return tokens

    def self_attention_modules(self, model):
        """Per block: the video self-attention and the video→audio attention (both take K/V from video tokens)."""
        return [layer for block in model.transformer_blocks for layer in (block.attn1, block.video_to_audio_attn)]

    def check_sparse_attention(self, modules):
        for module in modules:
            processor = module.processor
            if type(processor).__name__ not in _PROCESSORS or getattr(processor, "_parallel_config", None):
                raise UnsupportedModelError(
                    f"HSA's synchronised attention replaces diffusers' {' / '.join(_PROCESSORS)}, but an LTX-2 "
                    f"attention layer uses {type(processor).__name__}"
                    + (" with context parallelism" if getattr(processor, "_parallel_config", None) else "")
                    + "; restore the default processor (model.set_attn_processor(LTX2AudioVideoAttnProcessor())) to "
                    "use HSA.")

    def synced_attention_call(self, attn, args, kwargs, kv, active):
        """Both hooked layers are served: the video self-attention (no ``encoder_hidden_states``: keys and values
        from the video tokens themselves) and the video→audio attention (``encoder_hidden_states`` = the video
        tokens). Mirrors ``LTX2AudioVideoAttnProcessor`` / ``LTX2PerturbedAttnProcessor``, with the keys and values
        of the video tokens through the K/V cache ``kv``."""
        forward = type(attn).forward
        hidden_states = argument(forward, args, kwargs, "hidden_states")
        video = argument(forward, args, kwargs, "encoder_hidden_states")
        if argument(forward, args, kwargs, "attention_mask") is not None:
            raise UnsupportedModelError("HSA on LTX-2 does not support a video self-attention mask "
                                        "(video_self_attention_mask, as IC-LoRA uses); call without one.")
        return _synced_attention(
            attn, hidden_states, hidden_states if video is None else video,
            argument(forward, args, kwargs, "query_rotary_emb"), argument(forward, args, kwargs, "key_rotary_emb"),
            kv, active, kwargs.get("perturbation_mask"), kwargs.get("all_perturbed"))

    def sparse_forward(self, model, args, kwargs, active):
        """The model's own forward on the active video tokens (their latents, coordinates and per-token timesteps)
        and every audio token; returns ``(video tokens [B, n, C], audio output)``."""
        forward = type(model).forward
        bound = inspect.signature(forward).bind(model, *args, **kwargs)
        bound.apply_defaults()
        values = {k: v for k, v in bound.arguments.items() if k != "self"}
        values.pop("kwargs", None)
        if values.get("video_self_attention_mask") is not None:
            raise UnsupportedModelError("HSA on LTX-2 does not support a video self-attention mask "
                                        "(video_self_attention_mask, as IC-LoRA uses); call without one.")
        hidden = values["hidden_states"]
        batch, tokens = hidden.shape[:2]
        coords = values.get("video_coords")
        if coords is None:  # as the forward makes them
            coords = model.rope.prepare_video_coords(batch, values["num_frames"], values["height"], values["width"],
                                                     hidden.device, fps=values["fps"])
        values["hidden_states"] = _gather_tokens(hidden, active, 1)
        values["video_coords"] = _gather_tokens(coords, active, 2)
        timestep = values["timestep"]
        if timestep.ndim == 2 and timestep.shape[1] == tokens:  # per-token timesteps (image-to-video)
            values["timestep"] = timestep.gather(1, active)
        if values.get("video_keyframes_mask") is not None:
            values["video_keyframes_mask"] = _gather_tokens(values["video_keyframes_mask"], active, 1)
        values["return_dict"] = False
        video, audio = forward(model, **values)
        return video, audio

    def sparse_output(self, model, velocity, extra, return_dict):
        if return_dict:
            from diffusers.models.transformers.transformer_ltx2 import AudioVisualModelOutput

            return AudioVisualModelOutput(sample=velocity, audio_sample=extra[0])
        return (velocity, *extra)


def _gather_tokens(tensor: torch.Tensor, active: torch.Tensor, dim: int) -> torch.Tensor:
    """``tensor`` at the token indices ``active`` (``[B, n]``) along ``dim`` (batch first)."""
    shape = [1] * tensor.ndim
    shape[0], shape[dim] = active.shape
    index = active.view(shape).expand(*tensor.shape[:dim], active.shape[1], *tensor.shape[dim + 1:])
    return tensor.gather(dim, index)


def _rotary(attn, x, freqs):
    if attn.rope_type == "interleaved":
        return apply_interleaved_rotary_emb(x, freqs)
    return apply_split_rotary_emb(x, freqs)


def _synced_attention(attn, hidden_states, video, query_rotary, key_rotary, kv, active, perturbation_mask,
                      all_perturbed):
    """Attention of the queries from ``hidden_states`` over the keys/values from ``video`` (the video tokens in
    this forward: all of them, or the ``active`` ones), with the video keys/values through the K/V cache ``kv``:
    with ``active`` ``None`` they are stored (unless ``kv`` is ``None``: no sparse step follows), else the fresh
    ones overwrite their slots and the queries attend to all ``N``. The operations are those of diffusers'
    ``LTX2AudioVideoAttnProcessor`` (``LTX2PerturbedAttnProcessor`` with its ``perturbation_mask``)."""
    perturbed = type(attn.processor).__name__ == "LTX2PerturbedAttnProcessor"
    if attn.to_gate_logits is not None:
        gate_logits = attn.to_gate_logits(hidden_states)
    value = attn.to_v(video)
    if perturbed and all_perturbed is None:
        all_perturbed = torch.all(perturbation_mask == 0) if perturbation_mask is not None else False
    key = attn.norm_k(attn.to_k(video))
    if query_rotary is not None:
        key = _rotary(attn, key, key_rotary if key_rotary is not None else query_rotary)
    key = key.unflatten(2, (attn.heads, -1))
    value_heads = value.unflatten(2, (attn.heads, -1))
    key, value_heads = sync_kv(kv, key, value_heads, active)
    if perturbed and all_perturbed:  # spatio-temporal guidance: the values, no attention (self-attention only)
        out = value
    else:
        query = attn.norm_q(attn.to_q(hidden_states))
        if query_rotary is not None:
            query = _rotary(attn, query, query_rotary)
        query = query.unflatten(2, (attn.heads, -1))
        out = dispatch_attention_fn(query, key, value_heads, attn_mask=None, dropout_p=0.0, is_causal=False,
                                    backend=getattr(attn.processor, "_attention_backend", None), parallel_config=None)
        out = out.flatten(2, 3).to(query.dtype)
        if perturbed and perturbation_mask is not None:
            out = torch.lerp(value, out, perturbation_mask)
    if attn.to_gate_logits is not None:
        out = (out.unflatten(2, (attn.heads, -1)) * (2.0 * torch.sigmoid(gate_logits)).unsqueeze(-1)).flatten(2, 3)
    return attn.to_out[1](attn.to_out[0](out))

"""HunyuanVideo (``HunyuanVideoTransformer3DModel``, Kong et al., 2024, arXiv:2412.03603; official code:
github.com/Tencent/HunyuanVideo), its FramePack variant (``HunyuanVideoFramepackTransformer3DModel``, Zhang &
Agrawala, 2025, arXiv:2504.12626; github.com/lllyasviel/FramePack) and HunyuanVideo-1.5
(``HunyuanVideo15Transformer3DModel``, github.com/Tencent-Hunyuan/HunyuanVideo-1.5), as diffusers 0.42.1 has them
(``models/transformers/transformer_hunyuan_video.py``, ``transformer_hunyuan_video_framepack.py``,
``transformer_hunyuan_video15.py``).

**Blocks, in execution order.** ``transformer_blocks`` (dual-stream), then ``single_transformer_blocks``
(single-stream; HunyuanVideo-1.5 has none). Every block is called ``block(hidden_states, encoder_hidden_states,
temb, attention_mask, rotary_emb, …)`` and returns ``(hidden_states, encoder_hidden_states)``, so every block
updates two residual streams, the video tokens and the text tokens, and both are cached (as CogVideoX's).

* Dual-stream (``HunyuanVideoTransformerBlock``, its token-replace I2V form, ``HunyuanVideo15TransformerBlock``):
  ``(x, c) += attn(norm1(x, temb), norm1_context(c, temb))·gates`` — one joint attention (``attn``, role
  ``"self"``) over video and text tokens, each stream with its own projections —, then ``x += ff(norm2 x)·gate``,
  ``c += ff_context(norm2_context c)·gate``. Split point: ``norm2``, whose input is the video stream after the
  attention residual was added (the text stream's own split point, ``norm2_context``, is a separate module: AdaCache
  keeps the text stream's update whole).
* Single-stream (``HunyuanVideoSingleTransformerBlock`` and its token-replace form): text and video are concatenated
  and ``[x, c] += proj_out([attn(norm [x, c]), mlp(norm [x, c])])·gate`` — attention and MLP in **parallel** from the
  same normalised input, so there is no state "after self-attention": ``split_module`` is ``None``.

**Tokens.** Latents ``[B, C, F, H, W]`` are patchified by ``(patch_size_t, patch_size, patch_size)`` into frame-major
video tokens; the text stream is the refined LLM tokens (HunyuanVideo: Llama, padded to ``max_sequence_length`` and
masked in attention), in FramePack preceded by the SigLIP image tokens, in 1.5 the image, ByT5 and Qwen2.5-VL tokens
(valid ones first). FramePack's video stream is not a plain grid: clean-history tokens at 4×, 2× and 1× downsampling
come first, then the section's window (the output is its last ``F·H·W`` tokens), so its adapter declares no
``TokenGrid``.

**Token-sparse forward** (HSA, ``HunyuanVideoAdapter`` only) over the *video* tokens; the text tokens are always
all computed. On a sparse step the patch embedding runs on the whole latent and the active video tokens are
gathered from it; the conditioning (``time_text_embed``) and the text refiner (``context_embedder``) run as in the
model. Every block then runs on the active video tokens and every text token — modulation and MLPs per token, RoPE
at the active tokens' positions — and its joint attention (``HunyuanVideoAttnProcessor2_0`` re-implemented:
:func:`synced_joint_attention`) takes its queries from ``[active video; text]`` and its keys/values from
``[all N video tokens; text]``: the video keys/values through a K/V cache per layer and CFG branch (fresh at the
active tokens), the text ones fresh; the attention mask is the model's ``[B, 1, 1, N + L]`` (padded text tokens
masked). Then ``norm_out`` and ``proj_out``; the tokens are in the model's unpatchify order (per token: channels,
then ``pt, p, p``). HunyuanVideo-I2V's token-replace blocks modulate the first latent frame's tokens with a
timestep-0 embedding by position (``[:, :num_tokens]``); the sparse forward picks that modulation per token
(:func:`_token_replace_block`), so any active set works. With every video token active this is the model's forward
(tests/adapters/test_hunyuan_hsa.py). Refused: any other attention processor, context parallelism. FramePack and
1.5 do not declare it (FramePack's video stream is no grid; 1.5 is not written).

**TeaCache signal** (``modulated_input``): the official TeaCache4HunyuanVideo code (github.com/ali-vilab/TeaCache,
``TeaCache4HunyuanVideo/teacache_sample_video.py``) reads the first double block's
``modulate(img_norm1(img), shift=img_mod1_shift, scale=img_mod1_scale)`` — in diffusers the first output of block
0's ``norm1(hidden_states, emb=temb)`` (``AdaLayerNormZero``: ``LayerNorm(x)·(1 + scale_msa) + shift_msa``), the
video tokens only.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb

from ..errors import UnsupportedModelError
from ..memory import Shapes, heads_width, register_shapes
from .base import Adapter, argument, lora_scaled, register_adapter
from .capabilities import (AttentionRoles, BatchedArguments, BlockStack, ModulatedInput, SplitBlocks, TokenGrid,
                           TokenSparseForward, heads_qkv, sync_kv)

#: blocks whose attention and MLP run in parallel (no split point after self-attention)
SINGLE_STREAM_BLOCKS = ("HunyuanVideoSingleTransformerBlock", "HunyuanVideoTokenReplaceSingleTransformerBlock")
#: dual-stream blocks whose ``norm1`` also takes the first frame's token-replace modulation (HunyuanVideo-I2V)
TOKEN_REPLACE_BLOCKS = ("HunyuanVideoTokenReplaceTransformerBlock", "HunyuanVideoTokenReplaceSingleTransformerBlock")


class HunyuanVideoBaseAdapter(Adapter, BlockStack, SplitBlocks, AttentionRoles, ModulatedInput):
    """What the three HunyuanVideo families share: the dual-stream / single-stream block stack (not registered
    itself: each family below is)."""

    def blocks(self, model):
        return list(model.transformer_blocks) + list(getattr(model, "single_transformer_blocks", None) or [])

    def block_streams(self, block, args, kwargs):
        forward = type(block).forward
        return (argument(forward, args, kwargs, "hidden_states"), argument(forward, args, kwargs, "encoder_hidden_states"))

    def attention_modules(self, block):
        return {"self": block.attn}  # joint attention over video and text tokens

    def split_module(self, block):
        """``norm2`` of a dual-stream block (its input: the video stream after the attention residual); ``None`` for
        a single-stream block (attention and MLP in parallel)."""
        if type(block).__name__ in SINGLE_STREAM_BLOCKS:
            return None
        return block.norm2

    def modulated_input(self, block, args, kwargs):
        """The official TeaCache4HunyuanVideo signal: block 0's ``norm1(x, temb)`` output, ``LayerNorm(x)·(1 +
        scale_msa) + shift_msa`` over the video tokens. With HunyuanVideo-I2V's token-replace blocks, ``norm1`` also
        takes the first frame's modulation (``token_replace_emb``) as the block itself calls it; a first block that
        is single-stream gives its ``norm`` of the video tokens."""
        forward = type(block).forward
        hidden = argument(forward, args, kwargs, "hidden_states")
        temb = argument(forward, args, kwargs, "temb")
        name = type(block).__name__
        norm = block.norm if name in SINGLE_STREAM_BLOCKS else block.norm1
        if name in TOKEN_REPLACE_BLOCKS:
            token_replace_emb = argument(forward, args, kwargs, "token_replace_emb")
            num_tokens = argument(forward, args, kwargs, "num_tokens")
            if token_replace_emb is None or num_tokens is None:
                raise UnsupportedModelError(f"{name} was called without token_replace_emb / num_tokens, which its "
                                            "norm1 needs; TeaCache reads the modulated input as the block computes it")
            return norm(hidden, temb, token_replace_emb, num_tokens)[0]
        return norm(hidden, emb=temb)[0]


class PatchGrid(TokenGrid):
    def token_layout(self, model, args, kwargs):
        latents = argument(type(model).forward, args, kwargs, "hidden_states")
        _, _, frames, height, width = latents.shape
        p, pt = model.config.patch_size, model.config.patch_size_t
        return frames // pt, height // p, width // p
    # output_frames: the default (the output is [B, C, F, H, W], already ending in (H, W))


@register_adapter
class HunyuanVideoAdapter(HunyuanVideoBaseAdapter, PatchGrid, BatchedArguments, TokenSparseForward):
    family = "HunyuanVideo"
    model_classes = ("HunyuanVideoTransformer3DModel",)
    examples = "HunyuanVideo (T2V, 13B), HunyuanVideo-I2V, SkyReels-V1"
    batched_arguments = ("hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask",
                         "pooled_projections", "guidance")
    kv_layers_per_block = 1  # one joint attention per block (dual- and single-stream alike)

    # -- token-sparse forward (HSA) ----------------------------------------------------------------------------
    def output_tokens(self, model, output: torch.Tensor) -> torch.Tensor:
        """The velocity ``[B, C, F, H, W]`` as tokens ``[B, N, C·pt·p·p]`` in the order of the model's unpatchify
        (``reshape(B, F', H', W', C, pt, p, p)``: frame-major tokens, channels first within a token)."""
        p, pt = model.config.patch_size, model.config.patch_size_t
        b, c, f, h, w = output.shape
        x = output.reshape(b, c, f // pt, pt, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, (f // pt) * (h // p) * (w // p), c * pt * p * p)

    def tokens_to_output(self, model, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Inverse of :meth:`output_tokens`: the unpatchify of ``HunyuanVideoTransformer3DModel.forward``."""
        p, pt = model.config.patch_size, model.config.patch_size_t
        f, h, w = grid
        x = tokens.reshape(tokens.shape[0], f, h, w, -1, pt, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def self_attention_modules(self, model) -> list[torch.nn.Module]:
        """The joint attention of every block, dual-stream then single-stream (its video keys/values are cached)."""
        return [block.attn for block in self.blocks(model)]

    def check_sparse_attention(self, modules) -> None:
        """The synchronised attention re-implements diffusers' ``HunyuanVideoAttnProcessor2_0``; refuse anything
        else (a custom processor, context parallelism) rather than silently drop it."""
        for module in modules:
            processor = module.processor
            parallel = getattr(processor, "_parallel_config", None)
            if type(processor).__name__ != "HunyuanVideoAttnProcessor2_0" or parallel:
                raise UnsupportedModelError(
                    f"HSA's synchronised attention replaces diffusers' HunyuanVideoAttnProcessor2_0, but a joint "
                    f"attention layer uses {type(processor).__name__}"
                    + (" with context parallelism" if parallel else "")
                    + "; restore the default processor (model.set_attn_processor(HunyuanVideoAttnProcessor2_0())) to "
                    "use HSA.")

    def synced_attention_call(self, attn, args, kwargs, kv, active):
        """A block's joint attention (``attn(hidden_states=video, encoder_hidden_states=text, attention_mask,
        image_rotary_emb)``) with the video keys/values through the K/V cache ``kv``: see
        :func:`synced_joint_attention`."""
        forward = type(attn).forward
        text = argument(forward, args, kwargs, "encoder_hidden_states")
        if text is None:  # not a call the blocks make
            return None
        return synced_joint_attention(attn, argument(forward, args, kwargs, "hidden_states"), text,
                                      argument(forward, args, kwargs, "attention_mask"),
                                      kwargs.get("image_rotary_emb"), kv, active)

    def sparse_forward(self, model, args: tuple, kwargs: dict, active: torch.Tensor) -> torch.Tensor:
        """``HunyuanVideoTransformer3DModel.forward`` for the video tokens ``active`` (``[B, n]`` indices into the
        ``N`` video tokens) and every text token: the patch embedding runs on the whole latent and the active tokens
        are gathered from it; the timestep/text conditioning and the text refiner run as in the model; every block
        runs on the active video tokens and all text tokens (its joint attention through the K/V cache, the text
        padding mask over all ``N`` video + text keys, RoPE at the active tokens' positions); then ``norm_out`` and
        ``proj_out``. Returns the active tokens' outputs ``[B, n, C·pt·p·p]`` (the layout of
        :meth:`output_tokens`)."""
        forward = type(model).forward
        values = {name: argument(forward, args, kwargs, name) for name in (
            "hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask", "pooled_projections",
            "guidance", "attention_kwargs")}
        with lora_scaled(model, values.pop("attention_kwargs")):
            return _sparse_forward(model, active=active, **values)


def _sparse_forward(model, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask,
                    pooled_projections, guidance, active):
    batch_size, _, num_frames, height, width = hidden_states.shape
    p = model.config.patch_size
    first_frame_num_tokens = (height // p) * (width // p)

    freqs_cos, freqs_sin = model.rope(hidden_states)  # [N, head_dim]: those of the active tokens, per sample
    rotary = (freqs_cos[active], freqs_sin[active])  # [B, n, head_dim]
    temb, token_replace_emb = model.time_text_embed(timestep, pooled_projections, guidance)
    tokens = model.x_embedder(hidden_states)
    latent_sequence_length = tokens.shape[1]  # N: the keys are every video token (the K/V cache)
    tokens = tokens.gather(1, active[:, :, None].expand(-1, -1, tokens.shape[-1])).contiguous()
    text = model.context_embedder(encoder_hidden_states, timestep, encoder_attention_mask)

    # the model's attention mask over the keys [N video tokens; text tokens]: padded text tokens masked out
    sequence_length = latent_sequence_length + text.shape[1]
    effective = latent_sequence_length + encoder_attention_mask.sum(dim=1, dtype=torch.int)  # [B]
    indices = torch.arange(sequence_length, device=tokens.device).unsqueeze(0)
    attention_mask = (indices < effective.unsqueeze(1))[:, None, None, :]  # [B, 1, 1, N + L] bool

    first = (active < first_frame_num_tokens)[:, :, None]  # token-replace: the first latent frame's tokens
    for block in [*model.transformer_blocks, *model.single_transformer_blocks]:
        name = type(block).__name__
        if name == "HunyuanVideoTokenReplaceTransformerBlock":
            tokens, text = _token_replace_block(block, tokens, text, temb, attention_mask, rotary, token_replace_emb,
                                                first)
        elif name == "HunyuanVideoTokenReplaceSingleTransformerBlock":
            tokens, text = _token_replace_single_block(block, tokens, text, temb, attention_mask, rotary,
                                                       token_replace_emb, first)
        else:
            tokens, text = block(tokens, text, temb, attention_mask, rotary)

    tokens = model.norm_out(tokens, temb)
    return model.proj_out(tokens)


def _pick(first: torch.Tensor, first_frame: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Per token: the first frame's modulation ``first_frame`` (``[B, D]``) where ``first`` (``[B, n, 1]``), else
    ``other`` — the token-replace blocks' ``[:, :num_tokens]`` / ``[:, num_tokens:]`` split, for any token set."""
    return torch.where(first, first_frame[:, None], other[:, None])


def _token_replace_block(block, hidden_states, encoder_hidden_states, temb, attention_mask, rotary,
                         token_replace_emb, first):
    """``HunyuanVideoTokenReplaceTransformerBlock.forward`` (HunyuanVideo-I2V) for any set of video tokens: its
    ``norm1`` (``HunyuanVideoTokenReplaceAdaLayerNormZero``) and gates give the first latent frame's tokens
    (``first``) the modulation of ``token_replace_emb`` (timestep 0) and the others that of ``temb``."""
    norm1 = block.norm1
    emb = norm1.linear(norm1.silu(temb))
    replace = norm1.linear(norm1.silu(token_replace_emb))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = emb.chunk(6, dim=1)
    tr_shift_msa, tr_scale_msa, tr_gate_msa, tr_shift_mlp, tr_scale_mlp, tr_gate_mlp = replace.chunk(6, dim=1)
    norm_hidden_states = (norm1.norm(hidden_states) * (1 + _pick(first, tr_scale_msa, scale_msa))
                          + _pick(first, tr_shift_msa, shift_msa))
    norm_encoder_hidden_states, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = block.norm1_context(
        encoder_hidden_states, emb=temb)

    attn_output, context_attn_output = block.attn(hidden_states=norm_hidden_states,
                                                  encoder_hidden_states=norm_encoder_hidden_states,
                                                  attention_mask=attention_mask, image_rotary_emb=rotary)

    hidden_states = hidden_states + attn_output * _pick(first, tr_gate_msa, gate_msa)
    encoder_hidden_states = encoder_hidden_states + context_attn_output * c_gate_msa.unsqueeze(1)
    norm_hidden_states = (block.norm2(hidden_states) * (1 + _pick(first, tr_scale_mlp, scale_mlp))
                          + _pick(first, tr_shift_mlp, shift_mlp))
    norm_encoder_hidden_states = (block.norm2_context(encoder_hidden_states) * (1 + c_scale_mlp[:, None])
                                  + c_shift_mlp[:, None])
    ff_output = block.ff(norm_hidden_states)
    context_ff_output = block.ff_context(norm_encoder_hidden_states)
    hidden_states = hidden_states + ff_output * _pick(first, tr_gate_mlp, gate_mlp)
    encoder_hidden_states = encoder_hidden_states + c_gate_mlp.unsqueeze(1) * context_ff_output
    return hidden_states, encoder_hidden_states


def _token_replace_single_block(block, hidden_states, encoder_hidden_states, temb, attention_mask, rotary,
                                token_replace_emb, first):
    """``HunyuanVideoTokenReplaceSingleTransformerBlock.forward`` for any set of video tokens (``first``: the
    first latent frame's, modulated by ``token_replace_emb``; the text tokens never are)."""
    text_seq_length = encoder_hidden_states.shape[1]
    hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)
    first = torch.cat([first, first.new_zeros(first.shape[0], text_seq_length, 1)], dim=1)
    residual = hidden_states

    norm = block.norm
    emb = norm.linear(norm.silu(temb))
    replace = norm.linear(norm.silu(token_replace_emb))
    shift_msa, scale_msa, gate = emb.chunk(3, dim=1)
    tr_shift_msa, tr_scale_msa, tr_gate = replace.chunk(3, dim=1)
    norm_hidden_states = (norm.norm(hidden_states) * (1 + _pick(first, tr_scale_msa, scale_msa))
                          + _pick(first, tr_shift_msa, shift_msa))
    mlp_hidden_states = block.act_mlp(block.proj_mlp(norm_hidden_states))

    attn_output, context_attn_output = block.attn(hidden_states=norm_hidden_states[:, :-text_seq_length],
                                                  encoder_hidden_states=norm_hidden_states[:, -text_seq_length:],
                                                  attention_mask=attention_mask, image_rotary_emb=rotary)
    attn_output = torch.cat([attn_output, context_attn_output], dim=1)

    hidden_states = torch.cat([attn_output, mlp_hidden_states], dim=2)
    hidden_states = block.proj_out(hidden_states) * _pick(first, tr_gate, gate) + residual
    return hidden_states[:, :-text_seq_length], hidden_states[:, -text_seq_length:]


def _rotary(x: torch.Tensor, freqs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``apply_rotary_emb(x, freqs, sequence_dim=1)`` (real form, interleaved pairs) as the processor applies it;
    ``freqs`` per token ``[N, D]`` (the model's own) or per sample and token ``[B, n, D]`` (the active tokens')."""
    cos, sin = freqs
    if cos.ndim == 2:
        return apply_rotary_emb(x, freqs, sequence_dim=1)
    cos, sin = cos[:, :, None, :].to(x.device), sin[:, :, None, :].to(x.device)
    x_real, x_imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
    return (x.float() * cos + x_rotated.float() * sin).to(x.dtype)


def synced_joint_attention(attn, hidden_states, encoder_hidden_states, attention_mask, rotary, kv, active):
    """Diffusers' ``HunyuanVideoAttnProcessor2_0`` with the *video* keys/values through the K/V cache ``kv``
    (HSA's K/V-cache synchronisation); the text tokens' keys/values are always fresh.

    ``hidden_states`` are the video tokens in this forward (``[B, N, D]``, or the ``active`` ones ``[B, n, D]``
    with ``rotary`` at their positions), ``encoder_hidden_states`` every text token ``[B, L, D]``. Dual-stream
    blocks project each stream with its own weights (``to_q`` …, ``add_q_proj`` …); single-stream blocks
    (``add_q_proj`` is ``None``) project the concatenation ``[video; text]``. RoPE goes on the video queries and
    keys. With ``active`` ``None`` the video keys/values are stored (unless ``kv`` is ``None``: no sparse step
    follows) and the result is the processor's; else the fresh ones overwrite their slots in the cache and the
    queries ``[active video; text]`` attend to the keys ``[all N cached video; text]`` under ``attention_mask``
    (``[B, 1, 1, N + L]``: the padded text tokens masked, as the model builds it). Returns ``(video, text)``."""
    text_length = encoder_hidden_states.shape[1]
    single_stream = attn.add_q_proj is None
    if single_stream:
        hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)
    query, key, value = heads_qkv(attn, hidden_states)
    if single_stream:
        if rotary is not None:
            query = torch.cat([_rotary(query[:, :-text_length], rotary), query[:, -text_length:]], dim=1)
            key = torch.cat([_rotary(key[:, :-text_length], rotary), key[:, -text_length:]], dim=1)
        video_key, text_key = key[:, :-text_length], key[:, -text_length:]
        video_value, text_value = value[:, :-text_length], value[:, -text_length:]
    else:
        if rotary is not None:
            query, key = _rotary(query, rotary), _rotary(key, rotary)
        encoder_query, text_key, text_value = heads_qkv(attn, encoder_hidden_states, added=True)
        video_key, video_value = key, value
        query = torch.cat([query, encoder_query], dim=1)
        key = torch.cat([key, text_key], dim=1)
        value = torch.cat([value, text_value], dim=1)

    # the video keys/values alone are cached (contiguous: in single-stream blocks they are a view of the whole
    # sequence's); with every token computed, key / value stay exactly the processor's
    cached_key, cached_value = sync_kv(kv, video_key.contiguous(), video_value.contiguous(), active)
    if active is not None:
        key = torch.cat([cached_key, text_key], dim=1)
        value = torch.cat([cached_value, text_value], dim=1)

    out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                backend=getattr(attn.processor, "_attention_backend", None), parallel_config=None)
    out = out.flatten(2, 3).to(query.dtype)
    video, text = out[:, :-text_length], out[:, -text_length:]
    if getattr(attn, "to_out", None) is not None:
        video = attn.to_out[1](attn.to_out[0](video))
    if getattr(attn, "to_add_out", None) is not None:
        text = attn.to_add_out(text)
    return video, text


@register_shapes("HunyuanVideo", vae_spatial=8, vae_temporal=4, text_tokens=256, cfg="split")
def hunyuan_video_shapes(config: dict, latent: tuple[int, int, int], text_tokens: int) -> Shapes:
    """Cache shapes (:mod:`diffcache.memory`): two streams, video (``N`` tokens) and text (``text_tokens``, the
    pipeline's ``max_sequence_length``), ``heads·head_dim`` wide. A dual-stream block's joint attention returns a
    video and a text output of their own; a single-stream block's returns one ``(N + text) × width`` output, and
    its keys and values (HSA) are views of the joint ones. TeaCache's signal: block 0's ``norm1`` of the video."""
    frames, height, width = latent
    p, pt = config["patch_size"], config.get("patch_size_t", 1)
    tokens, dim = (frames // pt) * (height // p) * (width // p), heads_width(config)
    text, dual, single = text_tokens, config["num_layers"], config.get("num_single_layers", 0)
    return Shapes("HunyuanVideo", tokens, dim, streams=(tokens * dim, text * dim),
                  attention=(({"self": (tokens + text) * dim},) * dual) + (({"self": (tokens + text) * dim},) * single),
                  kv=(tokens * dim,) * dual + ((tokens + text) * dim,) * single, signal=tokens * dim,
                  output=config.get("out_channels", 16) * frames * height * width)

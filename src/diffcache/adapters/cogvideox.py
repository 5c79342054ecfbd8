"""CogVideoX 1.0 / 1.5 (``CogVideoXTransformer3DModel``): joint attention over text and video tokens.

Block: ``(x, e) += attn1(norm1(x, e))·gates`` (one attention over both streams); ``(x, e) += ff(norm2(x, e))·gates``.
Both streams are updated residually, so both are cached. The inputs of ``norm2`` are the two streams after
attention. Latents ``[B, F, C, H, W]``, patch ``patch_size`` (and ``patch_size_t`` in 1.5), frame-major tokens.
"""

from __future__ import annotations

from .base import Adapter, argument, register_adapter
from ..memory import Shapes, heads_width, register_shapes
from .capabilities import AttentionRoles, BatchedArguments, BlockStack, ModulatedInput, SplitBlocks, TokenGrid


@register_adapter
class CogVideoXAdapter(Adapter, BlockStack, SplitBlocks, AttentionRoles, ModulatedInput, TokenGrid, BatchedArguments):
    family = "CogVideoX"
    model_classes = ("CogVideoXTransformer3DModel",)
    examples = "CogVideoX-2b, CogVideoX-5b, CogVideoX1.5-5B"

    def block_streams(self, block, args, kwargs):
        forward = type(block).forward
        return (argument(forward, args, kwargs, "hidden_states"), argument(forward, args, kwargs, "encoder_hidden_states"))

    def attention_modules(self, block):
        return {"self": block.attn1}

    def split_module(self, block):
        return block.norm2

    def split_streams(self, split_module, args, kwargs):
        forward = type(split_module).forward
        return (argument(forward, args, kwargs, "hidden_states"), argument(forward, args, kwargs, "encoder_hidden_states"))

    def token_layout(self, model, args, kwargs):
        latents = argument(type(model).forward, args, kwargs, "hidden_states")
        _, frames, _, height, width = latents.shape
        p = model.config.patch_size
        pt = model.config.patch_size_t or 1
        return (frames + pt - 1) // pt, height // p, width // p


@register_shapes("CogVideoX", vae_spatial=8, vae_temporal=4, text_tokens=226, cfg="batched")
def cogvideox_shapes(config: dict, latent: tuple[int, int, int], text_tokens: int) -> Shapes:
    """Cache shapes (:mod:`diffcache.memory`): two streams, video (``N`` tokens) and text (``max_text_seq_length``),
    both ``heads·head_dim`` wide; each block's joint attention returns views of one ``(N + text) × width`` output;
    TeaCache's signal is the timestep embedding (``time_embed_dim``)."""
    frames, height, width = latent
    p, pt = config["patch_size"], config.get("patch_size_t") or 1
    frames = (frames + pt - 1) // pt * pt  # CogVideoX 1.5 pads the latent frames to a multiple of patch_size_t
    tokens, dim = (frames // pt) * (height // p) * (width // p), heads_width(config)
    text = config.get("max_text_seq_length", text_tokens)
    return Shapes("CogVideoX", tokens, dim, streams=(tokens * dim, text * dim),
                  attention=tuple({"self": (tokens + text) * dim} for _ in range(config["num_layers"])),
                  signal=config.get("time_embed_dim", 512),
                  output=config.get("out_channels", 16) * frames * height * width)

"""SkyReels-V2 (``SkyReelsV2Transformer3DModel``, diffusers models/transformers/transformer_skyreels_v2.py): the Wan
2.1 architecture with diffusion forcing (SkyReels-V2: "SkyReels-V2: Infinite-length Film Generative Model",
arXiv:2504.13074; official code github.com/SkyworkAI/SkyReels-V2).

Block (``SkyReelsV2TransformerBlock``, as Wan's): ``x += attn1(norm1 x, mask)·gate``; ``x += attn2(norm2 x, text)``;
``x += ffn(norm3 x)·gate``; one video stream, split point the input of ``norm2``. Latents ``[B, C, F, H, W]`` are
patchified by ``patch_size`` ``(pt, ph, pw)`` into frame-major tokens; Wan's 3-D rotary embedding.

What differs from Wan:

* **Diffusion forcing** (``enable_diffusion_forcing=True``, the ``SkyReelsV2DiffusionForcing*`` pipelines): the
  timestep is per latent frame ``[B, F]``; the block modulation ``temb`` becomes per token ``[B, 6, N, D]``. The
  step tracker reads the *last* frame's timestep (prefix frames come first and sit at 0 or at
  ``addnoise_condition``; in synchronous mode every other frame has the step's timestep). The asynchronous mode
  (``ar_step > 0``) runs more loop iterations than the scheduler has timesteps, each frame at its own point of the
  schedule, so no forward belongs to one step: :meth:`check_forward` refuses such a call at its first forward.
  A long video (``overlap_history``) runs one full denoising per window: each window is its own call in the report.
* **Causal blocks** (``num_frame_per_block > 1``, set by the pipelines' ``causal_block_size``): self-attention gets a
  block-causal mask. Block-level caches are unaffected; HSA's synchronised attention does not reproduce the mask
  and refuses such a call (:meth:`check_sparse_call`).
* **fps conditioning** (``inject_sample_info``): an fps embedding is added to the block modulation, reproduced in
  the token-sparse forward.
"""

from __future__ import annotations

import torch

from ..errors import CallRefusedError, UnsupportedModelError
from .base import argument, lora_scaled, register_adapter
from .wan import WanAdapter


@register_adapter
class SkyReelsV2Adapter(WanAdapter):
    family = "SkyReels-V2"
    model_classes = ("SkyReelsV2Transformer3DModel",)
    examples = "SkyReels-V2-T2V/I2V-14B-540P/720P, SkyReels-V2-DF-1.3B/14B-540P"

    def timestep(self, model, args, kwargs):
        """The forward's timestep; with diffusion forcing (``[B, F]``, one per latent frame) the last frame's."""
        timestep = argument(type(model).forward, args, kwargs, "timestep")
        if isinstance(timestep, torch.Tensor) and timestep.ndim == 2:
            return timestep[:, -1]
        return timestep

    def check_forward(self, model, pipeline, args, kwargs):
        """Refuse a diffusion-forcing loop that runs more iterations than its scheduler has timesteps (the
        asynchronous mode, ``ar_step > 0``): its frames are each at their own point of the schedule, so the
        forwards do not map to denoising steps."""
        if pipeline is None or not argument(type(model).forward, args, kwargs, "enable_diffusion_forcing", False):
            return
        iterations = getattr(pipeline, "num_timesteps", None)  # the pipeline's loop length, set before its loop
        timesteps = getattr(getattr(pipeline, "scheduler", None), "timesteps", None)
        if iterations is None or timesteps is None or iterations == len(timesteps):
            return
        raise CallRefusedError(
            f"{type(pipeline).__name__} runs {iterations} denoising iterations over {len(timesteps)} timesteps: the "
            "asynchronous diffusion-forcing mode (ar_step > 0), where every frame is at its own point of the "
            "schedule, so diffcache cannot tell which step a forward belongs to. Call it with ar_step=0 "
            "(synchronous diffusion forcing: every method works), or use SkyReelsV2Pipeline / "
            "SkyReelsV2ImageToVideoPipeline."
        )

    # -- token-sparse forward (HSA) ----------------------------------------------------------------------------
    def check_sparse_attention(self, modules) -> None:
        """The synchronised attention re-implements ``SkyReelsV2AttnProcessor`` (the same computation as Wan's:
        its self-attention Q/K/V projections take the same fused or separate path); refuse anything else."""
        for module in modules:
            processor = module.processor
            if type(processor).__name__ != "SkyReelsV2AttnProcessor" or getattr(processor, "_parallel_config", None):
                raise UnsupportedModelError(
                    f"HSA's synchronised attention replaces diffusers' SkyReelsV2AttnProcessor, but a self-attention "
                    f"layer uses {type(processor).__name__}"
                    + (" with context parallelism" if getattr(processor, "_parallel_config", None) else "")
                    + "; restore the default processor (model.set_attn_processor(SkyReelsV2AttnProcessor())) to use "
                    "HSA."
                )

    def check_sparse_call(self, model, args, kwargs) -> None:
        if model.config.num_frame_per_block > 1:
            raise CallRefusedError(
                f"HSA's synchronised attention has no block-causal mask, and this SkyReels-V2 transformer attends "
                f"causally in blocks of {model.config.num_frame_per_block} frames (num_frame_per_block, set by the "
                "diffusion-forcing pipelines' causal_block_size). Use causal_block_size=1, or another method "
                "(fbcache, teacache, adacache, pab, fastercache work with causal blocks). Note that "
                "causal_block_size stays set on the transformer: model._set_ar_attention(1) resets it."
            )

    def sparse_forward(self, model, args: tuple, kwargs: dict, active: torch.Tensor) -> torch.Tensor:
        """``SkyReelsV2Transformer3DModel.forward`` for the tokens ``active`` (``[B, n]``) only: patch embedding
        (whole latents, then the active tokens gathered), the timestep (and fps) modulation — per sample, or with
        diffusion forcing per frame, taken at each active token's frame —, every block on the ``n`` tokens
        (self-attention through the K/V cache) and the output projection. Returns ``[B, n, pt·ph·pw·C]``."""
        forward = type(model).forward
        with lora_scaled(model, argument(forward, args, kwargs, "attention_kwargs")):
            return self._skyreels_sparse_forward(
                model, argument(forward, args, kwargs, "hidden_states"), argument(forward, args, kwargs, "timestep"),
                argument(forward, args, kwargs, "encoder_hidden_states"),
                argument(forward, args, kwargs, "encoder_hidden_states_image"),
                argument(forward, args, kwargs, "enable_diffusion_forcing", False),
                argument(forward, args, kwargs, "fps"), active)

    def _skyreels_sparse_forward(self, model, hidden_states, timestep, encoder_hidden_states,
                                 encoder_hidden_states_image, diffusion_forcing, fps, active):
        _, _, _, height, width = hidden_states.shape
        _, ph, pw = model.config.patch_size
        rotary = model.rope(hidden_states)
        rotary = tuple(r[0, :, 0][active][:, :, None] for r in rotary)  # [B, n, 1, head_dim]
        tokens = model.patch_embedding(hidden_states).flatten(2).transpose(1, 2)
        tokens = tokens.gather(1, active[:, :, None].expand(-1, -1, tokens.shape[-1])).contiguous()

        temb, timestep_proj, encoder_hidden_states, encoder_hidden_states_image = model.condition_embedder(
            timestep, encoder_hidden_states, encoder_hidden_states_image)
        timestep_proj = timestep_proj.unflatten(-1, (6, -1))  # [B, 6, D], or per frame [B, F, 6, D]
        if encoder_hidden_states_image is not None:
            encoder_hidden_states = torch.concat([encoder_hidden_states_image, encoder_hidden_states], dim=1)
        if model.config.inject_sample_info:  # as the model's forward, term for term
            fps = torch.tensor(fps, dtype=torch.long, device=tokens.device)
            fps_proj = model.fps_projection(model.fps_embedding(fps)).unflatten(1, (6, -1))
            timestep_proj = timestep_proj + (fps_proj.repeat(timestep.shape[1], 1, 1) if diffusion_forcing
                                             else fps_proj)
        if diffusion_forcing:  # per frame → at each active token's frame
            frame = active // ((height // ph) * (width // pw))  # [B, n]
            b, f = timestep.shape
            temb = temb.view(b, f, -1).gather(1, frame[:, :, None].expand(-1, -1, temb.shape[-1]))  # [B, n, D]
            timestep_proj = timestep_proj.view(b, f, 6, -1)
            timestep_proj = timestep_proj.gather(1, frame[:, :, None, None].expand(-1, -1, *timestep_proj.shape[2:]))
            timestep_proj = timestep_proj.transpose(1, 2).contiguous()  # [B, 6, n, D]

        for block in model.blocks:
            tokens = block(tokens, encoder_hidden_states, timestep_proj, rotary, None)

        if temb.dim() == 2:
            shift, scale = (model.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        else:
            shift, scale = (model.scale_shift_table.unsqueeze(2) + temb.unsqueeze(1)).chunk(2, dim=1)
            shift, scale = shift.squeeze(1), scale.squeeze(1)
        tokens = (model.norm_out(tokens.float()) * (1 + scale) + shift).type_as(tokens)
        return model.proj_out(tokens)

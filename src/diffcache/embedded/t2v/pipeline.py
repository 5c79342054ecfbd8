"""The embedded text-to-video pipeline: a tiny ``WanTransformer3DModel`` sampled like ``WanPipeline``.

There is no VAE: a clip of ``frames × H × W × 3`` pixels in [0, 1] is packed into a latent of
``12 × frames × H/2 × W/2`` by mapping to [-1, 1] and pixel-unshuffling each frame by 2 (``pack`` /
``unpack``). The denoiser is a real diffusers ``WanTransformer3DModel``, so every Wan-family code path in
diffcache serves this model and real Wan models alike.
"""

from __future__ import annotations

import inspect
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from .. import shapes
from ..text import ShapesTextEncoder

UNSHUFFLE = 2
CFG_MODES = ("split", "batched")
OUTPUT_TYPES = ("np", "pt", "pil", "latent")


def pack(clips: torch.Tensor) -> torch.Tensor:
    """Pixels ``(B, F, H, W, 3)`` in [0, 1] → latents ``(B, 3·r², F, H/r, W/r)`` in [-1, 1]."""
    b, f, h, w, c = clips.shape
    x = clips.permute(0, 1, 4, 2, 3).reshape(b * f, c, h, w) * 2 - 1
    x = F.pixel_unshuffle(x, UNSHUFFLE)
    return x.reshape(b, f, *x.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()


def unpack(latents: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack`: latents → pixels ``(B, F, H, W, 3)`` in [0, 1] (clamped)."""
    b, c, f, h, w = latents.shape
    x = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    x = F.pixel_shuffle(x, UNSHUFFLE)
    x = x.reshape(b, f, *x.shape[1:]).permute(0, 1, 3, 4, 2)
    return ((x + 1) / 2).clamp(0, 1)


def tiny_transformer_config() -> dict:
    """The config of the embedded denoiser (3.3 M parameters, 256 tokens per 8×32×32 clip)."""
    return dict(
        patch_size=(2, 2, 2),
        num_attention_heads=3,
        attention_head_dim=64,
        in_channels=3 * UNSHUFFLE**2,
        out_channels=3 * UNSHUFFLE**2,
        text_dim=64,
        freq_dim=64,
        ffn_dim=768,
        num_layers=5,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64,
    )


class CallState:
    """Read-only state of the embedded pipelines while a call runs, named as in diffusers' pipelines (WanPipeline,
    StableDiffusionPipeline), whose cache configs and callbacks read these."""

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt


class TinyShapesT2VPipeline(CallState, DiffusionPipeline):
    """Text-to-video for the shapes grammar, with the calling conventions of diffusers' ``WanPipeline``.

    Example::

        pipe = diffcache.load_pipeline("tiny-shapes-t2v")
        video = pipe("a red circle moving left", num_inference_steps=30, guidance_scale=5.0,
                     generator=torch.Generator().manual_seed(0)).frames  # (1, 8, 32, 32, 3) floats in [0, 1]

    ``cfg_mode="split"`` (default) runs two denoiser calls per step, cond then uncond, each inside the
    transformer's ``cache_context("cond")`` / ``cache_context("uncond")`` as ``WanPipeline`` does;
    ``cfg_mode="batched"`` runs one call on the batch ``[uncond, cond]`` inside ``cache_context("cond_uncond")``
    as CogVideoX and LTX-Video pipelines do.
    """

    model_cpu_offload_seq = "text_encoder->transformer"
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        transformer: WanTransformer3DModel,
        text_encoder: ShapesTextEncoder,
        scheduler: FlowMatchEulerDiscreteScheduler,
    ):
        super().__init__()
        self.register_modules(transformer=transformer, text_encoder=text_encoder, scheduler=scheduler)
        self._guidance_scale = 1.0
        self._num_timesteps = 0
        self._current_timestep = None
        self._interrupt = False
        self._attention_kwargs = None

    @classmethod
    def from_scratch(cls, seed: int = 0, shift: float = 1.0) -> "TinyShapesT2VPipeline":
        """A randomly initialised pipeline with the embedded model's architecture (what training starts from)."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            transformer = WanTransformer3DModel(**tiny_transformer_config())
            text_encoder = ShapesTextEncoder(embed_dim=transformer.config.text_dim)
        return cls(transformer, text_encoder, FlowMatchEulerDiscreteScheduler(shift=shift))

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        return self.text_encoder.encode(prompts).to(self.transformer.dtype)

    def check_inputs(self, num_inference_steps, guidance_scale, cfg_mode, output_type, num_frames, height, width):
        if cfg_mode not in CFG_MODES:
            raise ValueError(f"cfg_mode={cfg_mode!r} is not supported; use one of {', '.join(CFG_MODES)}.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} is not supported; use one of {', '.join(OUTPUT_TYPES)}.")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}.")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0 (1 or less disables guidance), got {guidance_scale}.")
        p_t, p_h, p_w = self.transformer.config.patch_size
        if num_frames % p_t or height % (UNSHUFFLE * p_h) or width % (UNSHUFFLE * p_w):
            raise ValueError(
                f"num_frames must be a multiple of {p_t} and height/width multiples of {UNSHUFFLE * p_h}; "
                f"got {num_frames} frames of {height}×{width}."
            )

    @property
    def current_timestep(self):
        return self._current_timestep

    @property
    def attention_kwargs(self):
        return self._attention_kwargs

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int = shapes.HEIGHT,
        width: int = shapes.WIDTH,
        num_frames: int = shapes.NUM_FRAMES,
        num_inference_steps: int = 30,
        guidance_scale: float = 5.0,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        attention_kwargs: dict | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        cfg_mode: str = "split",
    ):
        """Generate clips. Returns ``WanPipelineOutput(frames=...)``; ``output_type="np"`` gives floats in
        [0, 1] of shape ``(batch, frames, height, width, 3)``, ``"pt"`` a tensor ``(batch, frames, 3, H, W)``,
        ``"pil"`` a list of lists of images, ``"latent"`` the packed latents."""
        self.check_inputs(num_inference_steps, guidance_scale, cfg_mode, output_type, num_frames, height, width)
        unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} are not available; "
                             f"choose from {self._callback_tensor_inputs}.")
        self._guidance_scale = guidance_scale
        self._attention_kwargs = attention_kwargs
        self._current_timestep = None
        self._interrupt = False
        do_cfg = self.do_classifier_free_guidance
        device = self._execution_device
        if prompt_embeds is None:
            if prompt is None:
                raise ValueError("pass a prompt (or prompt_embeds).")
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt_embeds = self.encode_prompt(prompts)
        elif prompt is not None:
            raise ValueError("pass either prompt or prompt_embeds, not both.")
        num_prompts = prompt_embeds.shape[0]
        cond = prompt_embeds.to(device, self.transformer.dtype).repeat_interleave(num_videos_per_prompt, 0)
        uncond = None
        if do_cfg:
            if negative_prompt_embeds is None:
                negatives = negative_prompt if negative_prompt is not None else ""
                negatives = [negatives] * num_prompts if isinstance(negatives, str) else list(negatives)
                if len(negatives) != num_prompts:
                    raise ValueError(f"got {num_prompts} prompts but {len(negatives)} negative prompts.")
                negative_prompt_embeds = self.encode_prompt(negatives)
            uncond = negative_prompt_embeds.to(device, self.transformer.dtype).repeat_interleave(
                num_videos_per_prompt, 0)
        batch = num_prompts * num_videos_per_prompt

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        self.scheduler.set_begin_index(0)
        timesteps = self.scheduler.timesteps
        shape = (batch, self.transformer.config.in_channels, num_frames, height // UNSHUFFLE, width // UNSHUFFLE)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}.")
        dtype = self.transformer.dtype
        self._num_timesteps = len(timesteps)
        # a stochastic scheduler (the consistency sampler's re-noising) draws from the caller's generator
        takes_generator = "generator" in inspect.signature(self.scheduler.step).parameters
        step_kwargs = {"generator": generator} if takes_generator else {}

        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._current_timestep = t
                context = {"step_index": i, "sigma": float(self.scheduler.sigmas[i]),
                           "num_inference_steps": len(timesteps), "timestep": t}
                x = latents.to(dtype)
                if do_cfg and cfg_mode == "batched":
                    with self.transformer.cache_context("cond_uncond", **context):
                        both = self.transformer(
                            hidden_states=torch.cat([x, x]),
                            timestep=t.expand(2 * batch),
                            encoder_hidden_states=torch.cat([uncond, cond]),
                            attention_kwargs=attention_kwargs,
                            return_dict=False,
                        )[0]
                    noise_uncond, noise_pred = both.chunk(2)
                else:
                    with self.transformer.cache_context("cond", **context):
                        noise_pred = self.transformer(
                            hidden_states=x, timestep=t.expand(batch), encoder_hidden_states=cond,
                            attention_kwargs=attention_kwargs, return_dict=False,
                        )[0]
                    if do_cfg:
                        with self.transformer.cache_context("uncond", **context):
                            noise_uncond = self.transformer(
                                hidden_states=x, timestep=t.expand(batch), encoder_hidden_states=uncond,
                                attention_kwargs=attention_kwargs, return_dict=False,
                            )[0]
                if do_cfg:
                    noise_pred = noise_uncond + guidance_scale * (noise_pred - noise_uncond)
                latents = self.scheduler.step(noise_pred.float(), t, latents, return_dict=False, **step_kwargs)[0]
                if callback_on_step_end is not None:
                    local = {"latents": latents}
                    outputs = callback_on_step_end(
                        self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs}
                    )
                    latents = outputs.pop("latents", latents)
                progress_bar.update()

        self._current_timestep = None
        if output_type == "latent":
            video = latents
        else:
            pixels = unpack(latents.float())
            if output_type == "pt":
                video = pixels.permute(0, 1, 4, 2, 3)
            else:
                video = pixels.cpu().numpy().astype(np.float32)
                if output_type == "pil":
                    video = [self.numpy_to_pil(clip) for clip in video]
        self.maybe_free_model_hooks()
        if not return_dict:
            return (video,)
        return WanPipelineOutput(frames=video)

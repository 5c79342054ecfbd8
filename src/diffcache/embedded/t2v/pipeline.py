"""The embedded text-to-video pipeline: a tiny ``WanTransformer3DModel`` sampled like ``WanPipeline``.

There is no VAE: a clip of ``frames × H × W × 3`` pixels in [0, 1] is packed into a latent of
``12 × frames × H/2 × W/2`` by mapping to [-1, 1] and pixel-unshuffling each frame by 2 (``pack`` /
``unpack``). The denoiser is a real diffusers ``WanTransformer3DModel``, so every Wan-family code path in
diffcache serves this model and real Wan models alike.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput

from .. import shapes
from ..pipeline import ShapesPipeline
from ..text import ShapesTextEncoder

UNSHUFFLE = 2
CFG_MODES = ("split", "batched")


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


class TinyShapesT2VPipeline(ShapesPipeline):
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
    denoiser_name = "transformer"

    def __init__(
        self,
        transformer: WanTransformer3DModel,
        text_encoder: ShapesTextEncoder,
        scheduler: FlowMatchEulerDiscreteScheduler,
    ):
        super().__init__()
        self.register_modules(transformer=transformer, text_encoder=text_encoder, scheduler=scheduler)
        self._init_call_state()
        self._current_timestep = None
        self._attention_kwargs = None

    @classmethod
    def from_scratch(cls, seed: int = 0, shift: float = 1.0) -> "TinyShapesT2VPipeline":
        """A randomly initialised pipeline with the embedded model's architecture (what training starts from)."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            transformer = WanTransformer3DModel(**tiny_transformer_config())
            text_encoder = ShapesTextEncoder(embed_dim=transformer.config.text_dim)
        return cls(transformer, text_encoder, FlowMatchEulerDiscreteScheduler(shift=shift))

    def check_inputs(self, num_inference_steps, guidance_scale, cfg_mode, output_type, num_frames, height, width):
        if cfg_mode not in CFG_MODES:
            raise ValueError(f"cfg_mode={cfg_mode!r} is not supported; use one of {', '.join(CFG_MODES)}.")
        self.check_common_inputs(num_inference_steps, guidance_scale, output_type)
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
        self.check_callback_inputs(callback_on_step_end_tensor_inputs)
        self.begin_call(guidance_scale)
        self._attention_kwargs = attention_kwargs
        self._current_timestep = None
        do_cfg = self.do_classifier_free_guidance
        device = self._execution_device
        cond, uncond, batch = self.prepare_embeddings(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                                      num_videos_per_prompt, device)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        self.scheduler.set_begin_index(0)
        timesteps = self.scheduler.timesteps
        shape = (batch, self.transformer.config.in_channels, num_frames, height // UNSHUFFLE, width // UNSHUFFLE)
        latents = self.prepare_latents(shape, generator, latents, device)
        dtype = self.transformer.dtype
        # a stochastic scheduler (the consistency sampler's re-noising) draws from the caller's generator
        takes_generator = "generator" in inspect.signature(self.scheduler.step).parameters
        step_kwargs = {"generator": generator} if takes_generator else {}

        def predict(i, t, latents):
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
            return self.guide(noise_uncond, noise_pred) if do_cfg else noise_pred

        latents = self.denoise(latents, timesteps, predict, step_kwargs, callback_on_step_end,
                               callback_on_step_end_tensor_inputs)
        self._current_timestep = None
        video = self.convert_output(latents, output_type, unpack)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (video,)
        return WanPipelineOutput(frames=video)

"""What ``diffcache distill`` needs to know of a real diffusers teacher: its family, its noise schedule, its student.

Two families are served, each by one small class:

- :class:`WanTeacher`: ``WanPipeline`` (Wan 2.1 text-to-video, ``WanTransformer3DModel``; flow matching,
  ``x_σ = (1 − σ)·x0 + σ·ε``, the denoiser predicts ``v`` at ``timestep = 1000·σ``).
- :class:`UNetVideoTeacher`: ``TextToVideoSDPipeline`` (ModelScope) and ``AnimateDiffPipeline``
  (``UNet3DConditionModel`` / ``UNetMotionModel``; a DDPM noise schedule, ``x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε``,
  the denoiser predicts ``ε`` or ``v`` as the scheduler's ``prediction_type`` says).

Each gives the teacher's guided ODE solver (the data cache's trajectories), the consistency function of a
student at a stored trajectory point, and the few-step scheduler the student is saved with, which is a
diffusers scheduler so that the student folder loads in plain diffusers:

- flow matching: ``FlowMatchLCMScheduler`` with the teacher's shift; ``f(x, σ) = x − σ·v`` (what its ``step``
  computes). The teacher's ODE is solved by Euler on the teacher's shifted σ grid with ``solver_steps`` steps,
  refined so that every σ the student's scheduler visits at 1, 2, 4 and 8 steps is a grid point.
- DDPM schedules: ``LCMScheduler`` (latent consistency models, Luo et al. 2023, arXiv:2310.04378) with the
  teacher's betas; ``f(x, t) = c_skip(t)·x + c_out(t)·x̂0(x, t)`` with LCM's boundary scalings (σ_data 0.5,
  timestep scaling 10), as ``LCMScheduler.step`` computes it. The teacher's ODE is solved by DDIM on LCM's
  50-step skipping grid ``t = 999, 979, …, 19`` and a last step to the clean sample; every timestep the
  student's scheduler visits at 1, 2, 4 and 8 steps lies on it (LCM's design).

Consistency pairs (``σ_i`` above ``σ_j`` on one stored trajectory) are formed by index into the stored points;
the last point is the clean sample, where ``f(x) = x`` (the boundary condition).

CogVideoX, LTX-Video, HunyuanVideo and the other families caching supports are refused for now, with that
reason: their latents are packed or their transformers take extra positional inputs that the trajectory solver
and the training loop do not pass.
"""

from __future__ import annotations

import inspect
import math

import torch

#: step counts whose sampling points are always stored (the student is trained where it is evaluated)
SAMPLE_STEPS = (1, 2, 4, 8)

SUPPORTED = {"WanPipeline": "Wan 2.1 text-to-video", "TextToVideoSDPipeline": "ModelScope text-to-video",
             "AnimateDiffPipeline": "AnimateDiff"}


class UnsupportedTeacherError(ValueError):
    """The pipeline is not one ``diffcache distill`` can distil (the message names those it can)."""


def teacher_for(pipe) -> "PipelineTeacher":
    """The teacher wrapper for a loaded diffusers pipeline; refuses, naming the accepted ones, otherwise."""
    name = type(pipe).__name__
    if name == "WanPipeline":
        if getattr(pipe, "transformer_2", None) is not None:
            raise UnsupportedTeacherError(
                "a two-expert Wan 2.2 pipeline (transformer and transformer_2) is not distilled yet: the student "
                "would have to replace both experts; distil a Wan 2.1 or a one-transformer Wan 2.2 pipeline.")
        return WanTeacher(pipe)
    if name in ("TextToVideoSDPipeline", "AnimateDiffPipeline"):
        return UNetVideoTeacher(pipe)
    accepted = ", ".join(f"{k} ({v})" for k, v in SUPPORTED.items())
    raise UnsupportedTeacherError(
        f"diffcache distill does not distil {name} yet; it distils the embedded tiny-shapes-t2v and these "
        f"diffusers text-to-video pipelines: {accepted}. (CogVideoX, LTX-Video and HunyuanVideo pack their "
        "latents or take positional inputs the trainer does not pass.)")


class PipelineTeacher:
    """A diffusers text-to-video teacher: text encoding, latent shape, one denoiser call, its schedule."""

    model_attr = "transformer"
    student_scheduler_name = ""

    def __init__(self, pipe):
        self.pipe = pipe

    # -- the pipeline ---------------------------------------------------------------------------------------
    @property
    def model(self) -> torch.nn.Module:
        return getattr(self.pipe, self.model_attr)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def call_defaults(self) -> dict:
        """The pipeline's own default height, width and frame count (``None`` where it has none)."""
        params = inspect.signature(type(self.pipe).__call__).parameters
        return {k: params[k].default if k in params else None for k in ("height", "width", "num_frames")}

    def encode(self, prompts: list[str], negative_prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cond (N, L, D), uncond (1, L, D))`` from the pipeline's own text encoder."""
        raise NotImplementedError

    def latent_shape(self, height: int, width: int, frames: int) -> tuple[int, ...]:
        raise NotImplementedError

    def denoise(self, model, x: torch.Tensor, timestep: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """The raw model output (``v`` or ``ε``/``v``) for latents ``x`` at model timesteps ``timestep``."""
        raise NotImplementedError

    # -- the schedule ---------------------------------------------------------------------------------------
    def student_scheduler(self):
        raise NotImplementedError

    def sampling_points(self, steps: int) -> list[float]:
        """The model timesteps the student's scheduler evaluates at ``steps`` steps."""
        s = self.student_scheduler()
        s.set_timesteps(steps)
        return [float(t) for t in s.timesteps]

    def solver_grid(self, solver_steps: int, keep_every: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(timesteps (P,), kept (P,) bool)``: the solver's model timesteps; the clean end is the last point
        (timestep 0). Kept points are every ``keep_every``-th grid point, every sampling point, and the end."""
        raise NotImplementedError

    def solver_step(self, x, t, t_next, guided) -> torch.Tensor:
        raise NotImplementedError

    def consistency(self, x: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``f(x, t)`` from the model output ``out`` at ``t`` (per-sample ``t``, shape ``(N,)``)."""
        raise NotImplementedError

    def upper_point_weights(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Sampling weights of a pair's upper point: ``0.5 + #{N ∈ 1, 2, 4, 8 : the N-step student samples at
        it}`` (the clean end is never an upper point), as for the embedded model."""
        w = torch.full((len(timesteps),), 0.5)
        for n in SAMPLE_STEPS:
            for t in self.sampling_points(n):
                w[(timesteps - t).abs() < 1e-3] += 1.0
        w[-1] = 0.0
        return w / w.sum()

    @torch.no_grad()
    def trajectory(self, cond: torch.Tensor, uncond: torch.Tensor, noise: torch.Tensor, guidance_scale: float,
                   solver_steps: int, keep_every: int, batch_size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's guided ODE solution from ``noise`` to its sample at the kept grid points:
        ``(N, P, *latent)`` in float16 and their model timesteps ``(P,)`` (last: the clean sample, 0)."""
        grid, kept = self.solver_grid(solver_steps, keep_every)
        model, dtype, device = self.model, self.dtype, self.device
        out = []
        for start in range(0, noise.shape[0], batch_size):
            x = noise[start:start + batch_size].to(device, torch.float32)
            n = x.shape[0]
            c = cond[start:start + batch_size].to(device, dtype)
            u = uncond.to(device, dtype).expand(n, *uncond.shape[1:])
            points = [x.half().cpu()]
            for i in range(len(grid) - 1):
                t = grid[i].to(device)
                both = self.denoise(model, torch.cat([x, x]).to(dtype), t.expand(2 * n), torch.cat([u, c])).float()
                o_u, o_c = both.chunk(2)
                x = self.solver_step(x, grid[i], grid[i + 1], o_u + guidance_scale * (o_c - o_u))
                if kept[i + 1]:
                    points.append(x.half().cpu())
            out.append(torch.stack(points, 1))
        return torch.cat(out), grid[kept].clone()


class WanTeacher(PipelineTeacher):
    """``WanPipeline``: flow matching, ``v`` prediction at ``1000·σ``; student scheduler ``FlowMatchLCMScheduler``."""

    model_attr = "transformer"
    student_scheduler_name = "FlowMatchLCMScheduler"

    def __init__(self, pipe, max_sequence_length: int = 512):
        super().__init__(pipe)
        self.max_sequence_length = max_sequence_length

    @property
    def shift(self) -> float:
        config = self.pipe.scheduler.config
        for key in ("flow_shift", "shift"):  # UniPCMultistepScheduler, FlowMatchEulerDiscreteScheduler
            value = config.get(key)
            if value is not None and config.get("use_dynamic_shifting") is not True:
                return float(value)
        return 1.0

    def encode(self, prompts, negative_prompt):
        cond, uncond = self.pipe.encode_prompt(prompts, negative_prompt=[negative_prompt] * len(prompts),
                                               do_classifier_free_guidance=True, num_videos_per_prompt=1,
                                               max_sequence_length=self.max_sequence_length, device=self.device)
        return cond, uncond[:1]

    def latent_shape(self, height, width, frames):
        p = self.pipe
        return (self.model.config.in_channels, (frames - 1) // p.vae_scale_factor_temporal + 1,
                height // p.vae_scale_factor_spatial, width // p.vae_scale_factor_spatial)

    def denoise(self, model, x, timestep, embeds):
        return model(hidden_states=x, timestep=timestep, encoder_hidden_states=embeds, return_dict=False)[0]

    def student_scheduler(self):
        from diffusers import FlowMatchLCMScheduler

        return FlowMatchLCMScheduler(num_train_timesteps=1000, shift=self.shift)

    def solver_grid(self, solver_steps, keep_every):
        u = torch.linspace(1.0, 0.0, solver_steps + 1, dtype=torch.float64)
        s = self.shift
        base = s * u / (1 + (s - 1) * u)
        sample = torch.tensor(sorted({t / 1000.0 for n in SAMPLE_STEPS for t in self.sampling_points(n)}),
                              dtype=torch.float64)
        sigmas = torch.cat([base, sample]).unique().flip(0)  # descending, 1 … 0
        keep_base = base[::keep_every]
        kept = torch.zeros(len(sigmas), dtype=torch.bool)
        for value in torch.cat([keep_base, sample, base[-1:]]):
            kept |= (sigmas - value).abs() < 1e-9
        return (1000.0 * sigmas).float(), kept

    def solver_step(self, x, t, t_next, guided):
        return x + (float(t_next) - float(t)) / 1000.0 * guided

    def consistency(self, x, t, out):
        sigma = (t.float() / 1000.0).view(-1, *([1] * (x.dim() - 1)))
        return x - sigma * out


class UNetVideoTeacher(PipelineTeacher):
    """``TextToVideoSDPipeline`` / ``AnimateDiffPipeline``: a DDPM schedule; student scheduler ``LCMScheduler``."""

    model_attr = "unet"
    student_scheduler_name = "LCMScheduler"
    original_steps = 50  # LCM's skipping grid: t = 999, 979, …, 19
    sigma_data = 0.5
    timestep_scaling = 10.0

    def __init__(self, pipe):
        super().__init__(pipe)
        from diffusers import DDPMScheduler

        config = dict(pipe.scheduler.config)
        self.prediction_type = config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise UnsupportedTeacherError(f"a {self.prediction_type!r} U-Net teacher is not distilled; "
                                          "accepted: epsilon or v_prediction.")
        ddpm = DDPMScheduler.from_config(config)
        self.alphas_cumprod = ddpm.alphas_cumprod.double()
        self.num_train_timesteps = int(ddpm.config.num_train_timesteps)

    def encode(self, prompts, negative_prompt):
        cond, uncond = self.pipe.encode_prompt(prompts, self.device, 1, True,
                                               negative_prompt=[negative_prompt] * len(prompts))
        return cond, uncond[:1]

    def latent_shape(self, height, width, frames):
        return (self.model.config.in_channels, frames, height // self.pipe.vae_scale_factor,
                width // self.pipe.vae_scale_factor)

    def denoise(self, model, x, timestep, embeds):
        return model(x, timestep, encoder_hidden_states=embeds, return_dict=False)[0]

    def student_scheduler(self):
        from diffusers import LCMScheduler

        config = {k: v for k, v in self.pipe.scheduler.config.items() if not k.startswith("_")}
        config.update(original_inference_steps=self.original_steps, timestep_scaling=self.timestep_scaling,
                      prediction_type=self.prediction_type, clip_sample=False, thresholding=False,
                      set_alpha_to_one=True)
        return LCMScheduler.from_config(config)

    def solver_grid(self, solver_steps, keep_every):
        if solver_steps != self.original_steps:
            raise ValueError(f"a U-Net teacher is solved on LCM's {self.original_steps}-step DDIM grid; "
                             f"solver_steps must be {self.original_steps}, got {solver_steps}.")
        stride = self.num_train_timesteps // self.original_steps
        grid = torch.arange(self.original_steps, 0, -1) * stride - 1  # 999, 979, …, 19
        timesteps = torch.cat([grid, torch.tensor([-1])]).float()  # −1: the clean end (ᾱ = 1)
        sample = {t for n in SAMPLE_STEPS for t in self.sampling_points(n)}
        kept = torch.zeros(len(timesteps), dtype=torch.bool)
        kept[::keep_every] = True
        kept[-1] = True
        for i, t in enumerate(timesteps.tolist()):
            if t in sample:
                kept[i] = True
        return timesteps, kept

    def _alpha(self, t) -> torch.Tensor:
        t = torch.as_tensor(t)
        a = self.alphas_cumprod[t.clamp(min=0).long()]
        return torch.where(t < 0, torch.ones_like(a), a)

    def _x0_eps(self, x, t, out):
        shape = (-1, *([1] * (x.dim() - 1)))
        a = self._alpha(t).to(x.device).view(shape).float()
        if self.prediction_type == "epsilon":
            eps = out
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        else:
            x0 = a.sqrt() * x - (1 - a).sqrt() * out
            eps = (1 - a).sqrt() * x + a.sqrt() * out
        return x0, eps

    def solver_step(self, x, t, t_next, guided):
        """One DDIM step (η = 0) from ``t`` to ``t_next`` (−1: to the clean sample)."""
        x0, eps = self._x0_eps(x, torch.tensor([float(t)]), guided)
        a_next = self._alpha(torch.tensor([float(t_next)])).to(x.device).float()
        return a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps

    def consistency(self, x, t, out):
        """LCM's ``c_skip·x + c_out·x̂0`` (``LCMScheduler.get_scalings_for_boundary_condition_discrete``)."""
        shape = (-1, *([1] * (x.dim() - 1)))
        x0, _ = self._x0_eps(x, t, out)
        scaled = t.double().clamp(min=0) * self.timestep_scaling
        c_skip = (self.sigma_data ** 2 / (scaled ** 2 + self.sigma_data ** 2)).float().to(x.device).view(shape)
        c_out = (scaled / (scaled ** 2 + self.sigma_data ** 2).sqrt()).float().to(x.device).view(shape)
        return c_skip * x + c_out * x0

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        return t.long()


def bytes_per_clip(latent_shape, points: int, embed_shape, embed_bytes: int) -> int:
    """Bytes one clip takes in a data cache slice: its float16 trajectory and its prompt embedding."""
    return 2 * points * math.prod(latent_shape) + embed_bytes * math.prod(embed_shape)

"""Multistep consistency sampling and the student pipeline a distillation round saves.

``ConsistencyFlowMatchScheduler`` is diffusers' ``FlowMatchLCMScheduler`` (one step: ``x0 = x_σ − σ·v``, then
re-noise ``x0`` to the next σ with fresh noise, the multistep consistency sampling of Song et al. 2023,
Algorithm 1) with one change: for ``N`` steps the σ schedule is the uniform ``1, 1 − 1/N, …, 1/N`` instead
of LCM's ``linspace(1, 0.001, N)``, whose last step sits at σ = 0.001 and so wastes one of only two steps.

``DistilledShapesT2VPipeline`` is the embedded text-to-video pipeline with that scheduler and with guidance
*distilled into the weights*: it always runs one denoiser call per step (no classifier-free guidance), so a
``guidance_scale`` above 1 is ignored with a warning instead of being applied a second time.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from diffusers import FlowMatchLCMScheduler
from diffusers import SchedulerMixin  # noqa: F401 - diffusers' loader looks the base class up in this module

from ..embedded import shapes
from ..embedded.t2v.pipeline import TinyShapesT2VPipeline
from ..errors import GuidanceDistilledWarning

DEFAULT_STUDENT_STEPS = 4



class ConsistencyFlowMatchScheduler(FlowMatchLCMScheduler):
    """Multistep consistency sampler for flow-matching students on the uniform σ grid ``1 − i/N``.

    Example::

        scheduler = ConsistencyFlowMatchScheduler()
        scheduler.set_timesteps(4)   # sigmas 1, 0.75, 0.5, 0.25 (then 0); timesteps 1000, 750, 500, 250
    """

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None, timesteps=None):
        if sigmas is None and timesteps is None:
            if num_inference_steps is None or num_inference_steps < 1:
                raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}.")
            sigmas = [1.0 - i / num_inference_steps for i in range(num_inference_steps)]
        return super().set_timesteps(device=device, sigmas=sigmas, mu=mu, timesteps=timesteps)


class DistilledShapesT2VPipeline(TinyShapesT2VPipeline):
    """A few-step student of ``tiny-shapes-t2v`` made by ``diffcache distill`` (guidance distilled, 1–8 steps).

    Example::

        pipe = diffcache.load_pipeline("runs/distill/round-06")
        video = pipe("a red circle moving left", num_inference_steps=4,
                     generator=torch.Generator().manual_seed(0)).frames   # (1, 8, 32, 32, 3)

    The folder's ``distillation.json`` says which teacher, guidance scale and round it came from.
    """

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int = shapes.HEIGHT,
        width: int = shapes.WIDTH,
        num_frames: int = shapes.NUM_FRAMES,
        num_inference_steps: int = DEFAULT_STUDENT_STEPS,
        guidance_scale: float | None = None,
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
        """Generate clips in ``num_inference_steps`` consistency steps (default 4) without CFG; the arguments
        are those of :class:`TinyShapesT2VPipeline`. ``guidance_scale`` and negative prompts have no effect
        (the teacher's guidance is in the weights); a scale above 1 is ignored with a warning."""
        if guidance_scale is not None and guidance_scale > 1.0:
            warnings.warn(
                f"guidance_scale={guidance_scale:g} ignored: this student has the teacher's guidance distilled "
                "into its weights and samples without classifier-free guidance (see distillation.json).",
                GuidanceDistilledWarning, stacklevel=2,
            )
        return super().__call__(
            prompt, negative_prompt=None, height=height, width=width, num_frames=num_frames,
            num_inference_steps=num_inference_steps, guidance_scale=1.0,
            num_videos_per_prompt=num_videos_per_prompt, generator=generator, latents=latents,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=None, output_type=output_type,
            return_dict=return_dict, attention_kwargs=attention_kwargs, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, cfg_mode=cfg_mode,
        )

"""What the embedded pipelines share: the parts of a diffusers pipeline ``__call__`` that do not depend on the
denoiser (a Wan transformer for ``tiny-shapes-t2v``, a Stable Diffusion U-Net for ``tiny-shapes-t2i``).

:class:`ShapesPipeline` holds the call state diffusers' pipelines expose and cache methods read
(``guidance_scale``, ``do_classifier_free_guidance``, ``num_timesteps``, ``interrupt``, as in ``WanPipeline`` and
``StableDiffusionPipeline`` of https://github.com/huggingface/diffusers), prompt encoding with the word-level
:class:`~diffcache.embedded.text.ShapesTextEncoder`, the argument checks common to both, classifier-free guidance
(Ho & Salimans, arXiv:2207.12598), the initial noise, the sampling loop around the scheduler and the conversion of
pixels to the requested ``output_type``. Each pipeline keeps its denoiser call (which cache context, how the
batch is laid out) and its latent layout.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

OUTPUT_TYPES = ("np", "pt", "pil", "latent")


class ShapesPipeline(DiffusionPipeline):
    """Base of the embedded pipelines; a subclass names its denoiser component in ``denoiser_name`` and writes
    ``__call__`` from the steps below."""

    denoiser_name = ""  #: the component the text embeddings' dtype follows: "transformer" or "unet"
    _callback_tensor_inputs = ["latents"]

    def _init_call_state(self) -> None:
        self._guidance_scale = 1.0
        self._num_timesteps = 0
        self._interrupt = False

    # -- call state, named as in diffusers' pipelines --------------------------------------------------------------
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

    # -- the steps of a call ----------------------------------------------------------------------------------
    def _denoiser_dtype(self) -> torch.dtype:
        return getattr(self, self.denoiser_name).dtype

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings ``(len(prompts), words, dim)`` in the denoiser's dtype."""
        return self.text_encoder.encode(prompts).to(self._denoiser_dtype())

    def check_common_inputs(self, num_inference_steps, guidance_scale, output_type) -> None:
        """The checks every embedded pipeline makes (the size checks depend on the denoiser)."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} is not supported; use one of {', '.join(OUTPUT_TYPES)}.")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}.")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0 (1 or less disables guidance), got {guidance_scale}.")

    def check_callback_inputs(self, callback_on_step_end_tensor_inputs) -> None:
        unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} are not available; "
                             f"choose from {self._callback_tensor_inputs}.")

    def begin_call(self, guidance_scale: float) -> None:
        """Reset the call state at the start of a call."""
        self._guidance_scale = guidance_scale
        self._interrupt = False

    def prepare_embeddings(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, per_prompt: int,
                           device) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """``(cond, uncond, batch)``: the prompts' embeddings, each repeated ``per_prompt`` times on ``device`` in
        the denoiser's dtype; ``uncond`` (the negative prompts', default ``""``) only under classifier-free
        guidance, else ``None``; ``batch`` = prompts × ``per_prompt``."""
        dtype = self._denoiser_dtype()
        if prompt_embeds is None:
            if prompt is None:
                raise ValueError("pass a prompt (or prompt_embeds).")
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt_embeds = self.encode_prompt(prompts)
        elif prompt is not None:
            raise ValueError("pass either prompt or prompt_embeds, not both.")
        num_prompts = prompt_embeds.shape[0]
        cond = prompt_embeds.to(device, dtype).repeat_interleave(per_prompt, 0)
        uncond = None
        if self.do_classifier_free_guidance:
            if negative_prompt_embeds is None:
                negatives = negative_prompt if negative_prompt is not None else ""
                negatives = [negatives] * num_prompts if isinstance(negatives, str) else list(negatives)
                if len(negatives) != num_prompts:
                    raise ValueError(f"got {num_prompts} prompts but {len(negatives)} negative prompts.")
                negative_prompt_embeds = self.encode_prompt(negatives)
            uncond = negative_prompt_embeds.to(device, dtype).repeat_interleave(per_prompt, 0)
        return cond, uncond, num_prompts * per_prompt

    @staticmethod
    def prepare_latents(shape: tuple[int, ...], generator, latents: torch.Tensor | None, device) -> torch.Tensor:
        """The initial noise (float32, drawn from ``generator``), or the caller's ``latents`` checked for shape."""
        if latents is None:
            return randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}.")
        return latents

    def guide(self, noise_uncond: torch.Tensor, noise_cond: torch.Tensor) -> torch.Tensor:
        """Classifier-free guidance: ``uncond + w · (cond − uncond)``."""
        return noise_uncond + self._guidance_scale * (noise_cond - noise_uncond)

    def denoise(self, latents: torch.Tensor, timesteps, predict: Callable, step_kwargs: dict,
                callback_on_step_end: Callable | None, callback_on_step_end_tensor_inputs) -> torch.Tensor:
        """The sampling loop: ``predict(i, t, latents)`` gives the (guided) noise prediction of step ``i``, the
        scheduler steps on it in float32, then ``callback_on_step_end`` may replace the latents."""
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                noise_pred = predict(i, t, latents)
                latents = self.scheduler.step(noise_pred.float(), t, latents, return_dict=False, **step_kwargs)[0]
                if callback_on_step_end is not None:
                    local = {"latents": latents}
                    outputs = callback_on_step_end(
                        self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs}
                    )
                    latents = outputs.pop("latents", latents)
                progress_bar.update()
        return latents

    def convert_output(self, latents: torch.Tensor, output_type: str, unpack: Callable):
        """Latents → ``output_type``: ``"latent"`` as they are; else pixels ``(..., H, W, 3)`` in [0, 1] from
        ``unpack``: ``"pt"`` channels first ``(..., 3, H, W)``, ``"np"`` float32 arrays, ``"pil"`` PIL images (a
        list per clip for video)."""
        if output_type == "latent":
            return latents
        pixels = unpack(latents.float())
        if output_type == "pt":
            return pixels.movedim(-1, -3)
        array = pixels.cpu().numpy().astype(np.float32)
        if output_type == "pil":
            return self.numpy_to_pil(array) if array.ndim == 4 else [self.numpy_to_pil(clip) for clip in array]
        return array

"""Training recipe of the embedded ``tiny-shapes-t2i`` model (``diffcache train tiny-shapes-t2i``).

ε-prediction on Stable Diffusion's β schedule (scaled linear, 0.00085 … 0.012, 1000 steps), as Stable Diffusion
is trained: ``x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε`` and the U-Net predicts ``ε``. Data: one still shape per 32 × 32 image
(the text-to-video model's procedural shapes, one frame, no motion), prompt ``"a {colour} {shape}"``, rendered on
the fly from a per-step seed.

Why the recipe is what it is. With ε-prediction the hard part is the *high* noise levels: at t = 999
(ᾱ = 0.0047) the clean-image estimate is ``x0 = (x_t − √(1−ᾱ)·ε̂)/√ᾱ``, so an ε error is multiplied by ~15,
and the correct ε̂ is almost an exact copy of the input. The first recipe (1500 steps, t uniform, plain
foreground-weighted MSE, EMA 0.995, unnormalised latents) left an ε error of RMS 0.127 at t = 999 — about 30×
the ideal — which DDIM carried into the sample as pixel noise that later steps took for signal (25.8 %
adherence; DDIM started from a real image noised to t ≤ 600 gave clean images, so low-t accuracy was not the
problem). What fixed it, in order of effect:

- **normalised latents** (``t2i.pipeline.LATENT_SHIFT`` / ``LATENT_SCALE``, the role of Stable Diffusion's VAE
  scaling factor): the images in [-1, 1] have mean −0.82 and std 0.35 (a dark background covers nine tenths
  of each), so against unit noise the signal was 2.9× weaker than a unit-variance latent's and the schedule's
  SNR effectively 8× lower; the same ε error then put 2.9× more error into the predicted image, and the
  background's mean leaked into x_t as a DC offset that pure-noise sampling lacks. With the latents normalised
  and nothing else changed, 4000 steps reached 93.0 % (the same recipe on raw latents: 44.5 %);
- **min-SNR-γ weighting** (γ = 5; for ε-prediction the weight is ``min(SNR, γ)/SNR``): the lowest noise levels
  have the largest ε loss but matter least, and uniform weighting let them dominate the gradient;
- **half of each batch at t ∈ [700, 1000)**, the other half uniform over all 1000 timesteps, so the identity-like
  high-t regime gets more of the updates (400-step probes on raw latents: ε MSE at t = 999 0.090 plain, 0.082
  min-SNR, 0.074 min-SNR + high-t half);
- **a DC term**: ``DC_WEIGHT ×`` the squared per-channel spatial mean of the ε error, in the spirit of the
  multi-scale loss of *simple diffusion* (Hoogeboom et al., 2023). On raw latents three quarters of the
  remaining ε error at t = 981 was that per-channel mean (the U-Net's group norms remove feature means, so the
  DC has to travel a hard path), amplified into a colour cast in a 2 × 2 pixel pattern; the term cut it from
  0.046 to 0.018;
- **20000 steps, EMA decay 0.999**: the error left at high t is a precision error that longer training and weight
  averaging shrink. It shows as a fine grain on the background: the median background standard deviation over
  64 held-out images falls from 0.039 at 6000 steps to 0.025 at 10000 and 0.011 at 20000, and the share of
  images with one object on a uniform background (the checker's *clean*) from 53.1 % to 82.8 % and 93.8 %
  (adherence 96.9 %, 98.4 %, 99.2 %; 50 DDIM steps, guidance 5, seeds 1,000,000 onwards).

Result: ``diffcache train tiny-shapes-t2i --compile`` took about 1 h 56 min with two threads on the 2-core machine
(0.344 s per compiled step; the first 765 steps ran uncompiled at 0.43 s, and a run may switch ``--compile`` on
when it resumes) and scores 99.2 % adherence, 93.8 % clean on the held-out seeds (gate: 95 % and 90 %).

Cost: 20000 steps of 16 images. What keeps it small:

- a 16 × 16 latent (pixel-unshuffle 2, no VAE) and a 3.2 M-parameter U-Net of three resolutions;
- a foreground-weighted loss: the shape covers under a tenth of the pixels, so its (dilated) latent pixels
  weigh ``1 + FOREGROUND_WEIGHT`` and the capacity goes to the shape's outline, which decides the checker's
  square / circle / triangle call;
- 10 % prompt dropout for classifier-free guidance; AdamW with warm-up and cosine decay; the EMA weights ship.

Checkpointing and resuming are those of every embedded recipe (:class:`diffcache.embedded.trainer.ShapesTrainer`):
model, EMA weights and optimiser state in safetensors every ``checkpoint_every`` steps, and the same command
continues where a stopped run left off.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import shapes
from ..trainer import BaseTrainConfig, ShapesTrainer, step_generator
from .pipeline import UNSHUFFLE, TinyShapesT2IPipeline, pack_images, render_images

FOREGROUND_WEIGHT = 3.0
PROMPT_DROPOUT = 0.1
MIN_SNR_GAMMA = 5.0
HIGH_T_FRACTION = 0.5
HIGH_T_START = 700
DC_WEIGHT = 10.0


@dataclass
class T2ITrainConfig(BaseTrainConfig):
    """The text-to-image recipe: 20000 steps of 16 images, 200 warm-up steps (the fields of
    :class:`~diffcache.embedded.trainer.BaseTrainConfig`)."""

    steps: int = 20000
    batch_size: int = 16
    warmup_steps: int = 200


def make_image_batch(config: T2ITrainConfig, step: int):
    """The batch of training step ``step``: a pure function of (seed, step)."""
    g = step_generator(config.seed, step)
    specs = shapes.random_specs(config.batch_size, g, with_direction=False)
    images, masks = render_images(specs, g)
    prompts = [s.prompt for s in specs]
    drop = torch.rand(len(prompts), generator=g) < PROMPT_DROPOUT
    prompts = ["" if d else p for p, d in zip(prompts, drop)]
    x0 = pack_images(images)
    uniform = torch.randint(0, 1000, (len(prompts),), generator=g)
    high = torch.randint(HIGH_T_START, 1000, (len(prompts),), generator=g)
    timesteps = torch.where(torch.rand(len(prompts), generator=g) < HIGH_T_FRACTION, high, uniform)
    noise = torch.randn(x0.shape, generator=g)
    fg = F.avg_pool2d(masks.unsqueeze(1), UNSHUFFLE)
    fg = F.max_pool2d(fg, kernel_size=3, stride=1, padding=1)
    weight = 1.0 + FOREGROUND_WEIGHT * (fg > 0.05).float()
    return prompts, x0, timesteps, noise, weight



def image_loss(pipe: TinyShapesT2IPipeline, prompts, x0, timesteps, noise, weight) -> tuple[torch.Tensor, dict]:
    xt = pipe.scheduler.add_noise(x0, noise, timesteps)
    pred = pipe.unet(xt, timesteps, encoder_hidden_states=pipe.text_encoder.encode(prompts), return_dict=False)[0]
    error = pred - noise
    # the per-channel spatial mean of ε (its DC) decides each latent channel's offset; see the module docstring
    per_image = (weight * error**2).mean(dim=(1, 2, 3)) + DC_WEIGHT * error.mean(dim=(2, 3)).pow(2).mean(dim=1)
    loss = (min_snr_weight(pipe.scheduler, timesteps) * per_image).mean()
    return loss, {"epsilon": per_image.mean().item()}


def min_snr_weight(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Min-SNR-γ loss weight for ε-prediction, ``min(SNR, γ) / SNR`` (Hang et al., 2023): 1 wherever SNR ≤ γ
    (t ≳ 100 here), down to ~0.005 at t = 0, so the large but harmless ε errors of the lowest noise levels stop
    dominating the gradient."""
    alpha_bar = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    return snr.clamp(max=MIN_SNR_GAMMA) / snr


class T2ITrainer(ShapesTrainer):
    """:class:`~diffcache.embedded.trainer.ShapesTrainer` for the text-to-image U-Net (same checkpoints, resume,
    EMA and schedule as the text-to-video recipe)."""

    def build_pipeline(self) -> TinyShapesT2IPipeline:
        return TinyShapesT2IPipeline.from_scratch(seed=self.config.seed)

    def compute_loss(self) -> tuple[torch.Tensor, dict]:
        return image_loss(self.pipe, *make_image_batch(self.config, self.step))

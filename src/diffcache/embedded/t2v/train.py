"""Training recipe of the embedded ``tiny-shapes-t2v`` model (``diffcache train tiny-shapes-t2v``).

Flow matching (rectified flow, the convention of diffusers' ``FlowMatchEulerDiscreteScheduler``):
``x_σ = (1 − σ)·x0 + σ·ε``, the denoiser predicts ``v = ε − x0`` at ``timestep = 1000·σ``.

What makes shapes and motion learnable in about 1.5 hours on two CPU cores (0.75–0.95 s per step on the machine
it was tuned on; 1.32 s on a 2-core AMD EPYC without AMX, docs/embedded-models.md):

- **256 tokens per clip**: pixel-unshuffle 2 then a ``(2, 2, 2)`` patch, so the transformer can be 192 wide.
- **Foreground-weighted loss**: the shape covers under a tenth of the pixels; its pixels (dilated by one
  latent pixel) weigh ``1 + FOREGROUND_WEIGHT`` in the velocity loss, so capacity goes to shape and edges.
- **Motion loss**: the frame-to-frame difference of the predicted clean clip ``x0 = x_σ − σ·v`` is matched to
  the true one (weight ``MOTION_WEIGHT``). It is large exactly at the high noise levels where the direction
  of motion is decided.
- Logit-normal σ (90%) mixed with uniform σ (10%) so the extremes are seen too; 10% prompt dropout for
  classifier-free guidance; AdamW with warm-up and cosine decay; EMA of the weights is what ships.
- Data rendered on the fly from a per-step seed (milliseconds per batch), so training is deterministic and a
  resumed run continues exactly where it stopped (on the same machine and thread count: float results of
  CPU kernels may differ elsewhere). The loop, schedule, EMA and checkpoints are those every embedded recipe
  shares (:mod:`diffcache.embedded.trainer`); this module holds the recipe: config defaults, data and loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import shapes
from ..trainer import BaseTrainConfig, ShapesTrainer, step_generator
from .pipeline import TinyShapesT2VPipeline, pack

FOREGROUND_WEIGHT = 3.0
MOTION_WEIGHT = 1.0
PROMPT_DROPOUT = 0.1
UNIFORM_SIGMA_FRACTION = 0.1


@dataclass
class TrainConfig(BaseTrainConfig):
    """The text-to-video recipe: 6000 steps of 24 clips, 250 warm-up steps (the fields of :class:`BaseTrainConfig`)."""

    steps: int = 6000
    batch_size: int = 24
    warmup_steps: int = 250


def make_batch(config: TrainConfig, step: int):
    """The batch of training step ``step``: a pure function of (seed, step)."""
    g = step_generator(config.seed, step)
    specs = shapes.random_specs(config.batch_size, g)
    clips, masks = shapes.render_clips(specs, g)
    prompts = [s.prompt for s in specs]
    drop = torch.rand(len(prompts), generator=g) < PROMPT_DROPOUT
    prompts = ["" if d else p for p, d in zip(prompts, drop)]
    x0 = pack(clips)
    logit_normal = torch.sigmoid(torch.randn(len(prompts), generator=g))
    uniform = torch.rand(len(prompts), generator=g)
    sigma = torch.where(torch.rand(len(prompts), generator=g) < UNIFORM_SIGMA_FRACTION, uniform, logit_normal)
    noise = torch.randn(x0.shape, generator=g)
    # foreground weight at latent resolution, dilated by one latent pixel
    b, f, h, w = masks.shape
    fg = F.avg_pool2d(masks.flatten(0, 1).unsqueeze(1), 2).view(b, f, 1, h // 2, w // 2).transpose(1, 2)
    fg = F.max_pool3d(fg, kernel_size=(1, 3, 3), stride=1, padding=(0, 1, 1))
    weight = 1.0 + FOREGROUND_WEIGHT * (fg > 0.05).float()
    return prompts, x0, sigma, noise, weight


def loss_fn(pipe: TinyShapesT2VPipeline, prompts, x0, sigma, noise, weight) -> tuple[torch.Tensor, dict]:
    s = sigma.view(-1, 1, 1, 1, 1)
    xt = (1 - s) * x0 + s * noise
    target = noise - x0
    pred = pipe.transformer(xt, sigma * 1000, pipe.text_encoder.encode(prompts), return_dict=False)[0]
    velocity = (weight * (pred - target) ** 2).mean()
    x0_pred = xt - s * pred
    motion = F.mse_loss(x0_pred.diff(dim=2), x0.diff(dim=2))
    return velocity + MOTION_WEIGHT * motion, {"velocity": velocity.item(), "motion": motion.item()}


class Trainer(ShapesTrainer):
    """:class:`~diffcache.embedded.trainer.ShapesTrainer` for the text-to-video transformer."""

    def build_pipeline(self) -> TinyShapesT2VPipeline:
        return TinyShapesT2VPipeline.from_scratch(seed=self.config.seed)

    def compute_loss(self) -> tuple[torch.Tensor, dict]:
        return loss_fn(self.pipe, *make_batch(self.config, self.step))

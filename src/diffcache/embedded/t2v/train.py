"""Training recipe of the embedded ``tiny-shapes-t2v`` model (``diffcache train tiny-shapes-t2v``).

Flow matching (rectified flow, the convention of diffusers' ``FlowMatchEulerDiscreteScheduler``):
``x_σ = (1 − σ)·x0 + σ·ε``, the denoiser predicts ``v = ε − x0`` at ``timestep = 1000·σ``.

What makes shapes and motion learnable in about 1.5 hours on two CPU cores (0.75–0.95 s per step):

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
  CPU kernels may differ elsewhere): the checkpoint holds the model, the EMA weights and the optimiser state
  (safetensors, with its step in the file's metadata), and the step counter and loss history (JSON).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .. import shapes
from .pipeline import TinyShapesT2VPipeline, pack

FOREGROUND_WEIGHT = 3.0
MOTION_WEIGHT = 1.0
PROMPT_DROPOUT = 0.1
UNIFORM_SIGMA_FRACTION = 0.1


@dataclass
class TrainConfig:
    steps: int = 6000
    batch_size: int = 24
    lr: float = 1e-3
    warmup_steps: int = 250
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 250


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


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


def _lr_at(config: TrainConfig, step: int) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _atomic_save(tensors: dict, path: Path, metadata: dict[str, str]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


class Trainer:
    """Holds the model, its EMA copy and the optimiser; saves and restores all three."""

    def __init__(self, config: TrainConfig, out_dir: str | os.PathLike):
        self.config = config
        self.out = Path(out_dir)
        self.pipe = self.build_pipeline()
        self.params = dict(self.trainable().named_parameters())
        self.ema = {k: p.detach().clone() for k, p in self.params.items()}
        self.optimizer = torch.optim.AdamW(
            list(self.params.values()), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.99)
        )
        self.step = 0
        self.history: list[dict] = []

    def build_pipeline(self):
        """The randomly initialised pipeline training starts from."""
        return TinyShapesT2VPipeline.from_scratch(seed=self.config.seed)

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.transformer

    def trainable(self) -> torch.nn.Module:
        return torch.nn.ModuleDict({"transformer": self.pipe.transformer, "text_encoder": self.pipe.text_encoder})

    def compute_loss(self) -> tuple[torch.Tensor, dict]:
        """The loss of the current step's batch."""
        return loss_fn(self.pipe, *make_batch(self.config, self.step))

    # -- checkpoints -------------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoint"

    def save_checkpoint(self) -> None:
        d = self.checkpoint_dir
        d.mkdir(parents=True, exist_ok=True)
        tensors = {f"model.{k}": p.detach() for k, p in self.params.items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.items()})
        names = {id(p): k for k, p in self.params.items()}
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                for key, value in self.optimizer.state.get(p, {}).items():
                    tensors[f"optim.{names[id(p)]}.{key}"] = torch.as_tensor(value).detach().clone()
        _atomic_save(tensors, d / "state.safetensors", {"step": str(self.step)})
        meta = {"step": self.step, "config": asdict(self.config), "history": self.history}
        tmp = d / "meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, d / "meta.json")

    def load_checkpoint(self) -> bool:
        d = self.checkpoint_dir
        if not (d / "meta.json").exists():
            return False
        meta = json.loads((d / "meta.json").read_text())
        same = lambda c: {k: v for k, v in c.items() if k != "checkpoint_every"}  # noqa: E731
        if same(meta["config"]) != same(asdict(self.config)):
            raise ValueError(
                f"the checkpoint in {d} was made with a different training config ({meta['config']}); "
                f"resume with the same options or choose another --out."
            )
        with safe_open(str(d / "state.safetensors"), "pt") as f:
            saved_step = (f.metadata() or {}).get("step")
        # the tensors' own step is authoritative: a run stopped between the two writes of a checkpoint
        # leaves weights newer than meta.json (whose loss history then just misses a few entries)
        step = int(saved_step) if saved_step is not None else meta["step"]
        tensors = load_file(str(d / "state.safetensors"))
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(tensors[f"model.{k}"])
                self.ema[k].copy_(tensors[f"ema.{k}"])
        for p_name, p in self.params.items():
            state = {key.rsplit(".", 1)[1]: v for key, v in tensors.items()
                     if key.startswith(f"optim.{p_name}.") and key.count(".") == p_name.count(".") + 2}
            if state:
                self.optimizer.state[p] = state
        self.step = step
        self.history = [h for h in meta["history"] if h["step"] <= step]
        return True

    def export(self, path: str | os.PathLike) -> TinyShapesT2VPipeline:
        """Save the EMA weights as a loadable pipeline (``save_pretrained`` layout, safetensors)."""
        with torch.no_grad():
            backup = {k: p.detach().clone() for k, p in self.params.items()}
            for k, p in self.params.items():
                p.copy_(self.ema[k])
            self.pipe.save_pretrained(path)
            for k, p in self.params.items():
                p.copy_(backup[k])
        return self.pipe

    # -- training -----------------------------------------------------------------------------------------
    def train_step(self) -> dict:
        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = _lr_at(cfg, self.step)
        loss, parts = self.compute_loss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.params.values()), 1.0)
        self.optimizer.step()
        decay = min(cfg.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for k, p in self.params.items():
                self.ema[k].lerp_(p.detach(), 1 - decay)
        self.step += 1
        return {"loss": loss.item(), **parts}

    def run(self, progress: bool = True, until: int | None = None) -> None:
        """Train to ``config.steps`` (or to ``until``), checkpointing every ``checkpoint_every`` steps."""
        self.denoiser.train()
        end = min(self.config.steps, until) if until is not None else self.config.steps
        bar = tqdm(total=self.config.steps, initial=self.step, disable=not progress, desc="training",
                   unit="step", dynamic_ncols=True)
        window: list[float] = []
        start = time.perf_counter() - (self.history[-1]["elapsed_s"] if self.history else 0.0)
        try:
            while self.step < end:
                stats = self.train_step()
                window.append(stats["loss"])
                if self.step % 50 == 0 or self.step == end:
                    self.history.append({"step": self.step, "loss": sum(window) / len(window),
                                         "elapsed_s": round(time.perf_counter() - start, 1)})
                    window = []
                    bar.set_postfix(loss=f"{self.history[-1]['loss']:.4f}")
                if self.step % self.config.checkpoint_every == 0 or self.step == end:
                    self.save_checkpoint()
                bar.update()
        except KeyboardInterrupt:
            if self.step % self.config.checkpoint_every:
                self.save_checkpoint()  # keep the work done since the last periodic checkpoint
            raise
        finally:
            bar.close()
            self.denoiser.eval()

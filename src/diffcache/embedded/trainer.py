"""What the embedded models' training recipes share (``diffcache train tiny-shapes-t2v`` / ``tiny-shapes-t2i``).

:class:`ShapesTrainer` holds the pipeline being trained, an exponential moving average of its weights (what
ships) and an AdamW optimiser (Loshchilov & Hutter, arXiv:1711.05101) on a linear warm-up then cosine-decay
learning rate (SGDR, arXiv:1608.03983) to a tenth of the peak; gradients are clipped to norm 1. A recipe
(``t2v/train.py``, ``t2i/train.py``) gives its config defaults, the pipeline it starts from and the loss of a step's
batch, rendered on the fly from a per-step seed (:func:`step_generator`), so training is a pure function of the
config and a resumed run continues exactly where it stopped (on the same machine and thread count: float results
of CPU kernels may differ elsewhere).

A checkpoint (``<out>/checkpoint/``) holds the trainable weights, their EMA and the optimiser state in
``state.safetensors`` (its step in the file's metadata) and the step, config and loss history in ``meta.json``;
both are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm


@dataclass
class BaseTrainConfig:
    """The options every recipe has (a recipe's config subclasses this and sets its own defaults)."""

    steps: int = 6000
    batch_size: int = 24
    lr: float = 1e-3
    warmup_steps: int = 250
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 250
    #: "fp32", or "bf16": the loss's forward and backward under ``torch.autocast`` in bfloat16 (weights, EMA,
    #: optimiser state and gradients stay float32: mixed precision as Micikevicius et al., arXiv:1710.03740)
    precision: str = "fp32"
    #: run the denoiser through ``torch.compile`` (compiled in place: parameter names and checkpoints unchanged)
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}.")


#: the training precisions a recipe accepts
PRECISIONS = ("fp32", "bf16")
#: config fields a resumed run may change
RUNTIME_FIELDS = ("checkpoint_every", "compile")


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator training step ``step`` draws its batch from."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**64)  # any seed in 0 … 2**64 − 1


def lr_at(config: BaseTrainConfig, step: int) -> float:
    """The learning rate of step ``step``: linear warm-up over ``warmup_steps``, then cosine decay to ``lr / 10``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def atomic_save(tensors: dict, path: Path, metadata: dict[str, str]) -> None:
    """``save_file`` to a temporary name, then rename: a stopped run never leaves a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


class ShapesTrainer(ABC):
    """Holds the model, its EMA copy and the optimiser; saves and restores all three.

    A recipe subclasses it with :meth:`build_pipeline` (the randomly initialised pipeline training starts from)
    and :meth:`compute_loss` (the loss of the current step's batch and its named parts); the trainable weights are
    the pipeline's denoiser (``pipe.denoiser_name``) and text encoder."""

    def __init__(self, config: BaseTrainConfig, out_dir: str | os.PathLike):
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

    @abstractmethod
    def build_pipeline(self):
        """The randomly initialised pipeline training starts from."""

    @abstractmethod
    def compute_loss(self) -> tuple[torch.Tensor, dict]:
        """The loss of the current step's batch, and its named parts (floats) for the step's statistics."""

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.pipe.denoiser_name)

    def trainable(self) -> torch.nn.Module:
        """The modules trained (their parameters' names key the checkpoint): the denoiser, then the text encoder."""
        return torch.nn.ModuleDict({self.pipe.denoiser_name: self.denoiser, "text_encoder": self.pipe.text_encoder})

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
        atomic_save(tensors, d / "state.safetensors", {"step": str(self.step)})
        meta = {"step": self.step, "config": asdict(self.config), "history": self.history}
        tmp = d / "meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, d / "meta.json")

    def load_checkpoint(self) -> bool:
        d = self.checkpoint_dir
        if not (d / "meta.json").exists():
            return False
        meta = json.loads((d / "meta.json").read_text())
        # fields added to the config since a checkpoint was written take their defaults; how often to checkpoint
        # and whether to compile are how the recipe runs, not what it computes, and may change on resume
        defaults = asdict(type(self.config)())
        same = lambda c: {k: v for k, v in {**defaults, **c}.items() if k not in RUNTIME_FIELDS}  # noqa: E731
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

    def export(self, path: str | os.PathLike):
        """Save the EMA weights as a loadable pipeline (``save_pretrained`` layout, safetensors), atomically: written
        into ``.NAME.partial`` beside ``path`` and renamed onto it, so a stopped export never leaves half a model."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        with torch.no_grad():
            backup = {k: p.detach().clone() for k, p in self.params.items()}
            for k, p in self.params.items():
                p.copy_(self.ema[k])
            try:
                self.pipe.save_pretrained(tmp)
            finally:
                for k, p in self.params.items():
                    p.copy_(backup[k])
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        return self.pipe

    # -- training -----------------------------------------------------------------------------------------
    def train_step(self) -> dict:
        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(cfg, self.step)
        # enable_grad: whatever grad mode the caller is in (torch.no_grad(), a notebook's global switch)
        with torch.enable_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
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
        if self.config.compile and not getattr(self.denoiser, "_compiled_call_impl", None):
            self.denoiser.compile()  # in place: the module, its parameters and their names stay the same
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

"""``diffcache distill --model``: iterative consistency distillation of a real diffusers text-to-video pipeline.

The same rounds as the embedded model's (:mod:`.rounds`): each round adds a data cache slice, continues
consistency distillation from the previous round's student, evaluates it and saves it; a killed run resumes at
the first unfinished round. What differs for a real pipeline (a ``WanPipeline``, a ``TextToVideoSDPipeline`` or
an ``AnimateDiffPipeline``; :mod:`.teachers` holds what is family-specific):

- **Prompts** come from a text file (one per line) or the embedded grammar; the text encoder (UMT5-XXL for Wan,
  CLIP for the U-Nets) runs once per prompt, and the slice stores its embeddings and the teacher's latent
  trajectories only (never pixels): ``DIR/cache/slice-XX.safetensors`` plus ``DIR/cache/manifest.json``.
- **The student** is saved as a standard diffusers pipeline folder of the teacher's class with the student's
  denoiser and a diffusers few-step scheduler (``FlowMatchLCMScheduler`` or ``LCMScheduler``); the text encoder,
  tokenizer and VAE files are hard links to ``DIR/base`` (the teacher, saved once), so a round costs the disk
  of its denoiser only. ``DiffusionPipeline.from_pretrained(DIR/round-XX)`` loads it; sample it with
  ``guidance_scale=1`` (the teacher's guidance is in its weights) and 1–8 steps.
- **Memory**: the student is trained in float32 (the master weights), under ``torch.autocast`` in the teacher's
  dtype when that is bfloat16 or float16, with gradient checkpointing where the model supports it; the
  teacher keeps its own dtype and only solves trajectories.
- **Evaluation**: PSNR of the student's clips against the teacher's at ``reference_steps`` (with guidance),
  and the probe loss; the checker's adherence only exists for the embedded model.

Departure from the embedded recipe: no foreground weight in the loss (a real video has no single shape);
every latent counts the same.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..quality.protocols import psnr
from .cache import DataCache, Slice
from .rounds import STATE_FILE, Distiller, DistillConfig, _atomic_json, _seed, round_dir
from .teachers import PipelineTeacher, bytes_per_clip, teacher_for

MANIFEST = "manifest.json"
BASE = "base"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class PipelineDistillConfig(DistillConfig):
    """A distillation run of a diffusers pipeline: the embedded run's fields and the model's."""

    teacher: str = ""  # model id or folder
    rounds: int = 6
    slice_clips: int = 16
    probe_clips: int = 4
    solver_steps: int = 32  # Euler steps for flow matching (U-Nets: LCM's 50-step DDIM grid, fixed)
    keep_every: int = 4
    train_steps: int = 100
    batch_size: int = 4
    lr: float = 1e-5
    eval_prompts: int = 8
    reference_steps: int = 50
    foreground_weight: float = 0.0  # not used: no single shape in a real video
    prompts_sha256: str = ""  # of the prompt list (file lines or the grammar)
    height: int = 0
    width: int = 0
    frames: int = 0
    dtype: str = "bfloat16"
    negative_prompt: str = ""
    max_sequence_length: int = 512  # Wan's UMT5 tokens (the U-Nets use CLIP's 77)
    gradient_checkpointing: bool = True

    def identity(self) -> dict:
        d = super().identity()
        d.pop("gradient_checkpointing")  # memory against time; the result is the same
        return d


def read_prompts(path: str | os.PathLike | None) -> list[str]:
    """The prompts of a text file, one per line (blank lines and lines starting with ``#`` skipped), or the
    embedded grammar's 60 when ``path`` is ``None``."""
    if path is None:
        from ..embedded.shapes import prompts as grammar_prompts

        return list(grammar_prompts())
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"--prompts {path}: no such file (a text file with one prompt per line)") from None
    except IsADirectoryError:
        raise ValueError(f"--prompts {path} is a folder; give a text file with one prompt per line.") from None
    except UnicodeDecodeError:
        raise ValueError(f"--prompts {path} is not UTF-8 text; give a text file with one prompt per line.") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"--prompts {path} holds no prompt; write one prompt per line.")
    return prompts


def prompts_digest(prompts: list[str]) -> str:
    return hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()


class PipelineDistiller(Distiller):
    """A distillation run of a diffusers ``pipe`` in ``out``: ``PipelineDistiller(config, out, pipe, prompts).run()``."""

    def __init__(self, config: PipelineDistillConfig, out: str | os.PathLike, teacher, prompts: list[str],
                 progress: bool = True, log=print, device: str | torch.device | None = None):
        self.config = config
        self.out = Path(out)
        self.progress = progress
        self.log = log
        self.prompts = list(prompts)
        if config.prompts_sha256 != prompts_digest(self.prompts):
            raise ValueError("config.prompts_sha256 does not match the prompts given (use prompts_digest).")
        self.adapter: PipelineTeacher = teacher_for(teacher)
        if hasattr(self.adapter, "max_sequence_length"):
            self.adapter.max_sequence_length = config.max_sequence_length
        self._check_config()
        self._check_sizes()
        teacher.set_progress_bar_config(disable=True)
        if device is not None:
            teacher.to(device)
        self.teacher = teacher
        self.cache = DataCache(self.out / "cache", embed_dtype=self.adapter.dtype)
        model = self.adapter.model
        self.student = copy.deepcopy(model).float()
        self.target = copy.deepcopy(model).float().requires_grad_(False).eval()
        if config.gradient_checkpointing and getattr(self.student, "_supports_gradient_checkpointing", False):
            self.student.enable_gradient_checkpointing()
        self.params = dict(self.student.named_parameters())
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=config.lr, betas=(0.9, 0.99),
                                           weight_decay=0.0)
        self.round = 0
        self.optimizer_steps = 0
        self.slices: list[Slice] = []
        self.weights: list[torch.Tensor] = []

    # -- checks and estimates -------------------------------------------------------------------------------
    def _check_config(self) -> None:
        c = self.config
        if c.dtype not in DTYPES:
            raise ValueError(f"dtype {c.dtype!r} is not one of {', '.join(DTYPES)}.")
        super()._check_config()

    def _check_sizes(self) -> None:
        c, a = self.config, self.adapter
        if type(a).__name__ == "WanTeacher":
            if (c.frames - 1) % a.pipe.vae_scale_factor_temporal:
                raise ValueError(f"--frames {c.frames}: Wan takes 4k + 1 frames (for example 81, 49, 17, 5).")
            multiple = a.pipe.vae_scale_factor_spatial * a.model.config.patch_size[1]
        else:
            multiple = a.pipe.vae_scale_factor
        for name in ("height", "width"):
            value = getattr(c, name)
            if value < multiple or value % multiple:
                raise ValueError(f"--{name} {value}: {type(a.pipe).__name__} takes multiples of {multiple}.")

    def estimate(self) -> dict:
        """Disk of one slice and of the run's cache, and the time of one round, from one timed forward pass."""
        c, a = self.config, self.adapter
        shape = a.latent_shape(c.height, c.width, c.frames)
        grid, kept = a.solver_grid(c.solver_steps, c.keep_every)
        with torch.no_grad():
            cond, _ = a.encode(self.prompts[:1], c.negative_prompt)
            x = torch.zeros((2, *shape), device=a.device, dtype=a.dtype)
            emb = cond.expand(2, *cond.shape[1:]).to(a.dtype)
            t = grid[:1].expand(2).to(a.device)
            a.denoise(a.model, x, t, emb)  # warm-up
            start = time.perf_counter()
            a.denoise(a.model, x, t, emb)
            if a.device.type == "cuda":
                torch.cuda.synchronize()
            forward = time.perf_counter() - start
        per_clip = bytes_per_clip(shape, int(kept.sum()), cond.shape[1:], cond.element_size())
        calls = len(grid) - 1
        slice_s = c.slice_clips * calls * forward  # one batched [uncond, cond] call per solver step
        train_s = c.train_steps * (c.batch_size / 2) * forward * 4  # forward + backward (≈3×) + target forward
        eval_s = c.eval_prompts * sum(c.eval_steps) * forward / 2
        negative = cond[0].numel() * cond.element_size()  # a slice also holds the one negative-prompt embedding
        return {"bytes_per_clip": per_clip, "slice_bytes": per_clip * c.slice_clips + negative,
                "cache_bytes": per_clip * (c.slice_clips * c.rounds + c.probe_clips) + negative * (c.rounds + 1),
                "forward_seconds": forward, "round_seconds": slice_s + train_s + eval_s,
                "points": int(kept.sum()), "solver_calls": calls, "latent_shape": list(shape)}

    # -- data cache -----------------------------------------------------------------------------------------
    def slice_prompts(self, index: int) -> tuple[list[str], list[int]]:
        """Prompts and noise seeds of slice ``index`` (0 = held-out probe): shuffled passes over the prompt list,
        every clip with its own seed."""
        c = self.config
        n = c.probe_clips if index == 0 else c.slice_clips
        k = 0 if index == 0 else (index - 1) * c.slice_clips
        out = []
        while len(out) < n:
            epoch, pos = divmod(k, len(self.prompts))
            g = torch.Generator().manual_seed(_seed(c.seed, 7, epoch, index == 0))
            out.append(self.prompts[int(torch.randperm(len(self.prompts), generator=g)[pos])])
            k += 1
        return out, [_seed(c.seed, 11, index, i) for i in range(n)]

    def _make_slice(self, index: int) -> Slice:
        c, a = self.config, self.adapter
        prompts, seeds = self.slice_prompts(index)
        with torch.no_grad():
            cond, uncond = a.encode(prompts, c.negative_prompt)
        shape = a.latent_shape(c.height, c.width, c.frames)
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
        traj, timesteps = a.trajectory(cond, uncond, noise, c.guidance_scale, c.solver_steps, c.keep_every)
        return Slice(prompts, seeds, cond.cpu(), uncond.cpu(), traj, timesteps)

    def get_slice(self, index: int) -> Slice:
        data = self.cache.get(index, lambda: self._make_slice(index))
        self._write_manifest()
        return data

    def _write_manifest(self) -> None:
        c = self.config
        slices = []
        for path in sorted(self.cache.folder.glob("slice-*.safetensors")):
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
            slices.append({"file": path.name, "bytes": path.stat().st_size, "clips": len(json.loads(meta["prompts"])),
                           "seconds": float(meta.get("seconds", 0)), "tensors": shapes})
        _atomic_json(self.cache.folder / MANIFEST, {
            "what": "data cache of `diffcache distill`: per slice, the teacher's text embeddings (prompt_embeds, "
                    "negative_prompt_embeds) and its guided ODE trajectories in latent space (trajectory, float16, "
                    "from the noise to its sample at the model timesteps in `sigmas`); no pixels",
            "teacher": c.teacher, "family": type(self.adapter).__name__, "guidance_scale": c.guidance_scale,
            "height": c.height, "width": c.width, "frames": c.frames, "slices": slices,
            "bytes": sum(s["bytes"] for s in slices)})

    def _add_slice(self, index: int) -> None:
        data = self.get_slice(index)
        self.slices.append(data)
        self.weights.append(torch.ones(data.trajectory.shape[0]))

    # -- training -------------------------------------------------------------------------------------------
    def _autocast(self):
        dtype = DTYPES[self.config.dtype]
        device = self.adapter.device.type
        return torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32)

    def train_step(self, g: torch.Generator) -> float:
        c, a = self.config, self.adapter
        sizes = [s.trajectory.shape[0] for s in self.slices]
        flat = torch.randint(0, sum(sizes), (c.batch_size,), generator=g)
        points = self.slices[0].sigmas  # the stored points' model timesteps (the clean end last)
        p = len(points)
        hi = torch.multinomial(a.upper_point_weights(points), c.batch_size, replacement=True, generator=g)
        lo = hi + 1 + (torch.rand(c.batch_size, generator=g) * (p - 1 - hi)).long()
        x_hi, x_lo, emb = [], [], []
        for k, i, j in zip(flat.tolist(), hi.tolist(), lo.tolist()):
            s = 0
            while k >= sizes[s]:
                k -= sizes[s]
                s += 1
            traj = self.slices[s].trajectory[k]
            x_hi.append(traj[i].float())
            x_lo.append(traj[j].float())
            emb.append(self.slices[s].prompt_embeds[k])
        device = a.device
        x_hi, x_lo = torch.stack(x_hi).to(device), torch.stack(x_lo).to(device)
        emb = torch.stack(emb).to(device)
        t_hi, t_lo = points[hi].to(device), points[lo].to(device)
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr()
        with self._autocast():
            out = a.denoise(self.student, x_hi, t_hi, emb).float()
        pred = a.consistency(x_hi, t_hi, out)
        with torch.no_grad():
            target = x_lo.clone()
            live = lo < p - 1  # the clean end: f(x) = x
            if live.any():
                with self._autocast():
                    out_lo = a.denoise(self.target, x_lo[live], t_lo[live], emb[live]).float()
                target[live] = a.consistency(x_lo[live], t_lo[live], out_lo)
        loss = ((pred - target) ** 2).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.params.values()), 1.0)
        self.optimizer.step()
        self.optimizer_steps += 1
        with torch.no_grad():
            for p_t, p_s in zip(self.target.parameters(), self.params.values()):
                p_t.lerp_(p_s.detach(), 1 - c.target_decay)
        return loss.item()

    # -- sampling and evaluation ----------------------------------------------------------------------------
    def student_pipeline(self):
        """The teacher's pipeline class with the student's denoiser and the few-step scheduler."""
        a = self.adapter
        components = dict(self.teacher.components)
        components[a.model_attr] = self.student
        components["scheduler"] = a.student_scheduler()
        pipe = type(self.teacher)(**components)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _call(self, pipe, steps: int, guidance: float, **kwargs):
        c = self.config
        with self._autocast() if pipe is not self.teacher else contextlib.nullcontext():
            return pipe(num_inference_steps=steps, guidance_scale=guidance, height=c.height, width=c.width,
                        num_frames=c.frames, **kwargs).frames

    @torch.no_grad()
    def probe_loss(self, probe: Slice, steps: int) -> float:
        """MSE (latents) of the student's ``steps``-step sample from the probe noises to the teacher's ODE
        solution from the same noises (the scheduler's re-noising draws from a fixed seed)."""
        pipe = self.student_pipeline()
        self.student.eval()
        device = self.adapter.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(_seed(self.config.seed, 17, steps))
            latents = self._call(pipe, steps, 1.0, prompt_embeds=probe.prompt_embeds.to(device, self.adapter.dtype),
                                 latents=probe.trajectory[:, 0].float().to(device), output_type="latent",
                                 generator=torch.Generator().manual_seed(_seed(self.config.seed, 17, steps)))
        return float(((latents.float().cpu() - probe.trajectory[:, -1].float()) ** 2).mean())

    def eval_pairs(self) -> list[tuple[str, int]]:
        c = self.config
        return [(self.prompts[i % len(self.prompts)], _seed(c.seed, 19, i)) for i in range(c.eval_prompts)]

    @torch.no_grad()
    def _generate(self, pipe, steps: int, guidance: float | None) -> np.ndarray:
        clips = []
        device = self.adapter.device
        for prompt, seed in self.eval_pairs():
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed)  # a scheduler's re-noising that takes no generator (WanPipeline)
                frames = self._call(pipe, steps, 1.0 if guidance is None else guidance, prompt=prompt,
                                    negative_prompt=self.config.negative_prompt or None, output_type="np",
                                    generator=torch.Generator().manual_seed(seed))
            clips.append(np.asarray(frames, dtype=np.float32)[0])
        return np.stack(clips)

    def _metrics(self, clips: np.ndarray, reference: np.ndarray) -> dict:
        return {"psnr": float(np.mean([psnr(a, b) for a, b in zip(clips, reference)]))}

    def teacher_reference(self) -> tuple[dict, dict]:
        clips, metrics = super().teacher_reference()
        _atomic_json(self.out / "eval" / "prompts.json", [{"prompt": p, "seed": s} for p, s in self.eval_pairs()])
        return clips, metrics

    # -- saving ---------------------------------------------------------------------------------------------
    def _base(self) -> Path:
        """``DIR/base``: the teacher pipeline, saved once; round folders hard-link its unchanged components."""
        base = self.out / BASE
        if not (base / "model_index.json").exists():
            tmp = self.out / f".{BASE}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            self.teacher.save_pretrained(tmp, safe_serialization=True)
            shutil.rmtree(base, ignore_errors=True)
            os.replace(tmp, base)
        return base

    def _save_round(self, r: int, info: dict) -> Path:
        a, c = self.adapter, self.config
        base = self._base()
        final = round_dir(self.out, r)
        tmp = self.out / f".{final.name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for item in base.iterdir():  # text encoder, tokenizer, VAE …: hard links (a copy across file systems)
            if item.name in (a.model_attr, "scheduler", "model_index.json"):
                continue
            for file in [item] if item.is_file() else [f for f in item.rglob("*") if f.is_file()]:
                dest = tmp / file.relative_to(base)
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(file, dest)
                except OSError:
                    shutil.copy2(file, dest)
        index = json.loads((base / "model_index.json").read_text())
        scheduler = a.student_scheduler()
        index["scheduler"] = ["diffusers", type(scheduler).__name__]
        _atomic_json(tmp / "model_index.json", index)
        scheduler.save_pretrained(tmp / "scheduler")
        model_dir = tmp / a.model_attr
        self.student.save_config(model_dir)
        dtype = DTYPES[c.dtype]
        save_file({k: v.detach().to(dtype).contiguous() for k, v in self.student.state_dict().items()},
                  str(model_dir / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
        save_file({k: v.contiguous() for k, v in self._state_tensors().items()}, str(tmp / STATE_FILE),
                  metadata={"round": str(r)})
        _atomic_json(tmp / "distillation.json", {
            "what": "few-step student of a diffusers pipeline, consistency-distilled by `diffcache distill`",
            "teacher": c.teacher, "pipeline": type(self.teacher).__name__, "round": r,
            "guidance_scale_distilled": c.guidance_scale, "guidance_scale": 1.0,
            "scheduler": type(scheduler).__name__, "recommended_steps": [2, 4, 8], "default_steps": 4,
            "height": c.height, "width": c.width, "frames": c.frames,
            "use": f"DiffusionPipeline.from_pretrained(folder)(prompt, num_inference_steps=4, guidance_scale=1.0)",
        })
        _atomic_json(tmp / "round.json", info)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for older in range(1, r):  # only the last round's optimiser and target state is needed to resume
            stale = round_dir(self.out, older) / STATE_FILE
            if stale.exists():
                stale.unlink()
        return final

    def _restore(self, r: int) -> None:
        folder = round_dir(self.out, r)
        a = self.adapter
        weights = load_file(str(folder / a.model_attr / "diffusion_pytorch_model.safetensors"))
        tensors = load_file(str(folder / STATE_FILE))
        info = json.loads((folder / "round.json").read_text())
        with torch.no_grad():
            for k, p in self.params.items():  # the float32 master weights (the folder's are in the run's dtype)
                p.copy_(tensors[f"student.{k}"] if f"student.{k}" in tensors else weights[k].float())
            for k, p in self.target.named_parameters():
                p.copy_(tensors[f"target.{k}"])
        for name, p in self.params.items():
            state = {key.rsplit(".", 1)[1]: v.clone().to(p.device) for key, v in tensors.items()
                     if key.startswith(f"optim.{name}.") and key.count(".") == name.count(".") + 2}
            if state:
                self.optimizer.state[p] = state
        self.round = r
        self.optimizer_steps = info["optimizer_steps"]

    def _state_tensors(self) -> dict:
        # the master weights are float32; a round folder's denoiser is in the run's dtype, so the exact float32
        # student is kept in the training state as well (a resumed run continues from it, not from the cast)
        tensors = super()._state_tensors()
        tensors.update({f"student.{k}": p.detach().clone() for k, p in self.params.items()})
        return tensors


def student_info(folder: str | os.PathLike) -> dict | None:
    """What ``distillation.json`` in a student folder made by ``diffcache distill --model`` says (its guidance
    scale 1, default steps, trained size), or ``None`` for any other model."""
    path = Path(str(folder)).expanduser() / "distillation.json"
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and "pipeline" in info else None


def describe_estimate(e: dict, rounds: int) -> str:
    def size(b):
        for unit in ("B", "KB", "MB", "GB", "TB"):
            if b < 1000 or unit == "TB":
                return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
            b /= 1000

    return (f"estimate: data cache {size(e['cache_bytes'])} for {rounds} rounds ({size(e['slice_bytes'])} a slice, "
            f"{size(e['bytes_per_clip'])} a clip: {e['points']} trajectory points of latents "
            f"{'×'.join(map(str, e['latent_shape']))} in float16 and its prompt embedding); one round about "
            f"{_duration(e['round_seconds'])} (from one timed teacher call of {e['forward_seconds']:.3g} s; "
            f"{e['solver_calls']} solver calls per clip)")


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


__all__ = ["PipelineDistillConfig", "PipelineDistiller", "describe_estimate", "prompts_digest", "read_prompts"]

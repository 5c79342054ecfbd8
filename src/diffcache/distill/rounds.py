"""The round loop of ``diffcache distill``: data cache slice, consistency distillation, evaluation, save.

Round ``r`` (1-based):

1. **Data cache**: slice ``r`` is built once (:mod:`.cache`): ``slice_clips`` prompts, their embeddings and
   the teacher's guided ODE trajectories. Slice 0 is a held-out probe set built before round 1.
2. **Distil**: ``train_steps`` optimiser steps of consistency distillation on all slices ``1..r``, starting
   from round ``r − 1``'s student, its target network and its optimiser state.
3. **Evaluate**: the student's ``N``-step probe loss (MSE of its ``N``-step sample from a probe slice noise to
   the teacher's ODE solution from that noise), and, on a fixed prompt set, the checker's adherence and the
   PSNR against the teacher at ``reference_steps`` steps, for ``N`` in ``eval_steps``.
4. **Save** ``DIR/round-XX`` atomically (written as ``.round-XX.partial`` and renamed): a full pipeline
   (:class:`~.sampler.DistilledShapesT2VPipeline`, safetensors), ``training_state.safetensors`` (target
   network and optimiser), ``distillation.json`` and ``round.json`` (metrics, losses, timings).

A killed run resumes at the first unfinished round; finished rounds and stored slices are never redone. The
training noise of round ``r`` comes from a generator seeded by ``(seed, r)`` and the optimiser state is saved,
so a resumed run gives the same weights as an uninterrupted one (same machine and thread count).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..quality.protocols import psnr
from ..embedded.evaluate import score_clips
from ..embedded.t2v.pipeline import TinyShapesT2VPipeline, unpack
from ..embedded.shapes import prompts as grammar_prompts
from .cache import DataCache, Slice, teacher_trajectory
from .sampler import ConsistencyFlowMatchScheduler, DistilledShapesT2VPipeline

CONFIG_FILE = "distill.json"
ROUND_FILE = "round.json"
STATE_FILE = "training_state.safetensors"
FOREGROUND_THRESHOLD = 0.3  # as the checker's


@dataclass
class DistillConfig:
    """Everything that defines a distillation run (``rounds`` may grow when a run is continued)."""

    teacher: str = "tiny-shapes-t2v"
    rounds: int = 16
    slice_clips: int = 16  # trajectories added to the data cache per round
    probe_clips: int = 8  # held-out trajectories (slice 0) for the probe loss
    solver_steps: int = 32  # teacher Euler steps (uniform σ) per trajectory
    keep_every: int = 2  # trajectory points kept: every 2nd → σ = 1, 15/16, …, 0
    guidance_scale: float = 5.0  # the teacher's CFG, distilled into the student
    train_steps: int = 32  # optimiser steps per round
    batch_size: int = 16
    lr: float = 2e-4
    warmup_steps: int = 10
    target_decay: float = 0.9  # EMA decay of the target network θ⁻
    foreground_weight: float = 3.0  # as in the teacher's training loss
    eval_prompts: int = 60
    eval_steps: tuple[int, ...] = (2, 4, 8)
    reference_steps: int = 30  # the teacher run PSNR is measured against
    seed: int = 0

    def identity(self) -> dict:
        """The fields a resumed run must share with the stored one."""
        d = asdict(self)
        d.pop("rounds")
        d["eval_steps"] = list(d["eval_steps"])
        return d


def round_dir(out: Path, r: int) -> Path:
    return out / f"round-{r:02d}"


def finished_rounds(out: str | os.PathLike) -> list[int]:
    """Round numbers whose folders are complete (have ``round.json``), ascending."""
    out = Path(out)
    rounds = []
    for p in out.glob("round-*"):
        if p.is_dir() and (p / ROUND_FILE).exists() and p.name[6:].isdigit():
            rounds.append(int(p.name[6:]))
    return sorted(rounds)


def load_round(out: str | os.PathLike, r: int) -> dict:
    return json.loads((round_dir(Path(out), r) / ROUND_FILE).read_text())


def _seed(*parts: int) -> int:
    value = 0
    for p in parts:
        value = (value * 1_000_003 + int(p)) % (2**63 - 1)
    return value


def foreground_weight(endpoints: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-latent-pixel loss weight ``1 + weight·[shape pixel]`` ``(N, 1, F, h, w)`` from clean latents.

    The shape is found as the checker finds it (pixels far from the per-frame border median), at latent
    resolution and dilated by one latent pixel, as in the teacher's training loss."""
    pixels = unpack(endpoints.float())  # (N, F, H, W, 3)
    border = torch.cat([pixels[:, :, 0], pixels[:, :, -1], pixels[:, :, 1:-1, 0], pixels[:, :, 1:-1, -1]], dim=2)
    background = border.median(dim=2).values  # (N, F, 3)
    mask = ((pixels - background[:, :, None, None]).abs().amax(-1) > FOREGROUND_THRESHOLD).float()
    n, f, h, w = mask.shape
    fg = F.avg_pool2d(mask.flatten(0, 1).unsqueeze(1), 2).view(n, f, 1, h // 2, w // 2).transpose(1, 2)
    fg = F.max_pool3d(fg, kernel_size=(1, 3, 3), stride=1, padding=(0, 1, 1))
    return 1.0 + weight * (fg > 0.05).float()


def upper_point_weights(sigmas: torch.Tensor, sample_steps=(1, 2, 4, 8)) -> torch.Tensor:
    """Sampling weights of the upper point σ_i of a training pair: ``0.5 + #{N : the N-step sampler
    evaluates the student at σ_i}``, so the σ where few-step sampling happens are trained most (σ = 1 most
    of all); the last point (σ = 0) is never an upper point."""
    w = torch.full((len(sigmas),), 0.5)
    for n in sample_steps:
        w += ((sigmas * n - (sigmas * n).round()).abs() < 1e-4).float()
    w[-1] = 0.0
    return w / w.sum()


class Distiller:
    """One distillation run in ``out``: ``Distiller(config, out).run()``; resumes by itself."""

    def __init__(self, config: DistillConfig, out: str | os.PathLike, teacher: TinyShapesT2VPipeline | None = None,
                 progress: bool = True, log=print):
        self.config = config
        self.out = Path(out)
        self.progress = progress
        self.log = log
        self._check_config()
        if teacher is None:
            from ..loading import load_pipeline

            teacher = load_pipeline(config.teacher)
        if not isinstance(teacher, TinyShapesT2VPipeline) or isinstance(teacher, DistilledShapesT2VPipeline):
            raise ValueError(f"the teacher must be an embedded text-to-video pipeline (TinyShapesT2VPipeline); "
                             f"got {type(teacher).__name__}.")
        teacher.set_progress_bar_config(disable=True)
        self.teacher = teacher
        self.cache = DataCache(self.out / "cache")
        self.student = copy.deepcopy(teacher.transformer)
        self.target = copy.deepcopy(teacher.transformer).requires_grad_(False).eval()
        self.params = dict(self.student.named_parameters())
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=config.lr, betas=(0.9, 0.99),
                                           weight_decay=0.0)
        self.round = 0
        self.optimizer_steps = 0
        self.slices: list[Slice] = []
        self.weights: list[torch.Tensor] = []

    # -- run folder -----------------------------------------------------------------------------------------
    def _check_config(self) -> None:
        c = self.config
        for name in ("rounds", "slice_clips", "probe_clips", "solver_steps", "keep_every", "train_steps",
                     "batch_size", "eval_prompts", "reference_steps"):
            if int(getattr(c, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(c, name)}.")
        if c.solver_steps % c.keep_every:
            raise ValueError(f"solver_steps ({c.solver_steps}) must be a multiple of keep_every ({c.keep_every}).")
        if not c.eval_steps or min(c.eval_steps) < 1 or max(c.eval_steps) > 8:
            raise ValueError(f"eval_steps must be step counts from 1 to 8, got {c.eval_steps}.")
        if not 0 <= c.target_decay < 1:
            raise ValueError(f"target_decay must be in [0, 1), got {c.target_decay}.")
        stored = self.out / CONFIG_FILE
        if stored.exists():
            saved = json.loads(stored.read_text())
            if saved["identity"] != c.identity():
                diff = {k: (saved["identity"].get(k), v) for k, v in c.identity().items()
                        if saved["identity"].get(k) != v}
                raise ValueError(f"{self.out} holds a distillation run with other settings "
                                 f"({', '.join(f'{k}: stored {a!r}, asked {b!r}' for k, (a, b) in diff.items())}); "
                                 "continue it with the same settings, pass --force to start over, or choose "
                                 "another --out.")

    def _write_config(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / f".{CONFIG_FILE}.tmp"
        tmp.write_text(json.dumps({"identity": self.config.identity(), "rounds": self.config.rounds}, indent=1))
        os.replace(tmp, self.out / CONFIG_FILE)

    # -- data cache -----------------------------------------------------------------------------------------
    def slice_prompts(self, index: int) -> tuple[list[str], list[int]]:
        """Prompts and noise seeds of slice ``index`` (0 = held-out probe): slices 1, 2 split one shuffled
        pass over the grammar's 60 prompts, 3, 4 the next pass, and so on; every clip has its own seed."""
        prompts = grammar_prompts()
        c = self.config
        n = c.probe_clips if index == 0 else c.slice_clips
        out = []
        k = 0 if index == 0 else (index - 1) * c.slice_clips
        while len(out) < n:
            epoch, pos = divmod(k, len(prompts))
            g = torch.Generator().manual_seed(_seed(c.seed, 7, epoch, index == 0))
            out.append(prompts[int(torch.randperm(len(prompts), generator=g)[pos])])
            k += 1
        seeds = [_seed(c.seed, 11, index, i) for i in range(n)]
        return out, seeds

    def _make_slice(self, index: int) -> Slice:
        prompts, seeds = self.slice_prompts(index)
        pipe = self.teacher
        with torch.no_grad():
            cond = pipe.encode_prompt(prompts).float()
            uncond = pipe.encode_prompt([""]).float()
        cfg = pipe.transformer.config
        from ..embedded import shapes
        from ..embedded.t2v.pipeline import UNSHUFFLE

        shape = (cfg.in_channels, shapes.NUM_FRAMES, shapes.HEIGHT // UNSHUFFLE, shapes.WIDTH // UNSHUFFLE)
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
        traj, sigmas = teacher_trajectory(pipe.transformer, cond, uncond, noise, self.config.guidance_scale,
                                          self.config.solver_steps, self.config.keep_every)
        return Slice(prompts, seeds, cond, uncond, traj, sigmas)

    def get_slice(self, index: int) -> Slice:
        return self.cache.get(index, lambda: self._make_slice(index))

    # -- training -------------------------------------------------------------------------------------------
    def _lr(self) -> float:
        return self.config.lr * min(1.0, (self.optimizer_steps + 1) / self.config.warmup_steps)

    def consistency_loss(self, x_hi, s_hi, x_lo, s_lo, embeds, weight) -> torch.Tensor:
        """``mean(weight · (f_θ(x_hi, σ_hi) − f_θ⁻(x_lo, σ_lo))²)`` with ``f(x, σ) = x − σ·v(x, σ)``;
        ``f_θ⁻(x, 0) = x`` (the boundary condition), so pairs ending at σ = 0 regress on the teacher's sample."""
        view = (-1, 1, 1, 1, 1)
        v = self.student(hidden_states=x_hi, timestep=1000 * s_hi, encoder_hidden_states=embeds, return_dict=False)[0]
        pred = x_hi - s_hi.view(view) * v
        with torch.no_grad():
            target = x_lo.clone()
            live = s_lo > 0
            if live.any():
                v_lo = self.target(hidden_states=x_lo[live], timestep=1000 * s_lo[live],
                                   encoder_hidden_states=embeds[live], return_dict=False)[0]
                target[live] = x_lo[live] - s_lo[live].view(view) * v_lo
        return (weight * (pred - target) ** 2).mean()

    def train_step(self, g: torch.Generator) -> float:
        c = self.config
        sizes = [s.trajectory.shape[0] for s in self.slices]
        total = sum(sizes)
        flat = torch.randint(0, total, (c.batch_size,), generator=g)
        sigmas = self.slices[0].sigmas
        p = len(sigmas)
        hi = torch.multinomial(upper_point_weights(sigmas), c.batch_size, replacement=True, generator=g)
        lo = hi + 1 + (torch.rand(c.batch_size, generator=g) * (p - 1 - hi)).long()
        x_hi, x_lo, emb, w = [], [], [], []
        for k, i, j in zip(flat.tolist(), hi.tolist(), lo.tolist()):
            s = 0
            while k >= sizes[s]:
                k -= sizes[s]
                s += 1
            traj = self.slices[s].trajectory[k]
            x_hi.append(traj[i].float())
            x_lo.append(traj[j].float())
            emb.append(self.slices[s].prompt_embeds[k])
            w.append(self.weights[s][k])
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr()
        with torch.enable_grad():  # whatever grad mode the caller is in (the loss's targets use no_grad inside)
            loss = self.consistency_loss(torch.stack(x_hi), sigmas[hi], torch.stack(x_lo), sigmas[lo],
                                         torch.stack(emb).to(self.student.dtype), torch.stack(w))
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
    def student_pipeline(self) -> DistilledShapesT2VPipeline:
        pipe = DistilledShapesT2VPipeline(self.student, self.teacher.text_encoder, ConsistencyFlowMatchScheduler())
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    def probe_loss(self, probe: Slice, steps: int) -> float:
        """MSE (latents) of the student's ``steps``-step sample from the probe noises to the teacher's ODE
        solution from the same noises (the re-noising draws from fixed seeds)."""
        pipe = self.student_pipeline()
        self.student.eval()
        latents = pipe(prompt_embeds=probe.prompt_embeds, latents=probe.trajectory[:, 0].float(),
                       num_inference_steps=steps, output_type="latent",
                       generator=[torch.Generator().manual_seed(s + 1) for s in probe.seeds]).frames
        return float(((latents.float() - probe.trajectory[:, -1].float()) ** 2).mean())

    def eval_pairs(self) -> list[tuple[str, int]]:
        return grammar_prompts(self.config.eval_prompts, seeded=True)

    @torch.no_grad()
    def _generate(self, pipe, steps: int, guidance: float | None) -> np.ndarray:
        pairs = self.eval_pairs()
        clips = []
        for start in range(0, len(pairs), 20):
            chunk = pairs[start:start + 20]
            kwargs = {} if guidance is None else {"guidance_scale": guidance}
            clips.append(pipe([p for p, _ in chunk], num_inference_steps=steps, output_type="np",
                              generator=[torch.Generator().manual_seed(s) for _, s in chunk], **kwargs).frames)
        return np.concatenate(clips)

    def _metrics(self, clips: np.ndarray, reference: np.ndarray) -> dict:
        report = score_clips(clips, [p for p, _ in self.eval_pairs()])
        return {"adherence": report.adherence, "colour": report.colour, "shape": report.shape,
                "direction": report.direction,
                "psnr": float(np.mean([psnr(a, b) for a, b in zip(clips, reference)]))}

    def teacher_reference(self) -> tuple[dict, dict]:
        """The teacher's eval clips at ``reference_steps`` and at each few-step count (computed once, stored in
        ``eval/teacher.safetensors``), and its metrics."""
        path = self.out / "eval" / "teacher.safetensors"
        c = self.config
        if path.exists():
            clips = {k: v.numpy() for k, v in load_file(str(path)).items()}
            return clips, json.loads((self.out / "eval" / "teacher.json").read_text())
        clips = {}
        for steps in tqdm([c.reference_steps, *c.eval_steps], desc="teacher reference", leave=False,
                          disable=not self.progress):
            clips[f"steps-{steps}"] = self._generate(self.teacher, steps, c.guidance_scale)
        ref = clips[f"steps-{c.reference_steps}"]
        metrics = {str(s): self._metrics(clips[f"steps-{s}"], ref) for s in [c.reference_steps, *c.eval_steps]}
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_json(self.out / "eval" / "teacher.json", metrics)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({k: torch.from_numpy(v).contiguous() for k, v in clips.items()}, str(tmp))
        os.replace(tmp, path)
        return clips, metrics

    def evaluate(self, reference: np.ndarray, probe: Slice) -> tuple[dict, dict]:
        self.student.eval()
        pipe = self.student_pipeline()
        metrics, clips = {}, {}
        for steps in self.config.eval_steps:
            clip = self._generate(pipe, steps, None)
            metrics[str(steps)] = {**self._metrics(clip, reference), "probe_loss": self.probe_loss(probe, steps)}
            clips[f"steps-{steps}"] = (np.clip(clip, 0, 1) * 255).round().astype(np.uint8)
        return metrics, clips

    # -- state ----------------------------------------------------------------------------------------------
    def _state_tensors(self) -> dict:
        tensors = {f"target.{k}": p.detach().clone() for k, p in self.target.named_parameters()}
        names = {id(p): k for k, p in self.params.items()}
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                for key, value in self.optimizer.state.get(p, {}).items():
                    tensors[f"optim.{names[id(p)]}.{key}"] = torch.as_tensor(value).detach().clone()
        return tensors

    def _restore(self, r: int) -> None:
        from diffusers import WanTransformer3DModel

        folder = round_dir(self.out, r)
        student = WanTransformer3DModel.from_pretrained(folder / "transformer")
        tensors = load_file(str(folder / STATE_FILE))
        info = json.loads((folder / ROUND_FILE).read_text())
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(dict(student.named_parameters())[k])
            for k, p in self.target.named_parameters():
                p.copy_(tensors[f"target.{k}"])
        for name, p in self.params.items():
            state = {key.rsplit(".", 1)[1]: v.clone() for key, v in tensors.items()
                     if key.startswith(f"optim.{name}.") and key.count(".") == name.count(".") + 2}
            if state:
                self.optimizer.state[p] = state
        self.round = r
        self.optimizer_steps = info["optimizer_steps"]

    def _save_round(self, r: int, info: dict) -> Path:
        final = round_dir(self.out, r)
        tmp = self.out / f".{final.name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        pipe = self.student_pipeline()
        pipe.save_pretrained(tmp, safe_serialization=True)
        save_file({k: v.contiguous() for k, v in self._state_tensors().items()}, str(tmp / STATE_FILE),
                  metadata={"round": str(r)})
        c = self.config
        _atomic_json(tmp / "distillation.json", {
            "what": "few-step student of a flow-matching teacher, consistency-distilled by `diffcache distill`",
            "teacher": c.teacher, "round": r, "guidance_scale_distilled": c.guidance_scale,
            "sampler": "multistep consistency sampling (ConsistencyFlowMatchScheduler), no CFG",
            "recommended_steps": [2, 4, 8], "teacher_solver": f"Euler, {c.solver_steps} uniform steps, CFG",
        })
        _atomic_json(tmp / ROUND_FILE, info)
        if final.exists():  # a stale folder without round.json (an interrupted rename cannot leave one, but be safe)
            shutil.rmtree(final)
        os.replace(tmp, final)
        return final

    # -- the loop -------------------------------------------------------------------------------------------
    def run(self, until: int | None = None) -> list[int]:
        """Run rounds up to ``config.rounds`` (or ``until``); returns the rounds trained by this call."""
        c = self.config
        end = c.rounds if until is None else min(until, c.rounds)
        self._write_config()
        for stale in self.out.glob(".round-*.partial"):
            shutil.rmtree(stale, ignore_errors=True)
        done = finished_rounds(self.out)
        if done:
            self._restore(done[-1])
            self.log(f"resuming after round {done[-1]} (finished rounds are kept; slices are loaded from "
                     f"{self.cache.folder})")
        probe = self.get_slice(0)
        teacher_clips, teacher_metrics = self.teacher_reference()
        reference = teacher_clips[f"steps-{c.reference_steps}"]
        self.slices, self.weights = [], []
        for index in range(1, self.round + 1):
            self._add_slice(index)
        if self.round == 0 and not (self.out / "eval" / "round-00.json").exists():
            # round 0: the initial student (the teacher's weights, sampled the consistency way without CFG)
            metrics, clips = self.evaluate(reference, probe)
            self._save_eval(0, clips)
            _atomic_json(self.out / "eval" / "round-00.json", {"round": 0, "metrics": metrics})
        trained = []
        bar = tqdm(total=c.rounds, initial=self.round, desc="distill rounds", unit="round", disable=not self.progress,
                   dynamic_ncols=True)
        try:
            while self.round < end:
                r = self.round + 1
                start = time.perf_counter()
                built_before = len(self.cache.built)
                self._add_slice(r)
                slice_s = time.perf_counter() - start
                g = torch.Generator().manual_seed(_seed(c.seed, 13, r))
                self.student.train()
                losses = []
                for _ in tqdm(range(c.train_steps), desc=f"round {r}", leave=False, disable=not self.progress,
                              dynamic_ncols=True):
                    losses.append(self.train_step(g))
                train_s = time.perf_counter() - start - slice_s
                metrics, clips = self.evaluate(reference, probe)
                self._save_eval(r, clips)
                info = {"round": r, "optimizer_steps": self.optimizer_steps, "loss_first": losses[0],
                        "loss_last": float(np.mean(losses[-max(1, len(losses) // 4):])), "losses": losses,
                        "metrics": metrics, "slices_built": self.cache.built[built_before:],
                        "training_clips": sum(s.trajectory.shape[0] for s in self.slices),
                        "seconds": {"slice": round(slice_s, 1), "train": round(train_s, 1),
                                    "total": round(time.perf_counter() - start, 1)}}
                self._save_round(r, info)
                self.round = r
                trained.append(r)
                m = metrics
                steps_txt = ", ".join(f"{s}-step " + (f"adherence {100 * m[str(s)]['adherence']:.0f}% "
                                                       if "adherence" in m[str(s)] else "")
                                      + f"PSNR {m[str(s)]['psnr']:.1f} dB" for s in c.eval_steps)
                line = (f"round {r}/{c.rounds}: loss {info['loss_last']:.4f}; {steps_txt} "
                        f"[{info['seconds']['total']:.0f} s]")
                tqdm.write(line) if self.progress else self.log(line)
                bar.update()
        finally:
            bar.close()
        return trained

    def _save_eval(self, r: int, clips: dict) -> None:
        path = self.out / "eval" / f"round-{r:02d}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({k: torch.from_numpy(v).contiguous() for k, v in clips.items()}, str(tmp))
        os.replace(tmp, path)

    def _add_slice(self, index: int) -> None:
        data = self.get_slice(index)
        self.slices.append(data)
        self.weights.append(foreground_weight(data.trajectory[:, -1], self.config.foreground_weight))


def _atomic_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)

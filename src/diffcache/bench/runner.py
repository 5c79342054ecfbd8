"""The sweep: methods × prompts × seeds on one model, resumable, split across processes.

An *item* is one (prompt, seed). Every method runs on it in the same process:

1. one counted run per method (untimed): the video for the quality metrics, denoiser FLOPs per forward, peak
   tensor memory and the method's cache memory (:mod:`.flops`), and the method's own report (computed steps,
   blocks run or reused per step);
2. ``repeats`` timed runs, the methods interleaved and the order rotated each repeat, so that machine noise hits
   them alike. Speedup is the uncached run's wall-clock time over the method's, summed over items; the same
   ratio of the process's CPU time (``time.process_time``) is recorded too, since other processes on a shared
   machine add noise to wall-clock time but not to this process's CPU time.

The uncached video of each item is generated once (``none``'s counted run) and is the reference of every method.
A finished item is appended to ``results.jsonl`` as one line (flush + fsync), so a killed run leaves a consistent
file; re-running the same command skips finished items. Under ``accelerate launch`` (or ``torchrun``) the items
are split across processes, each appending to ``parts/rank-R.jsonl``; rank 0 merges them and writes the reports.
"""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..adapters.base import UnsupportedModelError
from ..files import write_text, write_video
from ..methods.base import CallRefusedError, enable
from .flops import measure_cost
from .metrics import lpips_distance, lpips_unavailable_reason, psnr, relative_l1, ssim
from .peers import PEERS, PeerUnavailable, Setup
from .specs import BASELINE, FEWER_STEPS, MethodSpec, parse_methods  # noqa: F401 - re-exported
from ..errors import BenchConfigError

RESULTS = "results.jsonl"
CONFIG = "config.json"
PARTS = "parts"
CLIPS = "clips"
GALLERY_UPSCALE = 4



@dataclass(frozen=True)
class Item:
    index: int
    prompt: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.index:04d}"


def plan_items(prompts: list[str], seeds: int = 1) -> list[Item]:
    """Every prompt with ``seeds`` seeds; seeds are numbered by position (prompt ``i``, seed ``j`` → ``i·seeds+j``)."""
    items = []
    for i, prompt in enumerate(prompts):
        for j in range(seeds):
            items.append(Item(len(items), prompt, i * seeds + j))
    return items


# -- JSON lines ----------------------------------------------------------------------------------------------------
def _encode(value):
    """JSON has no infinity: non-finite floats become the strings 'inf', '-inf', 'nan'."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


NUMERIC = ("psnr", "ssim", "rel_l1", "lpips")


def number(value) -> float | None:
    """A metric read back from JSON: 'inf' → ``inf``."""
    if isinstance(value, str):
        return float(value)
    return value


def read_records(path: Path) -> list[dict]:
    """The finished items in a JSONL file; a torn line (a process killed while writing it) is ignored."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "item" in record and "methods" in record:
            records.append(record)
    return records


def append_record(path: Path, record: dict) -> None:
    """Append one line atomically enough for a crash: a torn tail is cut first, the line is written in one call,
    then flushed and fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(_encode(record), allow_nan=False) + "\n").encode("utf-8")
    with open(path, "a+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size:
            handle.seek(size - 1)
            if handle.read(1) != b"\n":  # a torn last line: drop it
                handle.seek(0)
                data = handle.read()
                handle.truncate(data.rfind(b"\n") + 1)
                handle.seek(0, os.SEEK_END)
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def finished(out: Path) -> dict[str, dict]:
    """Item key → record, from ``results.jsonl`` and any per-process parts not merged yet."""
    records = read_records(out / RESULTS)
    for part in sorted((out / PARTS).glob("rank-*.jsonl")) if (out / PARTS).exists() else []:
        records += read_records(part)
    return {r["item"]: r for r in records}


def merge_parts(out: Path) -> int:
    """Rank 0: move the per-process lines into ``results.jsonl`` (items not already there); returns how many."""
    have = {r["item"] for r in read_records(out / RESULTS)}
    moved = 0
    parts = sorted((out / PARTS).glob("rank-*.jsonl")) if (out / PARTS).exists() else []
    for part in parts:
        for record in read_records(part):
            if record["item"] not in have:
                append_record(out / RESULTS, record)
                have.add(record["item"])
                moved += 1
    for part in parts:
        part.unlink()
    if (out / PARTS).exists() and not any((out / PARTS).iterdir()):
        (out / PARTS).rmdir()
    return moved


# -- the output folder ---------------------------------------------------------------------------------------------
REPORT_FILES = ("summary.csv", "summary.md", "index.html", "timeline.png")


def prepare_output(out: Path, config: dict, force: bool, write: bool = True) -> None:
    """Refuse a folder holding a different configuration; with ``force`` start it over. ``write``: this process
    writes (rank 0); the others only check."""
    path = out / CONFIG
    if force:
        if write:
            for name in (RESULTS, CONFIG, *REPORT_FILES):
                (out / name).unlink(missing_ok=True)
            for old in out.glob("pareto-*.png") if out.exists() else []:
                old.unlink()
            for folder in (PARTS, CLIPS):
                shutil.rmtree(out / folder, ignore_errors=True)
    elif path.exists():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            stored = {}
        differ = sorted(k for k in set(stored) | set(config) if stored.get(k) != config.get(k))
        if differ:
            detail = "; ".join(f"{k}: folder has {stored.get(k)!r}, this run {config.get(k)!r}" for k in differ[:4])
            raise BenchConfigError(
                f"{out} holds a benchmark with a different configuration ({detail}). Use another --out, or "
                "--force to discard its results and start over.")
    elif out.exists() and any((out / name).exists() for name in (RESULTS, *REPORT_FILES)):
        found = [name for name in (RESULTS, *REPORT_FILES) if (out / name).exists()]
        raise BenchConfigError(f"{out} already holds {', '.join(found)} but no benchmark {CONFIG}; use another "
                               "--out, or --force to replace them.")
    if write and (force or not path.exists()):
        write_text(path, json.dumps(config, indent=1) + "\n", force=True)


# -- one item ------------------------------------------------------------------------------------------------------
def _frames(output) -> np.ndarray:
    """A pipeline's first output as ``(frames, H, W, 3)``: video pipelines' ``.frames[0]``; image pipelines'
    ``.images[0]`` as a one-frame video."""
    if hasattr(output, "frames") and output.frames is not None:
        return np.asarray(output.frames[0])
    image = np.asarray(output.images[0])
    return image[None]


class Sweep:
    """Runs items on one pipeline; see the module docs."""

    def __init__(self, pipe, specs: list[MethodSpec], steps: int = 30, guidance: float = 5.0, repeats: int = 2,
                 cfg_mode: str | None = None, scored: bool = False, calibration: tuple[str, int] = ("", 0),
                 clips: Path | None = None, size: dict | None = None):
        if specs[0].name != BASELINE:
            raise ValueError("the first method must be 'none', the uncached reference")
        self.pipe, self.specs, self.steps, self.guidance, self.repeats = pipe, specs, steps, guidance, repeats
        self.cfg_mode, self.scored, self.clips = cfg_mode, scored, clips
        import inspect

        params = inspect.signature(pipe.__call__).parameters
        self.extra = {} if cfg_mode is None else {"cfg_mode": cfg_mode}
        if cfg_mode is not None and "cfg_mode" not in params:
            raise ValueError(f"--cfg-mode is only available for the embedded models; {type(pipe).__name__} "
                             "chooses its own guidance batching.")
        for key, value in (size or {}).items():  # height / width / num_frames
            if value is None:
                continue
            if key not in params:
                raise ValueError(f"{type(pipe).__name__} takes no {key!r} argument; leave that option out.")
            self.extra[key] = value
        self.setup = Setup(steps, cfg_mode, lambda prompt, seed: self.generate(prompt, seed, steps), calibration)
        self.unavailable: dict[str, str] = {}  #: label → why it cannot run (found once, kept for every item)
        self.lpips_note = lpips_unavailable_reason()
        self.last_cpu_seconds = 0.0

    def generate(self, prompt: str, seed: int, steps: int) -> np.ndarray:
        return _frames(self.pipe(prompt, num_inference_steps=steps, guidance_scale=self.guidance,
                                 generator=torch.Generator().manual_seed(seed), output_type="np", **self.extra))

    def _denoiser(self):
        from ..methods.base import denoiser_of

        return denoiser_of(self.pipe)[0]

    def run(self, spec: MethodSpec, item: Item, counted: bool):
        """One generation with ``spec`` enabled. Returns ``(video, seconds, cost or None, info)``; raises
        :class:`PeerUnavailable` / :class:`UnsupportedModelError` when the method cannot run here."""
        steps = int(spec.preset) if spec.kind == "steps" else self.steps
        handle = active = None
        roots = None
        if spec.kind == "method":
            try:
                handle = enable(self.pipe, spec.name, preset=spec.preset, **dict(spec.overrides))
            except (UnsupportedModelError, ValueError) as error:  # refused before any work: it cannot run here
                raise UnsupportedModelError(str(error)) from error
            roots = lambda: [handle.runtime]  # noqa: E731
        elif spec.kind == "peer":
            active = PEERS[spec.name].enable(self.pipe, self.setup, dict(spec.overrides))
            roots = (lambda: active.state_roots) if active.hooked_modules is not None else None
        try:
            go = lambda: self.generate(item.prompt, item.seed, steps)  # noqa: E731
            try:
                if counted:
                    start = time.perf_counter()
                    video, cost = measure_cost(self._denoiser(), go, roots)
                    seconds = time.perf_counter() - start
                else:
                    gc.collect()  # as timeit does: no collection of earlier garbage inside a timed run
                    start, cpu_start = time.perf_counter(), time.process_time()
                    video, cost = go(), None
                    seconds = time.perf_counter() - start
                    self.last_cpu_seconds = time.process_time() - cpu_start
            except CallRefusedError as error:  # refused as the call began, before any work (e.g. too few steps)
                raise UnsupportedModelError(str(error)) from error
            except Exception as error:  # noqa: BLE001
                if spec.kind != "peer":
                    raise
                raise PeerUnavailable(f"{spec.label} failed on {type(self.pipe).__name__} (cfg_mode="
                                      f"{self.cfg_mode or 'default'}): {type(error).__name__}: {error}") from error
        finally:
            if handle is not None:
                handle.disable()
            if active is not None:
                active.disable()
        info = {"steps_run": steps}
        if handle is not None and counted:
            info.update(_report_timeline(handle.report()))
        if active is not None and active.notes:
            info["notes"] = active.notes
        if active is not None and active.hooked_modules is not None:
            info["hooked_modules"] = active.hooked_modules
        return video, seconds, cost, info

    def run_item(self, item: Item, progress: Callable[[str], None] | None = None) -> dict:
        """Every method on one item; returns the item's record (one JSONL line)."""
        videos, rows, skipped = {}, {}, {}
        runnable = []
        for spec in self.specs:
            if spec.label in self.unavailable:
                skipped[spec.label] = self.unavailable[spec.label]
                continue
            try:
                video, seconds, cost, info = self.run(spec, item, counted=True)
            except (PeerUnavailable, UnsupportedModelError) as error:
                if spec.kind == "baseline":
                    raise
                self.unavailable[spec.label] = skipped[spec.label] = str(error)
                continue
            videos[spec.label] = video
            rows[spec.label] = {"seconds": [], "cpu_seconds": [], "counted_seconds": seconds, "flops": cost.flops,
                                "flops_per_forward": cost.flops_per_forward,
                                "peak_memory_bytes": cost.peak_memory_bytes, "memory_measure": cost.memory_measure,
                                "cache_bytes": cost.cache_bytes, **info}
            runnable.append(spec)
            if progress:
                progress(f"{spec.label} counted")
        for repeat in range(self.repeats):
            shift = repeat % len(runnable)
            for spec in runnable[shift:] + runnable[:shift]:
                _, seconds, _, _ = self.run(spec, item, counted=False)
                rows[spec.label]["seconds"].append(seconds)
                rows[spec.label]["cpu_seconds"].append(self.last_cpu_seconds)
                if progress:
                    progress(f"{spec.label} timed {repeat + 1}/{self.repeats}")
        reference = videos[BASELINE]
        for spec in runnable:
            video, row = videos[spec.label], rows[spec.label]
            row.update(quality(video, reference, item.prompt if self.scored else None,
                               lpips=self.lpips_note is None))
            row["frames"] = int(video.shape[0])
            if self.clips is not None:
                name = Path(CLIPS) / item.key / f"{_slug(spec.label)}.gif"
                write_video(self.clips / name, video, upscale=GALLERY_UPSCALE, force=True)
                row["clip"] = str(name)
        return {"item": item.key, "prompt": item.prompt, "seed": item.seed, "methods": rows, "skipped": skipped,
                "torch_threads": torch.get_num_threads()}


def quality(video: np.ndarray, reference: np.ndarray, prompt: str | None = None, lpips: bool = False) -> dict:
    """Metrics of ``video`` against ``reference`` (and the checker's, given the prompt of an embedded model)."""
    result = {"psnr": psnr(video, reference), "ssim": ssim(video, reference), "rel_l1": relative_l1(video, reference),
              "lpips": lpips_distance(video, reference) if lpips else None, "adherence": None,
              "temporal_stability": None}
    if prompt is not None:
        from ..embedded.checker import check

        checked = check(video, prompt)
        result["adherence"] = checked.adherence
        result["temporal_stability"] = checked.temporal_stability if video.shape[0] > 1 else None
    return result


def _report_timeline(report) -> dict:
    """From a diffcache method's report: computed steps, and per step the fraction of block forwards run (times
    the fraction of active tokens when the method reports one)."""
    if not report.calls:
        return {"computed_steps": None}
    call = report.calls[-1]
    fractions = []
    for record in call.steps:
        blocks = record.blocks_computed + record.blocks_reused
        fraction = record.blocks_computed / blocks if blocks else float(record.computed)
        active = getattr(record, "active_fraction", None)
        if active is None:
            active = record.values.get("active_fraction")
        fractions.append(round(fraction * (1.0 if active is None else float(active)), 4))
    return {"computed_steps": call.computed_steps, "step_compute": fractions}


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:80]


# -- the whole sweep -----------------------------------------------------------------------------------------------
@dataclass
class Distributed:
    """Which process this is; ``barrier`` waits for every process (a no-op alone)."""

    rank: int = 0
    world: int = 1
    barrier: Callable[[], None] = lambda: None

    @classmethod
    def from_environment(cls) -> "Distributed":
        """Under ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE`` > 1): accelerate's ``PartialState`` (gloo on
        CPU); otherwise a single process."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
        return cls(state.process_index, state.num_processes, state.wait_for_everyone)


def run_sweep(sweep: Sweep, items: list[Item], out: Path, config: dict, force: bool = False,
              dist: Distributed | None = None, progress: bool = True,
              after_item: Callable[[Item], None] | None = None) -> list[dict] | None:
    """Run the items of this process that are not finished yet, appending each to the results; then (rank 0)
    merge the processes' parts. Returns every finished record on rank 0, ``None`` on the others."""
    dist = dist or Distributed()
    out = Path(out)
    prepare_output(out, config, force, write=dist.rank == 0)
    dist.barrier()
    done = finished(out)
    mine = [it for it in items if it.index % dist.world == dist.rank and it.key not in done]
    target = out / RESULTS if dist.world == 1 else out / PARTS / f"rank-{dist.rank}.jsonl"
    bar = tqdm(total=len(mine), desc=f"bench{f' [rank {dist.rank}]' if dist.world > 1 else ''}", unit="item",
               position=dist.rank, disable=not progress, dynamic_ncols=True)
    if done and progress and dist.rank == 0:
        bar.write(f"resuming: {len(done)} of {len(items)} items already finished in {out / RESULTS}")
    try:
        for item in mine:
            bar.set_postfix_str(item.prompt[:40])
            record = sweep.run_item(item, progress=lambda what: bar.set_postfix_str(f"{item.prompt[:30]}: {what}"))
            record["rank"] = dist.rank
            append_record(target, record)
            bar.update()
            if after_item is not None:
                after_item(item)
    finally:
        bar.close()
    dist.barrier()
    if dist.rank != 0:
        return None
    if dist.world > 1:
        merge_parts(out)
    keys = {it.key for it in items}
    return [r for r in read_records(out / RESULTS) if r["item"] in keys]

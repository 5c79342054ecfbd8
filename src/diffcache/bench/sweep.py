"""The sweep: every method of ``--methods`` on each item (prompt, seed) of one pipeline, as one record per item.

Every method runs on an item in the same process:

1. one counted run per method (untimed): the video for the quality metrics, denoiser FLOPs per forward, peak
   tensor memory and the method's cache memory (:mod:`.measure`), and the method's own report (computed steps,
   blocks run or reused per step);
2. ``repeats`` timed runs, the methods interleaved and the order rotated each repeat, so that machine noise hits
   them alike. Speedup is the uncached run's wall-clock time over the method's, summed over items; the same
   ratio of the process's CPU time (``time.process_time``) is recorded too, since other processes on a shared
   machine add noise to wall-clock time but not to this process's CPU time; and the wall-clock time inside the
   denoiser's forwards (``denoiser_seconds``: :class:`.measure.DenoiserTimer`), which the FLOP count covers, while
   the call's time also holds the text encoder, the scheduler and the VAE decode, which no method shortens.

The uncached video of each item is generated once (``none``'s counted run) and is the reference of every method.
Each method's video is written to the results folder (:func:`.store.clip_path`). A method that cannot run here
(refused by its adapter, or a peer that is not installed or crashes) is a skipped row with the reason, found on
the first item and kept for the others. Storing the records, resuming and the reports are not done here
(:mod:`.store`, :mod:`.benchmark`, :mod:`.report`).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..errors import UnsupportedModelError
from ..files import write_video
from ..api import enable
from ..errors import CallRefusedError
from .measure import Cost, DenoiserTimer, measure_cost, timed
from ..quality.protocols import DEFAULT_PROTOCOL, Protocol, parse_protocols, score, to_frames
from ..quality.temporal import temporal_flickering
from .peers import PEERS, PeerUnavailable, Setup
from .prompts import Item
from .specs import BASELINE, MethodSpec
from .store import clip_path

GALLERY_UPSCALE = 4  #: the clips are written this many times larger (nearest neighbour) for the HTML gallery


def output_frames(output) -> np.ndarray:
    """A pipeline's first output as ``(frames, H, W, 3)``: video pipelines' ``.frames[0]``; image pipelines'
    ``.images[0]`` as a one-frame video."""
    if hasattr(output, "frames") and output.frames is not None:
        return np.asarray(output.frames[0])
    image = np.asarray(output.images[0])
    return image[None]


def quality(video: np.ndarray, reference: np.ndarray, prompt: str | None = None, lpips: bool = False,
            protocols: list[Protocol] | None = None) -> dict:
    """Metrics of ``video`` against ``reference`` (and the checker's, given the prompt of an embedded model).

    PSNR, SSIM, relative L1 and LPIPS are those of the first protocol (its name under ``"protocol"``); with several
    protocols, ``"by_protocol"`` holds each one's. ``flicker`` is VBench's temporal flickering of the video on the
    first protocol's frames, ``flicker_added`` the reference's minus the video's (:mod:`diffcache.quality.temporal`).
    """
    protocols = protocols or parse_protocols(DEFAULT_PROTOCOL)
    first = protocols[0]
    result = {"protocol": first.name, **score(video, reference, first, lpips=lpips), "adherence": None,
              "clean": None, "temporal_stability": None}
    if len(protocols) > 1:
        result["by_protocol"] = {p.name: score(video, reference, p, lpips=lpips) for p in protocols}
    flicker = temporal_flickering(to_frames(video, first.frames))
    reference_flicker = temporal_flickering(to_frames(reference, first.frames))
    result["flicker"] = flicker
    result["flicker_added"] = None if flicker is None else reference_flicker - flicker
    if prompt is not None:
        from ..embedded.checker import check

        checked = check(video, prompt)
        result["adherence"] = checked.adherence
        result["clean"] = float(checked.clean)  # one object in every frame, always present, uniform background
        result["temporal_stability"] = checked.temporal_stability if video.shape[0] > 1 else None
    return result


def learned_scores(chosen: dict, video: np.ndarray, reference: np.ndarray, prompt: str | None) -> dict:
    """With CLIP weights: the CLIP text score (given the prompt) and the CLIP frame similarity to the reference;
    with an FVD detector: the video's I3D features (``fvd_features``), from which the report computes each
    method's FVD against the uncached videos over the items."""
    out = {}
    if "clip" in chosen:
        from ..quality.learned import clip_frame_similarity, clip_text_score

        out["clip_text"] = clip_text_score(video, prompt, chosen["clip"]) if prompt else None
        out["clip_frame"] = clip_frame_similarity(video, reference, chosen["clip"])
    if "fvd" in chosen:
        from ..quality.learned import video_features

        out["fvd_features"] = [float(x) for x in video_features([video], chosen["fvd"])[0]]
    return out


def report_timeline(report) -> dict:
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


@dataclass
class Generation:
    """One generation with a method enabled: the video, its wall-clock and CPU seconds (CPU seconds and the
    wall-clock seconds inside the denoiser's forwards only for a timed run), the cost (only for a counted run) and
    what the record keeps of the method's state."""

    video: np.ndarray
    seconds: float
    cpu_seconds: float | None
    cost: Cost | None
    info: dict
    denoiser_seconds: float | None = None


class Sweep:
    """Runs items on one pipeline; see the module docs. ``clips``: the results folder the videos go to (``None``:
    none written); ``size``: height / width / num_frames given to the pipeline (``None`` values left out);
    ``protocols``: how quality is scored (:mod:`diffcache.quality.protocols`; default ``diffcache``)."""

    def __init__(self, pipe, specs: list[MethodSpec], steps: int = 30, guidance: float = 5.0, repeats: int = 2,
                 cfg_mode: str | None = None, scored: bool = False, calibration: tuple[str, int] = ("", 0),
                 clips: Path | None = None, size: dict | None = None, calibration_image: str | None = None,
                 protocols: list[Protocol] | None = None):
        if specs[0].name != BASELINE:
            raise ValueError("the first method must be 'none', the uncached reference")
        self.pipe, self.specs, self.steps, self.guidance, self.repeats = pipe, specs, steps, guidance, repeats
        self.cfg_mode, self.scored, self.clips = cfg_mode, scored, clips
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
        from ..generation import call_arguments, takes_prompt

        self.guidance_note = None
        try:
            self.guidance_arguments = call_arguments(pipe, guidance)  # guidance_scale (SVD: max_guidance_scale)
        except ValueError:  # HunyuanVideo 1.5: guidance is set in its guider
            self.guidance_arguments = {}
            self.guidance_note = (f"guidance: {type(pipe).__name__} takes no guidance scale; its own guider's "
                                  "setting was used, not --guidance")
        self.takes_prompt = takes_prompt(pipe)
        self.first_frames: dict[str, object] = {}  #: image path → the first frame fitted to the clip
        self.setup = Setup(steps, cfg_mode, lambda prompt, seed: self.generate(prompt, seed, steps, calibration_image),
                           calibration)
        self.unavailable: dict[str, str] = {}  #: label → why it cannot run (found once, kept for every item)
        self.students: dict[str, tuple] = {}  #: folder → (student pipeline, its distillation.json)
        from ..quality.lpips import lpips_unavailable_reason

        self.protocols = protocols or parse_protocols(DEFAULT_PROTOCOL)
        self.lpips_note = lpips_unavailable_reason()
        from ..quality.compare import learned_weights

        self.learned, self.learned_notes = learned_weights()  # CLIP / FVD weights named by the environment

    def first_frame(self, path: str):
        """The image at ``path`` fitted to the clip (:func:`diffcache.generation.prepare_image`), read once."""
        if path not in self.first_frames:
            from ..generation import prepare_image, read_image

            self.first_frames[path] = prepare_image(self.pipe, read_image(path), self.extra.get("height"),
                                                    self.extra.get("width"))
        return self.first_frames[path]

    def generate(self, prompt: str, seed: int, steps: int, image: str | None = None, pipe=None,
                 guidance_arguments: dict | None = None) -> np.ndarray:
        """One uncached-or-not generation; ``image``: the first frame's path (an image-to-video model); ``pipe``:
        another pipeline than the benchmarked one (a student), with its ``guidance_arguments``."""
        inputs = {"prompt": prompt} if self.takes_prompt else {}
        if image is not None:
            inputs["image"] = self.first_frame(image)
        pipe = self.pipe if pipe is None else pipe
        guidance = self.guidance_arguments if guidance_arguments is None else guidance_arguments
        return output_frames(pipe(**inputs, num_inference_steps=steps, **guidance,
                                  generator=torch.Generator().manual_seed(seed), output_type="np", **self.extra))

    def student(self, folder: str):
        """The student pipeline in ``folder`` (loaded once, on the benchmarked pipeline's device and dtype) and
        what its ``distillation.json`` says."""
        if folder not in self.students:
            import json

            from ..api import denoiser_of
            from ..loading import load_pipeline

            denoiser = denoiser_of(self.pipe)[0]
            parameter = next(denoiser.parameters())
            pipe = load_pipeline(folder, torch_dtype=parameter.dtype)
            pipe.to(parameter.device)
            pipe.set_progress_bar_config(disable=True)
            info = json.loads((Path(folder).expanduser() / "distillation.json").read_text())
            self.students[folder] = (pipe, info)
        return self.students[folder]

    def _denoiser(self):
        from ..api import denoiser_of

        return denoiser_of(self.pipe)[0]

    def _denoisers(self) -> list:
        """Every denoiser of the pipeline (both experts of Wan 2.2 A14B), for the denoiser time of a timed run."""
        from ..experts import experts_of

        experts = [module for _, module in experts_of(self.pipe)]
        return experts or [self._denoiser()]

    def run(self, spec: MethodSpec, item: Item, counted: bool) -> Generation:
        """One generation with ``spec`` enabled: ``counted`` measures its cost (:func:`.measure.measure_cost`),
        otherwise it is timed (:func:`.measure.timed`). Raises :class:`PeerUnavailable` /
        :class:`UnsupportedModelError` when the method cannot run here."""
        steps = int(spec.preset) if spec.kind == "steps" else self.steps
        handle = active = None
        roots = denoiser_seconds = None
        pipe, guidance = self.pipe, None
        if spec.kind == "student":  # its own pipeline: no CFG (distilled), its few steps, a method if asked
            pipe, info = self.student(spec.preset)
            options = dict(spec.overrides)
            steps = int(options.get("steps", info.get("default_steps", 4)))
            guidance = {"guidance_scale": 1.0}
            if "method" in options:
                try:
                    method, arguments = MethodSpec.parse(str(options["method"])).enable_arguments()
                    handle = enable(pipe, method, **arguments)
                except (UnsupportedModelError, ValueError) as error:
                    raise UnsupportedModelError(str(error)) from error
                roots = handle.state_roots
        elif spec.kind == "method":
            try:
                method, arguments = spec.enable_arguments()
                handle = enable(self.pipe, method, **arguments)
            except (UnsupportedModelError, ValueError) as error:  # refused before any work: it cannot run here
                raise UnsupportedModelError(str(error)) from error
            roots = handle.state_roots  # noqa: E731
        elif spec.kind == "peer":
            active = PEERS[spec.name].enable(self.pipe, self.setup, dict(spec.overrides))
            roots = (lambda: active.state_roots) if active.hooked_modules is not None else None
        try:
            go = lambda: self.generate(item.prompt, item.seed, steps, item.image, pipe, guidance)  # noqa: E731
            from ..api import denoiser_of

            denoiser = self._denoiser() if pipe is self.pipe else denoiser_of(pipe)[0]
            try:
                if counted:
                    start = time.perf_counter()
                    video, cost = measure_cost(denoiser, go, roots)
                    seconds, cpu_seconds = time.perf_counter() - start, None
                else:
                    with DenoiserTimer(self._denoisers() if pipe is self.pipe else [denoiser]) as inside:
                        (video, seconds, cpu_seconds), cost = timed(go), None
                    denoiser_seconds = inside.seconds
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
            info.update(report_timeline(handle.report()))
        if active is not None and active.notes:
            info["notes"] = active.notes
        if active is not None and active.hooked_modules is not None:
            info["hooked_modules"] = active.hooked_modules
        return Generation(video, seconds, cpu_seconds, cost, info, denoiser_seconds)

    def run_item(self, item: Item, progress: Callable[[str], None] | None = None) -> dict:
        """Every method on one item; returns the item's record (one line of results.jsonl). ``progress`` is told
        each stage done (``"LABEL counted"``, ``"LABEL timed R/N"``)."""
        videos, rows, skipped = {}, {}, {}
        runnable = []
        for spec in self.specs:
            if spec.label in self.unavailable:
                skipped[spec.label] = self.unavailable[spec.label]
                continue
            try:
                run = self.run(spec, item, counted=True)
            except (PeerUnavailable, UnsupportedModelError) as error:
                if spec.kind == "baseline":
                    raise
                self.unavailable[spec.label] = skipped[spec.label] = str(error)
                continue
            cost = run.cost
            videos[spec.label] = run.video
            rows[spec.label] = {"seconds": [], "cpu_seconds": [], "denoiser_seconds": [],
                                "counted_seconds": run.seconds,
                                "flops": cost.flops, "flops_per_forward": cost.flops_per_forward,
                                "peak_memory_bytes": cost.peak_memory_bytes, "memory_measure": cost.memory_measure,
                                "cache_bytes": cost.cache_bytes, **run.info}
            runnable.append(spec)
            if progress:
                progress(f"{spec.label} counted")
        for repeat in range(self.repeats):
            shift = repeat % len(runnable)
            for spec in runnable[shift:] + runnable[:shift]:
                run = self.run(spec, item, counted=False)
                rows[spec.label]["seconds"].append(run.seconds)
                rows[spec.label]["cpu_seconds"].append(run.cpu_seconds)
                rows[spec.label]["denoiser_seconds"].append(run.denoiser_seconds)
                if progress:
                    progress(f"{spec.label} timed {repeat + 1}/{self.repeats}")
        reference = videos[BASELINE]
        for spec in runnable:
            video, row = videos[spec.label], rows[spec.label]
            row.update(quality(video, reference, item.prompt if self.scored else None,
                               lpips=self.lpips_note is None, protocols=self.protocols))
            row.update(learned_scores(self.learned, video, reference, item.prompt if self.takes_prompt else None))
            row["frames"] = int(video.shape[0])
            if self.clips is not None:
                name = clip_path(item.key, spec.label)
                write_video(self.clips / name, video, upscale=GALLERY_UPSCALE, force=True)
                row["clip"] = str(name)
        record = {"item": item.key, "prompt": item.prompt, "seed": item.seed, "methods": rows, "skipped": skipped,
                  "torch_threads": torch.get_num_threads()}
        if item.image is not None:
            record["image"] = item.image
        return record

    def run_items(self, items: list[Item], progress: Callable[[Item, str | None], None] | None = None
                  ) -> Iterator[tuple[Item, dict]]:
        """:meth:`run_item` on each item in turn, yielding ``(item, record)``; ``progress(item, None)`` as an
        item starts, ``progress(item, stage)`` after each of its stages."""
        for item in items:
            if progress:
                progress(item, None)
            tell = (lambda what, item=item: progress(item, what)) if progress else None
            yield item, self.run_item(item, progress=tell)

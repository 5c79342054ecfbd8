"""``diffcache bench`` as one function: load the model, plan the items, run the sweep into the results folder
(resuming, split across processes), write the reports from the stored records.

The flow is one way: :mod:`.specs` (what ``--methods`` names) → :mod:`.sweep` (one record per item) →
:mod:`.store` (results.jsonl, resume, the folder's configuration) → :mod:`.report` (from the stored records only).
Under ``accelerate launch`` (or ``torchrun``) the items are split across processes, each appending to its own
part of the store; rank 0 merges them and writes the reports.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..files import folder_lock
from . import store
from .defaults import DEFAULT_METHODS
from .prompts import Item, default_prompts, image_files, image_fingerprints, pair_images, plan_items
from .report import write_reports
from .specs import parse_methods
from .sweep import Sweep


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
    """Run the items of this process that are not finished yet, appending each record to the store as it
    finishes; then (rank 0) merge the processes' parts. Returns every finished record of ``items`` on rank 0,
    ``None`` on the others. ``after_item(item)`` is called after each item is stored."""
    dist = dist or Distributed()
    out = Path(out)
    store.prepare_output(out, config, force, write=dist.rank == 0)
    dist.barrier()
    done = store.finished(out, heal=dist.rank == 0)
    mine = [it for it in items if it.index % dist.world == dist.rank and it.key not in done]
    target = store.results_path(out, dist.rank, dist.world)
    bar = tqdm(total=len(mine), desc=f"bench{f' [rank {dist.rank}]' if dist.world > 1 else ''}", unit="item",
               position=dist.rank, disable=not progress, dynamic_ncols=True)
    if done and progress and dist.rank == 0:
        bar.write(f"resuming: {len(done)} of {len(items)} items already finished in {out / store.RESULTS}")

    def show(item: Item, stage: str | None) -> None:
        bar.set_postfix_str(item.prompt[:40] if stage is None else f"{item.prompt[:30]}: {stage}")

    try:
        for item, record in sweep.run_items(mine, progress=show):
            record["rank"] = dist.rank
            store.append_record(target, record)
            bar.update()
            if after_item is not None:
                after_item(item)
    finally:
        bar.close()
    dist.barrier()
    if dist.rank != 0:
        return None
    if dist.world > 1:
        store.merge_parts(out)
    return store.stored_records(out, {it.key for it in items})


def warn_calibration_overlap(specs, items: list[Item]) -> list[str]:
    """Warn (:class:`~diffcache.errors.CalibrationOverlapWarning`, one line each) for every method whose preset is a
    file ``diffcache tune`` wrote and whose calibration items (prompt and seed, its ``tuned_on``) include some of
    ``items``: its quality would be measured on the data it was tuned on. Returns the messages (report notes)."""
    import json
    import warnings

    from ..errors import CalibrationOverlapWarning
    from ..tune import overlapping_items

    messages = []
    pairs = [(item.prompt, item.seed) for item in items]
    for spec in specs:
        if not str(spec.preset or "").endswith(".json"):
            continue
        try:
            document = json.loads(Path(spec.preset).expanduser().read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # loading the preset reports a missing or broken file
        shared = overlapping_items(document, pairs)
        if shared:
            messages.append(f"{spec.label} was tuned on {len(shared)} of these {len(pairs)} items (e.g. "
                            f"{shared[0][0]!r}, seed {shared[0][1]}): its quality here is measured on its own "
                            "calibration data; benchmark it on other prompts or seeds")
            warnings.warn(messages[-1], CalibrationOverlapWarning, stacklevel=3)
    return messages


def benchmark(model: str = "tiny-shapes-t2v", methods: str = DEFAULT_METHODS, out: str | Path = "out/bench",
              prompts: list[str] | None = None, num_prompts: int = 8, seeds: int = 1, steps: int = 30,
              guidance: float = 5.0, repeats: int = 2, cfg_mode: str | None = None, force: bool = False,
              progress: bool = True, pipe=None, dist: Distributed | None = None, after_item=None,
              height: int | None = None, width: int | None = None, frames: int | None = None,
              images: list[str | os.PathLike] | None = None, protocols: "str | list | None" = None) -> dict | None:
    """Run (or resume) a benchmark into ``out``; returns the reports on rank 0 (``None`` on other ranks).

    ``methods`` as for ``--methods`` (default :data:`~diffcache.bench.defaults.DEFAULT_METHODS`); ``prompts`` default to ``num_prompts`` grammar prompts of the embedded
    model; every prompt runs with ``seeds`` seeds. ``height`` / ``width`` / ``frames`` override the pipeline's
    default size (a pipeline folder of a real model defaults to its full size). ``images``: the first frames of an
    image-to-video model (files or folders, :func:`~diffcache.bench.prompts.image_files`), paired with the prompts
    by :func:`~diffcache.bench.prompts.pair_images`; recorded in the folder's configuration (path and content
    hash), so a resume with other images is refused. ``protocols``: how quality is scored, names or field specs
    (:func:`~diffcache.quality.protocols.parse_protocols`; default ``diffcache``); the first gives the PSNR, SSIM
    and LPIPS columns, each other one its own columns; recorded in the folder's configuration.
    """
    from ..generation import check_dependencies, check_inputs
    from ..loading import EMBEDDED_MODELS, load_pipeline, stored_class_name

    for name, value in {"num_prompts": num_prompts, "seeds": seeds, "steps": steps, "repeats": repeats}.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}.")
    specs = parse_methods(methods)
    from ..quality.protocols import DEFAULT_PROTOCOL, parse_protocols

    chosen = parse_protocols(protocols)
    image_list = image_files(images) if images else None  # every file read now: a bad one fails before loading
    has_prompt = bool(prompts) or model in EMBEDDED_MODELS
    check_inputs(type(pipe).__name__ if pipe is not None else stored_class_name(model), image_list is not None,
                 has_prompt, model, option="--images", pipe=pipe, require_prompt=False)
    dist = dist or Distributed.from_environment()
    # one writer per folder: rank 0 holds OUT/.lock (the other ranks write their own parts), taken before the
    # model loads, so a second run into a folder in use is refused at once
    with folder_lock(out) if dist.rank == 0 else contextlib.nullcontext():
        if pipe is None:
            pipe = load_pipeline(model)
            device = "cuda" if torch.cuda.is_available() else "cpu"
            if device == "cuda" and dist.world > 1:
                device = f"cuda:{dist.rank % torch.cuda.device_count()}"
            pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        check_inputs(type(pipe).__name__, image_list is not None, has_prompt, model, option="--images", pipe=pipe,
                     require_prompt=False)
        check_dependencies(pipe)
        from ..generation import takes_prompt

        if image_list is not None and not takes_prompt(pipe):
            prompt_list = []  # Stable Video Diffusion: one item per image
        else:
            prompt_list = list(prompts) if prompts else default_prompts(model, pipe, num_prompts)
        image_paths = None
        if image_list is not None:
            prompt_list, image_paths = pair_images(prompt_list, image_list)
        if type(pipe).__name__ == "TinyShapesT2VPipeline":
            from ..embedded.shapes import parse_prompt

            for prompt in prompt_list:
                parse_prompt(prompt)
        items = plan_items(prompt_list, seeds, image_paths)
        overlap_notes = warn_calibration_overlap(specs, items)
        config = {"model": model, "methods": [s.label for s in specs], "prompts": prompt_list, "seeds": seeds,
                  "steps": steps, "guidance": guidance, "repeats": repeats, "cfg_mode": cfg_mode}
        if image_paths is not None:  # absent for a text-to-video model: its folders' configs stay as they were
            config["images"] = image_fingerprints(image_paths)
        if [p.name for p in chosen] != [DEFAULT_PROTOCOL]:  # absent by default: older folders' configs stay as they were
            config["protocols"] = [p.name for p in chosen]
        size = {"height": height, "width": width, "num_frames": frames}
        config.update({key: value for key, value in size.items() if value is not None})
        scored = model in EMBEDDED_MODELS  # the analytic checker scores the embedded models (colour and shape of a still)
        out = Path(out)
        sweep = Sweep(pipe, specs, steps=steps, guidance=guidance, repeats=repeats, cfg_mode=cfg_mode, scored=scored,
                      calibration=(items[0].prompt, items[0].seed), clips=out, size=size,
                      calibration_image=items[0].image, protocols=chosen)
        records = run_sweep(sweep, items, out, config, force=force, dist=dist, progress=progress, after_item=after_item)
        if records is None:
            return None
        notes = [f"processes: {dist.world}; torch threads per process: {torch.get_num_threads()}"]
        for index, protocol in enumerate(chosen):
            notes.append(f"quality protocol {protocol.name}{' (the PSNR, SSIM and LPIPS columns)' if index == 0 else ''}: "
                         f"frames={protocol.frames}, psnr={protocol.psnr}, ssim={protocol.ssim}, "
                         f"lpips={protocol.lpips}; follows {protocol.follows}")
        notes.append("flicker: VBench's temporal flickering (arXiv 2311.17982) of each video on the first protocol's "
                     "frames, (255 − mean |frame difference|) / 255, higher is steadier; on moving clips it mixes motion "
                     "with flicker, so compare with the uncached row ('flicker added': the uncached video's minus the "
                     "method's, per item)")
        if sweep.lpips_note:
            notes.append(sweep.lpips_note)
        else:
            from ..quality.lpips import lpips_source

            source = lpips_source()
            notes.append(f"LPIPS: AlexNet, version {source['version']}; backbone from {source['backbone']['origin']} "
                         f"(sha256 {source['backbone']['sha256'][:12]}…), linear layers from "
                         f"{source['linear']['origin']}")
            if any(row.get("lpips") is None for r in records for row in r["methods"].values()):
                notes.append("LPIPS n/a where the frames are smaller than AlexNet takes (31 pixels)")
        if sweep.guidance_note:
            notes.append(sweep.guidance_note)
        notes += sweep.learned_notes
        if sweep.learned:
            notes.append("learned metrics (weights named by the environment): " + "; ".join(
                f"{key} from {path}" for key, path in sweep.learned.items())
                + ". CLIP text: 100 × mean cosine of frame and prompt embeddings; CLIP frame: the same between each frame "
                  "and the uncached one; FVD: Fréchet distance of I3D features against the uncached videos over the items "
                  "(very noisy over few items)")
        if image_paths is not None:
            notes.append("first frames: centre-cropped to the clip's aspect ratio, then resized to its size")
        notes += overlap_notes
        if not scored:
            notes.append("adherence and temporal stability: n/a (the analytic checker covers the embedded models)")
        measures = {row["memory_measure"] for r in records for row in r["methods"].values()}
        notes += [f"peak memory: {m}" for m in sorted(measures)]
        notes.append("cache memory: bytes of the tensors held by the method's state (diffcache runtime or diffusers hook "
                     "registries), maximum over the denoiser forwards; '–' where not measurable (cache-dit)")
        reports = write_reports(out, config, records, [s.label for s in specs], notes)
        reports["records"] = records
        reports["items"] = len(items)
        return reports

"""``diffcache bench`` as one function: load the model, plan the items, run (resuming), write the reports."""

from __future__ import annotations

from pathlib import Path

import torch

from .report import write_reports
from ..embedded.shapes import prompts as grammar_prompts
from .runner import Distributed, Sweep, plan_items, run_sweep
from .specs import parse_methods


def default_prompts(model: str, pipe, n: int) -> list[str]:
    """``n`` prompts spread over the shapes grammar for the embedded models: ``a {colour} {shape} moving
    {direction}`` for the text-to-video model, ``a {colour} {shape}`` for an embedded still-image model."""
    from ..loading import EMBEDDED_MODELS

    if type(pipe).__name__ == "TinyShapesT2VPipeline":
        return grammar_prompts(n, spread=True)
    if model in EMBEDDED_MODELS:
        return grammar_prompts(n, kind="image", spread=True)
    raise ValueError(f"{model!r} is not an embedded model: give its prompts with --prompt (repeat it).")


def benchmark(model: str = "tiny-shapes-t2v", methods: str = "none,ours", out: str | Path = "out/bench",
              prompts: list[str] | None = None, num_prompts: int = 8, seeds: int = 1, steps: int = 30,
              guidance: float = 5.0, repeats: int = 2, cfg_mode: str | None = None, force: bool = False,
              progress: bool = True, pipe=None, dist: Distributed | None = None, after_item=None,
              height: int | None = None, width: int | None = None, frames: int | None = None) -> dict | None:
    """Run (or resume) a benchmark into ``out``; returns the reports on rank 0 (``None`` on other ranks).

    ``methods`` as for ``--methods``; ``prompts`` default to ``num_prompts`` grammar prompts of the embedded
    model; every prompt runs with ``seeds`` seeds. ``height`` / ``width`` / ``frames`` override the pipeline's
    default size (a pipeline folder of a real model defaults to its full size).
    """
    from ..loading import EMBEDDED_MODELS, load_pipeline

    for name, value in {"num_prompts": num_prompts, "seeds": seeds, "steps": steps, "repeats": repeats}.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}.")
    specs = parse_methods(methods)
    dist = dist or Distributed.from_environment()
    if pipe is None:
        pipe = load_pipeline(model)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and dist.world > 1:
            device = f"cuda:{dist.rank % torch.cuda.device_count()}"
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    prompt_list = list(prompts) if prompts else default_prompts(model, pipe, num_prompts)
    if type(pipe).__name__ == "TinyShapesT2VPipeline":
        from ..embedded.shapes import parse_prompt

        for prompt in prompt_list:
            parse_prompt(prompt)
    items = plan_items(prompt_list, seeds)
    config = {"model": model, "methods": [s.label for s in specs], "prompts": prompt_list, "seeds": seeds,
              "steps": steps, "guidance": guidance, "repeats": repeats, "cfg_mode": cfg_mode}
    size = {"height": height, "width": width, "num_frames": frames}
    config.update({key: value for key, value in size.items() if value is not None})
    scored = model in EMBEDDED_MODELS  # the analytic checker scores the embedded models (colour and shape of a still)
    out = Path(out)
    sweep = Sweep(pipe, specs, steps=steps, guidance=guidance, repeats=repeats, cfg_mode=cfg_mode, scored=scored,
                  calibration=(items[0].prompt, items[0].seed), clips=out, size=size)
    records = run_sweep(sweep, items, out, config, force=force, dist=dist, progress=progress, after_item=after_item)
    if records is None:
        return None
    notes = [f"processes: {dist.world}; torch threads per process: {torch.get_num_threads()}"]
    if sweep.lpips_note:
        notes.append(sweep.lpips_note)
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

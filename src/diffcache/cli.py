"""The ``diffcache`` command."""

from __future__ import annotations

import argparse
import html
import inspect
import json
import os
import sys
import time
from pathlib import Path

EXAMPLES = {
    "generate": """examples:
  diffcache generate --prompt "a red circle moving left" --out clip.gif
  diffcache generate --prompt "a red circle moving left" --method adacache:fast --out fast.gif
  diffcache generate --prompt "a red circle moving left" --steps 40 --method hsa:hsa-50 --budget-map map.gif --out hsa.gif
  diffcache generate --prompt "a blue square moving up" --steps 30 --guidance 5 --seed 3 --cfg-mode batched --out clip.mp4
  diffcache generate --model ./my-wan-pipeline --prompt "a cat surfing" --out cat.mp4
  diffcache generate --model tiny-shapes-t2i --prompt "a red circle" --steps 50 --out red.png
  diffcache generate --model tiny-shapes-t2i --prompt "a red circle" --steps 50 --method deepcache --out fast.png""",
    "train": """examples:
  diffcache train tiny-shapes-t2v --out runs/t2v            # resumes from runs/t2v/checkpoint if present
  diffcache train tiny-shapes-t2v --out runs/smoke --steps 20 --batch-size 4
  diffcache train tiny-shapes-t2i --out runs/t2i            # the text-to-image U-Net (6000 steps)""",
    "evaluate": """examples:
  diffcache evaluate                                # the shipped model: 64 prompts, 30 steps, CFG 5
  diffcache evaluate --model runs/t2v/model --prompts 64 --json gate.json
  diffcache evaluate --model tiny-shapes-t2i        # the text-to-image gate: 64 prompts, 50 steps, CFG 5
  diffcache evaluate --model tiny-shapes-t2i --prompts 150 --method deepcache:uniform-3   # adherence with a cache
  diffcache evaluate --prompts 60 --height 64 --width 64 --method hsa:hsa-25        # HSA at 1,024 tokens per clip""",
    "bench": """examples:
  diffcache bench --out out/bench        # uncached, every diffcache method at its default, two diffusers peers
  diffcache bench --methods none,adacache:fast,adacache:slow,steps:15 --prompts 16 --steps 30 --out out/ada
  diffcache bench --methods "ours,peers" --prompts 8 --seeds 2 --out out/all       # every method and peer
  diffcache bench --methods "teacache,fbcache[threshold=0.2],diffusers-fbcache[threshold=0.1]" --out out/fb
  diffcache bench --model ./my-wan-pipeline --prompt "a cat surfing" --prompt "a dog running" --steps 50 --out out/wan
  accelerate launch --multi_gpu --num_processes 2 -m diffcache.cli bench --out out/bench   # 2 processes (CPU too)

--methods names: none (the uncached reference, always added), steps:N (the plain pipeline at N steps),
METHOD[:PRESET][option=value;...] (see 'diffcache methods'), 'ours' (every diffcache method at its default
preset), the peers diffusers-pab, diffusers-fastercache, diffusers-fbcache, diffusers-taylorseer,
diffusers-magcache, cachedit-dbcache (optionally PEER[option=value;...]) and 'peers' (all of them). A method or
peer that cannot run on the model is a skipped row with the reason.

Per video: speedup (interleaved timed runs in one process), denoiser FLOPs, peak and cache memory, PSNR / SSIM /
relative L1 against the uncached video of the same prompt and seed, the checker's adherence and temporal
stability (embedded model). Re-running the same command resumes (finished items are kept); --force starts over.
Writes results.jsonl, summary.csv / summary.md, pareto-*.png, timeline.png, clips/ and index.html.""",
    "calibrate": """examples:
  diffcache calibrate teacache --prompts 16 --out tiny-teacache.json         # the embedded model
  diffcache calibrate teacache --model ./my-wan-pipeline --prompt "a cat surfing" --prompt "a dog running" \\
      --steps 50 --out wan.json
then: diffcache.enable(pipe, "teacache", preset="tiny-teacache.json"), or --methods "teacache:FILE" is not
supported in bench; use teacache[coefficients=...;threshold=...] there.""",
    "methods": """examples:
  diffcache methods""",
    "distill": """examples:
  diffcache distill tiny-shapes-t2v --rounds 16 --out runs/distill     # resumes at the first unfinished round
  diffcache distill gallery runs/distill --out runs/distill-gallery.html
  diffcache generate --model runs/distill/round-06 --steps 4 --prompt "a red circle moving left" --out fast.gif""",
    "demo": """examples:
  diffcache demo --out out/demo
  diffcache demo --out out/demo --force             # replace an earlier demo
  diffcache demo --method adacache:slow --out out/demo-slow""",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffcache",
        description="Faster diffusion video generation by caching, with embedded tiny models to try it offline.",
        epilog="Run 'diffcache COMMAND --help' for a command's options and examples.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    g = sub.add_parser("generate", help="generate one clip (GIF or MP4) from a prompt", epilog=EXAMPLES["generate"],
                       formatter_class=fmt)
    g.add_argument("--prompt", required=True, help="text prompt; the embedded models take "
                   "'a {colour} {shape} moving {direction}' (tiny-shapes-t2v) or 'a {colour} {shape}' (tiny-shapes-t2i)")
    g.add_argument("--negative-prompt", default=None, help="negative prompt for guidance (default: empty)")
    g.add_argument("--model", default="tiny-shapes-t2v",
                   help="embedded model name, local pipeline folder, or diffusers hub id (default: tiny-shapes-t2v)")
    g.add_argument("--steps", type=int, default=None, help="number of denoising steps (default: the pipeline's; "
                   "30 for tiny-shapes-t2v, 50 for tiny-shapes-t2i, 4 for a distilled student)")
    g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: the "
                   "pipeline's; 5 for tiny-shapes-t2v; a distilled student has none)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    g.add_argument("--cfg-mode", choices=("split", "batched"), default="split",
                   help="guidance as two calls per step (split, as WanPipeline) or one batched call (embedded "
                   "models only; default: split)")
    g.add_argument("--budget-map", default=None, metavar="FILE.gif",
                   help="with --method hsa: also write the clip beside a heat-map of how many steps each token was "
                   "computed (dark = few, bright = all)")
    g.add_argument("--height", type=int, default=None, help="frame height in pixels (default: the model's)")
    g.add_argument("--width", type=int, default=None, help="frame width in pixels (default: the model's)")
    g.add_argument("--frames", type=int, default=None, help="number of frames (default: the model's)")
    g.add_argument("--fps", type=int, default=8, help="frames per second of the written clip (default: 8)")
    g.add_argument("--upscale", type=int, default=None,
                   help="enlarge frames this many times (nearest); default: enough for a 256-pixel short side")
    g.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--method", default=None, help="accelerate with METHOD[:PRESET], e.g. adacache:fast "
                   "(see 'diffcache methods'; default: none)")
    g.add_argument("--out", required=True, help="output file: .gif or .mp4 (a text-to-image model: .png)")
    g.add_argument("--force", action="store_true", help="overwrite --out if it exists")

    t = sub.add_parser("train", help="train an embedded model from scratch (resumable)", epilog=EXAMPLES["train"],
                       formatter_class=fmt)
    t.add_argument("model", choices=("tiny-shapes-t2v", "tiny-shapes-t2i"), help="which embedded model to train")
    t.add_argument("--out", required=True, help="run folder: checkpoint/ while training, model/ when done")
    t.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the shipped recipe, 6000 for both)")
    t.add_argument("--batch-size", type=int, default=None, help="clips or images per step (default: 24)")
    t.add_argument("--seed", type=int, default=None, help="training seed (default: 0)")
    t.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default: 250)")
    t.add_argument("--stop-at", type=int, default=None,
                   help="train only up to this step of the recipe, then export (the schedule stays that of --steps; "
                   "running again without --stop-at, after removing DIR/model, continues to the end)")
    t.add_argument("--force", action="store_true", help="start over, discarding a checkpoint or model in --out")

    e = sub.add_parser("evaluate", help="adherence gate of an embedded model (analytic checker)",
                       epilog=EXAMPLES["evaluate"], formatter_class=fmt)
    e.add_argument("--model", default="tiny-shapes-t2v", help="embedded model name or pipeline folder")
    e.add_argument("--prompts", type=int, default=64, help="number of prompts, cycling over the grammar (default: 64)")
    e.add_argument("--steps", type=int, default=None,
                   help="denoising steps (default: 30; 50 for tiny-shapes-t2i)")
    e.add_argument("--guidance", type=float, default=5.0, help="guidance scale (default: 5)")
    e.add_argument("--height", type=int, default=None, help="frame height in pixels (default: the model's)")
    e.add_argument("--width", type=int, default=None, help="frame width in pixels (default: the model's)")
    e.add_argument("--method", default=None,
                   help="score the model with a diffcache method enabled, e.g. deepcache:uniform-3 (default: none)")
    e.add_argument("--json", default=None, help="also write the per-prompt results to this JSON file")
    e.add_argument("--force", action="store_true", help="overwrite --json if it exists")

    b = sub.add_parser("bench", help="compare caching methods and peers on one model: speed, FLOPs, memory, "
                       "quality; resumable; HTML report", epilog=EXAMPLES["bench"], formatter_class=fmt)
    b.add_argument("--model", default="tiny-shapes-t2v",
                   help="embedded model name or pipeline folder (default: tiny-shapes-t2v)")
    b.add_argument("--methods", default=DEFAULT_BENCH_METHODS,
                   help="comma-separated list, see below (default: %(default)s)")
    b.add_argument("--prompts", type=int, default=8,
                   help="embedded models: number of prompts spread over the grammar (default: 8)")
    b.add_argument("--prompt", action="append", default=None,
                   help="a prompt (repeat for several); required for models other than the embedded ones")
    b.add_argument("--seeds", type=int, default=1, help="seeds per prompt (default: 1)")
    b.add_argument("--steps", type=int, default=30, help="denoising steps (default: 30)")
    b.add_argument("--guidance", type=float, default=5.0, help="guidance scale (default: 5)")
    b.add_argument("--repeats", type=int, default=2, help="timed runs per method and video (default: 2)")
    b.add_argument("--cfg-mode", choices=("split", "batched"), default=None,
                   help="embedded models: guidance as two calls per step (split, default) or one batched call")
    b.add_argument("--out", default="out/bench", help="output folder (default: out/bench)")
    b.add_argument("--force", action="store_true", help="discard the results in --out and start over")
    b.add_argument("--height", type=int, default=None, help="frame height in pixels (default: the model's)")
    b.add_argument("--width", type=int, default=None, help="frame width in pixels (default: the model's)")
    b.add_argument("--frames", type=int, default=None, help="number of frames (default: the model's)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")

    c = sub.add_parser("calibrate", help="fit a method's model-specific constants (TeaCache's polynomial) for any "
                       "supported model", epilog=EXAMPLES["calibrate"], formatter_class=fmt)
    c.add_argument("method", choices=("teacache",), help="what to calibrate")
    c.add_argument("--model", default="tiny-shapes-t2v", help="embedded model name, pipeline folder or hub id")
    c.add_argument("--prompts", type=int, default=16, help="embedded models: how many grammar prompts (default: 16)")
    c.add_argument("--prompt", action="append", default=None,
                   help="a calibration prompt (repeat for several); required for models other than the embedded ones")
    c.add_argument("--steps", type=int, default=30, help="denoising steps of the runs (default: 30)")
    c.add_argument("--guidance", type=float, default=5.0, help="guidance scale (default: 5)")
    c.add_argument("--out", required=True, help="preset file to write (.json); a fit plot goes beside it (.png)")
    c.add_argument("--force", action="store_true", help="overwrite --out and its plot")

    sub.add_parser("methods", help="list the caching methods, their presets and supported model families",
                   epilog=EXAMPLES["methods"], formatter_class=fmt)

    dist = sub.add_parser("distill", help="few-step students by iterative consistency distillation with a data cache",
                          epilog=EXAMPLES["distill"], formatter_class=fmt)
    dsub = dist.add_subparsers(dest="distill_command", required=True, metavar="TEACHER|gallery")
    dr = dsub.add_parser("tiny-shapes-t2v", help="distil the embedded model in rounds (resumable)",
                         epilog=EXAMPLES["distill"], formatter_class=fmt)
    dr.add_argument("--out", required=True, help="run folder: cache/, eval/, round-01/ … (each a loadable pipeline)")
    dr.add_argument("--rounds", type=int, default=16, help="rounds to run in all (default: 16); a finished run "
                    "can be continued with a larger number")
    dr.add_argument("--slice-clips", type=int, default=None, help="teacher trajectories added to the data cache "
                    "per round (default: 16)")
    dr.add_argument("--train-steps", type=int, default=None, help="optimiser steps per round (default: 32)")
    dr.add_argument("--batch-size", type=int, default=None, help="pairs per optimiser step (default: 16)")
    dr.add_argument("--eval-prompts", type=int, default=None, help="prompts of the per-round evaluation (default: 60)")
    dr.add_argument("--seed", type=int, default=None, help="seed of the data cache and training (default: 0)")
    dr.add_argument("--force", action="store_true", help="start over, deleting the run's rounds, cache and eval")
    dg = dsub.add_parser("gallery", help="comparison page (Baseline / Iter=3 / Iter=6 / final at 2, 4, 8 steps) "
                         "and the per-round plot", epilog=EXAMPLES["distill"], formatter_class=fmt)
    dg.add_argument("run", help="a distillation run folder (the --out of `diffcache distill tiny-shapes-t2v`)")
    dg.add_argument("--out", required=True, help="the HTML page; its clips and plot go to <name>_files/ beside it")
    dg.add_argument("--prompts", type=int, default=4, help="prompts (row groups) on the page (default: 4)")
    dg.add_argument("--force", action="store_true", help="overwrite the page and its files")

    d = sub.add_parser("demo", help="clips of one method beside the uncached ones, with a report (the main job, "
                       "`make demo`, is a short `diffcache bench`)",
                       epilog=EXAMPLES["demo"], formatter_class=fmt)
    d.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    d.add_argument("--steps", type=int, default=30, help="denoising steps (default: 30)")
    d.add_argument("--method", default="adacache:fast", help="METHOD[:PRESET] to compare with the uncached run "
                   "(default: adacache:fast; see 'diffcache methods')")
    d.add_argument("--force", action="store_true", help="replace an existing demo folder's files")
    return parser


def _generate_one(pipe, prompt: str, steps: int, guidance: float, seed: int, cfg_mode: str,
                  negative_prompt: str | None, **size):
    """Run a supported video pipeline; return the first clip as floats in [0, 1], shape (F, H, W, 3)."""
    import torch

    kwargs = dict(num_inference_steps=steps, output_type="np", generator=torch.Generator().manual_seed(seed))
    if guidance is not None:  # None: the pipeline's own default
        kwargs["guidance_scale"] = guidance
    params = inspect.signature(pipe.__call__).parameters
    if "cfg_mode" in params:
        kwargs["cfg_mode"] = cfg_mode
    elif cfg_mode != "split":
        raise ValueError(f"--cfg-mode {cfg_mode} is only available for the embedded models; "
                         f"{type(pipe).__name__} chooses its own guidance batching.")
    if negative_prompt is not None:
        kwargs["negative_prompt"] = negative_prompt
    for key, value in size.items():
        if value is None:
            continue
        if key not in params:
            raise ValueError(f"{type(pipe).__name__} takes no {key!r} argument; leave that option out.")
        kwargs[key] = value
    return pipe(prompt, **kwargs).frames[0]


def _positive(**values) -> None:
    """Validate integer options: each must be at least 1 (``seed``: at least 0); ``None`` means unset."""
    for name, value in values.items():
        low = 0 if name == "seed" else 1
        if value is not None and value < low:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {low}, got {value}.")


def cmd_generate(args) -> int:
    import torch

    from .files import IMAGE_SUFFIXES, VIDEO_SUFFIXES, check_writable, write_video
    from .embedded.t2v.pipeline import TinyShapesT2VPipeline
    from .loading import SUPPORTED_VIDEO_PIPELINES, ModelLoadError, load_pipeline
    from .embedded.shapes import parse_prompt

    out = Path(args.out)
    if out.suffix.lower() not in VIDEO_SUFFIXES + IMAGE_SUFFIXES:
        raise ValueError(f"--out {out.name!r}: use a file name ending in .gif or .mp4 (a video), or .png (an image).")
    _positive(steps=args.steps, fps=args.fps, upscale=args.upscale, height=args.height, width=args.width,
              frames=args.frames, seed=args.seed)
    check_writable(out, args.force)
    spec = _method_spec(args.method, "generate")
    if args.budget_map is not None:
        if spec is None or spec.name != "hsa":
            raise ValueError("--budget-map shows HSA's per-token step budgets; use it with --method hsa[:PRESET].")
        if Path(args.budget_map).suffix.lower() not in VIDEO_SUFFIXES:
            raise ValueError(f"--budget-map {Path(args.budget_map).name!r}: use a file name ending in .gif or .mp4.")
        check_writable(Path(args.budget_map), args.force)
    if args.model == "tiny-shapes-t2i" or out.suffix.lower() in IMAGE_SUFFIXES:
        return _generate_image(args, spec)
    pipe = load_pipeline(args.model)
    if type(pipe).__name__ not in SUPPORTED_VIDEO_PIPELINES:
        raise ModelLoadError(f"{args.model!r} is a {type(pipe).__name__}; `generate` supports text-to-video "
                             f"pipelines: {', '.join(SUPPORTED_VIDEO_PIPELINES)}.")
    if isinstance(pipe, TinyShapesT2VPipeline):
        parse_prompt(args.prompt)  # the embedded model knows its grammar: reject a bad prompt before any work
    pipe.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    handle = _enable(pipe, spec)
    start = time.perf_counter()
    steps = args.steps
    if steps is None:  # the pipeline's own default (30 for the embedded model, 4 for a distilled student)
        default = inspect.signature(pipe.__call__).parameters.get("num_inference_steps")
        steps = default.default if default is not None and isinstance(default.default, int) else 30
    clip = _generate_one(pipe, args.prompt, steps, args.guidance, args.seed, args.cfg_mode,
                         args.negative_prompt, height=args.height, width=args.width, num_frames=args.frames)
    took = time.perf_counter() - start
    write_video(out, clip, fps=args.fps, upscale=args.upscale, force=args.force)
    extra = ""
    if handle is not None:
        extra = f", {spec.label}: {_effect(handle, steps)}"
        if args.budget_map is not None:
            from .methods.hsa import budget_map_clip

            budgets = handle.runtime.budget_map()  # HSA refuses a call too short to allocate before it starts
            write_video(args.budget_map, budget_map_clip(budgets[0], clip, steps), fps=args.fps,
                        upscale=args.upscale, force=args.force)
            extra += (f"; budget map ({int(budgets.min())}–{int(budgets.max())} steps per token, dark = few): "
                      f"{args.budget_map}")
        handle.disable()
    print(f"generated in {took:.2f} s ({steps} steps{extra}): {out}")
    return 0


def _effect(handle, steps: int) -> str:
    """What the method did in its last call, so a user sees it took effect: the steps it computed and, for a
    token-level method (HSA), the mean share of the tokens computed."""
    report = handle.report()
    text = f"{report.computed_steps()}/{steps} steps computed"
    fractions = [s.active_fraction for s in report.calls[-1].steps if s.active_fraction is not None]
    if fractions:
        text += f" with {sum(fractions) / len(fractions):.0%} of the tokens on average"
    return text


def _method_spec(text: str | None, command: str):
    """``--method``: a diffcache method as ``NAME[:PRESET][option=value;...]``, or ``None`` (unset or ``none``).
    Parsed before any work, so a bad name fails fast; peers and ``steps:N`` run only in ``diffcache bench``."""
    if not text:
        return None
    from .bench.runner import BASELINE, MethodSpec

    spec = MethodSpec.parse(text)
    if spec.kind in ("peer", "steps"):
        raise ValueError(f"--method {text}: peers and steps:N run only in 'diffcache bench'; "
                         f"{command} takes a diffcache method (see 'diffcache methods').")
    return None if spec.name == BASELINE else spec


def _enable(pipe, spec):
    """Enable ``spec`` (from :func:`_method_spec`) on ``pipe``; the handle, or ``None`` for no method."""
    if spec is None:
        return None
    from .methods import enable

    return enable(pipe, spec.name, preset=spec.preset, **dict(spec.overrides))


def _generate_image(args, spec) -> int:
    """`generate` for a text-to-image pipeline (tiny-shapes-t2i, Stable Diffusion, SDXL): one PNG."""
    import torch

    from .files import IMAGE_SUFFIXES, write_image
    from .loading import SUPPORTED_IMAGE_PIPELINES, ModelLoadError, load_pipeline
    from .embedded.shapes import parse_prompt

    out = Path(args.out)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"--out {out.name!r}: {args.model} makes images; use a file name ending in .png.")
    if args.frames is not None or args.cfg_mode != "split":
        raise ValueError("--frames and --cfg-mode apply to video models only; a text-to-image pipeline runs guidance "
                         "batched, as Stable Diffusion does.")
    if args.model == "tiny-shapes-t2i":
        parse_prompt(args.prompt, require_direction=False)  # reject a bad prompt before any work
    pipe = load_pipeline(args.model)
    if type(pipe).__name__ not in SUPPORTED_IMAGE_PIPELINES:
        raise ModelLoadError(f"{args.model!r} is a {type(pipe).__name__}; `generate --out *.png` supports text-to-image "
                             f"pipelines: {', '.join(SUPPORTED_IMAGE_PIPELINES)}.")
    pipe.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    handle = _enable(pipe, spec)
    args.steps = args.steps or 50
    kwargs = dict(num_inference_steps=args.steps, guidance_scale=5.0 if args.guidance is None else args.guidance,
                  output_type="np",
                  generator=torch.Generator().manual_seed(args.seed))
    for key in ("height", "width"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    if args.negative_prompt is not None:
        kwargs["negative_prompt"] = args.negative_prompt
    start = time.perf_counter()
    image = pipe(args.prompt, **kwargs).images[0]
    took = time.perf_counter() - start
    write_image(out, image, upscale=args.upscale, force=args.force)
    extra = ""
    if handle is not None:
        extra = f", {spec.label}: {handle.report().computed_steps()}/{args.steps} steps computed"
        handle.disable()
    print(f"generated in {took:.2f} s ({args.steps} steps{extra}): {out}")
    return 0


def cmd_train(args) -> int:
    import shutil
    from dataclasses import replace

    from .files import OutputExistsError
    from .embedded.t2v.train import Trainer, TrainConfig

    overrides = {k: v for k, v in {"steps": args.steps, "batch_size": args.batch_size, "seed": args.seed,
                                   "checkpoint_every": args.checkpoint_every}.items() if v is not None}
    _positive(**overrides)  # before anything in --out is touched
    out = Path(args.out)
    model_dir = out / "model"
    if args.force and out.exists():
        shutil.rmtree(out / "checkpoint", ignore_errors=True)
        shutil.rmtree(model_dir, ignore_errors=True)
    elif model_dir.exists():
        raise OutputExistsError(f"{model_dir} already holds a trained model; pass --force to train again.")
    if args.model == "tiny-shapes-t2i":
        from .embedded.t2i.train import T2ITrainConfig as TrainConfig, T2ITrainer as Trainer  # noqa: N814
    config = replace(TrainConfig(), **overrides)
    trainer = Trainer(config, out)
    if trainer.load_checkpoint():
        print(f"resuming from {trainer.checkpoint_dir} at step {trainer.step}/{config.steps}")
    if args.stop_at is not None and not 1 <= args.stop_at <= config.steps:
        raise ValueError(f"--stop-at must be between 1 and the recipe's {config.steps} steps, got {args.stop_at}.")
    if args.stop_at is not None and trainer.step > args.stop_at:
        raise ValueError(f"the checkpoint in {trainer.checkpoint_dir} is already at step {trainer.step}, past "
                         f"--stop-at {args.stop_at}; use another --out.")
    trainer.run(progress=True, until=args.stop_at)
    trainer.export(model_dir)
    last = trainer.history[-1]["loss"] if trainer.history else float("nan")
    done = f"{trainer.step} of {config.steps}" if trainer.step < config.steps else f"{config.steps}"
    print(f"trained {done} steps (final loss {last:.4f}); pipeline saved to {model_dir}")
    print(f"measure it: diffcache evaluate --model {model_dir}" + (" --steps 50" if args.model == "tiny-shapes-t2i" else ""))
    return 0


def cmd_evaluate(args) -> int:
    from .files import check_writable, write_text
    from .embedded.evaluate import evaluate_adherence
    from .loading import load_pipeline

    if args.json:
        check_writable(args.json, args.force)
    _positive(prompts=args.prompts, steps=args.steps, height=args.height, width=args.width)
    spec = _method_spec(args.method, "evaluate")
    pipe = load_pipeline(args.model)
    if args.steps is None:
        from .embedded.evaluate import is_image_pipeline

        args.steps = 50 if is_image_pipeline(pipe) else 30
    handle = _enable(pipe, spec)
    start = time.perf_counter()
    try:
        report = evaluate_adherence(pipe, num_prompts=args.prompts, num_inference_steps=args.steps,
                                    guidance_scale=args.guidance, height=args.height, width=args.width)
    finally:
        if handle is not None:
            handle.disable()
    method = f", {spec.label} ({_effect(handle, args.steps)} per call)" if handle is not None else ""
    size = f", {args.height or 'default'}×{args.width or 'default'} px" if args.height or args.width else ""
    print(f"{args.model}{method}: {report.summary()} [{args.steps} steps, guidance {args.guidance:g}{size}, "
          f"{time.perf_counter() - start:.0f} s]")
    if args.json:
        write_text(args.json, json.dumps(report.__dict__, indent=1), force=args.force)
        print(f"per-prompt results: {args.json}")
    return 0


#: the README's main command: uncached, every registered diffcache method at its default preset, two diffusers peers
DEFAULT_BENCH_METHODS = "none,ours,diffusers-pab,diffusers-magcache"

DEMO_PROMPTS = (
    "a red circle moving right",
    "a green square moving up",
    "a blue triangle moving left",
    "a yellow circle moving down",
    "a white square moving left",
    "a red triangle moving up",
)


def cmd_demo(args) -> int:
    import numpy as np

    from .bench.metrics import psnr, ssim
    from .files import check_writable, write_text, write_video
    from .methods import enable
    from .embedded.checker import check
    from .loading import load_pipeline

    from .bench.runner import BASELINE, MethodSpec

    spec = MethodSpec.parse(args.method)  # a bad name fails before any work
    if spec.name == BASELINE:
        raise ValueError("--method must be a caching method, not 'none' (the uncached run is always shown)")
    out = Path(args.out)
    index = out / "index.html"
    names = [f"clip-{i:02d}.gif" for i in range(len(DEMO_PROMPTS))]
    for path in [index, *(out / n for n in names)]:  # refuse before any work, not half-way through
        check_writable(path, args.force)
    pipe = load_pipeline("tiny-shapes-t2v")
    pipe.set_progress_bar_config(disable=True)  # one line per clip instead
    _generate_one(pipe, DEMO_PROMPTS[0], 2, 5.0, 0, "split", None)  # warm-up, untimed
    rows = []
    for i, (prompt, name) in enumerate(zip(DEMO_PROMPTS, names)):
        start = time.perf_counter()
        plain = _generate_one(pipe, prompt, args.steps, 5.0, i, "split", None)
        plain_time = time.perf_counter() - start
        with enable(pipe, spec.name, preset=spec.preset, **dict(spec.overrides)) as handle:
            start = time.perf_counter()
            fast = _generate_one(pipe, prompt, args.steps, 5.0, i, "split", None)
            fast_time = time.perf_counter() - start
        computed = handle.report().computed_steps()
        gap = np.ones((plain.shape[0], plain.shape[1], 2, 3))
        write_video(out / name, np.concatenate([plain, gap, fast], axis=2), force=args.force)
        checked = [check(plain, prompt), check(fast, prompt)]
        rows.append({"prompt": prompt, "file": name, "plain_seconds": plain_time, "fast_seconds": fast_time,
                     "speedup": plain_time / fast_time, "computed": computed, "psnr": psnr(fast, plain),
                     "ssim": ssim(fast, plain), "adherence": [c.adherence for c in checked],
                     "seen": [f"{c.colour} {c.shape} {c.direction}" for c in checked]})
        r = rows[-1]
        print(f"[{i + 1}/{len(DEMO_PROMPTS)}] {prompt!r}: {plain_time:.2f} s plain, {fast_time:.2f} s with "
              f"{spec.label} ({r['speedup']:.1f}x, {computed}/{args.steps} steps computed), "
              f"PSNR {r['psnr']:.1f} dB, checker sees '{r['seen'][1]}' -> {out / name}")
    total_speedup = sum(r["plain_seconds"] for r in rows) / sum(r["fast_seconds"] for r in rows)
    mean = lambda key, k=None: sum(r[key][k] if k is not None else r[key] for r in rows) / len(rows)  # noqa: E731
    label = spec.label
    body = "\n".join(
        f"<tr><td><img src='{html.escape(r['file'])}' height=160></td><td>{html.escape(r['prompt'])}</td>"
        f"<td>{r['speedup']:.2f}×</td><td>{r['computed']}/{args.steps}</td><td>{r['psnr']:.1f}</td>"
        f"<td>{r['ssim']:.3f}</td><td>{html.escape(r['seen'][0])} ({100 * r['adherence'][0]:.0f}%)</td>"
        f"<td>{html.escape(r['seen'][1])} ({100 * r['adherence'][1]:.0f}%)</td></tr>" for r in rows
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>diffcache demo</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 10px;text-align:left}}
img{{image-rendering:pixelated;background:#000}}</style></head><body>
<h1>diffcache demo — tiny-shapes-t2v, uncached vs {html.escape(label)}</h1>
<p>{len(rows)} prompts, {args.steps} steps, guidance 5, split CFG. Each clip: uncached (left) | {html.escape(label)}
(right), same seed. Overall speedup {total_speedup:.2f}× (total uncached time / total cached time, runs alternating
in one process); mean PSNR {mean("psnr"):.1f} dB, SSIM {mean("ssim"):.3f} against the uncached clip; checker
adherence {100 * mean("adherence", 0):.0f}% uncached, {100 * mean("adherence", 1):.0f}% cached.</p>
<table><tr><th>uncached | cached</th><th>prompt</th><th>speedup</th><th>computed steps</th><th>PSNR (dB)</th>
<th>SSIM</th><th>checker sees (uncached)</th><th>checker sees (cached)</th></tr>
{body}
</table></body></html>
"""
    write_text(index, page, force=args.force)
    print(f"{label}: {total_speedup:.2f}x overall, PSNR {mean('psnr'):.1f} dB, SSIM {mean('ssim'):.3f}, adherence "
          f"{100 * mean('adherence', 0):.0f}% -> {100 * mean('adherence', 1):.0f}%; report: {index}")
    return 0


def cmd_bench(args) -> int:
    from .bench.benchmark import benchmark

    _positive(prompts=args.prompts, steps=args.steps, repeats=args.repeats, seeds=args.seeds, height=args.height,
              width=args.width, frames=args.frames)
    try:
        reports = benchmark(model=args.model, methods=args.methods, out=args.out, prompts=args.prompt,
                            num_prompts=args.prompts, seeds=args.seeds, steps=args.steps, guidance=args.guidance,
                            repeats=args.repeats, cfg_mode=args.cfg_mode, force=args.force,
                            progress=not args.no_progress, height=args.height, width=args.width,
                            frames=args.frames)
    except KeyboardInterrupt:
        print(f"diffcache bench: interrupted; the finished videos are in {Path(args.out) / 'results.jsonl'}. Run the "
              "same command again to resume.", file=sys.stderr)
        return 130
    if reports is None:  # not rank 0 of a multi-process run: rank 0 prints
        return 0
    print(f"{args.model}: {len(reports['records'])} of {reports['items']} videos, {args.steps} steps, guidance "
          f"{args.guidance:g}, {args.repeats} interleaved timed repeats")
    print(reports["table"])
    print(f"results: {Path(args.out) / 'results.jsonl'}; table: {reports['markdown']}, {reports['csv']}")
    print(f"report: {reports['html']}")
    return 0


def cmd_calibrate(args) -> int:
    from .files import check_writable, write_text
    from .methods.teacache import calibrate_teacache
    from .loading import EMBEDDED_MODELS, load_pipeline
    from .embedded.shapes import parse_prompt, prompts as grammar_prompts

    _positive(prompts=args.prompts, steps=args.steps)
    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise ValueError(f"--out {out.name!r}: a preset file must end in .json")
    plot = out.with_suffix(".png")
    for path in (out, plot):
        check_writable(path, args.force)
    if args.prompt:
        prompts = args.prompt
    elif args.model in EMBEDDED_MODELS:
        prompts = grammar_prompts(args.prompts, spread=True)
    else:
        raise ValueError("give calibration prompts with --prompt (repeat it) for a model other than the embedded ones")
    pipe = load_pipeline(args.model)
    if type(pipe).__name__ == "TinyShapesT2VPipeline":
        for prompt in prompts:
            parse_prompt(prompt)
    pipe.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    calibration = calibrate_teacache(pipe, prompts, num_inference_steps=args.steps, guidance_scale=args.guidance)
    preset = calibration.preset(args.model, prompts=len(prompts), steps=args.steps, guidance=args.guidance)
    write_text(out, json.dumps(preset, indent=1) + "\n", force=args.force)
    calibration.plot(plot)
    print(f"fitted {len(calibration.input_changes)} steps of {len(prompts)} runs in {time.perf_counter() - start:.0f} s: "
          f"coefficients {[f'{c:.6g}' for c in calibration.coefficients]}, R² {calibration.r2:.3f}; thresholds "
          f"slow {calibration.thresholds['slow']:.3g}, fast {calibration.thresholds['fast']:.3g}")
    print(f"preset: {out} (use: diffcache.enable(pipe, 'teacache', preset='{out}')); fit plot: {plot}")
    return 0


def cmd_methods(args) -> int:
    from .methods import list_methods

    for info in list_methods():
        presets = ", ".join(f"{p} (default)" if p == info.default_preset else p for p in info.presets)
        print(f"{info.name}: {info.summary}\n  presets: {presets}\n  model families: {', '.join(info.families)}")
    print("steps:N (bench only): the plain pipeline at N steps, the baseline every cache must beat at equal speed")
    return 0


def cmd_distill(args) -> int:
    if args.distill_command == "gallery":
        from .distill.gallery import write_gallery

        _positive(prompts=args.prompts)
        result = write_gallery(args.run, args.out, prompts=args.prompts, force=args.force)
        print(f"gallery: {result['page']} ({len(result['clips'])} clips; columns {', '.join(result['columns'])}); "
              f"plot: {result['plot']}")
        return 0
    import shutil
    from dataclasses import replace

    from .distill.rounds import CONFIG_FILE, DistillConfig, Distiller, finished_rounds
    from .files import OutputExistsError

    overrides = {k: v for k, v in {"slice_clips": args.slice_clips, "train_steps": args.train_steps,
                                   "batch_size": args.batch_size, "eval_prompts": args.eval_prompts,
                                   "seed": args.seed}.items() if v is not None}
    _positive(rounds=args.rounds, **overrides)  # before anything in --out is touched
    config = replace(DistillConfig(teacher=args.distill_command, rounds=args.rounds), **overrides)
    out = Path(args.out)
    if out.exists() and not (out / CONFIG_FILE).exists() and any(out.iterdir()) and not args.force:
        raise OutputExistsError(f"{out} exists and is not a distillation run; choose another --out or pass --force.")
    if args.force and out.exists():
        for name in (CONFIG_FILE, "cache", "eval", *(p.name for p in out.glob("round-*")),
                     *(p.name for p in out.glob(".round-*.partial"))):
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    distiller = Distiller(config, out)
    distiller.run()
    last = finished_rounds(out)[-1]
    print(f"student after round {last}: {out / f'round-{last:02d}'}\n"
          f"try it: diffcache generate --model {out / f'round-{last:02d}'} --steps 4 "
          f"--prompt \"a red circle moving left\" --out clip.gif\n"
          f"compare: diffcache distill gallery {out} --out {out}-gallery.html")
    return 0


COMMANDS = {"generate": cmd_generate, "train": cmd_train, "evaluate": cmd_evaluate, "bench": cmd_bench,
            "calibrate": cmd_calibrate,
            "methods": cmd_methods, "demo": cmd_demo, "distill": cmd_distill}


def main(argv: list[str] | None = None) -> int:
    from .adapters import UnsupportedModelError
    from .context import StepTrackingError
    from .files import OutputExistsError
    from .methods import MethodAlreadyEnabledError, UnknownMethodError
    from .loading import ModelLoadError
    from .embedded.shapes import PromptError

    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (PromptError, ModelLoadError, OutputExistsError, UnknownMethodError, UnsupportedModelError,
            StepTrackingError, MethodAlreadyEnabledError, ValueError) as error:
        if os.environ.get("DIFFCACHE_DEBUG"):
            raise
        print(f"diffcache {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"diffcache {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

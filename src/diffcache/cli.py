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
  diffcache generate --prompt "a blue square moving up" --steps 30 --guidance 5 --seed 3 --cfg-mode batched --out clip.mp4
  diffcache generate --model ./my-wan-pipeline --prompt "a cat surfing" --out cat.mp4
  diffcache generate --model tiny-shapes-t2i --prompt "a red circle" --steps 50 --out red.png
  diffcache generate --model tiny-shapes-t2i --prompt "a red circle" --steps 50 --method deepcache --out fast.png""",
    "train": """examples:
  diffcache train tiny-shapes-t2v --out runs/t2v            # resumes from runs/t2v/checkpoint if present
  diffcache train tiny-shapes-t2v --out runs/smoke --steps 20 --batch-size 4
  diffcache train tiny-shapes-t2i --out runs/t2i            # the text-to-image U-Net (1500 steps)""",
    "evaluate": """examples:
  diffcache evaluate                                # the shipped model: 64 prompts, 30 steps, CFG 5
  diffcache evaluate --model runs/t2v/model --prompts 64 --json gate.json
  diffcache evaluate --model tiny-shapes-t2i        # the text-to-image gate: 64 prompts, 50 steps, CFG 5""",
    "bench": """examples:
  diffcache bench --methods none,adacache:fast,adacache:fast-moreg,adacache:slow --prompts 16 --steps 30 --out out/bench
  diffcache bench --methods adacache --prompts 4 --repeats 1 --out out/quick   # 'none' is always added
  diffcache bench --methods "teacache,fbcache,pab,steps:15,fbcache:default[threshold=0.2]" --out out/baselines
  diffcache bench --cfg-mode batched --methods fastercache,diffusers-fastercache --out out/fastercache

Speedup is the uncached run's total time over the method's, runs interleaved in one process; PSNR and SSIM
compare each video with the uncached one of the same seed; adherence is the analytic checker's.""",
    "calibrate": """examples:
  diffcache calibrate teacache --prompts 16 --out tiny-teacache.json         # the embedded model
  diffcache calibrate teacache --model ./my-wan-pipeline --prompt "a cat surfing" --prompt "a dog running" \\
      --steps 50 --out wan.json
then: diffcache.enable(pipe, "teacache", preset="tiny-teacache.json"), or --methods "teacache:FILE" is not
supported in bench; use teacache[coefficients=...;threshold=...] there.""",
    "methods": """examples:
  diffcache methods""",
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
    g.add_argument("--steps", type=int, default=None,
                   help="number of denoising steps (default: 30; 50 for a text-to-image model)")
    g.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default: 5)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    g.add_argument("--cfg-mode", choices=("split", "batched"), default="split",
                   help="guidance as two calls per step (split, as WanPipeline) or one batched call (embedded "
                   "models only; default: split)")
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
    t.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the shipped recipe, 6000 for t2v, 1500 for t2i)")
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
    e.add_argument("--json", default=None, help="also write the per-prompt results to this JSON file")
    e.add_argument("--force", action="store_true", help="overwrite --json if it exists")

    b = sub.add_parser("bench", help="compare caching methods on one model: speedup, PSNR, SSIM, adherence",
                       epilog=EXAMPLES["bench"], formatter_class=fmt)
    b.add_argument("--model", default="tiny-shapes-t2v", help="embedded model name or pipeline folder")
    b.add_argument("--methods", default="none,adacache:fast,adacache:fast-moreg,adacache:slow",
                   help="comma-separated METHOD[:PRESET][option=value;...] list; 'none' is the uncached reference, "
                   "'steps:N' the plain pipeline at N steps "
                   "(default: none,adacache:fast,adacache:fast-moreg,adacache:slow)")
    b.add_argument("--prompts", type=int, default=16, help="number of prompts, spread over the grammar (default: 16)")
    b.add_argument("--steps", type=int, default=30, help="denoising steps (default: 30)")
    b.add_argument("--guidance", type=float, default=5.0, help="guidance scale (default: 5)")
    b.add_argument("--repeats", type=int, default=2, help="timed runs per method and prompt (default: 2)")
    b.add_argument("--cfg-mode", choices=("split", "batched"), default=None,
                   help="embedded models: guidance as two calls per step (split, default) or one batched call")
    b.add_argument("--out", default="out/bench", help="folder for results.json and table.md (default: out/bench)")
    b.add_argument("--force", action="store_true", help="overwrite results in --out")

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

    d = sub.add_parser("demo", help="the main job: generate clips uncached and accelerated, compare, write a report",
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

    kwargs = dict(num_inference_steps=steps, guidance_scale=guidance, output_type="np",
                  generator=torch.Generator().manual_seed(seed))
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

    from .io import IMAGE_SUFFIXES, VIDEO_SUFFIXES, check_writable, write_video
    from .models.pipeline import TinyShapesT2VPipeline
    from .models.registry import SUPPORTED_VIDEO_PIPELINES, ModelLoadError, load_pipeline
    from .models.shapes import parse_prompt

    out = Path(args.out)
    if out.suffix.lower() not in VIDEO_SUFFIXES + IMAGE_SUFFIXES:
        raise ValueError(f"--out {out.name!r}: use a file name ending in .gif or .mp4 (a video), or .png (an image).")
    _positive(steps=args.steps, fps=args.fps, upscale=args.upscale, height=args.height, width=args.width,
              frames=args.frames, seed=args.seed)
    check_writable(out, args.force)
    spec = None
    if args.method:
        from .bench.runner import BASELINE, MethodSpec

        spec = MethodSpec.parse(args.method)
        spec = None if spec.name == BASELINE else spec
    if args.model == "tiny-shapes-t2i" or out.suffix.lower() in IMAGE_SUFFIXES:
        return _generate_image(args, spec)
    args.steps = args.steps or 30
    pipe = load_pipeline(args.model)
    if type(pipe).__name__ not in SUPPORTED_VIDEO_PIPELINES:
        raise ModelLoadError(f"{args.model!r} is a {type(pipe).__name__}; `generate` supports text-to-video "
                             f"pipelines: {', '.join(SUPPORTED_VIDEO_PIPELINES)}.")
    if isinstance(pipe, TinyShapesT2VPipeline):
        parse_prompt(args.prompt)  # the embedded model knows its grammar: reject a bad prompt before any work
    pipe.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    handle = None
    if spec is not None:
        from .methods import enable

        handle = enable(pipe, spec.name, preset=spec.preset, **dict(spec.overrides))
    start = time.perf_counter()
    clip = _generate_one(pipe, args.prompt, args.steps, args.guidance, args.seed, args.cfg_mode,
                         args.negative_prompt, height=args.height, width=args.width, num_frames=args.frames)
    took = time.perf_counter() - start
    write_video(out, clip, fps=args.fps, upscale=args.upscale, force=args.force)
    extra = ""
    if handle is not None:
        extra = f", {spec.label}: {handle.report().computed_steps()}/{args.steps} steps computed"
        handle.disable()
    print(f"generated in {took:.2f} s ({args.steps} steps{extra}): {out}")
    return 0


def _generate_image(args, spec) -> int:
    """`generate` for a text-to-image pipeline (tiny-shapes-t2i, Stable Diffusion, SDXL): one PNG."""
    import torch

    from .io import IMAGE_SUFFIXES, write_image
    from .models.registry import SUPPORTED_IMAGE_PIPELINES, ModelLoadError, load_pipeline
    from .models.shapes import parse_prompt

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
    handle = None
    if spec is not None:
        from .methods import enable

        handle = enable(pipe, spec.name, preset=spec.preset, **dict(spec.overrides))
    args.steps = args.steps or 50
    kwargs = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="np",
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

    from .io import OutputExistsError
    from .models.train import Trainer, TrainConfig

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
        from .models.train_t2i import T2ITrainConfig as TrainConfig, T2ITrainer as Trainer  # noqa: N814
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
    from .io import check_writable, write_text
    from .models.evaluate import evaluate_adherence
    from .models.registry import load_pipeline

    if args.json:
        check_writable(args.json, args.force)
    _positive(prompts=args.prompts, steps=args.steps)
    pipe = load_pipeline(args.model)
    if args.steps is None:
        from .models.evaluate import is_image_pipeline

        args.steps = 50 if is_image_pipeline(pipe) else 30
    start = time.perf_counter()
    report = evaluate_adherence(pipe, num_prompts=args.prompts, num_inference_steps=args.steps,
                                guidance_scale=args.guidance)
    print(f"{args.model}: {report.summary()} [{args.steps} steps, guidance {args.guidance:g}, "
          f"{time.perf_counter() - start:.0f} s]")
    if args.json:
        write_text(args.json, json.dumps(report.__dict__, indent=1), force=args.force)
        print(f"per-prompt results: {args.json}")
    return 0


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
    from .io import check_writable, write_text, write_video
    from .methods import enable
    from .models.checker import check
    from .models.registry import load_pipeline

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
    from .bench.runner import parse_methods, run_bench, write_bench
    from .io import check_writable
    from .models.registry import load_pipeline

    _positive(prompts=args.prompts, steps=args.steps, repeats=args.repeats)
    methods = parse_methods(args.methods)
    out = Path(args.out)
    from .bench.runner import OUTPUT_FILES

    for name in OUTPUT_FILES:
        check_writable(out / name, args.force)
    pipe = load_pipeline(args.model)
    result = run_bench(pipe, methods, num_prompts=args.prompts, steps=args.steps, guidance=args.guidance,
                       repeats=args.repeats, model_name=args.model, cfg_mode=args.cfg_mode)
    paths = write_bench(result, out, force=args.force)
    print(f"{args.model}, {args.prompts} prompts, {args.steps} steps, guidance {args.guidance:g}, "
          f"{args.repeats} interleaved repeats:")
    print(result.table())
    print(f"results: {paths[0]}; chart: {paths[2]}")
    return 0


def cmd_calibrate(args) -> int:
    from .io import check_writable, write_text
    from .methods.teacache import calibrate_teacache
    from .models.registry import EMBEDDED_MODELS, load_pipeline
    from .models.shapes import all_prompts, parse_prompt

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
        grammar = all_prompts()
        prompts = [grammar[(i * len(grammar)) // args.prompts % len(grammar)] for i in range(args.prompts)]
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


COMMANDS = {"generate": cmd_generate, "train": cmd_train, "evaluate": cmd_evaluate, "bench": cmd_bench,
            "calibrate": cmd_calibrate,
            "methods": cmd_methods, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    from .adapters import UnsupportedModelError
    from .context import StepTrackingError
    from .io import OutputExistsError
    from .methods import MethodAlreadyEnabledError, UnknownMethodError
    from .models.registry import ModelLoadError
    from .models.shapes import PromptError

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

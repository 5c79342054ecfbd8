"""``diffcache distill``: few-step students by iterative consistency distillation, and their comparison page."""

from __future__ import annotations

from pathlib import Path

from ._common import FORMATTER, positive

EXAMPLES = """examples:
  diffcache distill --model tiny-shapes-t2v --rounds 16 --out runs/distill    # resumes at the first unfinished round
  diffcache distill --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --prompts prompts.txt --height 480 --width 832 \\
      --frames 81 --rounds 6 --out runs/wan-distill                           # prints the disk and time estimate first
  diffcache distill gallery runs/distill --out runs/distill-gallery.html
  diffcache generate --model runs/wan-distill/round-06 --steps 4 --prompt "A dog walking on a treadmill" --out dog.mp4"""


def _shared(p, model_run: bool) -> None:
    """The options of a distillation run (``dest`` prefixed on the parent parser, which also has subcommands)."""
    d = "m_" if model_run else ""
    p.add_argument("--out", dest=f"{d}out", required=not model_run,
                   help="run folder: cache/, eval/, round-01/ … (each a loadable pipeline)")
    p.add_argument("--rounds", dest=f"{d}rounds", type=int, default=None, help="rounds to run in all (default: 16 "
                   "for tiny-shapes-t2v, 6 for a diffusers pipeline); a finished run can be continued with more")
    p.add_argument("--slice-clips", dest=f"{d}slice_clips", type=int, default=None,
                   help="teacher trajectories added to the data cache per round (default: 16)")
    p.add_argument("--train-steps", dest=f"{d}train_steps", type=int, default=None,
                   help="optimiser steps per round (default: 32; 100 for a diffusers pipeline)")
    p.add_argument("--batch-size", dest=f"{d}batch_size", type=int, default=None,
                   help="pairs per optimiser step (default: 16; 4 for a diffusers pipeline)")
    p.add_argument("--eval-prompts", dest=f"{d}eval_prompts", type=int, default=None,
                   help="prompts of the per-round evaluation (default: 60; 8 for a diffusers pipeline)")
    p.add_argument("--seed", dest=f"{d}seed", type=int, default=None, help="seed of the data cache and training "
                   "(default: 0)")
    p.add_argument("--force", dest=f"{d}force", action="store_true",
                   help="start over, deleting the run's rounds, cache and eval")


def add_parser(subparsers) -> None:
    dist = subparsers.add_parser("distill", help="few-step students by iterative consistency distillation with a "
                                 "data cache", epilog=EXAMPLES, formatter_class=FORMATTER,
                                 description="Distil a few-step student of --model in rounds (resumable), or write "
                                 "a run's gallery (`diffcache distill gallery RUN --out page.html`).")
    dist.add_argument("--model", dest="m_model", default=None,
                      help="the teacher: tiny-shapes-t2v, a diffusers pipeline folder or hub id (WanPipeline, "
                      "TextToVideoSDPipeline, AnimateDiffPipeline)")
    _shared(dist, model_run=True)
    dist.add_argument("--prompts", dest="m_prompts", default=None, help="text file of training prompts, one per line "
                      "(default: the embedded grammar's 60)")
    dist.add_argument("--height", dest="m_height", type=int, default=None, help="clip height in pixels (default: "
                      "the pipeline's)")
    dist.add_argument("--width", dest="m_width", type=int, default=None, help="clip width (default: the pipeline's)")
    dist.add_argument("--frames", dest="m_frames", type=int, default=None, help="frames per clip (default: the "
                      "pipeline's)")
    dist.add_argument("--guidance", dest="m_guidance", type=float, default=None, help="the teacher's guidance scale, "
                      "distilled into the student (default: 5)")
    dist.add_argument("--negative-prompt", dest="m_negative_prompt", default=None,
                      help="the teacher's negative prompt (default: empty)")
    dist.add_argument("--solver-steps", dest="m_solver_steps", type=int, default=None,
                      help="teacher ODE steps per trajectory (default: 32 Euler steps for flow matching; U-Nets use "
                      "LCM's 50-step DDIM grid)")
    dist.add_argument("--keep-every", dest="m_keep_every", type=int, default=None,
                      help="keep every k-th trajectory point in the cache (default: 4); the student's sampling points "
                      "are always kept")
    dist.add_argument("--lr", dest="m_lr", type=float, default=None, help="learning rate (default: 1e-5)")
    dist.add_argument("--dtype", dest="m_dtype", choices=("bfloat16", "float16", "float32"), default=None,
                      help="the teacher's dtype and the training autocast (default: bfloat16 on a GPU, float32 on a "
                      "CPU); the student's master weights are float32")
    dist.add_argument("--device", dest="m_device", default=None, help="cuda, cuda:1, cpu … (default: cuda if there "
                      "is one)")
    dist.add_argument("--no-gradient-checkpointing", dest="m_no_checkpointing", action="store_true",
                      help="faster, more memory: keep every activation for the backward pass")
    for action in dist._actions:  # the parent's options carry a prefixed dest; show their plain names
        if action.dest.startswith("m_") and action.nargs != 0 and action.metavar is None and not action.choices:
            action.metavar = action.dest[2:].upper()
    dsub = dist.add_subparsers(dest="distill_command", required=False, metavar="gallery|tiny-shapes-t2v")
    dr = dsub.add_parser("tiny-shapes-t2v", help="distil the embedded model in rounds (the same as --model "
                         "tiny-shapes-t2v)", epilog=EXAMPLES, formatter_class=FORMATTER)
    _shared(dr, model_run=False)
    dg = dsub.add_parser("gallery", help="comparison page (Baseline / Iter=3 / Iter=6 / final at 2, 4, 8 steps) "
                         "and the per-round plot", epilog=EXAMPLES, formatter_class=FORMATTER)
    dg.add_argument("run", help="a distillation run folder (the --out of `diffcache distill`)")
    dg.add_argument("--out", required=True, help="the HTML page; its clips and plot go to <name>_files/ beside it")
    dg.add_argument("--prompts", type=int, default=4, help="prompts (row groups) on the page (default: 4)")
    dg.add_argument("--force", action="store_true", help="overwrite the page and its files")


def run(args) -> int:
    if args.distill_command == "gallery":
        positive(prompts=args.prompts)
        from ..distill.gallery import write_gallery

        result = write_gallery(args.run, args.out, prompts=args.prompts, force=args.force)
        print(f"gallery: {result['page']} ({len(result['clips'])} clips; columns {', '.join(result['columns'])}); "
              f"plot: {result['plot']}")
        return 0
    if args.distill_command == "tiny-shapes-t2v":
        model, prefix = "tiny-shapes-t2v", ""
        _refuse_model_options(args)
    else:
        model, prefix = args.m_model, "m_"
        if model is None:
            raise ValueError("say what to distil: --model tiny-shapes-t2v, a diffusers pipeline folder or hub id "
                             "(or `diffcache distill gallery RUN --out page.html` for a run's page).")
        if args.m_out is None:
            raise ValueError("--out is required: the run folder (rounds, data cache, evaluation).")
    get = lambda name: getattr(args, prefix + name)  # noqa: E731
    overrides = {k: get(k) for k in ("slice_clips", "train_steps", "batch_size", "eval_prompts", "seed")
                 if get(k) is not None}
    positive(rounds=get("rounds"), **overrides)  # before anything in --out is touched, and before torch loads
    from ..validation import check_output_folder

    check_output_folder(get("out"))  # an empty name, a control character, a place that cannot be written
    if model == "tiny-shapes-t2v":
        if prefix:
            _refuse_model_options(args)
        return _run_embedded(Path(get("out")), get("rounds") or 16, overrides, get("force"))
    return _run_pipeline(args, model, overrides)


_MODEL_ONLY = ("prompts", "height", "width", "frames", "guidance", "negative_prompt", "solver_steps", "keep_every",
               "lr", "dtype", "device")


def _refuse_model_options(args) -> None:
    given = [n for n in _MODEL_ONLY if getattr(args, f"m_{n}", None) is not None]
    if getattr(args, "m_no_checkpointing", False):
        given.append("no_gradient_checkpointing")
    if given:
        names = ", ".join("--" + n.replace("_", "-") for n in given)
        raise ValueError(f"{names}: for a diffusers pipeline (--model FOLDER or hub id); the embedded "
                         "tiny-shapes-t2v distils on its own grammar, size and sampler.")


def _prepare_out(out: Path, force: bool, config_file: str) -> None:
    import shutil

    from ..files import LOCK, OutputExistsError

    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file; give a folder for the run.")
    if out.exists() and not (out / config_file).exists() and any(p.name != LOCK for p in out.iterdir()) \
            and not force:
        raise OutputExistsError(f"{out} exists and is not a distillation run; choose another --out or pass --force.")
    if force and out.exists():
        for name in (config_file, "cache", "eval", "base", ".base.partial", *(p.name for p in out.glob("round-*")),
                     *(p.name for p in out.glob(".round-*.partial"))):
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def _run_embedded(out: Path, rounds: int, overrides: dict, force: bool) -> int:
    from dataclasses import replace

    from ..distill.rounds import CONFIG_FILE, DistillConfig, Distiller, finished_rounds
    from ..files import OutputExistsError, folder_lock

    config = replace(DistillConfig(teacher="tiny-shapes-t2v", rounds=rounds), **overrides)
    if out.exists() and not (out / CONFIG_FILE).exists() and not force and out.is_dir() \
            and any(p.name != ".lock" for p in out.iterdir()):
        raise OutputExistsError(f"{out} exists and is not a distillation run; choose another --out or pass --force.")
    with folder_lock(out):  # one writer per run folder: a second distill into it is refused, naming the first
        _prepare_out(out, force, CONFIG_FILE)
        Distiller(config, out).run()
    last = finished_rounds(out)[-1]
    print(f"student after round {last}: {out / f'round-{last:02d}'}\n"
          f"try it: diffcache generate --model {out / f'round-{last:02d}'} --steps 4 "
          f"--prompt \"a red circle moving left\" --out clip.gif\n"
          f"compare: diffcache distill gallery {out} --out {out}-gallery.html")
    return 0


def _run_pipeline(args, model: str, overrides: dict) -> int:
    import math
    from dataclasses import replace

    from ..validation import check_device, check_guidance

    out = Path(args.m_out)
    for name in ("height", "width", "frames", "solver_steps", "keep_every"):
        value = getattr(args, f"m_{name}")
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}.")
    guidance = check_guidance(args.m_guidance)
    if args.m_lr is not None and not (math.isfinite(args.m_lr) and args.m_lr > 0):
        raise ValueError(f"--lr must be a positive number, got {args.m_lr}.")
    from ..distill.pipelines import PipelineDistillConfig, PipelineDistiller, describe_estimate, prompts_digest
    from ..distill.pipelines import read_prompts

    prompts = read_prompts(args.m_prompts)  # a missing or empty file is refused before the model loads
    device = check_device(args.m_device)
    import torch

    from ..distill.rounds import CONFIG_FILE, finished_rounds
    from ..distill.teachers import teacher_for
    from ..files import folder_lock
    from ..loading import load_pipeline

    dtype = args.m_dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    pipe = load_pipeline(model, torch_dtype=getattr(torch, dtype))
    teacher = teacher_for(pipe)  # an unsupported family is refused before anything is written
    defaults = teacher.call_defaults()
    if defaults["height"] is None:  # TextToVideoSD / AnimateDiff: the U-Net's sample size
        defaults["height"] = defaults["width"] = teacher.model.config.sample_size * pipe.vae_scale_factor
    config = PipelineDistillConfig(
        teacher=model, rounds=args.m_rounds or 6, prompts_sha256=prompts_digest(prompts),
        height=args.m_height or defaults["height"], width=args.m_width or defaults["width"],
        frames=args.m_frames or defaults["num_frames"], dtype=dtype,
        negative_prompt=args.m_negative_prompt or "", gradient_checkpointing=not args.m_no_checkpointing)
    if type(teacher).__name__ == "UNetVideoTeacher":
        config = replace(config, solver_steps=50, keep_every=10, max_sequence_length=77)
    extra = {k: getattr(args, f"m_{k}") for k in ("solver_steps", "keep_every", "lr") if getattr(args, f"m_{k}")}
    if guidance is not None:
        extra["guidance_scale"] = guidance
    config = replace(config, **overrides, **extra)
    with folder_lock(out):
        _prepare_out(out, args.m_force, CONFIG_FILE)
        distiller = PipelineDistiller(config, out, pipe, prompts, device=device)
        print(describe_estimate(distiller.estimate(), config.rounds), flush=True)
        distiller.run()
    last = out / f"round-{finished_rounds(out)[-1]:02d}"
    print(f"student: {last} (a {type(pipe).__name__} folder; sample it with guidance_scale=1 and 2, 4 or 8 steps)\n"
          f"try it: diffcache generate --model {last} --steps 4 --prompt {prompts[0]!r} --out clip.mp4\n"
          f"compare: diffcache distill gallery {out} --out {out}-gallery.html")
    return 0

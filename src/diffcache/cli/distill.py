"""``diffcache distill``: few-step students by iterative consistency distillation, and their comparison page."""

from __future__ import annotations

from pathlib import Path

from ._common import FORMATTER, positive

EXAMPLES = """examples:
  diffcache distill tiny-shapes-t2v --rounds 16 --out runs/distill     # resumes at the first unfinished round
  diffcache distill gallery runs/distill --out runs/distill-gallery.html
  diffcache generate --model runs/distill/round-06 --steps 4 --prompt "a red circle moving left" --out fast.gif"""


def add_parser(subparsers) -> None:
    dist = subparsers.add_parser("distill", help="few-step students by iterative consistency distillation with a "
                                 "data cache", epilog=EXAMPLES, formatter_class=FORMATTER)
    dsub = dist.add_subparsers(dest="distill_command", required=True, metavar="TEACHER|gallery")
    dr = dsub.add_parser("tiny-shapes-t2v", help="distil the embedded model in rounds (resumable)",
                         epilog=EXAMPLES, formatter_class=FORMATTER)
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
                         "and the per-round plot", epilog=EXAMPLES, formatter_class=FORMATTER)
    dg.add_argument("run", help="a distillation run folder (the --out of `diffcache distill tiny-shapes-t2v`)")
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
    import shutil
    from dataclasses import replace

    overrides = {k: v for k, v in {"slice_clips": args.slice_clips, "train_steps": args.train_steps,
                                   "batch_size": args.batch_size, "eval_prompts": args.eval_prompts,
                                   "seed": args.seed}.items() if v is not None}
    positive(rounds=args.rounds, **overrides)  # before anything in --out is touched, and before torch loads
    from ..validation import check_output_folder

    check_output_folder(args.out)
    from ..distill.rounds import CONFIG_FILE, DistillConfig, Distiller, finished_rounds
    from ..files import LOCK, OutputExistsError, folder_lock

    config = replace(DistillConfig(teacher=args.distill_command, rounds=args.rounds), **overrides)
    out = Path(args.out)
    if out.exists() and not (out / CONFIG_FILE).exists() and any(p.name != LOCK for p in out.iterdir()) \
            and not args.force:
        raise OutputExistsError(f"{out} exists and is not a distillation run; choose another --out or pass --force.")
    with folder_lock(out):  # one writer per run folder: a second distill into it is refused, naming the first
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


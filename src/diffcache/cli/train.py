"""``diffcache train``: train an embedded model from scratch (resumable)."""

from __future__ import annotations

import argparse

from ._common import FORMATTER, MAXIMA, positive

EXAMPLES = """examples:
  diffcache train tiny-shapes-t2v --out runs/t2v            # resumes from runs/t2v/checkpoint if present
  diffcache train tiny-shapes-t2v --out runs/smoke --steps 20 --batch-size 4
  diffcache train tiny-shapes-t2i --out runs/t2i --compile  # the text-to-image U-Net (20000 steps, ~2 h)"""


def add_parser(subparsers) -> None:
    t = subparsers.add_parser("train", help="train an embedded model from scratch (resumable)", epilog=EXAMPLES,
                              formatter_class=FORMATTER)
    t.add_argument("model", choices=("tiny-shapes-t2v", "tiny-shapes-t2i"), help="which embedded model to train")
    t.add_argument("--out", required=True, help="run folder: checkpoint/ while training, model/ when done")
    t.add_argument("--steps", type=int, default=None,
                   help="optimiser steps (default: the shipped recipe's, 6000 for tiny-shapes-t2v, "
                   "20000 for tiny-shapes-t2i)")
    t.add_argument("--batch-size", type=int, default=None,
                   help="clips or images per step (default: 24 clips for tiny-shapes-t2v, 16 images for tiny-shapes-t2i)")
    t.add_argument("--seed", type=int, default=None, help="training seed (default: 0)")
    t.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                   help="fp32, or bf16 mixed precision (autocast; weights and optimiser stay float32): faster only "
                   "on CPUs with AMX matrix units, slower on others (default: fp32)")
    t.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="run the denoiser through torch.compile (needs a C++ compiler): 1.24x faster "
                   "tiny-shapes-t2i steps on a 2-core CPU, no gain measured for tiny-shapes-t2v; may be switched "
                   "on or off when a run resumes (default: off)")
    t.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default: 250)")
    t.add_argument("--stop-at", type=int, default=None,
                   help="train only up to this step of the recipe, then export (the schedule stays that of --steps; "
                   "running again without --stop-at, after removing DIR/model, continues to the end)")
    t.add_argument("--force", action="store_true", help="start over, discarding a checkpoint or model in --out")


def run(args) -> int:
    import shutil
    from dataclasses import replace

    overrides = {k: v for k, v in {"steps": args.steps, "batch_size": args.batch_size, "seed": args.seed,
                                   "checkpoint_every": args.checkpoint_every}.items() if v is not None}
    recipe = {k: v for k, v in {"precision": args.precision, "compile": args.compile}.items() if v is not None}
    # before anything in --out is touched, and before torch loads; --steps counts optimiser steps here
    positive(maxima={"steps": MAXIMA["train_steps"]}, **overrides)
    if args.seed is not None:
        from ..validation import check_seed

        check_seed(args.seed)
    from ..validation import check_output_folder

    out = check_output_folder(args.out)  # an empty name, a file, an unwritable place: before torch loads
    from ..files import OutputExistsError, folder_lock
    from ..embedded.t2v.train import Trainer, TrainConfig

    with folder_lock(out):  # one trainer per run folder: a second one into it is refused, naming the first
        model_dir = out / "model"
        if args.force and out.exists():
            shutil.rmtree(out / "checkpoint", ignore_errors=True)
            shutil.rmtree(model_dir, ignore_errors=True)
        elif model_dir.exists():
            raise OutputExistsError(f"{model_dir} already holds a trained model; pass --force to train again.")
        if args.model == "tiny-shapes-t2i":
            from ..embedded.t2i.train import T2ITrainConfig as TrainConfig, T2ITrainer as Trainer  # noqa: N814
        config = replace(TrainConfig(), **overrides, **recipe)
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


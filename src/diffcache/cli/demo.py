"""``diffcache demo`` (= ``make demo``), the main job: a short benchmark on the embedded model into ``out/demo``."""

from __future__ import annotations

from ..demo import DEMO
from ._common import FORMATTER, positive

EXAMPLES = f"""examples:
  diffcache demo                      # the main job (= make demo) -> {DEMO["out"]}/index.html
  diffcache demo                      # again: resumes, the finished videos are kept
  diffcache demo --force              # start over: its results, reports and clips are discarded
  diffcache demo --prompts 1 --steps 4 --out out/demo-smoke   # a quick look

The same as: diffcache bench --methods {DEMO["methods"]} --prompts {DEMO["num_prompts"]} --steps {DEMO["steps"]} \\
    --repeats {DEMO["repeats"]} --out {DEMO["out"]}
(uncached, every diffcache method at its default preset, two diffusers peers; see 'diffcache bench --help').
One method's clips beside the uncached ones: 'diffcache clips'."""


def add_parser(subparsers) -> None:
    d = subparsers.add_parser("demo", help="the main job (make demo): a short benchmark of every method on the "
                              "embedded model; resumable; HTML report", epilog=EXAMPLES, formatter_class=FORMATTER)
    d.add_argument("--out", default=DEMO["out"], help="output folder (default: %(default)s)")
    d.add_argument("--prompts", type=int, default=DEMO["num_prompts"], help="prompts (default: %(default)s)")
    d.add_argument("--steps", type=int, default=DEMO["steps"], help="denoising steps (default: %(default)s)")
    d.add_argument("--repeats", type=int, default=DEMO["repeats"],
                   help="timed runs per method and video (default: %(default)s)")
    d.add_argument("--force", action="store_true",
                   help="discard the benchmark's results, reports and clips in --out and start over (other files "
                   "there are kept)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from ..demo import run_demo
    from ..validation import check_output_folder
    from .bench import run_and_print

    positive(prompts=args.prompts, steps=args.steps, repeats=args.repeats)
    check_output_folder(args.out)
    return run_and_print("demo", lambda: run_demo(out=args.out, force=args.force, progress=not args.no_progress,
                                                  num_prompts=args.prompts, steps=args.steps, repeats=args.repeats),
                         args.out, DEMO["model"], args.steps, DEMO["guidance"], args.repeats)

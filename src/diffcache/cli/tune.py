"""``diffcache tune METHOD``: search a method's knobs on calibration prompts for a quality or speed target and save a
preset file (:mod:`diffcache.tune`)."""

from __future__ import annotations

from ._common import FORMATTER, check_method_names, check_options, one_line_warnings

EXAMPLES = """examples:
  diffcache tune fbcache --min-psnr 35 --out out/tune-fb        # the fastest threshold keeping 35 dB
  diffcache tune teacache --speedup 2 --out out/tune-tea         # the most accurate threshold reaching 2x FLOPs
  diffcache tune adacache:fast --min-psnr 30 --prompts 8 --out out/tune-ada
  diffcache tune pab --min-psnr 30 --steps 50 --prompt "a red circle moving left" --prompt "a blue square moving up"
  diffcache tune deepcache --model tiny-shapes-t2i --steps 50 --min-psnr 30 --out out/tune-deep
  diffcache tune teacache:my-model.json --model ./my-wan-pipeline --prompt "a cat surfing" --speedup 2
  diffcache tune teacache+cfg-cache --min-psnr 30 --out out/tune-both     # a composition: each part's knobs
then: diffcache bench --methods fbcache:out/tune-fb/fbcache-psnr35.json, diffcache generate --method
fbcache:FILE.json, or diffcache.enable(pipe, "fbcache", preset="FILE.json").

Speed is the FLOP speedup (denoiser FLOPs of the uncached runs over the method's) and quality the mean PSNR against
the uncached video, both deterministic. The calibration prompts differ from the benchmark's (the grammar offset by
half a step, seeds from 1000) and are recorded in the preset file; bench warns when its items overlap them. Every
evaluation is appended to OUT/evaluations.jsonl and reused by a rerun with the same model, method, prompts, steps,
guidance and CFG mode (another target too); another configuration in the same --out is refused without --force.

searched knobs:
  teacache: threshold (1/8x-8x the model's preset), forecast    fbcache, easycache: threshold, forecast
  adacache: codebook threshold scale, speed    pab: self / temporal / cross ranges    hsa: runtime
  fastercache: schedule, enhance    deepcache: interval    (forecast where the method has it)"""


def add_parser(subparsers) -> None:
    t = subparsers.add_parser("tune", help="search a method's knobs for a PSNR or FLOP-speedup target on calibration "
                              "prompts and save a preset file", epilog=EXAMPLES, formatter_class=FORMATTER)
    t.add_argument("method", metavar="METHOD",
                   help="NAME or NAME:PRESET (the base preset the search starts from), or A+B, a composition")
    t.add_argument("--min-psnr", type=float, default=None, metavar="DB",
                   help="target: the fastest setting with mean PSNR >= DB against the uncached run")
    t.add_argument("--speedup", type=float, default=None, metavar="X",
                   help="target: the most accurate setting with FLOP speedup >= X")
    t.add_argument("--model", default="tiny-shapes-t2v",
                   help="embedded model name, pipeline folder or hub id (default: tiny-shapes-t2v)")
    t.add_argument("--prompts", type=int, default=4,
                   help="embedded models: number of calibration prompts (default: 4)")
    t.add_argument("--prompt", action="append", default=None,
                   help="a calibration prompt (repeat for several); required for models other than the embedded ones")
    t.add_argument("--steps", type=int, default=30, help="denoising steps (default: 30)")
    t.add_argument("--guidance", type=float, default=5.0, help="guidance scale (default: 5)")
    t.add_argument("--cfg-mode", choices=("split", "batched"), default=None,
                   help="embedded models: guidance as two calls per step (split, default) or one batched call")
    t.add_argument("--height", type=int, default=None, help="frame height in pixels (default: the model's)")
    t.add_argument("--width", type=int, default=None, help="frame width in pixels (default: the model's)")
    t.add_argument("--frames", type=int, default=None, help="number of frames (default: the model's)")
    t.add_argument("--max-evaluations", type=int, default=24,
                   help="settings the search may evaluate, reused ones included (default: 24)")
    t.add_argument("--out", default="out/tune", help="folder of the evaluations (default: out/tune)")
    t.add_argument("--save", default=None, metavar="FILE.json",
                   help="the preset file to write (default: OUT/METHOD-TARGET.json)")
    t.add_argument("--force", action="store_true",
                   help="discard the evaluations in --out (another configuration) and overwrite --save")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    import sys

    check_method_names(args.method, "METHOD")  # a misspelt name at once, before torch is imported
    from ..errors import TuneError
    from ..tune import Target, tune

    target = Target.of(min_psnr=args.min_psnr, speedup=args.speedup)  # a bad target fails before the model loads
    from ..validation import check_output, check_output_folder

    check_options(args)  # counts, guidance, --prompt in an embedded model's grammar, the size: before loading
    check_output_folder(args.out)
    if args.save is not None:
        # its place only: whether a preset already there may be replaced is tune's to judge (the same tuning resumes)
        check_output(args.save, force=True, option="--save")
    try:
        with one_line_warnings("tune"):
            result = tune(args.method, target, model=args.model, out=args.out, prompts=args.prompt,
                          num_prompts=args.prompts, steps=args.steps, guidance=args.guidance, cfg_mode=args.cfg_mode,
                          save=args.save, force=args.force, progress=not args.no_progress,
                          max_evaluations=args.max_evaluations, height=args.height, width=args.width,
                          frames=args.frames)
    except TuneError as error:
        if getattr(error, "table", None):  # no setting met the target: what was found, then the one-line error
            print(error.table, file=sys.stderr)
        raise
    for line in result.lines:
        print(line)
    return 0

"""``diffcache calibrate METHOD``: fit a method's model-specific constants for any supported model
(:mod:`diffcache.calibrate`)."""

from __future__ import annotations

from ..calibrate import CALIBRATORS
from ._common import FORMATTER, check_options

EXAMPLES = """examples:
  diffcache calibrate teacache --prompts 16 --out tiny-teacache.json         # the embedded model
  diffcache calibrate teacache --model ./my-wan-pipeline --prompt "a cat surfing" --prompt "a dog running" \\
      --steps 50 --out wan.json
  diffcache calibrate adacache --prompts 20 --out tiny-moreg.json            # MoReg's normaliser
then: diffcache.enable(pipe, "teacache", preset="tiny-teacache.json"), or --methods "teacache:FILE" is not
supported in bench; use teacache[coefficients=...;threshold=...] there. For adacache the file says how to use
its moreg_norm (e.g. --methods "adacache:fast-moreg[moreg_norm=0.241]").

methods that can be calibrated:
""" + "\n".join(f"  {name}: {entry.fits}" for name, entry in CALIBRATORS.items())


def add_parser(subparsers) -> None:
    c = subparsers.add_parser("calibrate", help="fit a method's model-specific constants (TeaCache's polynomial, "
                              "AdaCache's MoReg normaliser) for any supported model", epilog=EXAMPLES,
                              formatter_class=FORMATTER)
    c.add_argument("method", choices=tuple(CALIBRATORS), metavar="METHOD",
                   help=f"what to calibrate: {', '.join(CALIBRATORS)} (see below)")
    c.add_argument("--model", default="tiny-shapes-t2v", help="embedded model name, pipeline folder or hub id")
    c.add_argument("--prompts", type=int, default=16, help="embedded models: how many grammar prompts (default: 16)")
    c.add_argument("--prompt", action="append", default=None,
                   help="a calibration prompt (repeat for several); required for models other than the embedded ones")
    c.add_argument("--steps", type=int, default=30, help="denoising steps of the runs (default: 30)")
    c.add_argument("--guidance", type=float, default=5.0, help="guidance scale (default: 5)")
    c.add_argument("--out", required=True, help="file to write (.json); teacache writes a fit plot beside it (.png)")
    c.add_argument("--force", action="store_true", help="overwrite --out (and its plot)")


def run(args) -> int:
    from ..calibrate import calibrate
    from ..validation import check_output

    check_options(args)  # counts, guidance, --prompt in an embedded model's grammar: before the model loads
    check_output(args.out, args.force)
    result = calibrate(args.method, args.out, model=args.model, prompts=args.prompt, num_prompts=args.prompts,
                       steps=args.steps, guidance=args.guidance, force=args.force)
    for line in result.lines:
        print(line)
    return 0

"""``diffcache clips``: one method's clips beside the uncached ones on the embedded model, with a page."""

from __future__ import annotations

from ..demo import CLIPS_OUT
from ._common import FORMATTER, check_method_names, check_options

EXAMPLES = f"""examples:
  diffcache clips                                   # uncached vs adacache:fast -> {CLIPS_OUT}/index.html
  diffcache clips --force                           # replace earlier clips
  diffcache clips --method adacache:slow --out out/clips-slow"""


def add_parser(subparsers) -> None:
    c = subparsers.add_parser("clips", help="clips of one method beside the uncached ones, with a page (the main "
                              "job is 'diffcache demo')", epilog=EXAMPLES, formatter_class=FORMATTER)
    c.add_argument("--out", default=CLIPS_OUT, help="output folder (default: %(default)s)")
    c.add_argument("--steps", type=int, default=30, help="denoising steps (default: 30)")
    c.add_argument("--method", default="adacache:fast", help="METHOD[:PRESET] to compare with the uncached run "
                   "(default: adacache:fast; see 'diffcache methods')")
    c.add_argument("--force", action="store_true", help="replace the clips and page in --out")


def run(args) -> int:
    from ..demo import write_clip_page
    from ..validation import check_output_folder

    check_method_names(args.method)  # a misspelt name at once, before torch is imported
    check_options(args)
    check_output_folder(args.out)
    result = write_clip_page(args.method, args.out, steps=args.steps, force=args.force, on_clip=print)
    print(result["summary"])
    return 0

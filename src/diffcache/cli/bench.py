"""``diffcache bench``: compare caching methods and peers on one model (resumable, HTML report)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..bench.defaults import DEFAULT_METHODS
from ._common import FORMATTER, check_method_names, check_options, interruption, one_line_warnings

EXAMPLES = """examples:
  diffcache bench --out out/bench        # uncached, every diffcache method at its default, two diffusers peers
  diffcache bench --methods none,adacache:fast,adacache:slow,steps:15 --prompts 16 --steps 30 --out out/ada
  diffcache bench --methods "ours,peers" --prompts 8 --seeds 2 --out out/all       # every method and peer
  diffcache bench --methods "teacache,fbcache[threshold=0.2],diffusers-fbcache[threshold=0.1]" --out out/fb
  diffcache bench --methods "ours,peer-curves" --prompts 8 --out out/curves    # each peer's knob at 3 points
  diffcache bench --methods "fbcache[threshold=0.1|0.2|0.3],diffusers-seacache[threshold=0.1|0.5]" --out out/sw
  diffcache bench --model ./my-wan-pipeline --prompt "a cat surfing" --prompt "a dog running" --steps 50 --out out/wan
  diffcache bench --model ./my-wan-i2v-pipeline --images frames/ --prompt "the cat jumps" --steps 40 --out out/i2v
  diffcache bench --model ./my-svd-pipeline --images a.png b.png --methods none,deepcache --out out/svd   # no prompts
  diffcache bench --methods ours --protocol "diffcache;videosys" --out out/proto   # scored two ways
  accelerate launch --multi_gpu --num_processes 2 -m diffcache.cli bench --out out/bench   # 2 processes (CPU too)

--methods names: none (the uncached reference, always added), steps:N (the plain pipeline at N steps),
METHOD[:PRESET][option=value;...] (see 'diffcache methods'), 'ours' (every diffcache method at its default
preset), the peers diffusers-pab, diffusers-fastercache, diffusers-fbcache, diffusers-taylorseer,
diffusers-magcache, diffusers-seacache, cachedit-dbcache (optionally PEER[option=value;...]), 'peers' (all of
them) and 'peer-curves' (each peer's main knob at 3 values). NAME[option=a|b|c] sweeps an option: one entry per
value. A method or peer that cannot run on the model is a skipped row with the reason.

--images (image-to-video models, required there): files, or folders whose .png/.jpg/.jpeg/.webp/.bmp files are
taken in name order. As many prompts as images: the i-th prompt with the i-th image; one prompt: it with every
image; one image: it with every prompt; a model without prompts (Stable Video Diffusion): one video per image.
Each first frame is centre-cropped to the clip's aspect ratio and resized to its size. The images (path and
content hash) are part of the folder's configuration: resuming with other images is refused.

Per video: speedup (interleaved timed runs in one process), denoiser FLOPs, peak and cache memory, PSNR / SSIM /
relative L1 / LPIPS against the uncached video of the same prompt and seed under each --protocol, VBench's
temporal flickering, the checker's adherence and temporal stability (embedded model). Re-running the same command resumes (finished items are kept); --force starts over.
Below the table: for each peer point, our best speedup at its PSNR or better, and the worst such ratio (the
figure of merit), by CPU time and by FLOPs. Writes results.jsonl, summary.csv / summary.md, peer-ratios.json /
.csv, pareto-*.png (one curve per method or peer), timeline.png, clips/ and index.html."""


def add_parser(subparsers) -> None:
    b = subparsers.add_parser("bench", help="compare caching methods and peers on one model: speed, FLOPs, memory, "
                              "quality; resumable; HTML report", epilog=EXAMPLES, formatter_class=FORMATTER)
    b.add_argument("--model", default="tiny-shapes-t2v",
                   help="embedded model name or pipeline folder (default: tiny-shapes-t2v)")
    b.add_argument("--methods", default=DEFAULT_METHODS,
                   help="comma-separated list, see below (default: %(default)s)")
    b.add_argument("--prompts", type=int, default=8,
                   help="embedded models: number of prompts spread over the grammar (default: 8)")
    b.add_argument("--prompt", action="append", default=None,
                   help="a prompt (repeat for several); required for models other than the embedded ones")
    b.add_argument("--images", nargs="+", default=None, metavar="FILE_OR_DIR",
                   help="first frames for an image-to-video model: image files or folders of them, paired with "
                   "the prompts (see below)")
    b.add_argument("--seeds", type=int, default=1, help="seeds per prompt (default: 1)")
    b.add_argument("--steps", type=int, default=30, help="denoising steps (default: 30)")
    b.add_argument("--guidance", type=float, default=5.0, help="guidance scale (default: 5)")
    b.add_argument("--repeats", type=int, default=2, help="timed runs per method and video (default: 2)")
    b.add_argument("--cfg-mode", choices=("split", "batched"), default=None,
                   help="embedded models: guidance as two calls per step (split, default) or one batched call")
    b.add_argument("--out", default="out/bench", help="output folder (default: out/bench)")
    b.add_argument("--force", action="store_true",
                   help="discard the benchmark's results, reports and clips in --out and start over (other files "
                   "there are kept)")
    b.add_argument("--height", type=int, default=None, help="frame height in pixels (default: the model's)")
    b.add_argument("--width", type=int, default=None, help="frame width in pixels (default: the model's)")
    b.add_argument("--frames", type=int, default=None, help="number of frames (default: the model's)")
    b.add_argument("--protocol", default="diffcache",
                   help="how PSNR / SSIM / LPIPS are scored: protocol names separated by ';' (diffcache, videosys, "
                        "skimage, torchmetrics) or FIELD=VALUE,…; the first gives the main columns (default: "
                        "diffcache; see 'diffcache metrics --list-protocols')")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from ..errors import DiffcacheError, OptionError
    from ..generation import check_inputs
    from ..loading import EMBEDDED_MODELS, SUPPORTED_IMAGE_TO_VIDEO_PIPELINES, stored_class_name
    from ..validation import check_output_folder

    check_method_names(args.methods, "--methods", benchmark=True)  # at once: before torch and diffusers load

    # what the pipeline takes first (an image or not: no import needed), then the values, then whether it takes a
    # prompt (which imports diffusers to look at the pipeline's call); benchmark() checks the images further
    class_name = stored_class_name(args.model)
    if args.images and class_name is not None and class_name not in SUPPORTED_IMAGE_TO_VIDEO_PIPELINES:
        check_inputs(class_name, True, True, args.model, option="--images", require_prompt=False)
    check_options(args)  # counts, guidance, --prompt in an embedded model's grammar, the size: before loading
    check_inputs(class_name, bool(args.images), bool(args.prompt) or args.model in EMBEDDED_MODELS,
                 args.model, option="--images", require_prompt=False)
    check_output_folder(args.out)
    from ..bench.specs import parse_methods

    try:
        parse_methods(args.methods)  # a bad preset or option fails here, naming the option, before the pipeline loads
    except (DiffcacheError, ValueError) as error:
        raise OptionError(f"--methods: {error}") from None
    with one_line_warnings("bench"):  # e.g. a tuned preset benchmarked on its own calibration items
        return _run(args)


def _run(args) -> int:
    from ..bench.benchmark import benchmark

    return run_and_print("bench", lambda: benchmark(
        model=args.model, methods=args.methods, out=args.out, prompts=args.prompt, num_prompts=args.prompts,
        seeds=args.seeds, steps=args.steps, guidance=args.guidance, repeats=args.repeats, cfg_mode=args.cfg_mode,
        force=args.force, progress=not args.no_progress, height=args.height, width=args.width, frames=args.frames,
        images=args.images, protocols=args.protocol),
        args.out, args.model, args.steps, args.guidance, args.repeats)


def run_and_print(command: str, run_benchmark, out, model: str, steps: int, guidance: float, repeats: int) -> int:
    """Run a benchmark (``bench`` or ``demo``); an interrupt (Ctrl-C: exit code 130; SIGTERM: 143) says where the
    finished videos are and how to resume; rank 0 prints the summary."""
    try:
        reports = run_benchmark()
    except KeyboardInterrupt as error:  # Ctrl-C, or SIGTERM (Terminated)
        word, code = interruption(error)
        print(f"diffcache {command}: {word}; the finished videos are in {Path(out) / 'results.jsonl'}. Run "
              "the same command again to resume.", file=sys.stderr)
        return code
    if reports is None:  # not rank 0 of a multi-process run: rank 0 prints
        return 0
    print_reports(reports, model, steps, guidance, repeats, out)
    return 0


def print_reports(reports: dict, model: str, steps: int, guidance: float, repeats: int, out) -> None:
    """The benchmark's summary: what ran, the table, where the results and the report are (also ``diffcache demo``)."""
    print(f"{model}: {len(reports['records'])} of {reports['items']} videos, {steps} steps, guidance "
          f"{guidance:g}, {repeats} interleaved timed repeats")
    print(reports["table"])
    print(f"results: {Path(out) / 'results.jsonl'}; table: {reports['markdown']}, {reports['csv']}")
    print(f"report: {reports['html']}")

"""``diffcache evaluate``: the adherence gate of an embedded model (analytic checker), optionally with a method."""

from __future__ import annotations

import json
import time

from ._common import FORMATTER, check_options, effect, enable_spec, method_spec

EXAMPLES = """examples:
  diffcache evaluate                                # the shipped model: 64 prompts, 30 steps, CFG 5
  diffcache evaluate --model runs/t2v/model --prompts 64 --json gate.json
  diffcache evaluate --prompts 60 --grid grid.png   # every prompt of the grammar once, as a contact sheet
  diffcache evaluate --seed-start 0                 # seeds 0 … 63 instead of the held-out 1,000,000 …
  diffcache evaluate --model tiny-shapes-t2i        # the text-to-image gate: 64 prompts, 50 steps, CFG 5
  diffcache evaluate --model tiny-shapes-t2i --prompts 150 --method deepcache:uniform-3   # adherence with a cache
  diffcache evaluate --prompts 60 --height 64 --width 64 --method hsa:hsa-25        # HSA at 1,024 tokens per clip"""


def add_parser(subparsers) -> None:
    e = subparsers.add_parser("evaluate", help="adherence gate of an embedded model (analytic checker)",
                              epilog=EXAMPLES, formatter_class=FORMATTER)
    e.add_argument("--model", default="tiny-shapes-t2v", help="embedded model name or pipeline folder")
    e.add_argument("--prompts", type=int, default=64, help="number of prompts, cycling over the grammar (default: 64)")
    e.add_argument("--steps", type=int, default=None,
                   help="denoising steps (default: 30; 50 for tiny-shapes-t2i)")
    e.add_argument("--guidance", type=float, default=5.0, help="guidance scale (default: 5)")
    e.add_argument("--height", type=int, default=None, help="frame height in pixels (default: the model's)")
    e.add_argument("--width", type=int, default=None, help="frame width in pixels (default: the model's)")
    e.add_argument("--method", default=None,
                   help="score the model with a diffcache method enabled, e.g. deepcache:uniform-3 (default: none)")
    e.add_argument("--seed-start", type=int, default=None,
                   help="prompt i gets seed SEED_START + i (default: 1,000,000, the held-out seeds no recipe "
                        "choice or checkpoint was selected on)")
    e.add_argument("--grid", default=None, help="also write a PNG contact sheet of the clips, each titled with "
                                                "its prompt and the checker's verdict")
    e.add_argument("--json", default=None, help="also write the per-prompt results to this JSON file")
    e.add_argument("--force", action="store_true", help="overwrite --json and --grid if they exist")


def run(args) -> int:
    from ..validation import check_output

    if args.json is not None:
        check_output(args.json, args.force, option="--json")
    if args.grid is not None:
        check_output(args.grid, args.force, option="--grid")
    check_options(args)  # counts, guidance and the size against the model's range: before it loads
    if args.seed_start is not None:
        from ..validation import check_seed

        check_seed(args.seed_start, option="--seed-start")
        check_seed(args.seed_start + max(args.prompts - 1, 0), option="the last seed, --seed-start + --prompts - 1,")
    spec = method_spec(args.method, "evaluate")  # a misspelt name before torch is imported
    from ..embedded.evaluate import HELD_OUT_SEED, evaluate_adherence, save_grid
    from ..files import write_text
    from ..loading import load_pipeline

    pipe = load_pipeline(args.model)
    if args.steps is None:
        from ..embedded.evaluate import is_image_pipeline

        args.steps = 50 if is_image_pipeline(pipe) else 30
    handle = enable_spec(pipe, spec)
    start = time.perf_counter()
    try:
        seed_start = HELD_OUT_SEED if args.seed_start is None else args.seed_start
        report, clips = evaluate_adherence(pipe, num_prompts=args.prompts, num_inference_steps=args.steps,
                                           guidance_scale=args.guidance, height=args.height, width=args.width,
                                           seed_start=seed_start, return_clips=True)
    finally:
        if handle is not None:
            handle.disable()
    method = f", {spec.label} ({effect(handle, args.steps)} per call)" if handle is not None else ""
    size = f", {args.height or 'default'}×{args.width or 'default'} px" if args.height or args.width else ""
    print(f"{args.model}{method}: {report.summary()} [{args.steps} steps, guidance {args.guidance:g}{size}, "
          f"{time.perf_counter() - start:.0f} s]")
    if args.json:
        write_text(args.json, json.dumps(report.__dict__, indent=1), force=args.force)
        print(f"per-prompt results: {args.json}")
    if args.grid:
        save_grid(clips, report, args.grid, force=args.force)
        print(f"contact sheet: {args.grid}")
    return 0


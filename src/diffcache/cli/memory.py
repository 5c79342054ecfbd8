"""``diffcache memory``: the bytes each method's cache takes at a model and video size, computed from the model's
shapes (:func:`diffcache.memory.cache_bytes`; no model is loaded)."""

from __future__ import annotations

from ._common import FORMATTER, positive

EXAMPLES = """examples:
  diffcache memory --model wan2.1-14b --height 720 --width 1280 --frames 81
  diffcache memory --model hunyuanvideo --guidance          # with true CFG (two calls per step)
  diffcache memory --model ltx-video --no-cfg --dtype fp16 --json
  diffcache memory --model ./my-model/transformer/config.json --height 480 --width 832 --frames 81

models: wan2.1-1.3b, wan2.1-14b, wan2.2-a14b, hunyuanvideo, ltx-video, cogvideox-5b, mochi, or the path of a
diffusers transformer config.json (or of a model folder holding transformer/config.json)."""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "memory", help="the bytes each method's cache takes at a model and video size (computed, nothing loaded)",
        description="Per method, the bytes its cache holds at its peak during a call at this size, from the model's "
                    "shapes (methods that do not support the model are listed with the reason).",
        epilog=EXAMPLES, formatter_class=FORMATTER)
    parser.add_argument("--model", required=True,
                        help="a model name (see below) or the path of a diffusers transformer config.json")
    parser.add_argument("--height", type=int, help="video height in pixels (default: the pipeline's default)")
    parser.add_argument("--width", type=int, help="video width in pixels (default: the pipeline's default)")
    parser.add_argument("--frames", type=int, help="number of frames (default: the pipeline's default)")
    parser.add_argument("--batch", type=int, default=1, help="videos per prompt (default 1)")
    cfg = parser.add_mutually_exclusive_group()
    cfg.add_argument("--guidance", action="store_true",
                     help="with classifier-free guidance, as the family's pipeline runs it (two calls per step, or "
                          "one batched call); the default where the pipeline guides by default")
    cfg.add_argument("--no-cfg", action="store_true", help="without classifier-free guidance (one branch)")
    cfg.add_argument("--cfg", choices=("none", "split", "batched"), help="the CFG mode, explicitly")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16",
                        help="the model's dtype, which its caches keep (default bf16)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _gb(n: int) -> str:
    return f"{n / 1e9:,.2f} GB"


def run(args) -> int:
    import json

    from ..errors import UnsupportedModelError
    from ..memory import DTYPE_BYTES, cache_bytes, model_spec, parameter_count, shapes_of
    from ..methods import list_methods

    positive(height=args.height, width=args.width, frames=args.frames, batch=args.batch)
    spec = model_spec(args.model)
    default = spec.default_size or (None, None, None)
    height, width, frames = (args.height or default[0], args.width or default[1], args.frames or default[2])
    if None in (height, width, frames):
        raise ValueError(f"{spec.name} has no default size: give --height, --width and --frames.")
    cfg = args.cfg or ("none" if args.no_cfg else spec.cfg if args.guidance or spec.guides_by_default else "none")
    shapes = shapes_of(spec, height, width, frames)
    params = parameter_count(spec)
    rows = []
    for info in list_methods():
        try:
            result = cache_bytes(info.name, spec, height, width, frames, args.dtype, cfg, args.batch, shapes=shapes)
            rows.append({**result.to_dict(), "preset": info.default_preset})
        except UnsupportedModelError as error:
            rows.append({"method": info.name, "refused": str(error)})
    if args.json:
        print(json.dumps({"model": spec.name, "family": spec.family, "size": {"height": height, "width": width,
                          "frames": frames}, "batch": args.batch, "cfg": cfg, "dtype": args.dtype,
                          "tokens": shapes.tokens, "width": shapes.width, "parameters": params,
                          "model_bytes": None if params is None else params * DTYPE_BYTES[args.dtype],
                          "methods": rows}, indent=1))
        return 0
    print(f"{spec.name} ({spec.family}) at {width}×{height}, {frames} frames, batch {args.batch}, {args.dtype}, "
          f"CFG {cfg}" + (f": {shapes.tokens:,} tokens × {shapes.width:,} wide" if shapes.tokens else ""))
    if params is not None:
        experts = f" ({spec.experts} experts, one runs at a time)" if spec.experts > 1 else ""
        print(f"model: {params / 1e9:.2f}B parameters = {_gb(params * DTYPE_BYTES[args.dtype])}{experts}")
    for row in rows:
        if "refused" in row:
            print(f"{row['method']}: refused ({row['refused']})")
            continue
        print(f"{row['method']} ({row['preset']}): {_gb(row['total'])}")
        for name, value in row["parts"].items():
            print(f"    {name}: {_gb(value)}")
    print("Caches hold the tensors each method's rule needs at its peak during a call (diffcache.memory); "
          "activations and weights come on top.")
    return 0

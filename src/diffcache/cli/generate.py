"""``diffcache generate``: one clip (GIF / MP4) or image (PNG) from a prompt, or a clip from a first frame and a
prompt (``--image``, image-to-video pipelines), optionally with a method."""

from __future__ import annotations

import inspect
import time
from pathlib import Path

from ._common import FORMATTER, check_options, effect, enable_spec, method_spec

EXAMPLES = """examples:
  diffcache generate --prompt "a red circle moving left" --out clip.gif
  diffcache generate --prompt "a red circle moving left" --method adacache:fast --out fast.gif
  diffcache generate --prompt "a red circle moving left" --steps 40 --method hsa:hsa-50 --budget-map map.gif --out hsa.gif
  diffcache generate --prompt "a blue square moving up" --steps 30 --guidance 5 --seed 3 --cfg-mode batched --out clip.mp4
  diffcache generate --model ./my-wan-pipeline --prompt "a cat surfing" --out cat.mp4
  diffcache generate --model tiny-shapes-t2i --prompt "a red circle" --steps 50 --out red.png
  diffcache generate --model tiny-shapes-t2i --prompt "a red circle" --steps 50 --method deepcache --out fast.png
  diffcache generate --model ./my-wan-i2v-pipeline --image first_frame.png --prompt "the cat jumps" --method fbcache --out cat.mp4
  diffcache generate --model ./my-svd-pipeline --image first_frame.png --height 576 --width 1024 --out svd.mp4   # SVD: no prompt

--image FILE gives an image-to-video pipeline (Wan / SkyReels-V2 / CogVideoX / LTX / LTX-2 / HunyuanVideo /
Stable Video Diffusion / I2VGen-XL) its first frame: centre-cropped to the aspect ratio of --height x --width (else
the pipeline's default size), then resized to it."""


def add_parser(subparsers) -> None:
    g = subparsers.add_parser("generate", help="generate one clip (GIF or MP4) from a prompt, or from a first frame (--image)", epilog=EXAMPLES,
                              formatter_class=FORMATTER)
    g.add_argument("--prompt", default=None, help="text prompt (required, except for a pipeline that takes none: "
                   "Stable Video Diffusion); the embedded models take 'a {colour} {shape} moving {direction}' "
                   "(tiny-shapes-t2v) or 'a {colour} {shape}' (tiny-shapes-t2i)")
    g.add_argument("--image", default=None, metavar="FILE",
                   help="first frame for an image-to-video pipeline (PNG, JPEG, ...): centre-cropped to the clip's "
                   "aspect ratio and resized to its size")
    g.add_argument("--negative-prompt", default=None, help="negative prompt for guidance (default: empty)")
    g.add_argument("--model", default="tiny-shapes-t2v",
                   help="embedded model name, local pipeline folder, or diffusers hub id (default: tiny-shapes-t2v)")
    g.add_argument("--steps", type=int, default=None, help="number of denoising steps (default: the pipeline's; "
                   "30 for tiny-shapes-t2v, 50 for tiny-shapes-t2i, 4 for a distilled student)")
    g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: the "
                   "pipeline's; 5 for tiny-shapes-t2v; a distilled student has none)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    g.add_argument("--cfg-mode", choices=("split", "batched"), default="split",
                   help="guidance as two calls per step (split, as WanPipeline) or one batched call (embedded "
                   "models only; default: split)")
    g.add_argument("--budget-map", default=None, metavar="FILE.gif",
                   help="with --method hsa: also write the clip beside a heat-map of how many steps each token was "
                   "computed (dark = few, bright = all)")
    g.add_argument("--height", type=int, default=None, help="frame height in pixels (default: the model's)")
    g.add_argument("--width", type=int, default=None, help="frame width in pixels (default: the model's)")
    g.add_argument("--frames", type=int, default=None, help="number of frames (default: the model's)")
    g.add_argument("--fps", type=int, default=8, help="frames per second of the written clip (default: 8)")
    g.add_argument("--upscale", type=int, default=None,
                   help="enlarge frames this many times (nearest); default: enough for a 256-pixel short side")
    g.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--method", default=None, help="accelerate with METHOD[:PRESET], e.g. adacache:fast "
                   "(see 'diffcache methods'; default: none)")
    g.add_argument("--out", required=True, help="output file: .gif or .mp4 (a text-to-image model: .png)")
    g.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def run(args) -> int:
    from ..files import IMAGE_SUFFIXES, VIDEO_SUFFIXES
    from ..validation import (check_device, check_negative_prompt, check_output, check_prompts, check_size,
                              model_limits, pipeline_limits)

    out = Path(args.out)
    if out.suffix.lower() not in VIDEO_SUFFIXES + IMAGE_SUFFIXES:
        raise ValueError(f"--out {out.name!r}: use a file name ending in .gif or .mp4 (a video), or .png (an image).")
    check_options(args, prompts=False)  # counts, seed, guidance and the size: before the pipeline loads
    check_output(out, args.force)
    spec = method_spec(args.method, "generate")
    if args.budget_map is not None:
        if spec is None or spec.name != "hsa":
            raise ValueError("--budget-map shows HSA's per-token step budgets; use it with --method hsa[:PRESET].")
        if Path(args.budget_map).suffix.lower() not in VIDEO_SUFFIXES:
            raise ValueError(f"--budget-map {Path(args.budget_map).name!r}: use a file name ending in .gif or .mp4.")
        check_output(args.budget_map, args.force, option="--budget-map")

    import numpy as np

    from ..files import write_video
    from ..generation import check_dependencies, check_inputs, generate_clip, prepare_image, read_image
    from ..loading import SUPPORTED_VIDEO_PIPELINES, ModelLoadError, load_pipeline, stored_class_name

    device = check_device(args.device)  # a device this torch lacks is refused before the pipeline loads
    image = read_image(args.image) if args.image is not None else None  # a bad file fails before any loading
    has_prompt = args.prompt is not None
    class_name = stored_class_name(args.model)
    check_inputs(class_name, image is not None, has_prompt, args.model)  # known before loading
    check_prompts(class_name, args.prompt)  # an embedded model's grammar: before it loads
    check_negative_prompt(class_name, args.negative_prompt)
    if args.model == "tiny-shapes-t2i" or out.suffix.lower() in IMAGE_SUFFIXES:
        return _generate_image(args, spec, device)
    limits = model_limits(args.model)
    pipe = load_pipeline(args.model)
    if type(pipe).__name__ not in SUPPORTED_VIDEO_PIPELINES:
        raise ModelLoadError(f"{args.model!r} is a {type(pipe).__name__}; `generate` supports the video "
                             f"pipelines: {', '.join(SUPPORTED_VIDEO_PIPELINES)}.")
    check_inputs(type(pipe).__name__, image is not None, has_prompt, args.model, pipe=pipe)
    check_dependencies(pipe)
    if limits is None:  # a hub id: its configs are known now, still before the first denoiser call
        check_size(pipeline_limits(pipe, args.model), args.height, args.width, args.frames)
    check_prompts(type(pipe).__name__, args.prompt)
    check_negative_prompt(type(pipe).__name__, args.negative_prompt)
    if image is not None:
        image = prepare_image(pipe, image, args.height, args.width)
    pipe.to(device)
    handle = enable_spec(pipe, spec)
    steps, guidance = args.steps, args.guidance
    student = _student_defaults(args)
    if student is not None:  # a student of `diffcache distill --model`: no CFG, its few steps, its trained size
        steps = student["default_steps"] if steps is None else steps
        guidance = student["guidance_scale"] if guidance is None else guidance
    start = time.perf_counter()
    if steps is None:  # the pipeline's own default (30 for the embedded model, 4 for a distilled student)
        default = inspect.signature(pipe.__call__).parameters.get("num_inference_steps")
        steps = default.default if default is not None and isinstance(default.default, int) else 30
    clip = generate_clip(pipe, args.prompt, steps, guidance, args.seed, args.cfg_mode, args.negative_prompt,
                         image=image, height=args.height, width=args.width, num_frames=args.frames)
    took = time.perf_counter() - start
    write_video(out, clip, fps=args.fps, upscale=args.upscale, force=args.force)
    extra = ""
    if handle is not None:
        extra = f", {spec.label}: {effect(handle, steps)}"
        if args.budget_map is not None:
            from ..generation import budget_map_clip

            budgets = np.asarray(handle.report().calls[-1].token_steps)  # HSA refuses a too short call up front
            write_video(args.budget_map, budget_map_clip(budgets[0], clip, steps), fps=args.fps,
                        upscale=args.upscale, force=args.force)
            extra += (f"; budget map ({int(budgets.min())}–{int(budgets.max())} steps per token, dark = few): "
                      f"{args.budget_map}")
        handle.disable()
    print(f"generated in {took:.2f} s ({steps} steps{extra}): {out}")
    return 0


def _student_defaults(args) -> dict | None:
    """For a student folder of ``diffcache distill --model``: its guidance (1), default steps and trained size fill
    the options left out; a guidance above 1 is applied, with a warning that the teacher's is already in the
    weights."""
    from ..distill.pipelines import student_info

    info = student_info(args.model)
    if info is None:
        return None
    for key, option in (("height", "height"), ("width", "width"), ("frames", "frames")):
        if getattr(args, option) is None and info.get(key):
            setattr(args, option, int(info[key]))
    if args.guidance is not None and args.guidance > 1:
        import warnings

        from ..errors import GuidanceDistilledWarning

        warnings.warn(f"--guidance {args.guidance:g}: this student has the teacher's guidance "
                      f"({info.get('guidance_scale_distilled')}) distilled into its weights and samples with "
                      "guidance 1; classifier-free guidance on top of it doubles the guidance.",
                      GuidanceDistilledWarning, stacklevel=2)
    return info


def _generate_image(args, spec, device: str) -> int:
    """`generate` for a text-to-image pipeline (tiny-shapes-t2i, Stable Diffusion, SDXL): one PNG."""
    import torch

    from ..files import IMAGE_SUFFIXES, write_image
    from ..loading import SUPPORTED_IMAGE_PIPELINES, ModelLoadError, load_pipeline

    out = Path(args.out)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"--out {out.name!r}: {args.model} makes images; use a file name ending in .png.")
    if args.frames is not None or args.cfg_mode != "split":
        raise ValueError("--frames and --cfg-mode apply to video models only; a text-to-image pipeline runs guidance "
                         "batched, as Stable Diffusion does.")
    if args.image is not None:
        raise ValueError(f"--image makes a clip with an image-to-video pipeline: use --out ending in .gif or .mp4 "
                         f"({out.name!r} is a still image, for text-to-image models).")
    if args.prompt is None:
        raise ValueError("a text-to-image pipeline needs a text prompt: give --prompt.")
    pipe = load_pipeline(args.model)  # its prompt and size were checked before (check_options)
    if type(pipe).__name__ not in SUPPORTED_IMAGE_PIPELINES:
        raise ModelLoadError(f"{args.model!r} is a {type(pipe).__name__}; `generate --out *.png` supports text-to-image "
                             f"pipelines: {', '.join(SUPPORTED_IMAGE_PIPELINES)}.")
    pipe.to(device)
    handle = enable_spec(pipe, spec)
    args.steps = args.steps or 50
    kwargs = dict(num_inference_steps=args.steps, guidance_scale=5.0 if args.guidance is None else args.guidance,
                  output_type="np",
                  generator=torch.Generator().manual_seed(args.seed))
    for key in ("height", "width"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    if args.negative_prompt is not None:
        kwargs["negative_prompt"] = args.negative_prompt
    start = time.perf_counter()
    image = pipe(args.prompt, **kwargs).images[0]
    took = time.perf_counter() - start
    write_image(out, image, upscale=args.upscale, force=args.force)
    extra = ""
    if handle is not None:
        extra = f", {spec.label}: {handle.report().computed_steps()}/{args.steps} steps computed"
        handle.disable()
    print(f"generated in {took:.2f} s ({args.steps} steps{extra}): {out}")
    return 0


"""One clip from a supported video pipeline with the command line's options, as floats (used by
``diffcache generate`` and the side-by-side clip page of :mod:`diffcache.demo`), HSA's budget map beside a
clip, and the first frame of an image-to-video pipeline (:func:`read_image`, :func:`prepare_image`,
:func:`check_inputs`).

How a first frame is fitted to the clip (:func:`prepare_image`): it is centre-cropped to the aspect ratio of the
requested size (``--height`` / ``--width``, else the pipeline's default size), then resized to that size (Lanczos),
so that the pipeline's own resize (diffusers' ``VideoProcessor.preprocess``, which stretches) does not distort it.
A pipeline that chooses its size from the image (HunyuanVideo 1.5 image-to-video: a resolution bucket by aspect
ratio, with its own crop) gets the image as read.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

from .errors import DiffcacheError, ModelLoadError


class ImageInputError(DiffcacheError, ValueError):
    """A first frame that cannot be read, or an image given to / missing from a pipeline; the message says which
    pipelines take one."""


def _parameters(pipe) -> dict:
    return dict(inspect.signature(pipe.__call__).parameters)


def takes_prompt(pipe) -> bool:
    """Whether the pipeline's call has a ``prompt`` (Stable Video Diffusion has none)."""
    return "prompt" in _parameters(pipe)


def read_image(path: str | os.PathLike):
    """The first frame in ``path`` as an RGB PIL image, read fully now: a missing or unreadable file is one
    :class:`ImageInputError` before any pipeline loads."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path).expanduser()
    if not path.is_file():
        raise ImageInputError(f"image {str(path)!r} {'is a folder' if path.is_dir() else 'does not exist'}; "
                              "give an image file (PNG, JPEG, WebP, ...).")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ImageInputError(f"cannot read image {str(path)!r} ({type(error).__name__}: {error}); give a PNG, "
                              "JPEG or WebP file.") from None


def check_inputs(class_name: str | None, has_image: bool, has_prompt: bool, model: str, option: str = "--image",
                 pipe=None, require_prompt: bool = True) -> None:
    """Refuse, before any work, an image given to a pipeline that takes none, an image-to-video pipeline without
    one (unless it runs without: :data:`~diffcache.loading.IMAGE_OPTIONAL_PIPELINES`), and a prompt given to or
    missing from a pipeline. ``class_name`` ``None`` (not known before loading) checks nothing. ``pipe``: the
    pipeline or its class, whose call tells whether it takes a prompt (default: the class of that name, when
    diffusers or diffcache's registry has it). ``require_prompt`` false: a missing prompt is left to the caller
    (``bench`` says so itself)."""
    from .loading import IMAGE_OPTIONAL_PIPELINES, SUPPORTED_IMAGE_TO_VIDEO_PIPELINES, pipeline_class

    if class_name is None:
        return
    image_to_video = class_name in SUPPORTED_IMAGE_TO_VIDEO_PIPELINES
    if has_image and not image_to_video:
        raise ImageInputError(f"{model!r} is a {class_name}, which takes no image; {option} is for the "
                              f"image-to-video pipelines: {', '.join(SUPPORTED_IMAGE_TO_VIDEO_PIPELINES)}.")
    if image_to_video and not has_image and class_name not in IMAGE_OPTIONAL_PIPELINES:
        raise ImageInputError(f"{model!r} is a {class_name}, an image-to-video pipeline: give its first frame with "
                              f"{option} FILE.")
    if pipe is None:
        import diffusers

        pipe = pipeline_class(class_name) or getattr(diffusers, class_name, None)
    if pipe is None or not callable(getattr(pipe, "__call__", None)):
        return
    if require_prompt and takes_prompt(pipe) and not has_prompt:
        raise ImageInputError(f"{model!r} is a {class_name}, which needs a text prompt: give --prompt.")
    if not takes_prompt(pipe) and has_prompt:
        raise ImageInputError(f"{model!r} is a {class_name}, which takes no text prompt (only its first frame); "
                              "leave --prompt out.")


def check_dependencies(pipe) -> None:
    """Refuse, before any work, a pipeline whose prompt cleaning calls the ``ftfy`` package without checking that
    it is installed (diffusers 0.42.1: Wan image-to-video, WanVACE, SkyReels-V2, Latte, Allegro): diffusers would
    fail mid-call with ``NameError: name 'ftfy' is not defined``."""
    import sys

    module = sys.modules.get(type(pipe).__module__)
    clean = getattr(module, "basic_clean", None)
    names = getattr(getattr(clean, "__code__", None), "co_names", ())
    if "ftfy" in names and "is_ftfy_available" not in names and not hasattr(module, "ftfy"):
        raise ModelLoadError(f"{type(pipe).__name__} cleans prompts with the ftfy package, which is not installed: "
                              "pip install ftfy.")


def target_size(pipe, height: int | None = None, width: int | None = None) -> tuple[int, int] | None:
    """The ``(height, width)`` a clip of ``pipe`` will have: the given values, else the pipeline's defaults (its
    call's defaults; CogVideoX: the transformer's sample size × the VAE's factor). ``None`` when the pipeline takes
    no size (it chooses one from the image)."""
    params = _parameters(pipe)
    if "height" not in params or "width" not in params:
        return None
    size = []
    for key, given in (("height", height), ("width", width)):
        value = given if given is not None else params[key].default
        if not isinstance(value, int):  # None: the pipeline derives it (CogVideoX from its transformer's config)
            config = getattr(getattr(pipe, "transformer", None), "config", None)
            factor = getattr(pipe, "vae_scale_factor_spatial", None)
            sample = getattr(config, f"sample_{key}", None) if config is not None else None
            if not (isinstance(sample, int) and isinstance(factor, int)):
                return None
            value = sample * factor
        size.append(value)
    return size[0], size[1]


def prepare_image(pipe, image, height: int | None = None, width: int | None = None):
    """``image`` (PIL) fitted to the clip's size (:func:`target_size`): centre-cropped to its aspect ratio, then
    resized (Lanczos). Unchanged when the pipeline chooses the size itself."""
    from PIL import Image

    size = target_size(pipe, height, width)
    if size is None:
        return image
    out_h, out_w = size
    in_w, in_h = image.size
    if in_w * out_h > in_h * out_w:  # wider than the clip: crop the sides
        crop_w = round(in_h * out_w / out_h)
        left = (in_w - crop_w) // 2
        box = (left, 0, left + crop_w, in_h)
    else:  # taller: crop top and bottom
        crop_h = round(in_w * out_h / out_w)
        top = (in_h - crop_h) // 2
        box = (0, top, in_w, top + crop_h)
    return image.resize((out_w, out_h), Image.LANCZOS, box=box)


def call_arguments(pipe, guidance: float | None) -> dict:
    """The guidance argument of ``pipe``'s call: ``guidance_scale``, or Stable Video Diffusion's
    ``max_guidance_scale`` (its guidance ramps from ``min_guidance_scale`` over the frames); refused for a pipeline
    with neither (HunyuanVideo 1.5 sets guidance in its guider)."""
    if guidance is None:
        return {}
    params = _parameters(pipe)
    for key in ("guidance_scale", "max_guidance_scale"):
        if key in params:
            return {key: guidance}
    raise ValueError(f"{type(pipe).__name__} takes no guidance scale; leave --guidance out.")


def generate_clip(pipe, prompt: str | None, steps: int, guidance: float | None, seed: int, cfg_mode: str,
                  negative_prompt: str | None, image=None, **size):
    """Run a supported video pipeline; return the first clip as floats in [0, 1], shape (F, H, W, 3).

    ``guidance`` ``None`` keeps the pipeline's default; ``cfg_mode`` other than ``split`` needs a pipeline that
    takes it (the embedded models); ``size`` (``height``, ``width``, ``num_frames``; ``None`` = unset) must be
    arguments of the pipeline (Latte's ``video_length`` takes ``num_frames``). ``image``: the first frame of an
    image-to-video pipeline, already fitted (:func:`prepare_image`); ``prompt`` ``None`` for a pipeline without
    one (Stable Video Diffusion)."""
    import torch

    kwargs = dict(num_inference_steps=steps, output_type="np", generator=torch.Generator().manual_seed(seed))
    kwargs.update(call_arguments(pipe, guidance))  # None: the pipeline's own default
    params = inspect.signature(pipe.__call__).parameters
    if image is not None:
        kwargs["image"] = image
    if prompt is not None:
        kwargs["prompt"] = prompt
    if "cfg_mode" in params:
        kwargs["cfg_mode"] = cfg_mode
    elif cfg_mode != "split":
        raise ValueError(f"--cfg-mode {cfg_mode} is only available for the embedded models; "
                         f"{type(pipe).__name__} chooses its own guidance batching.")
    if negative_prompt is not None:
        if "negative_prompt" not in params:
            raise ValueError(f"{type(pipe).__name__} takes no negative prompt; leave --negative-prompt out.")
        kwargs["negative_prompt"] = negative_prompt
    for key, value in size.items():
        if value is None:
            continue
        if key == "num_frames" and key not in params and "video_length" in params:  # LattePipeline
            key = "video_length"
        if key not in params:
            raise ValueError(f"{type(pipe).__name__} takes no {key!r} argument; leave that option out.")
        kwargs[key] = value
    return pipe(**kwargs).frames[0]


def budget_map_clip(budgets, clip, num_steps: int):
    """The generated ``clip`` ``(F, H, W, 3)`` beside a heat-map of each token's computed steps (``budgets``
    ``(f, h, w)`` on the token grid: one sample of the report's ``CallReport.token_steps``), as in the paper's Figure 6: ``(F, H, 2W,
    3)`` in [0, 1]. Colours run from dark (0 steps) to bright (``num_steps``, matplotlib's viridis)."""
    import numpy as np
    import torch
    from matplotlib import colormaps

    frames, height, width = clip.shape[:3]
    grid = torch.as_tensor(budgets, dtype=torch.float32)[None, None]
    cells = torch.nn.functional.interpolate(grid, size=(frames, height, width), mode="nearest")[0, 0].numpy()
    heat = colormaps["viridis"](np.clip(cells / num_steps, 0, 1))[..., :3]
    return np.concatenate([np.asarray(clip, dtype=np.float32), heat.astype(np.float32)], axis=2)

"""One clip from a supported video pipeline with the command line's options, as floats (used by
``diffcache generate`` and the side-by-side clip page of :mod:`diffcache.demo`)."""

from __future__ import annotations

import inspect


def generate_clip(pipe, prompt: str, steps: int, guidance: float | None, seed: int, cfg_mode: str,
                  negative_prompt: str | None, **size):
    """Run a supported video pipeline; return the first clip as floats in [0, 1], shape (F, H, W, 3).

    ``guidance`` ``None`` keeps the pipeline's default; ``cfg_mode`` other than ``split`` needs a pipeline that
    takes it (the embedded models); ``size`` (``height``, ``width``, ``num_frames``; ``None`` = unset) must be
    arguments of the pipeline."""
    import torch

    kwargs = dict(num_inference_steps=steps, output_type="np", generator=torch.Generator().manual_seed(seed))
    if guidance is not None:  # None: the pipeline's own default
        kwargs["guidance_scale"] = guidance
    params = inspect.signature(pipe.__call__).parameters
    if "cfg_mode" in params:
        kwargs["cfg_mode"] = cfg_mode
    elif cfg_mode != "split":
        raise ValueError(f"--cfg-mode {cfg_mode} is only available for the embedded models; "
                         f"{type(pipe).__name__} chooses its own guidance batching.")
    if negative_prompt is not None:
        kwargs["negative_prompt"] = negative_prompt
    for key, value in size.items():
        if value is None:
            continue
        if key not in params:
            raise ValueError(f"{type(pipe).__name__} takes no {key!r} argument; leave that option out.")
        kwargs[key] = value
    return pipe(prompt, **kwargs).frames[0]

"""One clip from a supported video pipeline with the command line's options, as floats (used by
``diffcache generate`` and the side-by-side clip page of :mod:`diffcache.demo`), and HSA's budget map beside a
clip."""

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

"""AdaCache's MoReg normaliser, calibrated for a model (Kahatapitiya et al., 2024, arXiv:2411.02397; official code:
github.com/AdaCache-DiT/AdaCache). MoReg scales the motion score as ``(m / moreg_norm) ** 8``; the official
``moreg_norm`` 0.385 was set for Open-Sora, and a model whose residuals move less needs its own.

:func:`write_moreg_norm` is what ``diffcache calibrate adacache`` runs: the normaliser, written to a JSON file with
how to use it (``adacache:fast-moreg[moreg_norm=...]``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import CalibrationError
from ..methods.adacache import AdaCacheConfig

#: the motion-score quantile :func:`calibrate_moreg_norm` returns by default (diffcache's choice,
#: docs/results/adacache.md)
DEFAULT_QUANTILE = 0.85


def calibrate_moreg_norm(pipe, prompts: list[str], num_inference_steps: int = 30, guidance_scale: float = 5.0,
                         seed: int = 1000, quantile: float = DEFAULT_QUANTILE) -> float:
    """A ``moreg_norm`` for ``pipe``: the ``quantile`` of its raw motion scores (metric residual, every step
    computed, inside the MoReg window) over ``prompts``.

    The official normaliser 0.385 was set for Open-Sora. On a model whose residuals move less, every
    ``(m / 0.385) ** 8`` is near 0 and MoReg *loosens* the schedule; with this model's own scale, videos with
    more motion than the ``quantile`` get ``m > 1`` and are computed more often. The default 0.85 is diffcache's
    choice, read off the trade-off curve on tiny-shapes-t2v (docs/results/adacache.md); it is not from the paper."""
    from ..api import enable
    from ..errors import NothingSkippedWarning
    from ..methods.adacache import moreg_window_for

    if not 0 < quantile <= 1:
        raise CalibrationError(f"quantile must be in (0, 1], got {quantile}")
    config = AdaCacheConfig.from_preset("fast-moreg", codebook=((float("inf"), 1),))
    scores = []
    with enable(pipe, config) as handle, warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)  # computing every step is the point here
        for i, prompt in enumerate(prompts):
            pipe(prompt, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                 generator=torch.Generator().manual_seed((seed + i) % 2**64), output_type="latent")
            start, end = config.moreg_window or moreg_window_for(num_inference_steps)
            scores += [s.values["motion_raw"] for s in handle.report().calls[-1].steps
                       if "motion_raw" in s.values and start <= s.step + 1 <= end]
    if not scores:
        raise CalibrationError("no computed step fell inside the MoReg window; use more steps")
    return float(np.quantile(scores, quantile))


def write_moreg_norm(pipe, prompts: list[str], *, model: str, steps: int, guidance: float, out: Path,
                     force: bool = False) -> list[str]:
    """Calibrate ``moreg_norm`` on ``pipe`` over ``prompts`` and write it to ``out`` (JSON, with the run's facts and
    how to use it). Returns the lines ``diffcache calibrate adacache`` prints."""
    import time

    from ..files import write_text

    start = time.perf_counter()
    norm = calibrate_moreg_norm(pipe, prompts, num_inference_steps=steps, guidance_scale=guidance)
    spec = f"adacache:fast-moreg[moreg_norm={norm:.4g}]"
    data = {"method": "adacache", "model": model, "moreg_norm": norm,
            "fit": {"quantile": DEFAULT_QUANTILE, "prompts": len(prompts), "steps": steps, "guidance": guidance},
            "use": spec}
    write_text(out, json.dumps(data, indent=1) + "\n", force=force)
    return [f"moreg_norm {norm:.4g} (the {DEFAULT_QUANTILE:.0%} quantile of the raw motion scores of {len(prompts)} "
            f"runs, {steps} steps) in {time.perf_counter() - start:.0f} s; the official value is "
            f"{AdaCacheConfig.moreg_norm:g}",
            f"written: {out} (use: diffcache.enable(pipe, 'adacache', preset='fast-moreg', moreg_norm={norm:.4g}), "
            f"or --methods \"{spec}\" in diffcache bench)"]


__all__ = ["DEFAULT_QUANTILE", "calibrate_moreg_norm", "write_moreg_norm"]

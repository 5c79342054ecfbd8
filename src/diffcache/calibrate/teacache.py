"""TeaCache calibration (Liu et al., 2024, arXiv:2411.19108; official code: github.com/ali-vilab/TeaCache): fit the
polynomial that rescales the relative change of the first block's modulated input into the relative change of the
model output, from uncached runs of any supported pipeline, and pick thresholds by replaying TeaCache's rule
(:func:`diffcache.methods.teacache.teacache_schedule`) on the recorded input changes.

:func:`write_teacache_preset` is what ``diffcache calibrate teacache`` runs: the fit, a preset JSON that
``diffcache.enable(pipe, "teacache", preset=FILE)`` loads, and a plot of the fit beside it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import CalibrationError
from ..methods.framework import relative_change
from ..methods.teacache import TeaCacheConfig, teacache_schedule


def fit_polynomial(input_changes, output_changes, degree: int = 4) -> tuple[tuple[float, ...], float]:
    """Least-squares polynomial ``output ≈ poly(input)`` (numpy.poly1d order) and its R²."""
    x, y = np.asarray(input_changes, float), np.asarray(output_changes, float)
    if len(x) <= degree:
        raise CalibrationError(f"need more than {degree} (input, output) pairs to fit a degree-{degree} polynomial, got {len(x)}")
    coefficients = np.polyfit(x, y, degree)
    residual = y - np.poly1d(coefficients)(x)
    total = ((y - y.mean()) ** 2).sum()
    r2 = float(1 - (residual**2).sum() / total) if total > 0 else 1.0
    return tuple(float(c) for c in coefficients), r2


def threshold_for(sequences: list[list[float | None]], coefficients, computed_fraction: float, **rule) -> float:
    """The smallest threshold at which TeaCache computes at most ``computed_fraction`` of the steps, on average over
    the recorded sequences of relative input changes."""
    grid = np.geomspace(1e-4, 10.0, 400)
    for threshold in grid:
        fractions = [np.mean(teacache_schedule(seq, coefficients, float(threshold), **rule)) for seq in sequences]
        if np.mean(fractions) <= computed_fraction:
            return float(threshold)
    raise CalibrationError(f"no threshold up to {grid[-1]:g} makes TeaCache compute at most {100 * computed_fraction:.0f} % "
                     "of these steps (too few steps, or a fitted curve that stays near zero); calibrate with more "
                     "steps")


@dataclass
class Calibration:
    """What ``calibrate_teacache`` measured and fitted."""

    coefficients: tuple[float, ...]
    r2: float
    thresholds: dict[str, float]
    input_changes: list[float]
    output_changes: list[float]

    def preset(self, model: str, **facts) -> dict:
        return {"method": "teacache", "model": model, "coefficients": list(self.coefficients),
                "threshold": self.thresholds["fast"], "thresholds": self.thresholds, "warmup_steps": 1,
                "compute_last_step": True, "fit": {"r2": self.r2, "points": len(self.input_changes), **facts}}

    def plot(self, path) -> None:
        """Scatter of the measured pairs and the fitted curve, as a PNG (atomic)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from ..files import atomic_path

        fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
        ax.scatter(self.input_changes, self.output_changes, s=8, alpha=0.5, label="measured steps")
        xs = np.linspace(min(self.input_changes), max(self.input_changes), 200)
        ax.plot(xs, np.poly1d(self.coefficients)(xs), color="C3", label=f"degree-{len(self.coefficients) - 1} fit, R² {self.r2:.3f}")
        ax.set_xlabel("relative L1 change of the modulated input")
        ax.set_ylabel("relative L1 change of the model output")
        ax.legend()
        fig.tight_layout()
        with atomic_path(path, force=True) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)


CALIBRATION_SPEEDS = {"slow": 0.6, "fast": 0.45}  #: computed fraction of steps each threshold aims at


def calibrate_teacache(pipe, prompts: list[str], num_inference_steps: int = 30, guidance_scale: float = 5.0,
                       seed: int = 1000, degree: int = 4, progress: bool = True, **call_kwargs) -> Calibration:
    """Fit TeaCache's polynomial for ``pipe`` from uncached runs: for every step and branch, the relative change of
    the first block's modulated input against the relative change of the denoiser's output. Thresholds are
    chosen by replaying the TeaCache rule on the recorded input changes so that ``slow`` computes about 60 % and
    ``fast`` about 45 % of the steps."""
    from tqdm.auto import tqdm

    from ..adapters import find_adapter
    from ..api import enable

    if len(prompts) * (num_inference_steps - 1) <= degree + 1:
        raise CalibrationError(f"{len(prompts)} prompt(s) x {num_inference_steps} steps give too few step pairs to fit a "
                         f"degree-{degree} polynomial; use more prompts or steps")

    import warnings

    from ..errors import NothingSkippedWarning

    config = TeaCacheConfig.from_preset(None, coefficients=(1.0, 0.0), threshold=0.0)  # computes every step
    model = pipe.transformer
    records: dict = {}
    xs, ys, sequences = [], [], []
    with enable(pipe, config) as handle, warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)  # computing everything is the point here
        adapter = find_adapter(model)
        first = adapter.blocks(model)[0]

        def on_first_block(module, args, kwargs):
            ctx = handle.tracker.current
            records.setdefault(ctx.branch, {})["signal"] = adapter.modulated_input(module, args, kwargs).detach()

        def on_output(module, args, kwargs, output):
            ctx = handle.tracker.current
            entry = records[ctx.branch]
            out = (output[0] if isinstance(output, tuple) else getattr(output, "sample", output)).detach()
            if "prev_signal" in entry:
                xs.append(relative_change(entry["prev_signal"], entry["signal"]))
                ys.append(relative_change(entry["prev_output"], out))
                entry["sequence"].append(xs[-1])
            else:
                entry["sequence"] = [None]
            entry["prev_signal"], entry["prev_output"] = entry["signal"], out

        hooks = [first.register_forward_pre_hook(on_first_block, with_kwargs=True),
                 model.register_forward_hook(on_output, with_kwargs=True)]
        try:
            for i, prompt in enumerate(tqdm(prompts, desc="calibrate teacache", disable=not progress)):
                records.clear()
                pipe(prompt, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                     generator=torch.Generator().manual_seed((seed + i) % 2**64), output_type="latent", **call_kwargs)
                sequences += [entry["sequence"] for entry in records.values()]
        finally:
            for hook in hooks:
                hook.remove()
    coefficients, r2 = fit_polynomial(xs, ys, degree)
    if r2 < 0.5:
        warnings.warn(f"the TeaCache fit explains little of the output change (R² {r2:.2f}); expect its schedule to "
                      "track quality loosely (see the fit plot)", UserWarning, stacklevel=2)
    thresholds = {name: threshold_for(sequences, coefficients, fraction)
                  for name, fraction in CALIBRATION_SPEEDS.items()}
    return Calibration(coefficients, r2, thresholds, xs, ys)




def write_teacache_preset(pipe, prompts: list[str], *, model: str, steps: int, guidance: float, out: Path,
                          force: bool = False) -> list[str]:
    """Calibrate TeaCache on ``pipe`` over ``prompts``; write the preset to ``out`` (JSON) and the fit plot beside
    it (``.png``). Returns the lines ``diffcache calibrate teacache`` prints."""
    from ..files import write_text

    out = Path(out)
    plot = out.with_suffix(".png")
    start = time.perf_counter()
    calibration = calibrate_teacache(pipe, prompts, num_inference_steps=steps, guidance_scale=guidance)
    preset = calibration.preset(model, prompts=len(prompts), steps=steps, guidance=guidance)
    write_text(out, json.dumps(preset, indent=1) + "\n", force=force)
    calibration.plot(plot)
    return [f"fitted {len(calibration.input_changes)} steps of {len(prompts)} runs in {time.perf_counter() - start:.0f} s: "
            f"coefficients {[f'{c:.6g}' for c in calibration.coefficients]}, R² {calibration.r2:.3f}; thresholds "
            f"slow {calibration.thresholds['slow']:.3g}, fast {calibration.thresholds['fast']:.3g}",
            f"preset: {out} (use: diffcache.enable(pipe, 'teacache', preset='{out}')); fit plot: {plot}"]


__all__ = ["CALIBRATION_SPEEDS", "Calibration", "calibrate_teacache", "fit_polynomial", "threshold_for",
           "write_teacache_preset"]

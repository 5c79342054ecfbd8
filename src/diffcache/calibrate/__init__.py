"""Calibration: fit a method's model-specific constants from runs of a pipeline, and write them to a JSON file.

``diffcache calibrate METHOD`` runs the calibrator of ``METHOD`` from :data:`CALIBRATORS`:

* ``teacache`` (:mod:`.teacache`): TeaCache's rescaling polynomial and the ``slow`` / ``fast`` thresholds
  (Liu et al., 2024, arXiv:2411.19108; official code: github.com/ali-vilab/TeaCache), as a preset file that
  ``diffcache.enable(pipe, "teacache", preset=FILE)`` loads, plus a plot of the fit.
* ``adacache`` (:mod:`.moreg`): the MoReg normaliser ``moreg_norm`` of AdaCache (Kahatapitiya et al., 2024,
  arXiv:2411.02397; the official code's 0.385 was set for Open-Sora).

This module imports no heavy package: the command line lists the calibrators in ``--help`` without loading torch;
a calibrator's module is imported when it runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import CalibrationError, UnknownMethodError


@dataclass(frozen=True)
class Calibrator:
    """One method that can be calibrated: what it fits, the driver that fits and writes it, and the files it writes
    beside ``--out`` (their suffixes), all checked before any work."""

    method: str
    fits: str  #: what the calibration fits, one line (``diffcache calibrate --help``)
    driver: str  #: ``module:function`` relative to this package; ``function(pipe, prompts, *, model, steps,
    #: guidance, out, force) -> list[str]`` writes ``out`` (and the side files) and returns lines to print
    side_files: tuple[str, ...] = ()

    def load(self):
        module, _, function = self.driver.partition(":")
        return getattr(importlib.import_module(module, __name__), function)


CALIBRATORS: dict[str, Calibrator] = {
    "teacache": Calibrator("teacache", "TeaCache's polynomial and its slow / fast thresholds, as a preset file "
                           "(and a fit plot, .png)", ".teacache:write_teacache_preset", side_files=(".png",)),
    "adacache": Calibrator("adacache", "AdaCache's MoReg normaliser moreg_norm (the official 0.385 was set for "
                           "Open-Sora)", ".moreg:write_moreg_norm"),
}


@dataclass
class CalibrationResult:
    """What :func:`calibrate` wrote: the JSON file, the side files, and lines that describe the fit."""

    method: str
    out: Path
    files: list[Path]
    lines: list[str]


def calibrator(method: str) -> Calibrator:
    """The calibrator of ``method``; an :class:`~diffcache.errors.UnknownMethodError` names the ones there are."""
    try:
        return CALIBRATORS[method]
    except KeyError:
        raise UnknownMethodError(f"{method!r} has no calibration; methods that can be calibrated: "
                                 f"{', '.join(CALIBRATORS)}.") from None


def calibration_prompts(model: str, num_prompts: int, prompts: list[str] | None = None) -> list[str]:
    """``prompts`` when given; for an embedded model ``num_prompts`` prompts spread evenly over its grammar."""
    from ..embedded.shapes import prompts as grammar_prompts
    from ..loading import EMBEDDED_MODELS

    if prompts:
        return list(prompts)
    if model in EMBEDDED_MODELS:
        return grammar_prompts(num_prompts, spread=True)
    raise CalibrationError("give calibration prompts with --prompt (repeat it) for a model other than the embedded "
                           "ones")


def calibrate(method: str, out: str | Path, model: str = "tiny-shapes-t2v", prompts: list[str] | None = None,
              num_prompts: int = 16, steps: int = 30, guidance: float = 5.0, force: bool = False) -> CalibrationResult:
    """Calibrate ``method`` on ``model`` and write the result to ``out`` (``.json``); what
    ``diffcache calibrate METHOD`` does. Bad arguments and existing files are refused before the model loads."""
    from ..embedded.shapes import parse_prompt
    from ..files import check_writable
    from ..loading import load_pipeline

    entry = calibrator(method)
    for name, value in {"prompts": num_prompts, "steps": steps}.items():
        if value < 1:
            raise CalibrationError(f"--{name} must be at least 1, got {value}.")
    out = Path(out)
    if out.suffix.lower() != ".json":
        raise CalibrationError(f"--out {out.name!r}: a calibration file must end in .json")
    files = [out, *(out.with_suffix(suffix) for suffix in entry.side_files)]
    for path in files:
        check_writable(path, force)
    prompt_list = calibration_prompts(model, num_prompts, prompts)
    driver = entry.load()
    pipe = load_pipeline(model)
    if type(pipe).__name__ == "TinyShapesT2VPipeline":
        for prompt in prompt_list:
            parse_prompt(prompt)
    pipe.set_progress_bar_config(disable=True)
    lines = driver(pipe, prompt_list, model=model, steps=steps, guidance=guidance, out=out, force=force)
    return CalibrationResult(method, out, files, lines)


__all__ = ["CALIBRATORS", "CalibrationResult", "Calibrator", "calibrate", "calibration_prompts", "calibrator"]

"""TeaCache (Liu et al., 2024, arXiv:2411.19108; official code: github.com/ali-vilab/TeaCache): skip the whole
block stack while a cheap input has changed little.

Per branch (cond and uncond apart, as the official Wan code's even/odd accumulators): read the first block's
modulated input (the adapter's ``modulated_input``), ``rel = mean|x − x_prev| / mean|x_prev|``,
``accumulated += poly(rel)`` with the model's fitted polynomial; while ``accumulated < threshold`` reuse the stack
residual, otherwise compute and reset the accumulator to 0. The first ``warmup_steps`` steps (and the last one with
``compute_last_step``) are always computed and reset the accumulator. ``x_prev`` is updated every step.

Presets carry the published coefficients and thresholds (TeaCache repository: TeaCache4Wan2.1 in retention mode —
5 warm-up steps, the last step not forced —, TeaCache4CogVideoX1.5, TeaCache4LTX-Video, TeaCache4HunyuanVideo),
plus ``tiny-shapes-t2v`` fitted here by ``diffcache calibrate teacache``. Any JSON file written by that command is
a preset too: ``diffcache.enable(pipe, "teacache", preset="my-model.json")``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..adapters.capabilities import BlockStack, ModulatedInput
from ..errors import ConfigError, UnknownMethodError, UnknownOptionError, UnsupportedModelError
from .framework import MethodConfig, register, relative_change
from .residual_cache import ResidualCacheRuntime

WAN_1_3B = (-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02)
WAN_14B = (-3.03318725e05, 4.90537029e04, -2.65530556e03, 5.87365115e01, -3.15583525e-01)
COGVIDEOX_2B = (-3.10658903e01, 2.54732368e01, -5.92380459e00, 1.75769064e00, -3.61568434e-03)
COGVIDEOX_5B = (-1.53880483e03, 8.43202495e02, -1.34363087e02, 7.97131516e00, -5.23162339e-02)
COGVIDEOX15_5B = (2.50210439e02, -1.65061612e02, 3.57804877e01, -7.81551492e-01, 3.58559703e-02)
LTX_VIDEO = (2.14700694e01, -1.28016453e01, 2.31279151e00, 7.92487521e-01, 9.69274326e-03)
HUNYUAN_VIDEO = (7.33226126e02, -4.01131952e02, 6.75869174e01, -3.14987800e00, 9.61237896e-02)
# fitted on tiny-shapes-t2v by `diffcache calibrate teacache --prompts 16` (docs/methods/teacache.md: 928 steps,
# R² 0.227);
# its thresholds (slow 0.0321, fast 0.0605) replay the rule to compute about 60 % / 45 % of the steps
TINY_SHAPES_T2V = (1.67875147e+04, -6.79285125e+03, 9.38328381e+02, -5.07642918e+01, 9.45466992e-01)


def _published(coefficients, slow, fast, **extra):
    return {f"{name}": {"coefficients": coefficients, "threshold": threshold, **extra}
            for name, threshold in (("slow", slow), ("fast", fast))}


PRESET_FAMILIES = {"wan2.1-t2v-1.3b": "Wan", "wan2.1-t2v-14b": "Wan", "cogvideox-2b": "CogVideoX",
                   "cogvideox-5b": "CogVideoX", "cogvideox1.5-5b": "CogVideoX", "ltx-video": "LTX-Video",
                   "hunyuanvideo": "HunyuanVideo", "tiny-shapes-t2v": "Wan"}


def _preset_families():
    return [(name, PRESET_FAMILIES[config["model"]]) for name, config in TeaCacheConfig.PRESETS.items()]


def _presets() -> dict:
    retention = {"warmup_steps": 5, "compute_last_step": False}
    table = {
        "wan2.1-t2v-1.3b": _published(WAN_1_3B, 0.05, 0.08, **retention),
        "wan2.1-t2v-14b": _published(WAN_14B, 0.14, 0.2, **retention),
        "cogvideox-2b": _published(COGVIDEOX_2B, 0.1, 0.2),
        "cogvideox-5b": _published(COGVIDEOX_5B, 0.1, 0.2),
        "cogvideox1.5-5b": _published(COGVIDEOX15_5B, 0.1, 0.2),
        "ltx-video": _published(LTX_VIDEO, 0.03, 0.05),
        "hunyuanvideo": _published(HUNYUAN_VIDEO, 0.1, 0.15),
        "tiny-shapes-t2v": _published(TINY_SHAPES_T2V, 0.0321, 0.0605),
    }
    presets = {}
    for model, speeds in table.items():
        presets[model] = {**speeds["fast"], "model": model}
        presets[f"{model}-slow"] = {**speeds["slow"], "model": model}
    return presets


@dataclass
class TeaCacheConfig(MethodConfig):
    """TeaCache (Liu et al., 2024, arXiv:2411.19108; official code: github.com/ali-vilab/TeaCache).

    Args:
        preset (str): the name of the preset the config was made from (``""`` for a hand-made config), or the
            path of the JSON preset file it was read from.
        coefficients (tuple[float, ...]): the polynomial that rescales the relative L1 change of the modulated
            input into an estimate of the output's change, in ``numpy.poly1d`` order (highest power first); any
            sequence of numbers is accepted and stored as a tuple of floats. The default is ``TINY_SHAPES_T2V``,
            fitted on the embedded tiny-shapes-t2v model by ``diffcache calibrate teacache``.
        threshold (float): the accumulated rescaled change (unitless, >= 0) below which the block stack's residual
            is reused; at or above it the step is computed and the sum reset to 0. Higher reuses more.
        warmup_steps (int): the first steps that are always computed, resetting the sum (integer >= 1: the first
            step has no previous input).
        compute_last_step (bool): also always compute the last step.
        model (str): the model the coefficients were fitted on (a preset's model name, e.g.
            ``"wan2.1-t2v-1.3b"``); enabling a preset fitted on another model family is refused. ``""``: unknown
            (own coefficients; nothing is checked). Overriding ``coefficients`` in ``from_preset`` clears it.

    Presets:
        Each model has two presets that set ``coefficients`` to its fitted polynomial, ``model`` to its name and
        ``threshold``: ``MODEL`` (the faster threshold) and ``MODEL-slow``. The published ones are from the official
        repository (TeaCache4Wan2.1, TeaCache4CogVideoX1.5, TeaCache4LTX-Video, TeaCache4HunyuanVideo):

        - ``wan2.1-t2v-1.3b`` (threshold 0.08) / ``-slow`` (0.05) and ``wan2.1-t2v-14b`` (0.2) / ``-slow`` (0.14):
          Wan 2.1 in retention mode, also ``warmup_steps=5``, ``compute_last_step=False``.
        - ``cogvideox-2b``, ``cogvideox-5b``, ``cogvideox1.5-5b`` (0.2) / ``-slow`` (0.1).
        - ``ltx-video`` (0.05) / ``-slow`` (0.03).
        - ``hunyuanvideo`` (0.15) / ``-slow`` (0.1).
        - ``tiny-shapes-t2v`` (the default preset; 0.0605) / ``-slow`` (0.0321): fitted here; the thresholds make
          the rule compute about 45 % / 60 % of the steps.

        Any JSON file written by ``diffcache calibrate teacache`` is a preset too (``preset="my-model.json"``).
        Every field a preset does not name keeps its default.
    """

    PRESETS: ClassVar = _presets()
    DEFAULT_PRESET: ClassVar = "tiny-shapes-t2v"
    REQUIRES: ClassVar = (BlockStack, ModulatedInput)

    coefficients: tuple[float, ...] = TINY_SHAPES_T2V
    threshold: float = 0.0605
    warmup_steps: int = 1
    compute_last_step: bool = True
    model: str = ""

    @classmethod
    def from_preset(cls, preset: str | None = None, **overrides):
        if preset is not None and preset not in cls.PRESETS and preset.endswith(".json"):
            path = Path(preset).expanduser()
            if not path.is_file():
                raise UnknownMethodError(f"TeaCache preset file {path} does not exist; write one with "
                                         "`diffcache calibrate teacache --out FILE`.")
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise ConfigError(f"TeaCache preset file {path} is not valid JSON: {error}") from None
            if not isinstance(data, dict) or data.get("method", "teacache") != "teacache":
                raise ConfigError(f"{path} is not a TeaCache preset (write one with `diffcache calibrate teacache`)")
            known = {f.name for f in fields(cls)} - {"preset"}
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise UnknownOptionError(f"{cls.__name__} has no option {', '.join(map(repr, unknown))}; options: "
                                f"{', '.join(sorted(known))}.")
            values = {k: v for k, v in data.items() if k in known}
            return cls(**{**values, **overrides, "preset": str(path)})
        if "coefficients" in overrides:
            overrides.setdefault("model", "")  # own coefficients: the preset's model no longer describes them
        return super().from_preset(preset, **overrides)

    def check_model(self, family: str, pipeline) -> None:
        fitted_on = PRESET_FAMILIES.get(self.model)
        if fitted_on is not None and fitted_on != family:
            own = [p for p, f in _preset_families() if f == family]
            advice = (f"Use a {family} preset ({', '.join(own)}) or fit one" if own
                      else f"No {family} coefficients are published; fit them")
            raise UnsupportedModelError(
                f"TeaCache preset {self.preset!r} holds coefficients fitted on {self.model} ({fitted_on}); this is a "
                f"{family} model. {advice}: diffcache calibrate teacache --model ... --out FILE.json"
            )
        if self.model == "tiny-shapes-t2v" and type(pipeline).__name__ != "TinyShapesT2VPipeline":
            warnings.warn(
                "TeaCache is using the coefficients fitted on the embedded tiny-shapes-t2v model (the default "
                "preset); for a real model pick its preset (diffcache methods) or calibrate one "
                "(diffcache calibrate teacache).", UserWarning, stacklevel=3,
            )

    def __post_init__(self) -> None:
        # canonical form, before validation: the coefficients as a tuple of floats (when they are numbers)
        try:
            self.coefficients = tuple(float(c) for c in self.coefficients)
        except (TypeError, ValueError):  # not iterable, or not numbers: validate() says so
            pass
        super().__post_init__()

    def validate(self) -> None:
        if not isinstance(self.coefficients, tuple) or not all(isinstance(c, float) for c in self.coefficients):
            raise ConfigError(f"coefficients must be a sequence of numbers, got {self.coefficients!r}")
        if not self.coefficients:
            raise ConfigError("coefficients must not be empty (a polynomial, highest power first)")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or self.threshold < 0:
            raise ConfigError(f"threshold must be a number >= 0, got {self.threshold!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 1:
            raise ConfigError(f"warmup_steps must be an integer >= 1 (the first step is always computed), "
                             f"got {self.warmup_steps!r}")


def teacache_schedule(rel_changes: list[float | None], coefficients, threshold: float, warmup_steps: int = 1,
                      compute_last_step: bool = True) -> list[bool]:
    """Which steps TeaCache computes, given each step's relative input change (``None`` at the first step).
    The rule the runtime applies, as a pure function (used by calibration to choose thresholds, and by tests)."""
    poly = np.poly1d(coefficients)
    accumulated, computed = 0.0, []
    last = len(rel_changes) - 1
    for step, rel in enumerate(rel_changes):
        if step < warmup_steps or (compute_last_step and step == last) or rel is None:
            accumulated = 0.0
            computed.append(True)
            continue
        accumulated += float(poly(rel))
        if accumulated < threshold:
            computed.append(False)
        else:
            accumulated = 0.0
            computed.append(True)
    return computed


class TeaCacheRuntime(ResidualCacheRuntime):
    HOOK = "diffcache_teacache"

    def head_forward(self, block, forward, args, kwargs):
        config, adapter, ctx = self.config, self.adapter, self.ctx
        state = self.state()
        signal = adapter.modulated_input(block, args, kwargs).detach()
        previous = state.values.get("signal")
        rel = relative_change(previous, signal) if previous is not None and previous.shape == signal.shape else None
        state.values["signal"] = signal
        streams = adapter.block_streams(block, args, kwargs)
        usable = self.cache_usable(state, streams)
        self.note_step(state)
        forced = (ctx.step < config.warmup_steps or (config.compute_last_step and ctx.step == ctx.num_steps - 1)
                  or rel is None or not usable)
        values = {}
        if forced:
            state.values["accumulated"] = 0.0
            skip = False
        else:
            accumulated = state.values.get("accumulated", 0.0) + float(np.poly1d(config.coefficients)(rel))
            skip = accumulated < config.threshold
            state.values["accumulated"] = accumulated if skip else 0.0
            values["accumulated"] = accumulated
        if rel is not None:
            values["rel_l1"] = rel
        state.skip = skip
        self.record(skip, **values)
        if skip:
            self.count_block(computed=False)
            return adapter.make_block_output(tuple(x + r.to(x.dtype) for x, r in zip(streams, state.residual)))
        state.run_input = streams
        self.count_block(computed=True)
        return forward(*args, **kwargs)

    def could_skip(self, num_steps: int) -> bool:
        return num_steps - self.config.warmup_steps - int(self.config.compute_last_step) > 0

    def nothing_skipped_hint(self) -> str:
        peak = max((s.values.get("accumulated", 0.0) for s in self.report.calls[-1].steps), default=0.0)
        return (f"Its accumulated distance peaked at {peak:.3g} against threshold {self.config.threshold:g}: raise "
                f"the threshold above that, or calibrate this model (`diffcache calibrate teacache`)")


register(
    "teacache",
    "TeaCache: skip the block stack while the polynomial-rescaled change of the modulated input stays under a threshold",
    TeaCacheConfig,
    TeaCacheRuntime
)

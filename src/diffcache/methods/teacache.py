"""TeaCache (Liu et al., 2024, arXiv:2411.19108; official code: github.com/ali-vilab/TeaCache): skip the whole
block stack while a cheap input has changed little.

Per branch (cond and uncond apart, as the official Wan code's even/odd accumulators): read the first block's
modulated input (the adapter's ``modulated_input``), ``rel = mean|x − x_prev| / mean|x_prev|``,
``accumulated += poly(rel)`` with the model's fitted polynomial; while ``accumulated < threshold`` reuse the stack
residual, otherwise compute and reset the accumulator to 0. The first ``warmup_steps`` steps (and the last one with
``compute_last_step``) are always computed and reset the accumulator. ``x_prev`` is updated every step.

Presets carry the published coefficients and thresholds (TeaCache repository: TeaCache4Wan2.1 in retention mode —
5 warm-up steps, the last step not forced —, TeaCache4CogVideoX1.5, TeaCache4LTX-Video, TeaCache4HunyuanVideo,
TeaCache4Mochi), plus ``tiny-shapes-t2v`` fitted here by ``diffcache calibrate teacache``. The default preset,
``auto``, picks the one of the model being enabled on and refuses a model with none: coefficients fitted on one
model say nothing about another. Any JSON file written by that command is
a preset too: ``diffcache.enable(pipe, "teacache", preset="my-model.json")``, and so is one written by
``diffcache tune teacache`` (a base preset and options, :meth:`MethodConfig.from_preset_file`).
"""

from __future__ import annotations

import dataclasses
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

# The published polynomials (TeaCache repository, github.com/ali-vilab/TeaCache): TeaCache4Wan2.1 in retention mode
# (``use_ret_steps``: the signal is the timestep projection e0), TeaCache4CogVideoX1.5, TeaCache4LTX-Video,
# TeaCache4HunyuanVideo, TeaCache4Mochi.
WAN_1_3B = (-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02)
WAN_14B = (-3.03318725e05, 4.90537029e04, -2.65530556e03, 5.87365115e01, -3.15583525e-01)
WAN_I2V_480P = (2.57151496e05, -3.54229917e04, 1.40286849e03, -1.35890334e01, 1.32517977e-01)
WAN_I2V_720P = (8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02)
COGVIDEOX_2B = (-3.10658903e01, 2.54732368e01, -5.92380459e00, 1.75769064e00, -3.61568434e-03)
COGVIDEOX_5B = (-1.53880483e03, 8.43202495e02, -1.34363087e02, 7.97131516e00, -5.23162339e-02)  # also 5b-I2V
COGVIDEOX15_5B = (2.50210439e02, -1.65061612e02, 3.57804877e01, -7.81551492e-01, 3.58559703e-02)
COGVIDEOX15_5B_I2V = (1.22842302e02, -1.04088754e02, 2.62981677e01, -3.06009921e-01, 3.71213220e-02)
LTX_VIDEO = (2.14700694e01, -1.28016453e01, 2.31279151e00, 7.92487521e-01, 9.69274326e-03)
HUNYUAN_VIDEO = (7.33226126e02, -4.01131952e02, 6.75869174e01, -3.14987800e00, 9.61237896e-02)
LATTE = (-2.46434137e03, 3.08044764e02, 8.07447667e01, -4.11385132e00, 1.11001402e-01)  # eval/teacache: latte.py
MOCHI = (-3.51241319e03, 8.11675948e02, -6.09400215e01, 2.42429681e00, 3.05291719e-03)
# fitted on tiny-shapes-t2v by `diffcache calibrate teacache --prompts 16` (docs/methods/teacache.md: 928 steps,
# R² 0.227);
# its thresholds (slow 0.0321, fast 0.0605) replay the rule to compute about 60 % / 45 % of the steps
TINY_SHAPES_T2V = (1.67875147e+04, -6.79285125e+03, 9.38328381e+02, -5.07642918e+01, 9.45466992e-01)


def _published(coefficients, slow, fast, **extra):
    return {f"{name}": {"coefficients": coefficients, "threshold": threshold, **extra}
            for name, threshold in (("slow", slow), ("fast", fast))}


#: the model of each preset -> its adapter family
PRESET_FAMILIES = {"wan2.1-t2v-1.3b": "Wan", "wan2.1-t2v-14b": "Wan", "wan2.1-i2v-14b-480p": "Wan",
                   "wan2.1-i2v-14b-720p": "Wan", "cogvideox-2b": "CogVideoX", "cogvideox-5b": "CogVideoX",
                   "cogvideox-5b-i2v": "CogVideoX", "cogvideox1.5-5b": "CogVideoX",
                   "cogvideox1.5-5b-i2v": "CogVideoX", "ltx-video": "LTX-Video", "hunyuanvideo": "HunyuanVideo",
                   "mochi": "Mochi", "latte": "Latte", "tiny-shapes-t2v": "Wan"}


def _preset_families():
    return [(name, PRESET_FAMILIES[config["model"]]) for name, config in TeaCacheConfig.PRESETS.items()
            if "model" in config]


def _presets() -> dict:
    # Wan 2.1 retention mode: 5 warm-up steps, the last step not forced; thresholds from the README's
    # use_ret_steps=True rows (t2v 1.3B 0.05 / 0.10, t2v 14B 0.10 / 0.20, i2v 480P and 720P 0.20 / 0.30)
    retention = {"warmup_steps": 5, "compute_last_step": False}
    table = {
        "wan2.1-t2v-1.3b": _published(WAN_1_3B, 0.05, 0.10, **retention),
        "wan2.1-t2v-14b": _published(WAN_14B, 0.10, 0.20, **retention),
        "wan2.1-i2v-14b-480p": _published(WAN_I2V_480P, 0.20, 0.30, **retention),
        "wan2.1-i2v-14b-720p": _published(WAN_I2V_720P, 0.20, 0.30, **retention),
        "cogvideox-2b": _published(COGVIDEOX_2B, 0.1, 0.2),
        "cogvideox-5b": _published(COGVIDEOX_5B, 0.1, 0.2),
        "cogvideox-5b-i2v": _published(COGVIDEOX_5B, 0.1, 0.2),
        "cogvideox1.5-5b": _published(COGVIDEOX15_5B, 0.1, 0.2),
        "cogvideox1.5-5b-i2v": _published(COGVIDEOX15_5B_I2V, 0.1, 0.2),
        "ltx-video": _published(LTX_VIDEO, 0.03, 0.05),
        "hunyuanvideo": _published(HUNYUAN_VIDEO, 0.1, 0.15),
        "mochi": _published(MOCHI, 0.06, 0.09),
        "latte": _published(LATTE, 0.1, 0.2),
        "tiny-shapes-t2v": _published(TINY_SHAPES_T2V, 0.0321, 0.0605),
    }
    presets = {"auto": {}}
    for model, speeds in table.items():
        presets[model] = {**speeds["fast"], "model": model}
        presets[f"{model}-slow"] = {**speeds["slow"], "model": model}
    return presets


def _checkpoint_name(model, pipeline) -> str:
    """The name or path the pipeline (or the model) was loaded from, lower-case ('' when built in memory)."""
    for owner in (pipeline, model):
        name = getattr(getattr(owner, "config", None), "_name_or_path", None) or getattr(owner, "name_or_path", None)
        if name:
            return str(name).lower()
    return ""


def _embedded_config() -> dict:
    from ..loading import embedded_model_path

    path = embedded_model_path("tiny-shapes-t2v") / "transformer" / "config.json"
    return _plain(json.loads(path.read_text()))


def _plain(config) -> dict:
    """A model config as JSON would hold it (lists, no private keys), for comparing configs."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dict(config).items() if not k.startswith("_")}


def recognise_model(family: str, model, pipeline) -> tuple[str | None, str]:
    """The published TeaCache model ``model`` is (a key of :data:`PRESET_FAMILIES`), or ``None`` with the reason:
    from the checkpoint name where it names the model, else from the architecture in the model's config."""
    config = getattr(model, "config", {})
    get = (lambda key: config.get(key)) if isinstance(config, dict) else (lambda key: getattr(config, key, None))
    name = _checkpoint_name(model, pipeline)
    width = (get("num_attention_heads") or 0) * (get("attention_head_dim") or 0)
    layers = get("num_layers")
    pipeline_class = type(pipeline).__name__ if pipeline is not None else None
    if family == "Wan":
        if pipeline_class == "TinyShapesT2VPipeline" or (
                pipeline is None and _plain(config) == _embedded_config()):
            return "tiny-shapes-t2v", ""
        if "wan2.2" in name or getattr(pipeline, "transformer_2", None) is not None or getattr(
                getattr(pipeline, "config", None), "expand_timesteps", False):
            return None, "Wan 2.2 has no published TeaCache coefficients"
        for key, preset in (("i2v-14b-480p", "wan2.1-i2v-14b-480p"), ("i2v-14b-720p", "wan2.1-i2v-14b-720p"),
                            ("t2v-1.3b", "wan2.1-t2v-1.3b"), ("t2v-14b", "wan2.1-t2v-14b")):
            if key in name:
                return preset, ""
        if get("image_dim") is None and get("in_channels") == 16 and (width, layers) == (1536, 30):
            return "wan2.1-t2v-1.3b", ""
        if get("image_dim") is None and get("in_channels") == 16 and (width, layers) == (5120, 40):
            return "wan2.1-t2v-14b", ""
        if get("image_dim") is not None and (width, layers) == (5120, 40):
            return None, ("Wan 2.1 I2V-14B has coefficients per resolution and its checkpoint name does not say "
                          "which: choose preset wan2.1-i2v-14b-480p or wan2.1-i2v-14b-720p")
        return None, f"this Wan model ({layers} blocks, width {width}) is none of Wan 2.1 T2V-1.3B, T2V-14B, I2V-14B"
    if family == "CogVideoX":
        for key in ("cogvideox1.5-5b-i2v", "cogvideox1.5-5b", "cogvideox-5b-i2v", "cogvideox-5b", "cogvideox-2b"):
            if key in name:
                return key, ""
        i2v = "-i2v" if get("in_channels") == 32 else ""
        if (layers, get("num_attention_heads")) == (30, 30):
            return "cogvideox-2b", ""
        if (layers, get("num_attention_heads")) == (42, 48):
            return ("cogvideox1.5-5b" if get("patch_size_t") else "cogvideox-5b") + i2v, ""
        return None, f"this CogVideoX model ({layers} blocks) is none of CogVideoX-2b, -5b, 1.5-5B"
    if family == "LTX-Video":
        if (width, layers) == (2048, 28):
            return "ltx-video", ""
        return None, (f"TeaCache4LTX-Video's coefficients are for LTX-Video 2B (28 blocks, width 2048); this one has "
                      f"{layers} blocks of width {width}")
    if family == "HunyuanVideo":
        if (layers, get("num_single_layers"), get("in_channels")) == (20, 40, 16):
            return "hunyuanvideo", ""
        return None, "TeaCache4HunyuanVideo's coefficients are for HunyuanVideo T2V (13B)"
    if family == "Latte":
        if (width, layers) == (1152, 28):
            return "latte", ""
        return None, "the TeaCache repository's Latte coefficients are for Latte-1 (28 blocks, width 1152)"
    if family == "Mochi":
        if layers == 48:
            return "mochi", ""
        return None, "TeaCache4Mochi's coefficients are for Mochi 1 (48 blocks)"
    return None, f"the official TeaCache repository publishes no coefficients for {family} models"


@dataclass
class TeaCacheConfig(MethodConfig):
    """TeaCache (Liu et al., 2024, arXiv:2411.19108; official code: github.com/ali-vilab/TeaCache).

    Args:
        preset (str): the name of the preset the config was made from (``""`` for a hand-made config), or the
            path of the JSON preset file it was read from.
        coefficients (tuple[float, ...] | None): the polynomial that rescales the relative L1 change of the
            modulated input into an estimate of the output's change, in ``numpy.poly1d`` order (highest power
            first); any sequence of numbers is accepted and stored as a tuple of floats. ``None`` (the ``auto``
            preset, the default): the published coefficients of the model being enabled on, recognised from its
            checkpoint name or architecture (:func:`recognise_model`); a model with none is refused, with how to
            calibrate it.
        threshold (float | None): the accumulated rescaled change (unitless, >= 0) below which the block stack's
            residual is reused; at or above it the step is computed and the sum reset to 0. Higher reuses more.
            ``None``: the recognised model's (fast) threshold; own coefficients need a threshold.
        warmup_steps (int | None): the first steps that are always computed, resetting the sum (integer >= 1: the
            first step has no previous input). ``None``: the recognised model's (1 with own coefficients).
        compute_last_step (bool | None): also always compute the last step (``None``: as the recognised model's
            preset; true with own coefficients).
        model (str): the model the coefficients were fitted on (a preset's model name, e.g.
            ``"wan2.1-t2v-1.3b"``); enabling a preset fitted on another model family is refused. ``""``: unknown
            (own coefficients; nothing is checked). Overriding ``coefficients`` in ``from_preset`` clears it.
        forecast (str): what a reused step adds: ``"none"`` (the default, as the official code) the stack residual
            of the last computed step as it is; ``"linear"`` that residual extrapolated to first order from the
            branch's last two computed steps (docs/methods/forecasting.md; one more residual per branch is kept).

    Presets:
        Each model has two presets that set ``coefficients`` to its fitted polynomial, ``model`` to its name and
        ``threshold``: ``MODEL`` (the faster threshold) and ``MODEL-slow``. The published ones are from the official
        repository (TeaCache4Wan2.1, TeaCache4CogVideoX1.5, TeaCache4LTX-Video, TeaCache4HunyuanVideo):

        - ``wan2.1-t2v-1.3b`` (threshold 0.10) / ``-slow`` (0.05) and ``wan2.1-t2v-14b`` (0.20) / ``-slow``
          (0.10): Wan 2.1 in retention mode (the README's ``use_ret_steps`` thresholds), also ``warmup_steps=5``,
          ``compute_last_step=False``.
        - ``cogvideox-2b``, ``cogvideox-5b``, ``cogvideox1.5-5b`` (0.2) / ``-slow`` (0.1).
        - ``ltx-video`` (0.05) / ``-slow`` (0.03).
        - ``auto`` (the default): the preset of the model being enabled on, recognised from its checkpoint name or
          its architecture; a model without published coefficients is refused (calibrate it:
          ``diffcache calibrate teacache``).
        - ``wan2.1-i2v-14b-480p`` and ``wan2.1-i2v-14b-720p`` (0.3) / ``-slow`` (0.2): retention mode too.
        - ``cogvideox-5b-i2v`` (the 5b polynomial) and ``cogvideox1.5-5b-i2v`` (0.2) / ``-slow`` (0.1).
        - ``hunyuanvideo`` (0.15) / ``-slow`` (0.1); ``mochi`` (0.09) / ``-slow`` (0.06); ``latte`` (0.2) /
          ``-slow`` (0.1), from the repository's evaluation code (``eval/teacache/experiments/latte.py``).
        - ``tiny-shapes-t2v`` (0.0605) / ``-slow`` (0.0321): fitted here; the thresholds make the rule compute about
          45 % / 60 % of the steps.

        Any JSON file written by ``diffcache calibrate teacache`` is a preset too (``preset="my-model.json"``).
        Every field a preset does not name keeps its default.
    """

    PRESETS: ClassVar = _presets()
    DEFAULT_PRESET: ClassVar = "auto"
    REQUIRES: ClassVar = (BlockStack, ModulatedInput)
    LEVELS: ClassVar = frozenset({"step"})
    DECISION_READS: ClassVar = "input"  #: the first block's modulated input, before any attention

    coefficients: tuple[float, ...] | None = None
    threshold: float | None = None
    warmup_steps: int | None = None
    compute_last_step: bool | None = None
    model: str = ""
    forecast: str = "none"

    @classmethod
    def from_preset(cls, preset: str | None = None, **overrides):
        if preset is not None and preset not in cls.PRESETS and preset.endswith(".json"):
            path = Path(preset).expanduser()
            if not path.is_file():
                raise UnknownMethodError(f"TeaCache preset file {path} does not exist; write one with "
                                         "`diffcache calibrate teacache --out FILE`.")
            try:  # (methods read no files module: tests/test_layout.py)
                data = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise ConfigError(f"TeaCache preset file {path} is not valid JSON: {error}") from None
            if not isinstance(data, dict) or data.get("method", "teacache") != "teacache":
                raise ConfigError(f"{path} is not a TeaCache preset (write one with `diffcache calibrate teacache`)")
            if "options" in data:  # a preset file of `diffcache tune`: a base preset and options
                return cls.from_preset_file(str(path), **overrides)
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

    def for_model(self, family: str, model, pipeline) -> "TeaCacheConfig":
        """With ``coefficients=None`` (preset ``auto``): the recognised model's preset, with this config's other
        given fields kept; with own coefficients: the rule's defaults for the fields left ``None``."""
        if self.coefficients is not None:
            return self._with_rule_defaults()
        name, reason = recognise_model(family, model, pipeline)
        if name is None:
            published = ", ".join(sorted({p for p, f in _preset_families()
                                          if f == family and not p.endswith("-slow") and p != "tiny-shapes-t2v"}))
            raise UnsupportedModelError(
                f"TeaCache needs coefficients fitted on the model, and {reason}. Fit them on this {family} model: "
                "`diffcache calibrate teacache --model PATH --out my-model.json`, then "
                "diffcache.enable(pipe, 'teacache', preset='my-model.json')"
                + (f"; or, if this is one of them, name a published preset: {published}" if published else "") + ".")
        preset = dict(self.PRESETS[name])
        given = {f.name: getattr(self, f.name) for f in fields(self)
                 if f.name in ("threshold", "warmup_steps", "compute_last_step") and getattr(self, f.name) is not None}
        chosen = dataclasses.replace(self, **{**preset, **given, "preset": name if self.preset == "auto" else self.preset})
        return chosen._with_rule_defaults()

    def _with_rule_defaults(self) -> "TeaCacheConfig":
        """This config with the rule's defaults for warm-up and last step where they are left ``None``."""
        return dataclasses.replace(self, warmup_steps=1 if self.warmup_steps is None else self.warmup_steps,
                                   compute_last_step=True if self.compute_last_step is None else self.compute_last_step)

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
        if self.model == "tiny-shapes-t2v" and pipeline is not None and type(pipeline).__name__ != "TinyShapesT2VPipeline":
            warnings.warn(
                "TeaCache is using the coefficients fitted on the embedded tiny-shapes-t2v model (preset "
                "tiny-shapes-t2v); for a real model pick its preset (diffcache methods) or calibrate one "
                "(diffcache calibrate teacache).", UserWarning, stacklevel=3,
            )

    def __post_init__(self) -> None:
        # canonical form, before validation: the coefficients as a tuple of floats (when they are numbers)
        try:
            if self.coefficients is not None:
                self.coefficients = tuple(float(c) for c in self.coefficients)
        except (TypeError, ValueError):  # not iterable, or not numbers: validate() says so
            pass
        super().__post_init__()

    def validate(self) -> None:
        ResidualCacheRuntime.check_forecast(self.forecast)
        if self.coefficients is not None:
            if not isinstance(self.coefficients, tuple) or not all(isinstance(c, float) for c in self.coefficients):
                raise ConfigError(f"coefficients must be a sequence of numbers, got {self.coefficients!r}")
            if not self.coefficients:
                raise ConfigError("coefficients must not be empty (a polynomial, highest power first)")
            if self.threshold is None:
                raise ConfigError("own TeaCache coefficients need a threshold (the accumulated rescaled change, >= 0, "
                                  "below which a step is reused)")
        if self.threshold is not None and (isinstance(self.threshold, bool) or not isinstance(
                self.threshold, (int, float)) or self.threshold < 0):
            raise ConfigError(f"threshold must be a number >= 0, got {self.threshold!r}")
        if self.warmup_steps is not None and (not isinstance(self.warmup_steps, int) or self.warmup_steps < 1):
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
        rel = relative_change(previous, signal, group=self.cp_group) if previous is not None and previous.shape == signal.shape else None
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
            return adapter.make_block_output(tuple(x + r.to(x.dtype) for x, r in zip(streams, self.reused_residual(state, streams[0]))))
        output = forward(*args, **kwargs)
        self.count_block(computed=True)
        self.begin_run(state, streams, output)
        return output

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

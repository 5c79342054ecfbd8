"""``diffcache tune``: search a method's knobs on calibration prompts for the fastest setting that keeps a quality
target, or the most accurate one that reaches a speed target, and save it as a preset file.

* **Objective.** Speed is the *FLOP speedup* (the denoiser FLOPs of the uncached runs over the method's,
  :func:`diffcache.bench.measure.measure_cost`) and quality the mean PSNR against the uncached video of the same
  prompt and seed (:func:`diffcache.quality.protocols.psnr`; an identical video counts :data:`PSNR_CAP` dB so one
  identical item cannot make the mean infinite). Both are deterministic, unlike wall-clock time on a shared
  machine, so a rerun retraces the same search and reuses every evaluation.
* **Targets** (:class:`Target`): ``min_psnr`` (the fastest setting with mean PSNR >= the value) or ``speedup`` (the
  most accurate setting with FLOP speedup >= the value).
* **Knobs** (:data:`KNOBS`): per method, the config fields searched and their ranges. Choice knobs marked ``grid``
  (e.g. ``forecast``) are tried in every combination; for each combination the other knobs are searched one at a
  time (coordinate-wise): a monotone knob (a threshold, an interval, a budget) by bracketing from the base preset's
  value toward the target and bisecting (:func:`search_monotone`), a choice knob by trying each value. A knob
  whose config field does not exist in this version of the method (``forecast`` before it was added) is left out.
* **Calibration prompts** (:func:`calibration_items`) differ from the benchmark's defaults: the embedded grammar
  offset by half a spread step, seeds from :data:`CALIBRATION_SEED`. They are recorded in the preset file, and
  ``diffcache bench`` warns when its items overlap a tuned preset's.
* **Resume.** Every evaluation (and the uncached references: their FLOPs in ``evaluations.jsonl``, their videos in
  ``references/``) is appended to ``OUT/evaluations.jsonl`` and reused by a rerun with the same configuration
  (``OUT/config.json``: model, method, prompts, seeds, steps, guidance, CFG mode); another configuration in the same
  folder is refused without ``force``.
* **Compositions** (``"teacache+cfg-cache"``): every part's knobs are searched coordinate-wise, the parts enabled
  together with ``diffcache.enable(pipe, [config_a, config_b])``; the preset file then holds ``configs``, each
  part's options with the ``preset`` they start from (what ``diffcache.enable(pipe, "teacache+cfg-cache",
  preset=FILE)`` reads, where compositions exist; :func:`load_preset` builds the list of configs).

The preset file (:func:`preset_document`) loads with ``diffcache.enable(pipe, NAME, preset="FILE.json")``,
``diffcache generate --method NAME:FILE.json`` and ``diffcache bench --methods NAME:FILE.json``
(:meth:`diffcache.methods.framework.MethodConfig.from_preset`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass
from dataclasses import field as _field
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError, TuneError

#: the first seed of the calibration items (the benchmark's seeds start at 0)
CALIBRATION_SEED = 1000
#: the PSNR an identical video counts for in a mean (``inf`` would make any mean infinite)
PSNR_CAP = 100.0
#: the files of the output folder
CONFIG, EVALUATIONS, REFERENCES = "config.json", "evaluations.jsonl", "references"
#: a search stops after this many distinct settings (reused ones included, so a rerun stops at the same place)
DEFAULT_MAX_EVALUATIONS = 24
#: bisection steps after a bracket is found
DEFAULT_REFINE = 3


# -- targets --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """What the search aims at: ``kind`` ``"min_psnr"`` (the fastest setting whose mean PSNR against the uncached
    run is at least ``value`` dB) or ``"speedup"`` (the most accurate setting whose FLOP speedup is at least
    ``value``)."""

    kind: str
    value: float

    @classmethod
    def of(cls, min_psnr: float | None = None, speedup: float | None = None) -> "Target":
        """The target from the command's options; exactly one must be given, a finite PSNR > 0 dB or a speedup > 1."""
        if (min_psnr is None) == (speedup is None):
            raise TuneError("give exactly one target: --min-psnr DB (the fastest setting at least this accurate) or "
                            "--speedup X (the most accurate setting at least this fast)")
        if min_psnr is not None:
            if isinstance(min_psnr, bool) or not isinstance(min_psnr, (int, float)) or not math.isfinite(min_psnr) \
                    or min_psnr <= 0:
                raise TuneError(f"--min-psnr must be a finite number of dB above 0 (e.g. 35), got {min_psnr!r}")
            return cls("min_psnr", float(min_psnr))
        if isinstance(speedup, bool) or not isinstance(speedup, (int, float)) or not math.isfinite(speedup) \
                or speedup <= 1:
            raise TuneError(f"--speedup must be a finite FLOP speedup above 1 (e.g. 2), got {speedup!r}")
        return cls("speedup", float(speedup))

    def met(self, evaluation: dict) -> bool:
        """Whether an evaluation (a record with ``psnr`` and ``flop_speedup``; ``error`` when it could not run)
        meets the target."""
        if evaluation.get("error"):
            return False
        if self.kind == "min_psnr":
            return evaluation["psnr"] >= self.value
        return evaluation["flop_speedup"] >= self.value

    def score(self, evaluation: dict) -> tuple:
        """Larger is better: settings meeting the target first, then the objective (speed for ``min_psnr``,
        accuracy for ``speedup``), the other measure breaking ties; below the target, the closest first."""
        if evaluation.get("error"):
            return (-1,)
        speed, accuracy = evaluation["flop_speedup"], evaluation["psnr"]
        if self.met(evaluation):
            return (1, speed, accuracy) if self.kind == "min_psnr" else (1, accuracy, speed)
        return (0, accuracy, speed) if self.kind == "min_psnr" else (0, speed, accuracy)

    def describe(self) -> str:
        """The target in words (the command's first line)."""
        return (f"mean PSNR >= {self.value:g} dB, as fast as possible" if self.kind == "min_psnr"
                else f"FLOP speedup >= {self.value:g}x, as accurate as possible")

    def slug(self) -> str:
        """For file names: ``psnr35``, ``speedup2``."""
        return f"{'psnr' if self.kind == 'min_psnr' else 'speedup'}{self.value:g}"

    def to_dict(self) -> dict:
        """``{"min_psnr": 35.0}`` or ``{"speedup": 2.0}``: the preset file's ``target``."""
        return {self.kind: self.value}


# -- knobs ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Knob:
    """One searched setting of a method.

    ``kind``: ``"log"`` (a positive number searched on a log scale), ``"int"`` (an integer) or ``"choice"`` (one of
    ``values``). ``low`` / ``high``: the range of a numeric knob (``relative``: as multiples of the base preset's
    value on this model). ``faster``: +1 when a larger value reuses more, -1 when a smaller one does. ``grid``: a
    choice knob tried in every combination with the other grid knobs (each combination gets its own search).
    ``field``: the config field it sets (default ``name``); a knob with a ``derive`` function sets the fields it
    returns instead (``derive(value, base_config, steps) -> {field: value}``). ``needs``: the config fields that
    must exist for the knob to apply (default: its field); ``applies(adapter, model)``: whether the model has what
    the knob acts on (PAB's temporal attention)."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    values: tuple = ()
    faster: int = 1
    relative: bool = False
    grid: bool = False
    field: str | None = None
    derive: Callable[[Any, Any, int], dict] | None = _field(default=None, compare=False, repr=False)
    needs: tuple[str, ...] | None = None
    applies: Callable[[Any, Any], bool] | None = _field(default=None, compare=False, repr=False)
    doc: str = ""

    @property
    def target_field(self) -> str:
        """The config field the knob sets (``field``, else its name)."""
        return self.field or self.name

    def required_fields(self) -> tuple[str, ...]:
        """The config fields that must exist for the knob to be searched."""
        return self.needs if self.needs is not None else (self.target_field,)

    def options(self, value, base_config, steps: int) -> dict:
        """The config fields this knob sets at ``value``."""
        if self.derive is not None:
            return self.derive(value, base_config, steps)
        return {self.target_field: value}


def _scaled_codebook(scale, base_config, steps: int) -> dict:
    """AdaCache: the codebook of ``base_config`` (its own, or the published one of its speed at ``steps`` steps)
    with every threshold multiplied by ``scale``: larger thresholds give a step's distance a larger rate."""
    from .methods.adacache import codebook_for

    codebook = base_config.codebook or codebook_for(base_config.speed, steps)
    return {"codebook": [[_round(threshold * scale), rate] for threshold, rate in codebook]}


def _has_role(role: str) -> Callable[[Any, Any], bool]:
    def applies(adapter, model) -> bool:
        blocks = adapter.blocks(model)
        return bool(blocks) and any(r.split(".")[0] == role for r in adapter.attention_modules(blocks[0]))
    return applies


FORECAST = Knob("forecast", "choice", values=("none", "linear"), grid=True,
                doc="extrapolate the reused residual from the last two computed ones, or reuse it as it is")

#: method name → its searched knobs, in search order
KNOBS: dict[str, tuple[Knob, ...]] = {
    "teacache": (FORECAST, Knob("threshold", "log", 1 / 8, 8.0, relative=True,
                                doc="the accumulated rescaled change below which a step is reused; the range is "
                                "1/8x to 8x the base preset's threshold for this model (its fitted coefficients)")),
    "fbcache": (FORECAST, Knob("threshold", "log", 0.01, 1.0, doc="the first block's relative residual change "
                               "below which the other blocks are reused")),
    "easycache": (FORECAST, Knob("threshold", "log", 0.005, 1.0, doc="the accumulated estimated output change "
                                 "below which a step is reused")),
    "adacache": (Knob("speed", "choice", values=("fast", "slow"), grid=True, doc="the published codebook scaled"),
                 Knob("codebook_scale", "log", 0.25, 4.0, derive=_scaled_codebook, needs=("codebook", "speed"),
                      doc="the codebook's thresholds multiplied by this factor (its rates kept)")),
    "pab": (Knob("self_range", "int", 1, 6, applies=_has_role("self"), doc="self-attention computed every N-th call"),
            Knob("self_range", "int", 1, 6, applies=_has_role("spatial"), doc="spatial attention, every N-th call"),
            Knob("temporal_range", "int", 1, 8, applies=_has_role("temporal"), doc="temporal attention"),
            Knob("cross_range", "int", 1, 12, applies=_has_role("cross"), doc="cross-attention, every N-th call")),
    "fastercache": (Knob("schedule", "choice", values=("official-opensora", "official-latte", "official-opensoraplan",
                                                       "official-cogvideox", "paper"), grid=True,
                         doc="the official per-model tables (attention reuse, CFG-Cache steps, weights) and the "
                         "paper's"),
                    Knob("enhance", "choice", values=("both", "low", "high", "none"),
                         doc="which frequency deltas the schedule's weights scale")),
    "cfg-cache": (Knob("schedule", "choice", values=("official-opensora", "official-latte", "official-opensoraplan",
                                                     "official-cogvideox", "paper"), grid=True,
                       doc="the table of the steps whose uncond is rebuilt, and the weights"),
                  Knob("enhance", "choice", values=("both", "low", "high", "none"),
                       doc="which frequency deltas the schedule's weights scale")),
    "hsa": (Knob("runtime", "log", 0.2, 1.0, faster=-1, doc="the token-step budget as a fraction of the uncached "
                 "run's compute"),),
    "deepcache": (Knob("interval", "int", 1, 10, doc="one full U-Net step in N"),),
}


def knobs_for(name: str, config_class, adapter=None, model=None) -> list[Knob]:
    """The knobs of method ``name`` that apply here: their fields exist in ``config_class`` (a field another version
    adds, such as ``forecast``, is searched only once it exists) and, given the model, it has what they act on.
    A knob named twice (PAB's self range, for joint or spatial attention) is kept once."""
    fields = {f.name for f in dataclasses.fields(config_class)}
    chosen: dict[str, Knob] = {}
    for knob in KNOBS.get(name, ()):
        if not set(knob.required_fields()) <= fields or knob.name in chosen:
            continue
        if knob.applies is not None and adapter is not None and not knob.applies(adapter, model):
            continue
        chosen[knob.name] = knob
    return list(chosen.values())


def _round(value: float, digits: int = 3) -> float:
    """``value`` to ``digits`` significant digits: short options, stable keys."""
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{digits}g}")


# -- the search -----------------------------------------------------------------------------------------------------
@dataclass
class Part:
    """One method of what is tuned (one for a plain method, several for a composition): its name, base preset,
    config class, knobs and the values its knobs start from."""

    name: str
    preset: str
    config_class: type
    knobs: list[Knob]
    start: dict  #: knob name → starting value
    base_config: Any  #: the base preset's config (resolved for the model where the method resolves one)

    def options(self, values: dict, steps: int) -> dict:
        """The config overrides for knob ``values``."""
        options = {}
        for knob in self.knobs:
            if knob.name in values:
                options.update(knob.options(values[knob.name], self.base_config, steps))
        return options


class BudgetSpent(Exception):
    """The search reached its evaluation budget."""


class Search:
    """Coordinate-wise search over the parts' knobs (see the module docs). ``evaluate(point)`` returns an evaluation
    record for ``point`` (``{part: {knob: value}}``); distinct points are evaluated once and counted against
    ``max_evaluations``."""

    def __init__(self, parts: list[Part], target: Target, evaluate: Callable[[dict], dict],
                 max_evaluations: int = DEFAULT_MAX_EVALUATIONS, refine: int = DEFAULT_REFINE):
        self.parts, self.target, self._evaluate = parts, target, evaluate
        self.max_evaluations, self.refine = max_evaluations, refine
        self.seen: dict[str, dict] = {}  #: point key → evaluation
        self.order: list[str] = []

    @staticmethod
    def key(point: dict) -> str:
        """A point's identity: its canonical JSON."""
        return json.dumps(point, sort_keys=True)

    def evaluate(self, point: dict) -> dict:
        """The evaluation of ``point``, made once; :class:`BudgetSpent` when a new one would pass the budget."""
        key = self.key(point)
        if key not in self.seen:
            if len(self.seen) >= self.max_evaluations:
                raise BudgetSpent
            self.seen[key] = self._evaluate(point)
            self.order.append(key)
        return self.seen[key]

    def run(self) -> list[dict]:
        """Search; returns every evaluation made, in order."""
        grid = [(part.name, knob) for part in self.parts for knob in part.knobs if knob.grid]
        start = {part.name: dict(part.start) for part in self.parts}
        combos = [start]
        for part_name, knob in grid:
            combos = [{**c, part_name: {**c[part_name], knob.name: value}} for c in combos for value in knob.values]
        try:
            self.evaluate(start)
            for combo in combos:
                self._coordinate(combo)
        except BudgetSpent:
            pass
        return [self.seen[k] for k in self.order]

    def _coordinate(self, point: dict) -> None:
        free = [(part.name, knob) for part in self.parts for knob in part.knobs if not knob.grid]
        passes = 2 if len(free) > 1 else 1
        for _ in range(passes):
            before = self.key(point)
            for part_name, knob in free:
                point = self._along(point, part_name, knob)
            if self.key(point) == before:
                break

    def _best(self, points: list[dict]) -> dict:
        return max(points, key=lambda p: self.target.score(self.evaluate(p)))

    def _along(self, point: dict, part_name: str, knob: Knob) -> dict:
        """The best point found varying one knob from ``point`` (the others fixed)."""
        def at(value):
            return {**point, part_name: {**point[part_name], knob.name: value}}

        if knob.kind == "choice":
            return self._best([at(v) for v in knob.values])
        part = next(p for p in self.parts if p.name == part_name)
        low, high = knob.low, knob.high
        if knob.relative:
            low, high = part.start[knob.name] * low, part.start[knob.name] * high
        tried = search_monotone(lambda value: self.target.met(self.evaluate(at(value))), point[part_name][knob.name],
                                low, high, knob.kind, knob.faster, +1 if self.target.kind == "min_psnr" else -1,
                                self.refine)
        return self._best([at(v) for v in tried] + [point])


def search_monotone(feasible: Callable[[Any], bool], start, low, high, kind: str, faster: int, toward: int,
                    refine: int = DEFAULT_REFINE) -> list:
    """Bracket and bisect one monotone knob: the values tried, in order.

    ``kind`` ``"log"`` (positive numbers, steps ×2 then halved in log space) or ``"int"`` (steps of 1, 2, 4 … then
    integer bisection); ``faster`` +1 when larger values reuse more; ``toward`` +1 to push toward faster settings
    while ``feasible`` holds (a quality target), -1 toward more accurate ones (a speed target). From ``start`` the
    search moves in that direction while feasible (else back until feasible), doubling its step, to the range's end
    at most; then ``refine`` bisections between the last feasible and the first infeasible value."""
    sign = faster * toward  # +1: the objective grows with the value

    def to_u(value):
        return math.log(value) if kind == "log" else float(value)

    def to_value(u):
        return _round(math.exp(u)) if kind == "log" else int(round(u))

    u_low, u_high = sorted((to_u(low), to_u(high)))
    tried, cache = [], {}

    def check(u):
        value = to_value(u)
        if value not in cache:
            cache[value] = feasible(value)
            tried.append(value)
        return cache[value]

    u = min(max(to_u(start), u_low), u_high)
    ok = check(u)
    good, bad = (u, None) if ok else (None, u)
    direction = sign if ok else -sign  # push toward the objective while feasible, else back until feasible
    end = u_high if direction > 0 else u_low
    step = math.log(2) if kind == "log" else 1.0
    while u != end:
        u = min(u + step, end) if direction > 0 else max(u - step, end)
        ok = check(u)
        if ok:
            good = u
        else:
            bad = u
        if ok != (direction == sign):  # crossed from one side to the other: bracketed
            break
        step *= 2
    if good is None or bad is None:
        return tried
    for _ in range(refine if kind == "log" else 64):
        middle = (good + bad) / 2
        if to_value(middle) in (to_value(good), to_value(bad)):
            break
        if check(middle):
            good = middle
        else:
            bad = middle
    return tried


def frontier(evaluations: list[dict]) -> list[dict]:
    """The evaluations no other one beats in both FLOP speedup and PSNR (failed ones left out), fastest first; of
    equal points the first is kept."""
    points = [e for e in evaluations if not e.get("error")]
    kept = []
    for e in points:
        dominated = any((o["flop_speedup"] >= e["flop_speedup"] and o["psnr"] >= e["psnr"]
                         and (o["flop_speedup"] > e["flop_speedup"] or o["psnr"] > e["psnr"])) for o in points)
        duplicate = any(o["flop_speedup"] == e["flop_speedup"] and o["psnr"] == e["psnr"] for o in kept)
        if not dominated and not duplicate:
            kept.append(e)
    return sorted(kept, key=lambda e: (-e["flop_speedup"], -e["psnr"]))


def choose(evaluations: list[dict], target: Target) -> dict | None:
    """The evaluation the target picks (:meth:`Target.score`), or ``None`` when none meets it. It is always on
    :func:`frontier`: a point beating it in both measures would meet the target too and score higher."""
    feasible = [e for e in evaluations if target.met(e)]
    return max(feasible, key=target.score) if feasible else None


# -- calibration items ----------------------------------------------------------------------------------------------
def calibration_items(model: str, pipe, count: int, prompts: list[str] | None = None) -> list[tuple[str, int]]:
    """The ``(prompt, seed)`` pairs to tune on: ``prompts`` when given, else for an embedded model ``count`` prompts
    of its grammar offset by half a step from the benchmark's spread (``grammar[(2i+1)·len / (2·count)]``), each
    with seed ``CALIBRATION_SEED + i`` (the benchmark's seeds start at 0)."""
    from .loading import EMBEDDED_MODELS

    if prompts:
        chosen = list(prompts)
    elif model in EMBEDDED_MODELS:
        from .embedded.shapes import prompts as grammar_prompts

        kind = "video" if type(pipe).__name__ == "TinyShapesT2VPipeline" else "image"
        grammar = grammar_prompts(kind=kind)
        chosen = [grammar[((2 * i + 1) * len(grammar)) // (2 * count) % len(grammar)] for i in range(count)]
    else:
        raise TuneError(f"{model!r} is not an embedded model: give the calibration prompts with --prompt (repeat it).")
    return [(prompt, CALIBRATION_SEED + i) for i, prompt in enumerate(chosen)]


def overlapping_items(document: dict, items: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The ``(prompt, seed)`` pairs of ``items`` a tuned preset file (its ``tuned_on``) was tuned on."""
    tuned = document.get("tuned_on") if isinstance(document, dict) else None
    if not isinstance(tuned, dict):
        return []
    pairs = set(zip(tuned.get("prompts", []), tuned.get("seeds", [])))
    return [item for item in items if tuple(item) in pairs]


# -- parsing what is tuned ------------------------------------------------------------------------------------------
def parse_method(text: str) -> list[tuple[str, str | None]]:
    """``"NAME[:PRESET]"`` or a composition ``"A[:PRESET]+B[:PRESET]"`` → ``[(name, preset or None), ...]``,
    checked against the registry."""
    from .methods.framework import method_info

    parts = []
    for piece in text.split("+"):
        name, _, preset = piece.strip().partition(":")
        if not name:
            raise TuneError(f"cannot read method {text!r}; write NAME, NAME:PRESET or A+B (a composition)")
        info = method_info(name)
        if preset and preset not in info.presets and not preset.endswith(".json"):
            raise TuneError(f"unknown preset {preset!r} of {name}; presets: {', '.join(info.presets)}.")
        parts.append((name, preset or None))
    names = [n for n, _ in parts]
    if len(set(names)) != len(names):
        raise TuneError(f"{text!r} names a method twice; a composition combines different methods")
    return parts


def method_label(parts: list[tuple[str, str]]) -> str:
    """The method as the preset file names it: ``"fbcache"``, ``"teacache+cfg-cache"``."""
    return "+".join(name for name, _ in parts)


# -- the preset file ------------------------------------------------------------------------------------------------
def preset_document(parts: list[Part], chosen: dict, target: Target, tuned_on: dict, front: list[dict],
                    evaluations: int) -> dict:
    """The preset file's content (see docs/tune.md): ``method``, ``preset`` and ``options`` (a composition:
    ``configs``), the target, what the chosen setting measured, where it was tuned, the frontier found."""
    from . import __version__

    def base_and_options(part: Part) -> tuple[str, dict]:
        options = chosen["options"][part.name]
        if part.preset.endswith(".json"):  # a preset file as the base (TeaCache's calibration): inline its fields
            fixed = {k: v for k, v in part.base_config.to_dict().items() if k != "preset"}
            return part.config_class.DEFAULT_PRESET, json.loads(json.dumps({**fixed, **options}))
        return part.preset, options

    document: dict = {"method": "+".join(p.name for p in parts)}
    if len(parts) == 1:
        document["preset"], document["options"] = base_and_options(parts[0])
    else:
        document["configs"] = {}  # each part's options with the preset they start from, as enable() reads them
        for part in parts:
            base, options = base_and_options(part)
            document["configs"][part.name] = {"preset": base, **options}
    document.update({
        "target": target.to_dict(),
        "achieved": {"flop_speedup": chosen["flop_speedup"], "psnr": chosen["psnr"],
                     "computed_steps": chosen["computed_steps"]},
        "tuned_on": tuned_on,
        "frontier": [{"knobs": e["knobs"], "options": e["options"], "flop_speedup": e["flop_speedup"],
                      "psnr": e["psnr"], "computed_steps": e["computed_steps"]} for e in front],
        "evaluations": evaluations,
        "diffcache_version": __version__,
    })
    return document


def load_preset(path: str | Path):
    """The config a tuned preset file describes: one config object, or for a composition the list of configs
    (``diffcache.enable(pipe, load_preset(path))``)."""
    from .files import read_json
    from .methods.framework import method_info

    path = Path(path).expanduser()
    if not path.is_file():
        raise TuneError(f"preset file {path} does not exist; write one with `diffcache tune`.")
    document = read_json(path, "preset file")
    if not isinstance(document, dict) or "method" not in document:
        raise TuneError(f"{path} is not a diffcache preset file (no 'method')")
    if "configs" not in document:
        return method_info(document["method"]).config_class.from_preset(str(path))
    configs = []
    for name, entry in document["configs"].items():
        config_class = method_info(name).config_class
        options = dict(entry) if isinstance(entry, dict) else {}
        base = options.pop("preset", None)
        config_class.check_options(options)
        configs.append(config_class.from_preset(base, **options))
    return configs


# -- running it -----------------------------------------------------------------------------------------------------
@dataclass
class TuneResult:
    """What :func:`tune` found: every evaluation (this run's and reused ones), the frontier, the chosen one, the
    preset file written, and how many generations this run made (0 on a rerun that reused everything)."""

    method: str
    target: Target
    evaluations: list[dict]
    frontier: list[dict]
    chosen: dict
    preset_path: Path
    preset: dict
    generations: int
    reused: int
    lines: list[str]


def _read_lines(path: Path) -> list[dict]:
    """The references and evaluations stored in ``path``; a line that is not one (a torn last line from a killed run,
    a damaged line) is moved to ``evaluations.jsonl.corrupt`` with a warning naming its line, and computed again."""
    from .files import read_json_lines

    return read_json_lines(path, lambda record: record.get("kind") in ("reference", "evaluation"))


def _decoded(record: dict) -> dict:
    from .bench.store import number

    for key in ("psnr", "flop_speedup"):
        if key in record:
            record[key] = number(record[key])
    if "psnr_per_item" in record:
        record["psnr_per_item"] = [number(v) for v in record["psnr_per_item"]]
    return record


def prepare_folder(out: Path, config: dict, force: bool) -> None:
    """Refuse ``out`` holding another configuration's evaluations (:class:`TuneError`); with ``force`` discard them
    (the evaluations, the references and the configuration; preset files are replaced only as written)."""
    import shutil

    from .files import read_json, write_text

    path = out / CONFIG
    if force:
        (out / EVALUATIONS).unlink(missing_ok=True)
        shutil.rmtree(out / REFERENCES, ignore_errors=True)
        path.unlink(missing_ok=True)
    elif path.exists():
        stored = read_json(path, "tune configuration")
        differ = sorted(k for k in set(stored) | set(config) if stored.get(k) != config.get(k))
        if differ:
            detail = "; ".join(f"{k}: folder has {stored.get(k)!r}, this run {config.get(k)!r}" for k in differ[:3])
            raise TuneError(f"{out} holds a tuning run with another configuration ({detail}); use another --out, or "
                            "--force to discard its evaluations")
    elif (out / EVALUATIONS).exists():
        raise TuneError(f"{out} holds {EVALUATIONS} but no {CONFIG}; use another --out, or --force to discard it")
    if not path.exists():
        write_text(path, json.dumps(config, indent=1) + "\n", force=True)


def tune(method: str, target: Target, model: str = "tiny-shapes-t2v", out: str | Path = "out/tune",
         prompts: list[str] | None = None, num_prompts: int = 4, steps: int = 30, guidance: float = 5.0,
         cfg_mode: str | None = None, save: str | Path | None = None, force: bool = False, progress: bool = True,
         max_evaluations: int = DEFAULT_MAX_EVALUATIONS, refine: int = DEFAULT_REFINE, pipe=None,
         height: int | None = None, width: int | None = None, frames: int | None = None) -> TuneResult:
    """Tune ``method`` (``NAME[:PRESET]`` or a composition ``A+B``) on ``model`` for ``target``; what
    ``diffcache tune`` does. Evaluations go to ``out`` (resumable); the preset file to ``save`` (default
    ``OUT/NAME-TARGET.json``), never overwritten with other content unless ``force``. Returns a
    :class:`TuneResult`; raises :class:`TuneError` (after saving the evaluations) when no setting meets the
    target."""
    from .files import folder_lock

    with folder_lock(out):  # one writer per folder: a second tune into it is refused at once, naming the first
        return _tune(method, target, model, out, prompts, num_prompts, steps, guidance, cfg_mode, save, force,
                     progress, max_evaluations, refine, pipe, height, width, frames)


def _tune(method, target, model, out, prompts, num_prompts, steps, guidance, cfg_mode, save, force, progress,
          max_evaluations, refine, pipe, height, width, frames) -> TuneResult:
    """:func:`tune` once ``out`` is locked."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from .adapters import find_adapter
    from .api import denoiser_of, enable
    from .bench.measure import measure_cost
    from .quality.protocols import psnr
    from .bench.specs import MethodSpec
    from .bench.store import append_record
    from .bench.sweep import Sweep, report_timeline
    from .errors import CallRefusedError, NothingSkippedWarning, UnsupportedModelError
    from .files import atomic_path, check_writable, write_text
    from .loading import load_pipeline
    from .methods.framework import method_info

    if not isinstance(target, Target):
        raise TuneError(f"target must be a Target (Target.of(min_psnr=...) or Target.of(speedup=...)), got {target!r}")
    for name, value in {"prompts": num_prompts, "steps": steps, "max-evaluations": max_evaluations}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TuneError(f"--{name} must be an integer of at least 1, got {value!r}")
    if refine < 0:
        raise TuneError(f"refine must be >= 0, got {refine!r}")
    spec = parse_method(method)
    label = method_label(spec)
    out = Path(out)
    save = Path(save) if save is not None else out / f"{label}-{target.slug()}.json"
    if save.suffix.lower() != ".json":
        raise TuneError(f"--save {save.name!r}: a preset file must end in .json")
    if pipe is None:
        pipe = load_pipeline(model)
        pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    pipe.set_progress_bar_config(disable=True)
    items = calibration_items(model, pipe, num_prompts, prompts)
    if type(pipe).__name__ == "TinyShapesT2VPipeline":
        from .embedded.shapes import parse_prompt

        for prompt, _ in items:
            parse_prompt(prompt)
    denoiser = denoiser_of(pipe)[0]
    adapter = find_adapter(denoiser)

    parts = []
    for name, preset in spec:
        info = method_info(name)
        base = info.config_class.from_preset(preset)
        resolved = base.for_model(adapter.family, denoiser, pipe)
        knobs = knobs_for(name, info.config_class, adapter, denoiser)
        start = {}
        for knob in knobs:
            if knob.derive is not None:
                start[knob.name] = 1.0
                continue
            value = getattr(resolved, knob.target_field)
            if value is None:  # the base preset leaves this off (PAB without a range): not searched
                continue
            if knob.kind == "choice":
                start[knob.name] = value if value in knob.values else knob.values[0]
            elif knob.relative:
                start[knob.name] = value
            else:
                start[knob.name] = min(max(value, knob.low), knob.high)
        knobs = [knob for knob in knobs if knob.name in start]
        parts.append(Part(name, preset or info.default_preset, info.config_class, knobs, start, base))
    if not any(part.knobs for part in parts):
        raise TuneError(f"{label} has no knob tune can search on this model (tunable methods: "
                        f"{', '.join(sorted(KNOBS))})")
    composition = len(parts) > 1
    bases = [part.base_config for part in parts]
    enable(pipe, bases if composition else bases[0]).disable()  # a method this model cannot run fails now, once

    size = {"height": height, "width": width, "num_frames": frames}
    config = {"model": model, "method": "+".join(f"{p.name}:{p.preset}" for p in parts),
              "prompts": [p for p, _ in items], "seeds": [s for _, s in items], "steps": steps, "guidance": guidance,
              "cfg_mode": cfg_mode, **{k: v for k, v in size.items() if v is not None}}
    prepare_folder(out, config, force)  # first: a folder of another configuration is the clearer refusal
    if save.exists() and not force and not _same_tuning(save, label, target, config):
        check_writable(save, force=False)  # another preset there: refused before any evaluation
    sweep = Sweep(pipe, [MethodSpec("none")], steps=steps, guidance=guidance, repeats=0, cfg_mode=cfg_mode,
                  size=size)
    path = out / EVALUATIONS
    stored = [_decoded(r) for r in _read_lines(path)]
    references = {r["item"]: r for r in stored if r["kind"] == "reference"}
    known = {r["key"]: r for r in stored if r["kind"] == "evaluation"}
    counters = {"generations": 0, "reused": 0}
    videos: dict[int, np.ndarray] = {}

    bar = tqdm(total=max_evaluations, desc=f"tune {label}", unit="setting", disable=not progress, dynamic_ncols=True)

    def generate(index: int):
        prompt, seed = items[index]
        counters["generations"] += 1
        return sweep.generate(prompt, seed, steps)

    def reference(index: int):
        """The uncached video of item ``index`` and its record (generated once, then read back)."""
        file = out / REFERENCES / f"{index:04d}.npy"
        if index in videos:
            return videos[index], references[index]
        if index in references and file.exists():
            videos[index] = np.load(file)
            return videos[index], references[index]
        bar.set_postfix_str(f"uncached reference {index + 1}/{len(items)}")
        video, cost = measure_cost(denoiser, lambda: generate(index))
        with atomic_path(file, force=True) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, np.asarray(video, np.float32))
        record = {"kind": "reference", "item": index, "prompt": items[index][0], "seed": items[index][1],
                  "flops": cost.flops}
        append_record(path, record)
        references[index], videos[index] = record, np.load(file)
        return videos[index], record

    def configs_for(point: dict):
        made = []
        for part in parts:
            options = part.options(point[part.name], steps)
            made.append(part.config_class.from_preset(part.preset, **options))
        return made

    def evaluate(point: dict) -> dict:
        options = {part.name: part.options(point[part.name], steps) for part in parts}
        key = json.dumps(options, sort_keys=True)
        bar.set_postfix_str(_describe(point if composition else point[parts[0].name]))
        if key in known:
            counters["reused"] += 1
            bar.update()
            return known[key]
        record = {"kind": "evaluation", "key": key, "knobs": point if composition else point[parts[0].name],
                  "options": options if composition else options[parts[0].name]}
        flops, flops_ref, scores, computed = 0, 0, [], []
        try:
            configs = configs_for(point)
            for index in range(len(items)):
                ref_video, ref_record = reference(index)
                handle = enable(pipe, configs if composition else configs[0])
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", NothingSkippedWarning)  # a slow end of a range reuses nothing
                        video, cost = measure_cost(denoiser, lambda: generate(index), handle.state_roots)
                    timeline = report_timeline(handle.report())
                finally:
                    handle.disable()
                flops += cost.flops
                flops_ref += ref_record["flops"]
                scores.append(psnr(np.asarray(video, np.float32), ref_video))
                computed.append(timeline.get("computed_steps"))
        except (ConfigError, CallRefusedError, UnsupportedModelError) as error:  # this setting cannot run here
            record["error"] = str(error)
        else:
            record.update({"flop_speedup": flops_ref / max(flops, 1),
                           "psnr": float(np.mean([min(s, PSNR_CAP) for s in scores])), "psnr_per_item": scores,
                           "computed_steps": None if None in computed else float(np.mean(computed)),
                           "steps": steps})
        append_record(path, record)
        known[key] = record
        bar.update()
        return record

    try:
        evaluations = Search(parts, target, evaluate, max_evaluations, refine).run()
    finally:
        bar.close()
    front = frontier(evaluations)
    chosen = choose(evaluations, target)
    tuned_on = {"model": model, "prompts": [p for p, _ in items], "seeds": [s for _, s in items], "steps": steps,
                "guidance": guidance, "cfg_mode": cfg_mode, **{k: v for k, v in size.items() if v is not None}}
    table = frontier_table(front, chosen, steps)
    if chosen is None:
        closest = max(evaluations, key=target.score)
        error = TuneError(f"no setting of {label} tried reached {target.describe().split(',')[0]} on the calibration "
                          f"prompts ({len(evaluations)} settings; the closest: {_describe(closest['knobs'])}, "
                          f"{_measures(closest)}); the evaluations are in {path}")
        error.table = table
        raise error
    options = chosen["options"] if composition else {parts[0].name: chosen["options"]}
    document = preset_document(parts, {**chosen, "options": options}, target, tuned_on, front, len(evaluations))
    text = json.dumps(document, indent=1, default=str) + "\n"
    if save.exists() and not force and not _same_tuning(save, label, target, config):
        check_writable(save, force=False)  # another preset there: refused (OutputExistsError)
    unchanged = save.exists() and save.read_text(encoding="utf-8") == text
    if not unchanged:
        write_text(save, text, force=True)
    lines = [f"{label} on {model}: {len(evaluations)} settings ({counters['reused']} reused, "
             f"{counters['generations']} generations), {len(items)} calibration prompts x {steps} steps; target "
             f"{target.describe()}", table,
             f"chosen: {_describe(chosen['knobs'])}: {_measures(chosen)}",
             f"preset: {save}{' (unchanged)' if unchanged else ''}; use it: "
             + (f"diffcache.enable(pipe, diffcache.tune.load_preset('{save}'))" if composition
                else f"diffcache bench --methods {label}:{save}")]
    return TuneResult(label, target, evaluations, front, chosen, save, document, counters["generations"],
                      counters["reused"], lines)


def _same_tuning(path: Path, label: str, target: Target, config: dict) -> bool:
    """Whether the preset file at ``path`` came from this tuning (same method, target and calibration): a rerun
    may then rewrite it with what the evaluations now choose."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    tuned = document.get("tuned_on", {}) if isinstance(document, dict) else {}
    return (isinstance(document, dict) and document.get("method") == label and document.get("target") == target.to_dict()
            and all(tuned.get(k) == config.get(k) for k in ("model", "prompts", "seeds", "steps", "guidance")))


def _describe(knobs: dict) -> str:
    if knobs and all(isinstance(v, dict) for v in knobs.values()):
        return "; ".join(f"{part}: {_describe(values)}" for part, values in knobs.items())
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in knobs.items()) or "base preset"


def _measures(evaluation: dict) -> str:
    if evaluation.get("error"):
        return f"could not run: {evaluation['error']}"
    steps = evaluation.get("computed_steps")
    return (f"FLOP speedup {evaluation['flop_speedup']:.2f}x, PSNR {evaluation['psnr']:.2f} dB"
            + ("" if steps is None else f", {steps:g}/{evaluation.get('steps', '?')} steps computed"))


def frontier_table(front: list[dict], chosen: dict | None, steps: int) -> str:
    """The frontier as a text table (options, FLOP speedup, PSNR, computed steps); the chosen row marked ``*``."""
    rows = [("", "options", "FLOP speedup", "PSNR (dB)", "computed steps")]
    for e in front:
        computed = "–" if e.get("computed_steps") is None else f"{e['computed_steps']:.1f}/{steps}"
        rows.append(("*" if chosen is not None and e["key"] == chosen["key"] else "", _describe(e["knobs"]),
                     f"{e['flop_speedup']:.2f}x", f"{e['psnr']:.2f}", computed))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) if i < 2 else cell.rjust(width) for i, (cell, width) in
                       enumerate(zip(row, widths))).rstrip() for row in rows]
    return "\n".join(lines)


__all__ = ["CALIBRATION_SEED", "KNOBS", "Knob", "PSNR_CAP", "Search", "Target", "TuneResult", "calibration_items",
           "choose", "frontier", "frontier_table", "knobs_for", "load_preset", "overlapping_items", "parse_method",
           "preset_document", "search_monotone", "tune"]

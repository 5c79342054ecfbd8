"""Caches at different levels, combined: ``diffcache.enable(pipe, "teacache+cfg-cache")``.

Every method's config declares the **levels** it acts on (``MethodConfig.levels()``), outermost first:

* ``"cfg"`` — the guidance branches: CFG-Cache (``cfg-cache``, FasterCache's CFG level) rebuilds the uncond output
  from the cond one instead of running it;
* ``"step"`` — whole steps of the block stack: TeaCache, First-Block-Cache, EasyCache, AdaCache (DeepCache's deep
  U-Net features);
* ``"token"`` — tokens within a step: HSA;
* ``"attention"`` — attention outputs inside the blocks: PAB, FasterCache's attention reuse.

Methods combine when they act on different levels and their rules do not conflict (:func:`check_composition`).
Each keeps its own runtime: its own hooks under its own hook name, its own state and its own report; one step
tracker per denoiser drives them all (its ``listeners``, outermost level first). The hooks nest by level: the CFG
level is on the denoiser itself, so an uncond call it answers never reaches the blocks (the step-level method's
uncond state then sees the gap and computes the next time that branch runs), and a batched call it cuts to the
cond half reaches the inner levels as a ``"cond"`` forward; attention hooks sit inside the blocks the step-level
method runs, and do not run on a step it reuses. The handle's :meth:`~diffcache.api.Handle.report` is a
:class:`ComposedReport`: one step table over the levels, and each method's own report in ``parts``.

Refused, with the reason (:class:`~diffcache.errors.CompositionError`): two methods on one level; HSA with any
other level; an attention-level method inside a step-level one whose decision reads block residuals or the
denoiser's output (First-Block-Cache, AdaCache, EasyCache: their metric would compare reused attention outputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import CompositionError, ConfigError, UnknownMethodError
from .methods.framework import MethodConfig, info_for_config, list_methods, method_info
from .report import CallReport, Report, StepRecord

#: the levels, outermost first
LEVELS = ("cfg", "step", "token", "attention")
#: why two methods on one level cannot be combined
_SAME_LEVEL = {
    "cfg": "both decide the uncond call (run, rebuild or skip it), and only one can (fastercache includes "
           "CFG-Cache; fastercache with cfg_cache=False is its attention level alone)",
    "step": "both decide which steps the block stack computes, and one would cache the other's reused output",
    "token": "both decide which tokens each step computes",
    "attention": "both answer the same attention modules from their own caches",
}
#: why HSA (the token level) combines with no other level
_WITH_TOKENS = {
    "cfg": "CFG-Cache rebuilds uncond through a 2-D FFT of each frame, which changes the velocity of the tokens HSA "
           "holds inactive (its cached Euler update assumes their last computed velocity), and the uncond calls it "
           "answers would leave HSA's uncond K/V cache from older steps",
    "step": "HSA's token-sparse forward feeds the blocks only the active tokens, so a step-level residual of the "
            "whole sequence never fits (and HSA's cached Euler update already reuses velocities across steps)",
    "attention": "HSA's self-attention attends with its own synchronised K/V cache on the active tokens only; an "
                 "attention-level cache would hand back an output of other tokens from another step",
}


def accepted() -> str:
    """What combines, in words, from the registered methods' levels (for error messages and docs)."""
    by_level: dict[str, list[str]] = {level: [] for level in LEVELS}
    for info in list_methods():
        levels = info.config_class.from_preset(None).levels()
        for level in levels:
            by_level[level].append(info.name + ("" if len(levels) == 1 else f" ({'+'.join(sorted(levels))})"))
    listed = "; ".join(f"{level}: {', '.join(names) or 'none'}" for level, names in by_level.items())
    return (f"one method per level ({listed}); an attention-level method only inside a step-level method that "
            "decides from the blocks' input (teacache), and hsa alone; e.g. teacache+cfg-cache, "
            "fbcache+cfg-cache, teacache+pab, teacache+pab+cfg-cache")


@dataclass(frozen=True)
class CompositionInfo:
    """What a composed handle says it runs (``Handle.info``): the composition's name and each method's info."""

    name: str
    members: tuple

    @property
    def summary(self) -> str:
        return " + ".join(info.summary for info in self.members)


@dataclass(frozen=True)
class ComposedConfig:
    """Several methods' configs enabled together, one per level (:func:`compose` checks them).

    ``configs`` keeps the order given (the composition's name follows it); :meth:`ordered` is the order the
    runtimes are driven in, outermost level first. ``to_dict()`` is the preset-file layout
    ``{"method": "teacache+cfg-cache", "configs": {"teacache": {...}, "cfg-cache": {...}}}``."""

    configs: tuple

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(info_for_config(config).name for config in self.configs)

    @property
    def name(self) -> str:
        return "+".join(self.names)

    @property
    def preset(self) -> str:
        """Each part's preset, joined as the name is (``"tiny-shapes-t2v+default"``)."""
        return "+".join(config.preset or "custom" for config in self.configs)

    @property
    def label(self) -> str:
        """``teacache:tiny-shapes-t2v+cfg-cache:default``."""
        return "+".join(f"{name}:{config.preset or 'custom'}" for name, config in zip(self.names, self.configs))

    def levels(self) -> frozenset[str]:
        return frozenset().union(*(config.levels() for config in self.configs))

    def ordered(self) -> tuple:
        """The configs, outermost level first (:data:`LEVELS`)."""
        return tuple(sorted(self.configs, key=_outermost))

    def to_dict(self) -> dict:
        return {"method": self.name, "configs": {name: config.to_dict() for name, config in zip(self.names,
                                                                                                 self.configs)}}

    @classmethod
    def from_dict(cls, data: dict, what: str = "composition") -> "ComposedConfig":
        """The inverse of :meth:`to_dict`: ``{"method": "a+b", "configs": {"a": {options}, "b": {options}}}``, each
        part's options with an optional ``"preset"`` (the preset they start from)."""
        if not isinstance(data, dict) or not isinstance(data.get("configs"), dict) or not isinstance(
                data.get("method"), str):
            raise ConfigError(f"{what} must be {{\"method\": \"a+b\", \"configs\": {{\"a\": {{...}}, \"b\": {{...}}}}}}, "
                              f"got {str(data)[:200]}")
        names = [name.strip() for name in data["method"].split("+")]
        if sorted(names) != sorted(data["configs"]):
            raise ConfigError(f"{what}: method {data['method']!r} names {', '.join(names)} but configs are given for "
                              f"{', '.join(data['configs']) or 'none'}")
        return compose(*(_config_from_options(name, data["configs"][name]) for name in names))


def _config_from_options(name: str, options) -> MethodConfig:
    """A config of method ``name`` from a dict of its options (and an optional ``"preset"`` to start from)."""
    info = method_info(name)
    if not isinstance(options, dict):
        raise ConfigError(f"the options of {name} must be a dict of {info.config_class.__name__} fields, "
                          f"got {type(options).__name__}")
    options = dict(options)
    preset = options.pop("preset", None)
    for key, value in options.items():  # JSON has lists where a config keeps tuples
        if isinstance(value, list):
            options[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if preset in info.config_class.PRESETS or preset is None or str(preset).endswith(".json"):
        return info.config_class.from_preset(preset, **options)
    info.config_class.check_options(options)
    return info.config_class(**options, preset=preset)


def _outermost(config: MethodConfig) -> int:
    return min((LEVELS.index(level) for level in config.levels() if level in LEVELS), default=len(LEVELS))


def _counting_rank(config: MethodConfig) -> int:
    """Where a method's block counts stand: its outermost level other than ``"cfg"`` (the CFG level counts whole
    calls, not blocks)."""
    return min((LEVELS.index(level) for level in config.levels() - {"cfg"} if level in LEVELS), default=len(LEVELS))


def part_config(item) -> MethodConfig:
    """One part of a composition as a config: a config object, or ``"name"`` / ``"name:preset"``."""
    if isinstance(item, MethodConfig):
        info_for_config(item)  # a registered method's config
        return item
    if not isinstance(item, str) or not item.strip():
        raise ConfigError(f"a composition's parts are method names ('teacache', 'teacache:tiny-shapes-t2v') or "
                          f"config objects; got {item!r}")
    name, _, preset = item.strip().partition(":")
    return method_info(name.strip()).config_class.from_preset(preset.strip() or None)


def is_composition(method) -> bool:
    """Whether ``enable``'s ``method`` names several methods: a list or tuple, a :class:`ComposedConfig`, or a
    name with ``+``."""
    return (isinstance(method, (list, tuple, ComposedConfig))
            or (isinstance(method, str) and "+" in method))


def compose(*items) -> ComposedConfig:
    """The methods ``items`` (config objects, ``"name"``, ``"name:preset"``, or one ``"a+b"`` string) as one
    :class:`ComposedConfig`, checked (:func:`check_composition`): what ``enable(pipe, [...])`` enables."""
    parts = []
    for item in items:
        if isinstance(item, ComposedConfig):
            parts.extend(item.configs)
        elif isinstance(item, (list, tuple)):
            parts.extend(compose(*item).configs)
        elif isinstance(item, str) and "+" in item:
            parts.extend(part_config(piece) for piece in item.split("+"))
        else:
            parts.append(part_config(item))
    composed = ComposedConfig(tuple(parts))
    check_composition(composed.configs)
    return composed


def resolve(method, preset: str | None, overrides: dict) -> ComposedConfig:
    """``enable``'s arguments for a composition as a checked :class:`ComposedConfig`. ``preset`` may only be a JSON
    preset file of the composition (:meth:`ComposedConfig.from_dict`); options go to each part (config objects or
    ``"name:preset"``), not to the whole."""
    if overrides:
        raise ConfigError(f"options ({', '.join(sorted(overrides))}) cannot be given to a composition as a whole; give "
                          "each part its own: enable(pipe, [TeaCacheConfig.from_preset(..., threshold=0.1), "
                          "'cfg-cache:default'])")
    composed = compose(method)
    if preset is None:
        return composed
    if not str(preset).endswith(".json"):
        raise ConfigError(f"preset={preset!r}: a composition takes a preset per part ('teacache:tiny-shapes-t2v+"
                          "cfg-cache:default') or a JSON preset file of the composition (preset='file.json')")
    from .files import read_json

    path = Path(preset).expanduser()
    if not path.is_file():
        raise UnknownMethodError(f"composition preset file {path} does not exist")
    loaded = ComposedConfig.from_dict(read_json(path, "composition preset file"), f"composition preset file {path}")
    if sorted(loaded.names) != sorted(composed.names):
        raise ConfigError(f"composition preset file {path} is for {loaded.name}, not {composed.name}")
    return loaded


def check_composition(configs) -> None:
    """Refuse configs that cannot run together (:class:`~diffcache.errors.CompositionError`, saying which, why and
    what combines): a method given twice or declaring no levels, two methods on one level, HSA with another
    level, an attention-level method inside a step-level one whose decision reads block residuals."""
    names = [info_for_config(config).name for config in configs]
    if len(configs) < 2:
        return
    what = f"Combinable: {accepted()}."
    for name in names:
        if names.count(name) > 1:
            raise CompositionError(f"{name} is given twice in {'+'.join(names)}; a method combines only with methods "
                                   f"of other levels. {what}")
    levels = [config.levels() for config in configs]
    for name, own in zip(names, levels):
        if not own:
            raise CompositionError(f"{name} declares no levels (its config's LEVELS), so whether it combines cannot be "
                                   f"told; enable it alone. {what}")
    for i in range(len(configs)):
        for j in range(i + 1, len(configs)):
            shared = sorted(levels[i] & levels[j], key=LEVELS.index)
            if shared:
                level = shared[0]
                raise CompositionError(f"{names[i]} and {names[j]} both act on the {level} level: "
                                       f"{_SAME_LEVEL.get(level, 'one method per level')}. {what}")
    for name, own in zip(names, levels):
        if "token" not in own:
            continue
        for other, theirs in zip(names, levels):
            if other != name:
                level = min(theirs, key=lambda lv: LEVELS.index(lv) if lv in LEVELS else len(LEVELS))
                raise CompositionError(f"{name} cannot be combined with {other} ({level} level): "
                                       f"{_WITH_TOKENS.get(level, 'its token-sparse forward serves no other level')}. "
                                       f"{what}")
    for step_name, step_config, own in zip(names, configs, levels):
        if "step" not in own:
            continue
        reads = step_config.DECISION_READS
        for attention_name, theirs in zip(names, levels):
            if "attention" in theirs and reads != "input":
                read = {"blocks": "block residuals", "output": "the denoiser's output"}.get(reads)
                why = (f"its decision reads {read}, which include the attention outputs {attention_name} reuses: "
                       "its metric would compare reused attention and reuse more steps than its threshold says"
                       if read else
                       "it does not declare what its decision reads (DECISION_READS), so an attention-level method "
                       "inside its blocks may bias it")
                raise CompositionError(f"{attention_name} (attention level) cannot run inside {step_name} (step "
                                       f"level): {why}. Combine {attention_name} with teacache (it decides from "
                                       f"the first block's input), or {step_name} with cfg-cache. {what}")


# -- the report ----------------------------------------------------------------------------------------------------
@dataclass
class ComposedReport(Report):
    """The report of a composition: ``calls`` is one step table over the levels (below), ``parts`` each method's own
    :class:`~diffcache.report.Report` (outermost level first) and ``levels`` each method's levels.

    A merged step is ``computed`` when every part computed it. Its block counts are those of the part whose block
    counts stand outermost (the step level's when there is one, else the attention level's), with the work the CFG
    level answered itself (half of the step when it rebuilt uncond) added as reused blocks, so that
    ``blocks_computed / (blocks_computed + blocks_reused)`` is the share of the step's blocks that ran. Its values
    are every part's, prefixed with the method's name (``"cfg-cache.uncond"``, ``"teacache.rel_l1"``). A call's
    ``peak_cache_bytes`` is the sum of the parts' peaks (an upper bound of what they held at once)."""

    parts: dict[str, Report] = field(default_factory=dict)
    levels: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> str:
        order = ", ".join(f"{name} ({'+'.join(sorted(self.levels.get(name, ()), key=LEVELS.index))})"
                          for name in self.parts)
        lines = super().summary().split("\n")
        label = "+".join(f"{name}:{report.config.get('preset') or 'custom'}" for name, report in self.parts.items())
        lines[0] = f"{self.method} ({label}): {len(self.calls)} call(s); levels, outermost first: {order}"
        for call in self.calls:
            own = []
            for name, report in self.parts.items():
                part_call = next((c for c in report.calls if c.call_index == call.call_index), None)
                if part_call is not None:
                    rebuilt = sum(1 for s in part_call.steps if s.values.get("uncond") == "rebuilt")
                    own.append(f"{name}: {part_call.computed_steps}/{part_call.num_steps} steps computed"
                               + (f", uncond rebuilt at {rebuilt}" if rebuilt else ""))
            index = next(i for i, line in enumerate(lines) if line.startswith(f"call {call.call_index}:"))
            lines[index] += f" [{'; '.join(own)}]"
        return "\n".join(lines)

    __str__ = summary


def compose_report(name: str, config: dict, parts: list[tuple[str, MethodConfig, Report, object]]) -> ComposedReport:
    """The :class:`ComposedReport` of ``parts`` — ``(method, config, its report, answered_share or None)``, outermost
    level first; ``answered_share(record)`` is the share of a step's work a CFG-level part answered itself."""
    merged = ComposedReport(name, config, parts={n: r for n, _, r, _ in parts},
                            levels={n: sorted(c.levels(), key=LEVELS.index) for n, c, _, _ in parts})
    counting = min(range(len(parts)), key=lambda i: _counting_rank(parts[i][1]))
    indices = sorted({call.call_index for _, _, report, _ in parts for call in report.calls})
    for index in indices:
        calls = [next((c for c in report.calls if c.call_index == index), None) for _, _, report, _ in parts]
        base = next(c for c in calls if c is not None)
        out = CallReport(index, base.num_steps)
        records = [{(s.step, s.expert): s for s in call.steps} if call is not None else {} for call in calls]
        keys = sorted({key for by_key in records for key in by_key}, key=lambda k: (k[0], k[1] or ""))
        for key in keys:
            out.steps.append(_merge_step([by_key.get(key) for by_key in records], parts, counting))
        tokens = [c.token_steps for c in calls if c is not None and c.token_steps is not None]
        out.token_steps = tokens[0] if tokens else None
        present = [c for c in calls if c is not None]
        out.peak_cache_bytes = sum(c.peak_cache_bytes for c in present)
        out.bytes_to_cache_device = sum(c.bytes_to_cache_device for c in present)
        out.bytes_from_cache_device = sum(c.bytes_from_cache_device for c in present)
        merged.calls.append(out)
    return merged


def _merge_step(records: list, parts: list, counting: int) -> StepRecord:
    base = next(r for r in records if r is not None)
    own = records[counting] or base
    computed_blocks, reused_blocks = own.blocks_computed, own.blocks_reused
    kept = 1.0  # the share of the step's work that reached the counting part
    for i, (record, (_, _, _, share)) in enumerate(zip(records, parts)):
        if i != counting and record is not None and share is not None:
            kept *= 1.0 - share(record)
    if kept < 1.0:
        reused_blocks += round((computed_blocks + reused_blocks) * (1.0 - kept) / kept) if kept > 0 else 0
    values = {f"{name}.{key}": value for record, (name, _, _, _) in zip(records, parts) if record is not None
              for key, value in record.values.items()}
    actives = [r.active_fraction for r in records if r is not None and r.active_fraction is not None]
    return StepRecord(base.step, all(r.computed for r in records if r is not None), list(base.branches),
                      computed_blocks, reused_blocks, actives[0] if actives else None, values, base.expert)


__all__ = ["LEVELS", "ComposedConfig", "ComposedReport", "CompositionInfo", "accepted", "check_composition",
           "compose", "compose_report", "is_composition", "part_config", "resolve"]

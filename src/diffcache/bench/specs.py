"""What ``--methods`` names: the uncached run, diffcache's methods (from the registry, by name), ``steps:N``, and
the peers' own implementations."""

from __future__ import annotations

import ast
import itertools
import re
from dataclasses import dataclass

from ..errors import UnknownMethodError
from ..methods.framework import list_methods, method_info
from .defaults import DEFAULT_METHODS  # noqa: F401 - re-exported: what --methods runs by default
from .names import (ALL_PEER_CURVES, ALL_PEERS, BASELINE, FEWER_STEPS, OURS, STUDENT, accepted_names,  # noqa: F401 - re-exported
                    scan as _scan, top_level as _top_level)
from .peers import PEER_CURVES, PEERS


@dataclass(frozen=True)
class MethodSpec:
    """One entry of ``--methods``: ``none`` (the uncached run), ``NAME`` (default preset), ``NAME:PRESET``, or
    ``NAME:PRESET[option=value;option=value]`` with config overrides; ``steps:N``; a peer, optionally with
    ``[option=value;...]`` passed to its config; or diffcache methods of different levels joined by ``+``
    (``teacache:tiny-shapes-t2v+cfg-cache:default``, :mod:`diffcache.composition`), each part a method spec of its
    own (``parts``)."""

    name: str
    preset: str | None = None
    overrides: tuple[tuple[str, object], ...] = ()
    parts: tuple["MethodSpec", ...] = ()  #: a composition's methods, each with its preset and overrides

    @property
    def kind(self) -> str:
        """``baseline``, ``steps``, ``peer`` or ``method``."""
        if self.name == BASELINE:
            return "baseline"
        if self.name == FEWER_STEPS:
            return "steps"
        if self.name == STUDENT:
            return "student"
        return "peer" if self.name in PEERS else "method"

    @property
    def label(self) -> str:
        if self.parts:
            return "+".join(part.label for part in self.parts)
        extra = ";".join(f"{k}={v}" for k, v in self.overrides)
        head = self.name if self.preset is None else f"{self.name}:{self.preset}"
        return head + (f"[{extra}]" if extra else "")

    def enable_arguments(self) -> tuple[object, dict]:
        """``(method, keyword arguments)`` for :func:`diffcache.enable`: the name with its preset and overrides, or
        for a composition the list of its parts' configs."""
        if self.parts:
            return [part.config() for part in self.parts], {}
        return self.name, {"preset": self.preset, **dict(self.overrides)}

    def config(self):
        """The config of a diffcache method's spec (its preset with its overrides)."""
        return method_info(self.name).config_class.from_preset(self.preset, **dict(self.overrides))

    @classmethod
    def parse(cls, text: str) -> "MethodSpec":
        text = text.strip()
        if len(list(_top_level(text, "+"))) > 1:  # a composition ("+" inside [...] is a value)
            return _composed(text)
        match = re.fullmatch(r"([\w-]+)(?::([^\[\],]+))?(?:\[(.*)\])?", text)
        if not match:
            raise UnknownMethodError(f"cannot read method {text!r}; write NAME, NAME:PRESET or "
                                     "NAME:PRESET[option=value;...], e.g. adacache:fast[metric_blocks=(1,2)]")
        name, preset, options = match.groups()
        overrides = tuple(_options(text, options))
        if name in PEERS:
            if preset:
                raise UnknownMethodError(f"the peer {name!r} has no presets; give its config options as "
                                         f"{name}[option=value;...]")
            return cls(name, None, overrides)
        if name == FEWER_STEPS:
            if options or not (preset or "").isdigit() or int(preset) < 1:
                raise UnknownMethodError(f"{text!r}: write steps:N with N a positive number of steps, e.g. steps:15")
            return cls(FEWER_STEPS, preset)
        if name == STUDENT:
            return _student(text, preset, overrides)
        if name == BASELINE:
            if preset or options:
                raise UnknownMethodError(f"'{BASELINE}' (the uncached run) takes no preset or options, got {text!r}")
            return cls(BASELINE)
        try:
            info = method_info(name)
        except UnknownMethodError:
            raise UnknownMethodError(f"unknown method {name!r}; accepted: {accepted_names()}.") from None
        if preset and preset not in info.presets and not preset.endswith(".json"):
            raise UnknownMethodError(f"unknown preset {preset!r} of {name}; presets: {', '.join(info.presets)}.")
        spec = cls(name, preset or info.default_preset, overrides)
        try:
            info.config_class.from_preset(spec.preset, **dict(spec.overrides))  # bad options fail now, not mid-run
        except TypeError as error:
            raise UnknownMethodError(str(error)) from error
        return spec


def _student(text: str, folder: str | None, overrides: tuple) -> MethodSpec:
    """``student:FOLDER[steps=N;method=NAME]``: the folder must be a student of ``diffcache distill`` (it has a
    ``distillation.json``); ``steps`` a positive count (default: the student's own), ``method`` a diffcache
    method spec run on the student."""
    from pathlib import Path

    if not folder or not (Path(folder).expanduser() / "distillation.json").is_file():
        raise UnknownMethodError(f"{text!r}: write student:FOLDER with FOLDER a round folder of `diffcache distill` "
                                 f"(one with a distillation.json){'' if not folder else f'; {folder} has none'}")
    options = dict(overrides)
    unknown = sorted(set(options) - {"steps", "method"})
    if unknown:
        raise UnknownMethodError(f"{text!r}: a student takes the options steps=N and method=NAME, not "
                                 f"{', '.join(unknown)}")
    if "steps" in options and not (isinstance(options["steps"], int) and 1 <= options["steps"] <= 10_000):
        raise UnknownMethodError(f"{text!r}: steps must be a positive whole number, e.g. steps=4")
    if "method" in options:
        inner = MethodSpec.parse(str(options["method"]))
        if inner.kind != "method":
            raise UnknownMethodError(f"{text!r}: method= names a diffcache method (e.g. fbcache), not "
                                     f"{options['method']!r}")
    return MethodSpec(STUDENT, folder, overrides)


def _composed(text: str) -> MethodSpec:
    """``a:preset+b:preset[...]`` as one spec whose ``parts`` are the methods' own specs, checked to combine."""
    from ..composition import check_composition

    pieces = [text[start:end] for start, end in _top_level(text, "+")]
    parts = tuple(MethodSpec.parse(piece) for piece in pieces if piece.strip())
    if len(parts) != len(pieces) or any(part.kind != "method" for part in parts):
        raise UnknownMethodError(f"{text!r}: only diffcache methods combine with '+' (not none, steps:N or a peer), "
                                 "e.g. teacache:tiny-shapes-t2v+cfg-cache:default")
    check_composition([part.config() for part in parts])
    return MethodSpec("+".join(part.name for part in parts), None, (), parts)


def _options(text: str, options: str | None):
    for item in filter(None, (options or "").split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise UnknownMethodError(f"option {item!r} in {text!r} is not of the form option=value")
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            value = value.strip()
        yield key.strip(), value


def _groups(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of the inside of each top-level ``[...]`` of a ``--methods`` entry."""
    opened = [i + 1 for i, char, depth in _scan(text) if char == "[" and depth == 0]
    closed = [i for i, char, depth in _scan(text) if char == "]" and depth == 0]
    return list(zip(opened, closed))


def curve_name(label: str) -> str:
    """A label without its ``[...]`` options: the curve its point belongs to in the reports
    (``diffusers-fbcache[threshold=0.1]`` → ``diffusers-fbcache``, ``adacache:fast[threshold=0.1]`` →
    ``adacache:fast``)."""
    kept, start = [], 0
    for a, b in _groups(label):
        kept.append(label[start:a - 1])
        start = b + 1
    return "".join(kept) + label[start:]


def label_kind(label: str) -> str:
    """The :attr:`MethodSpec.kind` of a stored label (``baseline``, ``steps``, ``peer`` or ``method``), read from
    its first name: a composition such as ``teacache+cfg-cache`` counts as the kind of its first part."""
    return MethodSpec(re.split(r"[:+\[]", label, maxsplit=1)[0].strip()).kind


def expand_sweep(text: str) -> list[str]:
    """One ``--methods`` entry with swept options → one entry per combination of values:
    ``fbcache[threshold=0.05|0.1]`` → ``fbcache[threshold=0.05]``, ``fbcache[threshold=0.1]``. A value is cut at
    the ``|`` outside parentheses, brackets and quotes (``metric_blocks=(1,2)|(2,3)``, ``mode="a|b"`` is one
    string); several swept options give every combination, in order (the first option varies slowest). Every
    ``[...]`` of the entry is read, so a composition's parts sweep too. An empty alternative is an error."""
    pieces, values, start = [], [], 0
    for group in _groups(text):
        inner_start, inner_end = group
        inner = text[inner_start:inner_end]
        for a, b in _top_level(inner, ";"):
            key, sep, value = inner[a:b].partition("=")
            if not sep:
                continue  # MethodSpec.parse says what is wrong with it
            value_start = inner_start + a + len(key) + 1
            alternatives = [value[x:y] for x, y in _top_level(value, "|")]
            if len(alternatives) == 1:
                continue
            if any(not alt.strip() for alt in alternatives):
                raise UnknownMethodError(f"{text!r}: option {key.strip()!r} has an empty alternative in "
                                         f"{value.strip()!r}; write option=a|b|c with a value between each '|'")
            pieces.append(text[start:value_start])
            values.append([alt.strip() for alt in alternatives])
            start = inner_start + b
    if not values:
        return [text]
    pieces.append(text[start:])
    return ["".join(p + v for p, v in zip(pieces, combo + ("",))) for combo in itertools.product(*values)]


def parse_methods(text: str) -> list[MethodSpec]:
    """``"none,adacache:fast,steps:15,diffusers-pab"`` → specs. ``ours`` expands to every registered diffcache
    method at its default preset, ``peers`` to every peer, ``peer-curves`` to every peer's curve
    (:data:`.peers.PEER_CURVES`); ``NAME[option=a|b]`` to one entry per value (:func:`expand_sweep`); ``none`` is
    added first when missing (it is the reference)."""
    parts = [text[a:b].strip() for a, b in _top_level(text, ",") if text[a:b].strip()]  # commas in [...] are values
    specs = []
    for part in parts:
        if part == OURS:
            specs += [MethodSpec(info.name, info.default_preset) for info in list_methods()]
        elif part == ALL_PEERS:
            specs += [MethodSpec(name) for name in PEERS]
        elif part == ALL_PEER_CURVES:
            specs += [MethodSpec.parse(entry) for curve in PEER_CURVES.values() for entry in expand_sweep(curve)]
        else:
            specs += [MethodSpec.parse(entry) for entry in expand_sweep(part)]
    if not specs:
        raise UnknownMethodError(f"no methods given; e.g. --methods none,adacache:fast. Accepted: {accepted_names()}")
    labels = [s.label for s in specs]
    duplicated = sorted({label for label in labels if labels.count(label) > 1})
    if duplicated:
        raise UnknownMethodError(f"methods listed twice: {', '.join(duplicated)}")
    if BASELINE not in labels:
        specs.insert(0, MethodSpec(BASELINE))
    elif labels[0] != BASELINE:
        specs.insert(0, specs.pop(labels.index(BASELINE)))
    return specs

"""Every public field of every method config (the registry, :func:`diffcache.list_methods`), given hostile values
generated from its declared type: a config is made, or :class:`~diffcache.errors.ConfigError` (a
:class:`~diffcache.errors.DiffcacheError`) names the field — never another exception, and never a config holding
NaN. A config the command line accepts (``--method NAME[field=VALUE]``) runs on the embedded model, or is refused
in one line naming the field (:mod:`hostile_harness`)."""

from __future__ import annotations

import dataclasses
import math
import os
import typing

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="skipped: the hostile-input suite needs hypothesis "
                                 "(pip install 'hypothesis>=6.100,<7')")
from hypothesis import HealthCheck, Phase, given, settings, strategies as st  # noqa: E402

from hostile_harness import check, judge, run_cli, working_folder  # noqa: E402

EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "50"))
NAN, INF = float("nan"), float("inf")


def _fields():
    from diffcache import list_methods

    found = []
    for info in list_methods():
        hints = typing.get_type_hints(info.config_class)
        for field in dataclasses.fields(info.config_class):
            if field.name != "preset":
                found.append((info.name, field.name, hints[field.name]))
    return found


FIELDS = _fields()

#: values no numeric field means: NaN, infinities, negative, zero, huge, fractional where a count is meant
NUMBERS = [NAN, INF, -INF, -1, -1.0, 0, 0.0, 10**30, -(10**30), 1e30, 1.5, 2**63]
#: values of the wrong kind for most fields
WRONG = ["abc", "", " ", "ünïcödé", "🙂", True, False, None, [], (), {}]
#: sequences (codebooks, block lists, windows, budgets) with hostile entries or shapes
SEQUENCES = [(NAN,), (INF, 1), ((NAN, 2),), ((0.1, 10**30),), ((0.1, 0),), ((0.1, -1),), ((-0.1, 1),),
             ((0.2, 1), (0.1, 2)), ((0.1, 1, 2),), (10**30,), (-(10**30),), (1, 1), (2, 1), (0, 0), (NAN, NAN),
             (1, 2, 3), ("a", "b"), (True, False), [[]], ((),)]


def edges(annotation) -> list:
    """Hostile values for a field of this declared type (every field gets every value; the type decides only
    the order, its own kind's edges first)."""
    args = typing.get_args(annotation)
    kinds = {a for a in (args or (annotation,))}
    first = SEQUENCES if any(typing.get_origin(k) is tuple or k is tuple for k in kinds) else NUMBERS
    rest = NUMBERS if first is SEQUENCES else SEQUENCES
    return first + WRONG + rest


_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                  st.text(max_size=6))
VALUES = st.recursive(_leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                     st.lists(inner, max_size=3).map(tuple)), max_leaves=6)


def has_nan(value) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, (tuple, list)):
        return any(has_nan(v) for v in value)
    return False


def construction_cause(method: str, field: str, value) -> str | None:
    """``None`` when ``from_preset(default, field=value)`` makes a config or refuses it naming the field."""
    from diffcache.errors import DiffcacheError
    from diffcache.methods.framework import method_info

    info = method_info(method)
    try:
        config = info.config_class.from_preset(info.default_preset, **{field: value})
    except DiffcacheError as error:
        if field not in str(error):
            return f"refused without naming {field}: {type(error).__name__}: {str(error)[:100]}"
        return None
    except Exception as error:  # noqa: BLE001 - the property is about any exception
        return f"{type(error).__name__} (not a DiffcacheError): {str(error)[:100]}"
    if has_nan(getattr(config, field)):
        return f"NaN accepted by {field}"
    return None


def _construct(method, field, value):
    import re

    cause = construction_cause(method, field, value)
    check("config-field", {"method": method, "field": field, "value": value},
          None if cause is None else re.sub(r"\d+", "N", cause))


@settings(max_examples=10 * EXAMPLES, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
@given(st.sampled_from(FIELDS).flatmap(lambda f: st.tuples(st.just(f), st.one_of(st.sampled_from(edges(f[2])),
                                                                                  VALUES))))
def test_hostile_config_field(case):
    (method, field, _), value = case
    _construct(method, field, value)


@pytest.mark.slow
@pytest.mark.parametrize("method,field,annotation", FIELDS, ids=[f"{m}.{f}" for m, f, _ in FIELDS])
def test_every_edge_value_of_every_field(method, field, annotation):
    failures = []
    for value in edges(annotation):
        try:
            _construct(method, field, value)
        except AssertionError as error:
            failures.append(str(error))
    assert not failures, "\n".join(failures)


# -- through the command line: accepted configs must run ---------------------------------------------------------
def cli_edges(annotation) -> list:
    """The values the command-line sweep tries: the field's own kind's edges and the wrong kinds (the API sweep
    tries every value)."""
    values = edges(annotation)
    return values[: len(values) - len(SEQUENCES if values[0] in NUMBERS else NUMBERS)]


def literal(value) -> str | None:
    """``value`` as the text a user writes in ``NAME[field=VALUE]`` (read with ``ast.literal_eval``); infinities
    as ``1e999``; ``None`` for NaN, which has no literal."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return "1e999" if value == INF else "-1e999" if value == -INF else repr(value)
    if isinstance(value, (tuple, list)):
        parts = [literal(v) for v in value]
        if None in parts:
            return None
        body = ", ".join(parts) + ("," if isinstance(value, tuple) and len(parts) == 1 else "")
        return f"({body})" if isinstance(value, tuple) else f"[{body}]"
    if isinstance(value, dict):
        return None if value else "{}"
    return repr(value)


def _unet_only(method: str) -> bool:
    from diffcache.methods.framework import method_info

    return "Wan" not in method_info(method).families


def generate_argv(method: str, option: str | None) -> list[str]:
    spec = method if option is None else f"{method}[{option}]"
    if _unet_only(method):
        return ["generate", "--model", "tiny-shapes-t2i", "--prompt", "a red circle", "--steps", "10", "--method",
                spec, "--out", "x.png"]
    return ["generate", "--prompt", "a red circle moving left", "--steps", "10", "--method", spec, "--out", "x.gif"]


_base: dict = {}


def _via_cli(method, field, value):
    text = literal(value)
    if text is None or ";" in text or "]" in text and "[" not in text:
        return  # NaN has no literal (the API test above covers it); ';' would split the option list

    def base():
        if method not in _base:
            with working_folder() as folder:
                _base[method] = run_cli(generate_argv(method, None), folder)
        return _base[method]

    with working_folder() as folder:
        outcome = run_cli(generate_argv(method, f"{field}={text}"), folder)
    check("config-field-cli", {"method": method, "field": field, "value": text}, judge(outcome, field, base))


@settings(max_examples=EXAMPLES // 2, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
@given(st.sampled_from(FIELDS).flatmap(lambda f: st.tuples(st.just(f), st.sampled_from(cli_edges(f[2])))))
def test_hostile_config_field_on_the_command_line(case):
    (method, field, _), value = case
    _via_cli(method, field, value)


@pytest.mark.slow
@pytest.mark.parametrize("method,field,annotation", FIELDS, ids=[f"{m}.{f}" for m, f, _ in FIELDS])
def test_every_edge_value_of_every_field_on_the_command_line(method, field, annotation):
    failures = []
    for value in cli_edges(annotation):
        try:
            _via_cli(method, field, value)
        except AssertionError as error:
            failures.append(str(error))
    assert not failures, "\n".join(failures)

"""Every option of every ``diffcache`` command, given hostile values generated from its declared type, range and
choices (:mod:`cli_space`): the outcome is success, or one line ``diffcache COMMAND: error: ...`` naming the option,
exit code 2, no traceback, and nothing in the working folder written or changed (:mod:`hostile_harness`)."""

from __future__ import annotations

import os

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="skipped: the hostile-input suite needs hypothesis "
                                 "(pip install 'hypothesis>=6.100,<7')")
from hypothesis import HealthCheck, Phase, given, settings, strategies as st  # noqa: E402

from cli_space import BASE, ROLES, commands, edges, kind_of, name_of, options, run_with, safe_text, base_outcome  # noqa: E402
from hostile_harness import check, judge, recorded  # noqa: E402

OPTIONS = options()
#: examples of the default run (the whole suite stays under two minutes); the slow run tries every edge value
EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "50"))

TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/\\"), max_size=24)


def strategy(action) -> st.SearchStrategy[str]:
    """Hostile values for one option, from its declared type: its edge values, then generated ones — integers at
    or below zero, past the embedded models' positional range (100 to 2000) and past 2**31, any float (NaN and infinities included), any text."""
    kind = kind_of(action)
    generated = {
        "int": st.one_of(st.integers(max_value=0), st.integers(100, 2000), st.integers(min_value=2**31)).map(str),
        "float": st.floats(allow_nan=True, allow_infinity=True).map(repr),
        "choice": TEXT.filter(lambda t: t not in action.choices),
        "text": TEXT,
    }[kind]
    return st.one_of(st.sampled_from(edges(action)), generated, TEXT).filter(safe_text)


def _case(path, action, value):
    return {"command": " ".join(path), "option": name_of(action), "value": value}


def _verdict(path, action, value):
    outcome = run_with(path, action, value)
    check("cli-option", _case(path, action, value), _cause(path, action, value, outcome))


#: values ``generate`` can check without its model, so it must refuse them before loading one (issue 24, item 2)
BEFORE_LOADING = {"--prompt", "--negative-prompt", "--seed", "--guidance", "--steps", "--fps", "--upscale", "--out",
                  "--budget-map", "--method", "--device", "--cfg-mode", "--image"}


def _quotes(value: str, line: str) -> bool:
    return bool(value) and (f"'{value}'" in line or repr(value) in line or len(value.strip()) > 1 and value in line)


def _cause(path, action, value, outcome):
    early = path == ("generate",) and name_of(action) in BEFORE_LOADING
    cause = judge(outcome, name_of(action), lambda: base_outcome(path), value, numeric=kind_of(action) == "float",
                  before_loading=early)
    if (cause and cause.startswith("error does not name") and (" ".join(path), name_of(action)) in ROLES
            and _quotes(value, outcome.error_lines()[0])):
        cause = None  # a place: naming the path given is naming the option
    return cause


def test_every_command_has_base_arguments():
    """A new command cannot slip past the suite: each has valid, cheap base arguments here."""
    from diffcache.cli import build_parser

    assert {path for path, _ in commands(build_parser())} == set(BASE)
    assert len(OPTIONS) > 80  # every command's options, read from the parser


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(BASE), ids=" ".join)
def test_base_arguments_are_accepted(path):
    """The base arguments alone succeed or reach the denoiser (``distill gallery``: a clean refusal, no run
    folder), so a refusal with a hostile value is the value's."""
    outcome = base_outcome(path)
    assert judge(outcome, None) is None, (outcome.exception, outcome.stderr[-2000:])
    if path != ("distill", "gallery"):
        assert outcome.rc == 0 or outcome.stopped, outcome.stderr[-2000:]


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
@given(st.sampled_from(OPTIONS).flatmap(lambda o: st.tuples(st.just(o), strategy(o[1]))))
def test_hostile_option_value(case):
    """One option of one command at a time, a generated hostile value (bounded examples: the default run)."""
    (path, action), value = case
    _verdict(path, action, value)


@pytest.mark.slow
@pytest.mark.parametrize("path,action", OPTIONS, ids=[f"{' '.join(p)} {name_of(a)}" for p, a in OPTIONS])
def test_every_edge_value_of_every_option(path, action):
    """Every edge value of every option (the census of issue 24)."""
    failures = []
    for value in edges(action):
        if recorded("cli-option", _case(path, action, value)):
            continue
        outcome = run_with(path, action, value)
        cause = _cause(path, action, value, outcome)
        try:
            check("cli-option", _case(path, action, value), cause)
        except AssertionError as error:
            failures.append(str(error))
    assert not failures, "\n".join(failures)


@pytest.mark.slow
@settings(max_examples=20 * EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(OPTIONS).flatmap(lambda o: st.tuples(st.just(o), strategy(o[1]))))
def test_hostile_option_value_long(case):
    (path, action), value = case
    _verdict(path, action, value)

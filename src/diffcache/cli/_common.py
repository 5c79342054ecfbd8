"""Helpers the commands share: option checks, ``--method`` parsing and enabling, and what a method did. Nothing
heavy is imported at module level (``diffcache --help`` stays fast)."""

from __future__ import annotations

import argparse
import contextlib

FORMATTER = argparse.RawDescriptionHelpFormatter  #: keeps the examples epilog as written


def positive(**values) -> None:
    """Validate integer options: each must be at least 1 (``seed``: at least 0); ``None`` means unset."""
    for name, value in values.items():
        low = 0 if name == "seed" else 1
        if value is not None and value < low:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {low}, got {value}.")


def method_spec(text: str | None, command: str):
    """``--method``: a diffcache method as ``NAME[:PRESET][option=value;...]``, or ``None`` (unset or ``none``).
    Parsed before any work, so a bad name fails fast; peers and ``steps:N`` run only in ``diffcache bench``."""
    if not text:
        return None
    from ..bench.specs import BASELINE, MethodSpec

    spec = MethodSpec.parse(text)
    if spec.kind in ("peer", "steps"):
        raise ValueError(f"--method {text}: peers and steps:N run only in 'diffcache bench'; "
                         f"{command} takes a diffcache method (see 'diffcache methods').")
    return None if spec.name == BASELINE else spec


def enable_spec(pipe, spec):
    """Enable ``spec`` (from :func:`method_spec`) on ``pipe``; the handle, or ``None`` for no method."""
    if spec is None:
        return None
    from ..api import enable

    method, arguments = spec.enable_arguments()
    return enable(pipe, method, **arguments)


def effect(handle, steps: int) -> str:
    """What the method did in its last call, so a user sees it took effect: the steps it computed and, for a
    token-level method (HSA), the mean share of the tokens computed."""
    call = handle.report().calls[-1]
    text = f"{call.computed_steps}/{steps} steps computed"
    if any(record.active_fraction is not None for record in call.steps):
        text += f" with {call.token_fraction:.0%} of the tokens on average"
    return text


@contextlib.contextmanager
def one_line_warnings(command: str):
    """Show diffcache's own warnings as one line each, ``diffcache COMMAND: warning: MESSAGE`` (others as usual)."""
    import sys
    import warnings

    from ..errors import DiffcacheWarning

    with warnings.catch_warnings():
        default = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, DiffcacheWarning):
                print(f"diffcache {command}: warning: {message}", file=file or sys.stderr)
            else:
                default(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield

"""Helpers the commands share: option checks, ``--method`` parsing and enabling, and what a method did. Nothing
heavy is imported at module level (``diffcache --help`` stays fast)."""

from __future__ import annotations

import argparse
import contextlib

FORMATTER = argparse.RawDescriptionHelpFormatter  #: keeps the examples epilog as written


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill PID``, a job scheduler or container stopping the run, ``accelerate launch`` stopping its
    processes), raised where the program is, as Ctrl-C raises :class:`KeyboardInterrupt`: the same clean-up runs
    (a trainer saves its checkpoint, progress bars close, a results folder's lock is released) and the command
    exits with 143 (128 + 15) instead of 130."""


def interruption(error: BaseException) -> tuple[str, int]:
    """What an interrupt is called and its exit code: ``("terminated", 143)`` for SIGTERM, ``("interrupted", 130)``
    for Ctrl-C (SIGINT)."""
    return ("terminated", 143) if isinstance(error, Terminated) else ("interrupted", 130)


#: the largest value a count option takes: far above any real use, low enough that a typo (10**12 steps, 2**63
#: prompts) is refused at once instead of exhausting memory or running for ever
MAXIMA = {"steps": 10_000, "fps": 240, "upscale": 64, "prompts": 100_000, "seeds": 10_000, "repeats": 1_000,
          "max_evaluations": 10_000, "rounds": 10_000, "slice_clips": 100_000, "train_steps": 10_000_000,
          "eval_prompts": 100_000, "batch_size": 65_536, "checkpoint_every": 10_000_000}


def positive(maxima: dict[str, int] | None = None, **values) -> None:
    """Validate integer options: each must be at least 1 (``seed``: at least 0) and at most its :data:`MAXIMA`
    entry, or its entry in ``maxima`` where a command bounds an option differently (``train --steps`` counts
    optimiser steps, not sampling steps); ``None`` means unset."""
    from ..errors import OptionError

    for name, value in values.items():
        low = 0 if name == "seed" else 1
        high = (maxima or {}).get(name, MAXIMA.get(name))
        option = f"--{name.replace('_', '-')}"
        if value is not None and value < low:
            raise OptionError(f"{option} must be at least {low}, got {value}.")
        if value is not None and high is not None and value > high:
            raise OptionError(f"{option} must be at most {high:,}, got {value:,}.")


#: count options checked by :func:`check_options` (each at least 1) where a command has them
COUNTS = ("steps", "fps", "upscale", "height", "width", "frames", "prompts", "seeds", "repeats", "max_evaluations")


def check_options(args, counts: tuple[str, ...] = COUNTS, prompts: bool = True) -> None:
    """The options commands share, checked before any work (:mod:`diffcache.validation`), where ``args`` has them:
    counts at least 1, ``--seed`` in 0 … 2**64 − 1, ``--guidance`` finite and ≥ 0, ``--prompt`` (one or a list)
    in the grammar of an embedded model, and ``--height`` / ``--width`` / ``--frames`` within the model's
    positional range and patch multiples (read from its folder, without loading it). ``prompts`` false: the
    caller checks the prompt itself (``generate``: after what the pipeline takes, an image or not)."""
    from ..loading import stored_class_name
    from ..validation import check_guidance, check_prompts, check_seed, check_size, model_limits

    positive(**{name: getattr(args, name) for name in counts if getattr(args, name, None) is not None})
    if getattr(args, "seed", None) is not None:
        check_seed(args.seed)
    check_guidance(getattr(args, "guidance", None))
    model = getattr(args, "model", None)
    if model is not None:
        if prompts:
            check_prompts(stored_class_name(model), getattr(args, "prompt", None))
        check_size(model_limits(model), getattr(args, "height", None), getattr(args, "width", None),
                   getattr(args, "frames", None))


def check_method_names(text: str | None, option: str = "--method", benchmark: bool = False) -> None:
    """A misspelt method name in ``text`` refused at once, naming ``option``, before torch and diffusers are
    imported (:func:`diffcache.bench.names.check_names`; presets and options are checked when the spec is parsed)."""
    if not text:
        return
    from ..bench.names import check_names
    from ..errors import OptionError, UnknownMethodError

    try:
        check_names(text, benchmark=benchmark)
    except UnknownMethodError as error:
        raise OptionError(f"{option}: {error}") from None


def method_spec(text: str | None, command: str):
    """``--method``: a diffcache method as ``NAME[:PRESET][option=value;...]``, or ``None`` (unset or ``none``).
    Parsed before any work, so a bad name fails fast; peers and ``steps:N`` run only in ``diffcache bench``."""
    if not text:
        return None
    from ..errors import OptionError, UnknownMethodError

    check_method_names(text)  # a misspelt name at once, before torch is imported
    from ..bench.specs import BASELINE, MethodSpec

    try:
        spec = MethodSpec.parse(text)
    except UnknownMethodError as error:
        raise OptionError(f"--method: {error}") from None
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

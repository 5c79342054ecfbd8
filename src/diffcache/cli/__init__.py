"""The ``diffcache`` command: one module per command, each with ``add_parser(subparsers)`` (its options and
examples) and ``run(args)`` (parse, call the library once, print; heavy packages are imported there only, so
``diffcache --help`` answers without loading torch).

:func:`main` turns the library's errors (:class:`~diffcache.errors.DiffcacheError`, the system's file errors —
a missing or unwritable path, a file where a folder should be, a full disk — and ``ValueError``) into one line
``diffcache COMMAND: error: MESSAGE`` and exit code 2. An interrupt is one line too: Ctrl-C (SIGINT) exits with 130,
SIGTERM with 143 — it is raised as :class:`~diffcache.cli._common.Terminated`, a ``KeyboardInterrupt``, so every
command cleans up the same way for both (results and checkpoints are written whole, the next run resumes). Set
``DIFFCACHE_DEBUG=1`` for the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys

from ..errors import DiffcacheError
from ._common import Terminated, interruption, one_line_warnings

#: the commands in ``--help`` order; each is the module ``diffcache.cli.NAME``
COMMANDS = ("generate", "train", "evaluate", "bench", "metrics", "demo", "clips", "calibrate", "tune", "methods",
            "memory", "distill")

#: errors shown as one line (exit code 2). ``OSError``: what the system says about a path or a device — missing,
#: unwritable, a file where a folder should be and the reverse, a full disk (``ENOSPC``), a read-only file system.
#: ``ValueError``: some configs and checks still raise the built-in one (every ``DiffcacheError`` that is a
#: ``ValueError`` is caught already); drop it once they all raise ``DiffcacheError``.
HANDLED_ERRORS = (DiffcacheError, OSError, ValueError)


def error_message(error: BaseException) -> str:
    """One line for ``error``: an ``OSError`` from the system as ``PATH: what happened`` (``out/bench/results.jsonl:
    No space left on device``), anything else its message."""
    if isinstance(error, OSError) and not isinstance(error, DiffcacheError) and error.strerror:
        where = "" if error.filename is None else f"{error.filename}"
        if error.filename2 is not None:
            where += f" -> {error.filename2}"
        text = f"{where}: {error.strerror}" if where else error.strerror
    else:
        text = str(error) or type(error).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())  # one line


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says memory ran out: Python's ``MemoryError``, torch's ``OutOfMemoryError`` (an
    accelerator's), or the ``RuntimeError`` torch's CPU allocator raises when the host refuses an allocation
    (``DefaultCPUAllocator: can't allocate memory``)."""
    if type(error).__name__ in ("MemoryError", "OutOfMemoryError"):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


@contextlib.contextmanager
def sigterm_raises_terminated():
    """While a command runs, SIGTERM raises :class:`~diffcache.cli._common.Terminated` where the program is (once: a
    second SIGTERM while it cleans up is ignored, so the clean-up is not torn; SIGKILL still stops it). The previous
    handler is restored afterwards. Outside the main thread (no signals there) nothing changes."""
    raised = []

    def handler(signum, frame):
        if not raised:
            raised.append(signum)
            raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _module(command: str):
    return importlib.import_module(f".{command}", __name__)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every command's sub-parser."""
    parser = argparse.ArgumentParser(
        prog="diffcache",
        description="Faster diffusion video generation by caching, with embedded tiny models to try it offline.",
        epilog="Run 'diffcache COMMAND --help' for a command's options and examples.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        _module(command).add_parser(subparsers)
    return parser


#: loggers that warn at import about things no command can act on: torchao (which diffusers imports when it is
#: installed) failing to load its CUDA kernels on a machine without them, torch deprecating how torchao registers its
#: enums, diffusers' notice that follows; quieted to errors for the command line only (DIFFCACHE_DEBUG=1 keeps them)
IMPORT_NOISE = ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not os.environ.get("DIFFCACHE_DEBUG"):
        for name in IMPORT_NOISE:
            logging.getLogger(name).setLevel(logging.ERROR)
    with sigterm_raises_terminated(), one_line_warnings(args.command):  # e.g. a stale lock taken over
        try:
            return _module(args.command).run(args)
        except HANDLED_ERRORS as error:
            if os.environ.get("DIFFCACHE_DEBUG"):
                raise
            print(f"diffcache {args.command}: error: {error_message(error)}", file=sys.stderr)
            return 2
        except (MemoryError, RuntimeError) as error:  # out of memory: the host's, or torch's on an accelerator
            if not out_of_memory(error) or os.environ.get("DIFFCACHE_DEBUG"):
                raise
            detail = " ".join(str(error).split())[:200]
            print(f"diffcache {args.command}: error: out of memory ({detail or 'MemoryError'}); use a smaller size, "
                  "frame count or batch size", file=sys.stderr)
            return 2
        except KeyboardInterrupt as error:  # Ctrl-C, or SIGTERM (Terminated)
            word, code = interruption(error)
            print(f"diffcache {args.command}: {word}", file=sys.stderr)
            return code


__all__ = ["COMMANDS", "HANDLED_ERRORS", "Terminated", "build_parser", "error_message", "main"]

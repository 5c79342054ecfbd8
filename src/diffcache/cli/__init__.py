"""The ``diffcache`` command: one module per command, each with ``add_parser(subparsers)`` (its options and
examples) and ``run(args)`` (parse, call the library once, print; heavy packages are imported there only, so
``diffcache --help`` answers without loading torch).

:func:`main` turns the library's errors (:class:`~diffcache.errors.DiffcacheError`, path errors, ``ValueError``)
into one line ``diffcache COMMAND: error: MESSAGE`` and exit code 2; an interrupt is one line and 130. Set
``DIFFCACHE_DEBUG=1`` for the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from ..errors import DiffcacheError

#: the commands in ``--help`` order; each is the module ``diffcache.cli.NAME``
COMMANDS = ("generate", "train", "evaluate", "bench", "metrics", "demo", "clips", "calibrate", "tune", "methods",
            "memory", "distill")

#: errors shown as one line (exit code 2). ``ValueError``: some configs and checks still raise the built-in one
#: (every ``DiffcacheError`` that is a ``ValueError`` is caught already); drop it once they all raise
#: ``DiffcacheError``.
HANDLED_ERRORS = (DiffcacheError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                  FileExistsError, ValueError)


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
    try:
        return _module(args.command).run(args)
    except HANDLED_ERRORS as error:
        if os.environ.get("DIFFCACHE_DEBUG"):
            raise
        print(f"diffcache {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"diffcache {args.command}: interrupted", file=sys.stderr)
        return 130


__all__ = ["COMMANDS", "HANDLED_ERRORS", "build_parser", "main"]

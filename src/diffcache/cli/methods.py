"""``diffcache methods``: list the caching methods, their presets and supported model families."""

from __future__ import annotations

from ._common import FORMATTER

EXAMPLES = """examples:
  diffcache methods"""


def add_parser(subparsers) -> None:
    subparsers.add_parser("methods", help="list the caching methods, their presets and supported model families",
                          epilog=EXAMPLES, formatter_class=FORMATTER)


def run(args) -> int:
    from ..methods import list_methods

    for info in list_methods():
        presets = ", ".join(f"{p} (default)" if p == info.default_preset else p for p in info.presets)
        print(f"{info.name}: {info.summary}\n  presets: {presets}\n  model families: {', '.join(info.families)}")
    print("steps:N (bench only): the plain pipeline at N steps, the baseline every cache must beat at equal speed")
    return 0


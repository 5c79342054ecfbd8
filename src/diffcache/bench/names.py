"""The names ``--methods`` (and ``--method``) accept, in a module with no heavy imports, so that a misspelt name is
refused at once, before torch and diffusers are imported (they take seconds; the registry of
:mod:`diffcache.methods` and the peers of :mod:`.peers` import them). ``tests/bench/test_bench.py`` keeps
:data:`METHOD_NAMES` equal to the registry's and :data:`PEER_NAMES` to :data:`.peers.PEERS`; presets and options
are checked by :meth:`.specs.MethodSpec.parse`, which needs the configs."""

from __future__ import annotations

import re

from ..errors import UnknownMethodError

BASELINE = "none"  #: the uncached run, the reference of every quality metric and of the speedup
FEWER_STEPS = "steps"  #: "steps:N": the plain pipeline at N steps, the baseline every cache must beat
OURS = "ours"  #: every registered diffcache method at its default preset
ALL_PEERS = "peers"  #: every peer with its defaults
ALL_PEER_CURVES = "peer-curves"  #: every peer's main knob swept over its preset curve points (peers.PEER_CURVES)
STUDENT = "student"  #: "student:FOLDER[steps=N;method=NAME]": a few-step student of `diffcache distill`, optionally cached

#: the registered diffcache methods (``diffcache.list_methods()``), by name
METHOD_NAMES = ("adacache", "cfg-cache", "deepcache", "easycache", "fastercache", "fbcache", "hsa", "pab", "teacache")
#: the peers' implementations ``diffcache bench`` runs (``diffcache.bench.peers.PEERS``), in their order
PEER_NAMES = ("diffusers-pab", "diffusers-fastercache", "diffusers-fbcache", "diffusers-taylorseer",
              "diffusers-magcache", "diffusers-seacache", "cachedit-dbcache")
#: the words that name several entries at once
GROUPS = (OURS, ALL_PEERS, ALL_PEER_CURVES)


def accepted_names() -> str:
    """Every name ``--methods`` accepts, as one line for an error message."""
    return (f"{BASELINE}; {FEWER_STEPS}:N; diffcache methods: {', '.join(METHOD_NAMES)}; peers: "
            f"{', '.join(PEER_NAMES)}; '{OURS}' (every diffcache method at its default preset), '{ALL_PEERS}' (every "
            f"peer), '{ALL_PEER_CURVES}' (every peer's main knob at its curve points); {STUDENT}:FOLDER[steps=N;"
            "method=NAME] (a distilled student, against the same uncached reference); sweep an option with "
            "NAME[option=a|b|c]")


def scan(text: str):
    """``(index, character, depth)`` of each character outside quotes; ``depth`` counts the brackets,
    parentheses and braces open before it."""
    depth, quote = 0, None
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote and text[i - 1] != "\\" else quote
            continue
        if char in "'\"":
            quote = char
            continue
        if char in ")]}":
            depth -= 1
        yield i, char, depth
        if char in "([{":
            depth += 1


def top_level(text: str, separators: str):
    """``(start, end)`` of the pieces of ``text`` cut at the ``separators`` outside brackets and quotes."""
    start = 0
    for i, char, depth in scan(text):
        if char in separators and depth == 0:
            yield start, i
            start = i + 1
    yield start, len(text)


def check_names(text: str, benchmark: bool = True) -> None:
    """Refuse the first entry of a ``--methods`` list (comma-separated; ``A+B`` compositions; ``NAME:PRESET[...]``)
    whose name is none of :func:`accepted_names`, with :class:`~diffcache.errors.UnknownMethodError`, without
    importing anything heavy. ``benchmark`` false (one method, as ``generate --method`` and ``tune METHOD`` take):
    the message lists the diffcache methods only. Entries whose shape is not ``NAME...``, and a known name where it
    cannot be used (a peer given to ``generate``), are left to the full parser, which says what is wrong."""
    known = {BASELINE, FEWER_STEPS, STUDENT, *METHOD_NAMES, *PEER_NAMES, *GROUPS}
    for a, b in top_level(text, ","):
        for c, d in top_level(text[a:b], "+"):
            match = re.match(r"\s*([\w-]+)\s*(?=$|[:\[])", text[a:b][c:d])
            if match and match.group(1) not in known:
                accepted = (f"accepted: {accepted_names()}" if benchmark else
                            f"diffcache methods: {', '.join(METHOD_NAMES)} (see 'diffcache methods')")
                raise UnknownMethodError(f"unknown method {match.group(1)!r}; {accepted}.")


__all__ = ["ALL_PEERS", "ALL_PEER_CURVES", "BASELINE", "FEWER_STEPS", "GROUPS", "METHOD_NAMES", "OURS", "PEER_NAMES", "STUDENT",
           "accepted_names", "check_names", "top_level"]

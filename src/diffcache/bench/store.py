"""The results folder of a benchmark: what it holds, how a finished item is stored, what is already done.

Layout of ``--out``::

    config.json            the configuration the folder belongs to (a different one is refused)
    results.jsonl          one line per finished item (appended, flushed and fsynced: a killed run leaves a
                           consistent file, at worst a torn last line that is ignored and cut)
    parts/rank-R.jsonl     the lines of process R under ``accelerate launch`` / ``torchrun``, merged by rank 0
    clips/ITEM/LABEL.gif   each method's video of each item (the HTML gallery)
    summary.csv, summary.md, pareto-*.png, timeline.png, index.html   the reports (:mod:`.report`)

JSON has no infinity, so non-finite metrics (the uncached run's PSNR against itself) are stored as the strings
``'inf'``, ``'-inf'``, ``'nan'`` and read back with :func:`number`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

from ..errors import BenchConfigError
from ..files import read_json_lines, write_text

RESULTS = "results.jsonl"
CONFIG = "config.json"
PARTS = "parts"
CLIPS = "clips"
REPORT_FILES = ("summary.csv", "summary.md", "index.html", "timeline.png", "peer-ratios.json", "peer-ratios.csv")


# -- JSON lines ----------------------------------------------------------------------------------------------------
def _encode(value):
    """JSON has no infinity: non-finite floats become the strings 'inf', '-inf', 'nan'."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def number(value) -> float | None:
    """A metric read back from JSON: 'inf' → ``inf``."""
    if isinstance(value, str):
        return float(value)
    return value


def read_records(path: Path) -> list[dict]:
    """The finished items in a JSONL file; a torn line (a process killed while writing it) is ignored."""
    return read_json_lines(path, lambda record: "item" in record and "methods" in record)


def append_record(path: Path, record: dict) -> None:
    """Append one line atomically enough for a crash: a torn tail is cut first, the line is written in one call,
    then flushed and fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(_encode(record), allow_nan=False) + "\n").encode("utf-8")
    with open(path, "a+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size:
            handle.seek(size - 1)
            if handle.read(1) != b"\n":  # a torn last line: drop it
                handle.seek(0)
                data = handle.read()
                handle.truncate(data.rfind(b"\n") + 1)
                handle.seek(0, os.SEEK_END)
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


# -- where records go, and which are there ---------------------------------------------------------------------
def results_path(out: Path, rank: int = 0, world: int = 1) -> Path:
    """The file this process appends its records to: ``results.jsonl`` alone, ``parts/rank-R.jsonl`` among
    several processes."""
    return out / RESULTS if world == 1 else out / PARTS / f"rank-{rank}.jsonl"


def _parts(out: Path) -> list[Path]:
    return sorted((out / PARTS).glob("rank-*.jsonl")) if (out / PARTS).exists() else []


def finished(out: Path) -> dict[str, dict]:
    """Item key → record, from ``results.jsonl`` and any per-process parts not merged yet."""
    records = read_records(out / RESULTS)
    for part in _parts(out):
        records += read_records(part)
    return {r["item"]: r for r in records}


def merge_parts(out: Path) -> int:
    """Rank 0: move the per-process lines into ``results.jsonl`` (items not already there); returns how many."""
    have = {r["item"] for r in read_records(out / RESULTS)}
    moved = 0
    parts = _parts(out)
    for part in parts:
        for record in read_records(part):
            if record["item"] not in have:
                append_record(out / RESULTS, record)
                have.add(record["item"])
                moved += 1
    for part in parts:
        part.unlink()
    if (out / PARTS).exists() and not any((out / PARTS).iterdir()):
        (out / PARTS).rmdir()
    return moved


def stored_records(out: Path, keys: set[str]) -> list[dict]:
    """The records of ``results.jsonl`` whose item key is in ``keys``, in file order."""
    return [r for r in read_records(out / RESULTS) if r["item"] in keys]


def clip_path(item_key: str, label: str) -> Path:
    """Where a method's video of an item goes, relative to the folder (the record's ``clip``)."""
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:80]
    return Path(CLIPS) / item_key / f"{slug}.gif"


# -- the folder's configuration ------------------------------------------------------------------------------------
def prepare_output(out: Path, config: dict, force: bool, write: bool = True) -> None:
    """Refuse a folder holding a different configuration (:class:`BenchConfigError`); with ``force`` start it
    over. ``write``: this process writes (rank 0); the others only check."""
    path = out / CONFIG
    if force:
        if write:
            for name in (RESULTS, CONFIG, *REPORT_FILES):
                (out / name).unlink(missing_ok=True)
            for old in out.glob("pareto-*.png") if out.exists() else []:
                old.unlink()
            for folder in (PARTS, CLIPS):
                shutil.rmtree(out / folder, ignore_errors=True)
    elif path.exists():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            stored = {}
        differ = sorted(k for k in set(stored) | set(config) if stored.get(k) != config.get(k))
        if differ:
            detail = "; ".join(f"{k}: folder has {stored.get(k)!r}, this run {config.get(k)!r}" for k in differ[:4])
            raise BenchConfigError(
                f"{out} holds a benchmark with a different configuration ({detail}). Use another --out, or "
                "--force to discard its results and start over.")
    elif out.exists() and any((out / name).exists() for name in (RESULTS, *REPORT_FILES)):
        found = [name for name in (RESULTS, *REPORT_FILES) if (out / name).exists()]
        raise BenchConfigError(f"{out} already holds {', '.join(found)} but no benchmark {CONFIG}; use another "
                               "--out, or --force to replace them.")
    if write and (force or not path.exists()):
        write_text(path, json.dumps(config, indent=1) + "\n", force=True)

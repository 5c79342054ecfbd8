"""The results folder of a benchmark: what it holds, how a finished item is stored, what is already done.

Layout of ``--out``::

    config.json            the configuration the folder belongs to (a different one is refused)
    .lock                  the process writing the folder (pid, host, start time, command): one writer at a time
    results.jsonl          one line per finished item (each appended whole and fsynced: a killed run leaves a
                           consistent file, at worst a torn last line)
    results.jsonl.corrupt  the lines that were not readable records (a torn last line, a damaged one), moved here
                           by line number with a warning; their items are computed again
    parts/rank-R.jsonl     the lines of process R under ``accelerate launch`` / ``torchrun``, merged by rank 0
    clips/ITEM/LABEL.gif   each method's video of each item (the HTML gallery)
    summary.csv, summary.md, pareto-*.png, timeline.png, index.html   the reports (:mod:`.report`)

JSON has no infinity, so non-finite metrics (the uncached run's PSNR against itself) are stored as the strings
``'inf'``, ``'-inf'``, ``'nan'`` and read back with :func:`number`.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from ..errors import BenchConfigError
from ..files import CORRUPT_SUFFIX, append_line, read_json_lines, write_text

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


def read_records(path: Path, heal: bool = True, aside: Path | None = None) -> list[dict]:
    """The finished items in a JSONL file. With ``heal`` (the process that writes it) a line that is not a readable
    record — a torn last line from a killed run, a damaged line anywhere — is moved to ``aside`` (default
    ``FILE.corrupt``) with a :class:`~diffcache.errors.CorruptRecordWarning` naming its line, so its item is computed
    again (:func:`diffcache.files.read_json_lines`); without, it is only left out."""
    return read_json_lines(path, lambda record: "item" in record and "methods" in record, heal=heal, aside=aside)


def append_record(path: Path, record: dict) -> None:
    """Append one record as one whole line, fsynced; a write that fails part-way (a full disk, a signal) is cut
    back, so the file never ends in a torn line (:func:`diffcache.files.append_line`)."""
    append_line(path, (json.dumps(_encode(record), allow_nan=False) + "\n").encode("utf-8"))


# -- where records go, and which are there ---------------------------------------------------------------------
def results_path(out: Path, rank: int = 0, world: int = 1) -> Path:
    """The file this process appends its records to: ``results.jsonl`` alone, ``parts/rank-R.jsonl`` among
    several processes."""
    return out / RESULTS if world == 1 else out / PARTS / f"rank-{rank}.jsonl"


def _parts(out: Path) -> list[Path]:
    return sorted((out / PARTS).glob("rank-*.jsonl")) if (out / PARTS).exists() else []


def finished(out: Path, heal: bool = True) -> dict[str, dict]:
    """Item key → record, from ``results.jsonl`` and any per-process parts not merged yet. ``heal``: this process
    writes ``results.jsonl`` (rank 0) and moves its unreadable lines aside; the parts, which other processes may be
    appending to, are only read (rank 0 heals them when it merges them)."""
    records = read_records(out / RESULTS, heal=heal)
    for part in _parts(out):
        records += read_records(part, heal=False)
    return {r["item"]: r for r in records}


def merge_parts(out: Path) -> int:
    """Rank 0, once every process is done: move the per-process lines into ``results.jsonl`` (items not already
    there; the unreadable lines of a part go to ``results.jsonl.corrupt``); returns how many."""
    have = {r["item"] for r in read_records(out / RESULTS)}
    moved = 0
    parts = _parts(out)
    for part in parts:
        for record in read_records(part, aside=out / (RESULTS + CORRUPT_SUFFIX)):
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
            for name in (RESULTS, RESULTS + CORRUPT_SUFFIX, CONFIG, *REPORT_FILES):
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

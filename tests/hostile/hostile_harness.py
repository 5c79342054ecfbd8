"""The harness of the hostile-input suite (issue 24): run ``diffcache`` in-process on one argv in a fresh working
folder and judge the outcome by one property, whatever the input was:

* **accepted**: exit 0, or the command got as far as the denoiser and its first forwards ran (the run is then
  stopped by a guard: the suite checks the edge of diffcache, not how long a real generation takes), or it ended
  in the same refusal as the command's base arguments alone (the hostile value itself was taken);
* **refused**: exit 2 and exactly one line ``diffcache COMMAND: error: ...`` on stderr (argparse's usage lines may
  come before it) that names the option, no traceback, and no file or folder of the working folder written,
  changed or removed.

Anything else is a failure with a cause: an exception escaping :func:`diffcache.cli.main`, another exit code, an
error line that does not name the option, files changed by a refused run, no answer in time, or NaN accepted.

Census mode (``HOSTILE_CENSUS=FILE``): every outcome is appended to FILE as a JSON line and failures do not stop the
tests, so one run counts the distinct inputs tried and the failures, grouped by cause.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import resource
import shutil
import signal
import tempfile
from pathlib import Path

#: a run that has not answered by then is a failure (the edge checks answer in well under a second)
TIMEOUT_S = int(os.environ.get("HOSTILE_TIMEOUT", "30"))
#: denoiser forwards allowed before the guard stops an accepted run
FORWARD_LIMIT = 6
#: address space a run may add before a runaway allocation is a ``MemoryError`` rather than the machine's
MEMORY_HEADROOM = 12 * 2**30

CENSUS = os.environ.get("HOSTILE_CENSUS")


class Stopped(BaseException):
    """Raised by the forward guard: the command accepted its input and reached the denoiser."""


class Hang(BaseException):
    """Raised by the alarm: the command did not answer within :data:`TIMEOUT_S`."""


_forwards = {"count": 0, "limit": None, "loads": 0}


def install_forward_guard(monkeypatch_class=None):
    """Count the forwards of the denoisers the embedded models use (a diffusers Wan transformer and U-Net) and raise
    :class:`Stopped` after :data:`FORWARD_LIMIT` of them while a guarded run is in progress; count the pipelines
    :func:`diffcache.loading.load_pipeline` loads. Class and module attributes, so pipelines loaded later are
    covered; returns the function that puts the originals back (the suite's fixture calls it when the suite ends,
    so no other test runs with the guard)."""
    from diffusers import UNet2DConditionModel, WanTransformer3DModel

    from diffcache import loading

    originals = []
    if not getattr(loading.load_pipeline, "_hostile_guard", False):
        original_load = loading.load_pipeline
        originals.append((loading, "load_pipeline", original_load))

        def load_pipeline(*args, **kwargs):
            _forwards["loads"] += 1
            return original_load(*args, **kwargs)

        load_pipeline._hostile_guard = True
        loading.load_pipeline = load_pipeline

    for cls in (WanTransformer3DModel, UNet2DConditionModel):
        if getattr(cls.forward, "_hostile_guard", False):
            continue
        original = cls.forward
        originals.append((cls, "forward", original))

        def forward(self, *args, __original=original, **kwargs):
            if _forwards["limit"] is not None:
                if _forwards["count"] >= _forwards["limit"]:
                    raise Stopped()
                _forwards["count"] += 1  # counted as it starts: a first forward that outlasts the alarm was reached
            return __original(self, *args, **kwargs)

        forward._hostile_guard = True
        cls.forward = forward

    def restore() -> None:
        for owner, name, value in originals:
            setattr(owner, name, value)

    return restore


@dataclasses.dataclass
class Outcome:
    argv: list
    rc: int | None = None
    stdout: str = ""
    stderr: str = ""
    exception: str | None = None  #: "Type: message" of an exception that escaped main
    stopped: bool = False
    forwards: int = 0
    loads: int = 0  #: pipelines loaded (diffcache.loading.load_pipeline calls)
    changed: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    leaked: str | None = None  #: process-wide state the run changed and left changed (torch's grad mode)

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if re.match(r"^diffcache( [\w.-]+)*: error: ", line)]


def snapshot(root: Path) -> dict:
    """Every entry under ``root``: kind, size, mtime and (files) content hash; links by their target."""
    entries = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if path.is_symlink():
                entries[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                entries[rel] = ("dir",)
            else:
                digest = hashlib.sha1(path.read_bytes()).hexdigest() if st.st_size < 2**26 else None
                entries[rel] = ("file", st.st_size, st.st_mtime_ns, digest)
    return entries


def diff(before: dict, after: dict) -> list[str]:
    changes = [f"+{k}" for k in after if k not in before] + [f"-{k}" for k in before if k not in after]
    changes += [f"~{k}" for k in before if k in after and before[k] != after[k]]
    return sorted(changes)


@contextlib.contextmanager
def working_folder(setup=None):
    """A fresh folder as the working directory (``setup(folder)`` may plant files first)."""
    old = os.getcwd()
    folder = Path(tempfile.mkdtemp(prefix="hostile-"))
    try:
        if setup is not None:
            setup(folder)
        os.chdir(folder)
        yield folder
    finally:
        os.chdir(old)
        for path in folder.rglob("*"):  # a test may have made a folder unreadable
            with contextlib.suppress(OSError):
                if not path.is_symlink():
                    path.chmod(0o755)
        shutil.rmtree(folder, ignore_errors=True)


def _alarm(signum, frame):
    raise Hang()


def run_cli(argv: list[str], folder: Path, forward_limit: int | None = FORWARD_LIMIT) -> Outcome:
    """``diffcache.cli.main(argv)`` in ``folder`` (the working directory), its output captured, bounded in time,
    memory and denoiser forwards."""
    import time

    from diffcache.cli import main

    outcome = Outcome(list(argv))
    before = snapshot(folder)
    out, err = io.StringIO(), io.StringIO()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as statm:
        used = int(statm.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + MEMORY_HEADROOM, hard))
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIMEOUT_S)
    _forwards.update(count=0, limit=forward_limit, loads=0)
    grad_before = _grad_mode()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                outcome.rc = main(list(argv))
            except SystemExit as exit_:
                outcome.rc = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            except Stopped:
                outcome.stopped = True
            except Hang:
                outcome.exception = f"Hang: no answer within {TIMEOUT_S} s"
            except BaseException as error:  # noqa: BLE001 - the property is about any exception
                outcome.exception = f"{type(error).__name__}: {error}"
    finally:
        outcome.seconds = time.perf_counter() - start
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        outcome.forwards, outcome.loads = _forwards["count"], _forwards["loads"]
        _forwards.update(count=0, limit=None, loads=0)
        grad_after = _grad_mode()
        if grad_before is not None and grad_after is not None and grad_after != grad_before:
            outcome.leaked = f"left torch's grad mode {'enabled' if grad_after else 'disabled'}"
            import torch

            torch.set_grad_enabled(grad_before)  # the next run must not inherit it
    outcome.stdout, outcome.stderr = out.getvalue(), err.getvalue()
    outcome.changed = diff(before, snapshot(folder))
    _last["outcome"] = {"rc": outcome.rc, "stopped": outcome.stopped, "forwards": outcome.forwards,
                        "loads": outcome.loads, "seconds": round(outcome.seconds, 2),
                        "error": (outcome.error_lines() or [None])[-1], "exception": outcome.exception,
                        "leaked": outcome.leaked,
                        "stderr_tail": [line[:300] for line in outcome.stderr.strip().splitlines()[-3:]]}
    return outcome


def _grad_mode() -> bool | None:
    """torch's process-wide grad mode (``None`` before torch is imported): a run in-process must leave it as it
    found it, or every later caller in the process (a trainer, a user's notebook) inherits it."""
    import sys

    torch = sys.modules.get("torch")
    return None if torch is None else torch.is_grad_enabled()


def option_words(option: str) -> list[str]:
    """How an error may name an option: ``--max-evaluations``, ``max_evaluations``, ``max evaluations``."""
    bare = option.lstrip("-")
    return [option, bare, bare.replace("-", "_"), bare.replace("-", " "), bare.replace("_", " ")]


def judge(outcome: Outcome, option: str | None, base=None, value: str | None = None,
          numeric: bool = False, before_loading: bool = False) -> str | None:
    """``None`` when the outcome has the property, else the cause of the failure (one short line, numbers
    replaced by N so that causes group). A refusal must come before the first denoiser forward, and with
    ``before_loading`` (a value that can be checked without the model) before any pipeline is loaded."""
    cause = _judge(outcome, option, base, value, numeric, before_loading)
    return None if cause is None else re.sub(r"\d+", "N", cause)[:200]


def _judge(outcome, option, base, value, numeric, before_loading):
    if outcome.leaked:
        return outcome.leaked
    if outcome.exception and outcome.exception.startswith("Hang") and outcome.forwards:
        return None  # accepted: it got as far as the denoiser (a large batch can make one forward outlast the alarm)
    if outcome.exception:
        return f"traceback {outcome.exception.splitlines()[0] if outcome.exception.strip() else outcome.exception}"
    if "Traceback (most recent call last)" in outcome.stderr:
        return "traceback printed on stderr"
    accepted = outcome.rc == 0 or outcome.stopped
    if not accepted and base is not None and outcome.rc == 2 and outcome.error_lines():
        saved = dict(_last)
        base = base() if callable(base) else base  # (run only when needed: a base run can take seconds)
        _last.update(saved)  # the census records this outcome, not the base's
        if outcome.rc == base.rc and outcome.error_lines() == base.error_lines():
            accepted = True  # the command's own base refusal: the hostile value was taken
    if accepted:
        if numeric and value is not None and value.strip().lower() in ("nan", "+nan", "-nan"):
            return f"NaN accepted by {option}"
        return None
    if outcome.rc != 2:
        return f"exit code {outcome.rc}"
    lines = outcome.error_lines()
    if len(lines) != 1:
        return f"{len(lines)} error lines on stderr"
    other = [line for line in outcome.stderr.splitlines() if line.strip() and line not in lines
             and not _tolerated(line)]
    if other:
        return f"extra stderr: {other[0][:80]}"
    if option is not None and not any(word.lower() in lines[0].lower() for word in option_words(option)):
        message = lines[0].split(": error: ", 1)[1]
        return f"error does not name {option}: {message[:120]}"
    if outcome.changed:
        return f"refused but changed files: {outcome.changed[0]}"
    if outcome.forwards:
        return f"refused only after {outcome.forwards} denoiser forwards"
    if before_loading and outcome.loads:
        return f"{option} refused only after the pipeline was loaded"
    return None


def _tolerated(line: str) -> bool:
    """stderr lines that are not errors: argparse usage, progress bars, warnings."""
    return (line.startswith(("usage:", " ")) or "it/s]" in line or "s/it]" in line or "%|" in line
            or "arning" in line)


_last: dict = {}
_recorded: set | None = None


def recorded(kind: str, case: dict) -> bool:
    """Census mode: whether this input is in the census file already (a census interrupted and run again goes on
    where it stopped)."""
    global _recorded
    if not CENSUS:
        return False
    if _recorded is None:
        _recorded = set()
        if os.path.exists(CENSUS):
            with open(CENSUS, encoding="utf-8") as file:
                for line in file:
                    row = json.loads(line)
                    _recorded.add((row["kind"], json.dumps(row["case"], sort_keys=True, ensure_ascii=False)))
    return (kind, json.dumps(case, sort_keys=True, ensure_ascii=False)) in _recorded


def record(kind: str, case: dict, cause: str | None) -> None:
    """Append one outcome to the census file (when ``HOSTILE_CENSUS`` is set)."""
    if CENSUS:
        with open(CENSUS, "a", encoding="utf-8") as file:
            file.write(json.dumps({"kind": kind, "case": case, "cause": cause, "outcome": _last.get("outcome")},
                                  ensure_ascii=False,
                                  default=repr) + "\n")


def check(kind: str, case: dict, cause: str | None) -> None:
    """Record the outcome; outside census mode a failure fails the test."""
    record(kind, case, cause)
    if cause is not None and not CENSUS:
        raise AssertionError(f"{cause}\n  input: {case}")

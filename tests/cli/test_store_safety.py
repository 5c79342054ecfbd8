"""What a results folder survives: an unreadable record (reported by line, moved aside, its item recomputed), a
second run into the folder (refused, naming the running one), a stale lock (taken over), SIGTERM and SIGINT (one
line, exit 143 / 130, nothing torn, the next run resumes), a full disk (one line, exit 2, nothing torn); and
``--help`` and argument errors answer without importing torch."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from diffcache.bench.benchmark import benchmark
from diffcache.bench.store import RESULTS, prepare_output, read_records
from diffcache.cli import main
from diffcache.errors import CorruptRecordWarning, FolderInUseError, StaleLockWarning
from diffcache.files import LOCK, folder_lock, read_json_lines

SRC = Path(__file__).resolve().parents[2] / "src"
#: the CLI's tiny benchmark (3 items, so that a signal after the first record leaves work to resume; small clips)
SIZE = ["--height", "16", "--width", "16", "--frames", "4"]
TINY = ["--prompts", "3", "--steps", "2", "--repeats", "1", "--methods", "none", *SIZE, "--no-progress"]
TINY_KWARGS = dict(methods="none", num_prompts=3, steps=2, repeats=1, progress=False, height=16, width=16,
                   frames=4)


def _child(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    env.pop("DIFFCACHE_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "diffcache.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the child exited ({proc.returncode}) before {what}: {proc.communicate()}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _whole_lines(path: Path) -> list[dict]:
    """Every line of ``path`` is a whole JSON record ending in a newline (nothing torn)."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), data[-80:]
    return [json.loads(line) for line in data.decode().splitlines()]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- an unreadable record ------------------------------------------------------------------------------------------
def test_a_corrupt_line_is_reported_moved_aside_and_the_rest_kept(tmp_path):
    path = tmp_path / "evaluations.jsonl"
    good = ['{"kind": "evaluation", "key": "a"}', '{"kind": "evaluation", "key": "c"}']
    path.write_text(f"{good[0]}\n{{\"kind\": \"evalu\x00ation\", \n{good[1]}\n[1, 2]\n{{\"kind\": \"ref")
    with pytest.warns(CorruptRecordWarning) as caught:
        records = read_json_lines(path, lambda r: r.get("kind") in ("evaluation", "reference"))
    assert [r["key"] for r in records] == ["a", "c"]
    message = str(caught[0].message)
    assert "lines 2, 4, 5" in message and str(path) + ".corrupt" in message and "\n" not in message
    assert path.read_text() == "".join(f"{g}\n" for g in good)  # rewritten without the bad lines, the rest as is
    aside = Path(str(path) + ".corrupt").read_text()
    assert '{"kind": "evalu\x00ation", ' in aside and "[1, 2]" in aside and '{"kind": "ref' in aside
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # healed: read again without a word
        assert read_json_lines(path, lambda r: True) == records


def test_a_corrupt_record_is_recomputed_with_one_line_and_a_stale_lock_is_taken_over(shipped_pipe, tmp_path, capsys):
    benchmark(out=tmp_path, pipe=shipped_pipe, **TINY_KWARGS)
    lines = (tmp_path / RESULTS).read_text().splitlines(keepends=True)
    assert [json.loads(line)["item"] for line in lines] == ["0000", "0001", "0002"]
    broken = lines[1][: len(lines[1]) // 2] + "\n"
    (tmp_path / RESULTS).write_text(lines[0] + broken + lines[2])
    stale = _dead_pid()
    (tmp_path / LOCK).write_text(json.dumps({"pid": stale, "host": socket.gethostname(), "started": "earlier",
                                             "command": "diffcache bench"}))
    assert main(["bench", *TINY, "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err.splitlines()
    corrupt = [line for line in err if "line 2" in line]
    assert len(corrupt) == 1 and corrupt[0].startswith("diffcache bench: warning: "), err
    assert any(line.startswith("diffcache bench: warning: ") and f"pid {stale}" in line for line in err), err
    kept = (tmp_path / RESULTS).read_text().splitlines(keepends=True)
    assert kept[:2] == [lines[0], lines[2]]  # the good records untouched, the bad one recomputed after them
    assert [json.loads(line)["item"] for line in kept] == ["0000", "0002", "0001"]
    assert (tmp_path / (RESULTS + ".corrupt")).read_text() == broken
    assert not (tmp_path / LOCK).exists()  # released


# -- one writer per folder, signals ------------------------------------------------------------------------------
def test_signals_leave_whole_records_and_a_second_run_is_refused(shipped_pipe, tmp_path, capsys):
    """SIGTERM and SIGINT to a running `diffcache bench` once its first record is written (both children at once):
    one line, exit code 143 / 130, every line of results.jsonl whole, the lock released, and the next run resumes.
    While the first holds its folder, a second bench into it is refused at once, naming its pid."""
    cases = {"term": (signal.SIGTERM, 143, "terminated"), "int": (signal.SIGINT, 130, "interrupted")}
    procs = {name: _child(["bench", *TINY, "--out", str(tmp_path / name)]) for name in cases}
    try:
        for name, proc in procs.items():
            lock = tmp_path / name / LOCK
            _wait_for(lambda: lock.exists() and lock.read_text().endswith("\n"), proc, "the lock")
        assert main(["bench", *TINY, "--out", str(tmp_path / "term")]) == 2  # refused at once
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and f"pid {procs['term'].pid}" in err and "in use" in err, err
        for name, proc in procs.items():
            results = tmp_path / name / RESULTS
            _wait_for(lambda: results.exists() and results.read_bytes().endswith(b"\n"), proc, "the first record")
            proc.send_signal(cases[name][0])
        outputs = {name: proc.communicate(timeout=60) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.kill()
    for name, (_, code, word) in cases.items():
        stderr = outputs[name][1]
        assert procs[name].returncode == code, stderr
        assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith(f"diffcache bench: {word}; ")
        assert "run the same command again to resume" in stderr.lower()
        assert _whole_lines(tmp_path / name / RESULTS) and not (tmp_path / name / LOCK).exists()
    out = tmp_path / "term"
    finished = [r["item"] for r in _whole_lines(out / RESULTS)]
    before = (out / RESULTS).read_text()
    redone = []
    benchmark(out=out, pipe=shipped_pipe, after_item=lambda item: redone.append(item.key), **TINY_KWARGS)
    assert sorted(finished + redone) == ["0000", "0001", "0002"]  # resumed: the finished items are not redone
    assert (out / RESULTS).read_text().startswith(before)


def test_the_lock_names_its_holder_and_a_stale_one_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nsys.path.insert(0, sys.argv[1])\n"
                               "from diffcache.files import folder_lock\n"
                               "with folder_lock(sys.argv[2], 'diffcache bench --out x'):\n"
                               "    print('locked', flush=True); time.sleep(60)", str(SRC), str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderInUseError, match=rf"in use by pid {holder.pid} on {socket.gethostname()}.*"
                                                   r"diffcache bench --out x"):
            with folder_lock(tmp_path, "second"):
                pass
    finally:
        holder.kill()
        holder.wait()
    # killed: its lock file stays, but no process holds it
    assert (tmp_path / LOCK).exists()
    with pytest.warns(StaleLockWarning, match=rf"pid {holder.pid}.*no longer running"):
        with folder_lock(tmp_path, "third"):
            assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK).exists()
    with pytest.raises(RuntimeError, match="boom"):  # released on an exception too
        with folder_lock(tmp_path, "fourth"):
            raise RuntimeError("boom")
    assert not (tmp_path / LOCK).exists()


@pytest.mark.parametrize("argv", [["tune", "teacache", "--min-psnr", "30"], ["distill", "tiny-shapes-t2v"],
                                  ["train", "tiny-shapes-t2v"], ["demo"]])
def test_every_writing_command_refuses_a_folder_in_use(tmp_path, capsys, argv):
    with folder_lock(tmp_path, "diffcache bench --out here"):  # this process plays the running one
        assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"diffcache {argv[0]}: error: {tmp_path} is in use by pid {os.getpid()} on ")
    assert "diffcache bench --out here" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, the lock released


def test_only_rank_zero_takes_the_lock(shipped_pipe, tmp_path):
    from diffcache.bench.benchmark import Distributed

    with folder_lock(tmp_path, "rank 0 of another process"):  # what rank 0 holds while rank 1 runs
        assert benchmark(out=tmp_path, pipe=shipped_pipe, dist=Distributed(rank=1, world=2),
                         **{**TINY_KWARGS, "num_prompts": 2}) is None  # not refused
    assert [r["item"] for r in read_records(tmp_path / "parts" / "rank-1.jsonl")] == ["0001"]


# -- a full disk ---------------------------------------------------------------------------------------------------
def test_a_full_disk_is_one_line_and_tears_nothing(tmp_path, monkeypatch, capsys):
    real_write = os.write
    calls = {"results": 0}

    def full_disk(fd, data):
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if name.endswith(RESULTS):
            calls["results"] += 1
            if calls["results"] == 2:  # the second record: half of it fits, then the disk is full
                real_write(fd, bytes(data)[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    out = tmp_path / "bench"
    code = main(["bench", *TINY, "--prompts", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and calls["results"] == 2
    ours = [line for line in err.splitlines() if line.startswith("diffcache")]  # not diffusers' loading bar
    assert ours == [f"diffcache bench: error: {out / RESULTS}: No space left on device"], err
    assert "Traceback" not in err
    assert [r["item"] for r in _whole_lines(out / RESULTS)] == ["0000"]  # the torn half was cut again
    assert not (out / LOCK).exists() and not list(out.glob(".*results*"))


# -- --force owns only the benchmark's files -----------------------------------------------------------------------
def test_force_discards_only_the_benchmarks_own_files(tmp_path):
    from diffcache.demo import CLIPS_OUT, DEMO

    owned = [RESULTS, RESULTS + ".corrupt", "config.json", "summary.csv", "summary.md", "index.html",
             "pareto-psnr.png", "clips/0000/none.gif", "parts/rank-1.jsonl"]
    for name in [*owned, "notes.txt", "my-clips/index.html"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    prepare_output(tmp_path, {"model": "m"}, force=True)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["config.json", "my-clips/index.html", "notes.txt"]
    assert json.loads((tmp_path / "config.json").read_text()) == {"model": "m"}
    # `make demo` is `diffcache demo` (the same benchmark into out/demo); `diffcache clips` has its own folder
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    assert "\t$(BIN)/diffcache demo\n" in makefile and CLIPS_OUT != DEMO["out"]


# -- fast answers ----------------------------------------------------------------------------------------------
def test_argument_errors_answer_without_loading_torch():
    code = """
import contextlib, io, sys
from diffcache.cli import main
cases = [["bench", "--steps", "x"], ["bench", "--prompts", "0"], ["bench", "--cfg-mode", "both"], ["generate"],
         ["demo", "--steps", "0"], ["train", "nope", "--out", "x"], ["tune"], ["calibrate", "nope", "--out", "x"],
         ["distill"], ["nonsense"], ["metrics"], ["tune", "teacache"], ["tune", "teacache", "--speedup", "2", "--steps",
         "0"], ["distill", "tiny-shapes-t2v", "--out", "x", "--rounds", "0"], ["distill", "gallery", "r", "--out",
         "g.html", "--prompts", "0"], ["train", "tiny-shapes-t2v", "--out", "x", "--steps", "0"]]
for argv in cases:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit:
            code = exit.code
    assert code == 2, (argv, code)
    assert "error: " in err.getvalue() and "Traceback" not in err.getvalue(), (argv, err.getvalue())
heavy = sorted(m for m in ("torch", "diffusers", "numpy") if m in sys.modules)
assert not heavy, heavy
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr

"""Every path a ``diffcache`` command takes (outputs, inputs, model folders), read from the parser, given hostile
places: missing, a file where a folder is expected and the reverse, unwritable (``/proc``, ``/sys``: root can write
through a ``chmod 000``), dangling and looping symlinks, non-ASCII names, a full disk (a file-size limit the kernel
enforces, in a child process), and model folders that are empty, truncated, mismatched or hold a pickle checkpoint
(refused and never unpickled: a planted ``__reduce__`` would create a marker file). The outcome is success or one
line naming the option or the path, exit code 2, no traceback, nothing written or changed; a place that is
unusable before any work is refused before the first denoiser forward (:mod:`hostile_harness`)."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="skipped: the hostile-input suite needs hypothesis "
                                 "(pip install 'hypothesis>=6.100,<7')")
from hypothesis import HealthCheck, Phase, given, settings, strategies as st  # noqa: E402

from cli_space import BASE, ROLES, argv_for, base_outcome, name_of, options  # noqa: E402
from hostile_harness import check, judge, run_cli, snapshot, working_folder  # noqa: E402

EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "50"))

ACTIONS = {(" ".join(path), name_of(action)): (path, action) for path, action in options()}

#: the file a planted pickle's code would create
MARKER = "pickle-was-loaded"


# -- places ------------------------------------------------------------------------------------------------------
def _write_png(path: Path, value: int = 120) -> None:
    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((16, 16, 3), value, dtype=np.uint8)).save(path)


class Evil:
    """Unpickling this runs code: it creates the marker file (a checkpoint that must never be unpickled)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _pickle_file(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"weight": Evil(str(marker))}))


def places(role: str, suffix: str):
    """``kind -> (plant(folder) -> path text, expectation)``. Expectations: ``"early"`` refused before the first
    denoiser forward, ``"either"``: accepted or refused (the property still holds: one line, nothing changed, and a
    pickle never unpickled)."""
    out = role.startswith("out")
    kinds = {
        "missing": (lambda f: f"no/such/place/x{suffix}", "either" if out else "early"),
        "parent-is-file": (lambda f: (_touch(f / "afile"), f"afile/x{suffix}")[1], "early"),
        "folder-for-file" if role != "out-dir" and role != "in-dir" else "file-for-folder":
            (lambda f: (_mkdir(f / f"adir{suffix}"), f"adir{suffix}")[1] if role not in ("out-dir", "in-dir")
             else (_touch(f / "afile"), "afile")[1], "early"),
        "proc": (lambda f: f"/proc/diffcache-hostile/x{suffix}", "early"),
        "sys": (lambda f: f"/sys/x{suffix}", "early"),
        "dangling-symlink": (lambda f: (os.symlink("no/such/target", f / f"dangling{suffix}"),
                                        f"dangling{suffix}")[1], "either" if out else "early"),
        "symlink-loop": (lambda f: (os.symlink(f"loop{suffix}", f / f"loop{suffix}"), f"loop{suffix}")[1],
                         "early" if not out else "either"),
        "non-ascii": (lambda f: f"ünïcödé 🙂{suffix}", "either"),
        "empty-string": (lambda f: "", "early" if not out else "either"),
    }
    if not out:
        # an empty prompts table (metrics --prompts) is an empty table; any other empty input is refused
        kinds["empty-file"] = (lambda f: (_touch(f / f"empty{suffix}"), f"empty{suffix}")[1],
                               "either" if suffix == ".tsv" else "early")
        kinds["garbage-file"] = (lambda f: ((f / f"garbage{suffix}").write_bytes(b"\x89PNG not really\x00" * 9),
                                            f"garbage{suffix}")[1], "early")
        kinds["pickle-file"] = (lambda f: (_pickle_file(f / f"evil{suffix or '.pt'}", f / MARKER),
                                           f"evil{suffix or '.pt'}")[1], "early")
    if role == "in-weights":  # metric weights: a missing or unusable file is a note and a skipped score
        kinds = {kind: (plant, "either") for kind, (plant, _) in kinds.items()}
    if role == "in-image":
        kinds["truncated-image"] = (lambda f: _truncated_png(f / f"cut{suffix}"), "early")
        kinds["empty-dir"] = (lambda f: (_mkdir(f / "emptydir"), "emptydir")[1], "early")
    return kinds


def _touch(path: Path) -> None:
    path.write_bytes(b"")


def _mkdir(path: Path) -> None:
    path.mkdir(parents=True)


def _truncated_png(path: Path) -> str:
    _write_png(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path.name


# -- model folders -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, random_pipe):
    path = tmp_path_factory.mktemp("saved") / "pipe"
    random_pipe.save_pretrained(path)
    return path


def model_places(saved: Path):
    """Hostile model folders, each planted from a saved copy of the embedded architecture."""

    def copy(f: Path) -> Path:
        target = f / "m"
        shutil.copytree(saved, target)
        return target

    def weights(m: Path) -> Path:
        return next((m / "transformer").glob("*.safetensors"))

    def truncated(f):
        w = weights(copy(f))
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
        return "m"

    def config_edit(key, value):
        def plant(f):
            m = copy(f)
            config = json.loads((m / "transformer" / "config.json").read_text())
            config[key] = value
            (m / "transformer" / "config.json").write_text(json.dumps(config))
            return "m"
        return plant

    def pickled(f):
        m = copy(f)
        w = weights(m)
        w.unlink()
        _pickle_file(w.with_suffix(".bin"), f / MARKER)
        return "m"

    def index_only(f):
        (f / "m").mkdir()
        shutil.copy(saved / "model_index.json", f / "m" / "model_index.json")
        return "m"

    def garbage_index(f):
        m = copy(f)
        (m / "model_index.json").write_text("{not json")
        return "m"

    def list_index(f):
        m = copy(f)
        (m / "model_index.json").write_text("[1, 2]")
        return "m"

    return {
        "empty-folder": lambda f: (_mkdir(f / "m"), "m")[1],
        "model-index-only": index_only,
        "truncated-safetensors": truncated,
        "config-wider-than-weights": config_edit("ffn_dim", 1024),
        "config-deeper-than-weights": config_edit("num_layers", 7),
        "config-nan": config_edit("rope_max_seq_len", float("nan")),
        "pickle-checkpoint": pickled,
        "garbage-model-index": garbage_index,
        "model-index-not-an-object": list_index,
        "a-file": lambda f: (_touch(f / "m"), "m")[1],
        "symlink-loop": lambda f: (os.symlink("m", f / "m"), "m")[1],
        "missing": lambda f: "m",
    }


def config_places():
    """Hostile transformer configs for ``diffcache memory --model``."""

    def config(text):
        def plant(f):
            (f / "config.json").write_text(text)
            return "config.json"
        return plant

    good = {"_class_name": "WanTransformer3DModel", "patch_size": [1, 2, 2], "num_attention_heads": 12,
            "attention_head_dim": 128, "in_channels": 16, "out_channels": 16, "text_dim": 4096, "freq_dim": 256,
            "ffn_dim": 8960, "num_layers": 30}
    return {
        "empty-file": config(""),
        "garbage": config("{not json"),
        "a-list": config("[1, 2]"),
        "no-class-name": config(json.dumps({k: v for k, v in good.items() if k != "_class_name"})),
        "negative-layers": config(json.dumps({**good, "num_layers": -3})),
        "zero-heads": config(json.dumps({**good, "num_attention_heads": 0})),
        "huge-width": config(json.dumps({**good, "attention_head_dim": 10**30})),
        "nan-dim": config(json.dumps({**good, "ffn_dim": float("nan")})),
        "string-dim": config(json.dumps({**good, "num_layers": "thirty"})),
        "pickle": lambda f: (_pickle_file(f / "config.pt", f / MARKER), "config.pt")[1],
        "folder-without-config": lambda f: (_mkdir(f / "emptydir"), "emptydir")[1],
    }


# -- the property ------------------------------------------------------------------------------------------------
def _names_place(outcome, text: str) -> bool:
    line = (outcome.error_lines() or [""])[0]
    return bool(text) and (text in line or repr(text) in line or os.path.basename(text.rstrip("/")) in line)


def run_place(command: str, option: str, plant, expectation: str, kind: str):
    path, action = ACTIONS[(command, option)]
    setup = BASE[path][2]

    def prepare(folder):
        if setup is not None:
            setup(folder)

    with working_folder(prepare) as folder:
        text = plant(folder)
        argv = argv_for(path, action, text)
        outcome = run_cli(argv, folder)
        marker = (folder / MARKER).exists()
    cause = judge(outcome, option, lambda: base_outcome(path))
    if cause and cause.startswith("error does not name") and _names_place(outcome, text):
        cause = None  # naming the place given is naming the option
    refused = outcome.rc == 2 and not outcome.exception
    if cause is None and expectation == "early" and not refused:
        cause = f"{kind} accepted (rc {outcome.rc}, stopped {outcome.stopped})"
    if cause is None and expectation == "early" and refused and outcome.forwards:
        cause = f"{kind} refused only after {outcome.forwards} denoiser forwards"
    if marker:
        cause = "a pickle was unpickled (its code ran)"
    check("path", {"command": command, "option": option, "kind": kind, "path": text},
          None if cause is None else re.sub(r"\d+", "N", cause))


def path_cases():
    cases = []
    for (command, option), (role, suffix) in ROLES.items():
        if role in ("model", "model-config"):
            continue
        for kind, (plant, expectation) in places(role, suffix).items():
            cases.append((command, option, kind, plant, expectation))
    return cases


PATH_CASES = path_cases()


def test_every_path_option_has_a_role():
    """An option that names a file, folder or path cannot slip past the suite."""
    words = re.compile(r"\b(files?|folders?|paths?|FILE|DIR|FILE_OR_DIR)\b", re.I)
    for (command, option), (path, action) in ACTIONS.items():
        if action.type is None and action.choices is None and words.search(f"{action.help} {action.metavar}"):
            assert (command, option) in ROLES, f"{command} {option} names a place: give it a role in ROLES"
    assert set(ROLES) <= set(ACTIONS)


@settings(max_examples=EXAMPLES // 2, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
@given(st.sampled_from(PATH_CASES))
def test_hostile_path(case):
    command, option, kind, plant, expectation = case
    run_place(command, option, plant, expectation, kind)


@pytest.mark.slow
@pytest.mark.parametrize("case", PATH_CASES, ids=[f"{c[0]} {c[1]} {c[2]}" for c in PATH_CASES])
def test_every_hostile_path(case):
    command, option, kind, plant, expectation = case
    run_place(command, option, plant, expectation, kind)


MODEL_COMMANDS = [c for (c, o), (role, _) in ROLES.items() if role == "model"]


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_pickle_checkpoint_is_refused_and_never_loaded(command, saved_model):
    """A model folder whose weights are a pickle: refused in one line, and its code never runs."""
    run_place(command, "--model", model_places(saved_model)["pickle-checkpoint"], "early", "pickle-checkpoint")


@pytest.mark.parametrize("kind", sorted(model_places(Path("/nonexistent"))))
def test_hostile_model_folder_generate(kind, saved_model):
    run_place("generate", "--model", model_places(saved_model)[kind], "early", kind)


@pytest.mark.slow
@pytest.mark.parametrize("command", MODEL_COMMANDS)
@pytest.mark.parametrize("kind", sorted(model_places(Path("/nonexistent"))))
def test_every_hostile_model_folder(command, kind, saved_model):
    run_place(command, "--model", model_places(saved_model)[kind], "early", kind)


@pytest.mark.parametrize("kind", sorted(config_places()))
def test_hostile_model_config_memory(kind):
    run_place("memory", "--model", config_places()[kind], "early", kind)


# -- a full disk -------------------------------------------------------------------------------------------------
FULL_DISK = """
import resource, sys
from diffcache.cli import main
resource.setrlimit(resource.RLIMIT_FSIZE, (2048, resource.RLIM_INFINITY))
sys.exit(main(sys.argv[1:]))
"""


def run_full_disk(argv: list[str], out: str, setup=None):
    """``argv`` in a child process whose files cannot grow past 2 KiB (the kernel refuses the write, as on a full
    disk): one line, exit code 2, no file at ``out`` and no temporary file left beside it."""
    with working_folder(setup) as folder:
        before = snapshot(folder)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
        proc = subprocess.run([sys.executable, "-c", FULL_DISK, *argv], cwd=folder, capture_output=True, text=True,
                              env=env, timeout=600)
        after = snapshot(folder)
    from hostile_harness import Outcome, diff

    outcome = Outcome(argv, rc=proc.returncode, stdout=proc.stdout, stderr=proc.stderr, changed=diff(before, after))
    cause = judge(outcome, "--out" if "--out" in argv else "--json")
    if cause and cause.startswith("error does not name") and _names_place(outcome, out):
        cause = None
    check("full-disk", {"argv": argv}, None if cause is None else re.sub(r"\d+", "N", cause))


def test_full_disk_generate():
    run_full_disk(["generate", "--prompt", "a red circle moving left", "--steps", "1", "--out", "clip.gif"],
                  "clip.gif")


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".mp4", ".png"])
def test_full_disk_generate_other_formats(suffix):
    model = ["--model", "tiny-shapes-t2i", "--prompt", "a red circle"] if suffix == ".png" else \
        ["--prompt", "a red circle moving left"]
    run_full_disk(["generate", *model, "--steps", "1", "--out", f"clip{suffix}"], f"clip{suffix}")


@pytest.mark.slow
def test_full_disk_metrics_json():
    from cli_space import _metrics_files

    run_full_disk(["metrics", "ref.png", "test.png", "--no-lpips", "--json", "scores.json", "--csv", "s.csv"],
                  "scores.json", setup=_metrics_files)

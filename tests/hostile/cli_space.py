"""The input space of the command line, read from :func:`diffcache.cli.build_parser` (not from a list of remembered
cases): every command (sub-commands included), every option or positional that takes a value, and from its
declared ``type`` / ``choices`` / ``nargs`` the hostile values it is given. Each command has base arguments that
are valid and cheap (the embedded model, one step); one option at a time is replaced by a hostile value."""

from __future__ import annotations

import argparse
from pathlib import Path

from hostile_harness import run_cli, working_folder

#: integers a user can type that no option means: zero, negative, past int64 / uint64, huge, not integers
#: (1000: past the embedded models' positional range as frames, height or width, and cheap as any other count)
INT_EDGES = ["0", "-1", "1000", "-9223372036854775809", str(2**63), str(2**64 - 1), str(2**64), str(10**30), "1.5", "1e3",
             "nan", "abc", "", " ", "ünïcödé", "🙂"]
#: floats: NaN, ±inf, negative, zero, huge, overflowing, not numbers
FLOAT_EDGES = ["nan", "-nan", "inf", "-inf", "-1", "0", "1e30", "-1e30", "1e309", "abc", "", " ", "ünïcödé", "🙂"]
#: free text: empty, whitespace, non-ASCII, punctuation the option grammars use, very long
TEXT_EDGES = ["", " ", "\t", "ünïcödé", "🙂", "abc", "-", "[", ";", "+", "=", "nan", "x" * 5000]


def _png(path: Path, value: int) -> None:
    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((16, 16, 3), value, dtype=np.uint8)).save(path)


def _metrics_files(folder: Path) -> None:
    _png(folder / "ref.png", 100)
    _png(folder / "test.png", 110)


#: per command: (positionals, options, setup of the working folder); valid, and cheap on the embedded models
BASE = {
    ("generate",): ([], {"--prompt": "a red circle moving left", "--steps": "1", "--out": "clip.gif"}, None),
    ("train",): (["tiny-shapes-t2v"], {"--out": "run", "--steps": "1", "--batch-size": "1"}, None),
    ("evaluate",): ([], {"--prompts": "1", "--steps": "1"}, None),
    ("bench",): ([], {"--methods": "none", "--prompts": "1", "--steps": "1", "--repeats": "1", "--out": "b",
                      "--no-progress": True}, None),
    ("metrics",): (["ref.png", "test.png"], {"--no-lpips": True}, _metrics_files),
    ("demo",): ([], {"--prompts": "1", "--steps": "1", "--repeats": "1", "--out": "d", "--no-progress": True}, None),
    ("clips",): ([], {"--steps": "1", "--out": "c"}, None),
    ("calibrate",): (["teacache"], {"--prompts": "2", "--steps": "6", "--out": "cal.json"}, None),
    ("tune",): (["fbcache"], {"--min-psnr": "30", "--prompts": "1", "--steps": "2", "--max-evaluations": "1",
                              "--out": "t", "--no-progress": True}, None),
    ("methods",): ([], {}, None),
    ("memory",): ([], {"--model": "wan2.1-1.3b"}, None),
    ("distill", "tiny-shapes-t2v"): ([], {"--out": "dr", "--rounds": "1", "--slice-clips": "1", "--train-steps": "1",
                                          "--batch-size": "1", "--eval-prompts": "1"}, None),
    ("distill", "gallery"): (["runs/distill"], {"--out": "gallery.html"}, None),
}


#: the role of every option that names a place, and the suffix a valid one has. ``test_every_path_option_has_a_role`` (test_paths_and_models.py)
#: keeps this complete: an option whose help speaks of a file, folder or path must be here.
ROLES = {
    ("generate", "--out"): ("out-file", ".gif"),
    ("generate", "--budget-map"): ("out-file", ".gif"),
    ("generate", "--image"): ("in-image", ".png"),
    ("generate", "--model"): ("model", ""),
    ("train", "--out"): ("out-dir", ""),
    ("evaluate", "--model"): ("model", ""),
    ("evaluate", "--json"): ("out-file", ".json"),
    ("bench", "--model"): ("model", ""),
    ("bench", "--out"): ("out-dir", ""),
    ("bench", "--images"): ("in-image", ".png"),
    ("metrics", "REF"): ("in-image", ".png"),
    ("metrics", "TEST"): ("in-image", ".png"),
    ("metrics", "--json"): ("out-file", ".json"),
    ("metrics", "--csv"): ("out-file", ".csv"),
    ("metrics", "--prompts"): ("in-file", ".tsv"),
    ("metrics", "--clip-model"): ("in-weights", ""),  # weights not found: a note, and the score is skipped
    ("metrics", "--fvd-detector"): ("in-weights", ".pt"),
    ("demo", "--out"): ("out-dir", ""),
    ("clips", "--out"): ("out-dir", ""),
    ("calibrate", "--model"): ("model", ""),
    ("calibrate", "--out"): ("out-file", ".json"),
    ("tune", "--model"): ("model", ""),
    ("tune", "--out"): ("out-dir", ""),
    ("tune", "--save"): ("out-file", ".json"),
    ("memory", "--model"): ("model-config", ".json"),
    ("distill tiny-shapes-t2v", "--out"): ("out-dir", ""),
    ("distill gallery", "run"): ("in-dir", ""),
    ("distill gallery", "--out"): ("out-file", ".html"),
}

def commands(parser: argparse.ArgumentParser, prefix: tuple = ()):
    """``(command path, parser)`` of every leaf command."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from commands(sub, prefix + (name,))


def takes_value(action: argparse.Action) -> bool:
    return not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and action.nargs != 0


def options():
    """Every value-taking option of every command: ``(command path, action)``."""
    from diffcache.cli import build_parser

    found = []
    for path, parser in commands(build_parser()):
        for action in parser._actions:
            if takes_value(action):
                found.append((path, action))
    return found


def name_of(action: argparse.Action) -> str:
    """The option as a user writes it (``--max-evaluations``), or a positional's dest (``method``)."""
    if action.option_strings:
        return max(action.option_strings, key=len)
    return action.metavar if isinstance(action.metavar, str) else action.dest


def kind_of(action: argparse.Action) -> str:
    if action.type is int:
        return "int"
    if action.type is float:
        return "float"
    if action.choices is not None:
        return "choice"
    assert action.type is None, f"{name_of(action)}: a type the suite does not generate for ({action.type})"
    return "text"


def edges(action: argparse.Action) -> list[str]:
    kind = kind_of(action)
    if kind == "int":
        return INT_EDGES
    if kind == "float":
        return FLOAT_EDGES
    if kind == "choice":
        first = str(next(iter(action.choices)))
        return TEXT_EDGES[:7] + [first.upper(), first + " ", " " + first]
    return TEXT_EDGES


def safe_text(value: str) -> bool:
    """Generated text never names a place outside the working folder (an absolute path, the home, a parent)."""
    return "/" not in value and "\\" not in value and not value.startswith(("~", "..")) and "\x00" not in value


def argv_for(path: tuple, action: argparse.Action | None, value) -> list[str]:
    """The base arguments of ``path`` with ``action`` given ``value`` (``action`` ``None``: the base alone)."""
    positionals, opts, _ = BASE[path]
    positionals, opts = list(positionals), dict(opts)
    if action is not None:
        if action.option_strings:
            for flag in action.option_strings:
                opts.pop(flag, None)
            opts[name_of(action)] = value
        else:
            from diffcache.cli import build_parser

            parser = dict(commands(build_parser()))[path]
            index = [a.dest for a in parser._actions if takes_value(a) and not a.option_strings].index(action.dest)
            while len(positionals) <= index:
                positionals.append("")
            positionals[index] = value
    argv = list(path) + positionals
    for flag, v in opts.items():
        if v is True:
            argv.append(flag)
        else:
            argv += [flag, v]
    return argv


_base_outcomes: dict = {}


def base_outcome(path: tuple):
    """The outcome of the base arguments alone (run once per session)."""
    if path not in _base_outcomes:
        with working_folder(BASE[path][2]) as folder:
            _base_outcomes[path] = run_cli(argv_for(path, None, None), folder)
    return _base_outcomes[path]


def run_with(path: tuple, action: argparse.Action, value: str):
    """Run ``path``'s base arguments with ``action`` = ``value`` in a fresh folder: the outcome."""
    with working_folder(BASE[path][2]) as folder:
        return run_cli(argv_for(path, action, value), folder)

"""``diffcache tune`` on the embedded model (one prompt, few steps): the preset meets its target on the calibration
prompts and loads through enable / bench specs, a rerun reuses every evaluation, ``--force`` rules, bad targets are
one-line errors, the chosen setting is on the printed frontier."""

import json
import warnings

import numpy as np
import pytest
import torch

import diffcache
from diffcache.bench.benchmark import warn_calibration_overlap
from diffcache.quality.protocols import psnr
from diffcache.bench.prompts import Item, plan_items
from diffcache.bench.specs import parse_methods
from diffcache.cli import main
from diffcache.errors import CalibrationOverlapWarning, OutputExistsError, TuneError
from diffcache.tune import Target, load_preset, tune

STEPS = 8
TARGET = 25.0  # dB: at 8 steps one reused step of fbcache costs about 8 dB


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a shared CPU two threads spin against each other (30x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe():
    pipe = diffcache.load_pipeline("tiny-shapes-t2v")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def tuned(pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune")
    result = tune("fbcache", Target.of(min_psnr=TARGET), out=out, num_prompts=1, steps=STEPS, pipe=pipe, progress=False,
                  max_evaluations=5)
    return out, result


def _generate(pipe, prompt, seed):
    return pipe(prompt, num_inference_steps=STEPS, guidance_scale=5.0, generator=torch.Generator().manual_seed(seed),
                output_type="np").frames[0]


def test_the_preset_meets_its_target_on_the_calibration_prompts(pipe, tuned):
    out, result = tuned
    document = json.loads(result.preset_path.read_text())
    assert document["method"] == "fbcache" and document["preset"] == "default"
    assert document["target"] == {"min_psnr": TARGET} and document["achieved"]["psnr"] >= TARGET
    assert document["achieved"]["flop_speedup"] > 1 and document["achieved"]["computed_steps"] < STEPS  # it reuses
    assert document["tuned_on"]["seeds"] == [1000] and document["tuned_on"]["steps"] == STEPS
    assert document["diffcache_version"] == diffcache.__version__
    assert set(document["options"]) == {"threshold"} or set(document["options"]) == {"threshold", "forecast"}
    prompt, seed = document["tuned_on"]["prompts"][0], document["tuned_on"]["seeds"][0]
    reference = np.load(out / "references" / "0000.npy")
    assert np.array_equal(reference, _generate(pipe, prompt, seed).astype(np.float32))  # the stored reference
    with diffcache.enable(pipe, "fbcache", preset=str(result.preset_path)) as handle:
        video = _generate(pipe, prompt, seed)
    assert handle.config.threshold == document["options"]["threshold"]
    assert psnr(video, reference) >= TARGET  # the target, re-measured from the file
    assert load_preset(result.preset_path) == handle.config
    spec = parse_methods(f"none,fbcache:{result.preset_path}")[1]  # what bench / generate --method take
    assert spec.name == "fbcache" and spec.preset == str(result.preset_path)


def test_generate_takes_the_preset_file(tuned, tmp_path, capsys):
    _, result = tuned
    out = tmp_path / "clip.gif"
    assert main(["generate", "--prompt", "a red circle moving left", "--steps", str(STEPS), "--method",
                 f"fbcache:{result.preset_path}", "--out", str(out)]) == 0
    assert out.stat().st_size > 0 and "steps computed" in capsys.readouterr().out


def test_the_chosen_setting_is_on_the_printed_frontier(tuned):
    _, result = tuned
    table = result.lines[1]
    marked = [line for line in table.splitlines() if line.startswith("*")]
    assert len(marked) == 1 and f"threshold={result.chosen['knobs']['threshold']:g}" in marked[0]
    assert result.chosen in result.frontier
    assert all(e["psnr"] < TARGET or e["flop_speedup"] <= result.chosen["flop_speedup"] for e in result.evaluations
               if not e.get("error"))
    assert [e["options"] for e in result.frontier] == [e["options"] for e in result.preset["frontier"]]


def test_a_rerun_reuses_every_evaluation(pipe, tuned, monkeypatch):
    out, first = tuned
    calls = []
    original = type(pipe).__call__
    monkeypatch.setattr(type(pipe), "__call__", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    again = tune("fbcache", Target.of(min_psnr=TARGET), out=out, num_prompts=1, steps=STEPS, pipe=pipe, progress=False,
                 max_evaluations=5)
    assert calls == [] and again.generations == 0 and again.reused == len(first.evaluations)
    assert again.chosen == first.chosen and "(unchanged)" in again.lines[-1]
    lines = [json.loads(line) for line in (out / "evaluations.jsonl").read_text().splitlines()]
    assert sum(line["kind"] == "reference" for line in lines) == 1
    assert sum(line["kind"] == "evaluation" for line in lines) == len(first.evaluations)


def test_a_speed_target_reuses_the_folder(pipe, tuned):
    out, first = tuned
    result = tune("fbcache", Target.of(speedup=1.2), out=out, num_prompts=1, steps=STEPS, pipe=pipe, progress=False,
                  max_evaluations=6)
    assert result.chosen["flop_speedup"] >= 1.2 and result.reused >= 1 and result.preset_path != first.preset_path
    assert all(e["flop_speedup"] < 1.2 or e["psnr"] <= result.chosen["psnr"] for e in result.evaluations
               if not e.get("error"))
    assert json.loads(result.preset_path.read_text())["target"] == {"speedup": 1.2}


def test_force_rules(pipe, tuned, tmp_path, capsys):
    out, result = tuned
    with pytest.raises(TuneError, match="another configuration.*steps.*--force"):  # other steps, same folder
        tune("fbcache", Target.of(min_psnr=TARGET), out=out, num_prompts=1, steps=STEPS + 1, pipe=pipe, progress=False)
    other = tmp_path / "other.json"
    other.write_text("{}")
    with pytest.raises(OutputExistsError, match="--force"):  # never overwrite another file
        tune("fbcache", Target.of(min_psnr=TARGET), out=out, num_prompts=1, steps=STEPS, pipe=pipe, progress=False,
             max_evaluations=5, save=other)
    assert other.read_text() == "{}"
    assert main(["tune", "fbcache", "--min-psnr", "25", "--prompts", "1", "--steps", str(STEPS + 1), "--out",
                 str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after the loader's progress bar)
    assert err.startswith("diffcache tune: error:") and "--force" in err


def test_bad_targets_are_one_line_errors(tmp_path, capsys):
    for argv in (["--min-psnr", "-3"], ["--speedup", "0.5"], [], ["--min-psnr", "30", "--speedup", "2"]):
        assert main(["tune", "fbcache", *argv, "--out", str(tmp_path / "t")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("diffcache tune: error:") and "\n" not in err
    assert main(["tune", "nope", "--min-psnr", "30", "--out", str(tmp_path / "t")]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_bench_warns_when_it_runs_a_preset_on_its_calibration_items(tuned):
    _, result = tuned
    document = result.preset
    specs = parse_methods(f"none,fbcache:{result.preset_path}")
    prompt, seed = document["tuned_on"]["prompts"][0], document["tuned_on"]["seeds"][0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert warn_calibration_overlap(specs, plan_items(["a red circle moving left"], 2)) == []  # seeds 0, 1
        notes = warn_calibration_overlap(specs, [Item(0, prompt, seed)])
    assert len(notes) == 1 and "tuned on 1 of these 1 items" in notes[0] and "\n" not in notes[0]
    assert [w.category for w in caught] == [CalibrationOverlapWarning]


def test_a_composition_searches_each_part(pipe, tmp_path):
    result = tune("teacache+cfg-cache", Target.of(min_psnr=20), out=tmp_path, num_prompts=1, steps=STEPS, pipe=pipe,
                  progress=False, max_evaluations=6)
    document = result.preset
    assert document["method"] == "teacache+cfg-cache" and set(document["configs"]) == {"teacache", "cfg-cache"}
    assert "threshold" in document["configs"]["teacache"] and "schedule" in document["configs"]["cfg-cache"]
    assert len({json.dumps(e["knobs"]["teacache"]) for e in result.evaluations}) > 1  # teacache's knob was searched
    configs = load_preset(result.preset_path)
    assert [type(c).__name__ for c in configs] == ["TeaCacheConfig", "CFGCacheConfig"]
    assert result.chosen["psnr"] >= 20
    with diffcache.enable(pipe, "teacache+cfg-cache", preset=str(result.preset_path)):  # the composition's own loader
        _generate(pipe, "a red circle moving left", 0)

"""The shipped model's quality gate, the demo (main job) and the side-by-side clips on it."""

from pathlib import Path

import pytest

from diffcache.cli import main


@pytest.mark.slow
def test_shipped_model_meets_the_adherence_gate(shipped_pipe):
    from diffcache.embedded.evaluate import evaluate_adherence

    """On the held-out seeds (1,000,000 …, which no recipe choice or checkpoint was selected on) the shipped weights
    reach adherence 90.1 % (shape 75.0 %) and clean 60.9 %: this gate guards that level, a few clips below it.
    The targets of docs/embedded-models.md (adherence ≥ 95 %, clean ≥ 90 %) are not reached yet; the earlier
    gate (adherence ≥ 90 %, every attribute ≥ 80 %) was met on seeds 0–63, the ones the recipe was tuned on."""
    report = evaluate_adherence(shipped_pipe, num_prompts=64, num_inference_steps=30, guidance_scale=5.0,
                                progress=False)
    assert report.seed_start == 1_000_000
    assert report.adherence >= 0.88 and report.colour >= 0.95 and report.direction >= 0.9, report.summary()
    assert report.shape >= 0.7, report.summary()
    assert report.clean >= 0.55 and report.present >= 0.95 and report.uniform_background >= 0.95, report.summary()


def test_demo_is_the_short_benchmark_and_resumes(tmp_path, capsys):
    """`diffcache demo` (= `make demo`) is `diffcache bench` with the demo's arguments: the same folder, resumed."""
    from diffcache.bench.defaults import DEFAULT_METHODS
    from diffcache.demo import DEMO

    out = tmp_path / "demo"
    small = ["--prompts", "1", "--steps", "2", "--repeats", "1"]
    assert main(["demo", "--out", str(out), *small, "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "1 of 1 videos" in text and f"report: {out / 'index.html'}" in text
    assert (out / "results.jsonl").exists() and (out / "index.html").exists()
    assert DEMO["methods"] == DEFAULT_METHODS and DEMO["out"] == "out/demo"
    finished = (out / "results.jsonl").read_text()
    bench = ["bench", "--methods", DEFAULT_METHODS, "--out", str(out), *small, "--no-progress"]
    assert main(bench) == 0  # the same configuration: resumed, nothing rerun
    assert (out / "results.jsonl").read_text() == finished and "1 of 1 videos" in capsys.readouterr().out
    makefile = (Path(__file__).parents[2] / "Makefile").read_text()
    assert "demo: $(STAMP)\n\t$(BIN)/diffcache demo\n" in makefile  # make demo runs exactly this command


def test_clips_writes_side_by_side_clips_and_index(tmp_path, capsys):
    out = tmp_path / "clips"
    assert main(["clips", "--out", str(out), "--steps", "4"]) == 0
    page = (out / "index.html").read_text()
    gifs = sorted(p.name for p in out.glob("*.gif"))
    assert len(gifs) == 6 and all(name in page for name in gifs)
    assert "uncached vs adacache:fast" in page and "Overall speedup" in page
    out_text = capsys.readouterr().out
    assert "report:" in out_text and "steps computed" in out_text
    assert main(["clips", "--out", str(out), "--steps", "4"]) == 2  # no silent overwrite


def test_clips_refuses_an_unknown_method_before_any_work(tmp_path, capsys):
    assert main(["clips", "--out", str(tmp_path / "clips"), "--method", "adacache:turbo"]) == 2
    assert "presets: fast" in capsys.readouterr().err and not (tmp_path / "clips").exists()


def test_evaluate_writes_a_contact_sheet_and_never_overwrites_it(tmp_path, capsys):
    import json

    grid, report = tmp_path / "grid.png", tmp_path / "report.json"
    args = ["evaluate", "--model", "tiny-shapes-t2i", "--prompts", "2", "--steps", "3", "--grid", str(grid),
            "--json", str(report)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"contact sheet: {grid}" in out and "clean" in out
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(report.read_text())
    assert saved["seed_start"] == 1_000_000 and len(saved["per_prompt"]) == 2  # held-out seeds by default
    assert {"clean", "objects", "present_every_frame", "background_uniform"} <= set(saved["per_prompt"][0])
    before = grid.read_bytes()
    assert main(args) == 2  # both files exist: refused, nothing touched
    assert "--force" in capsys.readouterr().err and grid.read_bytes() == before
    assert main([*args, "--force", "--seed-start", "0"]) == 0
    assert json.loads(report.read_text())["seed_start"] == 0

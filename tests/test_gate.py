"""The shipped model's quality gate and the demo (main job) on it."""

import pytest

from diffcache.cli import main


@pytest.mark.slow
def test_shipped_model_meets_the_adherence_gate(shipped_pipe):
    from diffcache.embedded.evaluate import evaluate_adherence

    report = evaluate_adherence(shipped_pipe, num_prompts=64, num_inference_steps=30, guidance_scale=5.0,
                                progress=False)
    assert report.adherence >= 0.90, report.summary()
    assert min(report.colour, report.shape, report.direction) >= 0.8, report.summary()


def test_demo_writes_clips_and_index(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "4"]) == 0
    page = (out / "index.html").read_text()
    gifs = sorted(p.name for p in out.glob("*.gif"))
    assert len(gifs) == 6 and all(name in page for name in gifs)
    assert "uncached vs adacache:fast" in page and "Overall speedup" in page
    out_text = capsys.readouterr().out
    assert "report:" in out_text and "steps computed" in out_text
    assert main(["demo", "--out", str(out), "--steps", "4"]) == 2  # no silent overwrite


def test_demo_refuses_an_unknown_method_before_any_work(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--method", "adacache:turbo"]) == 2
    assert "presets: fast" in capsys.readouterr().err and not (tmp_path / "demo").exists()

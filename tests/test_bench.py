"""The benchmark: method specs, quality metrics by hand, a small end-to-end run and its files."""

import json

import numpy as np
import pytest

from diffcache.bench import metrics
from diffcache.bench.runner import MethodSpec, bench_prompts, parse_methods, run_bench, write_bench
from diffcache.cli import main
from diffcache.methods import UnknownMethodError


def test_method_specs():
    specs = parse_methods("adacache:fast,adacache, adacache:slow-moreg[moreg_norm=0.24;metric_blocks=(1,2)]")
    assert [s.label for s in specs] == ["none", "adacache:fast", "adacache:fast-moreg",
                                        "adacache:slow-moreg[moreg_norm=0.24;metric_blocks=(1, 2)]"]
    assert dict(specs[3].overrides) == {"moreg_norm": 0.24, "metric_blocks": (1, 2)}
    assert parse_methods("none,adacache:fast")[0] == MethodSpec("none")


@pytest.mark.parametrize("text,match", [
    ("adacash", "methods: .*adacache"),
    ("adacache:fastest", "presets: fast, slow"),
    ("none:fast", "takes no preset"),
    ("adacache:fast[speed]", "option=value"),
    ("adacache:fast[thresholds=1]", "no option 'thresholds'"),
    ("adacache:fast[codebook=((0.2,1),(0.1,2))]", "strictly increasing"),
    ("adacache:fast,adacache:fast", "listed twice"),
])
def test_bad_method_specs_say_what_is_accepted(text, match):
    with pytest.raises((UnknownMethodError, ValueError), match=match):
        parse_methods(text)


def test_psnr_and_ssim_by_hand():
    rng = np.random.default_rng(0)
    video = rng.random((2, 16, 16, 3))
    assert metrics.psnr(video, video) == metrics.PSNR_CAP
    assert metrics.psnr(np.full((1, 4, 4, 3), 0.1), np.zeros((1, 4, 4, 3))) == pytest.approx(20.0)
    assert metrics.ssim(video, video) == pytest.approx(1.0)
    # a constant offset leaves structure and contrast; luminance term only: (2ab + c1) / (a^2 + b^2 + c1)
    flat = np.full((1, 16, 16, 3), 0.2)
    assert metrics.ssim(flat + 0.2, flat) == pytest.approx((2 * 0.4 * 0.2 + 1e-4) / (0.16 + 0.04 + 1e-4))
    assert metrics.ssim(rng.random((1, 16, 16, 3)), video[:1]) < 0.2


def test_bench_prompts_cover_the_grammar():
    pairs = bench_prompts(16)
    assert [seed for _, seed in pairs] == list(range(16))
    assert {p.split()[1] for p, _ in pairs} == {"red", "green", "blue", "yellow", "white"}
    assert {p.split()[-1] for p, _ in pairs} == {"left", "right", "up", "down"}


def test_bench_end_to_end(shipped_pipe, tmp_path):
    result = run_bench(shipped_pipe, parse_methods("adacache:fast,adacache:slow"), num_prompts=2, steps=30,
                       repeats=1, progress=False, model_name="tiny-shapes-t2v")
    by_method = {s["method"]: s for s in result.summary}
    assert by_method["none"]["psnr"] == metrics.PSNR_CAP and by_method["none"]["computed_mean"] == 30
    fast, slow = by_method["adacache:fast"], by_method["adacache:slow"]
    assert fast["computed_mean"] < slow["computed_mean"] < 30
    assert 15 < fast["psnr"] < slow["psnr"] < metrics.PSNR_CAP
    assert len(result.rows) == 6 and all(len(r["seconds"]) == 1 for r in result.rows)
    paths = write_bench(result, tmp_path)
    assert json.loads(paths[0].read_text())["config"]["steps"] == 30
    assert "| adacache:fast |" in paths[1].read_text()
    with pytest.raises(FileExistsError):
        write_bench(result, tmp_path)


def test_bench_cli_refuses_bad_input_before_work(tmp_path, capsys):
    assert main(["bench", "--methods", "adacache:fastest", "--out", str(tmp_path)]) == 2
    assert "presets: fast" in capsys.readouterr().err
    assert main(["bench", "--prompts", "0", "--out", str(tmp_path)]) == 2
    (tmp_path / "table.md").write_text("keep me")
    assert main(["bench", "--prompts", "1", "--out", str(tmp_path)]) == 2
    assert (tmp_path / "table.md").read_text() == "keep me"


def test_methods_command_lists_presets(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "adacache" in out and "fast-moreg (default)" in out and "LTX-Video" in out

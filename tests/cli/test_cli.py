import subprocess
import sys

import imageio.v3 as iio
import pytest

from diffcache.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, random_pipe):
    path = tmp_path_factory.mktemp("model") / "pipe"
    random_pipe.save_pretrained(path)
    return path


def test_generate_gif_and_mp4(model_dir, tmp_path, capsys):
    gif = tmp_path / "clip.gif"
    assert main(["generate", "--model", str(model_dir), "--prompt", "a red circle moving left", "--steps", "2",
                 "--out", str(gif)]) == 0
    assert "generated in" in capsys.readouterr().out
    frames = iio.imread(gif, index=None)
    assert frames.shape[0] == 8 and frames.shape[1] >= 256  # enlarged for viewing
    mp4 = tmp_path / "clip.mp4"
    assert main(["generate", "--model", str(model_dir), "--prompt", "a red circle moving left", "--steps", "2",
                 "--cfg-mode", "batched", "--out", str(mp4)]) == 0
    import imageio_ffmpeg

    assert imageio_ffmpeg.count_frames_and_secs(str(mp4))[0] == 8


def test_generate_with_a_method(model_dir, tmp_path, capsys):
    out = tmp_path / "fast.gif"
    assert main(["generate", "--model", str(model_dir), "--prompt", "a red circle moving left", "--steps", "30",
                 "--method", "adacache:fast", "--out", str(out)]) == 0
    assert "adacache:fast: " in capsys.readouterr().out and out.exists()
    assert main(["generate", "--prompt", "a red circle moving left", "--method", "magcache",
                 "--out", str(tmp_path / "x.gif")]) == 2
    assert "methods: adacache" in capsys.readouterr().err


def test_generate_refuses_to_overwrite(model_dir, tmp_path, capsys):
    out = tmp_path / "clip.gif"
    out.write_bytes(b"precious")
    code = main(["generate", "--model", str(model_dir), "--prompt", "a red circle moving left", "--out", str(out)])
    assert code == 2 and "--force" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"


def test_generate_explains_bad_prompt_and_suffix(model_dir, tmp_path, capsys):
    assert main(["generate", "--model", str(model_dir), "--prompt", "a red dragon", "--out",
                 str(tmp_path / "x.gif")]) == 2
    err = capsys.readouterr().err
    assert "'dragon'" in err and "Accepted words" in err and "Traceback" not in err
    assert main(["generate", "--model", str(model_dir), "--prompt", "a red circle moving up", "--out",
                 str(tmp_path / "x.avi")]) == 2
    assert ".gif or .mp4" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_generate_hub_id_offline_is_one_line(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "diffcache.cli", "generate", "--model", "someone/some-video-model",
                           "--prompt", "a cat", "--out", str(tmp_path / "cat.mp4")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "Warning" not in line]
    assert len(lines) == 1 and "could not load 'someone/some-video-model'" in lines[0], proc.stderr


def test_train_and_evaluate_commands(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "tiny-shapes-t2v", "--out", str(run), "--steps", "3", "--batch-size", "2"]) == 0
    assert (run / "model" / "model_index.json").exists()
    assert main(["train", "tiny-shapes-t2v", "--out", str(run), "--steps", "3", "--batch-size", "2"]) == 2
    assert "--force" in capsys.readouterr().err
    report = tmp_path / "gate.json"
    assert main(["evaluate", "--model", str(run / "model"), "--prompts", "2", "--steps", "2",
                 "--json", str(report)]) == 0
    assert "adherence" in capsys.readouterr().out and report.exists()


def test_help_has_examples(capsys):
    for command in ("generate", "train", "evaluate", "bench", "calibrate", "methods", "demo", "clips", "distill"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "examples:" in capsys.readouterr().out


def test_help_answers_without_loading_torch():
    """`diffcache --help` and every command's --help build the parsers only: no torch, diffusers or numpy."""
    code = """
import sys
from diffcache.cli import COMMANDS, main
for argv in ([], *([c] for c in COMMANDS), ["distill", "gallery"]):
    try:
        main([*argv, "--help"])
    except SystemExit as exit:
        assert exit.code == 0, argv
heavy = sorted(m for m in ("torch", "diffusers", "numpy", "matplotlib") if m in sys.modules)
assert not heavy, heavy
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "diffcache bench --out out/bench" in proc.stdout and "calibrated:\n  teacache" in proc.stdout


def test_a_misspelt_method_answers_without_loading_torch(tmp_path):
    """A misspelt method name is an argument error: one line, exit code 2, before torch or diffusers is imported
    (they take seconds), for every command that takes a method."""
    code = """
import sys
from diffcache.cli import main
for argv in (["bench", "--methods", "none,adacache:fast,nope", "--out", "b"], ["tune", "nope", "--min-psnr", "30"],
             ["generate", "--prompt", "a red circle moving left", "--method", "nope", "--out", "c.gif"],
             ["evaluate", "--method", "nope"], ["clips", "--method", "nope:fast", "--out", "c"]):
    assert main(argv) == 2, argv
heavy = sorted(m for m in ("torch", "diffusers") if m in sys.modules)
assert not heavy, heavy
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 5 and all("error: " in line and "unknown method 'nope'" in line for line in lines), lines
    assert "--methods: " in lines[0] and "METHOD: " in lines[1] and all("--method: " in line for line in lines[2:])
    assert not any(tmp_path.iterdir())


def test_errors_are_one_line_and_debug_reraises(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "no-such-run"
    assert main(["distill", "gallery", str(missing), "--out", str(tmp_path / "g.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffcache distill: error: ") and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("DIFFCACHE_DEBUG", "1")
    from diffcache.errors import DiffcacheError

    with pytest.raises((DiffcacheError, OSError)):
        main(["distill", "gallery", str(missing), "--out", str(tmp_path / "g.html")])


@pytest.mark.parametrize("family, size", [("wan", ("16", "16", "9")), ("cogvideox", ("16", "16", "9")),
                                          ("ltx", ("32", "32", "9"))])
def test_generate_with_a_real_diffusers_pipeline_folder(tmp_path, family, size):
    """`--model DIR` loads a supported diffusers video pipeline: tiny random-weight ones built offline."""
    import tiny_diffusers

    getattr(tiny_diffusers, f"tiny_{family}_pipeline")().save_pretrained(tmp_path / family)
    out = tmp_path / f"{family}.gif"
    height, width, frames = size
    assert main(["generate", "--model", str(tmp_path / family), "--prompt", "a cat surfing", "--steps", "2",
                 "--height", height, "--width", width, "--frames", frames, "--out", str(out)]) == 0
    assert iio.imread(out, index=None).shape[0] == int(frames)


def test_bad_numbers_are_refused_before_any_work(tmp_path, capsys):
    assert main(["generate", "--prompt", "a red circle moving left", "--fps", "0", "--out",
                 str(tmp_path / "a.gif")]) == 2
    assert "--fps must be at least 1" in capsys.readouterr().err
    assert main(["train", "tiny-shapes-t2v", "--out", str(tmp_path / "run"), "--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
    # train --steps counts optimiser steps: far more than the 10,000 sampling steps, but still bounded
    assert main(["train", "tiny-shapes-t2v", "--out", str(tmp_path / "run"), "--steps", "10000001"]) == 2
    assert "--steps must be at most 10,000,000, got 10,000,001" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())

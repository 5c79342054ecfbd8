"""Checks at the edge (issue 24): a bad option of ``diffcache generate`` (and of the commands that share its options)
is one line naming the option and what is accepted, exit code 2, no traceback, before the pipeline loads, and
nothing written; Ctrl-C is one line, exit code 130, and no output."""

import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import diffcache.loading
from diffcache.cli import main
from diffcache.validation import (SEED_MAX, check_guidance, check_seed, model_limits, pipeline_limits)

PROMPT = "a red circle moving left"


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if the command loads a pipeline: these inputs must be refused before."""
    def load_pipeline(*args, **kwargs):
        raise AssertionError("the pipeline was loaded before the bad input was refused")

    monkeypatch.setattr(diffcache.loading, "load_pipeline", load_pipeline)


def refused(argv, capsys, folder: Path, *needles: str) -> str:
    """Run the command; assert exit 2, one line on stderr naming ``needles``, no traceback, ``folder`` unchanged."""
    before = sorted(folder.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"diffcache {argv[0]}: error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    assert sorted(folder.rglob("*")) == before  # nothing written, no temporary file left
    return err


def generate(tmp_path, *options, out="x.gif"):
    return ["generate", "--prompt", PROMPT, "--steps", "2", *options, "--out", str(tmp_path / out)]


# -- sizes against the model's positional range --------------------------------------------------------------------
def test_frames_beyond_the_rope_range(tmp_path, capsys, no_loading):
    refused(generate(tmp_path, "--frames", "100000"), capsys, tmp_path,
            "--frames 100000", "rope_max_seq_len", "multiples of 2 from 2 to 128")
    refused(generate(tmp_path, "--frames", "7"), capsys, tmp_path, "--frames 7", "multiples of 2 from 2 to 128")


def test_height_and_width_beyond_the_rope_range(tmp_path, capsys, no_loading):
    refused(generate(tmp_path, "--height", "2048", "--width", "2048"), capsys, tmp_path,
            "--height 2048", "multiples of 4 from 4 to 256")
    refused(generate(tmp_path, "--width", "260"), capsys, tmp_path, "--width 260", "from 4 to 256")
    refused(["generate", "--model", "tiny-shapes-t2i", "--prompt", "a red circle", "--height", "30", "--out",
             str(tmp_path / "x.png")], capsys, tmp_path, "--height 30", "multiples of 8")
    # the commands that share the options share the check
    refused(["evaluate", "--height", "2048"], capsys, tmp_path, "--height 2048", "from 4 to 256")
    refused(["bench", "--frames", "1000", "--out", str(tmp_path / "bench")], capsys, tmp_path, "--frames 1000",
            "from 2 to 128")


def _rope_fits(rope, latent_shape) -> bool:
    import torch

    try:
        rope(torch.empty(1, 1, *latent_shape))
    except RuntimeError:
        return False
    return True


def test_limits_are_where_diffusers_rope_ends():
    """The accepted maxima are exactly where diffusers' ``WanRotaryPosEmbed`` stops working: the largest value
    gives a latent it embeds, the next one a latent it fails on (each axis alone, the others one patch)."""
    from diffusers import WanTransformer3DModel
    from tiny_parts import WAN_TRANSFORMER

    from diffcache.embedded.t2i import pipeline as t2i
    from diffcache.embedded.t2v import pipeline as t2v
    from diffcache.validation import EMBEDDED_UNSHUFFLE, _limits

    assert EMBEDDED_UNSHUFFLE == t2v.UNSHUFFLE == t2i.UNSHUFFLE  # the packing the size checks assume

    embedded = model_limits("tiny-shapes-t2v")
    config = dict(WanTransformer3DModel.load_config(diffcache.loading.embedded_model_path("tiny-shapes-t2v")
                                                     / "transformer"))
    cases = [(embedded, WanTransformer3DModel.from_config(config).rope),
             (_limits("tiny-wan", "WanPipeline", WAN_TRANSFORMER, {"scale_factor_temporal": 4,
                                                                  "scale_factor_spatial": 8}),
              WanTransformer3DModel(**WAN_TRANSFORMER, num_layers=1).rope)]
    assert (embedded.max_frames(), embedded.max_pixels(1), embedded.max_pixels(2)) == (128, 256, 256)
    for limits, rope in cases:
        p_t, p_h, p_w = limits.patch
        frames, height = limits.max_frames(), limits.max_pixels(1)
        step = limits.multiple
        assert _rope_fits(rope, (limits.latent_frames(frames), p_h, p_w))
        assert not _rope_fits(rope, (limits.latent_frames(frames + limits.frame_multiple), p_h, p_w))
        assert _rope_fits(rope, (p_t, height // limits.spatial, p_w))
        assert not _rope_fits(rope, (p_t, (height + step) // limits.spatial, p_w))
    # a Wan pipeline rounds 126 frames down to 125 (4k + 1): its latent has 32 frames
    assert cases[1][0].latent_frames(126) == cases[1][0].latent_frames(125) == 32


def test_a_pipeline_folder_is_checked_from_its_configs(tmp_path, capsys, monkeypatch):
    """A local Wan folder: its size range is read from model_index.json and the configs, before loading; the same
    limits as the loaded pipeline's (what a hub id is checked with, before its first denoiser call)."""
    import tiny_diffusers

    pipe = tiny_diffusers.tiny_wan_pipeline(num_layers=1)
    folder = tmp_path / "wan"
    pipe.save_pretrained(folder)
    capsys.readouterr()  # its progress bar
    assert model_limits(str(folder)) == pipeline_limits(pipe, str(folder))
    out = tmp_path / "out"
    out.mkdir()

    def load_pipeline(*args, **kwargs):
        raise AssertionError("loaded")

    monkeypatch.setattr(diffcache.loading, "load_pipeline", load_pipeline)
    refused(["generate", "--model", str(folder), "--prompt", "a cat", "--height", "1024", "--out",
             str(out / "x.gif")], capsys, out, "--height 1024", "multiples of 16 from 16 to 512")
    refused(["generate", "--model", str(folder), "--prompt", "a cat", "--frames", "100000", "--out",
             str(out / "x.gif")], capsys, out, "--frames 100000", "1 to 127")


# -- numbers -------------------------------------------------------------------------------------------------------
def test_seed_outside_64_bits(tmp_path, capsys, no_loading):
    for seed in ("99999999999999999999999", "-1", str(2**64)):
        refused(generate(tmp_path, "--seed", seed), capsys, tmp_path, f"--seed {seed}", "0 to 2**64 - 1")
    import torch

    assert check_seed(SEED_MAX) == SEED_MAX  # the top of the range is a seed torch takes
    torch.Generator().manual_seed(SEED_MAX)
    with pytest.raises((RuntimeError, ValueError)):  # and one more it refuses
        torch.Generator().manual_seed(SEED_MAX + 1)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1"])
def test_guidance_not_finite_or_negative(value, tmp_path, capsys, no_loading):
    refused(generate(tmp_path, f"--guidance={value}"), capsys, tmp_path, "--guidance", "finite number >= 0")


def test_guidance_zero_and_below_one_are_accepted(random_pipe):
    """0 and values below 1 disable guidance (as in diffusers); the embedded pipeline runs them."""
    import torch

    assert check_guidance(0) == 0.0 and check_guidance(0.5) == 0.5 and check_guidance(None) is None
    frames = random_pipe(PROMPT, num_inference_steps=1, guidance_scale=0.5, generator=torch.Generator().manual_seed(0),
                         output_type="np").frames
    assert all(math.isfinite(v) for v in frames.reshape(-1)[:64])


# -- prompts -------------------------------------------------------------------------------------------------------
def test_bad_prompt_is_refused_before_loading(tmp_path, capsys, no_loading):
    refused(["generate", "--prompt", "a purple blob", "--out", str(tmp_path / "x.gif")], capsys, tmp_path,
            "--prompt", "'purple'", "Accepted words")
    refused(["generate", "--model", "tiny-shapes-t2i", "--prompt", "a red circle sideways", "--out",
             str(tmp_path / "x.png")], capsys, tmp_path, "--prompt", "'sideways'")
    refused(["bench", "--prompt", "a red dragon", "--out", str(tmp_path / "bench")], capsys, tmp_path, "'dragon'")
    refused(["tune", "fbcache", "--speedup", "2", "--prompt", "a red dragon", "--out", str(tmp_path / "tune")],
            capsys, tmp_path, "'dragon'")
    refused(["calibrate", "teacache", "--prompt", "a circle red", "--out", str(tmp_path / "t.json")], capsys,
            tmp_path, "--prompt", "grammar")


# -- device --------------------------------------------------------------------------------------------------------
def test_unavailable_device(tmp_path, capsys, no_loading):
    import torch

    devices = ["foo", "cuda:99", "meta"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in devices:
        refused(generate(tmp_path, "--device", device), capsys, tmp_path, f"--device {device}",
                "available here: cpu")


# -- outputs -------------------------------------------------------------------------------------------------------
def test_output_under_a_file(tmp_path, capsys, no_loading):
    (tmp_path / "existing.gif").write_bytes(b"GIF89a")
    refused(generate(tmp_path, out="existing.gif/x.gif"), capsys, tmp_path,
            "--out", "existing.gif is a file, not a folder")
    refused(["bench", "--out", str(tmp_path / "existing.gif" / "b")], capsys, tmp_path, "is a file, not a folder")
    assert (tmp_path / "existing.gif").read_bytes() == b"GIF89a"


def test_output_in_a_folder_nobody_can_write(tmp_path, capsys, no_loading):
    if not os.path.isdir("/sys") or os.access("/sys", os.W_OK) and _can_create("/sys"):
        pytest.skip("skipped: /sys is absent or writable here")
    refused(["generate", "--prompt", PROMPT, "--out", "/sys/x.gif"], capsys, tmp_path, "--out /sys/x.gif",
            "cannot write in /sys")
    assert not os.path.exists("/sys/x.gif")


def _can_create(folder) -> bool:
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def test_output_in_a_read_only_folder(tmp_path, capsys, no_loading):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if _can_create(locked):
            pytest.skip("skipped: this user (root) can write in a read-only folder")
        refused(generate(tmp_path, out="locked/x.gif"), capsys, tmp_path, "cannot write in", "locked")
        refused(generate(tmp_path, out="locked/new/x.gif"), capsys, tmp_path, "cannot write in")
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("argv,option", [
    (["bench", "--methods", "none", "--out", ""], "--out"),
    (["demo", "--out", ""], "--out"),
    (["clips", "--out", ""], "--out"),
    (["tune", "fbcache", "--min-psnr", "30", "--out", ""], "--out"),
    (["train", "tiny-shapes-t2v", "--steps", "1", "--out", ""], "--out"),
    (["distill", "tiny-shapes-t2v", "--out", ""], "--out"),
    (["calibrate", "teacache", "--out", ""], "--out"),
    (["evaluate", "--json", ""], "--json"),
    (["metrics", "ref.png", "test.png", "--json", ""], "--json"),
    (["metrics", "ref.png", "test.png", "--csv", " "], "--csv"),
])
def test_an_empty_output_name_is_refused(argv, option, tmp_path, capsys, monkeypatch, no_loading):
    """``--out ''`` (an unset shell variable) names no place; as a path it would be the current folder, so a
    benchmark or a trained model would land among the user's files. Refused, naming the option."""
    monkeypatch.chdir(tmp_path)
    refused(argv, capsys, tmp_path, f"{option} {argv[-1]!r}: ", "empty name" if argv[-1] == "" else "blank name")


@pytest.mark.parametrize("name", ["a\x01b", "\t", "run\n", "\x1b[31mred", "x\x85y", "a\u2028b"])
@pytest.mark.parametrize("argv", [["clips", "--out"], ["bench", "--methods", "none", "--out"],
                                  ["train", "tiny-shapes-t2v", "--steps", "1", "--out"],
                                  ["generate", "--prompt", PROMPT, "--out"]])
def test_an_output_name_with_a_control_character_is_refused(argv, name, tmp_path, capsys, monkeypatch, no_loading):
    """A tab, newline, escape sequence or line separator in an output name: refused in one line that shows the name
    escaped (so the terminal shows it, and the line stays one line), before any work."""
    monkeypatch.chdir(tmp_path)
    name = name + ".gif" if argv[0] == "generate" else name
    refused([*argv, name], capsys, tmp_path, f"--out {name!r}: the name holds a control character or line separator "
            "(U+")


@pytest.mark.parametrize("argv", [
    ["train", "tiny-shapes-t2v", "--steps", "1", "--out", "afile/run"],
    ["demo", "--out", "afile/demo"],
    ["distill", "tiny-shapes-t2v", "--out", "afile/run"],
    ["tune", "fbcache", "--min-psnr", "30", "--save", "afile/x.json"],
    ["metrics", "ref.png", "test.png", "--json", "afile/x.json"],
    ["metrics", "ref.png", "test.png", "--csv", "afile/x.csv"],
])
def test_an_output_under_a_file_is_refused_before_any_work(argv, tmp_path, capsys, monkeypatch, no_loading):
    """The place of every output is checked first, naming its option (was: the system's bare 'afile: File exists'
    from metrics, and tune --save accepted until the search had run)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("keep me")
    refused(argv, capsys, tmp_path, f"{argv[-2]} {argv[-1]}: ", "afile is a file, not a folder")
    assert (tmp_path / "afile").read_text() == "keep me"


def test_an_empty_prompts_file_name_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused(["metrics", "ref.png", "test.png", "--prompts", ""], capsys, tmp_path, "--prompts '': an empty name")


def test_an_output_file_that_is_a_folder_names_its_option(tmp_path, capsys, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    for name in ("ref.png", "test.png"):
        Image.new("RGB", (16, 16), (100, 100, 100)).save(name)
    (tmp_path / "adir").mkdir()
    for option in ("--json", "--csv"):
        for folder in (".", "adir"):
            refused(["metrics", "ref.png", "test.png", "--no-lpips", option, folder], capsys, tmp_path,
                    f"{option} {folder}: is a folder")


def test_out_of_memory_is_one_line(monkeypatch, capsys):
    """The host refusing an allocation is one line and exit 2, whichever way it is raised: Python's
    MemoryError, or the RuntimeError torch's CPU allocator raises; any other RuntimeError is a bug and escapes."""
    import diffcache.cli.methods

    allocator = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                 "tried to allocate 393216000 bytes. Error code 12 (Cannot allocate memory)")
    for error in (MemoryError(), RuntimeError(allocator)):
        def run(args, error=error):
            raise error

        monkeypatch.setattr(diffcache.cli.methods, "run", run)
        assert main(["methods"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("diffcache methods: error: out of memory (") and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(diffcache.cli.methods, "run", lambda args: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["methods"])


def test_an_interrupted_write_leaves_no_file(tmp_path):
    """Ctrl-C while a clip is being written: the temporary file beside it is removed, the output never appears."""
    from diffcache.files import atomic_path

    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "clip.gif") as tmp:
            tmp.write_bytes(b"GIF89a half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


# -- Ctrl-C --------------------------------------------------------------------------------------------------------
def test_ctrl_c_while_denoising(tmp_path):
    """SIGINT once the progress bar shows a step: one line, exit 130, no clip and no temporary file."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(diffcache.__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "clip.gif"
    child = subprocess.Popen(
        [sys.executable, "-m", "diffcache.cli", "generate", "--prompt", PROMPT, "--steps", "200", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a background job may have it ignored
    os.set_blocking(child.stderr.fileno(), False)
    err, deadline = b"", time.monotonic() + 45
    started = lambda: re.search(rb"\| *[1-9]\d*/200 ", err)  # noqa: E731 - tqdm may show 4/200 first, not 1/200
    while not started() and child.poll() is None and time.monotonic() < deadline:
        err += child.stderr.read() or b""
        time.sleep(0.02)
    assert started(), err.decode()[-500:]
    child.send_signal(signal.SIGINT)
    _, rest = child.communicate(timeout=30)
    lines = (err + (rest or b"")).decode().splitlines()
    assert child.returncode == 130
    assert lines[-1] == "diffcache generate: interrupted" and "Traceback" not in "\n".join(lines)
    assert [line for line in lines if line.startswith("diffcache")] == lines[-1:]
    assert list(tmp_path.iterdir()) == []  # no clip, no temporary file beside it


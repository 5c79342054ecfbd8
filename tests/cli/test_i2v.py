"""`diffcache generate --image` and `diffcache bench --images` on tiny random-weight image-to-video pipelines
(tests/tiny_i2v.py), saved to a folder and loaded by the command line as a user's would be."""

import json
import types

import imageio.v3 as iio
import numpy as np
import pytest

from diffcache.cli import main


@pytest.fixture(autouse=True)
def _ftfy(monkeypatch):
    """diffusers 0.42.1's Wan image-to-video prompt cleaning calls ftfy unguarded; it is not installed here."""
    import diffusers.pipelines.wan.pipeline_wan_i2v as wan_i2v

    monkeypatch.setattr(wan_i2v, "ftfy", types.SimpleNamespace(fix_text=lambda text: text), raising=False)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """name → folder of each tiny I2V pipeline (built and saved once)."""
    import tiny_i2v

    root = tmp_path_factory.mktemp("i2v")
    cache = {}

    def get(name):
        if name not in cache:
            build = tiny_i2v.I2V_PIPELINES[name][0] if name in tiny_i2v.I2V_PIPELINES else getattr(tiny_i2v, name)
            build().save_pretrained(root / name)
            cache[name] = root / name
        return cache[name]

    return get


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    """A 48 × 40 first frame (not the clip's aspect ratio: it is cropped), red left half, blue right half."""
    from PIL import Image

    data = np.zeros((40, 48, 3), np.uint8)
    data[:, :24] = (220, 30, 30)
    data[:, 24:] = (30, 30, 220)
    path = tmp_path_factory.mktemp("frame") / "first.png"
    Image.fromarray(data).save(path)
    return path


@pytest.mark.parametrize("name", ["wan-i2v", "cogvideox-i2v", "ltx-i2v", "svd"])
def test_generate_with_a_first_frame_and_a_method(name, folders, frame, tmp_path, capsys):
    import tiny_i2v

    _, (height, width, frames), method = tiny_i2v.I2V_PIPELINES[name]
    out = tmp_path / f"{name}.gif"
    prompt = [] if name == "svd" else ["--prompt", "a cat surfing"]  # SVD takes no prompt
    assert main(["generate", "--model", str(folders(name)), "--image", str(frame), *prompt, "--steps", "4",
                 "--height", height, "--width", width, "--frames", frames, "--method", method,
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{method}" in printed and "steps computed" in printed
    assert iio.imread(out, index=None).shape[0] == int(frames)


def test_the_first_frame_is_cropped_to_the_clip_and_resized():
    from PIL import Image

    from diffcache.generation import prepare_image

    class Pipe:  # a call signature is all prepare_image reads
        def __call__(self, image=None, height: int = 16, width: int = 32):
            pass

    wide = np.zeros((20, 80, 3), np.uint8)
    wide[:, 20:60] = 255  # the centre 40 columns: what a 1:2 crop of a 20-row image keeps
    fitted = prepare_image(Pipe(), Image.fromarray(wide))
    assert fitted.size == (32, 16) and np.asarray(fitted).min() > 200  # sides cut, not squeezed in
    assert prepare_image(Pipe(), Image.fromarray(wide), height=8, width=8).size == (8, 8)


def test_ltx_condition_runs_with_and_without_a_first_frame(folders, frame, tmp_path):
    size = ["--height", "32", "--width", "32", "--frames", "9", "--steps", "2"]
    model = str(folders("tiny_ltx_condition_pipeline"))
    assert main(["generate", "--model", model, "--prompt", "a cat", *size, "--out", str(tmp_path / "a.gif")]) == 0
    assert main(["generate", "--model", model, "--prompt", "a cat", "--image", str(frame), *size,
                 "--out", str(tmp_path / "b.gif")]) == 0


def _one_line_error(capsys) -> str:
    """The error line (loading a pipeline also prints diffusers' progress bars to stderr)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "diffcache generate: error: " in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_image_errors_are_one_line_before_loading(folders, frame, tmp_path, capsys, monkeypatch):
    import diffcache.loading

    def no_loading(*args, **kwargs):
        raise AssertionError("the pipeline was loaded")

    wan_i2v, svd = str(folders("wan-i2v")), str(folders("svd"))
    monkeypatch.setattr(diffcache.loading, "load_pipeline", no_loading)
    out = str(tmp_path / "x.gif")
    # an image-to-video pipeline without its first frame
    assert main(["generate", "--model", wan_i2v, "--prompt", "a cat", "--out", out]) == 2
    assert "WanImageToVideoPipeline, an image-to-video pipeline: give its first frame with --image" in \
        _one_line_error(capsys)
    # a missing, a folder, an unreadable file
    for bad, says in ((tmp_path / "nope.png", "does not exist"), (tmp_path, "is a folder")):
        assert main(["generate", "--model", wan_i2v, "--prompt", "a cat", "--image", str(bad), "--out", out]) == 2
        assert says in _one_line_error(capsys)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    assert main(["generate", "--model", wan_i2v, "--prompt", "a cat", "--image", str(junk), "--out", out]) == 2
    assert "cannot read image" in _one_line_error(capsys)
    # an image given to text-only pipelines (the embedded models; a text-to-image one too)
    for model in ("tiny-shapes-t2v", "tiny-shapes-t2i"):
        assert main(["generate", "--model", model, "--prompt", "a red circle", "--image", str(frame),
                     "--out", out]) == 2
        err = _one_line_error(capsys)
        assert "takes no image" in err and "WanImageToVideoPipeline" in err and "StableVideoDiffusionPipeline" in err
    # the prompt: needed by Wan I2V, refused by SVD
    assert main(["generate", "--model", wan_i2v, "--image", str(frame), "--out", out]) == 2
    assert "needs a text prompt: give --prompt" in _one_line_error(capsys)
    assert main(["generate", "--model", svd, "--image", str(frame), "--prompt", "a cat", "--out", out]) == 2
    assert "takes no text prompt" in _one_line_error(capsys)
    assert not (tmp_path / "x.gif").exists()


def test_image_given_to_a_text_to_video_diffusers_folder(tmp_path, frame, capsys):
    import tiny_diffusers

    tiny_diffusers.tiny_cogvideox_pipeline().save_pretrained(tmp_path / "cog")
    capsys.readouterr()
    assert main(["generate", "--model", str(tmp_path / "cog"), "--prompt", "a cat", "--image", str(frame),
                 "--out", str(tmp_path / "x.gif")]) == 2
    assert "CogVideoXPipeline, which takes no image" in _one_line_error(capsys)


def test_missing_ftfy_is_one_line(folders, frame, tmp_path, capsys, monkeypatch):
    import diffusers.pipelines.wan.pipeline_wan_i2v as wan_i2v

    monkeypatch.delattr(wan_i2v, "ftfy")
    assert main(["generate", "--model", str(folders("wan-i2v")), "--prompt", "a cat", "--image", str(frame),
                 "--height", "16", "--width", "16", "--frames", "5", "--steps", "2",
                 "--out", str(tmp_path / "x.gif")]) == 2
    assert "pip install ftfy" in _one_line_error(capsys)


def test_generate_help_shows_an_image_example(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "--image first_frame.png" in capsys.readouterr().out


def _bench(model, out, *extra):
    return main(["bench", "--model", model, "--methods", "none,fbcache", "--steps", "2", "--repeats", "1",
                 "--height", "32", "--width", "32", "--frames", "9", "--no-progress", "--out", str(out), *extra])


def test_bench_with_an_image_set(folders, frame, tmp_path, capsys):
    from PIL import Image

    model, out = str(folders("ltx-i2v")), tmp_path / "bench"
    images = tmp_path / "frames"
    images.mkdir()
    Image.open(frame).save(images / "a.png")
    assert _bench(model, out, "--prompt", "a cat surfing", "--images", str(images)) == 0
    capsys.readouterr()
    config = json.loads((out / "config.json").read_text())
    assert config["prompts"] == ["a cat surfing"] and len(config["images"]) == 1
    assert config["images"][0][0] == str((images / "a.png").resolve())
    record = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert record["image"] == str(images / "a.png") and set(record["methods"]) == {"none", "fbcache:default"}
    assert not record["skipped"]
    assert "image a.png" in (out / "index.html").read_text()
    # the same images resume (nothing to redo); another image set, or the same file changed, is refused
    assert _bench(model, out, "--prompt", "a cat surfing", "--images", str(images)) == 0
    capsys.readouterr()
    Image.new("RGB", (32, 32), (0, 200, 0)).save(tmp_path / "green.png")
    assert _bench(model, out, "--prompt", "a cat surfing", "--images", str(tmp_path / "green.png")) == 2
    err = capsys.readouterr().err
    assert "different configuration (images:" in err and "--force" in err
    Image.new("RGB", (32, 32), (0, 200, 0)).save(images / "a.png")
    assert _bench(model, out, "--prompt", "a cat surfing", "--images", str(images)) == 2
    assert "different configuration (images:" in capsys.readouterr().err


def test_bench_image_errors(folders, frame, tmp_path, capsys):
    model, out = str(folders("ltx-i2v")), tmp_path / "bench"
    assert _bench(model, out, "--prompt", "a cat surfing") == 2
    assert "image-to-video pipeline: give its first frame with --images" in capsys.readouterr().err
    assert _bench("tiny-shapes-t2v", out, "--images", str(frame)) == 2
    assert "TinyShapesT2VPipeline, which takes no image; --images is for" in capsys.readouterr().err
    assert _bench(model, out, "--prompt", "a", "--prompt", "b", "--prompt", "c", "--images", str(frame),
                  str(frame)) == 2
    assert "3 prompts and 2 images cannot be paired" in capsys.readouterr().err
    assert _bench(model, out, "--prompt", "a", "--images", str(tmp_path)) == 2  # a folder without images
    assert "holds no image files" in capsys.readouterr().err
    assert not out.exists()


def test_image_pairing():
    from pathlib import Path

    from diffcache.bench.prompts import pair_images, plan_items

    a, b = Path("a.png"), Path("b.png")
    assert pair_images(["x", "y"], [a, b]) == (["x", "y"], ["a.png", "b.png"])
    assert pair_images(["x"], [a, b]) == (["x", "x"], ["a.png", "b.png"])
    assert pair_images(["x", "y"], [a]) == (["x", "y"], ["a.png", "a.png"])
    assert pair_images([], [a, b]) == (["", ""], ["a.png", "b.png"])
    items = plan_items(["x", "y"], seeds=2, images=["a.png", "b.png"])
    assert [(it.prompt, it.seed, it.image) for it in items] == [("x", 0, "a.png"), ("x", 1, "a.png"),
                                                                ("y", 2, "b.png"), ("y", 3, "b.png")]

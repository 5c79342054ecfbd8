"""`diffcache metrics REF TEST` on videos, images and folders: the numbers equal the library functions on the
decoded frames, every row names its protocol, outputs are never overwritten without --force, and bad input gets
one line and exit code 2."""

import csv
import json

import imageio.v3 as iio
import numpy as np
import pytest

from diffcache.cli import main
from diffcache.files import write_image, write_video
from diffcache.quality.media import read_media
from diffcache.quality.protocols import psnr, ssim
from diffcache.quality.temporal import temporal_flickering


def moving_square(offset=0.0, frames=8, size=32):
    video = np.full((frames, size, size, 3), 0.1)
    for t in range(frames):
        video[t, 8:16, 2 + 2 * t:10 + 2 * t] = (0.9, 0.2 + offset, 0.1)
    return video


@pytest.fixture
def folders(tmp_path):
    ref, test = tmp_path / "ref", tmp_path / "test"
    ref.mkdir()
    test.mkdir()
    noisy = np.clip(moving_square() + np.random.default_rng(0).normal(0, 0.03, (8, 32, 32, 3)), 0, 1)
    for folder, video in ((ref, moving_square()), (test, noisy)):
        write_video(folder / "clip.mp4", video, upscale=1)
        write_video(folder / "loop.gif", video, upscale=1)
        write_image(folder / "still.png", video[0], upscale=1)
    write_image(test / "extra.png", noisy[0], upscale=1)
    return ref, test


def test_folders_are_matched_by_name_and_scored_under_each_protocol(folders, tmp_path, capsys):
    ref, test = folders
    out_json, out_csv = tmp_path / "s.json", tmp_path / "s.csv"
    assert main(["metrics", str(ref), str(test), "--protocol", "diffcache;skimage", "--json", str(out_json),
                 "--csv", str(out_csv), "--no-lpips"]) == 0
    printed = capsys.readouterr().out
    assert "protocol diffcache" in printed and "protocol skimage" in printed and "mean of 3" in printed
    assert "1 file(s) on one side only, not scored: extra" in printed
    result = json.loads(out_json.read_text())
    assert [p["name"] for p in result["protocols"]] == ["diffcache", "skimage"]
    rows = {(r["name"], r["protocol"]): r for r in result["rows"]}
    assert set(rows) == {(n, p) for n in ("clip.mp4", "loop.gif", "still.png") for p in ("diffcache", "skimage")}
    for name in ("clip.mp4", "loop.gif", "still.png"):
        a, b = read_media(test / name), read_media(ref / name)
        assert rows[name, "diffcache"]["psnr"] == pytest.approx(psnr(a, b, "video"))
        assert rows[name, "skimage"]["psnr"] == pytest.approx(psnr(a, b, "frame-mean"))
        assert rows[name, "skimage"]["ssim"] == pytest.approx(ssim(a, b, "skimage-default"))
        assert rows[name, "diffcache"]["frames"] == "decoded"
    mp4 = rows["clip.mp4", "diffcache"]
    assert mp4["flicker"] == pytest.approx(temporal_flickering(read_media(test / "clip.mp4")))
    assert mp4["flicker_added"] == pytest.approx(mp4["flicker_reference"] - mp4["flicker"])
    assert rows["still.png", "diffcache"]["flicker"] is None  # one frame: no temporal score
    assert result["means"]["diffcache"]["psnr"] == pytest.approx(
        np.mean([rows[n, "diffcache"]["psnr"] for n in ("clip.mp4", "loop.gif", "still.png")]))
    with open(out_csv, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 6 and {r["protocol"] for r in table} == {"diffcache", "skimage"}


def test_two_files_and_an_identical_pair(folders, capsys):
    ref, _ = folders
    assert main(["metrics", str(ref / "clip.mp4"), str(ref / "clip.mp4"), "--no-lpips"]) == 0
    assert "∞" in capsys.readouterr().out


def test_outputs_are_not_overwritten_without_force(folders, tmp_path, capsys):
    ref, test = folders
    out = tmp_path / "s.json"
    out.write_text("keep me")
    assert main(["metrics", str(ref), str(test), "--json", str(out), "--no-lpips"]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err and out.read_text() == "keep me"
    assert main(["metrics", str(ref), str(test), "--json", str(out), "--no-lpips", "--force"]) == 0
    assert json.loads(out.read_text())["rows"]


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file or folder"),
    ("file-vs-folder", "is a folder but"),
    ("no-pairs", "has a namesake"),
    ("shape", "score clips of the same size and length"),
    ("protocol", "unknown protocol 'psnr'"),
    ("bad-file", "cannot read"),
    ("corrupt", "cannot decode"),
])
def test_bad_input_is_one_line_and_exit_2(case, message, folders, tmp_path, capsys):
    ref, test = folders
    argv = {"missing": [str(tmp_path / "nope"), str(test)],
            "file-vs-folder": [str(ref), str(test / "clip.mp4")],
            "no-pairs": [str(ref), str(tmp_path)],
            "protocol": [str(ref), str(test), "--protocol", "psnr"]}.get(case)
    if case == "no-pairs":
        write_image(tmp_path / "other.png", moving_square()[0], upscale=1)
    if case == "shape":
        write_video(tmp_path / "short.mp4", moving_square()[:4], upscale=1)
        argv = [str(ref / "clip.mp4"), str(tmp_path / "short.mp4")]
    if case == "bad-file":
        (tmp_path / "notes.txt").write_text("x")
        argv = [str(tmp_path / "notes.txt"), str(tmp_path / "notes.txt")]
    if case == "corrupt":
        (tmp_path / "broken.mp4").write_bytes(b"not a video")
        argv = [str(tmp_path / "broken.mp4"), str(ref / "clip.mp4")]
    assert main(["metrics", *argv, "--no-lpips"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_list_protocols_names_what_each_follows(capsys):
    assert main(["metrics", "--list-protocols"]) == 0
    out = capsys.readouterr().out
    assert "videosys: frames=mp4 psnr=frame-mean" in out and "common_metrics_on_video_quality" in out


def test_grey_and_rgba_images_are_read_as_rgb(tmp_path):
    grey = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)
    iio.imwrite(tmp_path / "grey.png", grey)
    rgba = np.dstack([np.stack([grey] * 3, -1), np.full((8, 8), 255, np.uint8)])
    iio.imwrite(tmp_path / "rgba.png", rgba)
    assert np.array_equal(read_media(tmp_path / "grey.png"), read_media(tmp_path / "rgba.png"))
    assert read_media(tmp_path / "grey.png").shape == (1, 8, 8, 3)


def test_learned_metrics_run_with_weights_on_disk(folders, tmp_path, capsys, monkeypatch):
    """CLIP text score, CLIP frame similarity and FVD with stand-in weights built here: the rows hold what the
    library functions give on the decoded frames; FVD is one number over the clips (the image is left out)."""
    from learned_standins import make_clip_folder, make_detector_file

    from diffcache.quality import learned

    ref, test = folders
    (tmp_path / "clip").mkdir()
    clip = make_clip_folder(tmp_path / "clip")
    detector = make_detector_file(tmp_path / "i3d.pt")
    prompts = tmp_path / "prompts.tsv"
    prompts.write_text("clip\ta red ball on the grass\nloop\ta blue cat\n")
    out = tmp_path / "s.json"
    assert main(["metrics", str(ref), str(test), "--no-lpips", "--clip-model", str(clip), "--fvd-detector",
                 str(detector), "--prompts", str(prompts), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "CLIP text" in printed and "FVD:" in printed
    result = json.loads(out.read_text())
    rows = {r["name"]: r for r in result["rows"]}
    video = read_media(test / "clip.mp4")
    assert rows["clip.mp4"]["clip_text"] == pytest.approx(learned.clip_text_score(video, "a red ball on the grass",
                                                                                   clip))
    assert rows["clip.mp4"]["clip_frame"] == pytest.approx(
        learned.clip_frame_similarity(video, read_media(ref / "clip.mp4"), clip))
    assert rows["still.png"]["clip_text"] is None  # no prompt given for it
    clips = ["clip.mp4", "loop.gif"]
    expected = learned.fvd([read_media(test / n) for n in clips], [read_media(ref / n) for n in clips], detector)
    assert result["set_level"]["fvd"] == pytest.approx(expected)
    monkeypatch.setenv("DIFFCACHE_CLIP_MODEL", str(tmp_path / "no-clip"))
    assert main(["metrics", str(ref), str(test), "--no-lpips"]) == 0
    assert "note: " in capsys.readouterr().out  # a named folder that is not there: a note, not a crash


def test_vbench_dimensions_are_scored_on_both_sides_of_each_pair(folders, tmp_path, monkeypatch, capsys):
    """With an installed VBench (a stand-in scoring each file by its temporal flickering), each row gets the
    dimension for its test file and its reference; without VBench, a note says what is missing."""
    from diffcache.quality import learned

    ref, test = folders
    calls = []

    def stand_in(paths, dimensions):
        calls.append((list(paths), list(dimensions)))
        return {d: {"score": 0.0, "per_video": {p: temporal_flickering(read_media(p)) for p in paths}}
                for d in dimensions}

    monkeypatch.setattr(learned, "vbench_unavailable_reason", lambda dimension: None)
    monkeypatch.setattr(learned, "vbench_scores", stand_in)
    out = tmp_path / "v.json"
    assert main(["metrics", str(ref), str(test), "--no-lpips", "--vbench", "motion_smoothness",
                 "--json", str(out)]) == 0
    assert sorted(calls[0][0]) == sorted(str(f) for d in (ref, test) for f in (d / "clip.mp4", d / "loop.gif"))
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["clip.mp4"]["vbench_motion_smoothness"] == pytest.approx(rows["clip.mp4"]["flicker"])
    assert rows["clip.mp4"]["vbench_motion_smoothness_reference"] == pytest.approx(
        rows["clip.mp4"]["flicker_reference"])
    assert rows["still.png"]["vbench_motion_smoothness"] is None
    monkeypatch.undo()
    assert main(["metrics", str(ref), str(test), "--no-lpips", "--vbench", "motion_smoothness"]) == 0
    assert "VBench motion_smoothness skipped: " in capsys.readouterr().out

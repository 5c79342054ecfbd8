"""Every protocol variant against the library it names (scikit-image, torchmetrics, diffusers' export_to_video +
imageio-ffmpeg, the common_metrics script's rules), to 1e-6."""

import math

import numpy as np
import pytest

from diffcache.errors import ConfigError
from diffcache.quality.protocols import (PROTOCOLS, get_protocol, mp4_round_trip, parse_protocols, psnr,
                                         relative_l1, score, ssim, to_frames)


def clips(seed=0, frames=4, size=32, noise=0.05):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size
    reference = np.stack([np.stack([np.sin(6 * x + t) * 0.4 + 0.5, y, (x + y) / 2], -1) for t in range(frames)])
    video = np.clip(reference + rng.normal(0, noise, reference.shape), 0, 1)
    return video, reference


@pytest.mark.parametrize("seed", [0, 1])
def test_ssim_variants_equal_the_libraries_they_name(seed):
    skimage = pytest.importorskip("skimage.metrics", reason="scikit-image is an optional test dependency")
    video, reference = clips(seed)
    gaussian = np.mean([skimage.structural_similarity(a, b, channel_axis=-1, data_range=1.0, gaussian_weights=True,
                                                      sigma=1.5, use_sample_covariance=False)
                        for a, b in zip(video, reference)])
    default = np.mean([skimage.structural_similarity(a, b, channel_axis=-1, data_range=1.0)
                       for a, b in zip(video, reference)])
    assert ssim(video, reference, "skimage-gaussian") == pytest.approx(gaussian, abs=1e-6)
    assert ssim(video, reference, "skimage-default") == pytest.approx(default, abs=1e-6)
    assert abs(gaussian - default) > 1e-4  # the variants differ by more than the tolerance: the test can fail


@pytest.mark.parametrize("seed", [0, 1])
def test_torchmetrics_ssim_and_psnr_equal_torchmetrics(seed):
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.functional.image", reason="torchmetrics is an optional test dependency")
    video, reference = clips(seed)
    as_tensor = lambda v: torch.as_tensor(v).permute(0, 3, 1, 2)  # noqa: E731  (float64)
    expected = float(tm.structural_similarity_index_measure(as_tensor(video), as_tensor(reference), data_range=1.0))
    assert ssim(video, reference, "torchmetrics") == pytest.approx(expected, abs=1e-6)
    assert abs(expected - ssim(video, reference, "skimage-gaussian")) > 1e-5
    expected_psnr = float(tm.peak_signal_noise_ratio(as_tensor(video), as_tensor(reference), data_range=1.0))
    assert psnr(video, reference, "video") == pytest.approx(expected_psnr, rel=1e-6)


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # scikit-image's PSNR of an equal frame
def test_psnr_modes_equal_scikit_image_and_the_common_metrics_rule():
    skimage = pytest.importorskip("skimage.metrics", reason="scikit-image is an optional test dependency")
    video, reference = clips(0, frames=3)
    video[1] = reference[1]  # one frame exactly equal: common_metrics_on_video_quality counts it as 100 dB
    assert psnr(video, reference, "video") == pytest.approx(
        skimage.peak_signal_noise_ratio(reference, video, data_range=1.0), abs=1e-6)
    per_frame = [skimage.peak_signal_noise_ratio(b, a, data_range=1.0) for a, b in zip(video, reference)]
    assert math.isinf(per_frame[1])
    per_frame[1] = 100.0
    assert psnr(video, reference, "frame-mean") == pytest.approx(np.mean(per_frame), abs=1e-6)
    assert psnr(reference, reference, "video") == math.inf
    assert psnr(reference, reference, "frame-mean") == 100.0


def test_uint8_frames_are_what_a_png_stores(tmp_path):
    iio = pytest.importorskip("imageio.v3")
    video, _ = clips(0, frames=2)
    for index, frame in enumerate(video):
        iio.imwrite(tmp_path / f"{index}.png", (frame * 255).round().astype(np.uint8))
    stored = np.stack([iio.imread(tmp_path / f"{index}.png") for index in range(2)]) / 255
    assert np.array_equal(to_frames(video, "uint8"), stored)
    assert not np.array_equal(to_frames(video, "float"), stored)


def test_mp4_frames_are_what_export_to_video_writes_and_imageio_decodes(tmp_path):
    imageio = pytest.importorskip("imageio.v2")
    export_to_video = pytest.importorskip("diffusers.utils").export_to_video
    video, _ = clips(0, frames=6)
    path = export_to_video(list(video), str(tmp_path / "clip.mp4"), fps=10)
    reader = imageio.get_reader(path, "ffmpeg")
    decoded = np.stack([np.asarray(frame) for frame in reader]) / 255
    reader.close()
    ours = to_frames(video, "mp4")
    assert ours.shape == video.shape
    assert np.abs(ours - decoded).max() <= 1e-6
    assert np.abs(ours - video).max() > 1 / 255  # the codec changed the frames: the round trip is not a no-op


def test_mp4_frames_refuse_sizes_export_to_video_would_resize():
    video, _ = clips(0, frames=2, size=24)
    with pytest.raises(ConfigError, match="multiples of 16"):
        mp4_round_trip(video)


def test_named_protocols_and_field_specs():
    assert list(PROTOCOLS) == ["diffcache", "videosys", "skimage", "torchmetrics"]
    assert all(p.follows for p in PROTOCOLS.values())
    custom = get_protocol("frames=uint8, ssim=torchmetrics")
    assert (custom.frames, custom.psnr, custom.ssim, custom.name) == ("uint8", "video", "torchmetrics",
                                                                      "frames=uint8, ssim=torchmetrics")
    assert [p.name for p in parse_protocols("videosys;diffcache;videosys")] == ["videosys", "diffcache"]
    assert [p.name for p in parse_protocols(None)] == ["diffcache"]
    with pytest.raises(ConfigError, match="unknown protocol 'vbench'.*diffcache, videosys"):
        get_protocol("vbench")
    with pytest.raises(ConfigError, match="ssim='gauss' is not one of skimage-gaussian"):
        get_protocol("ssim=gauss")
    with pytest.raises(ConfigError, match="'colour=rgb' is not FIELD=VALUE"):
        get_protocol("psnr=video,colour=rgb")


def test_score_applies_the_protocols_frames_and_modes():
    video, reference = clips(0)
    plain = score(video, reference, "diffcache")
    assert plain["psnr"] == pytest.approx(psnr(video, reference))
    assert plain["rel_l1"] == pytest.approx(relative_l1(video, reference))
    eight_bit = score(video, reference, "skimage")
    assert eight_bit["psnr"] == pytest.approx(psnr(to_frames(video, "uint8"), to_frames(reference, "uint8"),
                                                   "frame-mean"))
    assert eight_bit["ssim"] == pytest.approx(ssim(to_frames(video, "uint8"), to_frames(reference, "uint8"),
                                                   "skimage-default"))
    decoded = score(video, reference, "videosys")
    assert decoded["psnr"] == pytest.approx(psnr(mp4_round_trip(video), mp4_round_trip(reference), "frame-mean"))
    assert abs(decoded["psnr"] - plain["psnr"]) > 1  # H.264 at quality 5 moves PSNR by decibels


def test_shapes_and_small_frames_get_clear_errors():
    video, reference = clips(0)
    with pytest.raises(ConfigError, match="differ in shape"):
        psnr(video[:2], reference)
    with pytest.raises(ConfigError, match="expected a video of shape"):
        ssim(np.zeros((2, 8, 8)), np.zeros((2, 8, 8)))
    with pytest.raises(ConfigError, match="at least 3×3"):
        ssim(np.zeros((1, 2, 2, 3)), np.zeros((1, 2, 2, 3)))
    tiny = np.random.default_rng(0).random((1, 8, 8, 3))
    assert 0 < ssim(tiny, np.clip(tiny + 0.01, 0, 1)) < 1  # a 7×7 window where 11×11 does not fit


def _common_metrics_ssim(img1, img2):
    """common_metrics_on_video_quality's calculate_ssim_function on one (channel, H, W) frame, ported from its
    OpenCV calls: cv2.filter2D with cv2.getGaussianKernel(11, 1.5) (border BORDER_REFLECT_101 = scipy's 'mirror'),
    then the [5:-5, 5:-5] crop, per channel, averaged."""
    ndimage = pytest.importorskip("scipy.ndimage")
    x = np.arange(11) - 5
    g = np.exp(-(x**2) / (2 * 1.5**2))
    window = np.outer(g / g.sum(), g / g.sum())
    f = lambda img: ndimage.correlate(img, window, mode="mirror")[5:-5, 5:-5]  # noqa: E731
    values = []
    for a, b in zip(img1.astype(np.float64), img2.astype(np.float64)):
        mu1, mu2 = f(a), f(b)
        s1, s2, s12 = f(a**2) - mu1**2, f(b**2) - mu2**2, f(a * b) - mu1 * mu2
        values.append((((2 * mu1 * mu2 + 1e-4) * (2 * s12 + 9e-4))
                       / ((mu1**2 + mu2**2 + 1e-4) * (s1 + s2 + 9e-4))).mean())
    return np.mean(values)


def test_videosys_ssim_equals_the_common_metrics_script():
    video, reference = clips(2)
    expected = np.mean([_common_metrics_ssim(a.transpose(2, 0, 1), b.transpose(2, 0, 1))
                        for a, b in zip(video, reference)])
    assert ssim(video, reference, PROTOCOLS["videosys"].ssim) == pytest.approx(expected, abs=1e-9)

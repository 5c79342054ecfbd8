"""Named evaluation protocols: how frames are read and how PSNR, SSIM and LPIPS are averaged.

Published caching tables score the cached video against the uncached one with PSNR, SSIM and LPIPS, but the
scripts differ in ways that move the numbers by more than the gaps they report: whether frames are the pipeline's
floats, 8-bit frames or frames decoded from an H.264 MP4; whether PSNR is one MSE over the whole video or the mean
of per-frame PSNRs; and which SSIM (the Gaussian-weighted one of Wang et al. on the valid region, scikit-image's
default 7×7 uniform window with sample covariance, or torchmetrics' Gaussian on a reflect-padded image). A
:class:`Protocol` fixes all three; :data:`PROTOCOLS` names the ones that follow a published library or script, and
``"frames=…,psnr=…,ssim=…,lpips=…"`` builds any other combination (:func:`get_protocol`).

Every implementation here is plain NumPy/torch in float64; ``tests/quality/test_protocols.py`` checks each against
the library it names (scikit-image, torchmetrics, diffusers' ``export_to_video`` + imageio-ffmpeg) to 1e-6.

Videos are ``(frames, H, W, 3)`` arrays of floats in [0, 1].
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import ConfigError

#: how frames reach the metrics: the pipeline's floats; 8-bit frames as a PNG or GIF stores them (``round(x·255)``,
#: as diffusers' ``numpy_to_pil`` and diffcache's writers do); or the clip written as diffusers' ``export_to_video``
#: writes an MP4 (``x·255`` truncated to 8 bits, H.264 by imageio-ffmpeg at quality 5) and decoded again
#: by imageio-ffmpeg, as VideoSys' evaluation reads it
FRAMES = ("float", "uint8", "mp4")
#: ``video``: one MSE over every pixel of the video; ``frame-mean``: the mean of per-frame PSNRs, a frame equal to
#: its reference counting 100 dB (common_metrics_on_video_quality's rule, which keeps the mean finite)
PSNR_MODES = ("video", "frame-mean")
#: ``skimage-gaussian``: ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
#: use_sample_covariance=False, data_range=1)``, Wang et al.'s Gaussian 11×11 window on the valid region (also what
#: common_metrics_on_video_quality's OpenCV code computes); ``skimage-default``: the same function's defaults (7×7
#: uniform window, sample covariance); ``torchmetrics``: ``torchmetrics.functional.structural_similarity_index_measure
#: (data_range=1.0)`` (Gaussian 11×11 on a reflect-padded image, every pixel averaged, variances clamped at 0)
SSIM_MODES = ("skimage-gaussian", "skimage-default", "torchmetrics")
#: ``mean``: the LPIPS package's default (each layer's distance map averaged, then summed); ``spatial``: its
#: ``spatial=True`` maps upsampled to the image size and averaged, as common_metrics_on_video_quality calls it
LPIPS_MODES = ("mean", "spatial")

FRAME_MEAN_PSNR_CAP = 100.0  #: dB of a frame equal to its reference under ``psnr="frame-mean"``


@dataclass(frozen=True)
class Protocol:
    """One way of scoring a video against its reference; see the module docs for each field's choices."""

    name: str
    frames: str = "float"
    psnr: str = "video"
    ssim: str = "skimage-gaussian"
    lpips: str = "mean"
    follows: str = ""  #: the library or script (with the paper using it) this protocol reproduces

    def __post_init__(self):
        for field, choices in (("frames", FRAMES), ("psnr", PSNR_MODES), ("ssim", SSIM_MODES),
                               ("lpips", LPIPS_MODES)):
            value = getattr(self, field)
            if value not in choices:
                raise ConfigError(f"protocol {self.name!r}: {field}={value!r} is not one of "
                                  f"{', '.join(choices)}.")

    def describe(self) -> dict:
        """The protocol as a JSON-ready dict (what a results file records beside each number)."""
        return asdict(self)


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("diffcache", "float", "video", "skimage-gaussian", "mean",
             "diffcache's benchmark default: the pipeline's float frames, one PSNR over the video, Wang et al. "
             "2004's Gaussian SSIM (scikit-image's gaussian_weights=True variant); LPIPS (Zhang et al. 2018, "
             "arXiv 1801.03924) averaged over frames"),
    Protocol("videosys", "mp4", "frame-mean", "skimage-gaussian", "spatial",
             "VideoSys' eval/commom_metrics (https://github.com/NUS-HPC-AI-Lab/VideoSys; PAB, arXiv 2408.12588, "
             "whose evaluation TeaCache, arXiv 2411.19108, reuses), from "
             "https://github.com/JunyaoHu/common_metrics_on_video_quality: MP4 frames decoded by imageio-ffmpeg, "
             "PSNR per frame (100 dB when equal) averaged, OpenCV Gaussian SSIM per channel on the valid region, "
             "LPIPS-Alex with spatial=True"),
    Protocol("skimage", "uint8", "frame-mean", "skimage-default", "mean",
             "scikit-image's skimage.metrics defaults on 8-bit frames (peak_signal_noise_ratio and "
             "structural_similarity per frame, data_range=1), averaged over frames"),
    Protocol("torchmetrics", "uint8", "video", "torchmetrics", "mean",
             "torchmetrics' defaults (PeakSignalNoiseRatio and StructuralSimilarityIndexMeasure with "
             "data_range=1.0) on 8-bit frames, the whole video as one batch"),
)}
DEFAULT_PROTOCOL = "diffcache"


def get_protocol(spec: "str | Protocol") -> Protocol:
    """A protocol by name (:data:`PROTOCOLS`) or from ``"frames=uint8,psnr=frame-mean,ssim=torchmetrics"`` (fields
    left out take ``diffcache``'s values; such a protocol is named by its spec)."""
    if isinstance(spec, Protocol):
        return spec
    text = str(spec).strip()
    if text in PROTOCOLS:
        return PROTOCOLS[text]
    if "=" not in text:
        raise ConfigError(f"unknown protocol {text!r}: use one of {', '.join(PROTOCOLS)}, or fields such as "
                          f"'frames=uint8,psnr=frame-mean,ssim=torchmetrics' (frames: {', '.join(FRAMES)}; "
                          f"psnr: {', '.join(PSNR_MODES)}; ssim: {', '.join(SSIM_MODES)}; "
                          f"lpips: {', '.join(LPIPS_MODES)}).")
    fields = {}
    for part in text.split(","):
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep or key not in ("frames", "psnr", "ssim", "lpips"):
            raise ConfigError(f"protocol {text!r}: {part.strip()!r} is not FIELD=VALUE with FIELD one of frames, "
                              "psnr, ssim, lpips.")
        fields[key] = value
    return replace(PROTOCOLS[DEFAULT_PROTOCOL], name=text, follows="custom", **fields)


def parse_protocols(text: "str | list[str] | None") -> list[Protocol]:
    """``--protocol`` values: names or field specs, separated by ``;`` or given as a list (default
    ``diffcache``); duplicates dropped, order kept."""
    if not text:
        return [PROTOCOLS[DEFAULT_PROTOCOL]]
    items = [text] if isinstance(text, (str, Protocol)) else list(text)
    parts = [part for item in items
             for part in ([item] if isinstance(item, Protocol) else str(item).split(";")) if str(part).strip()]
    protocols = []
    for part in parts:
        protocol = get_protocol(part)
        if protocol.name not in [p.name for p in protocols]:
            protocols.append(protocol)
    return protocols


# ---------------------------------------------------------------------------------------------------- frames --

def as_video(video) -> np.ndarray:
    """``video`` as a float array ``(frames, H, W, 3)`` (float32 stays float32: the metrics work in float64 one
    frame at a time, so a 720p clip of 81 frames is not copied whole in float64); an image ``(H, W, 3)`` becomes
    one frame."""
    array = np.asarray(video)
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ConfigError(f"expected a video of shape (frames, height, width, 3) or an image (height, width, 3), "
                          f"got {array.shape}.")
    return array


def to_frames(video, frames: str) -> np.ndarray:
    """The frames the metrics read under ``frames`` (:data:`FRAMES`), as floats in [0, 1]."""
    video = as_video(video)
    if frames == "float":
        return video
    if frames == "uint8":
        return np.round(np.clip(video, 0, 1) * 255) / 255
    if frames == "mp4":
        return mp4_round_trip(video)
    raise ConfigError(f"frames={frames!r} is not one of {', '.join(FRAMES)}.")


def mp4_round_trip(video, fps: int = 10) -> np.ndarray:
    """``video`` written as diffusers' ``export_to_video`` writes it (``(x·255).astype(uint8)``; imageio's ffmpeg
    writer at quality 5 and macro-block size 16, which resizes other sizes) and read back with imageio's ffmpeg
    reader, as floats in [0, 1]. Raises when the size is not a multiple of 16: the decoded frames would be
    resized and no longer line up with the reference's."""
    import imageio.v2 as imageio

    video = as_video(video)
    height, width = video.shape[1:3]
    if height % 16 or width % 16:
        raise ConfigError(f"frames='mp4' needs a height and width that are multiples of 16 (as export_to_video "
                          f"would resize them), got {height}×{width}; use frames='uint8'.")
    data = [(np.clip(frame, 0, 1) * 255).astype(np.uint8) for frame in video]
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "clip.mp4")
        writer = imageio.get_writer(path, fps=fps, quality=5.0, macro_block_size=16,
                                    ffmpeg_log_level="error")
        for frame in data:
            writer.append_data(frame)
        writer.close()
        reader = imageio.get_reader(path, "ffmpeg")
        decoded = np.stack([np.asarray(frame) for frame in reader]).astype(np.float64) / 255
        reader.close()
    return decoded[: len(video)]


# ------------------------------------------------------------------------------------------------------ PSNR --

def psnr(video, reference, mode: str = "video") -> float:
    """PSNR in dB (data range 1). ``mode="video"``: ``10·log10(1/MSE)`` over the whole video (``inf`` when equal);
    ``"frame-mean"``: the mean of per-frame PSNRs, a frame equal to its reference counting
    :data:`FRAME_MEAN_PSNR_CAP` dB."""
    a, b = as_video(video), as_video(reference)
    _same_shape(a, b)
    frame_mse = np.array([np.mean((fa.astype(np.float64) - fb.astype(np.float64)) ** 2) for fa, fb in zip(a, b)])
    if mode == "video":
        mse = float(np.mean(frame_mse))
        return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))
    if mode == "frame-mean":
        values = []
        for mse in frame_mse:
            values.append(FRAME_MEAN_PSNR_CAP if mse < 1e-10 else float(20 * math.log10(1 / math.sqrt(mse))))
        return float(np.mean(values))
    raise ConfigError(f"psnr mode {mode!r} is not one of {', '.join(PSNR_MODES)}.")


def relative_l1(video, reference) -> float:
    """``Σ|video − reference| / Σ|reference|`` (0 for identical videos)."""
    a, b = as_video(video), as_video(reference)
    _same_shape(a, b)
    difference = sum(float(np.abs(fa.astype(np.float64) - fb.astype(np.float64)).sum()) for fa, fb in zip(a, b))
    total = sum(float(np.abs(fb.astype(np.float64)).sum()) for fb in b)
    return difference / max(total, 1e-12)


# ------------------------------------------------------------------------------------------------------ SSIM --

def _gaussian_1d(size: int, sigma: float):
    import torch

    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _window(mode: str, height: int, width: int) -> int:
    """The SSIM window: 7 (``skimage-default``) or 11; frames smaller than that (which scikit-image refuses) use
    the largest odd window that fits, at least 3."""
    nominal = 7 if mode == "skimage-default" else 11
    side = min(height, width)
    if side >= nominal:
        return nominal
    if side < 3:
        raise ConfigError(f"SSIM needs frames of at least 3×3 pixels, got {height}×{width}.")
    return side if side % 2 else side - 1


def ssim(video, reference, mode: str = "skimage-gaussian") -> float:
    """Mean SSIM (Wang et al. 2004; K1 0.01, K2 0.03, data range 1) over frames and channels, by ``mode``
    (:data:`SSIM_MODES`). Frames smaller than the window use a smaller one (:func:`_window`)."""
    import torch
    import torch.nn.functional as F

    a, b = as_video(video), as_video(reference)
    _same_shape(a, b)
    if mode not in SSIM_MODES:
        raise ConfigError(f"ssim mode {mode!r} is not one of {', '.join(SSIM_MODES)}.")
    channels = a.shape[-1]
    c1, c2 = 0.01**2, 0.03**2
    size = _window(mode, *a.shape[1:3])
    if mode == "skimage-default":
        kernel = torch.full((channels, 1, size, size), 1.0 / size**2, dtype=torch.float64)
        cov_norm = size**2 / (size**2 - 1)  # sample covariance, as scikit-image's default
    else:
        g = _gaussian_1d(size, 1.5)
        kernel = (g[:, None] * g[None, :]).expand(channels, 1, size, size)
        cov_norm = 1.0
    blur = lambda t: F.conv2d(t, kernel, groups=channels)  # noqa: E731  (valid region)
    total, count = 0.0, 0
    for start in range(0, len(a), 4):  # a few frames at a time: float64 maps of a whole 720p video are gigabytes
        x = torch.as_tensor(a[start:start + 4], dtype=torch.float64).permute(0, 3, 1, 2)
        y = torch.as_tensor(b[start:start + 4], dtype=torch.float64).permute(0, 3, 1, 2)
        if mode == "torchmetrics":
            pad = (size - 1) // 2
            x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
            y = F.pad(y, (pad, pad, pad, pad), mode="reflect")
        mu_x, mu_y = blur(x), blur(y)
        var_x = cov_norm * (blur(x * x) - mu_x**2)
        var_y = cov_norm * (blur(y * y) - mu_y**2)
        cov = cov_norm * (blur(x * y) - mu_x * mu_y)
        if mode == "torchmetrics":
            var_x, var_y = var_x.clamp(min=0), var_y.clamp(min=0)
        index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
        total += float(index.sum())
        count += index.numel()
    return total / count


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ConfigError(f"the video and its reference differ in shape: {a.shape[:3]} against {b.shape[:3]} "
                          "(frames, height, width); score clips of the same size and length.")


# ---------------------------------------------------------------------------------------------------- scores --

def score(video, reference, protocol: "str | Protocol" = DEFAULT_PROTOCOL, lpips: bool = False,
          prepared: bool = False) -> dict:
    """PSNR, SSIM, relative L1 and (with ``lpips=True``, when its weights are installed and the frames are large
    enough for its network) LPIPS of ``video`` against ``reference`` under ``protocol``. ``prepared``: the frames are already what the protocol reads (decoded files), so
    ``frames`` is not applied again."""
    protocol = get_protocol(protocol)
    a, b = as_video(video), as_video(reference)
    _same_shape(a, b)
    if not prepared:
        a, b = to_frames(a, protocol.frames), to_frames(b, protocol.frames)
    result = {"psnr": psnr(a, b, protocol.psnr), "ssim": ssim(a, b, protocol.ssim), "rel_l1": relative_l1(a, b),
              "lpips": None}
    if lpips:
        from ..errors import VideoShapeError
        from .lpips import lpips_distance, lpips_unavailable_reason

        if lpips_unavailable_reason() is None:
            try:
                result["lpips"] = lpips_distance(a, b, spatial=protocol.lpips == "spatial")
            except VideoShapeError:  # frames smaller than the network takes (AlexNet: 31 pixels): n/a
                pass
    return result


__all__ = ["DEFAULT_PROTOCOL", "FRAMES", "LPIPS_MODES", "PROTOCOLS", "PSNR_MODES", "Protocol", "SSIM_MODES",
           "as_video", "get_protocol", "mp4_round_trip", "parse_protocols", "psnr", "relative_l1", "score", "ssim",
           "to_frames"]

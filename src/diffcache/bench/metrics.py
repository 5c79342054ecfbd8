"""Reference-based video quality of a video against the uncached one (floats in [0, 1], ``(frames, H, W, C)``):
PSNR, SSIM, relative L1, and LPIPS when its weights are on disk."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

def psnr(video: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB over the whole video (``(frames, H, W, C)`` floats in [0, 1]); ``inf`` for identical videos."""
    mse = float(np.mean((np.asarray(video, np.float64) - np.asarray(reference, np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def relative_l1(video: np.ndarray, reference: np.ndarray) -> float:
    """``Σ|video − reference| / Σ|reference|`` (0 for identical videos)."""
    reference = np.asarray(reference, np.float64)
    return float(np.abs(np.asarray(video, np.float64) - reference).sum() / max(np.abs(reference).sum(), 1e-12))


def lpips_unavailable_reason() -> str | None:
    """Why LPIPS cannot be computed here (``None`` when it can): it needs the ``lpips`` package and its AlexNet
    backbone weights already on disk (nothing is downloaded)."""
    try:
        import lpips  # noqa: F401
    except ImportError:
        return "LPIPS skipped: the lpips package is not installed"
    import torch.hub

    checkpoints = __import__("pathlib").Path(torch.hub.get_dir()) / "checkpoints"
    if not any(checkpoints.glob("alexnet-*.pth")):
        return f"LPIPS skipped: its AlexNet weights are not on disk ({checkpoints}/alexnet-*.pth); nothing is downloaded"
    return None


_LPIPS = {}


def lpips_distance(video: np.ndarray, reference: np.ndarray) -> float:
    """Mean LPIPS (AlexNet) over frames; call only when :func:`lpips_unavailable_reason` is ``None``."""
    import lpips

    if "net" not in _LPIPS:
        _LPIPS["net"] = lpips.LPIPS(net="alex", verbose=False).eval()
    to = lambda v: torch.as_tensor(np.asarray(v, np.float32)).permute(0, 3, 1, 2) * 2 - 1  # noqa: E731
    with torch.no_grad():
        return float(_LPIPS["net"](to(video), to(reference)).mean())


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(video: np.ndarray, reference: np.ndarray, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004: Gaussian window 11, σ 1.5, K1 0.01, K2 0.03, data range 1) over frames and
    channels of ``(frames, H, W, C)`` videos, on the valid region of the window."""
    a = torch.as_tensor(np.asarray(video, np.float64)).permute(0, 3, 1, 2)
    b = torch.as_tensor(np.asarray(reference, np.float64)).permute(0, 3, 1, 2)
    frames, channels, height, width = a.shape
    size = min(window, height, width)
    kernel = _gaussian_window(size, sigma).expand(channels, 1, size, size)
    blur = lambda x: F.conv2d(x, kernel, groups=channels)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(index.mean())

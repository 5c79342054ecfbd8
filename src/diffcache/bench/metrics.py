"""Reference-based video quality: PSNR and SSIM of a video against the uncached one (floats in [0, 1])."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PSNR_CAP = 100.0  #: identical videos have infinite PSNR; reported as this many dB


def psnr(video: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB over the whole video (``(frames, H, W, C)`` floats in [0, 1]), capped at ``PSNR_CAP``."""
    mse = float(np.mean((np.asarray(video, np.float64) - np.asarray(reference, np.float64)) ** 2))
    return PSNR_CAP if mse <= 10 ** (-PSNR_CAP / 10) else float(10 * np.log10(1.0 / mse))


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

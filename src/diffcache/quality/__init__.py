"""Quality of a video against a reference, measured the way published tables measure it.

- :mod:`.protocols`: named protocols (how frames are read, which PSNR and SSIM), checked against the libraries
  they name; :func:`score`.
- :mod:`.temporal`: VBench's temporal flickering, the model-free temporal score.
- :mod:`.lpips`: LPIPS (arXiv 1801.03924) offline, from installed weights only.
- :mod:`.learned`: CLIP score and FVD when their weights are on disk.
- :mod:`.media` and :mod:`.compare`: reading videos, images and folders, and scoring them
  (``diffcache metrics``).

Videos are ``(frames, H, W, 3)`` arrays of floats in [0, 1] (an image is a one-frame video).
"""

from __future__ import annotations

import importlib

_LAZY = {"PROTOCOLS": ".protocols", "Protocol": ".protocols", "get_protocol": ".protocols", "score": ".protocols",
         "psnr": ".protocols", "ssim": ".protocols", "temporal_flickering": ".temporal", "compare": ".compare",
         "read_media": ".media"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)

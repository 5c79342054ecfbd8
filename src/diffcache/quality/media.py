"""Reading what ``diffcache metrics`` scores: two videos, two images, or two folders of them matched by name.

Videos (MP4, WebM, MOV, MKV, AVI) are decoded with imageio-ffmpeg, as VideoSys' evaluation reads them; GIFs and
images with imageio's Pillow plugin. Frames come back as floats in [0, 1] (the decoded 8-bit values / 255), RGB:
a grey image is repeated to three channels and an alpha channel is dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DiffcacheError

VIDEO_FILES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")
IMAGE_FILES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
MEDIA_FILES = VIDEO_FILES + IMAGE_FILES


class MediaError(DiffcacheError, ValueError):
    """A file or folder given to ``diffcache metrics`` cannot be read or paired."""


def read_media(path: str | os.PathLike) -> np.ndarray:
    """The frames of a video or image file as ``(frames, H, W, 3)`` floats in [0, 1] (an image is one frame)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MEDIA_FILES:
        raise MediaError(f"cannot read {str(path)!r}: expected a video ({', '.join(VIDEO_FILES)}) or an image "
                         f"({', '.join(IMAGE_FILES)}).")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    try:
        if suffix in VIDEO_FILES and suffix != ".gif":
            import imageio.v2 as imageio

            reader = imageio.get_reader(str(path), "ffmpeg")
            try:
                frames = [np.asarray(frame) for frame in reader]
            finally:
                reader.close()
        else:
            import imageio.v3 as iio

            data = iio.imread(path, index=None) if suffix == ".gif" else iio.imread(path)
            frames = list(data) if suffix == ".gif" and data.ndim == 4 else [data]
    except (OSError, ValueError, RuntimeError, IndexError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]  # ffmpeg's log: its last line
        raise MediaError(f"cannot decode {str(path)!r}: {lines[-1] if lines else type(error).__name__}") from None
    if not frames:
        raise MediaError(f"{str(path)!r} holds no frames.")
    return np.stack([_rgb(np.asarray(frame), path) for frame in frames]).astype(np.float32) / 255.0


def _rgb(frame: np.ndarray, path: Path) -> np.ndarray:
    if frame.dtype != np.uint8:
        if np.issubdtype(frame.dtype, np.integer) and frame.max() > 255:
            raise MediaError(f"{str(path)!r} has {frame.dtype} samples; only 8-bit images and videos are scored "
                             "(as published evaluation scripts read them).")
        frame = frame.astype(np.uint8)
    if frame.ndim == 2:
        frame = np.repeat(frame[..., None], 3, axis=-1)
    if frame.ndim != 3 or frame.shape[-1] not in (1, 3, 4):
        raise MediaError(f"{str(path)!r}: cannot read a frame of shape {frame.shape} as RGB.")
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, axis=-1)
    return frame[..., :3]


@dataclass(frozen=True)
class Pair:
    """One scored pair: the name shown (the file name, or its stem when the two extensions differ), the reference
    file and the file scored against it."""

    name: str
    reference: Path
    test: Path


def media_files(folder: Path) -> dict[str, Path]:
    """The video and image files directly in ``folder`` by stem (name without extension)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in MEDIA_FILES:
            if path.stem in found:
                raise MediaError(f"{str(folder)!r} holds two files named {path.stem!r} "
                                 f"({found[path.stem].name} and {path.name}); keep one per name.")
            found[path.stem] = path
    return found


def pair_media(reference: str | os.PathLike, test: str | os.PathLike) -> tuple[list[Pair], list[str]]:
    """The pairs to score: two files, or the files of two folders matched by stem. Returns the pairs (in name
    order) and the names found on only one side. Raises when nothing pairs, or a file faces a folder."""
    reference, test = Path(reference), Path(test)
    for path in (reference, test):
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {str(path)!r}")
    if reference.is_dir() != test.is_dir():
        folder, file = (reference, test) if reference.is_dir() else (test, reference)
        raise MediaError(f"{str(folder)!r} is a folder but {str(file)!r} is a file: give two files or two folders "
                         "(a folder's files are matched by name).")
    if not reference.is_dir():
        return [Pair(test.name, reference, test)], []
    ref_files, test_files = media_files(reference), media_files(test)
    names = sorted(set(ref_files) & set(test_files))
    only = sorted(set(ref_files) ^ set(test_files))
    if not names:
        raise MediaError(f"no file of {str(test)!r} has a namesake in {str(reference)!r} ({len(ref_files)} and "
                         f"{len(test_files)} video or image files): files are matched by name without extension.")
    pairs = [Pair(test_files[n].name if ref_files[n].suffix == test_files[n].suffix else n, ref_files[n],
                  test_files[n]) for n in names]
    return pairs, only


__all__ = ["IMAGE_FILES", "MEDIA_FILES", "MediaError", "Pair", "VIDEO_FILES", "media_files", "pair_media",
           "read_media"]

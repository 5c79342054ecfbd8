"""Writing clips and files safely: atomic writes, no silent overwrite."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from .errors import OutputExistsError

VIDEO_SUFFIXES = (".gif", ".mp4")



def check_writable(path: str | os.PathLike, force: bool) -> Path:
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; pass --force (force=True) to overwrite it.")
    return path


@contextmanager
def atomic_path(path: str | os.PathLike, force: bool = False):
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` in one step."""
    path = check_writable(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str, force: bool = False) -> Path:
    with atomic_path(path, force) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def read_json(path: str | os.PathLike, what: str = "file"):
    """The JSON in ``path``; a file that is not valid JSON raises :class:`~diffcache.errors.ConfigError` naming
    ``what`` it should have been and where it failed."""
    import json

    from .errors import ConfigError

    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{what} {path} is not valid JSON: {error}") from None


def read_json_lines(path: str | os.PathLike, keep=lambda record: True) -> list[dict]:
    """The JSON objects of a JSONL file for which ``keep(record)`` is true, in order (``[]`` when the file does not
    exist); a line that is not JSON (a process killed while writing it: a torn last line) is left out."""
    import json

    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and keep(record):
            records.append(record)
    return records


def to_uint8(frames: np.ndarray, upscale: int = 1) -> np.ndarray:
    """Floats in [0, 1] ``(..., H, W, 3)`` → uint8, enlarged ``upscale`` times with nearest neighbours."""
    arr = (np.clip(np.asarray(frames, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8)
    if upscale > 1:
        arr = arr.repeat(upscale, axis=-3).repeat(upscale, axis=-2)
    return arr


def auto_upscale(height: int, width: int, target: int = 256) -> int:
    """The integer enlargement that makes the short side at least ``target`` pixels (1 for large clips)."""
    return max(1, -(-target // max(1, min(height, width))))


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 8, upscale: int | None = None,
                force: bool = False) -> Path:
    """Write ``frames`` ``(F, H, W, 3)`` floats in [0, 1] as a looping GIF or an MP4 (by suffix), atomically.

    ``upscale=None`` enlarges small clips so that their short side is at least 256 pixels.
    """
    import imageio.v3 as iio

    path = Path(path)
    if fps < 1:
        raise ValueError(f"fps must be at least 1, got {fps}.")
    if upscale is not None and upscale < 1:
        raise ValueError(f"upscale must be at least 1, got {upscale}.")
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"cannot write a clip to {path.name!r}: use a file name ending in "
                         f"{' or '.join(VIDEO_SUFFIXES)}.")
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (frames, height, width, 3), got {frames.shape}.")
    scale = auto_upscale(*frames.shape[1:3]) if upscale is None else upscale
    data = to_uint8(frames, scale)
    with atomic_path(path, force) as tmp:
        if path.suffix.lower() == ".gif":
            iio.imwrite(tmp, data, extension=".gif", duration=int(1000 / fps), loop=0)
        else:
            if data.shape[1] % 2 or data.shape[2] % 2:  # yuv420p needs even sizes
                data = data[:, : data.shape[1] // 2 * 2, : data.shape[2] // 2 * 2]
            _write_mp4(tmp, data, fps)
    return path


def _write_mp4(path: Path, data: np.ndarray, fps: int) -> None:
    import imageio_ffmpeg

    writer = imageio_ffmpeg.write_frames(str(path), size=(data.shape[2], data.shape[1]), fps=fps,
                                         codec="libx264", pix_fmt_out="yuv420p", macro_block_size=1,
                                         output_params=["-loglevel", "error"])
    writer.send(None)
    for frame in data:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


IMAGE_SUFFIXES = (".png",)


def write_image(path: str | os.PathLike, image: np.ndarray, upscale: int | None = None, force: bool = False) -> Path:
    """Write one image ``(H, W, 3)`` of floats in [0, 1] as a PNG, atomically. ``upscale=None`` enlarges small
    images (nearest neighbour) so that their short side is at least 256 pixels."""
    import imageio.v3 as iio

    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"cannot write an image to {path.name!r}: use a file name ending in .png.")
    if upscale is not None and upscale < 1:
        raise ValueError(f"upscale must be at least 1, got {upscale}.")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an image of shape (height, width, 3), got {image.shape}.")
    scale = auto_upscale(*image.shape[:2]) if upscale is None else upscale
    with atomic_path(path, force) as tmp:
        iio.imwrite(tmp, to_uint8(image, scale), extension=".png")
    return path

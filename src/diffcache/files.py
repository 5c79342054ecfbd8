"""Writing clips and files safely: atomic writes, no silent overwrite."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager, suppress
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
    except OSError as error:  # a full disk while writing: say which file (the message has no path otherwise)
        raise _naming(error, path) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _naming(error: OSError, path) -> OSError:
    """``error`` with ``path`` as its file name when the system gave none (a failed ``write``: ``ENOSPC``)."""
    if error.filename is not None or not error.errno:
        return error
    return type(error)(error.errno, error.strerror, str(path))


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
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ConfigError(f"{what} {path} is not valid JSON: {error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not a text file (a binary file? it should be JSON)") from None


CORRUPT_SUFFIX = ".corrupt"  #: where the unreadable lines of ``FILE.jsonl`` go: ``FILE.jsonl.corrupt``


def read_json_lines(path: str | os.PathLike, keep=lambda record: True, heal: bool = True,
                    aside: str | os.PathLike | None = None) -> list[dict]:
    """The records of a JSONL results file, in order (``[]`` when the file does not exist): the lines that are JSON
    objects for which ``keep(record)`` is true.

    Every other line is not a readable record — not JSON (a torn write, a disk error, an edit), or JSON that is not a
    record of this file. With ``heal`` (the process that writes the file) such lines are never dropped silently nor
    left in place: they are appended to ``aside`` (default ``FILE.corrupt``, e.g. ``results.jsonl.corrupt``), the
    file is rewritten without them in one step (a temporary file renamed onto it; the good lines byte for byte), and
    one :class:`~diffcache.errors.CorruptRecordWarning` names them by line number — so their items are computed
    again. A torn last line (a process killed while writing it, the line not ended) is treated the same way. Without
    ``heal`` (a reader that does not own the file) they are only left out. Blank lines are dropped silently."""
    import json

    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    records, good, bad = [], [], []
    for number, raw in enumerate(lines, 1):
        last = number == len(lines)
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            bad.append((number, raw, "cut short: a run stopped while writing it" if last else "not JSON"))
            continue
        if not (isinstance(record, dict) and keep(record)):
            bad.append((number, raw, "not a record of this file"))
            continue
        records.append(record)
        good.append(raw)
    if heal and (bad or not data.endswith(b"\n")):
        _move_aside(path, good, bad, Path(aside) if aside is not None else _aside(path))
    return records


def _aside(path: Path) -> Path:
    return path.with_name(path.name + CORRUPT_SUFFIX)


def _append_fsync(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_aside(path: Path, good: list[bytes], bad: list[tuple[int, bytes, str]], aside: Path) -> None:
    """Append the ``bad`` lines to ``aside`` (first, so that a stop in between loses nothing: at worst a line is
    moved twice), then replace ``path`` by its ``good`` lines; warn once, naming the lines."""
    import warnings

    from .errors import CorruptRecordWarning

    if bad:
        _append_fsync(aside, b"".join(raw + b"\n" for _, raw, _ in bad))
    with atomic_path(path, force=True) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(b"".join(raw + b"\n" for raw in good))
            handle.flush()
            os.fsync(handle.fileno())
    if not bad:
        return
    numbers = [str(number) for number, _, _ in bad]
    shown = ", ".join(numbers[:6]) + (f" and {len(numbers) - 6} more" if len(numbers) > 6 else "")
    reasons = "; ".join(sorted({reason for _, _, reason in bad}))
    many = len(bad) > 1
    warnings.warn(f"{path}: line{'s' if many else ''} {shown} {'are' if many else 'is'} not a readable record "
                  f"({reasons}); moved to {aside}, {'their items are' if many else 'its item is'} computed again",
                  CorruptRecordWarning, stacklevel=3)


def append_line(path: str | os.PathLike, line: bytes) -> None:
    """Append one whole line (``line`` ends in a newline) to ``path`` and fsync it: written with ``os.write`` in
    one call where the system allows, and a write that fails part-way (a full disk, a signal) is cut back to the old
    end, so the file never ends in a torn line. A torn last line left by a killed process is first moved to
    ``FILE.corrupt`` (with a :class:`~diffcache.errors.CorruptRecordWarning`), as :func:`read_json_lines` does."""
    if not line.endswith(b"\n"):
        raise ValueError("append_line takes one whole line, ending in a newline")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn last line: move it aside first
            data = os.pread(fd, size, 0)
            end = data.rfind(b"\n") + 1
            _append_fsync(_aside(path), data[end:] + b"\n")
            os.ftruncate(fd, end)
            size = end
            import warnings

            from .errors import CorruptRecordWarning

            warnings.warn(f"{path}: its last line is not a readable record (cut short: a run stopped while writing "
                          f"it); moved to {_aside(path)}, its item is computed again", CorruptRecordWarning,
                          stacklevel=2)
        whole = False
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
            whole = True
            os.fsync(fd)
        except BaseException as error:
            # nothing half-written stays; a line written whole stays when only a signal interrupted its fsync
            # (another process may already have read it), but not when the disk refused it (OSError)
            if not whole or isinstance(error, OSError):
                os.ftruncate(fd, size)
            if isinstance(error, OSError):
                raise _naming(error, path) from None
            raise
    finally:
        os.close(fd)


# -- one writer per results folder -------------------------------------------------------------------------------
LOCK = ".lock"  #: the lock file of a results folder: the JSON of the process writing it


def _command_line() -> str:
    import shlex
    import sys

    head = sys.argv[0] if sys.argv else "python"
    head = "diffcache" if head.endswith(("diffcache", os.path.join("cli", "__main__.py"))) else Path(head).name
    return shlex.join([head, *sys.argv[1:]])


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} (started {holder.get('started', '?')}: "
            f"{holder.get('command', '?')})")


def _holder(fd: int) -> dict | None:
    import json

    size = os.fstat(fd).st_size
    if not size:
        return None
    try:
        holder = json.loads(os.pread(fd, size, 0).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {"pid": "?", "command": "unreadable lock file"}
    return holder if isinstance(holder, dict) else {"pid": "?", "command": "unreadable lock file"}


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def folder_lock(folder: str | os.PathLike, command: str | None = None):
    """Hold ``FOLDER/.lock`` while writing a results folder: one writer per folder.

    The lock is an exclusive ``fcntl.flock`` on the file, which the system releases when its process ends however it
    ends; the file holds the process's pid, host, start time and ``command`` (default: this process's command line).
    A folder another process holds raises :class:`~diffcache.errors.FolderInUseError` naming it; a lock file left by a
    process that no longer runs (killed) is taken over with a :class:`~diffcache.errors.StaleLockWarning`. Released
    (the file removed) on exit, exceptions and signals included. On a file system without ``flock`` the file is
    created exclusively and a lock of a pid not running on this host is stale."""
    import datetime
    import json
    import socket
    import warnings

    from .errors import FolderInUseError, StaleLockWarning

    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    host = socket.gethostname()

    def refuse(holder):
        raise FolderInUseError(f"{folder} is in use by {_describe(holder or {})}; one run writes a folder at a "
                               "time: wait for it to finish, stop it, or use another --out")

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            refuse(holder)
        except (ImportError, OSError):  # no flock here: the pid decides
            holder = _holder(fd)
            running = holder and (holder.get("host") != host or _alive(holder.get("pid")))
            if running and holder.get("pid") != os.getpid():
                os.close(fd)
                refuse(holder)
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file between our open and our lock: lock the new one
    try:
        stale = _holder(fd)
        if stale:
            state = "no longer running" if stale.get("host") != host or not _alive(stale.get("pid")) else \
                "not holding it (its pid is another process now)"
            warnings.warn(f"{folder}: the lock of {_describe(stale)} is stale, that run is {state}; taking it over",
                          StaleLockWarning, stacklevel=3)
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        text = json.dumps({"pid": os.getpid(), "host": host, "started": started,
                           "command": command or _command_line()}) + "\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode("utf-8"), 0)
        os.fsync(fd)
    except BaseException as error:
        os.close(fd)
        if isinstance(error, OSError):  # a full disk: name the file
            raise _naming(error, path) from None
        raise
    try:
        yield path
    finally:
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)
        if created:  # a run refused before writing anything leaves no empty folder behind
            with suppress(OSError):
                folder.rmdir()


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
            # encoded in memory, then written by us: a failing write (a full disk) is one OSError here, with no
            # imageio file handle left to fail again when it is collected
            Path(tmp).write_bytes(iio.imwrite("<bytes>", data, extension=".gif", duration=int(1000 / fps), loop=0))
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
        Path(tmp).write_bytes(iio.imwrite("<bytes>", to_uint8(image, scale), extension=".png"))
    return path

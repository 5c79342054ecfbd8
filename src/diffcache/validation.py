"""Checks at the edge: the options a command takes are validated before any expensive work (loading a pipeline,
the first denoiser call, a whole generation), each failure one :class:`~diffcache.errors.DiffcacheError` whose
message names the option, the value given and what is accepted.

- :func:`check_seed`: ``0 … 2**64 − 1`` (what ``torch.Generator.manual_seed`` takes as an unsigned seed).
- :func:`check_guidance`: a finite number ``≥ 0`` (1 or less disables classifier-free guidance, as in diffusers).
- :func:`check_device`: a device this torch can use here, listing the available ones otherwise.
- :func:`check_output` / :func:`check_output_folder`: where a file or folder will be written, probed for
  writability before the work that produces it.
- :func:`check_prompts`: a prompt of the embedded models' grammar, parsed before their pipeline loads.
- :func:`model_limits` / :func:`pipeline_limits` and :func:`check_size`: ``--height`` / ``--width`` /
  ``--frames`` against the model's positional range and patch multiples, read from a pipeline folder's
  ``model_index.json`` and ``transformer/config.json`` (and ``vae/config.json``) without loading it, or from a
  loaded pipeline (a hub id) before its first denoiser call.

The positional range: Wan-family transformers (Wan 2.1, arXiv:2503.20314; SkyReels-V2, arXiv:2504.13074) place
tokens with a 3-D RoPE whose per-axis tables are built for ``rope_max_seq_len`` positions
(``WanRotaryPosEmbed`` in https://github.com/huggingface/diffusers, ``models/transformers/transformer_wan.py``);
a latent with more patches than that along an axis makes diffusers fail inside the forward pass. The number of
patches along an axis follows the pipeline's own arithmetic: frames ``F`` → ``(F' − 1) // t + 1`` latent frames
(``F'``: ``F`` rounded to ``4k + 1`` by the pipeline, ``t`` the VAE's temporal factor), pixels ``H`` →
``H // s`` latent rows (``s`` the VAE's spatial factor), then ``// patch_size`` on each axis.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import DiffcacheError, OptionError, OutputExistsError, OutputPathError, PromptError

SEED_MAX = 2**64 - 1  #: largest seed: torch seeds are unsigned 64-bit integers

#: the embedded models' pipelines, whose prompts follow the shapes grammar (``diffcache.embedded.shapes``)
SHAPES_VIDEO_PIPELINES = ("TinyShapesT2VPipeline", "DistilledShapesT2VPipeline")
SHAPES_IMAGE_PIPELINES = ("TinyShapesT2IPipeline",)

#: Wan-family pipelines of diffusers 0.42.1: RoPE of ``rope_max_seq_len`` positions per axis; their
#: ``check_inputs`` requires height and width divisible by 16 (WanVACE: by the VAE factor × patch size), and they
#: round ``num_frames`` to ``4k + 1`` (the VAE's temporal factor)
WAN_FAMILY = ("WanPipeline", "WanImageToVideoPipeline", "WanVACEPipeline", "SkyReelsV2Pipeline",
              "SkyReelsV2ImageToVideoPipeline", "SkyReelsV2DiffusionForcingPipeline",
              "SkyReelsV2DiffusionForcingImageToVideoPipeline")
#: of those, the ones that generate long videos in overlapping windows (``base_num_frames``): any frame count
WINDOWED_FRAMES = ("SkyReelsV2DiffusionForcingPipeline", "SkyReelsV2DiffusionForcingImageToVideoPipeline")
#: pixel size multiple that ``check_inputs`` hard-codes (others: the VAE factor × the patch size)
_FIXED_MULTIPLE = {name: 16 for name in WAN_FAMILY if name != "WanVACEPipeline"}
#: the embedded models pack 2×2 pixels into one latent position (``UNSHUFFLE`` of ``diffcache.embedded.t2v`` and
#: ``.t2i``; kept here so that a size is checked without importing diffusers)
EMBEDDED_UNSHUFFLE = 2


def _option(name: str) -> str:
    return name if name.startswith("-") else f"--{name.replace('_', '-')}"


# -- numbers -------------------------------------------------------------------------------------------------------
def check_seed(seed, option: str = "--seed") -> int:
    """``seed`` if it is an integer in ``0 … 2**64 − 1``, else :class:`~diffcache.errors.OptionError`."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise OptionError(f"{option} {seed}: a seed is an integer from 0 to 2**64 - 1 ({SEED_MAX}).")
    return seed


def check_guidance(guidance, option: str = "--guidance") -> float | None:
    """``guidance`` (``None``: the pipeline's default) if it is a finite number ``≥ 0``, else
    :class:`~diffcache.errors.OptionError` (NaN or infinite guidance would give a clip of NaNs)."""
    if guidance is None:
        return None
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance) \
            or guidance < 0:
        raise OptionError(f"{option} {guidance}: the guidance scale is a finite number >= 0 (1 or less disables "
                          "classifier-free guidance).")
    return float(guidance)


# -- device --------------------------------------------------------------------------------------------------------
def available_devices() -> list[str]:
    """The torch devices usable here: ``cpu``, then each CUDA device, then Apple's ``mps`` and Intel's ``xpu``
    when this torch has them."""
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        devices += ["xpu"] + [f"xpu:{i}" for i in range(xpu.device_count())]
    return devices


def check_device(device: str | None, option: str = "--device") -> str:
    """The device to run on: ``device`` if torch can use it here (``None``: ``cuda`` when available, else
    ``cpu``); otherwise :class:`~diffcache.errors.OptionError` listing the available devices."""
    import torch

    available = available_devices()
    if device is None:
        return "cuda" if "cuda" in available else "cpu"
    listed = ", ".join(available)
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise OptionError(f"{option} {device}: not a torch device name; available here: {listed}.") from None
    if device in available or str(parsed) in available or parsed.type == "cpu":
        return device
    if parsed.type == "cuda":
        reason = (f"this torch {torch.__version__} is built without CUDA" if torch.version.cuda is None
                  else "no CUDA device is visible" if not torch.cuda.is_available()
                  else f"this machine has {torch.cuda.device_count()} CUDA device(s)")
    else:
        reason = f"{parsed.type!r} is not available here"
    raise OptionError(f"{option} {device}: {reason}; available here: {listed}.")


# -- paths ---------------------------------------------------------------------------------------------------------
def _writable_folder(folder: Path, option: str, given) -> None:
    """Refuse when files cannot be made under ``folder`` (made if missing): its nearest existing ancestor must be a
    folder in which a file can be created (probed with a temporary file, removed at once)."""
    ancestor = Path(os.path.abspath(folder))
    while not ancestor.exists() and ancestor != ancestor.parent:
        if ancestor.is_symlink():
            raise OutputPathError(f"{option} {given}: {ancestor} is a broken symbolic link; give a path in an "
                                  "existing folder.")
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputPathError(f"{option} {given}: {ancestor} is a file, not a folder; give a path in a folder.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".diffcache-probe-", dir=ancestor)
    except OSError as error:
        raise OutputPathError(f"{option} {given}: cannot write in {ancestor} ({error.strerror or error}); give a "
                              "path in a folder you can write to.") from None
    os.close(fd)
    os.unlink(probe)


#: characters an output name may not hold: control characters (a newline, a tab, an escape sequence that recolours
#: the terminal) and Unicode's line and paragraph separators. The system allows them, but such a name cannot be
#: typed or seen in a listing, and it is nearly always a quoting or pasting accident.
_INVISIBLE = ("Cc", "Zl", "Zp")


def _named(path, option: str, what: str) -> None:
    """Refuse an output name that is empty or blank (``--out ''``, often an unset shell variable: as a path it would
    mean the current folder) or holds a control character (:data:`_INVISIBLE`)."""
    import unicodedata

    text = str(path)
    invisible = sorted({char for char in text if unicodedata.category(char) in _INVISIBLE})
    if invisible:
        listed = ", ".join(f"U+{ord(char):04X}" for char in invisible)
        raise OutputPathError(f"{option} {text!r}: the name holds a control character or line separator ({listed}), "
                              f"which cannot be typed or seen in a listing; give {what} of visible characters.")
    if not text.strip():
        raise OutputPathError(f"{option} {text!r}: {'a blank' if text else 'an empty'} name; give {what}.")


def check_output(path, force: bool = False, option: str = "--out") -> Path:
    """Refuse, before the work that produces it, an output file that cannot be written: an empty name, a folder of
    that name, an existing file without ``force`` (:class:`~diffcache.errors.OutputExistsError`), a parent that is
    a file, a folder that cannot be written in (:class:`~diffcache.errors.OutputPathError`). Returns the path."""
    _named(path, option, "a file name")
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputPathError(f"{option} {path}: is a folder; give a file name.")
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; pass --force (force=True) to overwrite it.")
    _writable_folder(path.parent, option, path)
    return path


def check_output_folder(path, option: str = "--out") -> Path:
    """Refuse an output folder with an empty name, that is a file, lies under a file, or cannot be written in (made
    if missing)."""
    _named(path, option, "a folder name")
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{option} {path}: is a file, not a folder; give a folder.")
    _writable_folder(path, option, path)
    return path


# -- prompts -------------------------------------------------------------------------------------------------------
def check_prompts(class_name: str | None, prompts, option: str = "--prompt") -> None:
    """Parse ``prompts`` (a string, a list, or ``None``) with the embedded models' grammar when ``class_name`` is
    one of theirs (:data:`SHAPES_VIDEO_PIPELINES`: ``a {colour} {shape} moving {direction}``;
    :data:`SHAPES_IMAGE_PIPELINES`: ``a {colour} {shape}`` too): a bad prompt is one
    :class:`~diffcache.errors.PromptError` before the pipeline loads. Other pipelines take any text."""
    if prompts is None or class_name not in SHAPES_VIDEO_PIPELINES + SHAPES_IMAGE_PIPELINES:
        return
    from .embedded.shapes import parse_prompt

    for prompt in [prompts] if isinstance(prompts, str) else prompts:
        try:
            parse_prompt(prompt, require_direction=class_name in SHAPES_VIDEO_PIPELINES)
        except PromptError as error:
            raise PromptError(f"{option}: {error}") from None


def check_negative_prompt(class_name: str | None, text: str | None, option: str = "--negative-prompt") -> None:
    """A negative prompt of an embedded model: words of its vocabulary (it takes any of them, not only the
    grammar's sentences), checked before the pipeline loads; other pipelines take any text."""
    if not text or class_name not in SHAPES_VIDEO_PIPELINES + SHAPES_IMAGE_PIPELINES:
        return
    from .embedded.shapes import tokenize

    try:
        tokenize(text)
    except PromptError as error:
        raise PromptError(f"{option}: {error}") from None


# -- sizes ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SizeLimits:
    """What sizes a model can generate: pixel multiples and (with a positional range) maxima.

    ``positions``: the transformer's positions per axis (``rope_max_seq_len``), ``None`` for no fixed range;
    ``patch``: its ``(t, h, w)`` patch size; ``temporal`` / ``spatial``: the latent's compression (the VAE's
    factors; the embedded model packs 2×2 pixels and keeps every frame); ``multiple``: the pixel multiple of
    height and width; ``round_frames``: whether the pipeline rounds frame counts to ``temporal·k + 1`` (Wan);
    ``frames``: whether the frame count is bounded by the positional range."""

    model: str
    positions: int | None
    patch: tuple[int, int, int]
    temporal: int
    spatial: int
    multiple: int
    round_frames: bool
    frames: bool = True
    frame_multiple: int = 1

    def latent_frames(self, frames: int) -> int:
        """Latent frames of a clip of ``frames`` frames, as the pipeline computes them."""
        if not self.round_frames:
            return frames
        if frames % self.temporal != 1:  # diffusers' Wan pipelines: "Rounding to the nearest number"
            frames = frames // self.temporal * self.temporal + 1
        return (frames - 1) // self.temporal + 1

    def max_frames(self) -> int | None:
        """The most frames whose latent fits the positional range (``None``: no bound)."""
        if self.positions is None or not self.frames:
            return None
        limit = (self.positions + 1) * self.patch[0] - 1  # latent frames with at most `positions` patches
        if not self.round_frames:
            return limit // self.frame_multiple * self.frame_multiple
        # latent_frames(F) = F // t + 1 for every F ≥ 1 (t > 1): the largest F with F // t + 1 <= limit
        return (limit - 1) * self.temporal + self.temporal - 1

    def max_pixels(self, axis: int) -> int | None:
        """The largest multiple of :attr:`multiple` whose latent fits the positional range along ``axis``
        (1: height, 2: width)."""
        if self.positions is None:
            return None
        return ((self.positions + 1) * self.patch[axis] * self.spatial - 1) // self.multiple * self.multiple


def _limits(model: str, class_name: str | None, transformer: dict | None, vae: dict | None,
            unet: dict | None = None) -> SizeLimits | None:
    if class_name in SHAPES_VIDEO_PIPELINES and transformer:
        patch = tuple(transformer["patch_size"])
        return SizeLimits(model, transformer.get("rope_max_seq_len"), patch, 1, EMBEDDED_UNSHUFFLE,
                          EMBEDDED_UNSHUFFLE * patch[1], round_frames=False, frame_multiple=patch[0])
    if class_name in SHAPES_IMAGE_PIPELINES and unet:
        factor = EMBEDDED_UNSHUFFLE * 2 ** (len(unet["block_out_channels"]) - 1)
        return SizeLimits(model, None, (1, 1, 1), 1, EMBEDDED_UNSHUFFLE, factor, round_frames=False, frames=False)
    if class_name in WAN_FAMILY and transformer and transformer.get("rope_max_seq_len"):
        patch = tuple(transformer["patch_size"])
        vae = vae or {}
        temporal = vae.get("scale_factor_temporal") or 2 ** sum(bool(d) for d in vae.get("temperal_downsample",
                                                                                          [False, True, True]))
        spatial = vae.get("scale_factor_spatial") or 2 ** len(vae.get("temperal_downsample", [False, True, True]))
        multiple = math.lcm(_FIXED_MULTIPLE.get(class_name, 1), spatial * patch[1], spatial * patch[2])
        return SizeLimits(model, transformer["rope_max_seq_len"], patch, temporal, spatial, multiple,
                          round_frames=True, frames=class_name not in WINDOWED_FRAMES)
    return None


def _read_config(path: Path) -> dict | None:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def model_limits(model: str) -> SizeLimits | None:
    """The size limits of an embedded model or a local pipeline folder, read from its configs without loading it;
    ``None`` for a hub id, an unreadable folder or a pipeline without known limits (checked after loading then,
    :func:`pipeline_limits`)."""
    from .loading import EMBEDDED_MODELS, embedded_model_path

    try:
        folder = embedded_model_path(model) if model in EMBEDDED_MODELS else Path(model).expanduser()
    except DiffcacheError:
        return None
    index = _read_config(folder / "model_index.json")
    if index is None:
        return None
    return _limits(model, index.get("_class_name"), _read_config(folder / "transformer" / "config.json"),
                   _read_config(folder / "vae" / "config.json"), _read_config(folder / "unet" / "config.json"))


def pipeline_limits(pipe, model: str) -> SizeLimits | None:
    """The size limits of a loaded pipeline (from its transformer's and VAE's configs), ``None`` if unknown."""
    def config(name):
        part = getattr(pipe, name, None)
        return dict(part.config) if getattr(part, "config", None) is not None else None

    return _limits(model, type(pipe).__name__, config("transformer"), config("vae"), config("unet"))


def check_size(limits: SizeLimits | None, height: int | None = None, width: int | None = None,
               frames: int | None = None) -> None:
    """Refuse ``height`` / ``width`` / ``frames`` (``None``: the model's default) outside ``limits`` with one
    :class:`~diffcache.errors.OptionError` naming the option, the value and the accepted range."""
    if limits is None:
        return
    reach = (f"{limits.model} places at most {limits.positions} patches per axis (its transformer's "
             f"rope_max_seq_len)" if limits.positions is not None else None)
    for axis, name, value in ((1, "height", height), (2, "width", width)):
        if value is None:
            continue
        top = limits.max_pixels(axis)
        accepted = (f"multiples of {limits.multiple} from {limits.multiple} to {top}" if top is not None
                    else f"multiples of {limits.multiple}")
        if value % limits.multiple or value < limits.multiple or (top is not None and value > top):
            why = f"{reach}, so " if top is not None and value > top else f"{limits.model}: "
            raise OptionError(f"--{name} {value}: {why}--{name} accepts {accepted}.")
    if frames is None:
        return
    if not limits.frames:
        return
    top = limits.max_frames()
    if limits.round_frames:
        accepted = f"1 to {top} (rounded by the pipeline to {limits.temporal}k + 1)"
        bad = frames < 1 or (top is not None and frames > top)
    else:
        step = limits.frame_multiple
        accepted = f"multiples of {step} from {step} to {top}" if top is not None else f"multiples of {step}"
        bad = frames % step or frames < step or (top is not None and frames > top)
    if bad:
        why = f"{reach}, so " if top is not None and frames > top else f"{limits.model}: "
        raise OptionError(f"--frames {frames}: {why}--frames accepts {accepted}.")


__all__ = ["SEED_MAX", "SizeLimits", "available_devices", "check_device", "check_guidance", "check_output",
           "check_output_folder", "check_prompts", "check_seed", "check_size", "model_limits", "pipeline_limits"]

"""What a benchmark runs on: the default prompts (the embedded models' grammar, from
:func:`diffcache.embedded.shapes.prompts`), the first frames of an image-to-video model (:func:`image_files`,
:func:`pair_images`), and the *items* of a sweep, each one (prompt, seed), with its first frame for an
image-to-video model."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

#: file name endings ``--images FOLDER`` picks up
IMAGE_FILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class Item:
    """One (prompt, seed) of a sweep, with its first frame (``image``, a file path) for an image-to-video model;
    every method runs on it. ``key`` names it in the results and clips."""

    index: int
    prompt: str
    seed: int
    image: str | None = None

    @property
    def key(self) -> str:
        return f"{self.index:04d}"


def default_prompts(model: str, pipe, n: int) -> list[str]:
    """``n`` prompts spread over the shapes grammar for the embedded models: ``a {colour} {shape} moving
    {direction}`` for the text-to-video model, ``a {colour} {shape}`` for an embedded still-image model."""
    from ..embedded.shapes import prompts
    from ..loading import EMBEDDED_MODELS

    if type(pipe).__name__ == "TinyShapesT2VPipeline":
        return prompts(n, spread=True)
    if model in EMBEDDED_MODELS:
        return prompts(n, kind="image", spread=True)
    raise ValueError(f"{model!r} is not an embedded model: give its prompts with --prompt (repeat it).")


def image_files(entries: list[str | os.PathLike]) -> list[Path]:
    """``--images``: each entry a file, or a folder whose image files (:data:`IMAGE_FILE_SUFFIXES`) are taken in
    name order; every file is read now (:func:`diffcache.generation.read_image`), so a bad one fails before any
    work."""
    from ..generation import ImageInputError, read_image

    files = []
    for entry in entries:
        path = Path(entry).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_FILE_SUFFIXES)
            if not found:
                raise ImageInputError(f"--images {str(path)!r}: the folder holds no image files "
                                      f"({', '.join(IMAGE_FILE_SUFFIXES)}).")
            files += found
        else:
            files.append(path)
    for path in files:
        read_image(path)
    return files


def pair_images(prompts: list[str], images: list[Path]) -> tuple[list[str], list[str]]:
    """Pair the prompts with the first frames: as many of each → the i-th prompt with the i-th image; one prompt →
    it with every image; one image → it with every prompt; no prompts (a pipeline without one: Stable Video
    Diffusion) → one item per image, with an empty prompt. Returns the paired ``(prompts, image paths)``."""
    paths = [str(path) for path in images]
    if not prompts:
        return [""] * len(paths), paths
    if len(prompts) == len(paths):
        return list(prompts), paths
    if len(prompts) == 1:
        return list(prompts) * len(paths), paths
    if len(paths) == 1:
        return list(prompts), paths * len(prompts)
    from ..generation import ImageInputError

    raise ImageInputError(f"{len(prompts)} prompts and {len(paths)} images cannot be paired: give as many of each "
                          "(the i-th prompt with the i-th image, folders in file-name order), or one prompt (used "
                          "with every image), or one image (used with every prompt).")


def image_fingerprints(paths: list[str]) -> list[list[str]]:
    """What the benchmark's configuration records of its first frames: each file's absolute path and the start of
    its SHA-256, so a resume with other images (or a file changed in place) is refused."""
    return [[str(Path(path).expanduser().resolve()), hashlib.sha256(Path(path).expanduser().read_bytes())
             .hexdigest()[:16]] for path in paths]


def plan_items(prompts: list[str], seeds: int = 1, images: list[str] | None = None) -> list[Item]:
    """Every prompt with ``seeds`` seeds; seeds are numbered by position (prompt ``i``, seed ``j`` → ``i·seeds+j``).
    ``images``: the first frame of each prompt (:func:`pair_images`)."""
    items = []
    for i, prompt in enumerate(prompts):
        for j in range(seeds):
            items.append(Item(len(items), prompt, i * seeds + j, None if images is None else images[i]))
    return items

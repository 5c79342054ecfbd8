"""Analytic checker: decide colour, shape and direction from a clip's pixels, and score prompt adherence.

This is the reference-free quality metric for the embedded models (what VBench is for real ones):

1. Background = per-frame median of the border pixels; foreground = pixels whose largest channel difference
   from it exceeds ``FOREGROUND_THRESHOLD``; only the largest connected component counts (specks are noise).
2. Colour = nearest palette colour to the mean foreground colour (pixels well inside the shape).
3. Shape = from the *extent* (area ÷ bounding-box area, median over frames): a square fills its box (≈ 1),
   a circle fills π/4 ≈ 0.79, an apex-up triangle ½; and from the box's *aspect* (width ÷ height, median over
   frames), 1 for a circle or square and 2/√3 ≈ 1.15 for the triangle: outside ``ASPECT_RANGES`` the shape is
   "elongated" (a bar prompted as a square, a stretched circle), which matches no prompt.
4. Direction = sign of the dominant axis of the least-squares slope of the centroid track; slopes under
   ``MIN_SPEED`` pixels per frame count as "still".
5. Temporal stability = 1 − coefficient of variation of the foreground area over frames (1 = constant size).

``adherence`` is the fraction of the prompt's attributes (colour, shape, direction) that match.

Beside adherence, the checker reports what a person sees at a glance and adherence does not measure:

6. *Objects*: the foreground's connected components (8-connected) of at least ``MIN_OBJECT_AREA`` pixels, per
   frame: a duplicate, a fragment beside the shape or a second blob entering the frame is a second object.
7. *Presence*: the main object is in every frame, at no less than ``MIN_AREA_RATIO`` of its median area (an
   object that shrinks and vanishes before the last frame fails).
8. *Background*: the pixels away from every foreground pixel (two pixels of margin) are uniform (standard
   deviation ≤ ``BACKGROUND_MAX_STD`` per channel), dark (median ≤ ``BACKGROUND_MAX_LEVEL``) and steady (the
   per-frame median moves ≤ ``BACKGROUND_MAX_DRIFT``). The training data's background is a uniform level in
   [0, 0.1], the same in every frame.

A clip is *clean* when it has exactly one object in every frame, present in every frame, on a uniform
background. Adherence and cleanliness are separate figures: a clean clip of the wrong colour is clean, a
right-coloured clip with a duplicate is not.

The thresholds sit between the ground truth (one object, area constant to antialiasing, background std 0) and
the defects a person calls out; they are fixed from the data's ranges, not tuned on a model's output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .shapes import COLOURS, DIRECTIONS, parse_prompt

FOREGROUND_THRESHOLD = 0.3
MIN_SPEED = 0.3  # pixels per frame
SQUARE_MIN_EXTENT = 0.89
CIRCLE_MIN_EXTENT = 0.645
MIN_OBJECT_AREA = 3  # pixels; the smallest shape covers about 50 (radius 4), a speck of 1-2 pixels is noise
MIN_AREA_RATIO = 0.5  # of the main object's median area, in every frame
# width ÷ height of the shape's box: the ground truth spans 0.88–1.14 (circle, square) and 1.0–1.33 (triangle)
# after antialiasing; the ranges leave a quarter beyond those extremes
ASPECT_RANGES = {"circle": (0.7, 1.43), "square": (0.7, 1.43), "triangle": (0.8, 1.67)}
BACKGROUND_MAX_STD = 0.04  # about 10 / 255
BACKGROUND_MAX_LEVEL = 0.2  # the data's background is at most 0.1
BACKGROUND_MAX_DRIFT = 0.04
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass
class CheckResult:
    """What the checker saw in one clip, and how well it matches the prompt."""

    prompt: str
    colour: str | None
    shape: str | None
    direction: str | None
    adherence: float
    temporal_stability: float
    clean: bool = False  #: exactly one object in every frame, present in every frame, uniform background
    objects: int = 0  #: the most objects seen in any one frame
    present_every_frame: bool = False
    background_uniform: bool = False
    matches: dict[str, bool] = field(default_factory=dict)
    detail: dict[str, float] = field(default_factory=dict)


def _as_frames(clip) -> np.ndarray:
    """Accept (frames, H, W, 3) or (H, W, 3) floats in [0, 1] or uint8; return float32 (frames, H, W, 3)."""
    arr = np.asarray(clip)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected a clip of shape (frames, height, width, 3) or an image (height, width, 3), "
                         f"got shape {tuple(arr.shape)}")
    return arr


def _background_and_foreground(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame background colour (median of the border pixels) and every foreground pixel (largest channel
    difference from it above ``FOREGROUND_THRESHOLD``), before any connected-component step."""
    border = np.concatenate(
        [frames[:, 0], frames[:, -1], frames[:, 1:-1, 0], frames[:, 1:-1, -1]], axis=1
    )  # (F, n_border, 3)
    background = np.median(border, axis=1)  # (F, 3)
    return background, np.abs(frames - background[:, None, None, :]).max(-1) > FOREGROUND_THRESHOLD


def _largest_components(foreground: np.ndarray) -> np.ndarray:
    masks = np.zeros(foreground.shape, dtype=bool)
    for i, m in enumerate(foreground):
        labels, n = ndimage.label(m)
        if n:
            sizes = ndimage.sum(m, labels, index=np.arange(1, n + 1))
            masks[i] = labels == (1 + int(np.argmax(sizes)))
    return masks


def foreground_masks(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Largest connected foreground component per frame, and the per-frame background colour."""
    background, foreground = _background_and_foreground(frames)
    return _largest_components(foreground), background


def object_counts(foreground: np.ndarray) -> np.ndarray:
    """Number of objects per frame of a foreground mask ``(frames, H, W)``: 8-connected components of at least
    ``MIN_OBJECT_AREA`` pixels."""
    counts = np.zeros(len(foreground), dtype=int)
    for i, m in enumerate(foreground):
        labels, n = ndimage.label(m, structure=_EIGHT)
        if n:
            sizes = ndimage.sum(m, labels, index=np.arange(1, n + 1))
            counts[i] = int((sizes >= MIN_OBJECT_AREA).sum())
    return counts


def background_stats(frames: np.ndarray, foreground: np.ndarray, background: np.ndarray) -> dict:
    """Standard deviation, level and frame-to-frame drift of the pixels two pixels away from any foreground."""
    near = np.stack([ndimage.binary_dilation(m, structure=_EIGHT, iterations=2) for m in foreground])
    away = frames[~near]  # (n, 3)
    if len(away) < 16:
        return {"background_std": float("inf"), "background_level": float("inf"), "background_drift": float("inf")}
    per_frame = np.array([np.median(f[~m], axis=0) if (~m).sum() else background[i]
                          for i, (f, m) in enumerate(zip(frames, near))])
    return {
        "background_std": float(away.std(axis=0).max()),
        "background_level": float(np.median(away, axis=0).max()),
        "background_drift": float((per_frame.max(0) - per_frame.min(0)).max()),
    }


def classify_shape(extent: float, aspect: float | None = None) -> str:
    """The shape named by the extent (area ÷ box area) and, when given, the box's aspect (width ÷ height):
    ``"square"``, ``"circle"``, ``"triangle"``, or ``"elongated"`` when the aspect is outside that shape's
    ``ASPECT_RANGES``."""
    shape = "square" if extent >= SQUARE_MIN_EXTENT else "circle" if extent >= CIRCLE_MIN_EXTENT else "triangle"
    if aspect is not None:
        low, high = ASPECT_RANGES[shape]
        if not low <= aspect <= high:
            return "elongated"
    return shape


def analyse(clip) -> dict:
    """Colour, shape, direction and the features behind them, without reference to a prompt."""
    frames = _as_frames(clip)
    background, foreground = _background_and_foreground(frames)
    masks = _largest_components(foreground)
    areas = masks.sum(axis=(1, 2)).astype(np.float64)
    present = areas >= 4
    counts = object_counts(foreground)
    bg = background_stats(frames, foreground, background)
    median_area = float(np.median(areas))
    min_ratio = float(areas.min() / median_area) if median_area > 0 else 0.0
    uniform = (bg["background_std"] <= BACKGROUND_MAX_STD and bg["background_level"] <= BACKGROUND_MAX_LEVEL
               and bg["background_drift"] <= BACKGROUND_MAX_DRIFT)
    every = bool(present.all() and min_ratio >= MIN_AREA_RATIO)
    out = {"colour": None, "shape": None, "direction": None, "temporal_stability": 0.0,
           "extent": float("nan"), "aspect": float("nan"), "speed": float("nan"),
           "present_fraction": float(present.mean()),
           "objects": int(counts.max()), "one_object_fraction": float((counts == 1).mean()),
           "min_area_ratio": min_ratio, "present_every_frame": every, "background_uniform": bool(uniform),
           "clean": bool(every and uniform and (counts == 1).all()), **bg}
    if not present.any():
        return out
    # colour: mean over shape pixels that are not on the boundary (erode once when the shape is big enough)
    pixels = []
    for f, m in zip(frames[present], masks[present]):
        inner = ndimage.binary_erosion(m)
        pixels.append(f[inner if inner.sum() >= 4 else m])
    mean_colour = np.concatenate(pixels).mean(0)
    names = list(COLOURS)
    dists = [np.linalg.norm(mean_colour - np.array(COLOURS[c])) for c in names]
    out["colour"] = names[int(np.argmin(dists))]
    # shape: median extent over frames
    extents = []
    aspects = []
    centroids = []
    for m in masks[present]:
        ys, xs = np.nonzero(m)
        width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
        extents.append(m.sum() / (width * height))
        aspects.append(width / height)
        centroids.append((xs.mean(), ys.mean()))
    out["extent"] = float(np.median(extents))
    out["aspect"] = float(np.median(aspects))
    out["shape"] = classify_shape(out["extent"], out["aspect"])
    # direction: least-squares slope of the centroid track over the frames where the shape is present
    t = np.nonzero(present)[0].astype(np.float64)
    if len(t) >= 2:
        c = np.array(centroids)
        vx = np.polyfit(t, c[:, 0], 1)[0]
        vy = np.polyfit(t, c[:, 1], 1)[0]
        speed = max(abs(vx), abs(vy))
        out["speed"] = float(speed)
        if speed >= MIN_SPEED:
            step = (int(np.sign(vx)), 0) if abs(vx) >= abs(vy) else (0, int(np.sign(vy)))
            out["direction"] = next(d for d, v in DIRECTIONS.items() if v == step)
        else:
            out["direction"] = "still"
    # temporal stability: 1 - coefficient of variation of the area (missing frames count as area 0)
    if len(areas) > 1:
        out["temporal_stability"] = float(max(0.0, 1.0 - areas.std() / max(areas.mean(), 1e-8)))
    else:
        out["temporal_stability"] = 1.0
    return out


def check(clip, prompt: str) -> CheckResult:
    """Score how well ``clip`` (frames, H, W, 3) — or an image (H, W, 3) — follows ``prompt``.

    For an image, or a prompt without a direction, only colour and shape are scored.
    """
    frames = _as_frames(clip)
    spec = parse_prompt(prompt, require_direction=False)
    seen = analyse(frames)
    matches = {"colour": seen["colour"] == spec.colour, "shape": seen["shape"] == spec.shape}
    if spec.direction is not None and frames.shape[0] > 1:
        matches["direction"] = seen["direction"] == spec.direction
    detail = {k: seen[k] for k in ("extent", "aspect", "speed", "present_fraction", "one_object_fraction",
                                   "min_area_ratio", "background_std", "background_level", "background_drift")}
    return CheckResult(
        prompt=prompt,
        colour=seen["colour"],
        shape=seen["shape"],
        direction=seen["direction"],
        adherence=float(np.mean(list(matches.values()))),
        temporal_stability=seen["temporal_stability"],
        clean=seen["clean"],
        objects=seen["objects"],
        present_every_frame=seen["present_every_frame"],
        background_uniform=seen["background_uniform"],
        matches=matches,
        detail=detail,
    )

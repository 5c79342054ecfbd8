"""Procedural clips of one shape moving in one direction, and the prompt grammar that describes them.

Grammar (documented in docs/embedded-models.md)::

    a {colour} {shape} moving {direction}

    colour    : red | green | blue | yellow | white
    shape     : circle | square | triangle
    direction : left | right | up | down

Every clip shows exactly one antialiased shape of one colour on a dark, uniform background. The shape moves
in a straight line at a constant speed (0.75 to 1.75 pixels per frame) from a random start chosen so that it
stays fully inside every frame. Clips are rendered in batches with torch, deterministically from a
``torch.Generator`` — the same seed gives the same pixels.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from ..errors import PromptError

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.12, 0.12),
    "green": (0.12, 0.85, 0.15),
    "blue": (0.15, 0.30, 1.00),
    "yellow": (0.95, 0.90, 0.10),
    "white": (0.95, 0.95, 0.95),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[int, int]] = {  # (dx, dy) in image coordinates (y grows downwards)
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
}
FILLER_WORDS: tuple[str, ...] = ("a", "moving")
VOCABULARY: tuple[str, ...] = FILLER_WORDS + tuple(COLOURS) + SHAPES + tuple(DIRECTIONS)

NUM_FRAMES = 8
HEIGHT = 32
WIDTH = 32
RADIUS_RANGE = (4.0, 6.0)  # circle radius in pixels; other shapes have the same area
SPEED_RANGE = (0.75, 1.75)  # pixels per frame
MARGIN = 1.0  # pixels kept free between the shape and the frame border

# Shape geometry relative to the circle radius r, chosen so that every shape covers the area of the circle.
SQUARE_HALF_SIDE = math.sqrt(math.pi) / 2  # side = sqrt(pi) r
TRIANGLE_CIRCUMRADIUS = math.sqrt(math.pi / (3 * math.sqrt(3) / 4))  # equilateral, apex up



@dataclass(frozen=True)
class ClipSpec:
    """The attributes a prompt names."""

    colour: str
    shape: str
    direction: str | None = None

    @property
    def prompt(self) -> str:
        text = f"a {self.colour} {self.shape}"
        return f"{text} moving {self.direction}" if self.direction else text


def tokenize(prompt: str) -> list[str]:
    """Split a prompt into lower-case words; raise :class:`PromptError` on a word outside the vocabulary."""
    words = re.findall(r"[a-zA-Z]+|[^\sa-zA-Z]", prompt.lower())
    unknown = [w for w in words if w not in VOCABULARY]
    if unknown:
        raise PromptError(
            f"prompt {prompt!r} uses word(s) {', '.join(repr(w) for w in unknown)} outside the vocabulary of the "
            f"embedded models. Accepted words: {', '.join(VOCABULARY)}. "
            "Grammar: 'a {colour} {shape} moving {direction}'."
        )
    return words


def parse_prompt(prompt: str, require_direction: bool = True) -> ClipSpec:
    """Parse ``"a {colour} {shape} moving {direction}"``; with ``require_direction=False`` the still-image form
    ``"a {colour} {shape}"`` is accepted too. Raises :class:`PromptError` naming the grammar otherwise."""
    words = tokenize(prompt)
    colours = [w for w in words if w in COLOURS]
    shapes = [w for w in words if w in SHAPES]
    directions = [w for w in words if w in DIRECTIONS]
    full = require_direction or "moving" in words or bool(directions)
    expected = ["a", "colour", "shape", "moving", "direction"] if full else ["a", "colour", "shape"]
    roles = [
        "colour" if w in COLOURS else "shape" if w in SHAPES else "direction" if w in DIRECTIONS else w for w in words
    ]
    if roles != expected or len(colours) != 1 or len(shapes) != 1:
        form = "a {colour} {shape} moving {direction}" if require_direction else "a {colour} {shape}"
        raise PromptError(
            f"prompt {prompt!r} does not follow the grammar '{form}' "
            f"(colour: {'|'.join(COLOURS)}; shape: {'|'.join(SHAPES)}; direction: {'|'.join(DIRECTIONS)})."
        )
    return ClipSpec(colours[0], shapes[0], directions[0] if directions else None)


PROMPT_KINDS = ("video", "image")


def prompts(count: int | None = None, *, kind: str = "video", spread: bool = False,
            seeded: bool = False) -> list[str] | list[tuple[str, int]]:
    """Prompts of the grammar, deterministically: every prompt once by default, else ``count`` of them.

    ``kind="video"``: the 60 prompts ``a {colour} {shape} moving {direction}`` (5 colours × 3 shapes ×
    4 directions, in the order colour, shape, direction of :data:`COLOURS`, :data:`SHAPES`, :data:`DIRECTIONS`);
    ``kind="image"``: the 15 still-image prompts ``a {colour} {shape}`` in the same order.

    ``count`` prompts cycle through that list (prompt ``i`` is ``grammar[i % len(grammar)]``: the gates'
    prompt set); with ``spread=True`` they are spread evenly over it instead (``grammar[i·len(grammar) // count]``,
    so a few prompts still differ in colour, shape and direction: the benchmark's and the calibration's
    defaults). With ``seeded=True`` each prompt comes as ``(prompt, seed)``, the seed being its position.
    """
    if kind not in PROMPT_KINDS:
        raise ValueError(f"kind={kind!r} is not a prompt kind; use one of {', '.join(PROMPT_KINDS)}.")
    if kind == "video":
        grammar = [ClipSpec(c, s, d).prompt for c in COLOURS for s in SHAPES for d in DIRECTIONS]
    else:
        grammar = [ClipSpec(c, s).prompt for c in COLOURS for s in SHAPES]
    if count is None:
        count = len(grammar)
    elif isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a non-negative integer (or None for every prompt once), got {count!r}.")
    if spread:
        chosen = [grammar[(i * len(grammar)) // count % len(grammar)] for i in range(count)]
    else:
        chosen = [grammar[i % len(grammar)] for i in range(count)]
    return [(prompt, seed) for seed, prompt in enumerate(chosen)] if seeded else chosen


def _extents(shape: str, radius: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distances from the shape's centre to its left, right, top and bottom edges."""
    if shape == "circle":
        e = radius
        return e, e, e, e
    if shape == "square":
        e = radius * SQUARE_HALF_SIDE
        return e, e, e, e
    big_r = radius * TRIANGLE_CIRCUMRADIUS
    half_width = big_r * math.sqrt(3) / 2
    return half_width, half_width, big_r, big_r / 2


def _coverage(shape: str, dx: torch.Tensor, dy: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Antialiased coverage in [0, 1] from pixel offsets to the centre (signed distance, 1-pixel ramp)."""
    if shape == "circle":
        sdf = torch.sqrt(dx**2 + dy**2) - radius
    elif shape == "square":
        sdf = torch.maximum(dx.abs(), dy.abs()) - radius * SQUARE_HALF_SIDE
    else:
        inradius = radius * TRIANGLE_CIRCUMRADIUS / 2
        c, s = math.sqrt(3) / 2, 0.5
        dx, dy = torch.broadcast_tensors(dx, dy)
        sdf = torch.stack([dy, -c * dx - s * dy, c * dx - s * dy]).amax(0) - inradius
    return (0.5 - sdf).clamp(0.0, 1.0)


def render_clips(
    specs: list[ClipSpec],
    generator: torch.Generator | None = None,
    num_frames: int = NUM_FRAMES,
    height: int = HEIGHT,
    width: int = WIDTH,
    radius_range: tuple[float, float] = RADIUS_RANGE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render one clip per spec.

    Returns ``(clips, masks)``: clips of shape ``(B, frames, H, W, 3)`` with values in [0, 1], and the shape's
    coverage ``(B, frames, H, W)``. Radius, speed, start position and background level are drawn from
    ``generator``; a spec without a direction gives a still shape (the same frame repeated). The circle's radius
    is uniform in ``radius_range`` pixels (the other shapes have the circle's area); a recipe may train on larger
    shapes than the default :data:`RADIUS_RANGE`.
    """
    low, high = radius_range
    if not 0 < low <= high:
        raise ValueError(f"radius_range must be (low, high) with 0 < low <= high, got {radius_range!r}.")
    n = len(specs)
    u = torch.rand(n, 5, generator=generator)
    radius = low + (high - low) * u[:, 0]
    background = 0.1 * u[:, 4]
    ys = torch.arange(height, dtype=torch.float32).view(1, height, 1) + 0.5
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, width) + 0.5
    frames = torch.arange(num_frames, dtype=torch.float32)
    clips = torch.empty(n, num_frames, height, width, 3)
    masks = torch.empty(n, num_frames, height, width)
    for i, spec in enumerate(specs):
        left, right, top, bottom = _extents(spec.shape, radius[i])
        dx, dy = DIRECTIONS[spec.direction] if spec.direction else (0, 0)
        along = width if dx else height
        lo, hi = (left, right) if dx else (top, bottom)
        room = along - 2 * MARGIN - lo - hi
        max_speed = float(room) / max(num_frames - 1, 1)
        speed = (SPEED_RANGE[0] + (SPEED_RANGE[1] - SPEED_RANGE[0]) * u[i, 1]).clamp(max=max_speed)
        if not spec.direction:
            speed = speed * 0
        travel = speed * (num_frames - 1)
        # start so that the whole path stays inside the frame
        cx0 = MARGIN + left + (width - 2 * MARGIN - left - right - (travel if dx else 0)) * u[i, 2]
        cy0 = MARGIN + top + (height - 2 * MARGIN - top - bottom - (travel if dy else 0)) * u[i, 3]
        if dx < 0:
            cx0 = cx0 + travel
        if dy < 0:
            cy0 = cy0 + travel
        cx = cx0 + dx * speed * frames
        cy = cy0 + dy * speed * frames
        cover = _coverage(spec.shape, xs - cx.view(-1, 1, 1), ys - cy.view(-1, 1, 1), radius[i])
        colour = torch.tensor(COLOURS[spec.colour])
        clips[i] = background[i] + cover.unsqueeze(-1) * (colour - background[i])
        masks[i] = cover
    return clips, masks


def random_specs(n: int, generator: torch.Generator | None = None, with_direction: bool = True) -> list[ClipSpec]:
    """Draw ``n`` specs uniformly over the grammar."""
    idx = torch.randint(0, 1 << 30, (n, 3), generator=generator)
    colours, directions = list(COLOURS), list(DIRECTIONS)
    return [
        ClipSpec(
            colours[int(a) % len(colours)],
            SHAPES[int(b) % len(SHAPES)],
            directions[int(c) % len(directions)] if with_direction else None,
        )
        for a, b, c in idx
    ]

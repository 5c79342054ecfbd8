"""The adherence gates of the embedded models: generate a fixed prompt set, score it with the checker.

tiny-shapes-t2v is scored on colour, shape and direction; tiny-shapes-t2i (still images, ``"a {colour} {shape}"``)
on colour and shape. Both also get the *clean rate*: the fraction of clips with exactly one object in every frame,
present in every frame, on a uniform background (:mod:`diffcache.embedded.checker`).

The gate's seeds start at :data:`HELD_OUT_SEED` (1,000,000): no recipe choice or checkpoint was selected on them.
Seeds 0 … 63 (``seed_start=0``) are the ones earlier recipes were compared on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .checker import check
from .shapes import prompts

HELD_OUT_SEED = 1_000_000  #: the gate's first seed: never used to choose a recipe or a checkpoint


def is_image_pipeline(pipe) -> bool:
    """A text-to-image pipeline (returns ``.images``), as opposed to the text-to-video one (``.frames``)."""
    from .t2i.pipeline import TinyShapesT2IPipeline

    return isinstance(pipe, TinyShapesT2IPipeline)


@dataclass
class AdherenceReport:
    adherence: float
    colour: float
    shape: float
    direction: float
    temporal_stability: float
    num_prompts: int
    per_prompt: list[dict]
    images: bool = False  #: still images: only colour and shape are scored
    clean: float = 0.0  #: fraction of clips with one object in every frame, always present, uniform background
    one_object: float = 0.0  #: fraction with exactly one object in every frame
    present: float = 0.0  #: fraction whose object is present (at half its median area or more) in every frame
    uniform_background: float = 0.0  #: fraction with a uniform, dark, steady background
    seed_start: int = HELD_OUT_SEED

    def summary(self) -> str:
        clean = (f"; clean {100 * self.clean:.1f}% (one object {100 * self.one_object:.1f}%, "
                 + ("" if self.images else f"present in every frame {100 * self.present:.1f}%, ")
                 + f"uniform background {100 * self.uniform_background:.1f}%)")
        if self.images:
            return (f"adherence {100 * self.adherence:.1f}% over {self.num_prompts} prompts "
                    f"(colour {100 * self.colour:.1f}%, shape {100 * self.shape:.1f}%){clean}")
        return (
            f"adherence {100 * self.adherence:.1f}% over {self.num_prompts} prompts "
            f"(colour {100 * self.colour:.1f}%, shape {100 * self.shape:.1f}%, direction {100 * self.direction:.1f}%)"
            f"{clean}; temporal stability {self.temporal_stability:.3f}"
        )


def score_clips(clips, prompts: list[str], seed_start: int = HELD_OUT_SEED) -> AdherenceReport:
    """Checker scores for clips ``(N, frames, H, W, 3)`` against their prompts."""
    results = [check(c, p) for c, p in zip(clips, prompts)]
    images = all("direction" not in r.matches for r in results)
    per = [{"prompt": r.prompt, "adherence": r.adherence, "seen": [r.colour, r.shape, r.direction],
            "temporal_stability": r.temporal_stability, "clean": r.clean, "objects": r.objects,
            "present_every_frame": r.present_every_frame, "background_uniform": r.background_uniform,
            "detail": r.detail} for r in results]
    rate = lambda key: float(np.mean([getattr(r, key) for r in results]))  # noqa: E731
    mean = lambda key: float(np.mean([r.matches.get(key, False) for r in results]))  # noqa: E731
    return AdherenceReport(
        adherence=float(np.mean([r.adherence for r in results])),
        colour=mean("colour"),
        shape=mean("shape"),
        direction=mean("direction"),
        temporal_stability=float(np.mean([r.temporal_stability for r in results])),
        num_prompts=len(results),
        per_prompt=per,
        images=images,
        clean=rate("clean"),
        one_object=float(np.mean([r.detail["one_object_fraction"] == 1 for r in results])),
        present=rate("present_every_frame"),
        uniform_background=rate("background_uniform"),
        seed_start=seed_start,
    )


def evaluate_adherence(
    pipe, num_prompts: int = 64, num_inference_steps: int = 30, guidance_scale: float = 5.0,
    batch_size: int = 16, progress: bool = True, return_clips: bool = False, height: int | None = None,
    width: int | None = None, seed_start: int = HELD_OUT_SEED,
):
    """Generate the gate's prompt set with fixed seeds (``shapes.prompts(num_prompts, seeded=True)``, still-image
    prompts for a text-to-image pipeline; prompt ``i`` gets seed ``seed_start + i``) and score it. Returns an
    :class:`AdherenceReport` (and the clips — images for a text-to-image pipeline — with ``return_clips=True``). ``height`` / ``width``:
    the frame size in pixels (default: the pipeline's own)."""
    size = {key: value for key, value in (("height", height), ("width", width)) if value is not None}
    image = is_image_pipeline(pipe)
    pairs = prompts(num_prompts, kind="image" if image else "video", seeded=True)
    clips = []
    saved = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(**{**saved, "disable": True})
    try:
        for start in tqdm(range(0, len(pairs), batch_size), desc="adherence", disable=not progress):
            chunk = pairs[start : start + batch_size]
            out = pipe(
                [p for p, _ in chunk],
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                generator=[torch.Generator().manual_seed(seed_start + s) for _, s in chunk],
                output_type="np",
                **size,
            )
            clips.append(out.images if image else out.frames)
    finally:
        pipe.set_progress_bar_config(**saved)
    clips = np.concatenate(clips)
    report = score_clips(clips, [p for p, _ in pairs], seed_start=seed_start)
    return (report, clips) if return_clips else report


def save_grid(clips, report: AdherenceReport, path, force: bool = False, columns: int | None = None):
    """A PNG contact sheet of scored clips: one cell per prompt, its frames side by side (a still image alone),
    titled with the prompt, the checker's adherence and whether it is clean (and, if not, why).

    ``clips``: ``(N, frames, H, W, 3)`` or ``(N, H, W, 3)`` in [0, 1], in the order of ``report.per_prompt``;
    ``columns``: cells per row (default: 3 for clips, 6 for images).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..files import atomic_path

    clips = np.asarray(clips)
    if clips.ndim == 4:
        clips = clips[:, None]
    n, frames, h, w, _ = clips.shape
    columns = columns or (3 if frames > 1 else 6)
    rows = -(-n // columns)
    cell_w = max(2.1, 0.42 * frames + 0.3)  # inches: wide enough for the two title lines
    row_h = 0.36 + min(0.9, cell_w * h / (frames * (w + 1)))  # the titles, then the strip at its aspect ratio
    fig, axes = plt.subplots(rows, columns, figsize=(columns * cell_w, rows * row_h), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (clip, row) in enumerate(zip(clips, report.per_prompt)):
        # the frames side by side with a one-pixel grey gutter between them
        strip = np.full((h, frames * (w + 1) - 1, 3), 0.5, dtype=np.float32)
        for f in range(frames):
            strip[:, f * (w + 1):f * (w + 1) + w] = clip[f]
        why = []
        if not row["clean"]:
            if row["objects"] > 1:  # a frame with none is the "vanishes" below
                why.append(f"{row['objects']} objects")
            if not row["present_every_frame"]:
                why.append("vanishes")
            if not row["background_uniform"]:
                why.append("background")
        mark = "clean" if row["clean"] else "NOT clean: " + ", ".join(why)
        ax = axes.flat[i]
        ax.imshow(np.clip(strip, 0, 1), interpolation="nearest")
        ax.set_title(f"{row['prompt']} (seed {report.seed_start + i})\nadherence {row['adherence']:.2f}, {mark}",
                     fontsize=5.5, color="black" if row["clean"] and row["adherence"] == 1 else "firebrick", pad=2)
    fig.suptitle(f"{report.summary()}", fontsize=6, wrap=True)
    with atomic_path(path, force) as tmp:
        fig.tight_layout(rect=(0, 0, 1, 0.985), h_pad=0.4, w_pad=0.3)
        fig.savefig(tmp, dpi=150, format="png")
    plt.close(fig)
    return path

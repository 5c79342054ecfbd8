"""The adherence gates of the embedded models: generate a fixed prompt set, score it with the checker.

tiny-shapes-t2v is scored on colour, shape and direction; tiny-shapes-t2i (still images, ``"a {colour} {shape}"``)
on colour and shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .checker import check
from .shapes import prompts


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

    def summary(self) -> str:
        if self.images:
            return (f"adherence {100 * self.adherence:.1f}% over {self.num_prompts} prompts "
                    f"(colour {100 * self.colour:.1f}%, shape {100 * self.shape:.1f}%)")
        return (
            f"adherence {100 * self.adherence:.1f}% over {self.num_prompts} prompts "
            f"(colour {100 * self.colour:.1f}%, shape {100 * self.shape:.1f}%, direction {100 * self.direction:.1f}%), "
            f"temporal stability {self.temporal_stability:.3f}"
        )


def score_clips(clips, prompts: list[str]) -> AdherenceReport:
    """Checker scores for clips ``(N, frames, H, W, 3)`` against their prompts."""
    results = [check(c, p) for c, p in zip(clips, prompts)]
    images = all("direction" not in r.matches for r in results)
    per = [{"prompt": r.prompt, "adherence": r.adherence, "seen": [r.colour, r.shape, r.direction],
            "temporal_stability": r.temporal_stability} for r in results]
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
    )


def evaluate_adherence(
    pipe, num_prompts: int = 64, num_inference_steps: int = 30, guidance_scale: float = 5.0,
    batch_size: int = 16, progress: bool = True, return_clips: bool = False, height: int | None = None,
    width: int | None = None,
):
    """Generate the gate's prompt set with fixed seeds (``shapes.prompts(num_prompts, seeded=True)``, still-image
    prompts for a text-to-image pipeline) and score it. Returns an :class:`AdherenceReport`
    (and the clips — images for a text-to-image pipeline — with ``return_clips=True``). ``height`` / ``width``:
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
                generator=[torch.Generator().manual_seed(s) for _, s in chunk],
                output_type="np",
                **size,
            )
            clips.append(out.images if image else out.frames)
    finally:
        pipe.set_progress_bar_config(**saved)
    clips = np.concatenate(clips)
    report = score_clips(clips, [p for p, _ in pairs])
    return (report, clips) if return_clips else report

"""The adherence gate of the embedded text-to-video model: generate a fixed prompt set, score it with the checker."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .checker import check
from .shapes import all_prompts


def gate_prompts(n: int = 64) -> list[tuple[str, int]]:
    """``n`` (prompt, seed) pairs cycling through all 60 prompts of the grammar; seed = position in the list."""
    prompts = all_prompts()
    return [(prompts[i % len(prompts)], i) for i in range(n)]


@dataclass
class AdherenceReport:
    adherence: float
    colour: float
    shape: float
    direction: float
    temporal_stability: float
    num_prompts: int
    per_prompt: list[dict]

    def summary(self) -> str:
        return (
            f"adherence {100 * self.adherence:.1f}% over {self.num_prompts} prompts "
            f"(colour {100 * self.colour:.1f}%, shape {100 * self.shape:.1f}%, direction {100 * self.direction:.1f}%), "
            f"temporal stability {self.temporal_stability:.3f}"
        )


def score_clips(clips, prompts: list[str]) -> AdherenceReport:
    """Checker scores for clips ``(N, frames, H, W, 3)`` against their prompts."""
    results = [check(c, p) for c, p in zip(clips, prompts)]
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
    )


def evaluate_adherence(
    pipe, num_prompts: int = 64, num_inference_steps: int = 30, guidance_scale: float = 5.0,
    batch_size: int = 16, progress: bool = True, return_clips: bool = False,
):
    """Generate the gate's prompt set with fixed seeds and score it. Returns an :class:`AdherenceReport`
    (and the clips, with ``return_clips=True``)."""
    pairs = gate_prompts(num_prompts)
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
            )
            clips.append(out.frames)
    finally:
        pipe.set_progress_bar_config(**saved)
    clips = np.concatenate(clips)
    report = score_clips(clips, [p for p, _ in pairs])
    return (report, clips) if return_clips else report

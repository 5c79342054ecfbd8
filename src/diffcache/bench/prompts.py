"""What a benchmark runs on: the default prompts (the embedded models' grammar, from
:func:`diffcache.embedded.shapes.prompts`), and the *items* of a sweep, each one (prompt, seed)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Item:
    """One (prompt, seed) of a sweep; every method runs on it. ``key`` names it in the results and clips."""

    index: int
    prompt: str
    seed: int

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


def plan_items(prompts: list[str], seeds: int = 1) -> list[Item]:
    """Every prompt with ``seeds`` seeds; seeds are numbered by position (prompt ``i``, seed ``j`` → ``i·seeds+j``)."""
    items = []
    for i, prompt in enumerate(prompts):
        for j in range(seeds):
            items.append(Item(len(items), prompt, i * seeds + j))
    return items

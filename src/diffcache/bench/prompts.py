"""What a benchmark runs on: prompt lists of the embedded models' shapes grammar, and the *items* of a sweep,
each one (prompt, seed)."""

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


def bench_prompts(n: int) -> list[tuple[str, int]]:
    """``n`` (prompt, seed) pairs spread evenly over the 60 prompts of the shapes grammar (seed = position)."""
    from ..embedded.shapes import all_prompts

    prompts = all_prompts()
    return [(prompts[(i * len(prompts)) // n % len(prompts)], i) for i in range(n)]


def image_bench_prompts(n: int) -> list[tuple[str, int]]:
    """``n`` (prompt, seed) pairs cycling over the 15 still-image prompts of the shapes grammar."""
    from ..embedded.t2i.pipeline import all_image_prompts

    prompts = all_image_prompts()
    return [(prompts[i % len(prompts)], i) for i in range(n)]


def default_prompts(model: str, pipe, n: int) -> list[str]:
    """``n`` prompts spread over the shapes grammar for the embedded models: ``a {colour} {shape} moving
    {direction}`` for the text-to-video model, ``a {colour} {shape}`` for an embedded still-image model."""
    from ..loading import EMBEDDED_MODELS

    if type(pipe).__name__ == "TinyShapesT2VPipeline":
        return [prompt for prompt, _ in bench_prompts(n)]
    if model in EMBEDDED_MODELS:
        stills = list(dict.fromkeys(prompt.split(" moving ")[0] for prompt, _ in bench_prompts(60)))
        return [stills[(i * len(stills)) // n % len(stills)] for i in range(n)]
    raise ValueError(f"{model!r} is not an embedded model: give its prompts with --prompt (repeat it).")


def plan_items(prompts: list[str], seeds: int = 1) -> list[Item]:
    """Every prompt with ``seeds`` seeds; seeds are numbered by position (prompt ``i``, seed ``j`` → ``i·seeds+j``)."""
    items = []
    for i, prompt in enumerate(prompts):
        for j in range(seeds):
            items.append(Item(len(items), prompt, i * seeds + j))
    return items

"""Pipelines whose denoising loop runs several denoisers in turn ("experts"), and which steps each one runs.

Wan 2.2 A14B (T2V and I2V; Wan team, 2025, arXiv:2503.20314, github.com/Wan-Video/Wan2.2) has two transformers of
the same architecture: ``transformer`` denoises the high-noise steps and ``transformer_2`` the low-noise ones. The
diffusers pipelines switch at ``boundary_timestep = boundary_ratio · num_train_timesteps``: the steps whose timestep
is ``>= boundary_timestep`` run ``transformer``, the rest ``transformer_2`` (``WanPipeline.__call__`` in diffusers
0.42). Without ``boundary_ratio`` only ``transformer`` runs.

:func:`experts_of` finds the experts of a pipeline; :func:`expert_phase` gives the loop steps an expert runs in a
call, from the pipeline's own rule and the scheduler's timesteps of that call, so each expert is cached as a
schedule of its own (its own warm-up, cache and thresholds) while steps are still reported on the whole loop.
"""

from __future__ import annotations

import weakref

import torch

from .errors import StepTrackingError

#: the pipeline attributes of the experts, in the order the loop runs them
EXPERT_ATTRIBUTES = ("transformer", "transformer_2")


def experts_of(pipeline) -> list[tuple[str, torch.nn.Module]]:
    """``[(attribute, denoiser), …]`` of a pipeline with several denoisers taking turns (Wan 2.2 A14B), or ``[]``
    for a pipeline with one."""
    if pipeline is None or not isinstance(getattr(pipeline, "transformer_2", None), torch.nn.Module):
        return []
    return [(name, getattr(pipeline, name)) for name in EXPERT_ATTRIBUTES
            if isinstance(getattr(pipeline, name, None), torch.nn.Module)]


def boundary_timestep(pipeline) -> float | None:
    """The timestep at which the pipeline switches from ``transformer`` to ``transformer_2`` (``None``: it never
    does)."""
    ratio = getattr(getattr(pipeline, "config", None), "boundary_ratio", None)
    if ratio is None:
        return None
    return float(ratio) * float(pipeline.scheduler.config.num_train_timesteps)


def expert_phase(pipeline, expert: str, num_steps: int) -> range:
    """The steps (0-based, of the whole loop of ``num_steps``) that ``expert`` runs in the call now under way,
    by the pipeline's switching rule applied to its scheduler's timesteps."""
    boundary = boundary_timestep(pipeline)
    if boundary is None:
        return range(num_steps) if expert == EXPERT_ATTRIBUTES[0] else range(0)
    timesteps = torch.as_tensor(pipeline.scheduler.timesteps).detach().flatten().float().cpu()
    if len(timesteps) != num_steps:
        raise StepTrackingError(
            f"{type(pipeline).__name__} has {len(timesteps)} scheduler timesteps for a {num_steps}-step call; "
            "diffcache assigns the steps of its two experts from the scheduler's timesteps, so they must agree.")
    high = int((timesteps >= boundary).sum())
    if not bool((timesteps[:high] >= boundary).all()):
        raise StepTrackingError("the scheduler's timesteps are not decreasing across the experts' boundary; "
                                "diffcache needs each expert's steps to be one run of consecutive steps.")
    return range(0, high) if expert == EXPERT_ATTRIBUTES[0] else range(high, num_steps)


def phase_function(pipeline, expert: str):
    """``num_steps -> range``: :func:`expert_phase` for one expert of ``pipeline`` (held weakly)."""
    ref = weakref.ref(pipeline)
    return lambda num_steps: expert_phase(ref(), expert, num_steps)

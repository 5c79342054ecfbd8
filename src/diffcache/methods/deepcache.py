"""DeepCache (Ma, Fang and Wang, CVPR 2024) for U-Nets: on a *cached* step only the shallow part of the U-Net runs.

As in the paper (arXiv:2312.00858) and the official code (github.com/horseee/DeepCache: the ``DeepCache``
package's ``DeepCacheSDHelper`` and the repository's Stable Diffusion pipeline):

- **Branch** ``b`` (``branch``, shallowest = 0) is a skip connection of the U-Net: 0 is ``conv_in``'s output, then
  the outputs of the down layers and downsamplers in order. It maps to (block ``b // 3``, layer ``b % 3``) in a
  Stable Diffusion-style U-Net (:mod:`diffcache.adapters.unet`).
- On a **full** step the whole U-Net runs and the deep feature — the input of the up layer at branch ``b``
  (before its concatenation with the skip), the output of the last module a cached step skips — is cached. On a
  **cached** step everything that produces skip branches ``0 … b`` runs (``conv_in``, the down path up to branch
  ``b``) and everything that consumes them (the up path from the layer that takes branch ``b`` to the output); the
  rest — the deeper down layers and downsamplers, the mid block, the deeper up layers — is skipped, and the up layer
  at branch ``b`` receives the cached deep feature: the paper's rule, and the output of the official helper, which
  keeps every skipped module's output although only this one is read. Here the other skipped modules return zeros
  of their full-step shapes (they feed only each other), so the cache is one tensor per branch.
- **Uniform 1:N** (``uniform=True``, ``interval=N``): full steps ``0, N, 2N, …`` counted from the first step of the
  call. **Non-uniform 1:N** (``uniform=False``): ``k = ceil(T/N)`` full steps, denser around step ``center``
  (paper Eq. 7), by the official ``sample_from_quad_center``: ``x = linspace((−c)^(1/p), (T−c)^(1/p), k+1)``, full
  steps ``[0] + [int(v) + c for v in unique(int32(x^p))[1:−1]]``, ``p`` lowered by 0.02 until there are ``k`` of
  them. ``(−c)^(1/p)`` is a complex number there and numpy drops its imaginary part when casting to ``int32``;
  :func:`nonuniform_schedule` does the same, so the worked examples of the official code come out identical.
- State is kept per CFG branch (one batched ``[uncond, cond]`` call per step, as Stable Diffusion pipelines do,
  shares one), and reset at every pipeline call; a branch seen for the first time computes fully.

Departure, documented: the repository's research script numbers branches with ``--layer``/``--block`` one further
down the skip list (its (block ``B``, layer ``L``) is branch ``3B + L + 1`` here); the ``DeepCache`` package, and
this module, count ``conv_in``'s skip as branch 0.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from diffusers.hooks.hooks import ModelHook

from ..adapters.capabilities import UNetSkipBranches
from ..errors import ConfigError, ScheduleError
from .framework import MethodConfig, Runtime, detached, register

POWER_STEP = 0.02  #: the official code lowers p by this much until the schedule has k distinct full steps



def uniform_schedule(num_steps: int, interval: int) -> list[int]:
    """Full steps of uniform 1:N: ``0, N, 2N, …`` below ``num_steps``."""
    return list(range(0, num_steps, interval))


def nonuniform_schedule(num_steps: int, interval: int, center: int = 15, power: float = 1.4) -> tuple[list[int], float]:
    """Full steps of non-uniform 1:N and the power ``p`` that produced them (official ``sample_from_quad_center``).

    ``nonuniform_schedule(50, 5, 15, 1.4)`` → ``([0, 5, 9, 13, 17, 21, 26, 31, 37, 43], 1.4)``. Raises
    :class:`ScheduleError` when no ``p > 1`` gives ``ceil(T/N)`` distinct steps.
    """
    if interval == 1:
        return list(range(num_steps)), power
    count = num_steps // interval + (1 if num_steps % interval else 0)
    p = power
    while p > 1:
        # (-c) ** (1/p) is complex in Python; numpy's int32 cast keeps the real part, as in the official code
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", np.exceptions.ComplexWarning)
            x = np.linspace((-center) ** (1 / p), (num_steps - center) ** (1 / p), count + 1)
            indices = [0] + [int(v) + center for v in np.unique(np.int32(x**p))[1:-1]]
        if len(indices) == count:
            return sorted(indices), p
        p -= POWER_STEP
    raise ScheduleError(
        f"DeepCache non-uniform: no power p in (1, {power:g}] spreads {count} full steps (ceil({num_steps}/{interval})) "
        f"over {num_steps} steps around center={center}. Lower center (it must be well inside 0..{num_steps - 1}), "
        f"raise power, lower interval, or use the uniform schedule (uniform=True)."
    )


@dataclass
class DeepCacheConfig(MethodConfig):
    """DeepCache (Ma, Fang and Wang, CVPR 2024, arXiv:2312.00858; official code: github.com/horseee/DeepCache).

    Args:
        preset (str): the name of the preset the config was made from (``""`` for a hand-made config).
        interval (int): N of 1:N: one full step per N steps (on average, for non-uniform); integer >= 1. The
            ``DeepCache`` package's ``cache_interval``.
        branch (int): the skip branch whose up layer gets the cached deep feature (integer >= 0; 0 = ``conv_in``'s
            skip, the shallowest and fastest; the deepest skips only the mid block; the model's range is checked when
            enabled). The ``DeepCache`` package's ``cache_branch_id``.
        uniform (bool): ``True``: uniform 1:N, full steps ``0, N, 2N, …``; ``False``: non-uniform 1:N, denser around
            ``center`` (paper Eq. 7).
        center (int): non-uniform only: the 0-based step the full steps crowd around (integer >= 0, well inside the
            call's steps; ``c`` of paper Eq. 7).
        power (float): non-uniform only: the starting power ``p`` (> 1), lowered by ``POWER_STEP`` until the
            schedule has ``ceil(T/N)`` distinct full steps.

    Presets:
        - ``default`` (the default preset): the field defaults (uniform 1:N at the shallowest branch).
        - ``uniform-2``, ``uniform-3``, ``uniform-5``: uniform, ``interval`` = 2, 3, 5.
        - ``nonuniform``: ``interval=5``, ``uniform=False``, ``center=15``, ``power=1.4`` (the official setting for
          Stable Diffusion 1.5 at 50 steps).
        - ``nonuniform-early``: the same with ``center=5``: the full steps packed into the first, noisiest steps,
          chosen for tiny-shapes-t2i by a sweep of ``center`` over 5..30, where its deep features change most early
          (+5 dB over ``center=15`` at N = 5; docs/results/deepcache.md).

        Every field a preset does not name keeps its default.
    """

    PRESETS: ClassVar = {
        "default": {},
        "uniform-2": {"interval": 2},
        "uniform-3": {"interval": 3},
        "uniform-5": {"interval": 5},
        "nonuniform": {"interval": 5, "uniform": False, "center": 15, "power": 1.4},  # SD 1.5's (official)
        # chosen for tiny-shapes-t2i (the class docstring's Presets; docs/results/deepcache.md)
        "nonuniform-early": {"interval": 5, "uniform": False, "center": 5, "power": 1.4},
    }
    DEFAULT_PRESET: ClassVar = "default"
    REQUIRES: ClassVar = (UNetSkipBranches,)
    LEVELS: ClassVar = frozenset({"step"})  #: the deep U-Net features of whole steps
    DECISION_READS: ClassVar = "input"  #: a fixed schedule: it reads nothing the other levels change

    interval: int = 3
    branch: int = 0
    uniform: bool = True
    center: int = 15
    power: float = 1.4

    def validate(self) -> None:
        for name, low in (("interval", 1), ("branch", 0), ("center", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.uniform, bool):
            raise ConfigError(f"uniform must be True or False, got {self.uniform!r}")
        if isinstance(self.power, bool) or not isinstance(self.power, (int, float)) or not self.power > 1:
            raise ConfigError(f"power must be a number > 1, got {self.power!r}")

    def full_steps(self, num_steps: int) -> list[int]:
        """The steps (0-based, from the call's first step) on which the whole U-Net runs."""
        if self.uniform:
            return uniform_schedule(num_steps, self.interval)
        return nonuniform_schedule(num_steps, self.interval, self.center, self.power)[0]


@dataclass(frozen=True)
class _Placeholder:
    """The shape of a tensor a skipped module returned on the last full step, without its values."""

    shape: torch.Size
    dtype: torch.dtype
    device: torch.device


def _placeholders(output):
    """``output`` with every tensor replaced by its :class:`_Placeholder` (tuples and lists kept as they are)."""
    if isinstance(output, torch.Tensor):
        return _Placeholder(output.shape, output.dtype, output.device)
    if isinstance(output, (tuple, list)):
        return type(output)(_placeholders(o) for o in output)
    return output


def _zeros_like(placeholders):
    """Zeros in the shapes of :func:`_placeholders` (fresh tensors: a model may add to them in place, as
    ``UNet2DConditionModel`` does with a T2I-Adapter's residuals)."""
    if isinstance(placeholders, _Placeholder):
        return torch.zeros(placeholders.shape, dtype=placeholders.dtype, device=placeholders.device)
    if isinstance(placeholders, (tuple, list)):
        return type(placeholders)(_zeros_like(p) for p in placeholders)
    return placeholders


class _SkipHook(ModelHook):
    """On a module a cached step skips. On a full step it runs; the last of these modules (the one whose output is the
    input of the up layer at the cached branch: the deep feature) keeps its output, every other keeps only the
    shapes of its output. On a cached step the first returns the kept deep feature, the others zeros of their
    shapes: what they return then goes only into other skipped modules, which do not read it."""

    def __init__(self, runtime: "DeepCacheRuntime", name: str):
        super().__init__()
        self.runtime = runtime
        self.name = name

    def new_forward(self, module, *args, **kwargs):
        runtime = self.runtime
        cache = runtime.cache_of_branch()
        deep = runtime.keeps_output(self.name)
        if runtime.full:
            output = self.fn_ref.original_forward(*args, **kwargs)
            cache[self.name] = runtime.stash(detached(output)) if deep else _placeholders(output)  # (to its cache_device)
            runtime.count_block(computed=True)
            return output
        runtime.count_block(computed=False)
        return runtime.unstash(cache[self.name]) if deep else _zeros_like(cache[self.name])


class DeepCacheRuntime(Runtime):
    HOOK = "diffcache_deepcache"

    def install(self) -> None:
        layout = self.adapter.layout(self.model)
        branch = self.config.branch
        if branch >= layout.num_branches:
            raise ConfigError(
                f"branch={branch} is out of range for this {type(self.model).__name__}: its skip branches are "
                f"0..{layout.num_branches - 1} ({layout.num_blocks} blocks × {layout.layers_per_up_block} layers; "
                f"0 = conv_in's skip, the shallowest and fastest; {layout.num_branches - 1} skips only the mid block)."
            )
        block, layer = layout.locate(branch)
        self.layout, self.block, self.layer = layout, block, layer
        self.skipped: list[str] = []  #: names of the modules a cached step does not run (outermost ones)
        down, up = self.adapter.down_blocks(self.model), self.adapter.up_blocks(self.model)
        for i, down_block in enumerate(down):
            if i > block or (i == block and layer == 0):  # (all of block b's layers skipped: skip the block)
                self._skip(down_block, f"down_blocks.{i}")
            elif i == block:  # layers producing branches deeper than b, and the downsampler
                for index in range(layer, self.adapter.num_layers(down_block)):
                    for name, module in self.adapter.layer_modules(down_block, index):
                        self._skip(module, f"down_blocks.{i}.{name}")
                for name, module in self.adapter.samplers(down_block, "downsamplers"):
                    self._skip(module, f"down_blocks.{i}.{name}")
        mid = self.adapter.mid_block(self.model)
        if mid is not None:
            self._skip(mid, "mid_block")
        for u, up_block in enumerate(up):
            mirrored = len(up) - 1 - u  # up block j consumes the skips of down block j
            if mirrored > block:
                self._skip(up_block, f"up_blocks.{u}")
            elif mirrored == block:  # layers consuming branches deeper than b (counted from the block's end)
                k = self.adapter.num_layers(up_block)
                for index in range(k):
                    if k - 1 - index > layer:
                        for name, module in self.adapter.layer_modules(up_block, index):
                            self._skip(module, f"up_blocks.{u}.{name}")
        #: the module whose output the up layer at the branch gets: the last skipped one in execution order
        self.deep: str | None = self.skipped[-1] if self.skipped else None
        self.clear()

    def _skip(self, module, name: str) -> None:
        self.add_hook(module, _SkipHook(self, name))
        self.skipped.append(name)

    def clear(self) -> None:
        self.caches: dict[str, dict] = {}
        self.full = True
        self.first_step: int | None = None
        self.schedule: set[int] = set()
        super().clear()

    def begin_call(self, call_index: int, num_steps: int) -> None:
        super().begin_call(call_index, num_steps)
        self.schedule = set(self.config.full_steps(num_steps))  # ScheduleError before any step runs

    def begin_forward(self, ctx, args, kwargs) -> None:
        super().begin_forward(ctx, args, kwargs)
        if self.first_step is None:
            self.first_step = ctx.step
        scheduled = (ctx.step - self.first_step) in self.schedule
        self.full = scheduled or ctx.branch not in self.caches
        self.caches.setdefault(ctx.branch, {})
        record = self.step_record
        record.computed = record.computed or self.full
        record.values["full"] = record.computed

    def keeps_output(self, name: str) -> bool:
        """Whether skipped module ``name`` keeps its output for the cached steps (only the deep feature's does)."""
        return name == self.deep

    def cache_of_branch(self) -> dict:
        return self.caches[self.ctx.branch]

    def could_skip(self, num_steps: int) -> bool:
        return len(self.config.full_steps(num_steps)) < num_steps

    def nothing_skipped_hint(self) -> str:
        return f"Its interval is {self.config.interval}: raise it (interval=3 is the usual setting)"


register(
    "deepcache",
    "DeepCache: on cached steps run only the U-Net's shallow layers and reuse the deep feature of the last full step",
    DeepCacheConfig,
    DeepCacheRuntime
)

__all__ = ["DeepCacheConfig", "ScheduleError", "nonuniform_schedule", "uniform_schedule"]

"""Reusing the residual of a whole run of blocks: the mechanism TeaCache and First-Block-Cache share.

The first block decides, per branch (cond and uncond keep separate state). On a reused step the blocks after the
decision point return their input unchanged and the output of the run is ``input + cached residual``; on a computed
step the blocks run and the residual ``output of the last block − input of the run`` is stored. Where the run starts
is the subclass's choice: before the first block (TeaCache) or after it (First-Block-Cache, whose first block always
runs).

Where the model adds to the stream between blocks, outside them (``adds_between_blocks``: WanVACE's control hints),
the cached residual is the blocks' own updates only (``output − input − what was added between the blocks``): on a
reused step the model adds those afresh, so they are never counted twice.

With a config's ``forecast="linear"`` a reused step adds, instead of the cached residual, its first-order
extrapolation from the branch's last two computed steps (:meth:`ResidualCacheRuntime.reused_residual`;
docs/methods/forecasting.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers.hooks.hooks import ModelHook

from ..errors import ConfigError, UnsupportedModelError
from .framework import Runtime


#: what a reused step adds: the cached residual as it is, or extrapolated from the last two computed steps
FORECASTS = ("none", "linear")


@dataclass
class BranchState:
    """What one branch (cond, uncond, …) remembers between steps."""

    skip: bool = False
    run_input: tuple | None = None  #: streams entering the cached run, this step
    residual: tuple | None = None  #: cached residual of the run, per stream
    values: dict = field(default_factory=dict)  #: method-specific memory (previous signal, accumulator …)
    last_output: tuple | None = None  #: streams the previous block of the run returned (adds_between_blocks only)
    added: tuple | None = None  #: what the model added between the run's blocks, this step (adds_between_blocks)
    residual_step: int | None = None  #: the step ``residual`` was computed at
    #: ``(step, residual)`` of the computed step before that one, kept only with ``forecast="linear"``
    previous: tuple | None = None


class _HeadHook(ModelHook):
    def __init__(self, runtime: "ResidualCacheRuntime"):
        super().__init__()
        self.runtime = runtime

    def new_forward(self, module, *args, **kwargs):
        return self.runtime.head_forward(module, self.fn_ref.original_forward, args, kwargs)


class _TailHook(ModelHook):
    def __init__(self, runtime: "ResidualCacheRuntime", last: bool):
        super().__init__()
        self.runtime = runtime
        self.last = last

    def new_forward(self, module, *args, **kwargs):
        runtime, adapter = self.runtime, self.runtime.adapter
        state = runtime.state()
        if state.skip:
            runtime.count_block(computed=False)
            return adapter.make_block_output(adapter.block_streams(module, args, kwargs))
        if adapter.adds_between_blocks:
            runtime.note_added(state, adapter.block_streams(module, args, kwargs))
        output = self.fn_ref.original_forward(*args, **kwargs)
        runtime.count_block(computed=True)
        if adapter.adds_between_blocks:
            state.last_output = adapter.output_streams(output)
        if self.last:
            outputs = adapter.run_output_streams(runtime.model, module, adapter.output_streams(output), state.run_input)
            residual = tuple((o - i).detach() for o, i in zip(outputs, state.run_input))
            if state.added is not None:  # the blocks' own updates only: the model adds the rest afresh
                residual = tuple(r if a is None else (r - a).detach() for r, a in zip(residual, state.added))
            runtime.keep_residual(state, runtime.stash(residual))  # (to its cache_device, if one is set)
            state.run_input = state.last_output = state.added = None
        return output


class ResidualCacheRuntime(Runtime):
    """Subclasses implement :meth:`head_forward` (run or skip the first block, and decide for the rest)."""

    def install(self) -> None:
        blocks = self.adapter.blocks(self.model)
        if len(blocks) < 2:
            raise UnsupportedModelError(f"{self.report.method} needs at least two transformer blocks; "
                                        f"{type(self.model).__name__} has {len(blocks)}")
        self.num_blocks = len(blocks)
        self.add_hook(blocks[0], _HeadHook(self))
        for index, block in enumerate(blocks[1:], start=1):
            self.add_hook(block, _TailHook(self, last=index == len(blocks) - 1))
        self.clear()

    def clear(self) -> None:
        self.states: dict[str, BranchState] = {}
        super().clear()

    @staticmethod
    def check_forecast(forecast) -> None:
        """Raise :class:`~diffcache.errors.ConfigError` unless ``forecast`` is ``"none"`` or ``"linear"`` (a config's
        ``validate`` calls this)."""
        if forecast not in FORECASTS:
            raise ConfigError(f"forecast must be one of {', '.join(map(repr, FORECASTS))}, got {forecast!r}")

    def state(self) -> BranchState:
        return self.states.setdefault(self.ctx.branch, BranchState())

    def cache_usable(self, state: BranchState, streams: tuple) -> bool:
        """A cached residual may be reused only if it fits these streams and this branch also ran the previous
        step (a branch that skipped steps — a guidance interval — must not reuse a residual from long ago).
        Reads only; :meth:`note_step` records that the branch ran this step."""
        fits = state.residual is not None and all(r.shape == x.shape for r, x in zip(state.residual, streams))
        return fits and state.values.get("last_step") == self.ctx.step - 1

    def note_step(self, state: BranchState) -> None:
        """Record that this branch ran the current step (what :meth:`cache_usable` checks next step)."""
        state.values["last_step"] = self.ctx.step

    def head_forward(self, block, forward, args, kwargs):
        raise NotImplementedError

    @property
    def forecasting(self) -> bool:
        """Whether a reused step extrapolates the residual (the config's ``forecast="linear"``) instead of repeating
        it."""
        return getattr(self.config, "forecast", "none") == "linear"

    def keep_residual(self, state: BranchState, residual: tuple) -> None:
        """Store a computed step's residual; with forecasting, the one it replaces is kept as ``state.previous``."""
        if self.forecasting:
            state.previous = None if state.residual is None else (state.residual_step, state.residual)
        state.residual, state.residual_step = residual, self.ctx.step

    def reused_residual(self, state: BranchState, like: torch.Tensor) -> tuple:
        """The residual a reused step adds, on ``like``'s device. ``forecast="none"``: the last computed step's
        residual as it is. ``"linear"``: extrapolated to first order from the branch's last two computed steps
        ``s0 < s1`` (residuals ``r0``, ``r1``) to the current step ``k``:
        ``r1 + (r1 − r0)·(k − s1)/(s1 − s0)``, as TaylorSeer (arXiv:2503.06923) and FasterCache (arXiv:2410.19355) extrapolate features; plain reuse when
        only one computed step is kept or the two residuals' shapes differ. The weight used is reported as the
        step's ``forecast`` value (the branch's ``uncond_forecast`` …)."""
        current = self.unstash(state.residual, like)
        if not self.forecasting or state.previous is None:
            return current
        s0, previous = state.previous
        s1 = state.residual_step
        previous = self.unstash(previous, like)
        if s0 is None or s1 is None or s1 <= s0 or any(a.shape != b.shape for a, b in zip(current, previous)):
            return current
        weight = (self.ctx.step - s1) / (s1 - s0)
        self.record(True, forecast=weight)
        return tuple(r1 + (r1 - r0) * weight for r1, r0 in zip(current, previous))

    def begin_run(self, state: BranchState, run_input: tuple, head_output) -> None:
        """A computed step's run starts at ``run_input``; ``head_output`` is what the first block returned."""
        state.run_input = run_input
        state.added = None
        state.last_output = self.adapter.output_streams(head_output) if self.adapter.adds_between_blocks else None

    @staticmethod
    def note_added(state: BranchState, inputs: tuple) -> None:
        """Accumulate, per stream, what the model added since the previous block of the run returned (``None``: a
        stream passed on unchanged, the usual case)."""
        if state.last_output is None:
            return
        added = state.added or (None,) * len(inputs)
        state.added = tuple(
            sum_ if now is before else (now - before if sum_ is None else sum_ + (now - before))
            for sum_, now, before in zip(added, inputs, state.last_output))

    def record(self, skip: bool, **values) -> None:
        """Note this branch's decision in the step's report (the step counts as computed if any branch computed)."""
        record = self.step_record
        record.computed = record.computed or not skip
        prefix = "" if self.ctx.branch in ("cond", "cond_uncond", "call0") else f"{self.ctx.branch}_"
        record.values.update({prefix + k: v for k, v in values.items()})


"""AdaCache + MoReg (Kahatapitiya et al., 2024): cache each block's residuals on a schedule chosen per video.

Rules (the paper, arXiv:2411.02397, and the official code, github.com/AdaCache-DiT/AdaCache, where it differs
from the paper):

* A block's update has two residuals: self-attention, and cross-attention + MLP summed. On a reused step a block
  returns ``input + both cached residuals`` and computes nothing. Every block is reused on the same steps (the
  schedule below is the model's), so the stack's output on a reused step is ``input + Σ_blocks (both residuals)``:
  diffcache stores that sum, the stack's residual (one tensor per stream, per CFG branch), and the metric blocks'
  self-attention residuals for the branch that decides; the first block adds the sum and the others pass their input
  through (the same output up to float rounding; docs/methods/memory-layout.md has the bytes). Where the model adds
  to the stream between blocks (WanVACE's hints) the sum is of the blocks' own updates, and the model adds its
  part afresh. A branch whose cached residual does not fit the step's streams computes.
* One schedule for the whole model. Steps are 1-based; step ``k`` is computed when ``k == last + rate`` or ``k`` is
  ``1``, ``T-1`` or ``T``; ``rate`` starts at 1.
* On a computed step the metric block (the middle block by default; several are averaged) compares its new
  self-attention residual with the cached one: ``d = ||cache - res||_1 / ||cache||_1 / rate``. The new rate is the
  rate of the first codebook threshold with ``d < threshold`` (the last rate when none is) and takes effect from
  the next step.
* MoReg, official form: inside a step window the motion score of the metric residual laid out
  ``[B, frames·S, C]`` is ``m = ||r[:, S:] - r[:, :-S]||_1 / (||r[:, S:]||_1 + ||r[:, :-S]||_1)``, then
  ``m = (m / 0.385) ** 8``; outside the window ``m = 1``. ``grad = 10 (m - m_prev) / rate``; ``d *= m + |grad|``;
  ``m_prev`` is updated on every computed step. Paper form (``*-paper`` presets): ``d *= m + (m - m_prev) / k``
  with ``k`` the steps since the last computed step, and the motion score without the power and the window.
* With split CFG (two calls per step) the cond and uncond branches keep separate caches and the step's first call
  takes the one schedule decision of the step; batched CFG caches the whole ``[uncond, cond]`` batch.

Codebooks are published for 30 steps (fast, slow) and 100 steps (one, used for ``fast``). For any other step
count ``T`` the rates of the nearer published codebook (30 for ``T <= 54``, else 100) are scaled by ``T / T_ref``
and rounded (at least 1); thresholds are kept. The ``slow`` codebook at 100 steps is the 30-step one scaled the
same way. The MoReg window (4–26 of 30; 10–90 of 100, inclusive) is scaled the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from diffusers.hooks.hooks import ModelHook

from ..context import StepContext
from ..adapters.capabilities import BlockStack, SplitBlocks, TokenGrid
from ..errors import ConfigError
from ..distributed import gather_tokens
from .framework import MethodConfig, Runtime, register, relative_change
from .residual_cache import BranchState, ResidualCacheRuntime

CODEBOOKS: dict[tuple[str, int], tuple[tuple[float, int], ...]] = {
    ("fast", 30): ((0.08, 6), (0.16, 5), (0.24, 4), (0.32, 3), (0.40, 2), (1.00, 1)),
    ("slow", 30): ((0.08, 3), (0.16, 2), (0.24, 1), (0.32, 1), (0.40, 1), (1.00, 1)),
    ("fast", 100): ((0.03, 12), (0.05, 10), (0.07, 8), (0.09, 6), (0.11, 4), (1.00, 3)),
}
MOREG_WINDOWS: dict[int, tuple[int, int]] = {30: (4, 26), 100: (10, 90)}


def _reference_steps(num_steps: int) -> int:
    return 30 if num_steps <= 54 else 100


def codebook_for(speed: str, num_steps: int) -> tuple[tuple[float, int], ...]:
    """The codebook for ``speed`` (``"fast"`` / ``"slow"``) at ``num_steps`` steps (see the module docs)."""
    if (speed, num_steps) in CODEBOOKS:
        return CODEBOOKS[(speed, num_steps)]
    reference = _reference_steps(num_steps)
    if (speed, reference) not in CODEBOOKS:
        reference = 30  # only the fast codebook is published for 100 steps
    return tuple((threshold, max(1, round(rate * num_steps / reference))) for threshold, rate in CODEBOOKS[(speed, reference)])


def moreg_window_for(num_steps: int) -> tuple[int, int]:
    """The 1-based, inclusive step window in which MoReg measures motion at ``num_steps`` steps."""
    if num_steps in MOREG_WINDOWS:
        return MOREG_WINDOWS[num_steps]
    reference = _reference_steps(num_steps)
    start, end = MOREG_WINDOWS[reference]
    return max(1, round(start * num_steps / reference)), max(1, round(end * num_steps / reference))


@dataclass
class AdaCacheConfig(MethodConfig):
    """AdaCache + MoReg (Kahatapitiya et al., 2024, arXiv:2411.02397; official code: github.com/AdaCache-DiT/AdaCache).

    Args:
        preset (str): the name of the preset the config was made from (``""`` for a hand-made config).
        speed (str): which published codebook ``codebook_for`` picks when ``codebook`` is ``None``: ``"fast"``
            (larger rates, more reuse) or ``"slow"``.
        codebook (tuple[tuple[float, int], ...] | None): ``(threshold, rate)`` pairs. Thresholds are relative L1
            distances of the metric residual per step of rate (unitless, > 0, strictly increasing); rates are the
            steps until the next computed step (integers >= 1). A computed step takes the rate of the first
            threshold its distance is below (the last rate when none is). Lists are accepted and stored as tuples.
            ``None``: the published codebook of ``speed``, scaled to the step count (see the module docs).
        metric_blocks (tuple[int, ...] | None): indices of the blocks whose self-attention residual decides the
            rate (their distances and motion scores are averaged; negative indices count from the end; one ``int``
            is accepted). They must exist in the model (checked when enabled). ``None``: the middle block
            (``num_blocks // 2``).
        moreg (str | None): Motion Regularisation: ``None`` (off), ``"official"`` (the official code's form: the
            motion score raised to ``moreg_power`` inside ``moreg_window``, its gradient's magnitude scaled by
            ``moreg_gradient_scale``) or ``"paper"`` (the paper's form: the plain motion score, its change divided
            by the steps since the last computed step). MoReg also needs the adapter's token grid (``TokenGrid``).
        moreg_window (tuple[int, int] | None): ``(start, end)``, 1-based inclusive steps in which the official
            MoReg measures motion (outside them the motion factor is 1); ``1 <= start <= end``. ``None``: the
            published window (steps 4–26 of 30, 10–90 of 100) scaled to the step count. Only ``moreg="official"``
            reads it.
        moreg_norm (float): the official MoReg normaliser, ``m = (m / moreg_norm) ** moreg_power`` (a motion score:
            a relative L1 change between frames, unitless, > 0). The default is the official code's value, set for
            Open-Sora; ``diffcache calibrate adacache`` (``diffcache.calibrate.moreg.calibrate_moreg_norm``) fits
            one for a model (docs/results/adacache.md).
        moreg_power (float): the official MoReg power applied to the normalised motion score (> 0).
        moreg_gradient_scale (float): the official MoReg gradient factor, ``grad = scale · (m − m_prev) / rate``
            (>= 0).
        moreg_frame_stride (int): how many latent frames apart the motion score compares tokens (integer >= 1;
            both MoReg forms).

    Presets:
        - ``fast``, ``slow``: ``speed`` = the preset's name, ``moreg=None`` (AdaCache alone).
        - ``fast-moreg`` (the default preset), ``slow-moreg``: the same codebooks with the official MoReg
          (``moreg="official"``).
        - ``fast-moreg-paper``, ``slow-moreg-paper``: the same with the paper's MoReg (``moreg="paper"``).

        Every field a preset does not name keeps its default.
    """

    PRESETS: ClassVar = {
        "fast": {"speed": "fast", "moreg": None},
        "slow": {"speed": "slow", "moreg": None},
        "fast-moreg": {"speed": "fast", "moreg": "official"},
        "slow-moreg": {"speed": "slow", "moreg": "official"},
        "fast-moreg-paper": {"speed": "fast", "moreg": "paper"},
        "slow-moreg-paper": {"speed": "slow", "moreg": "paper"},
    }
    DEFAULT_PRESET: ClassVar = "fast-moreg"
    REQUIRES: ClassVar = (BlockStack, SplitBlocks)
    LEVELS: ClassVar = frozenset({"step"})
    DECISION_READS: ClassVar = "blocks"  #: the metric blocks' self-attention residuals

    speed: str = "fast"
    codebook: tuple[tuple[float, int], ...] | None = None
    metric_blocks: tuple[int, ...] | None = None
    moreg: str | None = "official"
    moreg_window: tuple[int, int] | None = None
    moreg_norm: float = 0.385
    moreg_power: float = 8.0
    moreg_gradient_scale: float = 10.0
    moreg_frame_stride: int = 1

    def __post_init__(self) -> None:
        # canonical forms, before validation: sequences become tuples, one block index a 1-tuple (values as given)
        if isinstance(self.codebook, list) or (isinstance(self.codebook, tuple)
                                               and any(isinstance(e, list) for e in self.codebook)):
            self.codebook = tuple(tuple(e) if isinstance(e, list) else e for e in self.codebook)
        if isinstance(self.metric_blocks, int) and not isinstance(self.metric_blocks, bool):
            self.metric_blocks = (self.metric_blocks,)
        elif isinstance(self.metric_blocks, list):
            self.metric_blocks = tuple(self.metric_blocks)
        if isinstance(self.moreg_window, list):
            self.moreg_window = tuple(self.moreg_window)
        super().__post_init__()

    def required_capabilities(self) -> tuple[type, ...]:
        """MoReg also needs the token grid (its motion score compares frames)."""
        return self.REQUIRES + ((TokenGrid,) if self.moreg is not None else ())

    def validate(self) -> None:
        if self.speed not in ("fast", "slow"):
            raise ConfigError(f"speed must be 'fast' or 'slow', got {self.speed!r}")
        if self.moreg not in (None, "official", "paper"):
            raise ConfigError(f"moreg must be None, 'official' or 'paper', got {self.moreg!r}")
        if self.codebook is not None:
            if not isinstance(self.codebook, (tuple, list)) or any(
                    not isinstance(entry, (tuple, list)) for entry in self.codebook):
                raise ConfigError(f"codebook must be a sequence of (threshold, rate) pairs, got {self.codebook!r}")
            entries = [tuple(entry) for entry in self.codebook]
            if not entries or any(len(entry) != 2 for entry in entries):
                raise ConfigError("codebook must be a non-empty sequence of (threshold, rate) pairs")
            thresholds = [float(threshold) for threshold, _ in entries]
            if any(b <= a for a, b in zip(thresholds, thresholds[1:])):
                raise ConfigError(f"codebook thresholds must be strictly increasing, got {thresholds}")
            if any(threshold <= 0 for threshold in thresholds):
                raise ConfigError(f"codebook thresholds must be positive, got {thresholds}")
            rates = [rate for _, rate in entries]
            if any(not isinstance(rate, int) or isinstance(rate, bool) or rate < 1 for rate in rates):
                raise ConfigError(f"codebook rates must be integers >= 1 (steps until the next computed step), got {rates}")
        if self.metric_blocks is not None:
            if (not isinstance(self.metric_blocks, tuple) or not self.metric_blocks
                    or any(not isinstance(b, int) for b in self.metric_blocks)):
                raise ConfigError(f"metric_blocks must be a non-empty tuple of block indices, got {self.metric_blocks!r}")
        if self.moreg_window is not None:
            window = self.moreg_window
            if not (isinstance(window, (tuple, list)) and len(window) == 2):
                raise ConfigError(f"moreg_window must be (start, end) 1-based steps, got {window!r}")
            start, end = window
            if not (isinstance(start, int) and isinstance(end, int) and 1 <= start <= end):
                raise ConfigError(f"moreg_window must be (start, end) 1-based steps with start <= end, got {self.moreg_window!r}")
        for name in ("moreg_norm", "moreg_power", "moreg_gradient_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{name} must be a number, got {value!r}")
        if self.moreg_norm <= 0 or self.moreg_power <= 0 or self.moreg_gradient_scale < 0:
            raise ConfigError("moreg_norm and moreg_power must be > 0 and moreg_gradient_scale >= 0")
        if not isinstance(self.moreg_frame_stride, int) or self.moreg_frame_stride < 1:
            raise ConfigError(f"moreg_frame_stride must be an integer >= 1, got {self.moreg_frame_stride!r}")


class AdaCacheSchedule:
    """The schedule of one pipeline call: which steps are computed, and the rate chosen at each computed step.

    Pure arithmetic on floats, so it can be checked against hand-worked examples."""

    def __init__(self, config: AdaCacheConfig, num_steps: int):
        self.config = config
        self.num_steps = num_steps
        self.codebook = config.codebook or codebook_for(config.speed, num_steps)
        self.window = config.moreg_window or moreg_window_for(num_steps)
        self.rate = 1
        self.last: int | None = None
        self.motion_prev: float | None = None

    def should_compute(self, step: int) -> bool:
        """Whether 1-based ``step`` is computed."""
        T = self.num_steps
        return self.last is None or step in (1, T - 1, T) or step >= self.last + self.rate

    def lookup(self, distance: float) -> int:
        for threshold, rate in self.codebook:
            if distance < threshold:
                return rate
        return self.codebook[-1][1]

    def regularised_motion(self, step: int, motion: float) -> float:
        if self.config.moreg == "official":
            start, end = self.window
            if not start <= step <= end:
                return 1.0
            return (motion / self.config.moreg_norm) ** self.config.moreg_power
        return motion

    def update(self, step: int, rel_l1: float | None, motion: float | None = None) -> dict:
        """Record computed step ``step`` (1-based); with a metric, choose the rate that applies from ``step+1``.

        ``rel_l1`` is ``||cache - res||_1 / ||cache||_1`` (``None`` when there was no cached residual yet);
        ``motion`` the raw motion score (used with MoReg). Returns the values that decided, for the report."""
        values: dict = {}
        gap = step - self.last if self.last is not None else 1
        rate_in_force = self.rate
        m = None
        if self.config.moreg is not None and motion is not None:
            m = self.regularised_motion(step, motion)
            values["motion_raw"] = motion
            values["motion"] = m
        if rel_l1 is not None:
            d = rel_l1 / rate_in_force
            values["rel_l1"] = rel_l1
            if m is not None:
                m_prev = self.motion_prev if self.motion_prev is not None else m
                if self.config.moreg == "official":
                    gradient = self.config.moreg_gradient_scale * (m - m_prev) / rate_in_force
                    d *= m + abs(gradient)
                else:
                    gradient = (m - m_prev) / gap
                    d *= m + gradient
                values["motion_gradient"] = gradient
            values["distance"] = d
            self.rate = self.lookup(d)
            values["rate"] = self.rate
        if m is not None:
            self.motion_prev = m
        self.last = step
        return values


@torch.no_grad()
def motion_score(residual: torch.Tensor, tokens_per_frame: int, stride: int = 1) -> float | None:
    """The official MoReg motion score of a residual ``[B, frames·S, C]`` (before the power); ``None`` when there
    are not ``stride + 1`` frames (an image): then MoReg leaves the distance alone."""
    shift = tokens_per_frame * stride
    if residual.shape[1] <= shift:
        return None
    later, earlier = residual[:, shift:].float(), residual[:, :-shift].float()
    return float((later - earlier).abs().sum() / (later.abs().sum() + earlier.abs().sum()).clamp_min(1e-12))


class _MidProbe(ModelHook):
    """On a metric block's split module: remembers its input, the block state after self-attention."""

    def __init__(self, adapter):
        super().__init__()
        self.adapter = adapter
        self.captured: tuple[torch.Tensor, ...] | None = None

    def pre_forward(self, module, *args, **kwargs):
        self.captured = self.adapter.split_streams(module, args, kwargs)
        return args, kwargs


@dataclass
class AdaBranchState(BranchState):
    """What one CFG branch keeps between steps (and, during a computed forward, the run in progress).

    ``residual`` is the whole stack's residual per stream from the branch's last computed forward: the last block's
    output (:meth:`~diffcache.adapters.capabilities.BlockStack.run_output_streams`) minus the first block's input,
    less what the model added between blocks (WanVACE's hints), in the dtype of the stream the first block received.
    ``metric`` holds, for the branch that takes the step's decision only, each metric block's self-attention
    residual (video stream) of its last computed forward."""

    metric: dict = field(default_factory=dict)
    last_block: torch.nn.Module | None = None  #: the block that returned ``last_output`` (the run's last so far)


class _BlockHook(ModelHook):
    """On every block. The first block takes the branch's choice for the forward: on a reused step it returns
    ``input + the stack's cached residual`` and the other blocks return their input unchanged; on a computed step
    every block runs and the run's residual is stored when the last block returns (or, if it did not run, when the
    forward ends). ``probes`` (metric blocks only) find the split point after self-attention."""

    def __init__(self, runtime: "AdaCacheRuntime", index: int, probes: list[_MidProbe] | None):
        super().__init__()
        self.runtime = runtime
        self.index = index
        self.probes = probes  #: one per split module (one per stream where each stream has its own split point)

    def new_forward(self, module, *args, **kwargs):
        runtime, adapter = self.runtime, self.runtime.adapter
        state = runtime.state()
        streams = adapter.block_streams(module, args, kwargs)
        if self.index == 0:
            state.skip = runtime.reusable(state, streams)
            state.values["last_step"] = runtime.ctx.step
            if state.skip:
                runtime.count_block(computed=False)
                residual = runtime.unstash(state.residual, streams[0])  # (from its cache_device, if one is set)
                return adapter.make_block_output(tuple(x + r.to(x.dtype) for x, r in zip(streams, residual)))
            runtime.begin_run(state, streams)
        elif state.skip:
            runtime.count_block(computed=False)
            return adapter.make_block_output(streams)
        elif adapter.adds_between_blocks:
            runtime.note_added(state, streams)
        observe = self.probes is not None and runtime.ctx.first_in_step
        for probe in self.probes or ():
            probe.captured = None
        output = self.fn_ref.original_forward(*args, **kwargs)
        outputs = adapter.output_streams(output)
        if observe:
            runtime.observe(state, self.index, self._attention_residual(streams, outputs))
        for probe in self.probes or ():
            probe.captured = None  # the block state it saw is an activation: not kept past the block
        state.last_output, state.last_block = outputs, module
        runtime.count_block(computed=True)
        if self.index == runtime.num_blocks - 1:
            runtime.end_run(state)
        return output

    def _attention_residual(self, streams, outputs) -> torch.Tensor:
        """The video stream's self-attention residual: the state at the split point minus the block's input (a
        block without a split point: its whole update)."""
        if not self.probes:
            mid = outputs[0]
        else:
            if any(probe.captured is None for probe in self.probes):
                raise RuntimeError(f"AdaCache: the split point of block {self.index} did not run; the adapter "
                                   f"{type(self.runtime.adapter).__name__} does not match this block's forward")
            mid = self.probes[0].captured[0]
        return (mid.to(streams[0].dtype) - streams[0]).detach()


class AdaCacheRuntime(Runtime):
    """The cache, per CFG branch (:class:`AdaBranchState`): the stack's residual, one tensor per stream, and for the
    deciding branch one self-attention residual per metric block. AdaCache reuses every block together (one
    schedule for the whole model), so a reused step's output ``input + Σ_blocks (attention + rest residual)`` is
    ``input + the stack's residual``: the same output as caching two residuals per block, up to float rounding."""

    HOOK = "diffcache_adacache"

    def install(self) -> None:
        blocks = self.adapter.blocks(self.model)
        if not blocks:
            raise RuntimeError(f"AdaCache found no transformer blocks in {type(self.model).__name__}")
        self.num_blocks = len(blocks)
        metric = self.config.metric_blocks or (len(blocks) // 2,)
        bad = [b for b in metric if not -len(blocks) <= b < len(blocks)]
        if bad:
            raise ConfigError(f"metric_blocks {bad} out of range: this model has {len(blocks)} blocks (0..{len(blocks) - 1})")
        self.metric_blocks = tuple(b % len(blocks) for b in metric)
        self.blocks = blocks
        for index, block in enumerate(blocks):
            probes = None
            if index in self.metric_blocks:
                split = self.adapter.split_module(block)
                # one split module, or one per stream (LTX-2: the video and the audio stream's own split points)
                modules = () if split is None else split if isinstance(split, tuple) else (split,)
                probes = [_MidProbe(self.adapter) for _ in modules]
                for module, probe in zip(modules, probes):
                    self.add_hook(module, probe, self.HOOK + "_split")
            self.add_hook(block, _BlockHook(self, index, probes))
        self.clear()

    def eager_regions(self) -> list[torch.nn.Module]:
        """The metric blocks: their split point is probed inside the block, so under regional compilation they
        run uncompiled (:mod:`diffcache.compile`); every other block runs compiled."""
        return [self.blocks[index] for index in self.metric_blocks]

    def clear(self) -> None:
        self.states: dict[str, AdaBranchState] = {}
        self.schedule: AdaCacheSchedule | None = None
        self.compute = True
        super().clear()
        self._observed: dict[int, tuple[float | None, float]] = {}

    def begin_call(self, call_index: int, num_steps: int) -> None:
        super().begin_call(call_index, num_steps)
        self.schedule = AdaCacheSchedule(self.config, num_steps)

    def state(self) -> AdaBranchState:
        return self.states.setdefault(self.ctx.branch, AdaBranchState())

    def reusable(self, state: AdaBranchState, streams: tuple) -> bool:
        """Whether this forward reuses: the schedule reuses this step, the branch's cached residual fits these
        streams and the branch also ran the previous step (otherwise the branch computes, as on a computed step: a
        branch that skipped steps, e.g. an uncond call CFG-Cache answered, must not reuse a residual from long ago)."""
        return (not self.compute and state.residual is not None and len(state.residual) == len(streams)
                and all(r.shape == x.shape for r, x in zip(state.residual, streams))
                and state.values.get("last_step") == self.ctx.step - 1)

    def begin_run(self, state: AdaBranchState, streams: tuple) -> None:
        """A computed forward starts at ``streams``: the old residual is dropped now (this forward replaces it)."""
        state.residual = None
        state.run_input, state.added, state.last_output, state.last_block = streams, None, None, None

    note_added = staticmethod(ResidualCacheRuntime.note_added)

    def end_run(self, state: AdaBranchState) -> None:
        """Store the run's residual: the last block's output as the run's output, minus the run's input and what the
        model added between the blocks, in the dtype of the stream the first block received."""
        if state.run_input is None:
            return
        outputs = self.adapter.run_output_streams(self.model, state.last_block, state.last_output, state.run_input)
        residual = tuple(o - i for o, i in zip(outputs, state.run_input))
        if state.added is not None:  # the blocks' own updates only: the model adds the rest afresh
            residual = tuple(r if a is None else r - a for r, a in zip(residual, state.added))
        state.residual = self.stash(tuple(r.to(i.dtype).detach() for r, i in zip(residual, state.run_input)))
        state.run_input = state.last_output = state.added = state.last_block = None

    def begin_forward(self, ctx: StepContext, args: tuple, kwargs: dict) -> None:
        super().begin_forward(ctx, args, kwargs)
        if ctx.first_in_step:
            self.compute = self.schedule.should_compute(ctx.step_1based)
            self.step_record.computed = self.compute
            self._observed = {}
            if self.compute and self.config.moreg is not None:
                frames, height, width = self.adapter.token_layout(self.model, args, kwargs)
                self._tokens_per_frame = height * width
                self._grid = (frames, height, width)

    def could_skip(self, num_steps: int) -> bool:
        return num_steps > 3  # steps 1, T-1 and T are always computed, and step 2 follows rate 1

    def nothing_skipped_hint(self) -> str:
        return "Its distances stayed above the codebook thresholds: try the 'fast' preset or a codebook with larger rates"

    def observe(self, state: AdaBranchState, index: int, residual: torch.Tensor) -> None:
        """Metric block ``index`` computed in the deciding branch: on a computed step, its relative L1 change against
        the cached residual (and MoReg's motion score) count for the step's decision; the cache keeps the new one.
        Under context parallelism both are of the whole sequence (:mod:`diffcache.distributed`)."""
        cached = self.unstash(state.metric.get(index), residual)  # (from its cache_device, if one is set)
        state.metric[index] = None  # the old one is freed once compared
        if self.compute:
            rel = (relative_change(cached, residual, group=self.cp_group)
                   if cached is not None and cached.shape == residual.shape else None)
            motion = None
            if self.config.moreg is not None:  # compares frames across the shard boundary: on the whole sequence
                whole = gather_tokens(residual, dim=1, group=self.cp_group)
                tokens = self.adapter.frame_major_tokens(self.blocks[index], whole, self._grid)
                motion = motion_score(tokens, self._tokens_per_frame, self.config.moreg_frame_stride)
            self._observed[index] = (rel, motion)
        state.metric[index] = self.stash(residual)

    def end_forward(self, ctx: StepContext) -> None:
        self.end_run(self.state())  # the last block did not run (Latte without temporal attention)
        super().end_forward(ctx)
        if ctx.first_in_step and self.compute:
            rels = [rel for rel, _ in self._observed.values() if rel is not None]
            motions = [m for _, m in self._observed.values() if m is not None]
            values = self.schedule.update(
                ctx.step_1based,
                sum(rels) / len(rels) if rels else None,
                sum(motions) / len(motions) if motions else None,
            )
            self.step_record.values.update(values)
        self.step_record.values.setdefault("rate", self.schedule.rate)


register(
    "adacache",
    "AdaCache + MoReg: residual caching on a schedule chosen per video from how fast residuals change",
    AdaCacheConfig,
    AdaCacheRuntime
)

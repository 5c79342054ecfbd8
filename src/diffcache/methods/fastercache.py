"""FasterCache (Lv et al., 2024, arXiv:2410.19355; official code: github.com/Vchitect/FasterCache): dynamic reuse
of self-attention outputs, and CFG-Cache.

* **Attention reuse.** On a reuse step a self-attention module does not run; it returns
  ``F_t + (F_t − F_{t+2})·w`` from the last two outputs it computed (per CFG branch, also inside a batched
  ``[uncond, cond]`` call, so split and batched CFG behave alike). A module
  whose last output is more than two steps old (a branch CFG-Cache did not run) computes instead, and outputs more
  than two steps apart are not extrapolated (the last one is reused as it is).
* **CFG-Cache.** At a full step both branches run, and the difference ``uncond − cond`` is stored per latent frame
  as its centred 2-D spectrum split into a low-frequency disk (radius ``min(H, W)//5``) and the rest. On the steps
  that follow only cond runs, and uncond is rebuilt as ``ifft(FFT(cond) + ΔLF·w1 + ΔHF·w2)``. With split CFG the
  uncond call is answered without running the model; with batched CFG the model runs on the cond half of the batch
  (only when enabled on a pipeline that says it guides: a bare denoiser's even batch may be two prompts).
  A denoiser with several outputs (LTX-2: video and audio) has each rebuilt; an output the adapter gives no 2-D
  maps for (``TokenGrid.output_stream_frames``: LTX-2's audio) is rebuilt as ``cond + (uncond − cond)`` of the last
  full step.

Schedules (1-based step ``c``; the official per-model tables, with their step thresholds scaled by ``T / T_ref`` so
they apply at any step count; parity tests such as "c even" are kept as they are):

| preset | T_ref | attention reused when | w | uncond skipped when | delta scaling (cumulative per reused step) |
|---|---|---|---|---|---|
| official-opensora | 30 | c > 7, c even | (c−7)/20·0.9 | c > 11, c % 5 ≠ 0 | HF ×1.15 if c ≥ 20; LF ×1.15 if c ≤ 25 |
| official-latte | 50 | c ≥ 16, c even | 0.5 | c ≥ 18, c % 5 ≠ 0 | LF ×1.1 if c < 45, else HF ×1.1 |
| official-opensoraplan | 150 | c ≥ 45, c % 3 ≠ 0 | 0.3 | c ≥ 40, c % 6 ≠ 0 | LF ×1.1 if c ≤ 130, else HF ×1.2 |
| official-cogvideox | 50 | c ≥ 18, c % 3 ≠ 0 | 0.3 | c ≥ 18, c % 5 ≠ 0 | LF ×1.1 if c ≤ 40; HF ×1.1 if c ≥ 30 |
| paper | – | c > T/3, every 2nd step | rises 0→1 over (T/3, T] | c > T/3, (c − ⌈T/3⌉) % 5 ≠ 0 | w1 = 1.2 early (c ≤ T/2), w2 = 1.2 late |

The paper leaves the attention window and ``t0`` open: diffcache uses the CFG window (from ``T/3``) and the middle
step. The last step always runs in full. ``default`` (for Wan-family models) is ``official-opensoraplan``'s schedule:
measured on the embedded Wan-architecture model at 30 steps with split CFG, it is the only table that reaches 1.6×
(1.60×, 31.1 dB); the others stay at 1.44–1.51× with 28–35 dB (docs/results/fastercache.md). No real Wan model
could be measured here.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch
from diffusers.hooks.hooks import ModelHook
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from ..adapters.base import argument
from ..adapters.capabilities import AttentionRoles, BatchedArguments, TokenGrid
from ..errors import ConfigError
from .framework import MethodConfig, Runtime, detached, register

#: the attention roles whose outputs are reused (a joint self-attention, or separate spatial and temporal ones)
SELF_ATTENTION_ROLES = ("self", "spatial", "temporal")
SCHEDULES = ("official-opensora", "official-latte", "official-opensoraplan", "official-cogvideox", "paper")

@dataclass
class CFGCacheConfig(MethodConfig):
    """CFG-Cache alone, FasterCache's CFG level (Lv et al., 2024, arXiv:2410.19355; official code:
    github.com/Vchitect/FasterCache): on the steps the schedule names, uncond is rebuilt from cond and the frequency
    deltas of the last full step instead of being run; self-attention always runs. The runtime is FasterCache's
    with ``attention_reuse`` off (:class:`FasterCacheConfig` adds that switch).

    Args:
        preset (str): the name of the preset the config was made from (``""`` for a hand-made config).
        schedule (str): the table that decides, per 1-based step, whether uncond is rebuilt and how the frequency
            deltas are scaled (and, for FasterCache, whether self-attention is reused and its extrapolation weight):
            one of ``"official-opensora"``, ``"official-latte"``, ``"official-opensoraplan"``,
            ``"official-cogvideox"`` (the official per-model tables, their step thresholds scaled to the step count)
            or ``"paper"`` (the table in the module docs).
        enhance (str): which frequency deltas the schedule's factors scale when uncond is rebuilt: ``"none"``,
            ``"low"``, ``"high"`` or ``"both"``.
        radius_divisor (int): the low-frequency disk's radius is ``min(H, W) // radius_divisor``, with ``H × W``
            the size of one frame of the denoiser's output, in latent pixels (integer >= 1).
        batch_order (str): with batched CFG, which half of the batch is which: ``"uncond_cond"`` (diffusers'
            pipelines: uncond first) or ``"cond_uncond"``.

    Presets:
        - ``default`` (the default preset): ``schedule="official-opensoraplan"``, FasterCache's default.
        - ``official-opensora``, ``official-latte``, ``official-opensoraplan``, ``official-cogvideox``, ``paper``:
          ``schedule`` = the preset's name.

        Every field a preset does not name keeps its default.
    """

    PRESETS: ClassVar = {"default": {"schedule": "official-opensoraplan"},
                         **{name: {"schedule": name} for name in SCHEDULES}}
    DEFAULT_PRESET: ClassVar = "default"
    REQUIRES: ClassVar = (TokenGrid, BatchedArguments)
    LEVELS: ClassVar = frozenset({"cfg"})
    attention_reuse: ClassVar[bool] = False  #: CFG-Cache alone: self-attention always runs
    cfg_cache: ClassVar[bool] = True

    schedule: str = "official-opensoraplan"
    enhance: str = "both"
    radius_divisor: int = 5
    batch_order: str = "uncond_cond"

    def validate(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.enhance not in ("none", "low", "high", "both"):
            raise ConfigError(f"enhance must be 'none', 'low', 'high' or 'both', got {self.enhance!r}")
        if isinstance(self.radius_divisor, bool) or not isinstance(self.radius_divisor, int) or self.radius_divisor < 1:
            raise ConfigError(f"radius_divisor must be an integer >= 1 (radius = min(H, W) // radius_divisor), "
                             f"got {self.radius_divisor!r}")
        if self.batch_order not in ("uncond_cond", "cond_uncond"):
            raise ConfigError(f"batch_order must be 'uncond_cond' or 'cond_uncond', got {self.batch_order!r}")


@dataclass
class FasterCacheConfig(CFGCacheConfig):
    """FasterCache (Lv et al., 2024, arXiv:2410.19355; official code: github.com/Vchitect/FasterCache).

    Args:
        preset (str): the name of the preset the config was made from (``""`` for a hand-made config).
        schedule (str): the table that decides, per 1-based step, whether self-attention is reused, its
            extrapolation weight, whether uncond is rebuilt and how the frequency deltas are scaled: one of
            ``"official-opensora"``, ``"official-latte"``, ``"official-opensoraplan"``, ``"official-cogvideox"``
            (the official per-model tables, their step thresholds scaled to the step count) or ``"paper"`` (the
            table in the module docs).
        enhance (str): which frequency deltas the schedule's factors scale when uncond is rebuilt: ``"none"``,
            ``"low"``, ``"high"`` or ``"both"``.
        radius_divisor (int): the low-frequency disk's radius is ``min(H, W) // radius_divisor``, with ``H × W``
            the size of one frame of the denoiser's output, in latent pixels (integer >= 1).
        batch_order (str): with batched CFG, which half of the batch is which: ``"uncond_cond"`` (diffusers'
            pipelines: uncond first) or ``"cond_uncond"``.
        attention_reuse (bool): dynamic feature reuse: on reuse steps self-attention does not run and its output is
            extrapolated from the last two it computed (an ablation switch; the attention level).
        cfg_cache (bool): CFG-Cache: on the steps the schedule names, uncond is rebuilt from cond and the
            frequency deltas of the last full step instead of being run (an ablation switch; the CFG level, also
            the method ``cfg-cache`` on its own). At least one of ``attention_reuse`` and ``cfg_cache`` must be on.

    Presets:
        - ``default`` (the default preset): ``schedule="official-opensoraplan"``, the table that measured best on
          the embedded Wan-architecture model (docs/results/fastercache.md).
        - ``official-opensora``, ``official-latte``, ``official-opensoraplan``, ``official-cogvideox``, ``paper``:
          ``schedule`` = the preset's name.

        Every field a preset does not name keeps its default.
    """

    REQUIRES: ClassVar = (AttentionRoles, TokenGrid, BatchedArguments)
    LEVELS: ClassVar = frozenset({"attention", "cfg"})

    attention_reuse: bool = True
    cfg_cache: bool = True

    def validate(self) -> None:
        super().validate()
        if not (self.attention_reuse or self.cfg_cache):
            raise ConfigError("attention_reuse and cfg_cache are both off: FasterCache would do nothing")

    def levels(self) -> frozenset[str]:
        """``{"attention", "cfg"}``, less the level whose switch is off."""
        return frozenset({"attention"} if self.attention_reuse else set()) | ({"cfg"} if self.cfg_cache else set())


@dataclass(frozen=True)
class StepPlan:
    """What FasterCache does at one step."""

    reuse_attention: bool
    weight: float  #: extrapolation weight w
    skip_uncond: bool
    low_factor: float  #: multiplies ΔLF on this reused step (official: cumulative; paper: w1)
    high_factor: float
    cumulative: bool


def plan(schedule: str, step: int, num_steps: int) -> StepPlan:
    """The plan for 1-based ``step`` of ``num_steps`` under ``schedule`` (the table in the module docs)."""
    T, c = num_steps, step
    if c >= T:
        return StepPlan(False, 0.0, False, 1.0, 1.0, True)
    if schedule == "paper":
        start = T / 3
        first = math.ceil(start)
        reuse = c > start and (c - first) % 2 == 1
        weight = min(1.0, max(0.0, (c - start) / (T - start)))
        skip = c > start and (c - first) % 5 != 0
        early = c <= T / 2
        return StepPlan(reuse, weight, skip, 1.2 if early else 1.0, 1.0 if early else 1.2, cumulative=False)
    reference = {"official-opensora": 30, "official-latte": 50, "official-opensoraplan": 150,
                 "official-cogvideox": 50}[schedule]
    s = lambda x: x * T / reference  # noqa: E731 - a step threshold of the reference table at this T
    low = high = 1.0
    if schedule == "official-opensora":
        reuse, weight = c > s(7) and c % 2 == 0, (c - s(7)) / s(20) * 0.9
        skip = c % 5 != 0 and c > s(11)
        high = 1.15 if c >= s(20) else 1.0
        low = 1.15 if c <= s(25) else 1.0
    elif schedule == "official-latte":
        reuse, weight = c >= s(16) and c % 2 == 0, 0.5
        skip = c >= s(18) and c % 5 != 0
        if c < s(45):
            low = 1.1
        elif c > s(35):
            high = 1.1
    elif schedule == "official-opensoraplan":
        reuse, weight = c >= s(45) and c % 3 != 0, 0.3
        skip = c >= s(40) and c % 6 != 0
        if c <= s(130):
            low = 1.1
        elif c >= s(100):
            high = 1.2
    else:  # official-cogvideox
        reuse, weight = c >= s(18) and c % 3 != 0, 0.3
        skip = c >= s(18) and c % 5 != 0
        low = 1.1 if c <= s(40) else 1.0
        high = 1.1 if c >= s(30) else 1.0
    return StepPlan(reuse, max(0.0, weight), skip, low, high, cumulative=True)


# -- the frequency split -------------------------------------------------------------------------------------------
def low_frequency_mask(height: int, width: int, radius: int, device=None) -> torch.Tensor:
    """Boolean ``[H, W]`` disk of ``radius`` around the centre of an fftshift-ed spectrum."""
    y = torch.arange(height, device=device).view(-1, 1) - height // 2
    x = torch.arange(width, device=device).view(1, -1) - width // 2
    return (y**2 + x**2) <= radius**2


def spectrum(maps: torch.Tensor) -> torch.Tensor:
    """Centred 2-D spectrum over the last two dimensions."""
    return torch.fft.fftshift(torch.fft.fft2(maps.float()), dim=(-2, -1))


def split_delta(uncond: torch.Tensor, cond: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ΔLF, ΔHF)``: the spectrum of ``uncond − cond`` inside and outside the low-frequency disk."""
    delta = spectrum(uncond) - spectrum(cond)
    mask = low_frequency_mask(*delta.shape[-2:], radius, delta.device)
    return delta * mask, delta * ~mask


def rebuild_uncond(cond: torch.Tensor, delta_low: torch.Tensor, delta_high: torch.Tensor, w_low: float = 1.0,
                   w_high: float = 1.0) -> torch.Tensor:
    """``ifft(LF(cond) + ΔLF·w1 + HF(cond) + ΔHF·w2)`` (LF + HF of cond is its whole spectrum)."""
    total = spectrum(cond) + delta_low * w_low + delta_high * w_high
    rebuilt = torch.fft.ifft2(torch.fft.ifftshift(total, dim=(-2, -1))).real
    return rebuilt.to(cond.dtype)


# -- hooks ---------------------------------------------------------------------------------------------------------
def _combine(last, previous, weight):
    if isinstance(last, torch.Tensor):
        return last + (last - previous) * weight
    return tuple(_combine(a, b, weight) for a, b in zip(last, previous))


def _take(output, part: slice, rows_per_sample: int = 1):
    """The ``part`` (a slice of the denoiser's batch) of an attention output whose batch holds ``rows_per_sample``
    rows per denoiser sample, sample-major (Latte's spatial attention runs on ``[B·F, N, D]``)."""
    if rows_per_sample != 1 and part != slice(None):
        part = slice(None if part.start is None else part.start * rows_per_sample,
                     None if part.stop is None else part.stop * rows_per_sample)
    if isinstance(output, torch.Tensor):
        return output[part]
    return tuple(_take(o, part, rows_per_sample) for o in output)


def _own(output):
    """``output`` with every tensor that is a view of a larger storage copied (one half of a batched
    ``[uncond, cond]`` output; a stream's part of a joint attention output, as Mochi's last block returns its
    text): what the history keeps is then only the outputs themselves, not the whole batch or joint tensor."""
    if isinstance(output, torch.Tensor):
        return output.clone() if output.untyped_storage().nbytes() > output.nbytes else output
    return tuple(_own(o) for o in output)


def _rows(output) -> int:
    return output.shape[0] if isinstance(output, torch.Tensor) else _rows(output[0])


def _cat(outputs: list):
    if isinstance(outputs[0], torch.Tensor):
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]
    return tuple(_cat([o[i] for o in outputs]) for i in range(len(outputs[0])))


class _AttentionHook(ModelHook):
    """Self-attention reuse. The history is kept per CFG branch: a batched ``[uncond, cond]`` call stores each half
    under its branch, so a cond-only call (CFG-Cache) continues the cond history, exactly as with split CFG."""

    def __init__(self, runtime: "FasterCacheRuntime", index):
        super().__init__()
        self.runtime = runtime
        self.index = index

    def new_forward(self, module, *args, **kwargs):
        runtime = self.runtime
        step = runtime.ctx.step
        states = [runtime.attention.setdefault((self.index, name), []) for name, _ in runtime.parts]
        recent = all(state and state[-1][0] >= step - 2 for state in states)  # a skipped branch has no recent output
        if runtime.step_plan.reuse_attention and recent:
            runtime.count_block(computed=False)
            outputs = []
            for state in states:
                last = runtime.unstash(state[-1][1])
                if len(state) < 2:
                    outputs.append(last)
                else:
                    outputs.append(_combine(last, runtime.unstash(state[-2][1]), runtime.step_plan.weight))
            return _cat(outputs)
        output = self.fn_ref.original_forward(*args, **kwargs)
        rows_per_sample = max(1, _rows(output) // runtime.batch) if runtime.batch else 1
        for (_, part), state in zip(runtime.parts, states):
            state.append((step, runtime.stash(_own(detached(_take(output, part, rows_per_sample))))))
            del state[:-2]
        runtime.count_block(computed=True)
        return output


class _ModelHook(ModelHook):
    def __init__(self, runtime: "FasterCacheRuntime"):
        super().__init__()
        self.runtime = runtime

    def new_forward(self, module, *args, **kwargs):
        return self.runtime.model_forward(module, self.fn_ref.original_forward, args, kwargs)


def _output_tensors(output) -> tuple[torch.Tensor, ...]:
    """Every output tensor of a denoiser call, in its order (one for most models; LTX-2: video, then audio)."""
    values = output if isinstance(output, tuple) else output.to_tuple()
    return tuple(value for value in values if isinstance(value, torch.Tensor))


def _wrap_like(output, tensors):
    """``output``'s container (a tuple or a diffusers output class) holding ``tensors`` instead."""
    if isinstance(output, tuple):
        return (*tensors, *output[len(tensors):])
    return type(output)(*tensors)


class FasterCacheRuntime(Runtime):
    """Both levels of FasterCache; each switched by its config (``attention_reuse``, ``cfg_cache``). In a
    composition (:mod:`diffcache.composition`) the CFG level is the outermost: a split-CFG uncond call it rebuilds
    never reaches the levels inside, and a batched call it cuts to the cond half reaches them as a ``"cond"`` forward, so their per-branch state stays apart from the full batch's."""

    HOOK = "diffcache_fastercache"

    @staticmethod
    def answered_share(record) -> float:
        """The share of a step's denoiser work the CFG level answered itself (half: uncond rebuilt), from its step
        record (:mod:`diffcache.composition` adds it to the inner levels' counts)."""
        return 0.5 if record.values.get("uncond") == "rebuilt" else 0.0

    def install(self) -> None:
        hooked = 0
        if self.config.attention_reuse:
            for index, block in enumerate(self.adapter.blocks(self.model)):
                roles = self.adapter.attention_modules(block)
                for role in SELF_ATTENTION_ROLES:  # joint self-attention, or Latte's spatial / temporal one
                    if roles.get(role) is not None:
                        self.add_hook(roles[role], _AttentionHook(self, index if role == "self" else (index, role)))
                        hooked += 1
        self.add_hook(self.model, _ModelHook(self), self.HOOK + "_cfg")  # names the batch halves; CFG-Cache
        self.clear()

    def clear(self) -> None:
        super().clear()
        self.attention: dict = {}
        self.step_plan: StepPlan | None = None
        self.cond_output = None  #: (step, output tensors, output class or None for a tuple) of the split-CFG cond call
        self.deltas = None  #: per output stream, from the last full step: (ΔLF, ΔHF), or Δ for a stream without maps
        self.factors = [1.0, 1.0]
        self.parts: list[tuple[str, slice]] = []  #: (branch, batch slice) of the forward in progress
        self.batch = 0  #: the batch of the denoiser forward in progress (after any CFG-Cache cut)
        self._warned_order = getattr(self, "_warned_order", False)

    def begin_forward(self, ctx, args, kwargs) -> None:
        super().begin_forward(ctx, args, kwargs)
        if ctx.first_in_step:
            self.step_plan = plan(self.config.schedule, ctx.step_1based, ctx.num_steps)
            if not self.config.attention_reuse:
                self.step_plan = dataclasses.replace(self.step_plan, reuse_attention=False)
            record = self.step_record
            record.computed = not self.step_plan.reuse_attention
            record.values.update({"w": self.step_plan.weight} if self.step_plan.reuse_attention else {})

    # -- CFG-Cache -------------------------------------------------------------------------------------------------
    def _scaled_deltas(self, deltas):
        enhance = self.config.enhance
        low, high = self.factors
        delta_low, delta_high = deltas
        return (delta_low, delta_high, low if enhance in ("low", "both") else 1.0,
                high if enhance in ("high", "both") else 1.0)

    def _advance_factors(self) -> None:
        p = self.step_plan
        if p.cumulative:
            self.factors = [self.factors[0] * p.low_factor, self.factors[1] * p.high_factor]
        else:
            self.factors = [p.low_factor, p.high_factor]

    def _radius(self, maps) -> int:
        return min(maps.shape[-2:]) // self.config.radius_divisor

    def _delta(self, uncond, cond, uncond_view, cond_view):
        """One output stream's ``uncond − cond``: split by frequency on its 2-D maps, or as it is without maps."""
        if cond_view is None:
            return (uncond - cond).detach()
        return split_delta(uncond_view, cond_view, self._radius(cond_view))

    def _rebuild(self, model, conds: tuple, args, kwargs) -> list:
        """Every output stream's uncond, rebuilt from its cond and the stored deltas."""
        views = self.adapter.output_stream_frames(model, conds, args, kwargs)
        rebuilt = []
        for cond, view, delta in zip(conds, views, self.unstash(self.deltas, conds[0])):
            if view is None:
                rebuilt.append(cond + delta.to(cond.dtype))
            else:
                maps, back = view
                rebuilt.append(back(rebuild_uncond(maps, *self._scaled_deltas(delta))))
        return rebuilt

    def model_forward(self, model, forward, args, kwargs):
        """Counts one unit per forward: reused when uncond was rebuilt rather than run."""
        output, rebuilt = self._model_forward(model, forward, args, kwargs)
        self.count_block(computed=not rebuilt)
        if rebuilt:
            self.step_record.values["uncond"] = "rebuilt"
        return output

    def _model_forward(self, model, forward, args, kwargs):
        ctx, adapter = self.ctx, self.adapter
        skip = self.config.cfg_cache and self.step_plan.skip_uncond and self.deltas is not None
        self.parts = [(ctx.branch, slice(None))]
        self.batch = argument(type(model).forward, args, kwargs, "hidden_states").shape[0]
        if ctx.branch == "cond":
            output = forward(*args, **kwargs)
            self.cond_output = (ctx.step, tuple(o.detach().clone() for o in _output_tensors(output)),  # the
                                None if isinstance(output, tuple) else type(output))  # pipeline may edit them
            return output, False
        if ctx.branch == "uncond":
            if not self.config.cfg_cache:
                return forward(*args, **kwargs), False
            have_cond = self.cond_output is not None and self.cond_output[0] == ctx.step
            if not have_cond and not self._warned_order:
                self._warned_order = True
                warnings.warn("FasterCache: the uncond call came before the cond call of its step, so CFG-Cache cannot "
                              "rebuild it from cond and stays off for this pipeline (attention reuse still works).",
                              UserWarning, stacklevel=2)
            if skip and have_cond:
                self._advance_factors()
                rebuilt = self._rebuild(model, self.cond_output[1], args, kwargs)
                return_dict = argument(type(model).forward, args, kwargs, "return_dict", True)
                wrapped = (self.cond_output[2] or Transformer2DModelOutput)(*rebuilt) if return_dict else tuple(rebuilt)
                return wrapped, True
            output = forward(*args, **kwargs)
            if have_cond:
                conds = self.cond_output[1]
                unconds = tuple(o.detach() for o in _output_tensors(output))
                cond_views = adapter.output_stream_frames(model, conds, args, kwargs)
                uncond_views = adapter.output_stream_frames(model, unconds, args, kwargs)
                self.deltas = self.stash([self._delta(u, c, None if uv is None else uv[0], None if cv is None else cv[0])
                                          for u, c, uv, cv in zip(unconds, conds, uncond_views, cond_views)])
                self.factors = [1.0, 1.0]
            return output, False
        # batched CFG ("cond_uncond"): [uncond, cond] halves (or the other order)
        hidden = argument(type(model).forward, args, kwargs, "hidden_states")
        # a bare denoiser gives no sign of guidance: an even batch may be two prompts, so leave it alone
        guided = self.guided  # read at the call's first forward (framework.classifier_free_guidance)
        if hidden.shape[0] % 2 or not guided or ctx.branch not in ("cond_uncond",):
            return forward(*args, **kwargs), False  # no CFG in this call: nothing to rebuild
        half = hidden.shape[0] // 2
        cond_first = self.config.batch_order == "cond_uncond"
        cond_slice = slice(0, half) if cond_first else slice(half, None)
        uncond_slice = slice(half, None) if cond_first else slice(0, half)
        self.parts = sorted([("cond", cond_slice), ("uncond", uncond_slice)], key=lambda p: p[1].start or 0)
        if skip:
            self.parts = [("cond", slice(None))]
            for inner in self.inner_runtimes():  # a composition's inner levels see a cond forward, as with split CFG
                inner.ctx = dataclasses.replace(inner.ctx, branch="cond")
            args, kwargs = adapter.slice_batch(model, args, kwargs, cond_slice, 2 * half)
            self.batch = half
            output = forward(*args, **kwargs)
            conds = _output_tensors(output)
            self._advance_factors()
            unconds = self._rebuild(model, conds, args, kwargs)
            both = [torch.cat([cond, uncond] if cond_first else [uncond, cond]) for cond, uncond in zip(conds, unconds)]
            return _wrap_like(output, both), True
        output = forward(*args, **kwargs)
        if not self.config.cfg_cache:
            return output, False
        fulls = tuple(o.detach() for o in _output_tensors(output))
        views = adapter.output_stream_frames(model, fulls, args, kwargs)
        self.deltas = []
        for full, view in zip(fulls, views):
            maps = full if view is None else view[0]
            cond_maps = maps[cond_slice]
            uncond_maps = maps[slice(half, None) if cond_first else slice(0, half)]
            self.deltas.append(self._delta(uncond_maps, cond_maps, None if view is None else uncond_maps,
                                           None if view is None else cond_maps))
        self.deltas = self.stash(self.deltas)
        self.factors = [1.0, 1.0]
        return output, False


class CFGCacheRuntime(FasterCacheRuntime):
    """CFG-Cache alone: FasterCache's runtime with attention reuse off (:class:`CFGCacheConfig`), under its own
    hook names."""

    HOOK = "diffcache_cfgcache"


register(
    "cfg-cache",
    "CFG-Cache (FasterCache's CFG level): on scheduled steps uncond is rebuilt from cond and the last full step's "
    "frequency deltas instead of being run",
    CFGCacheConfig,
    CFGCacheRuntime
)

register(
    "fastercache",
    "FasterCache: self-attention reuse with extrapolation, and CFG-Cache rebuilding uncond from cond by frequency",
    FasterCacheConfig,
    FasterCacheRuntime
)

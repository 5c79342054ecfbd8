"""EasyCache (Zhou et al., 2025, "Less is Enough: Training-Free Video Diffusion Acceleration via Runtime-Adaptive
Caching", arXiv:2507.02860; official code: github.com/H-EmbodVis/EasyCache, ``EasyCache4Wan2.1/easycache_generate.py``
and ``EasyCache4HunyuanVideo/easycache_sample_video.py``, ``easycache_forward``): reuse the block stack's residual
while a runtime estimate of the output's change, accumulated over the reused steps, stays under a threshold. No
offline coefficients: the estimate is calibrated at run time by the model's own last two computed steps.

The rule, per deciding branch (as the official Wan code's even, cond, calls):

* ``x`` is the denoiser's latent input, ``v`` its output; every mean is ``mean|·|`` over the whole tensor;
* at a computed step ``s`` with an earlier computed step ``s'``: the *transformation rate*
  ``k = mean|v_s − v_s'| / mean|x_s − x_s'|``;
* at a step ``t`` (not forced): ``pred = k · mean|x_t − x_(t−1)| / mean|v_s|`` (``s`` the last computed step),
  ``accumulated += pred``; the step is reused while ``accumulated < threshold``, else computed and
  ``accumulated = 0``; without a ``k`` yet the step is computed (the sum kept);
* the first ``warmup_steps`` steps (official ``ret_steps``) and the last ``last_steps`` are always computed and
  reset the sum; ``x_(t−1)`` is updated at every step, ``k``, ``x_s`` and ``v_s`` only at computed steps.

CFG (the official Wan code counts calls: even ones are cond and decide for the pair, odd ones are uncond and follow):
the first forward of a step (cond with split CFG; the one ``[uncond, cond]`` batch with batched CFG; the only
call without CFG) decides; the step's later forwards (uncond) follow that decision, each reusing its own branch's
residual. Nothing of the later branches is read by the first, so cond never depends on uncond.

Departures from the official code, all from serving every family through the block-stack cache
(:mod:`diffcache.methods.residual_cache`) rather than replacing the denoiser's forward:

* what is cached and reused is the residual of the whole block stack (its output − its input, per stream, on the
  hidden states), not the denoiser's ``output − input`` in latent space: on a reused step the patch embedding, the
  condition embedders and the output head still run (a few percent of a step's FLOPs at Wan 2.1 sizes), and the
  head applies the current step's timestep modulation to the reused hidden states. The decision signals are the
  official ones: the denoiser's latent input and output.
* the means are computed in float32 (the official code takes them in the tensors' dtype, bf16 on Wan); a zero input
  change between two computed steps gives ``k = 0`` rather than a division by zero.
* a branch reuses only a residual of the shapes of this step's streams that it computed or reused at the previous
  step (``ResidualCacheRuntime.cache_usable``); the official code has no such check (every step runs both branches).
* Wan's ``ret_steps`` is hard-coded to 10 steps in the official script (its ``--ret_steps`` argument is ignored);
  ``warmup_steps`` is a field here, with the official values in the presets.
* ``forecast="linear"`` (not in the official code, off by default): a reused step extrapolates the residual from the
  last two computed steps instead of repeating it (docs/methods/forecasting.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from diffusers.hooks.hooks import ModelHook

from ..adapters.base import argument
from ..adapters.capabilities import BlockStack
from ..errors import ConfigError
from .framework import MethodConfig, register
from .residual_cache import ResidualCacheRuntime


@dataclass
class EasyCacheConfig(MethodConfig):
    """EasyCache (Zhou et al., 2025, arXiv:2507.02860; official code: github.com/H-EmbodVis/EasyCache).

    Args:
        preset (str): the name of the preset the config was made from (``""`` for a hand-made config).
        threshold (float): the accumulated estimated relative output change (unitless, >= 0) below which the
            block stack's residual is reused (official ``thresh``); at or above it the step is computed and the sum
            reset. Higher reuses more.
        warmup_steps (int): the first steps that are always computed (official ``ret_steps``; >= 0). The rate ``k``
            needs two computed steps, so at least the first two steps are computed whatever this is.
        last_steps (int): the last steps that are always computed (>= 0; the official code computes the last one).
        forecast (str): what a reused step adds: ``"none"`` (the default, as the official code) the stack residual
            of the last computed step as it is; ``"linear"`` that residual extrapolated to first order from the
            branch's last two computed steps (docs/methods/forecasting.md; one more residual per branch is kept).

    Presets:
        - ``default`` (the default preset) and ``wan2.1``: the official Wan 2.1 script's defaults (T2V and I2V, 1.3B
          and 14B): ``threshold=0.05``, ``warmup_steps=10``, ``last_steps=1``. Checked on the embedded
          tiny-shapes-t2v model (a Wan-architecture transformer) by counting computed steps: 16 of 30 on each of the
          prompts "a red circle moving left" and "a blue square moving up" (docs/methods/easycache.md), so it reuses
          there as it is.
        - ``wan2.1-fast`` (``threshold=0.1``, "2.0x speedup") and ``wan2.1-faster`` (``threshold=0.2``, "3.0x
          speedup"): the thresholds the official script's ``--thresh`` help names, with Wan's warm-up.
        - ``hunyuanvideo``: the official HunyuanVideo script: ``threshold=0.025``, ``warmup_steps=5``,
          ``last_steps=1``.
    """

    PRESETS: ClassVar = {
        "default": {"threshold": 0.05, "warmup_steps": 10, "last_steps": 1},
        "wan2.1": {"threshold": 0.05, "warmup_steps": 10, "last_steps": 1},
        "wan2.1-fast": {"threshold": 0.1, "warmup_steps": 10, "last_steps": 1},
        "wan2.1-faster": {"threshold": 0.2, "warmup_steps": 10, "last_steps": 1},
        "hunyuanvideo": {"threshold": 0.025, "warmup_steps": 5, "last_steps": 1},
    }
    DEFAULT_PRESET: ClassVar = "default"
    REQUIRES: ClassVar = (BlockStack,)
    LEVELS: ClassVar = frozenset({"step"})
    DECISION_READS: ClassVar = "output"  #: the rate k reads the denoiser's output, attention outputs included

    threshold: float = 0.05
    warmup_steps: int = 10
    last_steps: int = 1
    forecast: str = "none"

    def validate(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or self.threshold < 0:
            raise ConfigError(f"threshold must be a number >= 0, got {self.threshold!r}")
        for name in ("warmup_steps", "last_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0 (steps always computed), got {value!r}")
        ResidualCacheRuntime.check_forecast(self.forecast)


@torch.no_grad()
def mean_abs(tensor: torch.Tensor) -> float:
    """``mean|tensor|`` over every element, in float32 (the official code's ``.abs().mean()``)."""
    return float(tensor.float().abs().mean())


def easycache_decision(accumulated: float, k: float | None, input_change: float | None, output_norm: float | None,
                       threshold: float, forced: bool) -> tuple[bool, float, float | None]:
    """One step of EasyCache's rule: ``(compute, accumulated after the step, pred)``. ``input_change``:
    ``mean|x_t − x_(t−1)|``; ``output_norm``: ``mean|v|`` of the last computed step (``None``: no previous step);
    ``k``: the transformation rate (``None``: not yet two computed steps); ``forced``: a warm-up or last step."""
    if forced:
        return True, 0.0, None
    if input_change is None or output_norm is None or k is None:
        return True, accumulated, None
    pred = k * input_change / max(output_norm, 1e-12)
    accumulated += pred
    if accumulated < threshold:
        return False, accumulated, pred
    return True, 0.0, pred


class _DenoiserHook(ModelHook):
    """On the denoiser: reads its latent input before (the decision) and its output after (the rate ``k``)."""

    def __init__(self, runtime: "EasyCacheRuntime"):
        super().__init__()
        self.runtime = runtime

    def new_forward(self, module, *args, **kwargs):
        runtime = self.runtime
        latent = argument(type(module).forward, args, kwargs, "hidden_states")
        if not isinstance(latent, torch.Tensor):  # nothing to decide on: compute this forward
            runtime.state().values["wanted_skip"] = False
            return self.fn_ref.original_forward(*args, **kwargs)
        runtime.decide(latent.detach())
        output = self.fn_ref.original_forward(*args, **kwargs)
        runtime.after_forward(latent.detach(), output)
        return output


class EasyCacheRuntime(ResidualCacheRuntime):
    """The deciding branch's ``state.values`` hold ``x_prev`` (the latent input of the previous step), ``x_computed``
    and ``v_computed`` (latent input and output of the last computed step), ``k`` and ``accumulated``; every branch
    holds its block-stack residual."""

    HOOK = "diffcache_easycache"

    def install(self) -> None:
        super().install()
        self.add_hook(self.model, _DenoiserHook(self), self.HOOK + "_signals")

    def clear(self) -> None:
        super().clear()
        self.step_plan: tuple[int, bool] | None = None  #: (step, skip wanted) as the step's first forward decided

    def decide(self, latent: torch.Tensor) -> None:
        """Before the blocks: the step's first forward applies the rule; a later forward of the step follows it."""
        ctx, config = self.ctx, self.config
        state = self.state()
        values = state.values
        values["leads"] = ctx.first_in_step
        if not ctx.first_in_step:
            values["wanted_skip"] = self.step_plan is not None and self.step_plan == (ctx.step, True)
            values["signals"] = {}
            return
        forced = ctx.step < config.warmup_steps or ctx.step >= ctx.num_steps - config.last_steps
        previous = values.get("x_prev")
        input_change = (None if previous is None or previous.shape != latent.shape
                        else mean_abs(latent - previous))
        output = values.get("v_computed")
        before = values.get("accumulated", 0.0)
        compute, accumulated, pred = easycache_decision(
            before, values.get("k"), input_change, None if output is None else mean_abs(output), config.threshold,
            forced)
        values["accumulated"] = accumulated
        values["x_prev"] = latent.clone()
        values["wanted_skip"] = not compute
        self.step_plan = (ctx.step, not compute)
        # the sum compared with the threshold (before a computed step resets it)
        signals = {} if pred is None else {"pred_change": pred, "accumulated": before + pred}
        if values.get("k") is not None:
            signals["k"] = values["k"]
        values["signals"] = signals

    def after_forward(self, latent: torch.Tensor, output) -> None:
        """After a computed forward of the deciding branch: the rate ``k`` from it and the last computed step."""
        state = self.state()
        values = state.values
        if not values.get("leads") or state.skip:
            return
        first = output if isinstance(output, torch.Tensor) else output[0]
        first = first.detach()
        previous_x, previous_v = values.get("x_computed"), values.get("v_computed")
        if (previous_x is not None and previous_v is not None and previous_x.shape == latent.shape
                and previous_v.shape == first.shape):
            input_change = mean_abs(latent - previous_x)
            values["k"] = mean_abs(first - previous_v) / input_change if input_change > 0 else 0.0
        values["x_computed"] = latent.clone()
        values["v_computed"] = first.clone()

    def head_forward(self, block, forward, args, kwargs):
        adapter = self.adapter
        state = self.state()
        streams = adapter.block_streams(block, args, kwargs)
        usable = self.cache_usable(state, streams)
        self.note_step(state)
        skip = bool(state.values.get("wanted_skip")) and usable
        if state.values.get("leads") and state.values.get("wanted_skip") and not usable:
            state.values["accumulated"] = 0.0  # computed after all: the sum restarts, as after any computed step
        state.skip = skip
        self.record(skip, **state.values.pop("signals", {}))
        if skip:
            self.count_block(computed=False)
            return adapter.make_block_output(
                tuple(x + r.to(x.dtype) for x, r in zip(streams, self.reused_residual(state, streams[0]))))
        output = forward(*args, **kwargs)
        self.count_block(computed=True)
        self.begin_run(state, streams, output)
        return output

    def could_skip(self, num_steps: int) -> bool:
        return num_steps - max(self.config.warmup_steps, 2) - self.config.last_steps > 0

    def nothing_skipped_hint(self) -> str:
        sums = [v for s in self.report.calls[-1].steps for n, v in s.values.items() if n.endswith("accumulated")]
        if not sums:
            return (f"No step after the {self.config.warmup_steps} warm-up steps had a rate k to estimate with: "
                    "lower warmup_steps or run more steps")
        return (f"Its accumulated estimated change never stayed under threshold {self.config.threshold:g} (smallest "
                f"sum {min(sums):.3g}); raise the threshold above that, or lower warmup_steps")


register(
    "easycache",
    "EasyCache: skip the block stack while the runtime-estimated output change (rate k of the last computed steps "
    "× input change), accumulated, stays under a threshold",
    EasyCacheConfig,
    EasyCacheRuntime
)

"""First-Block-Cache (as in diffusers' ``FirstBlockCacheConfig`` and ParaAttention, github.com/chengzeyi/ParaAttention;
no paper): the first block always runs; if its residual changed little since the last computed step, the other
blocks are skipped and their cached residual is added to the first block's output.

Per branch: ``diff = mean|r1 − r1_prev| / mean|r1_prev|`` with ``r1`` the first block's residual (video stream) and
``r1_prev`` the one of the last *computed* step; reuse while ``diff < threshold``.

Default threshold 0.1, in ParaAttention's recommended range for video models (0.08–0.12); the ``diffusers`` preset
is diffusers' default 0.05, which on tiny-shapes-t2v reuses nothing (its first-block residual changes by more than
5 % at almost every step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..adapters.capabilities import BlockStack
from ..errors import ConfigError
from .framework import MethodConfig, register, relative_change
from .residual_cache import ResidualCacheRuntime


@dataclass
class FBCacheConfig(MethodConfig):
    """First-Block-Cache (no paper; official code: github.com/chengzeyi/ParaAttention; in diffusers as
    ``FirstBlockCacheConfig``).

    Args:
        preset (str): the name of the preset the config was made from (``""`` for a hand-made config).
        threshold (float): the blocks after the first are skipped while the first block's residual changed by less
            than this since the last computed step, as a relative mean absolute change
            ``mean|r1 − r1_prev| / mean|r1_prev|`` (unitless, >= 0). Higher reuses more.
        forecast (str): what a reused step adds: ``"none"`` (the default, as diffusers and ParaAttention) the cached
            residual of the other blocks as it is; ``"linear"`` that residual extrapolated to first order from the
            branch's last two computed steps (docs/methods/forecasting.md; one more residual per branch is kept).

    Presets:
        - ``default`` (the default preset): ``threshold=0.1``, in ParaAttention's recommended range for video
          models (0.08–0.12).
        - ``diffusers``: ``threshold=0.05``, diffusers' default (on tiny-shapes-t2v it reuses nothing).
        - ``slow``: ``threshold=0.08``.
        - ``fast``: ``threshold=0.15``.
    """

    PRESETS: ClassVar = {"default": {"threshold": 0.1}, "diffusers": {"threshold": 0.05},
                         "slow": {"threshold": 0.08}, "fast": {"threshold": 0.15}}
    DEFAULT_PRESET: ClassVar = "default"
    REQUIRES: ClassVar = (BlockStack,)
    LEVELS: ClassVar = frozenset({"step"})
    DECISION_READS: ClassVar = "blocks"  #: the first block's residual, attention output included

    threshold: float = 0.1
    forecast: str = "none"

    def validate(self) -> None:
        ResidualCacheRuntime.check_forecast(self.forecast)
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or self.threshold < 0:
            raise ConfigError(f"threshold must be a number >= 0, got {self.threshold!r}")


class FBCacheRuntime(ResidualCacheRuntime):
    HOOK = "diffcache_fbcache"

    def head_forward(self, block, forward, args, kwargs):
        adapter = self.adapter
        state = self.state()
        inputs = adapter.block_streams(block, args, kwargs)
        output = forward(*args, **kwargs)
        self.count_block(computed=True)
        outputs = adapter.output_streams(output)
        first_residual = (outputs[0] - inputs[0]).detach()
        previous = state.values.get("first_residual")
        diff = None
        usable = self.cache_usable(state, outputs)
        self.note_step(state)
        if previous is not None and previous.shape == first_residual.shape and usable:
            diff = relative_change(previous, first_residual, group=self.cp_group)
        state.skip = diff is not None and diff < self.config.threshold
        self.record(state.skip, **({} if diff is None else {"diff": diff}))
        if state.skip:
            return adapter.make_block_output(tuple(o + r.to(o.dtype) for o, r in zip(outputs, self.reused_residual(state, outputs[0]))))
        state.values["first_residual"] = first_residual  # from the last computed step only
        self.begin_run(state, outputs, output)
        return output

    def nothing_skipped_hint(self) -> str:
        diffs = [v for s in self.report.calls[-1].steps for k, v in s.values.items() if k.endswith("diff")]
        if not diffs:
            return f"Raise threshold above {self.config.threshold:g}"
        return (f"The first block's residual never changed by less than threshold {self.config.threshold:g} (smallest "
                f"change {min(diffs):.3g}); try threshold={1.2 * min(diffs):.2g} or more")


register(
    "fbcache",
    "First-Block-Cache: skip all blocks after the first while the first block's residual changes less than a threshold",
    FBCacheConfig,
    FBCacheRuntime
)

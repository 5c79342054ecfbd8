"""Pyramid Attention Broadcast (Zhao et al., 2024, arXiv:2408.12588; official code:
github.com/NUS-HPC-AI-Lab/VideoSys): inside a timestep window, an attention module computes every ``range``-th call
and returns its last output otherwise; attention closer to the output of the block (cross) is reused longer than
self-attention.

As diffusers' ``PyramidAttentionBroadcastConfig`` (compute when ``iteration % range == 0``, outside
``window[0] < t < window[1]``, or with nothing cached), with one difference that matters: the state is kept **per
branch**. diffusers keeps one per module, so with split CFG the uncond call reuses the cond call's attention output
and guidance silently stops working; here cond and uncond never see each other's outputs.

Wan, CogVideoX and LTX-Video have joint spatio-temporal self-attention (no separate temporal attention): their
self-attention takes the *spatial* range (2, as diffusers' CogVideoX example) and cross-attention the cross range
(6, Open-Sora's). CogVideoX has no cross-attention module (text joins self-attention). A family with separate
spatial and temporal attention (Latte) gives them the roles ``"spatial"`` (``self_range``) and ``"temporal"``
(``temporal_range``, 3 as VideoSys' ``LattePABConfig``; spatial 2 and cross 6 there too). A second stream's
attentions (``"self.audio"``, ``"cross.audio"`` in LTX-2) take the range of their role before the dot; roles with
no range (LTX-2's audio↔video attentions) are not hooked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from diffusers.hooks.hooks import ModelHook

from ..adapters.capabilities import AttentionRoles
from ..errors import ConfigError, UnsupportedModelError
from .framework import MethodConfig, Runtime, detached, register


@dataclass
class PABConfig(MethodConfig):
    """Pyramid Attention Broadcast (Zhao et al., 2024, arXiv:2408.12588; official code:
    github.com/NUS-HPC-AI-Lab/VideoSys).

    Args:
        preset (str): the name of the preset the config was made from (``""`` for a hand-made config).
        self_range (int | None): inside ``window``, a self-attention module computes every N-th call (per CFG
            branch) and returns its last output otherwise (integer >= 1; 1 never reuses). ``None``: self-attention
            is not hooked. The default is the spatial range of diffusers' CogVideoX example.
        cross_range (int | None): the same for cross-attention (the default is Open-Sora's cross range).
        temporal_range (int | None): the same for temporal attention, in families that separate it from spatial
            attention (Latte; elsewhere unused). The default is VideoSys' Latte temporal range. At least one of
            the three ranges must be set.
        window (tuple[float, float]): ``(low, high)``: reuse only while ``low < timestep < high``, in the
            scheduler's timestep units (0–1000 for diffusers' schedulers, 1000 the noisiest); ``low < high``.
            Lists are accepted and stored as tuples.

    Presets:
        - ``default`` (the default preset): the field defaults.
        - ``slow``: ``self_range=2``, ``cross_range=3``.
        - ``fast``: ``self_range=3``, ``cross_range=6``, ``window=(50, 900)``.

        Every field a preset does not name keeps its default.
    """

    PRESETS: ClassVar = {
        "default": {},
        "slow": {"self_range": 2, "cross_range": 3},
        "fast": {"self_range": 3, "cross_range": 6, "window": (50, 900)},
    }
    DEFAULT_PRESET: ClassVar = "default"
    REQUIRES: ClassVar = (AttentionRoles,)
    LEVELS: ClassVar = frozenset({"attention"})

    self_range: int | None = 2
    cross_range: int | None = 6
    temporal_range: int | None = 3
    window: tuple[float, float] = (100, 800)

    def __post_init__(self) -> None:
        if isinstance(self.window, list):  # canonical form, before validation: a tuple (values as given)
            self.window = tuple(self.window)
        super().__post_init__()

    def validate(self) -> None:
        for name in ("self_range", "cross_range", "temporal_range"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be an integer >= 1 or None, got {value!r}")
        if self.self_range is None and self.cross_range is None and self.temporal_range is None:
            raise ConfigError("set self_range, cross_range or temporal_range; with none PAB reuses nothing")
        window = self.window
        if not (isinstance(window, (tuple, list)) and len(window) == 2 and window[0] < window[1]):
            raise ConfigError(f"window must be (low, high) timesteps with low < high, got {window!r}")


class _AttentionHook(ModelHook):
    def __init__(self, runtime: "PABRuntime", key: str, block_range: int):
        super().__init__()
        self.runtime = runtime
        self.key = key
        self.block_range = block_range

    def new_forward(self, module, *args, **kwargs):
        runtime = self.runtime
        ctx = runtime.ctx
        state = runtime.states.setdefault((self.key, ctx.branch), {"iteration": 0, "cache": None})
        low, high = runtime.config.window
        inside = ctx.timestep is not None and low < ctx.timestep < high
        compute = (state["cache"] is None or state["iteration"] == 0 or not inside
                   or state["iteration"] % self.block_range == 0)
        if compute:
            output = self.fn_ref.original_forward(*args, **kwargs)
            state["cache"] = runtime.stash(detached(output))  # (to its cache_device, if one is set)
        else:
            output = runtime.unstash(state["cache"])
        state["iteration"] += 1
        runtime.count_block(computed=compute)
        if compute:
            runtime.step_record.computed = True
        return output


class PABRuntime(Runtime):
    HOOK = "diffcache_pab"

    def install(self) -> None:
        ranges = {"self": self.config.self_range, "spatial": self.config.self_range,
                  "temporal": self.config.temporal_range, "cross": self.config.cross_range}
        hooked = 0
        for index, block in enumerate(self.adapter.blocks(self.model)):
            for role, module in self.adapter.attention_modules(block).items():
                kind = role.split(".")[0]  # "self.audio" (a second stream's self-attention) takes the self range
                if ranges.get(kind) is not None:
                    self.add_hook(module, _AttentionHook(self, f"{index}.{role}", ranges[kind]))
                    hooked += 1
        if hooked == 0:
            raise UnsupportedModelError(f"PAB found no attention module to hook in {type(self.model).__name__} with "
                               f"self_range={self.config.self_range}, cross_range={self.config.cross_range}")
        self.clear()

    def clear(self) -> None:
        self.states: dict = {}
        super().clear()

    def nothing_skipped_hint(self) -> str:
        low, high = self.config.window
        return (f"Its timestep window is ({low:g}, {high:g}) and ranges self={self.config.self_range}, "
                f"cross={self.config.cross_range}: widen the window or raise a range")


register(
    "pab",
    "Pyramid Attention Broadcast: reuse attention outputs for a few calls inside a timestep window, per CFG branch",
    PABConfig,
    PABRuntime
)

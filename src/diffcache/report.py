"""What a method did: :class:`Report` (one per enabled method) → :class:`CallReport` (one per pipeline call) →
:class:`StepRecord` (one per denoising step, all its CFG branches together).

A report is plain data (``to_dict`` / ``to_json`` round-trip through JSON); ``summary()`` is the table people
read, and :func:`call_summary` the one line the ``diffcache`` logger writes after each pipeline call.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StepRecord:
    """What a method did at one step of one call (all branches of the step together)."""

    step: int  #: 0-based
    computed: bool  #: the step's blocks were computed (not reused)
    branches: list[str] = field(default_factory=list)
    blocks_computed: int = 0  #: block forwards actually run, summed over the step's branches
    blocks_reused: int = 0  #: block forwards answered from the cache
    active_fraction: float | None = None  #: share of the tokens computed (token-level methods such as HSA)
    values: dict[str, Any] = field(default_factory=dict)  #: the method's metric values and decisions
    #: the expert that ran the step in a multi-expert pipeline (Wan 2.2 A14B: ``"transformer"``/``"transformer_2"``)
    expert: str | None = None


@dataclass
class CallReport:
    """One pipeline call: its steps, in order."""

    call_index: int  #: pipeline calls since the method was enabled, from 0
    num_steps: int
    steps: list[StepRecord] = field(default_factory=list)
    #: token-level methods (HSA): steps each token was computed in, per sample, on the token grid
    #: ``[samples][frames][height][width]``; ``None`` for methods that treat every token alike
    token_steps: list | None = None
    #: the most bytes of tensors the method's runtime held after any forward of the call (its caches and kept
    #: signals, each storage once: :func:`diffcache.memory.measured_cache_bytes`)
    peak_cache_bytes: int = 0
    #: bytes the method copied to / fetched from its ``cache_device`` in this call (0 without one)
    bytes_to_cache_device: int = 0
    bytes_from_cache_device: int = 0

    @property
    def computed_steps(self) -> int:
        return sum(record.computed for record in self.steps)

    @property
    def block_forwards(self) -> int:
        return sum(record.blocks_computed for record in self.steps)

    @property
    def token_fraction(self) -> float:
        """Share of the token-steps computed (1.0 unless a token-level method such as HSA skipped tokens)."""
        if not self.steps:
            return 1.0
        return sum(1.0 if r.active_fraction is None else r.active_fraction for r in self.steps) / len(self.steps)


@dataclass
class Report:
    """Per pipeline call and step: computed or reused, block counts, and the values that decided it."""

    method: str
    config: dict
    calls: list[CallReport] = field(default_factory=list)

    def computed_steps(self, call: int = -1) -> int:
        return self.calls[call].computed_steps if self.calls else 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=float)

    def summary(self) -> str:
        lines = [f"{self.method} ({self.config.get('preset', '')}): {len(self.calls)} call(s)"]
        for call in self.calls:
            lines.append(f"call {call.call_index}: {call.computed_steps}/{call.num_steps} steps computed, "
                         f"{call.block_forwards} block forwards"
                         + (f", cache device: {_megabytes(call.bytes_to_cache_device)} to, "
                            f"{_megabytes(call.bytes_from_cache_device)} from"
                            if call.bytes_to_cache_device or call.bytes_from_cache_device else ""))
            for record in call.steps:
                values = " ".join(f"{k}={_fmt(v)}" for k, v in record.values.items())
                mark = "compute" if record.computed else "reuse  "
                expert = f" {record.expert}" if record.expert else ""
                lines.append(f"  step {record.step + 1:>3}{expert} {mark} [{','.join(record.branches)}] "
                             f"blocks {record.blocks_computed}/{record.blocks_computed + record.blocks_reused} {values}")
        return "\n".join(lines)

    __str__ = summary


def call_summary(method: str, preset: str, call: CallReport, flop_fraction: float | None = None) -> str:
    """One line for the log after a pipeline call: ``adacache:fast call 0: 12/30 steps computed, 18 reused, …``."""
    reused = sum(1 for record in call.steps if not record.computed)
    line = (f"{method}:{preset} call {call.call_index}: {call.computed_steps}/{call.num_steps} steps computed, "
            f"{reused} reused, {call.block_forwards} block forwards")
    if any(record.active_fraction is not None for record in call.steps):
        line += f", {call.token_fraction:.0%} of the token-steps"
    if flop_fraction is not None:
        line += f", {flop_fraction:.0%} of the FLOPs"
    return line


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.3g} MB"


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)

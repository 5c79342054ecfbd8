"""HSA — Heterogeneous Step Allocation (Chu & Patel 2026, "Not All Tokens Need 40 Steps", arXiv:2605.06892):
each spatio-temporal token gets its own number of denoising steps. No code of the paper is public; this follows its
description.

**Groups and the active set.** Tokens (latent patches) fall into K disjoint groups ``G1 … GK`` with step budgets
``s_k`` that divide ``T``; ``G1`` keeps ``s_1 = T``. Group ``k`` is computed at step ``i`` (0-based) when
``i mod (T / s_k) == 0``, so the active set is ``A_i = ∪{G_k : i mod (T/s_k) == 0}``. The first ``warmup`` steps
and the last ``dense_tail`` steps run every token (the paper: early and late steps are the most sensitive to
stale K/V).

**Allocation, online.** During the warm-up every token's velocity is predicted at every step; a token's score is
its relative L1 change ``|v_t − v_{t−1}|₁ / |v_{t−1}|₁`` averaged over the warm-up transitions (and over the CFG
branches). The most-changing tokens get the largest budgets. The paper does not give its rule for the group
sizes and budgets; ours (documented, deterministic): among all budget tuples ``T = s_1 > s_2 > … > s_K`` of
divisors of ``T`` and all group sizes (``G1`` non-empty, groups contiguous in score rank), pick the one that
minimises ``Σ_tokens score · T / budget`` (a token's mean interval between updates, weighted by how fast its
velocity changes; on tiny-shapes-t2v this beat ``Σ score·log(budget)`` by 1.5 dB at hsa-50) subject to the
predicted cost ``≤ runtime``. The cost model: a dense
step costs 1, a sparse step costs ``overhead + (1 − overhead)·|A_i| / N`` (``overhead`` = the part of a forward
that does not shrink with fewer tokens: embeddings, per-layer launch cost). The default 0.05 is measured: on the
embedded model at 64 × 64 (1,024 tokens, one CPU thread) a sparse forward of 1 token costs 0.051 of a full one,
of 102 tokens 0.135, of 512 tokens 0.524. At its default 32 × 32 (256 tokens) the fixed part is about 0.2 (a
model that small is all launch overhead on a CPU), so there the achieved runtime lands above the target.
Sizes are chosen from the batch-mean score profile and shared by every sample; *which* tokens fall in each group is
decided **per sample** (so every sample has the same number of active tokens at every step and the batch stays
rectangular). Both CFG branches of a sample share its groups (a batched-CFG forward is recognised by the
``cond_uncond`` cache-context name and the pipeline's guidance flag; without them each row of a batch counts as its
own sample). Often ``G1`` is only a few tokens: the budget goes further on the many tokens that change a little than
on the few that change most.

**Memory.** The K/V cache holds the keys and values of every token in every layer, per CFG branch: ``2·L·N·D``
numbers per sample and branch (Wan 2.1 1.3B at 480p, 81 frames: about 6 GB per branch in bf16), kept from the
last warm-up step to the first dense final step, where it is freed.

**K/V-cache synchronisation** (in the adapter: ``WanAdapter.synced_self_attention`` / ``sparse_forward``; LTX-2's
in ``LTX2Adapter``, where the audio tokens are always computed and the video→audio attention keeps a K/V cache of
the video tokens too). On a
sparse step only active tokens go through the transformer: the patch embedding (one cheap convolution) runs on
the whole latent and the ``n`` active tokens are gathered from it; the timestep modulation, every block and the
output projection then run on those ``n`` tokens. In each self-attention layer they compute Q, K, V (with their
own rotary positions), their K/V overwrite their slots in the layer's cache of the full sequence (per CFG branch),
and their queries attend to all ``N`` cached keys/values. Cross-attention and the MLP run on the active tokens.

**Cached Euler update.** An inactive token's velocity is its last computed one, so the Euler flow-matching step of
the pipeline's scheduler advances it as ``x ← x + (σ_next − σ)·v_cached`` (over ``s`` skipped steps this is
``x_{i+s} = x_i + (σ_{i+s} − σ_i)·v_last``); every token reaches ``σ = 0`` with the scheduler's last step. This is
exact for ``FlowMatchEulerDiscreteScheduler``, which HSA therefore requires of a pipeline (enabled on a bare
denoiser, it warns that the sampling loop must be an Euler flow-matching one).

The presets need enough steps for their dense steps to leave room: ``hsa-25`` works from T = 10, ``hsa-50`` from
T = 7 (the error says so before any work when a call cannot meet its runtime).
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from diffusers.hooks.hooks import ModelHook

from ..adapters.base import argument
from ..adapters.capabilities import TokenSparseForward
from ..distributed import context_parallel_config
from ..errors import ConfigError, HSABudgetError, UnsupportedModelError
from .framework import MethodConfig, Runtime, register



# -- the schedule (pure functions) ------------------------------------------------------------------------------
def divisors(num_steps: int) -> list[int]:
    return [d for d in range(1, num_steps + 1) if num_steps % d == 0]


def warmup_steps(num_steps: int, warmup: int | float | None = None) -> int:
    """Dense warm-up steps: ``warmup`` steps (an int), or that fraction of T (a float < 1), or by default 5 of 40 as
    in the paper (``T/8``); at least 2 (a change needs two velocities)."""
    if warmup is None:
        warmup = 1 / 8
    return max(2, round(warmup * num_steps) if isinstance(warmup, float) else warmup)


def dense_tail_steps(num_steps: int, dense_tail: int | float | None = None) -> int:
    """Dense final steps: ``dense_tail`` steps (an int), or that fraction of T (a float < 1, at least 1 step), by
    default the last step."""
    if dense_tail is None:
        dense_tail = 1
    if isinstance(dense_tail, float):
        return max(1, round(dense_tail * num_steps)) if dense_tail > 0 else 0
    return dense_tail


def group_active(step: int, num_steps: int, budget: int) -> bool:
    """Whether a group with ``budget`` steps is computed at ``step`` (0-based): ``step mod (T / budget) == 0``."""
    return step % (num_steps // budget) == 0


@dataclass(frozen=True)
class Allocation:
    """Budgets and group sizes for one call. ``sizes[k]`` tokens (by score rank, highest first) have ``budgets[k]``."""

    num_steps: int
    num_tokens: int
    budgets: tuple[int, ...]
    sizes: tuple[int, ...]
    warmup: int
    dense_tail: int
    overhead: float

    def dense(self, step: int) -> bool:
        return step < self.warmup or step >= self.num_steps - self.dense_tail

    def active_groups(self, step: int) -> list[bool]:
        """Which groups are computed at ``step``: all of them on a dense step, else the ``i mod (T/s_k)`` rule."""
        if self.dense(step):
            return [True] * len(self.budgets)
        return [group_active(step, self.num_steps, s) for s in self.budgets]

    def active_fraction(self, step: int) -> float:
        return sum(n for n, on in zip(self.sizes, self.active_groups(step)) if on) / self.num_tokens

    def step_cost(self, step: int) -> float:
        fraction = self.active_fraction(step)
        if self.dense(step) or fraction == 1.0:
            return 1.0
        return self.overhead + (1 - self.overhead) * fraction

    def cost(self) -> float:
        """Predicted time of the call as a fraction of the uncached one (the cost model in the module doc)."""
        return sum(self.step_cost(i) for i in range(self.num_steps)) / self.num_steps

    def steps_computed(self) -> list[int]:
        """How many steps each group is actually computed (dense steps included)."""
        return [sum(self.dense(i) or group_active(i, self.num_steps, s) for i in range(self.num_steps))
                for s in self.budgets]


def check_budgets(budgets, num_steps: int) -> tuple[int, ...]:
    """Validate explicit budgets for ``num_steps``: positive divisors of T, the first = T, non-increasing."""
    budgets = tuple(budgets)
    valid = divisors(num_steps)
    bad = [b for b in budgets if not isinstance(b, int) or isinstance(b, bool) or b not in valid]
    if not budgets or bad:
        raise HSABudgetError(
            f"HSA budgets must divide the number of steps T={num_steps}; got {list(budgets)} "
            f"({', '.join(map(str, bad)) or 'empty'} not allowed). Divisors of {num_steps}: {valid}."
        )
    if budgets[0] != num_steps or list(budgets) != sorted(budgets, reverse=True):
        raise HSABudgetError(
            f"HSA budgets must start with the full budget T={num_steps} (group G1) and not increase; got "
            f"{list(budgets)}."
        )
    return budgets


def _boundary_grid(num_tokens: int, boundaries: int) -> np.ndarray:
    """Candidate group boundaries (token counts): even steps plus a geometric run so that small groups (a few
    tokens at the full budget) are always candidates."""
    points = max(2, min(num_tokens + 1, int(5000 ** (1 / max(boundaries, 1)))))
    grid = np.r_[np.linspace(0, num_tokens, points), np.geomspace(1, num_tokens, points)]
    return np.unique(np.round(grid).astype(int))


def plan_allocation(scores: np.ndarray, num_steps: int, runtime: float, *, groups: int = 3, budgets=None,
                    warmup=None, dense_tail=None, overhead: float = 0.05) -> Allocation:
    """Choose budgets and group sizes for tokens with ``scores`` (any order; higher = changes more).

    Minimises ``Σ score·(T / budget)`` — each token's mean interval between updates weighted by how fast its
    velocity changes — over budget tuples (``budgets`` fixes them) and group sizes (contiguous in
    rank, ``G1`` non-empty) subject to ``Allocation.cost() ≤ runtime``; ties go to the larger cost (use what the
    runtime allows). Raises :class:`HSABudgetError` when even the cheapest allocation costs more than ``runtime``.
    """
    T = num_steps
    warmup = warmup_steps(T, warmup)
    dense_tail = dense_tail_steps(T, dense_tail)
    ranked = np.sort(np.asarray(scores, dtype=np.float64).ravel())[::-1]
    N = len(ranked)
    cumulative = np.concatenate([[0.0], np.cumsum(np.clip(ranked, 0, None))])

    if budgets is not None:
        candidates = [check_budgets(budgets, T)]
    else:
        smaller = [d for d in divisors(T) if d < T][::-1]
        k = max(1, min(groups, len(smaller) + 1))
        candidates = [(T, *rest) for rest in itertools.combinations(smaller, k - 1)]

    sparse_steps = [i for i in range(T) if not (i < warmup or i >= T - dense_tail)]
    dense_steps = T - len(sparse_steps)
    best = None  # (objective, cost, budgets, sizes)
    for tuple_ in candidates:
        K = len(tuple_)
        active = np.array([[group_active(i, T, s) for s in tuple_] for i in sparse_steps], dtype=float)
        grid = _boundary_grid(N, K - 1)
        if K == 1:
            bounds = np.array([[N]])
        else:
            mesh = np.stack(np.meshgrid(*[grid] * (K - 1), indexing="ij"), -1).reshape(-1, K - 1)
            mesh = mesh[(np.diff(mesh, axis=1) >= 0).all(1) & (mesh[:, 0] >= 1)]
            bounds = np.concatenate([mesh, np.full((len(mesh), 1), N)], 1)
        starts = np.concatenate([np.zeros((len(bounds), 1), int), bounds[:, :-1]], 1)
        sizes = bounds - starts  # [candidates, K]
        fractions = sizes @ active.T / N  # [candidates, sparse steps]
        step_cost = np.where(fractions >= 1, 1.0, overhead + (1 - overhead) * fractions)  # G1 keeps every step busy
        cost = (dense_steps + step_cost.sum(1)) / T
        objective = -((cumulative[bounds] - cumulative[starts]) * (T / np.array(tuple_, float))).sum(1)
        feasible = cost <= runtime + 1e-9
        if not feasible.any():
            continue
        score = np.where(feasible, objective + 1e-9 * cost, -np.inf)
        j = int(np.argmax(score))
        if best is None or score[j] > best[0]:
            best = (score[j], cost[j], tuple_, tuple(int(s) for s in sizes[j]))
    if best is None:
        raise _unreachable(runtime, T, N, groups, budgets, warmup, dense_tail, overhead)
    _, _, tuple_, sizes = best
    return Allocation(T, N, tuple_, sizes, warmup, dense_tail, overhead)


def cheapest_allocation(num_steps: int, num_tokens: int, *, groups: int = 3, budgets=None, warmup=None,
                        dense_tail=None, overhead: float = 0.05) -> Allocation:
    """The least costly allocation the rules allow (one token in G1, the rest at the smallest budget): whether a
    runtime can be met depends only on this, not on the scores, so it is checked before any work."""
    T, N = num_steps, num_tokens
    least = check_budgets(budgets, T) if budgets is not None else ((T, 1) if groups > 1 and T > 1 else (T,))
    sizes = (N,) if len(least) == 1 or N == 1 else (1,) + (0,) * (len(least) - 2) + (N - 1,)
    return Allocation(T, N, least, sizes, warmup_steps(T, warmup), dense_tail_steps(T, dense_tail), overhead)


def _unreachable(runtime, T, N, groups, budgets, warmup, dense_tail, overhead) -> HSABudgetError:
    cheapest = cheapest_allocation(T, N, groups=groups, budgets=budgets, warmup=warmup, dense_tail=dense_tail,
                                   overhead=overhead)
    return HSABudgetError(
        f"HSA cannot reach runtime={runtime:g} at T={T}: with {cheapest.warmup} dense warm-up and "
        f"{cheapest.dense_tail} dense final steps and a per-forward overhead of {overhead:g}, the cheapest "
        f"allocation costs {cheapest.cost():.3f} of the full run. Use more steps or a larger runtime, or lower "
        f"warmup / dense_tail / overhead" + (", or give smaller budgets." if budgets is not None else ".")
    )


def token_groups(scores: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """Group id of every token, per sample: ``scores`` ``[B, N]`` → ``[B, N]`` in ``0..K-1``, the highest-scoring
    ``sizes[0]`` tokens of each sample in group 0, the next ``sizes[1]`` in group 1, …"""
    order = scores.argsort(dim=1, descending=True, stable=True)
    rank_group = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    groups = torch.empty_like(order)
    groups.scatter_(1, order, rank_group.expand_as(order).contiguous())
    return groups


@torch.no_grad()
def token_change(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """Each token's relative L1 velocity change ``|v_t − v_{t−1}|₁ / |v_{t−1}|₁`` over its channels: ``[B, N, C]``
    → ``[B, N]`` in float32, both velocities upcast before the difference (a bf16/fp16 difference or sum may round
    or overflow where the float32 one does not)."""
    previous, current = previous.float(), current.float()
    return (current - previous).abs().sum(-1) / previous.abs().sum(-1).clamp_min(1e-12)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- the config -------------------------------------------------------------------------------------------------
@dataclass
class HSAConfig(MethodConfig):
    """HSA, Heterogeneous Step Allocation (Chu & Patel, 2026, arXiv:2605.06892; no public code).

    Args:
        preset (str): the name of the preset the config was made from (``""`` for a hand-made config).
        runtime (float): the target time of a call as a fraction of the uncached one, in (0, 1]; budgets and group
            sizes are chosen so that the cost model predicts at most this (an error says so before any work when a
            call cannot meet it).
        groups (int): K, the number of token groups (integer from 1 to 5; fewer when T has fewer divisors, and
            not read when ``budgets`` is given: then K is its length).
        budgets (tuple[int, ...] | None): fixed step budgets ``(T, s_2, …)`` instead of choosing them: steps per
            group, positive divisors of T, the first = T, non-increasing (checked against T at each call); lists are
            accepted and stored as tuples. The group sizes are still chosen for ``runtime``. ``None``: chosen per
            call.
        warmup (int | float | None): dense steps at the start, where every token's velocity change is measured: a
            number of steps (integer >= 2: a change needs two velocities) or a fraction of T in (0, 1). ``None``:
            ``T/8`` (5 of 40, the paper's setting), at least 2 steps.
        dense_tail (int | float | None): dense steps at the end: a number of steps (integer >= 0) or a fraction of
            T in [0, 1) (at least one step when above 0). ``None``: the last step.
        overhead (float): the cost model's share of a forward that does not shrink with fewer tokens (embeddings,
            per-layer launch cost), a fraction of a full forward in [0, 1). The default is measured on the embedded
            model at 1,024 tokens; at its usual 256 tokens on a CPU the share is about 0.2, so there the achieved
            runtime lands above the target.

    Presets:
        - ``hsa-75``: ``runtime=0.75``.
        - ``hsa-50`` (the default preset): ``runtime=0.5``, ``warmup=0.2`` (``T/5``, 8 of 40 steps; the paper
          looks at 5–10 of 40).
        - ``hsa-25``: ``runtime=0.25``, ``warmup=0.1`` (4 of 40) and ``dense_tail=0`` (it ends sparse: at a
          quarter of the time every dense step is a step taken from the tokens, and on the embedded model ending
          sparse gave hsa-25 2–3 dB).

        Every field a preset does not name keeps its default. ``hsa-25`` needs T >= 10 and ``hsa-50`` T >= 7.
    """

    PRESETS: ClassVar = {"hsa-75": {"runtime": 0.75}, "hsa-50": {"runtime": 0.5, "warmup": 0.2},
                         "hsa-25": {"runtime": 0.25, "warmup": 0.1, "dense_tail": 0}}
    DEFAULT_PRESET: ClassVar = "hsa-50"
    REQUIRES: ClassVar = (TokenSparseForward,)
    LEVELS: ClassVar = frozenset({"token"})

    runtime: float = 0.5
    groups: int = 3
    budgets: tuple | None = None
    warmup: int | float | None = None
    dense_tail: int | float | None = None
    overhead: float = 0.05

    def __post_init__(self) -> None:
        if isinstance(self.budgets, list):  # canonical form, before validation: a tuple (values as given)
            self.budgets = tuple(self.budgets)
        super().__post_init__()

    def validate(self) -> None:
        if isinstance(self.runtime, bool) or not isinstance(self.runtime, (int, float)) or not 0 < self.runtime <= 1:
            raise ConfigError(f"runtime must be a fraction of the uncached run in (0, 1], got {self.runtime!r}")
        if isinstance(self.groups, bool) or not isinstance(self.groups, int) or not 1 <= self.groups <= 5:
            raise ConfigError(f"groups must be an integer from 1 to 5, got {self.groups!r}")
        if self.budgets is not None:
            if not isinstance(self.budgets, tuple) or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1
                                                        for b in self.budgets):
                raise ConfigError(f"budgets must be a list of positive step counts dividing T (the first = T), "
                                 f"got {self.budgets!r}")
        if self.warmup is not None and not (_is_int(self.warmup) and self.warmup >= 2
                                            or isinstance(self.warmup, float) and 0 < self.warmup < 1):
            raise ConfigError(f"warmup must be a number of steps >= 2 (a velocity change needs two), a fraction of "
                             f"the steps in (0, 1), or None; got {self.warmup!r}")
        if self.dense_tail is not None and not (_is_int(self.dense_tail) and self.dense_tail >= 0
                                                or isinstance(self.dense_tail, float) and 0 <= self.dense_tail < 1):
            raise ConfigError(f"dense_tail must be a number of steps >= 0, a fraction of the steps in [0, 1), or None; "
                             f"got {self.dense_tail!r}")
        if isinstance(self.overhead, bool) or not isinstance(self.overhead, (int, float)) or not 0 <= self.overhead < 1:
            raise ConfigError(f"overhead must be a fraction in [0, 1), got {self.overhead!r}")

    def check_model(self, family: str, pipeline) -> None:
        scheduler = getattr(pipeline, "scheduler", None)
        if scheduler is None:
            warnings.warn("HSA enabled on a bare denoiser: it cannot see the sampler. Its cached Euler update is right "
                          "only if the loop takes deterministic Euler flow-matching steps "
                          "(x += (sigma_next - sigma) * v, as FlowMatchEulerDiscreteScheduler).", UserWarning,
                          stacklevel=3)
            return
        check_scheduler(scheduler)

    def allocation(self, scores: np.ndarray, num_steps: int) -> Allocation:
        return plan_allocation(scores, num_steps, self.runtime, groups=self.groups, budgets=self.budgets,
                               warmup=self.warmup, dense_tail=self.dense_tail, overhead=self.overhead)


def check_scheduler(scheduler) -> None:
    """Refuse a sampler the cached Euler update is not exact for."""
    name = type(scheduler).__name__
    stochastic = getattr(scheduler.config, "stochastic_sampling", False)
    if name != "FlowMatchEulerDiscreteScheduler" or stochastic:
        raise UnsupportedModelError(
            f"HSA advances skipped tokens with a cached Euler update, which is exact only for deterministic Euler "
            f"flow-matching sampling; this pipeline uses {name}{' with stochastic sampling' if stochastic else ''}. "
            f"Switch it first: pipe.scheduler = {euler_advice(scheduler)}."
        )


def euler_advice(scheduler) -> str:
    """The line that switches ``scheduler`` to deterministic flow-matching Euler with the same shift: UniPC and
    DPM++ name it ``flow_shift``, the Euler scheduler ``shift``, and ``from_config`` alone would drop the former
    (sampling would then run at shift 1)."""
    config = scheduler.config
    shift = config.get("flow_shift") if config.get("flow_shift") is not None else config.get("shift")
    extra = f", shift={float(shift):g}" if shift is not None else ""
    if config.get("stochastic_sampling"):
        extra += ", stochastic_sampling=False"
    return f"FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config{extra})"


# -- hooks and state (in this file ``runtime`` is always the config's time fraction) --------------------------
class _BranchState:
    """One CFG branch: its K/V cache per layer and its last velocity (as tokens)."""

    def __init__(self, layers: int):
        self.kv: list[dict] = [{} for _ in range(layers)]
        self.velocity: torch.Tensor | None = None


class _ForwardHook(ModelHook):
    def __init__(self, method: "HSARuntime"):
        super().__init__()
        self.method = method

    def new_forward(self, module, *args, **kwargs):
        return self.method.model_forward(module, self.fn_ref.original_forward, args, kwargs)


class _SelfAttentionHook(ModelHook):
    def __init__(self, method: "HSARuntime", layer: int):
        super().__init__()
        self.method = method
        self.layer = layer

    def new_forward(self, module, *args, **kwargs):
        method = self.method
        output = None
        if method.branch is not None:
            kv = method.branch.kv[self.layer]
            live = kv
            if method.cache_device is not None and kv is not None:  # the K/V cache lives on the cache_device
                live = {name: method.unstash(t) for name, t in kv.items()} if method.active is not None else {}
            output = method.adapter.synced_attention_call(module, args, kwargs, live, method.active)
            if live is not kv:  # (fresh K/V of a full step, or the cache updated in place on a sparse one)
                kv.update({name: method.stash(t) for name, t in live.items()})
        if output is None:  # outside HSA's forward, or a call the K/V cache does not serve
            return self.fn_ref.original_forward(*args, **kwargs)
        # inside a tracked forward: this layer's block runs (for the active tokens); one count per block
        if method.ctx is not None and self.layer % getattr(method.adapter, "kv_layers_per_block", 1) == 0:
            method.count_block(computed=True)
        return output


class HSARuntime(Runtime):
    HOOK = "diffcache_hsa"

    def install(self) -> None:
        self.layers = self.adapter.self_attention_modules(self.model)
        self.check_not_context_parallel()
        self.adapter.check_sparse_attention(self.layers)
        self.add_hook(self.model, _ForwardHook(self), self.HOOK)
        for layer, module in enumerate(self.layers):
            self.add_hook(module, _SelfAttentionHook(self, layer), self.HOOK + "_kv")
        self.clear()

    def check_not_context_parallel(self) -> None:
        """Refuse a context-parallel model: HSA's sparse forward gathers the active tokens of the whole sequence and
        attends to a K/V cache of all of them, while under context parallelism each rank holds a shard of the tokens
        and its attention exchanges them with the other ranks (docs/context-parallel.md)."""
        if context_parallel_config(self.model) is not None:
            raise UnsupportedModelError(
                f"HSA cannot run on a context-parallel {type(self.model).__name__}: its token-sparse forward needs "
                "every token on one rank, and context parallelism splits the tokens across ranks. Use adacache, "
                "teacache, fbcache, fastercache or pab with context parallelism, or HSA without it.")

    def clear(self) -> None:
        super().clear()
        self.branches: dict[str, _BranchState] = {}
        self.branch: _BranchState | None = None  #: the branch of the forward in progress
        self.active: torch.Tensor | None = None  #: token indices ``[B, n]`` of a sparse forward, None = all
        self.scores: torch.Tensor | None = None  #: per sample ``[B, N]``: summed relative velocity change
        self.score_counts = 0
        self.plan: Allocation | None = None
        self.groups: torch.Tensor | None = None  #: group id per sample and token ``[B, N]``
        self.grid: tuple[int, int, int] | None = None

    def begin_call(self, call_index: int, num_steps: int) -> None:
        super().begin_call(call_index, num_steps)
        self.check_not_context_parallel()  # parallelism may have been enabled after diffcache
        config = self.config
        if config.budgets is not None:
            check_budgets(config.budgets, num_steps)
        warmup = warmup_steps(num_steps, config.warmup)
        if warmup >= num_steps:
            raise HSABudgetError(f"HSA's warm-up of {warmup} steps leaves nothing to allocate in a {num_steps}-step "
                                 "call; lower warmup or use more steps.")
        if self.pipeline is not None:
            check_scheduler(self.pipeline.scheduler)  # it may have been swapped since enable()

    def _check_reachable(self, num_steps: int, num_tokens: int) -> None:
        """Before any work: can this call meet the runtime at all? (That depends on T and N, not on the scores.)"""
        c = self.config
        cheapest = cheapest_allocation(num_steps, num_tokens, groups=c.groups, budgets=c.budgets, warmup=c.warmup,
                                       dense_tail=c.dense_tail, overhead=c.overhead)
        if cheapest.cost() > c.runtime + 1e-9:
            error = _unreachable(c.runtime, num_steps, num_tokens, c.groups, c.budgets, c.warmup, c.dense_tail,
                                 c.overhead)
            ctx = self.ctx
            if ctx is not None and ctx.expert is not None:  # a multi-expert pipeline: each expert's phase is planned
                error.args = (f"{error.args[0]} (HSA plans each expert's steps on their own, and {ctx.expert} runs "
                              f"{num_steps} steps of this call, from step {ctx.step_offset + 1}; give the call more "
                              "steps, or pass this expert a larger runtime with experts=)",)
            raise error

    def could_skip(self, num_steps: int) -> bool:
        plan = self.plan
        return plan is None or any(plan.active_fraction(i) < 1 for i in range(num_steps))

    def nothing_skipped_hint(self) -> str:
        return "Lower runtime, or give budgets smaller than T"

    # -- one forward --------------------------------------------------------------------------------------------
    def _samples(self, rows: int) -> int:
        """Samples in a forward of ``rows`` rows: half of them in a batched-CFG forward (``[uncond, cond]``)."""
        guided = self.guided  # read at the call's first forward (framework.classifier_free_guidance)
        return rows // 2 if self.ctx.branch == "cond_uncond" and guided and rows % 2 == 0 else rows

    def model_forward(self, model, forward, args, kwargs):
        ctx = self.ctx
        hidden = argument(type(model).forward, args, kwargs, "hidden_states")
        rows = hidden.shape[0]
        samples = self._samples(rows)
        self.grid = self.adapter.token_layout(model, args, kwargs)
        if ctx.step == 0 and not self.branches:
            self.adapter.check_sparse_call(model, args, kwargs)
            self._check_reachable(ctx.num_steps, self.grid[0] * self.grid[1] * self.grid[2])
        branch = self.branches.setdefault(ctx.branch, _BranchState(len(self.layers)))
        if (branch.velocity is not None and branch.velocity.shape[0] != rows):
            raise RuntimeError(f"HSA: the batch of branch {ctx.branch!r} changed within a call "
                               f"({branch.velocity.shape[0]} → {rows} rows)")
        if self.plan is None and ctx.step >= self._warmup(ctx.num_steps):
            self._make_plan(ctx.num_steps)
        active_rows = None
        if self.plan is not None and not self.plan.dense(ctx.step):
            on = torch.tensor(self.plan.active_groups(ctx.step))
            mask = on[self.groups].repeat(rows // samples, 1)  # [rows, N]
            if not mask.all():
                count = int(mask[0].sum())
                active_rows = mask.nonzero()[:, 1].view(rows, count).to(hidden.device)
        tail = self.plan is not None and self.plan.dense(ctx.step) and ctx.step >= self.plan.warmup
        if tail:  # no sparse step follows: free the K/V cache
            branch.kv = [None] * len(self.layers)
        self.branch = branch
        self.active = active_rows
        try:
            if active_rows is None:
                output = forward(*args, **kwargs)
                velocity = _output_tensor(output)
                tokens = self.adapter.output_tokens(model, velocity.detach()).clone()  # updated in place later
                if self.plan is None:
                    self._score(branch, tokens, samples)
                branch.velocity = self.stash(tokens)
                self.step_record.active_fraction = 1.0
            else:
                fresh = self.adapter.sparse_forward(model, args, kwargs, active_rows)
                extra = ()
                if isinstance(fresh, tuple):  # further outputs computed in full (LTX-2's audio)
                    fresh, extra = fresh[0], tuple(fresh[1:])
                index = active_rows[:, :, None].expand(-1, -1, fresh.shape[-1])
                tokens = self.unstash(branch.velocity, fresh)
                tokens.scatter_(1, index, fresh.to(tokens.dtype))  # ours: not handed out
                branch.velocity = tokens if self.cache_device is None else self.stash(tokens)
                velocity = self.adapter.tokens_to_output(model, tokens, self.grid).clone()
                return_dict = argument(type(model).forward, args, kwargs, "return_dict", True)
                output = self.adapter.sparse_output(model, velocity, extra, return_dict)
                self.step_record.active_fraction = active_rows.shape[1] / branch.velocity.shape[1]
        finally:
            self.branch = None
            self.active = None
        record = self.step_record
        record.computed = True
        record.values["active"] = record.active_fraction
        return output

    def _warmup(self, num_steps: int) -> int:
        return warmup_steps(num_steps, self.config.warmup)

    def _score(self, branch: _BranchState, tokens: torch.Tensor, samples: int) -> None:
        previous = self.unstash(branch.velocity, tokens)
        if previous is None or previous.shape != tokens.shape:
            return
        change = token_change(previous, tokens)
        change = change.view(-1, samples, change.shape[-1]).mean(0)  # [samples, N]
        self.scores = change if self.scores is None else self.scores + change
        self.score_counts += 1

    def _make_plan(self, num_steps: int) -> None:
        if self.scores is None:
            raise RuntimeError("HSA: no velocity change was measured during the warm-up")
        scores = self.scores / self.score_counts
        profile = scores.sort(dim=1, descending=True).values.mean(0).cpu().numpy()
        self.plan = self.config.allocation(profile, num_steps)
        self.groups = token_groups(scores.cpu(), self.plan.sizes)
        self.step_record.values.update(budgets=list(self.plan.budgets), sizes=list(self.plan.sizes),
                                       predicted_runtime=round(self.plan.cost(), 4))
        computed = torch.tensor(self.plan.steps_computed())
        self.report.calls[-1].token_steps = computed[self.groups].view(self.groups.shape[0], *self.grid).tolist()


def _output_tensor(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output.sample


register(
    "hsa",
    "HSA: each token gets its own number of steps (by its velocity change in a warm-up); skipped tokens take a "
    "cached Euler step and active ones attend to a synchronised K/V cache",
    HSAConfig,
    HSARuntime
)

"""One rank of the context-parallel check (tests/test_context_parallel.py; docs/context-parallel.md).

Every rank builds the same tiny random-weight Wan pipeline (tests/tiny_diffusers.py), runs each method once in this
process alone (the reference: no parallelism yet) and once after
``transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))``, and saves its frames and
reports to ``<out>/rank<r>.pt``. Run it either way:

    torchrun --nproc-per-node 2 tests/cp_worker.py OUT_DIR        # rank and world size from torchrun
    (tests/test_context_parallel.py spawns it with torch.multiprocessing)
"""

from __future__ import annotations

import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))

STEPS = 8
SIZE = dict(height=32, width=32, num_frames=9)  # 3 latent frames of 2 × 2 tokens: 12 tokens, 6 per rank
#: method -> options: thresholds low enough that the tiny model reuses steps in an 8-step call
METHODS = {
    "teacache": dict(coefficients=[1.0, 0.0], threshold=0.4),
    "fbcache": dict(threshold=0.1),
    "adacache": dict(preset="fast-moreg-paper", codebook=((0.5, 3), (1.0, 2), (2.0, 1))),
    "fastercache": dict(),
    "pab": dict(),
    "easycache": dict(warmup_steps=2, threshold=1.0),
}


def ulysses_config():
    from diffusers import ContextParallelConfig

    return ContextParallelConfig(ulysses_degree=2)


@contextmanager
def _cpu_device_count():
    """diffusers' ``_resolve_parallel_config`` places rank ``r`` on device ``r % torch.accelerator.device_count()``,
    which divides by zero on a machine without an accelerator; there the ranks run on the CPU, device 0."""
    if torch.accelerator.device_count() == 0:
        with mock.patch("torch.accelerator.device_count", return_value=1):
            yield
    else:
        yield


def enable_context_parallel(transformer, config=None) -> None:
    with _cpu_device_count():
        transformer.enable_parallelism(config=config or ulysses_config())


def _summary(handle) -> list:
    """Per call, per step: (step, computed, blocks computed, blocks reused, values) — what must agree across ranks."""
    return [[(s.step, s.computed, s.blocks_computed, s.blocks_reused, dict(sorted(s.values.items())))
             for s in call.steps] for call in handle.report().calls]


def run_method(pipe, method: str):
    import diffcache
    from tiny_parts import video_call

    options = dict(METHODS[method])
    preset = options.pop("preset", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        handle = diffcache.enable(pipe, method, preset=preset, **options)
        try:
            frames = video_call(SIZE)(pipe, STEPS)
        finally:
            handle.disable()
    return torch.from_numpy(frames.copy()), _summary(handle)


class MotionProbe:
    """Records, for every MoReg motion score, the one of this rank's shard next to the one of the whole sequence
    (by wrapping the token gather AdaCache's motion score reads): what the ranks would see without the gather."""

    def __init__(self, tokens_per_frame: int):
        import diffcache.methods.adacache as adacache

        self.adacache = adacache
        self.original = adacache.gather_tokens
        self.tokens_per_frame = tokens_per_frame
        self.pairs: list[tuple[float | None, float | None]] = []  # (local, global)

    def __enter__(self):
        def probed(tensor, dim=1, group=None):
            whole = self.original(tensor, dim=dim, group=group)
            score = self.adacache.motion_score
            self.pairs.append((score(tensor, self.tokens_per_frame), score(whole, self.tokens_per_frame)))
            return whole
        self.adacache.gather_tokens = probed
        return self

    def __exit__(self, *exc):
        self.adacache.gather_tokens = self.original


class MetricProbe:
    """Records, for every relative change a decision reads, this rank's shard-local value next to the global one
    (by wrapping :func:`diffcache.distributed.global_sums`): what the ranks would decide on without the reduction."""

    def __init__(self):
        import diffcache.methods.framework as framework

        self.framework = framework
        self.original = framework.global_sums
        self.pairs: list[tuple[float, float]] = []  # (local, global)

    def __enter__(self):
        def probed(numerator, denominator, group=None):
            total = self.original(numerator, denominator, group=group)
            local = float(numerator / denominator.clamp_min(1e-12))
            self.pairs.append((local, float(total[0] / total[1].clamp_min(1e-12))))
            return total
        self.framework.global_sums = probed
        return self

    def __exit__(self, *exc):
        self.framework.global_sums = self.original


def main(rank: int, world: int, init_method: str, out: str) -> None:
    import diffcache
    from diffcache.errors import UnsupportedModelError
    from tiny_diffusers import tiny_wan_pipeline

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        results: dict = {"rank": rank, "reference": {}, "parallel": {}}
        pipe = tiny_wan_pipeline(num_layers=2)
        for method in METHODS:  # in this process alone
            results["reference"][method] = run_method(pipe, method)
        results["reference"]["none"] = (torch.from_numpy(video_call_plain(pipe)), None)

        enable_context_parallel(pipe.transformer)  # parallelism first, then diffcache
        results["parallel"]["none"] = (torch.from_numpy(video_call_plain(pipe)), None)
        for method in METHODS:
            if method == "fbcache":
                with MetricProbe() as probe:
                    results["parallel"][method] = run_method(pipe, method)
                results["fbcache_metrics"] = probe.pairs
            elif method == "adacache":
                with MotionProbe(tokens_per_frame=4) as probe:  # a 32 × 32 video: 2 × 2 tokens per latent frame
                    results["parallel"][method] = run_method(pipe, method)
                results["adacache_motion"] = probe.pairs
            else:
                results["parallel"][method] = run_method(pipe, method)
        try:
            diffcache.enable(pipe, "hsa")
            results["hsa"] = "enabled"
        except UnsupportedModelError as error:
            results["hsa"] = str(error)

        # the other order: diffcache first, then parallelism (a fresh model: parallelism cannot be enabled twice)
        other = tiny_wan_pipeline(num_layers=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            handle = diffcache.enable(other, "teacache", **METHODS["teacache"])
            enable_context_parallel(other.transformer)
            frames = video_call_plain(other)
            handle.disable()
        results["cache_first"] = (torch.from_numpy(frames), _summary(handle))
        # HSA enabled first, parallelism after: refused at the call's first forward, before any collective
        third = tiny_wan_pipeline(num_layers=2)
        handle = diffcache.enable(third, "hsa")
        enable_context_parallel(third.transformer)
        try:
            video_call_plain(third)
            results["hsa_first"] = "ran"
        except UnsupportedModelError as error:
            results["hsa_first"] = str(error)
        handle.disable()

        # the helpers on shards of different lengths (as ulysses_anything splits 5 tokens: 3 and 2)
        from diffcache.distributed import gather_tokens, global_sums

        group = dist.group.WORLD
        shard = torch.arange(5.0).reshape(1, 5, 1)[:, :3] if rank == 0 else torch.arange(5.0).reshape(1, 5, 1)[:, 3:]
        results["gathered"] = gather_tokens(shard, dim=1, group=group)
        results["sums"] = [float(v) for v in global_sums(torch.tensor(rank + 1.0), torch.tensor(0.5), group=group)]
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def video_call_plain(pipe):
    from tiny_parts import video_call

    return video_call(SIZE)(pipe, STEPS).copy()


if __name__ == "__main__":  # torchrun
    main(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), "env://", sys.argv[1])

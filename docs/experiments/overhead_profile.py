"""Where the time of a step-level method's call goes: the pipeline, the denoiser outside its blocks, the blocks,
and diffcache's own code, on the embedded model (issue 20, item 6).

Each method's 30-step call of tiny-shapes-t2v (split CFG, guidance 5) is timed with the uncached call interleaved
(``--rounds`` rounds, the order rotated each round) and split into four parts by timers around the code that
belongs to each:

* ``blocks``: the blocks' own forwards (the work the FLOP count counts; HSA's synchronised self-attention, its
  re-implementation of the attention processor, counts here too);
* ``denoiser``: the denoiser's forward outside its blocks (patch embedding, timestep and text embedding, the output
  head; HSA's token-sparse forward outside the blocks: its gathers of the active tokens);
* ``ours``: diffcache's hooks (the step tracker, the method's hooks and runtime: decisions, metrics, cache copies,
  report records) and whatever they run that is not a model forward;
* ``pipeline``: the rest of the call (text encoder, scheduler, VAE decode, latents, the pipeline's loop).

A region's time is its own (exclusive of the regions it calls), in CPU seconds of this process
(``time.process_time``, which other processes on a shared machine do not inflate) and in wall-clock seconds. The
FLOP speedup comes from one counted run per method (:func:`diffcache.bench.measure.measure_cost`, the benchmark's
count). ``--profile`` adds, per method, the functions of diffcache with the most own time under ``cProfile``.

    PYTHONPATH=src .venv/bin/python docs/experiments/overhead_profile.py --rounds 3
    PYTHONPATH=src .venv/bin/python docs/experiments/overhead_profile.py --rounds 1 --profile --methods hsa
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import gc
import pstats
import statistics
import time
import warnings

import torch

import diffcache
from diffcache.bench.measure import measure_cost

PARTS = ("blocks", "denoiser", "ours", "pipeline")
DEFAULT_METHODS = "adacache,teacache,hsa,fbcache,fastercache,pab"


class Regions:
    """Exclusive time per part: a stack of the parts entered; each interval is charged to the innermost one."""

    def __init__(self):
        self.stack = ["pipeline"]
        self.cpu = dict.fromkeys(PARTS, 0.0)
        self.wall = dict.fromkeys(PARTS, 0.0)
        self.mark = (time.process_time(), time.perf_counter())

    def _charge(self) -> None:
        now = (time.process_time(), time.perf_counter())
        part = self.stack[-1]
        self.cpu[part] += now[0] - self.mark[0]
        self.wall[part] += now[1] - self.mark[1]
        self.mark = now

    def wrap(self, part: str, function):
        """``function`` with its time (less what it calls in other regions) charged to ``part``."""

        @functools.wraps(function)
        def timed(*args, **kwargs):
            self._charge()
            self.stack.append(part)
            try:
                return function(*args, **kwargs)
            finally:
                self._charge()
                self.stack.pop()

        timed.__wrapped_region__ = function
        return timed

    def reset(self) -> None:
        self.stack = ["pipeline"]
        self.cpu = dict.fromkeys(PARTS, 0.0)
        self.wall = dict.fromkeys(PARTS, 0.0)
        self.mark = (time.process_time(), time.perf_counter())

    def close(self) -> tuple[dict, dict]:
        self._charge()
        return dict(self.cpu), dict(self.wall)


def forward_fractions(report) -> list[float]:
    """Per denoiser forward of the last call, in order: the step's share of block work (blocks run ÷ blocks, times
    the active token share of a token-level method)."""
    fractions = []
    for record in report.calls[-1].steps:
        blocks = record.blocks_computed + record.blocks_reused
        share = record.blocks_computed / blocks if blocks else float(record.computed)
        share *= 1.0 if record.active_fraction is None else record.active_fraction
        fractions.extend([round(share, 4)] * len(record.branches))
    return fractions


class Instrumented:
    """The denoiser's and its blocks' forwards wrapped (before a method is enabled, so its hooks wrap them in turn)
    and, while a method is enabled, its hooks (:meth:`hook_method`)."""

    def __init__(self, pipe, regions: Regions):
        self.pipe, self.regions = pipe, regions
        self.model = pipe.transformer
        self.blocks = list(self.model.blocks)
        for module, part in [(self.model, "denoiser")] + [(b, "blocks") for b in self.blocks]:
            module.forward = regions.wrap(part, module.forward)
        self.restore: list = []
        self.forwards: list[dict] = []  #: per denoiser forward, the CPU seconds of each part inside it
        self._start: dict | None = None
        self.model.register_forward_pre_hook(self._before, prepend=True)
        self.model.register_forward_hook(self._after, prepend=True)

    def _before(self, module, args):
        self.regions._charge()
        self._start = dict(self.regions.cpu)

    def _after(self, module, args, output):
        self.regions._charge()
        self.forwards.append({p: self.regions.cpu[p] - self._start[p] for p in PARTS})

    def hook_method(self, handle) -> None:
        """Charge diffcache's hooks to ``ours`` and the forwards they call to the module's part."""
        wrap = self.regions.wrap
        blocks = {id(m) for b in self.blocks for m in b.modules()}
        for module in self.model.modules():
            registry = getattr(module, "_diffusers_hook", None)
            if registry is None:
                continue
            part = "blocks" if id(module) in blocks else "denoiser"
            for name, fn_ref in zip(registry._hook_order, registry._fn_refs):
                if not name.startswith("diffcache"):
                    continue
                names = ["pre_forward", "post_forward"]
                inner = "original_forward" if fn_ref.original_forward is not None else "forward"
                if inner == "original_forward":
                    names.append("forward")  # the hook's new_forward
                for attribute in names:
                    self._replace(fn_ref, attribute, wrap("ours", getattr(fn_ref, attribute)))
                self._replace(fn_ref, inner, wrap(part, getattr(fn_ref, inner)))
        adapter = handle.runtime.adapter
        for attribute, part in (("sparse_forward", "denoiser"), ("synced_self_attention", "blocks")):
            if hasattr(adapter, attribute):  # HSA's re-implementations of the model's forward and attention
                self._replace(adapter, attribute, wrap(part, getattr(adapter, attribute)), instance=True)

    def _replace(self, owner, attribute, value, instance=False) -> None:
        self.restore.append((owner, attribute, owner.__dict__.get(attribute) if instance else getattr(owner, attribute),
                             instance))
        setattr(owner, attribute, value)

    def unhook(self) -> None:
        for owner, attribute, value, instance in reversed(self.restore):
            if instance and value is None:
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, value)
        self.restore.clear()


def flops_in_blocks(pipe, call) -> int:
    """FLOPs of ``call()`` counted inside the denoiser's blocks only (the benchmark's formulas, :mod:`.measure`)."""
    from diffcache.bench.measure import _CostMode

    mode = _CostMode(track_memory=False)
    depth = [0]

    def enter(module, args):
        depth[0] += 1
        mode.counting = True

    def leave(module, args, output):
        depth[0] -= 1
        mode.counting = depth[0] > 0

    handles = [h for b in pipe.transformer.blocks
               for h in (b.register_forward_pre_hook(enter), b.register_forward_hook(leave))]
    try:
        with mode:
            call()
    finally:
        for h in handles:
            h.remove()
    return mode.flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds (default: 3)")
    parser.add_argument("--steps", type=int, default=30, help="denoising steps (default: 30)")
    parser.add_argument("--methods", default=DEFAULT_METHODS,
                        help=f"comma-separated method[:preset] (default: {DEFAULT_METHODS})")
    parser.add_argument("--profile", action="store_true", help="also list diffcache's functions by own time")
    parser.add_argument("--top", type=int, default=12, help="functions listed per method with --profile")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's; 1 keeps CPU time honest on a busy machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    pipe = diffcache.load_pipeline("tiny-shapes-t2v")
    pipe.set_progress_bar_config(disable=True)
    methods = ["none"] + [m.strip() for m in args.methods.split(",") if m.strip()]

    def call():
        return pipe("a red circle moving left", num_inference_steps=args.steps, guidance_scale=5.0, cfg_mode="split",
                    generator=torch.Generator().manual_seed(0), output_type="np")

    def enable(method):
        if method == "none":
            return None
        name, _, preset = method.partition(":")
        return diffcache.enable(pipe, name, preset=preset or None)

    flops, block_flops = {}, {}
    for method in methods:  # counted runs (untimed): the FLOP speedup, and the FLOPs inside the blocks
        handle = enable(method)
        try:
            _, cost = measure_cost(pipe.transformer, call)
            block_flops[method] = flops_in_blocks(pipe, call)
        finally:
            if handle is not None:
                handle.disable()
        flops[method] = cost.flops

    regions = Regions()
    probe = Instrumented(pipe, regions)
    call()  # warm-up
    cpu: dict[str, list[dict]] = {m: [] for m in methods}
    wall: dict[str, list[dict]] = {m: [] for m in methods}
    totals: dict[str, list[tuple[float, float]]] = {m: [] for m in methods}
    per_forward: dict[str, list] = {m: [] for m in methods}
    for round_ in range(args.rounds):
        shift = round_ % len(methods)
        for method in methods[shift:] + methods[:shift]:
            handle = enable(method)
            try:
                if handle is not None:
                    probe.hook_method(handle)
                gc.collect()
                probe.forwards = []
                regions.reset()
                start = (time.process_time(), time.perf_counter())
                call()
                end = (time.process_time(), time.perf_counter())
                split_cpu, split_wall = regions.close()
                shares = forward_fractions(handle.report()) if handle is not None else [1.0] * len(probe.forwards)
                per_forward[method].append(list(zip(probe.forwards, shares)))
            finally:
                probe.unhook()
                if handle is not None:
                    handle.disable()
            cpu[method].append(split_cpu)
            wall[method].append(split_wall)
            totals[method].append((end[0] - start[0], end[1] - start[1]))

    def median(values):
        return statistics.median(values)

    base_cpu = median([t[0] for t in totals["none"]])
    base_wall = median([t[1] for t in totals["none"]])
    base_blocks = median([c["blocks"] for c in cpu["none"]])
    base_denoiser = median([c["blocks"] + c["denoiser"] + c["ours"] for c in cpu["none"]])
    print(f"tiny-shapes-t2v, {args.steps} steps, split CFG, guidance 5; {args.rounds} interleaved rounds, medians; "
          f"torch threads {torch.get_num_threads()}")
    print()
    print("| method | CPU s | wall s | CPU speedup | FLOP speedup | overhead eff. (CPU) | blocks | denoiser outside "
          "blocks | ours | pipeline | denoiser eff. | blocks eff. | eff. without ours |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for method in methods:
        total_cpu = median([t[0] for t in totals[method]])
        total_wall = median([t[1] for t in totals[method]])
        parts = {p: median([c[p] for c in cpu[method]]) for p in PARTS}
        flop_speedup = flops["none"] / flops[method]
        speedup = base_cpu / total_cpu
        denoiser = parts["blocks"] + parts["denoiser"] + parts["ours"]
        shares = " | ".join(f"{parts[p]:.3f} s ({parts[p] / total_cpu:.0%})" for p in PARTS)
        print(f"| {method} | {total_cpu:.3f} | {total_wall:.3f} | {speedup:.2f}× | {flop_speedup:.2f}× | "
              f"{speedup / flop_speedup:.3f} | {shares} | {base_denoiser / denoiser / flop_speedup:.3f} | "
              f"{base_blocks / parts['blocks'] / (block_flops['none'] / block_flops[method]):.3f} | "
              f"{base_cpu / (total_cpu - parts['ours']) / flop_speedup:.3f} |")
    print()
    print(f"(uncached: {base_wall:.3f} s wall-clock, {1 - block_flops['none'] / flops['none']:.1%} of the denoiser's "
          f"FLOPs and {1 - base_blocks / base_denoiser:.1%} of its CPU time outside the blocks. 'denoiser eff.' = "
          "(uncached ÷ method CPU time inside the denoiser's call, ours included) ÷ FLOP speedup; 'blocks eff.' = "
          "the blocks' own CPU-time speedup ÷ their FLOP speedup; 'eff. without ours' = the overhead efficiency "
          "with diffcache's own time taken out of the method's call)")

    full = [forward for run in per_forward["none"] for forward, _ in run]  # the uncached forwards
    dense_cpu = median([f["blocks"] + f["denoiser"] for f in full]) if full else None
    for method in methods[1:]:
        buckets: dict[float, list[dict]] = {}
        for run in per_forward[method]:
            for forward, share in run:
                buckets.setdefault(share, []).append(forward)
        if dense_cpu is None or method.partition(":")[0] != "hsa":  # the token-level method: forward cost by size
            continue
        print(f"\n{method}: one denoiser forward by its share of the tokens (CPU ms, medians over the forwards; "
              "relative = blocks + denoiser outside blocks, over an uncached forward's)\n")
        print("| share of the tokens | forwards | blocks ms | denoiser outside blocks ms | ours ms | relative |")
        print("|---:|---:|---:|---:|---:|---:|")
        for share in sorted(buckets, reverse=True):
            rows = buckets[share]
            b, d, o = (median([r[p] for r in rows]) * 1e3 for p in ("blocks", "denoiser", "ours"))
            print(f"| {share:.3f} | {len(rows)} | {b:.2f} | {d:.2f} | {o:.2f} | {(b + d) / 1e3 / dense_cpu:.3f} |")

    if args.profile:
        for method in methods[1:]:
            handle = enable(method)
            profiler = cProfile.Profile()
            try:
                profiler.enable()
                call()
                profiler.disable()
            finally:
                handle.disable()
            stats = pstats.Stats(profiler)
            rows = [(tt, ct, nc, f"{func[0].split('src/')[-1]}:{func[1]} {func[2]}")
                    for func, (cc, nc, tt, ct, callers) in stats.stats.items()
                    if "diffcache" in func[0] and "/embedded/" not in func[0]]
            print(f"\n{method}: diffcache's functions by own time (cProfile, one call)\n")
            print("| own s | cumulative s | calls | function |")
            print("|---:|---:|---:|---|")
            for tt, ct, nc, name in sorted(rows, reverse=True)[:args.top]:
                print(f"| {tt:.4f} | {ct:.4f} | {nc} | `{name}` |")


if __name__ == "__main__":
    main()

"""The benchmark: methods × presets × prompts × seeds on one model, quality against the uncached run, speed as ratios
of interleaved runs in one process, FLOPs and memory; resumable, split across processes, with an HTML report.

The flow is one way, one job per module: :mod:`.specs` (what ``--methods`` names) and :mod:`.prompts` (prompt
lists, the (prompt, seed) items) → :mod:`.sweep` (every method on each item: interleaved timing, FLOPs, memory,
quality, clips; one record per item) → :mod:`.store` (the results folder: results.jsonl, resume, its
configuration) → :mod:`.report` (tables, Pareto plots, compute timeline, HTML, from the stored records).
:mod:`.benchmark` is all of it as one call. Helpers: :mod:`.measure` (time, FLOPs, peak and cache memory),
:mod:`.metrics` (PSNR, SSIM, relative L1, LPIPS), :mod:`.peers` (the peers' own code). :mod:`.parity` checks
diffcache's DeepCache against the PyPI ``DeepCache`` package.
"""

from .benchmark import Distributed, benchmark, run_sweep
from .metrics import psnr, relative_l1, ssim
from .prompts import Item, bench_prompts, plan_items
from .specs import DEFAULT_METHODS, MethodSpec, parse_methods
from .sweep import Sweep

__all__ = ["DEFAULT_METHODS", "Distributed", "Item", "MethodSpec", "Sweep", "bench_prompts", "benchmark",
           "parse_methods", "plan_items", "psnr", "relative_l1", "run_sweep", "ssim"]

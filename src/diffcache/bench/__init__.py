"""The benchmark: methods × presets × prompts × seeds on one model, quality against the uncached run, speed as ratios
of interleaved runs in one process, FLOPs and memory; resumable, split across processes, with an HTML report.

Modules: :mod:`.specs` (what ``--methods`` names), :mod:`.peers` (the peers' own code), :mod:`.metrics` (PSNR,
SSIM, relative L1, LPIPS), :mod:`.flops` (FLOPs, peak and cache memory), :mod:`.runner` (items, interleaved timing,
results.jsonl, resume, processes), :mod:`.report` (tables, Pareto plots, compute timeline, HTML),
:mod:`.benchmark` (all of it as one call).
"""

from .benchmark import benchmark
from .metrics import psnr, relative_l1, ssim
from .runner import Sweep, plan_items, run_sweep
from .specs import MethodSpec, parse_methods

__all__ = ["MethodSpec", "Sweep", "benchmark", "parse_methods", "plan_items", "psnr",
           "relative_l1", "run_sweep", "ssim"]

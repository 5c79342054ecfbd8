"""The benchmark: methods × presets × prompts × seeds on one model, quality against the uncached run, speed as ratios
of interleaved runs in one process, FLOPs and memory; resumable, split across processes, with an HTML report.

<<<<<<< HEAD
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
=======
Modules: :mod:`.specs` (what ``--methods`` names), :mod:`.peers` (the peers' own code), :mod:`.metrics` (PSNR,
SSIM, relative L1, LPIPS), :mod:`.flops` (FLOPs, peak and cache memory), :mod:`.runner` (items, interleaved timing,
results.jsonl, resume, processes), :mod:`.report` (tables, Pareto plots, compute timeline, HTML),
:mod:`.benchmark` (all of it as one call), :mod:`.defaults` (what `--methods` runs when not given).
"""

import importlib
import sys
import types

from .defaults import DEFAULT_METHODS

#: public name -> its module, imported on first use (PEP 562) so that the command line's ``--help`` reads
#: :data:`DEFAULT_METHODS` without loading torch
_LAZY = {"benchmark": ".benchmark", "psnr": ".metrics", "relative_l1": ".metrics", "ssim": ".metrics",
         "Sweep": ".runner", "bench_prompts": ".runner", "plan_items": ".runner", "run_sweep": ".runner",
         "MethodSpec": ".specs", "parse_methods": ".specs"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    """Keeps ``diffcache.bench.benchmark`` the function once the submodule of the same name is imported (the import
    system sets the package attribute to the submodule; the eager ``from .benchmark import benchmark`` used to
    rebind it)."""

    def __setattr__(self, name, value):
        if name == "benchmark" and isinstance(value, types.ModuleType):
            value = value.benchmark
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = ["DEFAULT_METHODS", "MethodSpec", "Sweep", "bench_prompts", "benchmark", "parse_methods", "plan_items",
           "psnr", "relative_l1", "run_sweep", "ssim"]
>>>>>>> wt-cli

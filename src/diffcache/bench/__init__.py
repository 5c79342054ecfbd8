"""The benchmark: methods × presets × prompts × seeds on one model, quality against the uncached run, speed as ratios
of interleaved runs in one process, FLOPs and memory; resumable, split across processes, with an HTML report.

The flow is one way, one job per module: :mod:`.specs` (what ``--methods`` names) and :mod:`.prompts` (prompt
lists, the (prompt, seed) items) → :mod:`.sweep` (every method on each item: interleaved timing, FLOPs, memory,
quality, clips; one record per item) → :mod:`.store` (the results folder: results.jsonl, resume, its
configuration) → :mod:`.report` (tables, Pareto plots, compute timeline, HTML, from the stored records).
:mod:`.benchmark` is all of it as one call (:func:`diffcache.bench.benchmark.benchmark`). Helpers: :mod:`.measure`
(time, FLOPs, peak and cache memory), :mod:`.metrics` (PSNR, SSIM, relative L1, LPIPS), :mod:`.peers` (the peers'
own code), :mod:`.defaults` (what ``--methods`` runs when not given; no heavy imports, for ``--help``).
:mod:`.parity` checks diffcache's DeepCache against the PyPI ``DeepCache`` package.

This package's ``__init__`` imports nothing heavy, so the command line can read :data:`DEFAULT_METHODS` without
loading torch; import the modules themselves.
"""

from .defaults import DEFAULT_METHODS

__all__ = ["DEFAULT_METHODS"]

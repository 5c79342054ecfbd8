"""The benchmark's defaults, in a module with no heavy imports: the command line shows them in ``--help``
without loading torch."""

#: what ``--methods`` (and :func:`diffcache.bench.benchmark.benchmark`'s ``methods``) runs when not given: the uncached
#: reference, every registered diffcache method at its default preset, and two diffusers peers (what ``make demo``
#: runs; docs/results/bench.md)
DEFAULT_METHODS = "none,ours,diffusers-pab,diffusers-magcache"

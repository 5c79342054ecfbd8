"""Few-step students by iterative consistency distillation with a data cache (``diffcache distill``)."""

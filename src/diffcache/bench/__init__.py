"""The benchmark: methods × presets × prompts on one model, quality against the uncached run, speed as ratios
of interleaved runs in one process."""

from .metrics import psnr, ssim
from .runner import BenchResult, MethodSpec, parse_methods, run_bench

__all__ = ["BenchResult", "MethodSpec", "parse_methods", "psnr", "run_bench", "ssim"]

"""The benchmark protocol of :mod:`diffcache.bench.runner` for a text-to-image pipeline (``tiny-shapes-t2i``,
Stable Diffusion): an image is measured as a one-frame video.

For every prompt (seed = its position) every method generates the same image; each method is timed ``repeats``
times, the methods interleaved (the order rotates each repeat) in one process. Speedup is the uncached run's total
time over the method's; PSNR and SSIM compare each image with the uncached one of the same seed; adherence (colour
and shape) comes from the analytic checker on the embedded model. Results are a :class:`BenchResult`, written with
:func:`diffcache.bench.runner.write_bench` (``results.json``, ``table.md``, ``chart.png``).

Command line (until ``diffcache bench`` takes image models)::

    python -m diffcache.bench.images --methods "none,deepcache:uniform-2,deepcache:uniform-3,deepcache:uniform-5,deepcache:nonuniform" \\
        --prompts 30 --steps 50 --repeats 2 --out out/deepcache
    python -m diffcache.bench.images --peer-deepcache 3:0 --prompts 8 --repeats 3   # vs the DeepCache package
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from ..methods.base import enable
from ..models.pipeline_t2i import all_image_prompts
from .metrics import psnr, ssim
from .runner import BASELINE, FEWER_STEPS, BenchResult, MethodSpec, parse_methods, write_bench


def image_bench_prompts(n: int) -> list[tuple[str, int]]:
    """``n`` (prompt, seed) pairs cycling over the 15 still-image prompts of the shapes grammar."""
    prompts = all_image_prompts()
    return [(prompts[i % len(prompts)], i) for i in range(n)]


def _generate(pipe, prompt: str, seed: int, steps: int, guidance: float) -> np.ndarray:
    image = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance,
                 generator=torch.Generator().manual_seed(seed), output_type="np").images[0]
    return np.asarray(image)[None]  # one frame


def run_image_bench(pipe, methods: list[MethodSpec], num_prompts: int = 30, steps: int = 50, guidance: float = 5.0,
                    repeats: int = 2, progress: bool = True, model_name: str = "") -> BenchResult:
    """Benchmark ``methods`` (the first must be ``none``) on a text-to-image ``pipe``; see the module docs."""
    from ..models.checker import check
    from ..models.evaluate import is_image_pipeline

    if methods[0].name != BASELINE:
        raise ValueError("the first method must be 'none', the uncached reference")
    if num_prompts < 1 or steps < 1 or repeats < 1:
        raise ValueError("num_prompts, steps and repeats must be >= 1")
    scored = is_image_pipeline(pipe)
    pairs = image_bench_prompts(num_prompts)
    pipe.set_progress_bar_config(disable=True)
    result = BenchResult(config={"model": model_name, "methods": [m.label for m in methods], "prompts": num_prompts,
                                 "steps": steps, "guidance": guidance, "repeats": repeats, "cfg_mode": "batched",
                                 "torch_threads": torch.get_num_threads()})

    def run(spec: MethodSpec, prompt: str, seed: int):
        if spec.name in (BASELINE, FEWER_STEPS):
            n = steps if spec.name == BASELINE else int(spec.preset)
            start = time.perf_counter()
            image = _generate(pipe, prompt, seed, n, guidance)
            return image, time.perf_counter() - start, n
        with enable(pipe, spec.name, preset=spec.preset, **dict(spec.overrides)) as handle:
            start = time.perf_counter()
            image = _generate(pipe, prompt, seed, steps, guidance)
            elapsed = time.perf_counter() - start
        return image, elapsed, handle.report().computed_steps()

    for spec in methods:  # warm-up: first-call costs stay out of the timings
        run(spec, *pairs[0])
    bar = tqdm(total=len(pairs) * len(methods) * repeats, desc="bench", disable=not progress)
    for prompt, seed in pairs:
        images, times, computed = {}, {m.label: [] for m in methods}, {}
        for repeat in range(repeats):
            order = methods[repeat % len(methods):] + methods[:repeat % len(methods)]
            for spec in order:
                image, elapsed, n = run(spec, prompt, seed)
                times[spec.label].append(elapsed)
                if repeat == 0:
                    images[spec.label], computed[spec.label] = image, n
                bar.update()
        reference = images[BASELINE]
        for spec in methods:
            image = images[spec.label]
            result.rows.append({
                "method": spec.label, "prompt": prompt, "seed": seed, "seconds": times[spec.label],
                "computed_steps": computed[spec.label], "psnr": psnr(image, reference), "ssim": ssim(image, reference),
                "adherence": check(image[0], prompt).adherence if scored else None,
            })
    bar.close()

    baseline_time = sum(sum(r["seconds"]) for r in result.rows if r["method"] == BASELINE)
    for spec in methods:
        rows = [r for r in result.rows if r["method"] == spec.label]
        counts = [r["computed_steps"] for r in rows]
        result.summary.append({
            "method": spec.label,
            "speedup": baseline_time / sum(sum(r["seconds"]) for r in rows),
            "psnr": float(np.mean([r["psnr"] for r in rows])),
            "ssim": float(np.mean([r["ssim"] for r in rows])),
            "adherence": float(np.mean([r["adherence"] for r in rows])) if scored else None,
            "computed_mean": float(np.mean(counts)), "computed_min": min(counts), "computed_max": max(counts),
            "computed_distinct": len(set(counts)),
        })
    return result


def compare_with_deepcache_package(pipe, interval: int = 3, branch: int = 0, num_prompts: int = 8, steps: int = 50,
                                   guidance: float = 5.0, repeats: int = 3, progress: bool = True) -> dict:
    """diffcache's DeepCache against the PyPI ``DeepCache`` package's ``DeepCacheSDHelper`` (a test-only
    dependency) with the same interval and branch: the largest pixel difference of their images, and the
    speed ratio (the package's total time over diffcache's) from runs interleaved in this process."""
    from DeepCache import DeepCacheSDHelper

    pairs = image_bench_prompts(num_prompts)
    pipe.set_progress_bar_config(disable=True)

    def ours(prompt, seed):
        with enable(pipe, "deepcache", interval=interval, branch=branch):
            start = time.perf_counter()
            image = _generate(pipe, prompt, seed, steps, guidance)
            return image, time.perf_counter() - start

    def peer(prompt, seed):
        helper = DeepCacheSDHelper(pipe=pipe)
        helper.set_params(cache_interval=interval, cache_branch_id=branch)
        helper.enable()
        try:
            start = time.perf_counter()
            image = _generate(pipe, prompt, seed, steps, guidance)
            return image, time.perf_counter() - start
        finally:
            helper.disable()

    runners = {"diffcache": ours, "DeepCache": peer}
    for run in runners.values():
        run(*pairs[0])  # warm-up
    times = {name: 0.0 for name in runners}
    diff = 0.0
    bar = tqdm(total=len(pairs) * repeats * 2, desc="peer", disable=not progress)
    for prompt, seed in pairs:
        for repeat in range(repeats):
            names = list(runners) if repeat % 2 == 0 else list(runners)[::-1]
            images = {}
            for name in names:
                images[name], elapsed = runners[name](prompt, seed)
                times[name] += elapsed
                bar.update()
            diff = max(diff, float(np.abs(images["diffcache"] - images["DeepCache"]).max()))
    bar.close()
    return {"interval": interval, "branch": branch, "prompts": num_prompts, "steps": steps, "repeats": repeats,
            "max_abs_difference": diff, "seconds": times, "speed_ratio": times["DeepCache"] / times["diffcache"]}


def main(argv: list[str] | None = None) -> int:
    from ..models.registry import load_pipeline

    parser = argparse.ArgumentParser(
        prog="python -m diffcache.bench.images",
        description="Benchmark caching methods on a text-to-image pipeline (default: tiny-shapes-t2i): interleaved "
                    "speedup, PSNR and SSIM against the uncached image, checker adherence.",
        epilog='example:\n  python -m diffcache.bench.images --methods "none,deepcache:uniform-3,deepcache:nonuniform" '
               "--prompts 30 --out out/deepcache",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-shapes-t2i", help="embedded model name or pipeline folder")
    parser.add_argument("--methods", default=None, help="comma-separated NAME[:PRESET[opt=value;...]]; 'none' is "
                        "always added")
    parser.add_argument("--peer-deepcache", metavar="INTERVAL:BRANCH", default=None,
                        help="instead: compare diffcache's DeepCache with the PyPI DeepCache package (same images? "
                        "which is faster?), e.g. 3:0")
    parser.add_argument("--prompts", type=int, default=30, help="number of prompts (default: 30, each of the 15 twice)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (default: 50)")
    parser.add_argument("--guidance", type=float, default=5.0, help="guidance scale (default: 5)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per method and prompt (default: 2)")
    parser.add_argument("--out", default=None, help="folder for results.json, table.md and chart.png")
    parser.add_argument("--force", action="store_true", help="overwrite earlier results in --out")
    args = parser.parse_args(argv)
    if args.peer_deepcache:
        interval, _, branch = args.peer_deepcache.partition(":")
        result = compare_with_deepcache_package(load_pipeline(args.model), int(interval), int(branch or 0),
                                                args.prompts, args.steps, args.guidance, args.repeats)
        print(json.dumps(result, indent=1))
        return 0
    if not args.methods or not args.out:
        parser.error("--methods and --out are required (or --peer-deepcache)")
    from ..io import check_writable
    from .runner import OUTPUT_FILES

    for name in OUTPUT_FILES:  # refuse before any work
        check_writable(f"{args.out}/{name}", args.force)
    methods = parse_methods(args.methods)
    pipe = load_pipeline(args.model)
    result = run_image_bench(pipe, methods, args.prompts, args.steps, args.guidance, args.repeats,
                             model_name=args.model)
    write_bench(result, args.out, force=args.force)
    print(result.table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

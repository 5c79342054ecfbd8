"""The DeepCache package parity check: diffcache's DeepCache against the PyPI ``DeepCache`` package
(``DeepCacheSDHelper``, https://github.com/horseee/DeepCache; DeepCache is arXiv:2312.00858) on a text-to-image
pipeline: the same images? which is faster? (Benchmark image models themselves with ``diffcache bench --model
tiny-shapes-t2i``; an image counts as a one-frame video.)

Command line::

    python -m diffcache.bench.parity --peer-deepcache 3:0 --prompts 8 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from ..api import enable
from ..embedded.shapes import prompts as grammar_prompts


def generate_image(pipe, prompt: str, seed: int, steps: int, guidance: float) -> np.ndarray:
    """The pipeline's image of ``prompt`` and ``seed`` as a one-frame video ``(1, H, W, 3)``."""
    image = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance,
                 generator=torch.Generator().manual_seed(seed), output_type="np").images[0]
    return np.asarray(image)[None]  # one frame


def compare_with_deepcache_package(pipe, interval: int = 3, branch: int = 0, num_prompts: int = 8, steps: int = 50,
                                   guidance: float = 5.0, repeats: int = 3, progress: bool = True) -> dict:
    """diffcache's DeepCache against the PyPI ``DeepCache`` package's ``DeepCacheSDHelper`` (a test-only
    dependency) with the same interval and branch: the largest pixel difference of their images, and the
    speed ratio (the package's total time over diffcache's) from runs interleaved in this process, each
    side's total seconds in ``seconds``."""
    from DeepCache import DeepCacheSDHelper

    pairs = grammar_prompts(num_prompts, kind="image", seeded=True)
    pipe.set_progress_bar_config(disable=True)

    def run_diffcache(prompt, seed):
        with enable(pipe, "deepcache", interval=interval, branch=branch):
            start = time.perf_counter()
            image = generate_image(pipe, prompt, seed, steps, guidance)
            return image, time.perf_counter() - start

    def run_deepcache_package(prompt, seed):
        helper = DeepCacheSDHelper(pipe=pipe)
        helper.set_params(cache_interval=interval, cache_branch_id=branch)
        helper.enable()
        try:
            start = time.perf_counter()
            image = generate_image(pipe, prompt, seed, steps, guidance)
            return image, time.perf_counter() - start
        finally:
            helper.disable()

    runners = {"diffcache": run_diffcache, "DeepCache": run_deepcache_package}
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
    from ..loading import load_pipeline

    parser = argparse.ArgumentParser(
        prog="python -m diffcache.bench.parity",
        description="Compare diffcache's DeepCache with the PyPI DeepCache package on a text-to-image pipeline "
                    "(default: tiny-shapes-t2i): largest pixel difference and speed ratio from interleaved runs.",
        epilog="example:\n  python -m diffcache.bench.parity --peer-deepcache 3:0 --prompts 8 --repeats 3",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-shapes-t2i", help="embedded model name or pipeline folder")
    parser.add_argument("--peer-deepcache", metavar="INTERVAL:BRANCH", required=True,
                        help="the interval and skip branch both use, e.g. 3:0")
    parser.add_argument("--prompts", type=int, default=8, help="number of prompts (default: 8)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (default: 50)")
    parser.add_argument("--guidance", type=float, default=5.0, help="guidance scale (default: 5)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each per prompt (default: 3)")
    args = parser.parse_args(argv)
    interval, _, branch = args.peer_deepcache.partition(":")
    if not interval.isdigit() or not (branch or "0").isdigit():
        parser.error(f"--peer-deepcache takes INTERVAL:BRANCH as two integers, e.g. 3:0; got {args.peer_deepcache!r}")
    result = compare_with_deepcache_package(load_pipeline(args.model), int(interval), int(branch or 0),
                                            args.prompts, args.steps, args.guidance, args.repeats)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

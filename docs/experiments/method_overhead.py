"""Wall-clock speed-up of a few methods on the embedded model, timed interleaved in one process.

A quick check that a change to the call path adds no per-forward overhead: the uncached call and each method run in
turn, ``--rounds`` times, and the speed-up is the ratio of medians. Run it on two checkouts and compare::

    PYTHONPATH=src .venv/bin/python docs/experiments/method_overhead.py --rounds 4

(issue 18's closing note: before ac2d656 / after, pab 1.26× / 1.30×, fbcache 1.31× / 1.34×, adacache 2.19× / 2.39×).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

import diffcache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (default: 4)")
    parser.add_argument("--steps", type=int, default=30, help="denoising steps (default: 30)")
    parser.add_argument("--methods", default="pab,fbcache,adacache", help="comma-separated method names")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    pipe = diffcache.load_pipeline("tiny-shapes-t2v")
    pipe.set_progress_bar_config(disable=True)

    def run() -> float:
        start = time.perf_counter()
        pipe("a red circle moving left", num_inference_steps=args.steps, guidance_scale=5.0,
             generator=torch.Generator().manual_seed(0))
        return time.perf_counter() - start

    run()  # warm-up
    times: dict[str, list[float]] = {"none": [], **{m: [] for m in args.methods.split(",")}}
    for _ in range(args.rounds):
        for method in times:
            if method == "none":
                times[method].append(run())
            else:
                with diffcache.enable(pipe, method):
                    times[method].append(run())
    base = statistics.median(times["none"])
    for method, values in times.items():
        print(f"{method:10s} {statistics.median(values):7.3f} s  {base / statistics.median(values):.2f}×")


if __name__ == "__main__":
    main()

"""Why hsa-25 does not beat 8 plain steps at T = 30 on tiny-shapes-t2v: the step grids HSA can give a token.

A token HSA computes at steps S (the dense warm-up, then every T/s-th step) and otherwise moves by its cached
velocity ends exactly where plain Euler on the coarse grid S would take it, if every token shared that grid. This
script measures that: for each grid it runs the T-step pipeline but reuses the last velocity (both CFG branches)
on the steps outside the grid, and scores the clip against the T-step reference (PSNR, and the mean signed error,
which is the brightness bias). It also runs HSA itself with any options, for comparison.

    python docs/experiments/hsa_grids.py --steps 30 --prompts 12 \\
        --grid 0,1,2,6,12,18,24 --grid 0,1,5,10,15,20,25 --grid 0,4,8,11,15,19,23,26 --plain 7 --plain 8 \\
        --hsa hsa:hsa-25 --hsa 'hsa:hsa-25[overhead=0]'

Prompts are every fifth of the grammar's 60, seed = position; 64 × 64; guidance 5. One CPU thread: about 2 min for
the references at T = 30 with 12 prompts, then seconds per grid.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch

import diffcache
from diffcache.quality.protocols import psnr
from diffcache.bench.specs import MethodSpec
from diffcache.embedded.shapes import prompts as grammar_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="T, the reference's steps")
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--grid", action="append", default=[], help="steps computed, e.g. 0,1,5,10,15,20,25")
    parser.add_argument("--plain", action="append", type=int, default=[], help="plain sampling with N steps")
    parser.add_argument("--hsa", action="append", default=[], help="an HSA method spec, e.g. 'hsa:hsa-25[warmup=2]'")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    pipe = diffcache.load_pipeline("tiny-shapes-t2v")
    pipe.set_progress_bar_config(disable=True)
    prompts = grammar_prompts()[::5][: args.prompts]

    def generate(steps: int, prompt: str, seed: int) -> np.ndarray:
        return pipe(prompt, num_inference_steps=steps, guidance_scale=5.0, height=64, width=64,
                    generator=torch.Generator().manual_seed(seed), output_type="np").frames[0]

    references = [generate(args.steps, p, i) for i, p in enumerate(prompts)]

    def score(label: str, clips: list[np.ndarray]) -> None:
        bias = [float((c - r).mean()) for c, r in zip(clips, references)]
        value = np.mean([psnr(c, r) for c, r in zip(clips, references)])
        print(f"{label:40s} PSNR {value:6.2f} dB   mean signed error {np.mean(bias):+.4f}", flush=True)

    transformer, forward = pipe.transformer, pipe.transformer.forward
    for text in args.grid:
        grid = {int(s) for s in text.split(",")}
        calls, last = [0], {}

        def on_grid(*a, **k):  # split CFG: the calls alternate cond, uncond within a step
            branch, step = calls[0] % 2, calls[0] // 2
            calls[0] += 1
            if step in grid or branch not in last:
                last[branch] = forward(*a, **k)
            return last[branch]

        clips = []
        transformer.forward = on_grid
        try:
            for i, p in enumerate(prompts):
                calls[0], last = 0, {}
                clips.append(generate(args.steps, p, i))
        finally:
            transformer.forward = forward
        score(f"grid {sorted(grid)}", clips)
    for steps in args.plain:
        score(f"steps:{steps}", [generate(steps, p, i) for i, p in enumerate(prompts)])
    for text in args.hsa:
        spec = MethodSpec.parse(text)
        clips = []
        for i, p in enumerate(prompts):
            with diffcache.enable(pipe, spec.name, preset=spec.preset, **dict(spec.overrides)):
                clips.append(generate(args.steps, p, i))
        score(text, clips)


if __name__ == "__main__":
    main()

"""The demo: the main job, and a page of one method's clips beside the uncached ones.

* :func:`run_demo` is ``diffcache demo`` and ``make demo``: a short benchmark (:func:`diffcache.bench.benchmark.benchmark`)
  on the embedded model with fixed arguments (:data:`DEMO`): uncached, every diffcache method at its default
  preset and two diffusers peers (:data:`~diffcache.bench.defaults.DEFAULT_METHODS`), 4 prompts, 30 steps, 2
  interleaved timed repeats, into ``out/demo``. Running it again resumes (finished videos are kept).
* :func:`write_clip_page` is ``diffcache clips``: :data:`CLIP_PROMPTS` generated uncached and with one method,
  each pair in one GIF (uncached left), with the speedup, PSNR / SSIM and what the checker sees, into
  ``out/clips`` — its own folder, so neither overwrites the other.

No heavy package is imported at module level (``diffcache demo --help`` reads :data:`DEMO`).
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Callable

from .bench.defaults import DEFAULT_METHODS

#: the demo's benchmark: :func:`diffcache.bench.benchmark.benchmark` arguments
DEMO = {"model": "tiny-shapes-t2v", "methods": DEFAULT_METHODS, "num_prompts": 4, "steps": 30, "guidance": 5.0,
        "repeats": 2, "out": "out/demo"}


def run_demo(out: str | Path = DEMO["out"], force: bool = False, progress: bool = True,
             num_prompts: int = DEMO["num_prompts"], steps: int = DEMO["steps"],
             repeats: int = DEMO["repeats"]) -> dict | None:
    """Run (or resume) the demo benchmark into ``out``; the reports of :func:`diffcache.bench.benchmark.benchmark`."""
    from .bench.benchmark import benchmark

    return benchmark(model=DEMO["model"], methods=DEMO["methods"], out=out, num_prompts=num_prompts, steps=steps,
                     guidance=DEMO["guidance"], repeats=repeats, force=force, progress=progress)


#: the clip page's prompts, one per row
CLIP_PROMPTS = (
    "a red circle moving right",
    "a green square moving up",
    "a blue triangle moving left",
    "a yellow circle moving down",
    "a white square moving left",
    "a red triangle moving up",
)
CLIPS_OUT = "out/clips"  #: the clip page's default folder


def write_clip_page(method: str = "adacache:fast", out: str | Path = CLIPS_OUT, steps: int = 30,
                    force: bool = False, on_clip: Callable[[str], None] | None = None) -> dict:
    """Generate :data:`CLIP_PROMPTS` with the embedded model uncached and with ``method`` (``NAME[:PRESET]``,
    runs alternating in one process), write each pair as one GIF and ``index.html`` into ``out``; ``on_clip``
    receives one line per clip. Returns ``{"index", "rows", "speedup", "summary"}``. A bad method name and an
    existing file (without ``force``) are refused before any work."""
    import numpy as np

    from .quality.protocols import psnr, ssim
    from .bench.specs import BASELINE, MethodSpec
    from .embedded.checker import check
    from .files import check_writable, write_text, write_video
    from .generation import generate_clip
    from .loading import load_pipeline
    from .api import enable

    spec = MethodSpec.parse(method)  # a bad name fails before any work
    if spec.name == BASELINE:
        raise ValueError("--method must be a caching method, not 'none' (the uncached run is always shown)")
    out = Path(out)
    index = out / "index.html"
    names = [f"clip-{i:02d}.gif" for i in range(len(CLIP_PROMPTS))]
    for path in [index, *(out / n for n in names)]:  # refuse before any work, not half-way through
        check_writable(path, force)
    pipe = load_pipeline("tiny-shapes-t2v")
    pipe.set_progress_bar_config(disable=True)  # one line per clip instead
    generate_clip(pipe, CLIP_PROMPTS[0], 2, 5.0, 0, "split", None)  # warm-up, untimed
    rows = []
    for i, (prompt, name) in enumerate(zip(CLIP_PROMPTS, names)):
        start = time.perf_counter()
        plain = generate_clip(pipe, prompt, steps, 5.0, i, "split", None)
        plain_time = time.perf_counter() - start
        with enable(pipe, spec.name, preset=spec.preset, **dict(spec.overrides)) as handle:
            start = time.perf_counter()
            fast = generate_clip(pipe, prompt, steps, 5.0, i, "split", None)
            fast_time = time.perf_counter() - start
        computed = handle.report().computed_steps()
        gap = np.ones((plain.shape[0], plain.shape[1], 2, 3))
        write_video(out / name, np.concatenate([plain, gap, fast], axis=2), force=force)
        checked = [check(plain, prompt), check(fast, prompt)]
        rows.append({"prompt": prompt, "file": name, "plain_seconds": plain_time, "fast_seconds": fast_time,
                     "speedup": plain_time / fast_time, "computed": computed, "psnr": psnr(fast, plain),
                     "ssim": ssim(fast, plain), "adherence": [c.adherence for c in checked],
                     "seen": [f"{c.colour} {c.shape} {c.direction}" for c in checked]})
        r = rows[-1]
        if on_clip is not None:
            on_clip(f"[{i + 1}/{len(CLIP_PROMPTS)}] {prompt!r}: {plain_time:.2f} s plain, {fast_time:.2f} s with "
                    f"{spec.label} ({r['speedup']:.1f}x, {computed}/{steps} steps computed), "
                    f"PSNR {r['psnr']:.1f} dB, checker sees '{r['seen'][1]}' -> {out / name}")
    total_speedup = sum(r["plain_seconds"] for r in rows) / sum(r["fast_seconds"] for r in rows)
    mean = lambda key, k=None: sum(r[key][k] if k is not None else r[key] for r in rows) / len(rows)  # noqa: E731
    label = spec.label
    body = "\n".join(
        f"<tr><td><img src='{html.escape(r['file'])}' height=160></td><td>{html.escape(r['prompt'])}</td>"
        f"<td>{r['speedup']:.2f}×</td><td>{r['computed']}/{steps}</td><td>{r['psnr']:.1f}</td>"
        f"<td>{r['ssim']:.3f}</td><td>{html.escape(r['seen'][0])} ({100 * r['adherence'][0]:.0f}%)</td>"
        f"<td>{html.escape(r['seen'][1])} ({100 * r['adherence'][1]:.0f}%)</td></tr>" for r in rows
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>diffcache clips</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 10px;text-align:left}}
img{{image-rendering:pixelated;background:#000}}</style></head><body>
<h1>diffcache clips — tiny-shapes-t2v, uncached vs {html.escape(label)}</h1>
<p>{len(rows)} prompts, {steps} steps, guidance 5, split CFG. Each clip: uncached (left) | {html.escape(label)}
(right), same seed. Overall speedup {total_speedup:.2f}× (total uncached time / total cached time, runs alternating
in one process); mean PSNR {mean("psnr"):.1f} dB, SSIM {mean("ssim"):.3f} against the uncached clip; checker
adherence {100 * mean("adherence", 0):.0f}% uncached, {100 * mean("adherence", 1):.0f}% cached.</p>
<table><tr><th>uncached | cached</th><th>prompt</th><th>speedup</th><th>computed steps</th><th>PSNR (dB)</th>
<th>SSIM</th><th>checker sees (uncached)</th><th>checker sees (cached)</th></tr>
{body}
</table></body></html>
"""
    write_text(index, page, force=force)
    summary = (f"{label}: {total_speedup:.2f}x overall, PSNR {mean('psnr'):.1f} dB, SSIM {mean('ssim'):.3f}, "
               f"adherence {100 * mean('adherence', 0):.0f}% -> {100 * mean('adherence', 1):.0f}%; report: {index}")
    return {"index": index, "rows": rows, "speedup": total_speedup, "summary": summary}

"""The earlier one-shot benchmark API, kept for its callers: :func:`run_bench` (methods interleaved per prompt,
speedup, PSNR / SSIM / adherence, computed steps) returning a :class:`BenchResult`, and :func:`write_bench`
(``results.json``, ``table.md``, ``chart.png``). The README's earlier tables were measured with it.

``diffcache bench`` now runs :mod:`diffcache.bench.benchmark` (resumable, FLOPs, memory, peers, HTML); use that
for new work.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..methods.base import enable
from .metrics import psnr, ssim
from .peers import PEERS, PeerUnavailable, Setup
from .runner import bench_prompts
from .specs import BASELINE, FEWER_STEPS, MethodSpec

@dataclass
class BenchResult:
    config: dict
    rows: list[dict] = field(default_factory=list)  #: one per (method, prompt)
    summary: list[dict] = field(default_factory=list)  #: one per method
    skipped: dict[str, str] = field(default_factory=dict)  #: peers that could not run here, with the reason

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def table(self) -> str:
        """The summary as a Markdown table."""
        head = ("| method | speedup | PSNR (dB) | SSIM | adherence | computed steps per video (min–max, mean) |\n"
                "|---|---:|---:|---:|---:|---|")
        lines = [head]
        for s in self.summary:
            adherence = "–" if s["adherence"] is None else f"{100 * s['adherence']:.1f}%"
            steps = ("– (not reported)" if s["computed_mean"] is None
                     else f"{s['computed_min']}–{s['computed_max']}, {s['computed_mean']:.1f}")
            lines.append(f"| {s['method']} | {s['speedup']:.2f}× | {_db(s['psnr'])} | {s['ssim']:.3f} | {adherence} | "
                         f"{steps} |")
        lines += [f"\nskipped {label}: {reason}" for label, reason in self.skipped.items()]
        return "\n".join(lines)


def _db(value: float) -> str:
    return "∞" if value == float("inf") else f"{value:.2f}"


def _generate(pipe, prompt: str, seed: int, steps: int, guidance: float, **extra) -> np.ndarray:
    return pipe(prompt, num_inference_steps=steps, guidance_scale=guidance,
                generator=torch.Generator().manual_seed(seed), output_type="np", **extra).frames[0]


def run_bench(pipe, methods: list[MethodSpec], num_prompts: int = 8, steps: int = 30, guidance: float = 5.0,
              repeats: int = 2, progress: bool = True, model_name: str = "", cfg_mode: str | None = None) -> BenchResult:
    """Benchmark ``methods`` (the first must be ``none``) on ``pipe``; see the module docs for the protocol."""
    from ..models.checker import check

    if methods[0].name != BASELINE:
        raise ValueError("the first method must be 'none', the uncached reference")
    if num_prompts < 1 or steps < 1 or repeats < 1:
        raise ValueError("num_prompts, steps and repeats must be >= 1")
    pairs = bench_prompts(num_prompts)
    scored = type(pipe).__name__ == "TinyShapesT2VPipeline"
    pipe.set_progress_bar_config(disable=True)
    extra = {} if cfg_mode is None else {"cfg_mode": cfg_mode}
    result = BenchResult(config={"model": model_name, "methods": [m.label for m in methods], "prompts": num_prompts,
                                 "steps": steps, "guidance": guidance, "repeats": repeats, "cfg_mode": cfg_mode,
                                 "torch_threads": torch.get_num_threads()})

    def run(spec: MethodSpec, prompt: str, seed: int):
        if spec.name in (BASELINE, FEWER_STEPS):
            n = steps if spec.name == BASELINE else int(spec.preset)
            start = time.perf_counter()
            video = _generate(pipe, prompt, seed, n, guidance, **extra)
            return video, time.perf_counter() - start, n
        if spec.name in PEERS:
            setup = Setup(steps, cfg_mode, lambda p, s: _generate(pipe, p, s, steps, guidance, **extra), pairs[0])
            try:
                active = PEERS[spec.name].enable(pipe, setup, dict(spec.overrides))
            except PeerUnavailable as error:
                raise ValueError(str(error)) from error
            try:
                start = time.perf_counter()
                video = _generate(pipe, prompt, seed, steps, guidance, **extra)
                return video, time.perf_counter() - start, None  # peers do not report computed steps
            except Exception as error:  # noqa: BLE001 - a peer's crash becomes a one-line reason
                raise ValueError(f"{spec.name} failed on {type(pipe).__name__} (cfg_mode={cfg_mode or 'default'}): "
                                 f"{type(error).__name__}: {error}") from error
            finally:
                active.disable()
        with enable(pipe, spec.name, preset=spec.preset, **dict(spec.overrides)) as handle:
            start = time.perf_counter()
            video = _generate(pipe, prompt, seed, steps, guidance, **extra)
            elapsed = time.perf_counter() - start
        return video, elapsed, handle.report().computed_steps()

    for spec in list(methods):  # warm-up: first-call costs stay out of the timings
        try:
            run(spec, *pairs[0])
        except ValueError as error:
            if spec.name not in PEERS:
                raise
            methods = [m for m in methods if m != spec]  # a peer that cannot run here is listed, not fatal
            result.skipped[spec.label] = str(error)
    bar = tqdm(total=len(pairs) * len(methods) * repeats, desc="bench", disable=not progress)
    for prompt, seed in pairs:
        videos, times, computed = {}, {m.label: [] for m in methods}, {}
        for repeat in range(repeats):
            order = methods[repeat % len(methods):] + methods[:repeat % len(methods)]
            for spec in order:
                video, elapsed, n = run(spec, prompt, seed)
                times[spec.label].append(elapsed)
                if repeat == 0:
                    videos[spec.label], computed[spec.label] = video, n
                bar.update()
        reference = videos[BASELINE]
        for spec in methods:
            video = videos[spec.label]
            result.rows.append({
                "method": spec.label, "prompt": prompt, "seed": seed, "seconds": times[spec.label],
                "computed_steps": computed[spec.label], "psnr": psnr(video, reference), "ssim": ssim(video, reference),
                "adherence": check(video, prompt).adherence if scored else None,
            })
    bar.close()

    baseline_time = sum(sum(r["seconds"]) for r in result.rows if r["method"] == BASELINE)
    for spec in methods:
        rows = [r for r in result.rows if r["method"] == spec.label]
        counts = [r["computed_steps"] for r in rows]
        known = None not in counts
        result.summary.append({
            "method": spec.label,
            "speedup": baseline_time / sum(sum(r["seconds"]) for r in rows),
            "psnr": float(np.mean([r["psnr"] for r in rows])),
            "ssim": float(np.mean([r["ssim"] for r in rows])),
            "adherence": float(np.mean([r["adherence"] for r in rows])) if scored else None,
            "computed_mean": float(np.mean(counts)) if known else None,
            "computed_min": min(counts) if known else None, "computed_max": max(counts) if known else None,
            "computed_distinct": len(set(counts)) if known else None,
        })
    return result


OUTPUT_FILES = ("results.json", "table.md", "chart.png")


def plot_chart(result: BenchResult, path: str | Path) -> None:
    """Quality (PSNR) against speedup, one point per method row, one colour per method family (PNG, atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    families = sorted({s["method"].split(":")[0] for s in result.summary})
    for colour, family in enumerate(families):
        rows = [s for s in result.summary if s["method"].split(":")[0] == family and s["method"] != BASELINE]
        if not rows:
            continue
        rows.sort(key=lambda s: s["speedup"])
        ax.plot([s["speedup"] for s in rows], [s["psnr"] for s in rows], "o-" if len(rows) > 1 else "o",
                color=f"C{colour}", label=family)
        for s in rows:
            ax.annotate(s["method"].split(":", 1)[-1], (s["speedup"], s["psnr"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.axvline(1.0, color="grey", lw=0.5)
    ax.set_xlabel("speedup vs uncached (interleaved wall-clock)")
    ax.set_ylabel("PSNR vs uncached (dB)")
    config = result.config
    ax.set_title(f"{config.get('model', '')}: {config['prompts']} prompts, {config['steps']} steps", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, force=True) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_bench(result: BenchResult, out: str | Path, force: bool = False) -> list[Path]:
    """Write ``results.json``, ``table.md`` and ``chart.png`` (PSNR vs speedup) into ``out`` (atomically;
    existing files need ``force``)."""
    from ..io import check_writable, write_text

    out = Path(out)
    paths = [out / name for name in OUTPUT_FILES]
    for path in paths:
        check_writable(path, force)
    write_text(paths[0], result.to_json() + "\n", force=force)
    write_text(paths[1], result.table() + "\n", force=force)
    plot_chart(result, paths[2])
    return paths

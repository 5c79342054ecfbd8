"""``diffcache distill gallery``: the comparison page and the per-round plot of a distillation run.

The page has one row per (prompt, step count) and the columns Baseline (the teacher at the same few steps,
with its classifier-free guidance) / Iter=3 / Iter=6 / final (the last finished round), as looping GIFs,
captioned with the step count and prompt (``Step=4, "a red circle moving up"``) and the checker's verdict. The plot
shows adherence and PSNR against the teacher at its reference step count, per round and step count, with
the teacher at the same step counts as dashed lines. Everything comes from the clips and metrics the run
stored in ``DIR/eval`` and ``DIR/round-XX/round.json``; nothing is generated again.
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from ..files import OutputExistsError, atomic_path, check_writable, write_text, write_video
from ..embedded.checker import check
from ..embedded.shapes import prompts as grammar_prompts
from .rounds import CONFIG_FILE, finished_rounds, load_round
from ..errors import RunNotFoundError

GALLERY_ROUNDS = (3, 6)  # the page's Iter=3 and Iter=6 columns



def read_run(run: str | os.PathLike) -> dict:
    """A run's config, finished rounds, per-round metrics (round 0 = the initial student) and teacher metrics."""
    run = Path(run)
    if not (run / CONFIG_FILE).exists():
        raise RunNotFoundError(f"{run} is not a distillation run (no {CONFIG_FILE}); make one with "
                               f"`diffcache distill tiny-shapes-t2v --out {run}`.")
    rounds = finished_rounds(run)
    if not rounds:
        raise RunNotFoundError(f"{run} has no finished round yet; let `diffcache distill` finish round 1 first.")
    config = json.loads((run / CONFIG_FILE).read_text())["identity"]
    metrics = {r: load_round(run, r)["metrics"] for r in rounds}
    if (run / "eval" / "round-00.json").exists():
        metrics[0] = json.loads((run / "eval" / "round-00.json").read_text())["metrics"]
    teacher = json.loads((run / "eval" / "teacher.json").read_text())
    prompts_file = run / "eval" / "prompts.json"  # a diffusers pipeline's run: its own prompts, no checker
    if prompts_file.exists():
        pairs = [(p["prompt"], p["seed"]) for p in json.loads(prompts_file.read_text())]
    else:
        pairs = grammar_prompts(config["eval_prompts"], seeded=True)
    checked = all("adherence" in m for m in teacher.values())
    return {"config": config, "rounds": rounds, "metrics": dict(sorted(metrics.items())), "teacher": teacher,
            "pairs": pairs, "checked": checked}


def plot_rounds(info: dict, path: str | os.PathLike, force: bool = False) -> Path:
    """Adherence and PSNR-vs-teacher against the round number, one line per step count (matplotlib PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = info["config"]["eval_steps"]
    ref = info["config"]["reference_steps"]
    rounds = list(info["metrics"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    checked = info.get("checked", True)  # the embedded model: checker adherence; else the probe loss
    for k, s in enumerate(steps):
        c = colours[k % len(colours)]
        quality = [info["metrics"][r][str(s)]["psnr"] for r in rounds]
        axes[1].plot(rounds, quality, "o-", color=c, label=f"student, {s} steps")
        axes[1].axhline(info["teacher"][str(s)]["psnr"], color=c, ls="--", lw=1, label=f"teacher (CFG), {s} steps")
        if checked:
            adherence = [100 * info["metrics"][r][str(s)]["adherence"] for r in rounds]
            axes[0].plot(rounds, adherence, "o-", color=c, label=f"student, {s} steps")
            axes[0].axhline(100 * info["teacher"][str(s)]["adherence"], color=c, ls="--", lw=1,
                            label=f"teacher (CFG), {s} steps")
        else:
            axes[0].plot(rounds, [info["metrics"][r][str(s)]["probe_loss"] for r in rounds], "o-", color=c,
                         label=f"student, {s} steps")
    if checked:
        axes[0].axhline(100 * info["teacher"][str(ref)]["adherence"], color="black", ls=":", lw=1,
                        label=f"teacher (CFG), {ref} steps")
        axes[0].set(xlabel="round (0 = initial student)", ylabel="adherence (%)", title="Prompt adherence (checker)")
    else:
        axes[0].set(xlabel="round (0 = initial student)", ylabel="probe loss (latent MSE)",
                    title="Distance to the teacher's ODE solution")
    axes[1].set(xlabel="round (0 = initial student)", ylabel="PSNR (dB)",
                title=f"PSNR vs the teacher at {ref} steps")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(fontsize=7, loc="lower right")
    path = Path(path)
    with atomic_path(path, force) as tmp:
        fig.tight_layout()
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def _columns(rounds: list[int]) -> list[tuple[str, int | None]]:
    """(label, round) of the page's columns: Baseline, Iter=3, Iter=6 and final, those that exist."""
    final = rounds[-1]
    cols: list[tuple[str, int | None]] = [("Baseline", None)]
    for r in GALLERY_ROUNDS:
        if r in rounds:
            cols.append((f"Iter={r}" + (" (final)" if r == final else ""), r))
    if final not in GALLERY_ROUNDS:
        cols.append((f"final (Iter={final})", final))
    return cols


def gallery_prompt_rows(num_eval_prompts: int, rows: int) -> list[int]:
    """Indices into the eval prompt set for ``rows`` gallery rows, spread over it (so the rows differ in
    colour, shape and direction)."""
    if rows < 1:
        raise ValueError(f"the gallery needs at least 1 prompt, got {rows}.")
    rows = min(rows, num_eval_prompts)
    return [i * num_eval_prompts // rows for i in range(rows)]


def write_gallery(run: str | os.PathLike, page: str | os.PathLike, prompts: int = 4, force: bool = False) -> dict:
    """Write the comparison page ``page`` (HTML), its clips and the round plot into ``<page stem>_files/``.

    Returns ``{"page": Path, "plot": Path, "clips": [Path, ...], "columns": [...]}``."""
    run, page = Path(run), Path(page)
    if page.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out {page.name!r}: the gallery is an HTML page; use a name ending in .html.")
    info = read_run(run)
    files = page.with_name(f"{page.stem}_files")
    check_writable(page, force)
    if files.exists() and any(files.iterdir()) and not force:
        raise OutputExistsError(f"{files} already exists; pass --force to overwrite the gallery's files.")
    cfg = info["config"]
    steps = cfg["eval_steps"]
    pairs = info["pairs"]
    checked = info["checked"]
    rows = gallery_prompt_rows(len(pairs), prompts)
    columns = _columns(info["rounds"])
    teacher = {k: v.numpy() for k, v in load_file(str(run / "eval" / "teacher.safetensors")).items()}
    student = {r: {k: v.numpy() for k, v in load_file(str(run / "eval" / f"round-{r:02d}.safetensors")).items()}
               for _, r in columns if r is not None}
    files.mkdir(parents=True, exist_ok=True)
    plot = plot_rounds(info, files / "rounds.png", force=True)
    clips, body = [], []
    for row, index in enumerate(rows):
        prompt = pairs[index][0]
        for s in steps:
            cells, captions = [], []
            for label, r in columns:
                clip = teacher[f"steps-{s}"][index] if r is None else student[r][f"steps-{s}"][index]
                clip = np.asarray(clip, dtype=np.float32)
                clip = clip / 255.0 if clip.max() > 1.0 else clip
                name = f"{row}-data-cache-{'vanilla' if r is None else f'iter{r}'}-step{s}.gif"
                upscale = max(1, 128 // max(clip.shape[1:3]))  # the embedded model's 32 px: 128 px; shown at 192
                clips.append(write_video(files / name, clip, upscale=upscale, force=True))
                cells.append(f'<td><img src="{html.escape(files.name)}/{name}" alt="{html.escape(label)}, '
                             f'Step={s}" width="192"></td>')
                seen = ""
                if checked:
                    verdict = check(clip, prompt)
                    found = " ".join(x or "?" for x in (verdict.colour, verdict.shape, verdict.direction))
                    seen = (f'<br><span class="seen">checker: {html.escape(found)} '
                            f'({round(3 * verdict.adherence)}/3)</span>')
                captions.append(f'<td class="cap">Step={s}, "{html.escape(prompt)}"{seen}</td>')
            body.append(f"<tr>{''.join(cells)}</tr>\n<tr class=\"caprow\">{''.join(captions)}</tr>")
    head = "".join(f"<th>{html.escape(label)}</th>" for label, _ in columns)
    def first(m, s):  # the embedded model: checker adherence; a diffusers pipeline: the probe loss (latent MSE)
        if checked:
            return f"{100 * m[str(s)]['adherence']:.1f}%"
        return f"{m[str(s)]['probe_loss']:.4f}" if "probe_loss" in m[str(s)] else "–"

    table_rows = []
    for r, m in info["metrics"].items():
        cells = "".join(f"<td>{first(m, s)}</td><td>{m[str(s)]['psnr']:.2f}</td>" for s in steps)
        table_rows.append(f"<tr><td>{r}{' (initial)' if r == 0 else ''}</td>{cells}</tr>")
    t = info["teacher"]
    teacher_cells = "".join(f"<td>{first(t, s)}</td><td>{t[str(s)]['psnr']:.2f}</td>" for s in steps)
    first_name = "adherence" if checked else "probe loss"
    metric_head = "".join(f"<th>{s}-step {first_name}</th><th>{s}-step PSNR (dB)</th>" for s in steps)
    ref = cfg["reference_steps"]
    reference_row = (f'<tr><td>teacher, {ref} steps</td><td colspan="{2 * len(steps)}">adherence '
                     f'{first(t, ref)}</td></tr>') if checked else ""
    first_note = (f"Adherence: the analytic checker over {cfg['eval_prompts']} prompts." if checked else
                  "Probe loss: latent MSE of the student's sample to the teacher's ODE solution from the same noise, "
                  f"on held-out probe prompts. Clips: {cfg['eval_prompts']} evaluation prompts.")
    text = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Iterative distillation with a data cache: {html.escape(run.name)}</title>
<style>
body {{ font-family: Arial, sans-serif; font-size: 14px; margin: 20px; }}
table {{ border-collapse: collapse; text-align: center; }}
th {{ background: #f2f2f2; padding: 8px; border-bottom: 2px solid #ddd; }}
td {{ padding: 4px 8px; }}
tr.caprow {{ border-bottom: 1px solid #ddd; }}
.cap {{ font-size: 12px; }} .seen {{ color: #666; font-size: 11px; }}
img {{ image-rendering: pixelated; }}
</style></head><body>
<h1>Accelerated sampling: a few-step student by iterative consistency distillation</h1>
<p>Run <code>{html.escape(str(run))}</code>: teacher <code>{html.escape(cfg['teacher'])}</code> (guidance
{cfg['guidance_scale']:g}), {len(info['rounds'])} finished round(s). <b>Baseline</b> is the teacher at the same
number of steps (its own sampler, classifier-free guidance); <b>Iter=k</b> is the student after k rounds (multistep
consistency sampling, no guidance). Seeds are the same in every column.</p>
<table>
<thead><tr>{head}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
<h2>Per round</h2>
<p>{first_note} PSNR: against the teacher at {ref} steps from the same seed.</p>
<img src="{html.escape(files.name)}/{plot.name}" alt="adherence and PSNR per round" style="max-width: 100%">
<table>
<thead><tr><th>round</th>{metric_head}</tr></thead>
<tbody>
{chr(10).join(table_rows)}
<tr><td>teacher (CFG)</td>{teacher_cells}</tr>
{reference_row}
</tbody></table>
</body></html>
"""
    write_text(page, text, force=force)
    return {"page": page, "plot": plot, "clips": clips, "columns": [label for label, _ in columns]}


def referenced_files(page: str | os.PathLike) -> list[Path]:
    """Every file an HTML page references with ``src="..."`` (resolved next to the page)."""
    page = Path(page)
    return [page.parent / html.unescape(m) for m in re.findall(r'src="([^"]+)"', page.read_text())]

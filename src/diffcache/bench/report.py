"""Reports of a finished sweep, from the records as the results folder stores them (:mod:`.store`; metrics that
JSON cannot hold come back as strings, read with :func:`.store.number`): the summary (terminal, CSV, Markdown), the
figure of merit against the peers (:func:`peer_ratios`: our best speedup at each peer point's PSNR), a
quality–speed Pareto plot per metric with one curve per method or peer, the per-step compute timeline of each
method, and ``index.html`` with the side-by-side gallery, the tables and plots."""

from __future__ import annotations

import csv
import html
import io
import json
import math
from pathlib import Path

import numpy as np

from ..files import atomic_path, write_text
from .specs import BASELINE, FEWER_STEPS, curve_name, label_kind
from .store import _encode, number

#: (key, column title, higher is better)
METRICS = (("psnr", "PSNR (dB)", True), ("ssim", "SSIM", True), ("rel_l1", "rel. L1", False),
           ("lpips", "LPIPS", False), ("adherence", "adherence", True))


def _mean(values) -> float | None:
    values = [number(v) for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarize(records: list[dict], labels: list[str]) -> list[dict]:
    """One row per method: speedup (Σ uncached time ÷ Σ method time over the items and repeats), FLOP speedup,
    overhead efficiency (speedup ÷ FLOP speedup), the same two for the time inside the denoiser's forwards only
    (denoiser speedup, denoiser efficiency: the part of the call the FLOP count covers), mean quality, memory; a
    method that could not run has its ``skipped`` reason instead."""
    summary = []
    for label in labels:
        pairs = [(r["methods"][label], r["methods"][BASELINE]) for r in records if label in r["methods"]]
        if not pairs:
            reasons = [r["skipped"][label] for r in records if label in r.get("skipped", {})]
            summary.append({"method": label, "kind": label_kind(label),
                            "skipped": reasons[0] if reasons else "no finished item"})
            continue
        rows = [row for row, _ in pairs]
        time_ref = sum(sum(b["seconds"]) for _, b in pairs)
        flops_ref = sum(b["flops"] for _, b in pairs)
        speedup = time_ref / max(sum(sum(row["seconds"]) for row in rows), 1e-12)
        cpu_speedup = None
        if all(row.get("cpu_seconds") for row, _ in pairs) and all(b.get("cpu_seconds") for _, b in pairs):
            cpu_speedup = (sum(sum(b["cpu_seconds"]) for _, b in pairs)
                           / max(sum(sum(row["cpu_seconds"]) for row in rows), 1e-12))
        flop_speedup = flops_ref / max(sum(row["flops"] for row in rows), 1)
        denoiser_speedup = None  # records written before the denoiser time was measured have none
        timed_rows = (*rows, *(b for _, b in pairs))
        if all(row.get("denoiser_seconds") and None not in row["denoiser_seconds"] for row in timed_rows):
            denoiser_speedup = (sum(sum(b["denoiser_seconds"]) for _, b in pairs)
                                / max(sum(sum(row["denoiser_seconds"]) for row in rows), 1e-12))
        counts = [row.get("computed_steps") for row in rows]
        if label == BASELINE or label.startswith("steps:"):
            counts = [row["steps_run"] for row in rows]
        known = [c for c in counts if c is not None]
        cache = [row.get("cache_bytes") for row in rows]
        summary.append({
            "method": label, "kind": label_kind(label), "videos": len(rows), "speedup": speedup, "cpu_speedup": cpu_speedup,
            "flop_speedup": flop_speedup,
            "overhead_efficiency": speedup / flop_speedup,
            "denoiser_speedup": denoiser_speedup,
            "denoiser_efficiency": None if denoiser_speedup is None else denoiser_speedup / flop_speedup,
            **{key: _mean(row.get(key) for row in rows) for key, _, _ in METRICS},
            "clean": _mean(row.get("clean") for row in rows),
            "temporal_stability": _mean(row.get("temporal_stability") for row in rows),
            "flicker": _mean(row.get("flicker") for row in rows),
            "flicker_added": _mean(row.get("flicker_added") for row in rows),
            "protocol": rows[0].get("protocol", "diffcache"),
            "clip_text": _mean(row.get("clip_text") for row in rows),
            "clip_frame": _mean(row.get("clip_frame") for row in rows),
            "fvd": _fvd(rows, [b for _, b in pairs]),
            **_by_protocol(rows),
            "peak_memory_mb": float(np.mean([row["peak_memory_bytes"] for row in rows])) / 2**20,
            "cache_memory_mb": None if None in cache else max(cache) / 2**20,
            "computed_min": min(known) if len(known) == len(counts) else None,
            "computed_max": max(known) if len(known) == len(counts) else None,
            "computed_mean": float(np.mean(known)) if len(known) == len(counts) else None,
            "gflops_per_video": float(np.mean([row["flops"] for row in rows])) / 1e9,
        })
    return summary


#: the per-protocol quality columns of a benchmark run with several ``--protocol`` (``psnr@videosys`` …)
PROTOCOL_METRICS = (("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("lpips", "LPIPS"))


def _by_protocol(rows: list[dict]) -> dict:
    """Mean PSNR / SSIM / LPIPS of each extra protocol (records with ``by_protocol``), as ``KEY@PROTOCOL``."""
    names = [n for n in (rows[0].get("by_protocol") or {}) if n != rows[0].get("protocol")]
    return {f"{key}@{name}": _mean((row.get("by_protocol") or {}).get(name, {}).get(key) for row in rows)
            for name in names for key, _ in PROTOCOL_METRICS}


def _fvd(rows: list[dict], references: list[dict]) -> float | None:
    """FVD of a method's videos against the uncached ones over the items, from the I3D features the records hold
    (``fvd_features``: an FVD detector was named); ``None`` without them or with fewer than 2 items."""
    features = [row.get("fvd_features") for row in rows]
    reference = [row.get("fvd_features") for row in references]
    if len(features) < 2 or None in features or None in reference:
        return None
    from ..quality.learned import frechet_distance

    return frechet_distance(np.array(features), np.array(reference))


def _fmt(value, kind: str) -> str:
    if value is None:
        return "–"
    kind = kind.split("@")[0]
    if kind == "psnr":
        return "∞" if math.isinf(value) else f"{value:.2f}"
    if kind in ("speedup", "flop_speedup", "cpu_speedup", "denoiser_speedup"):
        return f"{value:.2f}×"
    if kind in ("adherence", "clean"):
        return f"{100 * value:.1f}%"
    if kind in ("ssim", "overhead_efficiency", "denoiser_efficiency", "temporal_stability", "lpips"):
        return f"{value:.3f}"
    if kind in ("flicker", "flicker_added"):
        return f"{value:.4f}"
    if kind in ("clip_text", "fvd"):
        return f"{value:.2f}"
    if kind == "clip_frame":
        return f"{value:.3f}"
    if kind == "rel_l1":
        return f"{value:.4f}"
    if kind.endswith("_mb"):
        return f"{value:.2f}"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


COLUMNS = (("method", "method"), ("speedup", "speedup"), ("cpu_speedup", "CPU-time speedup"),
           ("flop_speedup", "FLOP speedup"),
           ("overhead_efficiency", "overhead eff."), ("denoiser_speedup", "denoiser speedup"),
           ("denoiser_efficiency", "denoiser eff."), ("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("rel_l1", "rel. L1"),
           ("lpips", "LPIPS"), ("adherence", "adherence"), ("clean", "clean"),
           ("temporal_stability", "temporal stab."),
           ("flicker", "flicker"), ("flicker_added", "flicker added"),
           ("clip_text", "CLIP text"), ("clip_frame", "CLIP frame"), ("fvd", "FVD"),
           ("peak_memory_mb", "peak mem (MiB)"), ("cache_memory_mb", "cache (MiB)"), ("computed", "computed steps"))


def protocol_columns(summary: list[dict]) -> list[tuple[str, str]]:
    """The columns of every extra protocol the rows hold: ``("psnr@videosys", "PSNR (dB) [videosys]")`` …"""
    extra = []
    for row in summary:
        for key in row:
            if "@" in key and key not in [k for k, _ in extra]:
                metric, name = key.split("@", 1)
                extra.append((key, f"{dict(PROTOCOL_METRICS)[metric]} [{name}]"))
    return extra


def columns(summary: list[dict]) -> tuple:
    """:data:`COLUMNS` with the extra protocols' columns (:func:`protocol_columns`) after the LPIPS column."""
    at = [key for key, _ in COLUMNS].index("lpips") + 1
    shown = (*COLUMNS[:at], *protocol_columns(summary), *COLUMNS[at:])
    unused = {key for key in OPTIONAL_COLUMNS if all(row.get(key) is None for row in summary)}
    return tuple(column for column in shown if column[0] not in unused)


#: columns shown only when some row has a value: the learned metrics, which need weights named by the environment
OPTIONAL_COLUMNS = ("clip_text", "clip_frame", "fvd")


def _cells(row: dict, shown: tuple = COLUMNS) -> list[str]:
    if "skipped" in row:
        return [row["method"], f"skipped: {row['skipped']}"] + [""] * (len(shown) - 2)
    cells = []
    for key, _ in shown:
        if key == "method":
            cells.append(row["method"])
        elif key == "computed":
            cells.append("–" if row["computed_mean"] is None else
                         f"{row['computed_min']}–{row['computed_max']}, {row['computed_mean']:.1f}"
                         if row["computed_min"] != row["computed_max"] else str(row["computed_min"]))
        else:
            cells.append(_fmt(row.get(key), key))
    return cells


def markdown_table(summary: list[dict]) -> str:
    shown = columns(summary)
    lines = ["| " + " | ".join(title for _, title in shown) + " |",
             "|---|" + "---:|" * (len(shown) - 2) + "---|"]
    for row in summary:
        cells = _cells(row, shown)
        if "skipped" in row:
            cells = cells[:2] + [""] * (len(shown) - 2)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def terminal_table(summary: list[dict]) -> str:
    wanted = ("method", "speedup", "cpu_speedup", "flop_speedup", "overhead_efficiency", "denoiser_speedup",
              "denoiser_efficiency", "psnr", "ssim", "adherence", "clean", "flicker", "computed")
    index = [i for i, (key, _) in enumerate(COLUMNS) if key in wanted]
    rows = [[COLUMNS[i][1] for i in index]]
    skipped = []
    for row in summary:
        if "skipped" in row:
            skipped.append(f"  {row['method']}: skipped: {row['skipped']}")
            continue
        cells = _cells(row)
        rows.append([cells[i] for i in index])
    widths = [max(len(r[i]) for r in rows) for i in range(len(index))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines + skipped)


def write_csv(path: Path, summary: list[dict]) -> None:
    keys = ["method", "kind", "speedup", "cpu_speedup", "flop_speedup", "overhead_efficiency", "denoiser_speedup",
            "denoiser_efficiency", "psnr", "ssim", "rel_l1", "lpips", "adherence",
            "clean", "temporal_stability", "flicker", "flicker_added", "clip_text", "clip_frame", "fvd", "protocol",
            *[key for key, _ in protocol_columns(summary)],
            "peak_memory_mb", "cache_memory_mb", "gflops_per_video", "computed_min",
            "computed_max", "computed_mean", "videos", "skipped"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    for row in summary:
        writer.writerow({k: ("inf" if isinstance(row.get(k), float) and math.isinf(row[k]) else row.get(k))
                         for k in keys})
    write_text(path, buffer.getvalue(), force=True)


# -- plots ---------------------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the points no other point beats on both speedup (higher) and quality."""
    sign = 1 if higher_is_better else -1
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 >= x and sign * y2 >= sign * y) and (x2 > x or sign * y2 > sign * y)
                        for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _curve(row: dict) -> str:
    """The curve a summary row is a point of: its label without options; every ``steps:N`` is one curve."""
    return FEWER_STEPS if row.get("kind", label_kind(row["method"])) == "steps" else curve_name(row["method"])


def plot_pareto(path: Path, summary: list[dict], key: str, title: str, higher: bool, caption: str) -> bool:
    """Quality ``key`` against speedup: the points of one method or peer (the same label but for its
    ``[...]`` options, e.g. a swept threshold) joined in order of speedup, one colour per curve, diffcache's solid
    with circles and the peers' dashed with squares; the Pareto frontier of all points dotted. False when no
    method has a finite value of that metric."""
    rows = [r for r in summary if "skipped" not in r and r.get(key) is not None and math.isfinite(r[key])]
    if not rows:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    points = [(r["speedup"], r[key]) for r in rows]
    curves = list(dict.fromkeys(_curve(r) for r in summary))  # one colour per curve in every plot
    for name in curves:
        members = sorted((r for r in rows if _curve(r) == name), key=lambda r: r["speedup"])
        if not members:
            continue
        peer = members[0].get("kind", label_kind(members[0]["method"])) == "peer"
        ax.plot([r["speedup"] for r in members], [r[key] for r in members], "--" if peer else "-",
                marker="s" if peer else "o", color=f"C{curves.index(name) % 10}", lw=1.2, ms=6, zorder=3,
                label=name)
        for r in members:
            text = r["method"][len(name):] if r["method"].startswith(name + "[") else r["method"]
            ax.annotate(text, (r["speedup"], r[key]), fontsize=6, xytext=(4, 3), textcoords="offset points")
    front = pareto_front(points, higher)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], ":", color="black", lw=1.5, zorder=2,
            label="Pareto frontier")
    ax.axvline(1.0, color="grey", lw=0.5)
    ax.set_xlabel("speedup vs uncached (interleaved wall-clock)")
    ax.set_ylabel(title + ("" if higher else " (lower is better)"))
    ax.set_title(caption + "; solid, circles: diffcache; dashed, squares: peers (their own code)", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    with atomic_path(path, force=True) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True


# -- the figure of merit: our speedup at a peer point's quality ----------------------------------------------------
#: the speeds the figure of merit is taken for: (summary key, name in the reports)
RATIO_SPEEDS = (("cpu_speedup", "CPU-time speedup"), ("flop_speedup", "FLOP speedup"))
OUR_KINDS_EXCLUDED = ("peer", "baseline", "steps")  #: every other kind (methods, compositions, tuned presets) is ours


def peer_ratios(summary: list[dict], speed: str = "flop_speedup") -> dict:
    """The figure of merit of issue 20 for one speed (a summary key: ``"flop_speedup"``, ``"cpu_speedup"``).

    For each peer point P (a row of kind ``peer`` with a PSNR and that speed), the best of our points at
    ``PSNR >= P's PSNR``: the one with the highest ratio ``our speed ÷ P's speed``; ours is every row whose kind
    is not peer, baseline or steps. Returns ``{"speed", "points": [{"peer", "peer_psnr", "peer_speedup",
    "ours", "ours_psnr", "ours_speedup", "ratio"}], "figure", "worst_matched", "unmatched"}``: ``ours``/``ratio``
    are ``None`` for a peer point that no point of ours reaches; ``worst_matched`` is the smallest ratio over
    the peer points that have one; ``figure`` is the smallest over all peer points, ``None`` when some peer
    point is unmatched (listed in ``unmatched``) or there is no peer point."""
    def usable(row):
        return ("skipped" not in row and row.get("psnr") is not None and row.get(speed) is not None
                and not math.isnan(row["psnr"]))

    kind = lambda row: row.get("kind") or label_kind(row["method"])  # noqa: E731
    peers = [r for r in summary if usable(r) and kind(r) == "peer"]
    ours = [r for r in summary if usable(r) and kind(r) not in OUR_KINDS_EXCLUDED]
    points = []
    for p in peers:
        reach = [o for o in ours if o["psnr"] >= p["psnr"]]
        best = max(reach, key=lambda o: o[speed], default=None)
        point = {"peer": p["method"], "peer_psnr": p["psnr"], "peer_speedup": p[speed], "ours": None,
                 "ours_psnr": None, "ours_speedup": None, "ratio": None}
        if best is not None:
            point.update(ours=best["method"], ours_psnr=best["psnr"], ours_speedup=best[speed],
                         ratio=best[speed] / max(p[speed], 1e-12))
        points.append(point)
    matched = [pt["ratio"] for pt in points if pt["ratio"] is not None]
    unmatched = [pt["peer"] for pt in points if pt["ratio"] is None]
    return {"speed": speed, "points": points, "worst_matched": min(matched, default=None),
            "figure": min(matched) if matched and not unmatched else None, "unmatched": unmatched}


RATIO_HEADER = ("peer point", "its PSNR (dB)", "its {speed}", "our best point at ≥ that PSNR", "its PSNR (dB)",
                "its {speed}", "ratio")


def _ratio_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    name = dict(RATIO_SPEEDS)[result["speed"]]
    header = [h.format(speed=name) for h in RATIO_HEADER]
    rows = []
    for pt in result["points"]:
        ours = ([pt["ours"], _fmt(pt["ours_psnr"], "psnr"), _fmt(pt["ours_speedup"], "speedup"),
                 _fmt(pt["ratio"], "speedup")] if pt["ours"] is not None else ["none", "", "", "none"])
        rows.append([pt["peer"], _fmt(pt["peer_psnr"], "psnr"), _fmt(pt["peer_speedup"], "speedup"), *ours])
    return header, rows


def figure_text(result: dict) -> str:
    """One line: the figure of merit for one speed, or why there is none."""
    name = dict(RATIO_SPEEDS)[result["speed"]]
    if not result["points"]:
        return f"figure of merit ({name}): none (no peer point with a PSNR and a {name})"
    if result["figure"] is not None:
        return (f"figure of merit ({name}): {_fmt(result['figure'], 'speedup')}, the worst ratio of our best "
                f"speedup to a peer's at its PSNR or better, over {len(result['points'])} peer points")
    worst = result["worst_matched"]
    return (f"figure of merit ({name}): none: {len(result['unmatched'])} of {len(result['points'])} peer points "
            f"have no point of ours at their PSNR or better ({', '.join(result['unmatched'])})"
            + (f"; worst ratio over the others: {_fmt(worst, 'speedup')}" if worst is not None else ""))


def ratio_markdown(results: list[dict]) -> str:
    """The figure-of-merit tables (one per speed), in Markdown."""
    parts = []
    for result in results:
        header, rows = _ratio_rows(result)
        lines = ["| " + " | ".join(header) + " |", "|---|---:|---:|---|---:|---:|---:|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        parts.append(f"**{figure_text(result)}**\n\n" + "\n".join(lines))
    return "\n\n".join(parts)


def ratio_terminal(results: list[dict]) -> str:
    """The figure-of-merit tables (one per speed), aligned for the terminal."""
    parts = []
    for result in results:
        header, rows = _ratio_rows(result)
        table = [header] + rows
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) if i in (0, 3) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in table]
        lines.insert(1, "-" * len(lines[0]))
        parts.append(figure_text(result) + "\n" + "\n".join(lines))
    return "\n\n".join(parts)


def ratio_html(results: list[dict]) -> str:
    """The figure-of-merit tables (one per speed), as HTML."""
    e = html.escape
    parts = []
    for result in results:
        header, rows = _ratio_rows(result)
        parts.append(f"<p><b>{e(figure_text(result))}</b></p><table><tr>"
                     + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"
                     + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
                     + "</table>")
    return "\n".join(parts)


def write_ratios(out: Path, results: list[dict]) -> None:
    """``peer-ratios.json`` (every result as :func:`peer_ratios` returns it, ∞ as ``"inf"``) and
    ``peer-ratios.csv`` (one line per speed and peer point)."""
    write_text(out / "peer-ratios.json", json.dumps(_encode({r["speed"]: r for r in results}), indent=1,
                                                    allow_nan=False) + "\n", force=True)
    keys = ["speed", "peer", "peer_psnr", "peer_speedup", "ours", "ours_psnr", "ours_speedup", "ratio", "figure"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    for result in results:
        for pt in result["points"]:
            writer.writerow(_encode({"speed": result["speed"], **pt, "figure": result["figure"]}))
    write_text(out / "peer-ratios.csv", buffer.getvalue(), force=True)


def plot_timeline(path: Path, records: list[dict], labels: list[str], caption: str) -> bool:
    """Per method and step, averaged over the items: left, the fraction of block forwards run (× active tokens)
    from the method's own report; right, denoiser FLOPs of the step ÷ the uncached step's (every method, peers
    too)."""
    labels = [label for label in labels if any(label in r["methods"] for r in records)]
    if not labels:
        return False
    width = max(max(len(r["methods"][label]["flops_per_forward"]) for r in records if label in r["methods"])
                for label in labels)
    base = [r["methods"][BASELINE] for r in records if BASELINE in r["methods"]]
    per_step_forwards = max(1, len(base[0]["flops_per_forward"]) // base[0]["steps_run"]) if base else 1
    steps_axis = width // per_step_forwards
    reported = np.full((len(labels), steps_axis), np.nan)
    measured = np.full((len(labels), steps_axis), np.nan)
    step_cost = (sum(base[0]["flops_per_forward"]) / base[0]["steps_run"]) if base else 1
    for i, label in enumerate(labels):
        rows = [r["methods"][label] for r in records if label in r["methods"]]
        fl = [np.add.reduceat(np.asarray(row["flops_per_forward"], float),
                              np.arange(0, len(row["flops_per_forward"]), per_step_forwards)) for row in rows]
        n = min(len(f) for f in fl)
        measured[i, :n] = np.mean([f[:n] for f in fl], axis=0) / max(step_cost, 1)
        if label == BASELINE or label.startswith("steps:"):
            reported[i, :n] = 1.0
        elif all(row.get("step_compute") for row in rows):
            m = min(len(row["step_compute"]) for row in rows)
            reported[i, :m] = np.mean([row["step_compute"][:m] for row in rows], axis=0)
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(labels) + 1.8), dpi=110, sharey=True)
    for ax, data, title in ((axes[0], reported, "method's report: block forwards run (× active tokens)"),
                            (axes[1], measured, "measured: denoiser FLOPs per step ÷ uncached step")):
        image = ax.imshow(np.ma.masked_invalid(data), aspect="auto", cmap="viridis", vmin=0, vmax=1,
                          interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=7)
        ax.set_facecolor("#dddddd")
    fig.colorbar(image, ax=axes, fraction=0.025, pad=0.01, label="fraction computed")
    fig.suptitle(caption + "  (grey: not reported / no step)", fontsize=9)
    with atomic_path(path, force=True) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return True


# -- HTML ----------------------------------------------------------------------------------------------------------
#: records in the page whether every image and clip loaded (read by the browser test)
LOAD_CHECK = """<script>
window.addEventListener("load", function () {
  var media = Array.prototype.slice.call(document.querySelectorAll("img, video"));
  var bad = media.filter(function (m) {
    return m.tagName === "IMG" ? !(m.complete && m.naturalWidth > 0) : m.readyState < 2;
  }).map(function (m) { return m.getAttribute("src"); });
  var out = document.getElementById("load-check");
  out.setAttribute("data-total", media.length);
  out.setAttribute("data-failed", bad.length);
  out.textContent = bad.length ? "not loaded: " + bad.join(", ") : "all " + media.length + " images loaded";
});
</script>"""


def write_html(path: Path, config: dict, summary: list[dict], records: list[dict], labels: list[str],
               plots: list[str], notes: list[str], ratios: list[dict] | None = None) -> None:
    e = html.escape
    by_method = {row["method"]: row for row in summary}
    runnable = [label for label in labels if "skipped" not in by_method.get(label, {"skipped": 1})]
    head = "".join(f"<th>{e(label)}</th>" for label in runnable)
    body = []
    for record in sorted(records, key=lambda r: r["item"]):
        cells = []
        for label in runnable:
            row = record["methods"].get(label)
            if row is None or "clip" not in row:
                cells.append("<td>–</td>")
                continue
            p = number(row["psnr"])
            caption = "reference" if label == BASELINE else f"PSNR {'∞' if math.isinf(p) else f'{p:.1f}'} dB"
            if row.get("computed_steps") is not None:
                caption += f", {row['computed_steps']}/{row['steps_run']} steps"
            cells.append(f"<td><img src='{e(row['clip'])}' alt='{e(label)}' width=128 height=128>"
                         f"<br><small>{e(caption)}</small></td>")
        image = f"<br><small>image {e(Path(record['image']).name)}</small>" if record.get("image") else ""
        body.append(f"<tr><th class=prompt>{e(record['prompt'])}<br><small>seed {record['seed']}</small>{image}</th>"
                    + "".join(cells) + "</tr>")
    shown = columns(summary)
    table = "\n".join(
        "<tr>" + "".join(f"<td>{e(c)}</td>" for c in _cells(row, shown)[: 2 if "skipped" in row else None]) + "</tr>"
        for row in summary)
    header = "".join(f"<th>{e(t)}</th>" for _, t in shown)
    images = "\n".join(f"<figure><img src='{e(p)}' alt='{e(p)}'><figcaption>{e(p)}</figcaption></figure>"
                       for p in plots)
    ratio_section = ""
    if ratios and any(r["points"] for r in ratios):
        ratio_section = ("<h2>Against the peers: our speedup at each peer point's PSNR</h2>\n<p>For each peer "
                         "point, our best point (diffcache's methods, compositions, tuned presets) at that PSNR or "
                         "better, and the ratio of the speedups; the figure of merit is the worst ratio.</p>\n"
                         + ratio_html(ratios))
    described = (f"{config['model']}: {len(records)} videos ({config['steps']} steps, guidance "
                 f"{config['guidance']:g}, cfg {config.get('cfg_mode') or 'default'}), {config['repeats']} "
                 "interleaved timed repeats per method and video.")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>diffcache bench — {e(config['model'])}</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}
td,th{{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right;font-size:13px}}
td:first-child,th.prompt{{text-align:left}}.gallery td{{text-align:center}}
.gallery img{{image-rendering:pixelated;background:#000}}figure{{display:inline-block;margin:0 1em 1em 0}}
figure img{{max-width:600px}}</style></head><body>
<h1>diffcache bench — {e(config['model'])}</h1>
<p>{e(described)} Speedup: total uncached wall-clock time ÷ total method time in the same process; CPU-time
speedup: the same with the process's CPU time (immune to other processes on a shared machine). FLOP speedup: denoiser
FLOPs (torch.utils.flop_counter) of the uncached run ÷ the method's. Overhead efficiency = speedup ÷ FLOP speedup.
Quality against the uncached video of the same prompt and seed.</p>
<ul>{''.join(f'<li>{e(n)}</li>' for n in notes)}</ul>
<h2>Summary</h2>
<table><tr>{header}</tr>
{table}
</table>
{ratio_section}
<h2>Quality against speed, and where each method computed</h2>
{images}
<h2>Side by side</h2>
<table class=gallery><tr><th class=prompt>prompt</th>{head}</tr>
{''.join(body)}
</table>
<p id="load-check" data-total="-1" data-failed="-1">checking images…</p>
{LOAD_CHECK}
</body></html>
"""
    write_text(path, page, force=True)


def write_reports(out: Path, config: dict, records: list[dict], labels: list[str], notes: list[str]) -> dict:
    """Every report file from the finished records as stored (:func:`.store.stored_records`); returns
    ``{"summary": rows, "table": terminal text, "html": path, ...}``."""
    out = Path(out)
    summary = summarize(records, labels)
    ratios = [peer_ratios(summary, speed) for speed, _ in RATIO_SPEEDS]
    has_peers = any(r["points"] for r in ratios)
    write_csv(out / "summary.csv", summary)
    write_ratios(out, ratios)
    write_text(out / "summary.md", markdown_table(summary) + ("\n\n" + ratio_markdown(ratios) if has_peers else "")
               + "\n", force=True)
    caption = f"{config['model']}: {len(records)} videos, {config['steps']} steps"
    plots = []
    for key, title, higher in METRICS:
        name = f"pareto-{key}.png"
        if plot_pareto(out / name, summary, key, title, higher, caption):
            plots.append(name)
        else:
            (out / name).unlink(missing_ok=True)
    if plot_timeline(out / "timeline.png", records, labels, caption):
        plots.append("timeline.png")
    write_html(out / "index.html", config, summary, records, labels, plots, notes, ratios)
    table = terminal_table(summary) + ("\n\n" + ratio_terminal(ratios) if has_peers else "")
    return {"summary": summary, "table": table, "ratios": ratios, "html": out / "index.html",
            "csv": out / "summary.csv", "markdown": out / "summary.md", "plots": [out / p for p in plots]}

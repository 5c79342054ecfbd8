"""The figure of merit of docs/results/frontier.md from a finished benchmark folder: for each peer point, our best
speedup at its PSNR or better, divided by its speedup (:func:`diffcache.bench.report.peer_ratios`), taken twice:

* over **every point of ours** in the run, swept thresholds included (their values were chosen by looking at the
  benchmark's prompts, so this reading flatters us);
* over **our points chosen without the benchmark's prompts**: default presets, the compositions of default presets
  and the presets ``diffcache tune`` wrote from its own calibration prompts (labels without ``[...]`` options).

Run from the repository root, after the benchmark of that page:

    PYTHONPATH=src python docs/experiments/frontier_ratios.py out/frontier
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffcache.bench.report import RATIO_SPEEDS, figure_text, peer_ratios, ratio_markdown, summarize
from diffcache.bench.specs import label_kind
from diffcache.bench.store import stored_records
from diffcache.files import read_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the benchmark folder (its config.json and results.jsonl)")
    args = parser.parse_args()
    out = Path(args.out)
    config = read_json(out / "config.json", "benchmark configuration")
    labels = config["methods"]
    records = stored_records(out, {f"{i:04d}" for i in range(len(config["prompts"]) * config["seeds"])})
    summary = summarize(records, labels)
    chosen_off_bench = [row for row in summary if label_kind(row["method"]) == "peer" or "[" not in row["method"]]
    for title, rows in (("every point of ours", summary),
                        ("our points chosen without the benchmark's prompts", chosen_off_bench)):
        results = [peer_ratios(rows, speed) for speed, _ in RATIO_SPEEDS]
        print(f"## {title} ({len(records)} videos)\n")
        for result in results:
            print(figure_text(result) + "\n")
        print(ratio_markdown(results) + "\n")


if __name__ == "__main__":
    main()

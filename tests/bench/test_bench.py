"""The benchmark: method specs and their errors, metrics on known tensors, FLOP and memory counting, the sweep's
results file (resume after an interruption, torn lines, a different configuration refused), the merge across
processes (simulated ranks, and a real 2-process run under accelerate, slow), skipped rows with reasons, the
reports, and the HTML page loaded in headless Chromium."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from diffcache.quality import protocols as metrics
from diffcache.bench.benchmark import Distributed, benchmark
from diffcache.bench.measure import DenoiserTimer, measure_cost, tensor_bytes
from diffcache.bench.peers import PEERS, ActivePeer, PeerInfo
from diffcache.bench.report import markdown_table, pareto_front, summarize
from diffcache.bench.specs import DEFAULT_METHODS, MethodSpec, parse_methods
from diffcache.bench.store import RESULTS, append_record, merge_parts, read_records
from diffcache.errors import BenchConfigError, ConfigError, CorruptRecordWarning
from diffcache.cli import main
from diffcache import UnknownMethodError, list_methods
from diffcache.embedded import shapes

FAST = dict(num_prompts=2, steps=3, repeats=1, progress=False)


# -- specs ---------------------------------------------------------------------------------------------------------
def test_method_specs():
    specs = parse_methods("adacache:fast,adacache, adacache:slow-moreg[moreg_norm=0.24;metric_blocks=(1,2)]")
    assert [s.label for s in specs] == ["none", "adacache:fast", "adacache:fast-moreg",
                                        "adacache:slow-moreg[moreg_norm=0.24;metric_blocks=(1, 2)]"]
    assert dict(specs[3].overrides) == {"moreg_norm": 0.24, "metric_blocks": (1, 2)}
    assert parse_methods("adacache:fast,none")[0] == MethodSpec("none")  # the reference always runs first
    peer = parse_methods("diffusers-fbcache[threshold=0.1]")[1]
    assert peer.kind == "peer" and dict(peer.overrides) == {"threshold": 0.1}


def test_ours_and_peers_come_from_the_registries():
    labels = [s.label for s in parse_methods("ours,peers")]
    assert labels[0] == "none"
    for info in list_methods():  # whatever is registered, at its default preset: never a hard-coded list
        assert f"{info.name}:{info.default_preset}" in labels
    assert {"diffusers-pab", "diffusers-fastercache", "diffusers-fbcache", "diffusers-taylorseer",
            "diffusers-magcache", "cachedit-dbcache"} <= set(labels)
    default = [s.label for s in parse_methods(DEFAULT_METHODS)]  # `diffcache bench` without --methods
    assert default == ["none", *(f"{i.name}:{i.default_preset}" for i in list_methods()), "diffusers-pab",
                       "diffusers-magcache"]


@pytest.mark.parametrize("text,match", [
    ("adacash", "accepted: none; steps:N; diffcache methods: adacache.*peers: diffusers-pab"),
    ("adacache:fastest", "presets: fast, slow"),
    ("none:fast", "takes no preset"),
    ("diffusers-pab:fast", "has no presets"),
    ("adacache:fast[speed]", "option=value"),
    ("adacache:fast[thresholds=1]", "no option 'thresholds'"),
    ("adacache:fast[codebook=((0.2,1),(0.1,2))]", "strictly increasing"),
    ("adacache:fast,adacache:fast", "listed twice"),
])
def test_unknown_method_or_preset_lists_the_valid_ones(text, match):
    with pytest.raises((UnknownMethodError, ValueError), match=match):
        parse_methods(text)


def test_the_light_name_lists_are_the_registry_and_the_peers():
    """bench.names holds the names without importing torch: they must be the registry's and the peers' exactly."""
    from diffcache.bench import names

    assert names.METHOD_NAMES == tuple(info.name for info in list_methods())
    assert names.PEER_NAMES == tuple(PEERS)


@pytest.mark.parametrize("text", ["nope", "none,nope", "adacache:fast,nope:x", "fbcache+nope", "peers,nope[a=1]",
                                  "ours,adacache[codebook=((0.1,1),(0.2,2))],nope"])
def test_the_light_name_check_refuses_what_the_parser_refuses(text):
    from diffcache.bench.names import check_names

    with pytest.raises(UnknownMethodError, match="unknown method 'nope'") as light:
        check_names(text)
    with pytest.raises(UnknownMethodError, match="unknown method 'nope'") as full:
        parse_methods(text)
    if "+" not in text:  # (a composition's parts are parsed one by one: the same name, a shorter list)
        assert str(light.value) == str(full.value)


@pytest.mark.parametrize("text", ["none,adacache:fast,steps:15,diffusers-pab", "ours,peers", "peer-curves",
                                  "teacache:tiny-shapes-t2v+cfg-cache:default", "fbcache[threshold=0.1|0.2]",
                                  "adacache:fast[metric_blocks=(1,2)]", DEFAULT_METHODS])
def test_the_light_name_check_passes_what_the_parser_takes(text):
    from diffcache.bench.names import check_names

    parse_methods(text)
    check_names(text)


# -- metrics -------------------------------------------------------------------------------------------------------
def test_metrics_on_known_tensors():
    rng = np.random.default_rng(0)
    video = rng.random((2, 16, 16, 3))
    assert metrics.psnr(video, video) == math.inf  # identical: inf, not a crash
    assert metrics.relative_l1(video, video) == 0.0 and metrics.ssim(video, video) == pytest.approx(1.0)
    assert metrics.psnr(np.full((1, 4, 4, 3), 0.1), np.zeros((1, 4, 4, 3))) == pytest.approx(20.0)
    assert metrics.relative_l1(np.full((1, 2, 2, 3), 0.3), np.full((1, 2, 2, 3), 0.2)) == pytest.approx(0.5)
    flat = np.full((1, 16, 16, 3), 0.2)  # a constant offset: luminance term only
    assert metrics.ssim(flat + 0.2, flat) == pytest.approx((2 * 0.4 * 0.2 + 1e-4) / (0.16 + 0.04 + 1e-4))
    assert metrics.ssim(rng.random((1, 16, 16, 3)), video[:1]) < 0.2


def test_infinite_psnr_survives_json_and_tables(tmp_path):
    row = {"seconds": [1.0], "flops": 10, "flops_per_forward": [5, 5], "peak_memory_bytes": 0, "steps_run": 1,
           "memory_measure": "x", "cache_bytes": None, "psnr": math.inf, "ssim": 1.0, "rel_l1": 0.0}
    append_record(tmp_path / RESULTS, {"item": "0000", "methods": {"none": row}, "skipped": {}})
    text = (tmp_path / RESULTS).read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    summary = summarize(read_records(tmp_path / RESULTS), ["none"])
    assert summary[0]["psnr"] == math.inf and "| ∞ |" in markdown_table(summary)


def test_pareto_front():
    points = [(1.0, 40.0), (1.5, 35.0), (1.4, 30.0), (2.0, 20.0), (2.0, 25.0)]
    assert pareto_front(points, higher_is_better=True) == [0, 1, 4]
    assert pareto_front([(1.0, 0.1), (2.0, 0.05)], higher_is_better=False) == [1]


# -- FLOPs and memory ----------------------------------------------------------------------------------------------
def test_flops_count_matmuls_and_cpu_attention():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(8, 4, bias=False)

        def forward(self, x):
            q = self.linear(x).view(1, 1, 3, 4)
            return torch.nn.functional.scaled_dot_product_attention(q, q, q)

    net = Net()
    _, cost = measure_cost(net, lambda: [net(torch.ones(3, 8)) for _ in range(2)])
    # linear 2·3·8·4 = 192; attention: QK^T 2·3·3·4 = 72 and AV 72
    assert cost.flops_per_forward == [192 + 144, 192 + 144]
    assert cost.peak_memory_bytes >= 3 * 4 * 4  # at least the output tensor


def test_cache_bytes_walk_state_but_not_weights():
    class State:
        def __init__(self):
            self.cache = {"a": torch.zeros(10), "b": [torch.zeros(5, dtype=torch.float64)]}
            self.view = self.cache["a"][:5]  # same storage: counted once
            self.model = torch.nn.Linear(100, 100)  # weights are not cache

    assert tensor_bytes(State()) == 10 * 4 + 5 * 8


# -- the sweep -----------------------------------------------------------------------------------------------------
def test_denoiser_timer_counts_the_forwards_only():
    class Slow(torch.nn.Module):
        def forward(self, x):
            time.sleep(0.02)
            return x

    model = Slow()
    with DenoiserTimer([model]) as inside:
        model(torch.zeros(1))
        time.sleep(0.05)  # outside the forward: not counted
        model(torch.zeros(1))
    assert 0.04 <= inside.seconds < 0.09
    assert not model._forward_pre_hooks and not model._forward_hooks  # removed on exit
    model(torch.zeros(1))
    assert inside.seconds < 0.09


def test_records_without_denoiser_time_summarize_without_it():
    row = {"seconds": [1.0], "flops": 10, "flops_per_forward": [10], "peak_memory_bytes": 0, "steps_run": 1,
           "memory_measure": "x", "cache_bytes": None}
    summary = summarize([{"item": "0000", "methods": {"none": row}, "skipped": {}}], ["none"])
    assert summary[0]["denoiser_speedup"] is None and summary[0]["denoiser_efficiency"] is None
    assert "| 1.000 | – | – |" in markdown_table(summary)


def test_bench_prompts_cover_the_grammar():
    pairs = shapes.prompts(16, spread=True, seeded=True)
    assert [seed for _, seed in pairs] == list(range(16))
    assert {p.split()[1] for p, _ in pairs} == {"red", "green", "blue", "yellow", "white"}
    assert {p.split()[-1] for p, _ in pairs} == {"left", "right", "up", "down"}


def _crashing_peer(pipe, setup, options) -> ActivePeer:
    """A peer whose hook raises inside the denoiser's forward, as a third-party cache can on a model it mishandles."""

    def crash(module, args):
        raise IndexError("list index out of range")

    hook = pipe.transformer.register_forward_pre_hook(crash)
    return ActivePeer(hook.remove)


def test_bench_end_to_end_with_skipped_rows(shipped_pipe, tmp_path, monkeypatch):
    monkeypatch.setitem(PEERS, "crashing-peer", PeerInfo("crashing-peer", "raises in the forward", _crashing_peer))
    reports = benchmark(methods="crashing-peer,adacache:fast,adacache:slow,steps:2,teacache:cogvideox-2b,hsa:hsa-25",
                        out=tmp_path, pipe=shipped_pipe, **FAST)
    assert not shipped_pipe.transformer._forward_pre_hooks  # the crashed peer was disabled
    rows = {r["method"]: r for r in reports["summary"]}
    records = read_records(tmp_path / RESULTS)
    none, fast, slow = rows["none"], rows["adacache:fast"], rows["adacache:slow"]
    assert none["psnr"] == math.inf and none["flop_speedup"] == 1.0 and none["computed_mean"] == 3
    total = lambda label, key: sum(sum(r["methods"][label][key]) for r in records)  # noqa: E731
    assert none["cpu_speedup"] == 1.0
    assert fast["cpu_speedup"] == pytest.approx(total("none", "cpu_seconds") / total("adacache:fast", "cpu_seconds"))
    assert fast["speedup"] == pytest.approx(total("none", "seconds") / total("adacache:fast", "seconds"))
    # the time inside the denoiser's forwards, per timed run: part of the call, and its ratio in the summary
    for r in records:
        for row in r["methods"].values():
            assert len(row["denoiser_seconds"]) == len(row["seconds"])
            assert all(0 < inside < call for inside, call in zip(row["denoiser_seconds"], row["seconds"]))
    assert none["denoiser_speedup"] == 1.0 and none["denoiser_efficiency"] == 1.0
    assert fast["denoiser_speedup"] == pytest.approx(total("none", "denoiser_seconds")
                                                     / total("adacache:fast", "denoiser_seconds"))
    assert fast["denoiser_efficiency"] == pytest.approx(fast["denoiser_speedup"] / fast["flop_speedup"])
    assert fast["computed_mean"] <= slow["computed_mean"] <= 3 and fast["flop_speedup"] >= 1.0
    assert rows["steps:2"]["flop_speedup"] == pytest.approx(1.5) and rows["steps:2"]["computed_mean"] == 2
    # a method the model cannot take, and a peer that crashes mid-run: skipped rows with the reason, not a crash
    assert "Wan model" in rows["teacache:cogvideox-2b"]["skipped"]
    crashed = ("crashing-peer failed on TinyShapesT2VPipeline (cfg_mode=default): IndexError: list index out of "
               "range")
    assert rows["crashing-peer"]["skipped"] == crashed
    assert "cannot reach runtime=0.25 at T=3" in rows["hsa:hsa-25"]["skipped"]  # refused at step 0: a row, not a crash
    assert len(records) == 2 and all(len(r["methods"]["none"]["seconds"]) == 1 for r in records)
    assert all(r["skipped"]["crashing-peer"] == crashed for r in records)  # found on the first item, kept
    assert "teacache:cogvideox-2b" in records[0]["skipped"]
    with open(tmp_path / "summary.csv", newline="") as handle:
        assert [row["method"] for row in csv.DictReader(handle)] == list(rows)
    assert (tmp_path / "summary.md").read_text() == markdown_table(reports["summary"]) + "\n"
    assert all("| denoiser speedup | denoiser eff. |" in text for text in (
        markdown_table(reports["summary"]), (tmp_path / "summary.md").read_text()))
    assert "denoiser eff." in reports["table"] and "<th>denoiser eff.</th>" in (tmp_path / "index.html").read_text()
    with open(tmp_path / "summary.csv", newline="") as handle:
        assert float(next(csv.DictReader(handle))["denoiser_efficiency"]) == 1.0
    from diffcache.quality.lpips import lpips_unavailable_reason

    lpips = lpips_unavailable_reason() is None
    plots = ["pareto-psnr.png", "pareto-ssim.png", "pareto-rel_l1.png", *(["pareto-lpips.png"] * lpips),
             "pareto-adherence.png", "timeline.png"]
    assert [p.name for p in reports["plots"]] == plots
    assert all((tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in plots)
    clips = [row["clip"] for r in records for row in r["methods"].values()]
    assert len(clips) == 2 * 4 and all((tmp_path / c).exists() for c in clips)
    page = (tmp_path / "index.html").read_text()
    assert all(f"src='{c}'" in page for c in clips) and f"skipped: {crashed}" in page
    assert "skipped: TeaCache preset" in reports["table"]


def test_resume_after_an_interruption(shipped_pipe, tmp_path):
    seen = []

    def stop_after_first(item):
        seen.append(item.key)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        benchmark(methods="steps:1", out=tmp_path, pipe=shipped_pipe, after_item=stop_after_first, **FAST)
    assert [r["item"] for r in read_records(tmp_path / RESULTS)] == ["0000"]
    with open(tmp_path / RESULTS, "a") as handle:  # a kill in the middle of writing the next line
        handle.write('{"item": "0001", "methods": {"no')
    done = []
    with pytest.warns(CorruptRecordWarning, match=r"line 2 is not a readable record \(cut short"):
        reports = benchmark(methods="steps:1", out=tmp_path, pipe=shipped_pipe,
                            after_item=lambda i: done.append(i.key), **FAST)
    assert done == ["0001"]  # the finished item was not redone; the torn line was moved aside and recomputed
    assert (tmp_path / (RESULTS + ".corrupt")).read_text() == '{"item": "0001", "methods": {"no\n'
    assert [r["item"] for r in read_records(tmp_path / RESULTS)] == ["0000", "0001"]
    assert all(json.loads(line) for line in (tmp_path / RESULTS).read_text().splitlines())
    assert len(reports["records"]) == 2
    again = []
    benchmark(methods="steps:1", out=tmp_path, pipe=shipped_pipe, after_item=lambda i: again.append(i), **FAST)
    assert again == []  # everything finished: nothing rerun, reports rewritten
    forced = []
    benchmark(methods="steps:1", out=tmp_path, pipe=shipped_pipe, force=True,
              after_item=lambda i: forced.append(i.key), **FAST)
    assert forced == ["0000", "0001"]


def test_a_different_configuration_is_refused(shipped_pipe, tmp_path, capsys):
    benchmark(methods="steps:2", out=tmp_path, pipe=shipped_pipe, **{**FAST, "num_prompts": 1})
    with pytest.raises(BenchConfigError, match="different configuration.*steps: folder has 3, this run 4"):
        benchmark(methods="steps:2", out=tmp_path, pipe=shipped_pipe, **{**FAST, "num_prompts": 1, "steps": 4})
    other = tmp_path / "other"
    other.mkdir()
    (other / "index.html").write_text("keep me")  # e.g. an earlier `diffcache demo`
    with pytest.raises(BenchConfigError, match="already holds index.html"):
        benchmark(methods="steps:2", out=other, pipe=shipped_pipe, **{**FAST, "num_prompts": 1})
    assert (other / "index.html").read_text() == "keep me"
    assert main(["bench", "--methods", "adacache:fastest", "--out", str(tmp_path)]) == 2
    assert "presets: fast" in capsys.readouterr().err
    assert main(["bench", "--prompts", "0", "--out", str(tmp_path)]) == 2
    assert "--prompts must be at least 1" in capsys.readouterr().err


def test_every_number_names_its_protocol_and_flicker_is_in_the_table(shipped_pipe, tmp_path):
    """--protocol: the first protocol gives the main columns, each other one its own; the records, notes, tables
    and CSV say which protocol each number is; VBench's flicker is a column. A different protocol list is another
    configuration of the folder."""
    from diffcache.quality.protocols import score
    from diffcache.quality.temporal import temporal_flickering

    reports = benchmark(methods="teacache", out=tmp_path, pipe=shipped_pipe, protocols="skimage;videosys",
                        **{**FAST, "num_prompts": 1, "steps": 6})
    row = reports["records"][0]["methods"]["teacache:auto"]
    assert row["protocol"] == "skimage" and set(row["by_protocol"]) == {"skimage", "videosys"}
    assert row["psnr"] == row["by_protocol"]["skimage"]["psnr"] != row["by_protocol"]["videosys"]["psnr"]
    summary = {r["method"]: r for r in reports["summary"]}
    assert summary["teacache:auto"]["psnr@videosys"] == pytest.approx(row["by_protocol"]["videosys"]["psnr"])
    assert "psnr@skimage" not in summary["teacache:auto"]  # the first protocol is the main columns
    assert summary["none"]["flicker"] == pytest.approx(row["flicker"] + row["flicker_added"])
    markdown = (tmp_path / "summary.md").read_text()
    assert "| PSNR (dB) [videosys] |" in markdown and "| flicker |" in markdown and "flicker" in reports["table"]
    with open(tmp_path / "summary.csv", newline="") as handle:
        first = next(csv.DictReader(handle))
    assert first["protocol"] == "skimage" and "psnr@videosys" in first and first["flicker"]
    # the checker's clean verdict is its own column beside adherence: per video, then the share of clean videos
    assert row["clean"] in (0.0, 1.0) and float(first["clean"]) in (0.0, 1.0)
    assert "| clean |" in markdown and "clean" in reports["table"]
    page = (tmp_path / "index.html").read_text()
    assert "quality protocol skimage (the PSNR, SSIM and LPIPS columns): frames=uint8" in page
    assert "quality protocol videosys: frames=mp4" in page
    with pytest.raises(BenchConfigError, match="different configuration.*protocols"):
        benchmark(methods="teacache", out=tmp_path, pipe=shipped_pipe, **{**FAST, "num_prompts": 1, "steps": 6})
    with pytest.raises(ConfigError, match="unknown protocol 'vbench'"):
        benchmark(methods="teacache", out=tmp_path / "x", pipe=shipped_pipe, protocols="vbench", **FAST)
    assert not (tmp_path / "x").exists()


@pytest.mark.filterwarnings("ignore:Matrix is singular")  # 2 items of 6 features: a rank-1 covariance
def test_learned_metrics_named_by_the_environment_are_benchmark_columns(shipped_pipe, tmp_path, monkeypatch):
    """DIFFCACHE_CLIP_MODEL / DIFFCACHE_FVD_DETECTOR (stand-in weights built here): CLIP text and frame scores per
    video, I3D features per video and each method's FVD against the uncached videos; without them no such column."""
    from learned_standins import make_clip_folder, make_detector_file

    from diffcache.quality.learned import frechet_distance

    (tmp_path / "clip").mkdir()
    monkeypatch.setenv("DIFFCACHE_CLIP_MODEL", str(make_clip_folder(tmp_path / "clip")))
    monkeypatch.setenv("DIFFCACHE_FVD_DETECTOR", str(make_detector_file(tmp_path / "i3d.pt")))
    reports = benchmark(methods="steps:2", out=tmp_path / "run", pipe=shipped_pipe, **FAST)
    summary = {r["method"]: r for r in reports["summary"]}
    rows = [r["methods"]["steps:2"] for r in reports["records"]]
    none = [r["methods"]["none"] for r in reports["records"]]
    assert all(row["clip_text"] is not None and row["clip_frame"] is not None for row in rows)
    assert summary["none"]["clip_frame"] == pytest.approx(100.0)  # every frame against itself
    assert summary["steps:2"]["fvd"] == pytest.approx(frechet_distance(
        np.array([row["fvd_features"] for row in rows]), np.array([row["fvd_features"] for row in none])))
    assert abs(summary["none"]["fvd"]) < 1e-6 < summary["steps:2"]["fvd"]
    assert "| CLIP text | CLIP frame | FVD |" in (tmp_path / "run" / "summary.md").read_text()
    assert "learned metrics (weights named by the environment)" in (tmp_path / "run" / "index.html").read_text()
    monkeypatch.delenv("DIFFCACHE_CLIP_MODEL")
    monkeypatch.delenv("DIFFCACHE_FVD_DETECTOR")
    plain = benchmark(methods="steps:2", out=tmp_path / "plain", pipe=shipped_pipe, **FAST)
    assert "FVD" not in (tmp_path / "plain" / "summary.md").read_text() and plain["summary"][0]["fvd"] is None


def test_merge_across_processes(shipped_pipe, tmp_path):
    """Two ranks (run one after the other here) split the items; rank 0 merges their parts."""
    kwargs = dict(methods="steps:1", out=tmp_path, pipe=shipped_pipe, **{**FAST, "num_prompts": 3})
    assert benchmark(dist=Distributed(rank=1, world=2), **kwargs) is None  # rank 1 writes its part only
    part = read_records(tmp_path / "parts" / "rank-1.jsonl")
    assert [r["item"] for r in part] == ["0001"] and not (tmp_path / RESULTS).exists()
    reports = benchmark(dist=Distributed(rank=0, world=2), **kwargs)
    assert sorted(r["item"] for r in read_records(tmp_path / RESULTS)) == ["0000", "0001", "0002"]
    assert {r["rank"] for r in reports["records"]} == {0, 1}
    assert not (tmp_path / "parts").exists()
    assert merge_parts(tmp_path) == 0


@pytest.mark.slow
def test_two_cpu_processes_under_accelerate(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    accelerate = Path(sys.executable).parent / "accelerate"
    proc = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "-m", "diffcache.cli",
                           "bench", "--methods", "steps:2,adacache:fast", "--prompts", "2", "--steps", "4",
                           "--repeats", "1", "--no-progress", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_records(tmp_path / RESULTS)
    assert sorted(r["item"] for r in records) == ["0000", "0001"] and {r["rank"] for r in records} == {0, 1}
    assert proc.stdout.count("report:") == 1  # rank 0 reports


# -- the HTML report in a real browser -----------------------------------------------------------------------------
def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _loaded(page: Path) -> tuple[int, int, str]:
    dom = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                          "--virtual-time-budget=10000", "--dump-dom", page.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    import re

    match = re.search(r'id="load-check" data-total="(-?\d+)" data-failed="(-?\d+)">([^<]*)<', dom)
    assert match, dom[-2000:]
    return int(match.group(1)), int(match.group(2)), match.group(3)


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (.ci/run installs Debian's chromium)")
def test_html_report_loads_every_image_in_chromium(shipped_pipe, tmp_path):
    benchmark(methods="fbcache,steps:2", out=tmp_path, pipe=shipped_pipe, **FAST)
    total, failed, text = _loaded(tmp_path / "index.html")
    # 2 prompts × 3 columns of clips, plus the Pareto plots and the timeline
    assert total >= 2 * 3 + 2 and failed == 0, text
    (tmp_path / "clips" / "0000" / "steps_2.gif").unlink()  # the check does catch a missing clip
    total, failed, text = _loaded(tmp_path / "index.html")
    assert failed == 1 and "steps_2.gif" in text


def test_bench_a_pipeline_folder_with_prompts(tmp_path, capsys):
    """`--model DIR` takes any supported diffusers pipeline; prompts come from --prompt; no checker there."""
    import tiny_diffusers

    tiny_diffusers.tiny_wan_pipeline().save_pretrained(tmp_path / "wan")
    out = tmp_path / "bench"
    args = ["bench", "--model", str(tmp_path / "wan"), "--methods", "steps:1,fbcache,diffusers-taylorseer",
            "--steps", "3", "--repeats", "1", "--height", "16", "--width", "16", "--frames", "5", "--no-progress"]
    assert main(args + ["--out", str(out)]) == 2
    assert "give its prompts with --prompt" in capsys.readouterr().err
    assert main(args + ["--prompt", "a cat surfing", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "diffusers-taylorseer" in printed and f"report: {out / 'index.html'}" in printed
    record = read_records(out / RESULTS)[0]
    assert record["methods"]["none"]["frames"] == 5 and record["methods"]["none"]["adherence"] is None
    assert record["methods"]["diffusers-taylorseer"]["hooked_modules"] == 2 * 2  # attn1 and attn2 of 2 blocks


def test_a_still_image_is_a_one_frame_video():
    from types import SimpleNamespace

    from diffcache.bench.sweep import output_frames, quality

    image = np.random.default_rng(0).random((2, 8, 8, 3))
    assert output_frames(SimpleNamespace(images=image)).shape == (1, 8, 8, 3)
    assert output_frames(SimpleNamespace(frames=image[None])).shape == (2, 8, 8, 3)
    still = image[:1]
    assert quality(still, still)["temporal_stability"] is None


def test_timeline_comes_from_the_generic_report():
    from diffcache.bench.sweep import report_timeline
    from diffcache.report import CallReport, Report, StepRecord

    steps = [StepRecord(0, True, ["cond"], 5, 0), StepRecord(1, False, ["cond"], 0, 5),
             StepRecord(2, True, ["cond"], 1, 4), StepRecord(3, True, ["cond"], 5, 0, active_fraction=0.25),
             StepRecord(4, True, ["cond"], 5, 0, values={"active_fraction": 0.5})]
    report = Report("m", {}, [CallReport(0, 5, steps)])
    assert report_timeline(report) == {"computed_steps": 4, "step_compute": [1.0, 0.0, 0.2, 0.25, 0.5]}

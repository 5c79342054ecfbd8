"""Peer curves and the figure of merit: the ``--methods`` sweep syntax (``NAME[option=a|b|c]``) and
``peer-curves``, the ratio of our speedup to each peer point's at its PSNR (worked example), the Pareto plot with
curves, the ratio tables in the reports, and diffusers' SeaCache peer on tiny-shapes-t2v."""

import json
import math
import types

import numpy as np
import pytest
import torch

from diffcache import UnknownMethodError
from diffcache.bench.peers import PEER_CURVES, PEERS, PeerUnavailable, Setup, _wan_noisy_latents
from diffcache.bench.report import (figure_text, peer_ratios, plot_pareto, ratio_markdown, ratio_terminal,
                                    write_ratios)
from diffcache.bench.specs import curve_name, expand_sweep, label_kind, parse_methods


# -- the sweep syntax ----------------------------------------------------------------------------------------------
def test_a_swept_option_expands_to_one_entry_per_value():
    assert expand_sweep("fbcache[threshold=0.05|0.1|0.15]") == [
        "fbcache[threshold=0.05]", "fbcache[threshold=0.1]", "fbcache[threshold=0.15]"]
    assert expand_sweep("adacache:fast[threshold=0.1]") == ["adacache:fast[threshold=0.1]"]  # nothing swept
    assert expand_sweep("none") == ["none"]


def test_sweep_values_may_be_tuples_and_strings_and_combine():
    assert expand_sweep("adacache:fast[metric_blocks=(1,2)|(2,3);threshold=0.1|0.2]") == [
        "adacache:fast[metric_blocks=(1,2);threshold=0.1]", "adacache:fast[metric_blocks=(1,2);threshold=0.2]",
        "adacache:fast[metric_blocks=(2,3);threshold=0.1]", "adacache:fast[metric_blocks=(2,3);threshold=0.2]"]
    assert expand_sweep('m[mode="a|b"|"c"]') == ['m[mode="a|b"]', 'm[mode="c"]']  # a '|' in quotes is the value's
    assert expand_sweep("m[x=[1,2]|[3]]") == ["m[x=[1,2]]", "m[x=[3]]"]
    assert expand_sweep("a[t=1|2]+b[u=3|4]") == ["a[t=1]+b[u=3]", "a[t=1]+b[u=4]", "a[t=2]+b[u=3]",
                                                 "a[t=2]+b[u=4]"]  # a composition's parts sweep too


@pytest.mark.parametrize("text", ["fbcache[threshold=0.1|]", "fbcache[threshold=|0.1]",
                                  "fbcache[threshold=0.1||0.2]", "fbcache[threshold=0.1| ]"])
def test_an_empty_alternative_is_refused(text):
    with pytest.raises(UnknownMethodError, match="option 'threshold' has an empty alternative"):
        parse_methods(text)


def test_parse_methods_sweeps_ours_and_peers():
    specs = parse_methods("fbcache[threshold=0.05|0.1],diffusers-fbcache[threshold=0.1|0.2]")
    assert [s.label for s in specs] == ["none", "fbcache:default[threshold=0.05]", "fbcache:default[threshold=0.1]",
                                        "diffusers-fbcache[threshold=0.1]", "diffusers-fbcache[threshold=0.2]"]
    assert [dict(s.overrides)["threshold"] for s in specs[1:]] == [0.05, 0.1, 0.1, 0.2]
    with pytest.raises(UnknownMethodError, match="listed twice: diffusers-fbcache"):
        parse_methods("diffusers-fbcache[threshold=0.1|0.1]")
    with pytest.raises(UnknownMethodError, match="not of the form"):
        parse_methods("fbcache[threshold]")


def test_peer_curves_sweep_every_peers_main_knob():
    specs = parse_methods("none,peer-curves")
    peers = [s for s in specs if s.kind == "peer"]
    assert {s.name for s in peers} == set(PEERS) == set(PEER_CURVES)
    for name, info in PEERS.items():
        values = [dict(s.overrides)[info.knob] for s in peers if s.name == name]
        assert values == list(info.curve) and len(set(values)) >= 3, name


def test_curve_name_and_kind_of_a_label():
    assert curve_name("diffusers-fbcache[threshold=0.1]") == "diffusers-fbcache"
    assert curve_name("adacache:fast[metric_blocks=[1,2];threshold=0.1]") == "adacache:fast"
    assert curve_name("teacache:auto+cfg-cache:default[x=1]") == "teacache:auto+cfg-cache:default"
    assert [label_kind(x) for x in ("none", "steps:15", "diffusers-magcache[threshold=0.1]", "teacache:my.json",
                                    "teacache:auto+cfg-cache:default")] == [
        "baseline", "steps", "peer", "method", "method"]


# -- the figure of merit -------------------------------------------------------------------------------------------
def _row(method, psnr, flop, cpu=None):
    return {"method": method, "psnr": psnr, "flop_speedup": flop, "cpu_speedup": cpu, "speedup": cpu or flop}


WORKED = [
    _row("none", math.inf, 1.0, 1.0),
    _row("steps:15", 20.0, 2.0, 2.0),            # not ours: never the best point
    _row("teacache:fast", 30.0, 2.5, 2.2),
    _row("fbcache:default[threshold=0.1]", 40.0, 1.8, 1.6),
    _row("teacache:auto+cfg-cache:default", 35.0, 2.2, 2.4),  # a composition counts as ours
    _row("diffusers-magcache[threshold=0.06]", 38.0, 1.5, 1.2),
    _row("diffusers-fbcache[threshold=0.2]", 28.0, 2.0, 1.9),
    _row("diffusers-seacache[threshold=0.1]", 45.0, 1.2, 1.1),  # above every PSNR of ours
    {"method": "cachedit-dbcache", "skipped": "not installed"},
]


def test_peer_ratios_worked_example():
    flops = peer_ratios(WORKED, "flop_speedup")
    by_peer = {p["peer"]: p for p in flops["points"]}
    assert list(by_peer) == ["diffusers-magcache[threshold=0.06]", "diffusers-fbcache[threshold=0.2]",
                             "diffusers-seacache[threshold=0.1]"]  # the skipped peer is no point
    # MagCache at 38 dB: ours at >= 38 dB is fbcache (40 dB, 1.8x) only -> 1.8 / 1.5
    assert by_peer["diffusers-magcache[threshold=0.06]"]["ours"] == "fbcache:default[threshold=0.1]"
    assert by_peer["diffusers-magcache[threshold=0.06]"]["ratio"] == pytest.approx(1.2)
    # FBCache at 28 dB: teacache (2.5x) beats the composition (2.2x) and fbcache (1.8x); steps:15 is not ours
    assert by_peer["diffusers-fbcache[threshold=0.2]"]["ours"] == "teacache:fast"
    assert by_peer["diffusers-fbcache[threshold=0.2]"]["ratio"] == pytest.approx(1.25)
    assert by_peer["diffusers-seacache[threshold=0.1]"]["ours"] is None  # nothing of ours reaches 45 dB
    assert flops["unmatched"] == ["diffusers-seacache[threshold=0.1]"]
    assert flops["figure"] is None and flops["worst_matched"] == pytest.approx(1.2)
    # CPU time: at 28 dB the composition (2.4x) is best
    cpu = peer_ratios(WORKED[:-2], "cpu_speedup")
    assert {p["peer"]: p["ours"] for p in cpu["points"]}["diffusers-fbcache[threshold=0.2]"] == \
        "teacache:auto+cfg-cache:default"
    assert cpu["figure"] == pytest.approx(min(1.6 / 1.2, 2.4 / 1.9)) and cpu["unmatched"] == []


def test_equal_psnr_counts_and_an_identical_peer_needs_an_identical_point():
    rows = [_row("diffusers-fbcache[threshold=0.05]", math.inf, 0.98), _row("teacache:slow", math.inf, 1.0),
            _row("pab:default", 30.0, 3.0)]
    result = peer_ratios(rows, "flop_speedup")
    assert result["points"][0]["ours"] == "teacache:slow" and result["figure"] == pytest.approx(1 / 0.98)
    assert peer_ratios([_row("pab:default", 30.0, 3.0)], "flop_speedup") == {
        "speed": "flop_speedup", "points": [], "worst_matched": None, "figure": None, "unmatched": []}


def test_ratio_tables_and_files(tmp_path):
    results = [peer_ratios(WORKED, "cpu_speedup"), peer_ratios(WORKED, "flop_speedup")]
    md = ratio_markdown(results)
    assert "| diffusers-seacache[threshold=0.1] | 45.00 | 1.20× | none |  |  | none |" in md
    assert "| diffusers-magcache[threshold=0.06] | 38.00 | 1.50× | fbcache:default[threshold=0.1] | 40.00 | 1.80× | " \
           "1.20× |" in md
    assert "figure of merit (FLOP speedup): none: 1 of 3 peer points" in md
    assert "worst ratio over the others: 1.20×" in md
    assert "our best point at ≥ that PSNR" in ratio_terminal(results)
    assert figure_text(peer_ratios(WORKED[:-2], "flop_speedup")).startswith("figure of merit (FLOP speedup): 1.20×")
    write_ratios(tmp_path, results)
    stored = json.loads((tmp_path / "peer-ratios.json").read_text())
    assert stored["flop_speedup"]["unmatched"] == ["diffusers-seacache[threshold=0.1]"]
    assert stored["cpu_speedup"]["points"][0]["peer_psnr"] == 38.0
    lines = (tmp_path / "peer-ratios.csv").read_text().splitlines()
    assert lines[0] == "speed,peer,peer_psnr,peer_speedup,ours,ours_psnr,ours_speedup,ratio,figure"
    assert len(lines) == 1 + 6


def test_pareto_plot_draws_curves(tmp_path, monkeypatch):
    drawn = []
    import matplotlib.axes

    original = matplotlib.axes.Axes.plot

    def spy(self, *args, **kwargs):
        drawn.append((kwargs.get("label"), list(args[0]), args[2] if len(args) > 2 else None))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    summary = [dict(r, ssim=0.9) for r in WORKED[:-1]] + [WORKED[-1]]
    summary.insert(3, dict(_row("teacache:fast[threshold=0.3]", 25.0, 3.0, 2.9), ssim=0.8))
    assert plot_pareto(tmp_path / "p.png", summary, "psnr", "PSNR (dB)", True, "test")
    assert (tmp_path / "p.png").stat().st_size > 1000
    lines = {label: (xs, style) for label, xs, style in drawn}
    assert lines["teacache:fast"] == ([2.2, 2.9], "-")  # two points of one curve, in order of speedup, solid
    assert lines["diffusers-magcache"][1] == "--"  # peers dashed
    assert "Pareto frontier" in lines and "cachedit-dbcache" not in lines


# -- SeaCache ------------------------------------------------------------------------------------------------------
def test_seacache_runs_on_tiny_shapes_t2v(shipped_pipe):
    """diffusers' SeaCache through enable_cache on the embedded Wan model: threshold 0 computes every step (the
    video is the uncached one), a large threshold skips steps; no fail-open warning."""
    computed = []
    handle = shipped_pipe.transformer.blocks[-1].attn1.register_forward_pre_hook(lambda *a: computed.append(1))

    def generate(prompt, seed, steps=6):
        return shipped_pipe(prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
                            output_type="np").frames[0]

    try:
        reference = generate("a red circle moving left", 0)
        full = len(computed)
        results = {}
        for threshold in (0.0, 1.0):
            computed.clear()
            active = PEERS["diffusers-seacache"].enable(shipped_pipe, Setup(6, None, generate), {"threshold": threshold})
            try:
                video = generate("a red circle moving left", 0)
            finally:
                active.disable()
            assert active.hooked_modules == len(shipped_pipe.transformer.blocks)
            assert not active.notes.get("fail_open")
            results[threshold] = (len(computed), float(np.abs(video - reference).max()))
    finally:
        handle.remove()
    assert not shipped_pipe.transformer.is_cache_enabled
    assert results[0.0] == (full, 0.0)
    assert results[1.0][0] < full and results[1.0][1] > 0


def test_seacache_refuses_a_model_without_an_adapter_and_reads_wan_i2v_latents():
    class Other(torch.nn.Module):
        def enable_cache(self, config):
            raise AssertionError("not reached")

    with pytest.raises(PeerUnavailable, match="adapter it has for Wan and Cosmos 3 only, not Other"):
        PEERS["diffusers-seacache"].enable(types.SimpleNamespace(transformer=Other()), None, {})
    module = types.SimpleNamespace(config=types.SimpleNamespace(out_channels=2))
    latents = _wan_noisy_latents(module, (), {"hidden_states": torch.arange(2 * 5 * 3).reshape(2, 5, 3, 1, 1)})
    assert [tuple(x.shape) for x in latents] == [(2, 3, 1, 1)] * 2  # the image condition's channels left out
    assert latents[1][0, 0, 0, 0] == 15
    assert _wan_noisy_latents(module, (torch.zeros(2, 3),), {}) is None

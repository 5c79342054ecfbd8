"""``diffcache.tune`` without a model: the target, the 1-D search, the frontier, the calibration items, the knob
table, and the preset files every method loads (``MethodConfig.from_preset``)."""

import dataclasses
import json
from dataclasses import dataclass

import pytest

from diffcache.bench.prompts import default_prompts
from diffcache.errors import ConfigError, TuneError, UnknownMethodError, UnknownOptionError
from diffcache.methods import list_methods
from diffcache.methods.fbcache import FBCacheConfig
from diffcache.methods.framework import MethodConfig
from diffcache.methods.pab import PABConfig
from diffcache.methods.teacache import TeaCacheConfig
from diffcache.tune import (CALIBRATION_SEED, KNOBS, Search, Target, calibration_items, choose, frontier, knobs_for,
                            overlapping_items, parse_method, search_monotone)


def test_targets_and_their_errors():
    assert Target.of(min_psnr=35) == Target("min_psnr", 35.0) and Target.of(speedup=2).kind == "speedup"
    for kwargs, match in [({}, "exactly one target"), ({"min_psnr": 30, "speedup": 2}, "exactly one target"),
                          ({"min_psnr": 0}, "above 0"), ({"min_psnr": float("inf")}, "finite"),
                          ({"speedup": 1}, "above 1"), ({"speedup": -3}, "above 1")]:
        with pytest.raises(TuneError, match=match):
            Target.of(**kwargs)
    quality = Target.of(min_psnr=30)
    assert quality.met({"psnr": 30, "flop_speedup": 1}) and not quality.met({"error": "refused"})


@pytest.mark.parametrize("kind,boundary", [("log", 0.3), ("int", 7)])
def test_search_finds_the_boundary_of_a_monotone_knob(kind, boundary):
    feasible = lambda value: value <= boundary  # noqa: E731 - larger values reuse more and lose quality
    low, high, start = (0.01, 1.0, 0.1) if kind == "log" else (1, 12, 2)
    tried = search_monotone(feasible, start, low, high, kind, faster=+1, toward=+1, refine=4)
    best = max(v for v in tried if feasible(v))
    assert best == boundary if kind == "int" else boundary / 2 ** (1 / 8) <= best <= boundary
    assert len(tried) <= 10
    # toward the accurate end (a speed target): from a start above the boundary down to it
    back = search_monotone(lambda v: v >= boundary, start if kind == "int" else 0.9, low, high, kind, faster=+1,
                           toward=-1, refine=4)
    assert min(v for v in back if v >= boundary) <= (boundary if kind == "int" else boundary * 2 ** (1 / 8))
    # a knob where smaller is faster (HSA's runtime), and a target no value meets
    assert min(search_monotone(lambda v: v >= 0.5, 0.9, 0.2, 1.0, "log", faster=-1, toward=+1)) >= 0.45
    assert min(search_monotone(lambda v: False, start, low, high, kind, 1, 1)) == low  # walked to the accurate end


def test_choice_is_on_the_frontier_and_the_objective_decides():
    points = [{"key": str(i), "flop_speedup": s, "psnr": p} for i, (s, p) in
              enumerate([(1.0, 100), (1.5, 40), (2.0, 34), (2.0, 36), (3.0, 25), (1.2, 30)])]
    front = frontier(points)
    assert [(e["flop_speedup"], e["psnr"]) for e in front] == [(3.0, 25), (2.0, 36), (1.5, 40), (1.0, 100)]
    fastest = choose(points, Target.of(min_psnr=35))
    accurate = choose(points, Target.of(speedup=1.4))
    assert (fastest["flop_speedup"], fastest["psnr"]) == (2.0, 36) and accurate["psnr"] == 40
    assert fastest in front and accurate in front
    assert choose(points, Target.of(speedup=4)) is None


def test_coordinate_search_counts_each_point_once():
    from diffcache.tune import Knob, Part

    calls = []

    def evaluate(point):
        calls.append(json.dumps(point, sort_keys=True))
        t = point["fbcache"]["threshold"]
        return {"flop_speedup": 1 + t, "psnr": 50 - 40 * t + (2 if point["fbcache"]["forecast"] == "linear" else 0)}

    knobs = [Knob("forecast", "choice", values=("none", "linear"), grid=True), Knob("threshold", "log", 0.01, 1.0)]
    part = Part("fbcache", "default", FBCacheConfig, knobs, {"forecast": "none", "threshold": 0.1}, None)
    search = Search([part], Target.of(min_psnr=35), evaluate, max_evaluations=30)
    evaluations = search.run()
    assert len(calls) == len(set(calls)) == len(evaluations) <= 30
    best = choose(evaluations, Target.of(min_psnr=35))
    assert best["psnr"] >= 35 and best["psnr"] < 37  # the linear forecast buys a larger threshold
    assert len(Search([part], Target.of(min_psnr=35), evaluate, max_evaluations=3).run()) == 3  # the budget holds


def test_calibration_items_are_not_the_benchmarks():
    class Video:  # only the class name matters to the prompt kind
        pass

    Video.__name__ = "TinyShapesT2VPipeline"
    for count in (1, 2, 4, 8, 16):
        items = calibration_items("tiny-shapes-t2v", Video(), count)
        bench = set(zip(default_prompts("tiny-shapes-t2v", Video(), count), range(count)))
        assert len(items) == count and not set(items) & bench
        assert [seed for _, seed in items] == list(range(CALIBRATION_SEED, CALIBRATION_SEED + count))
        if count <= 8:  # at few prompts the prompts themselves differ too (half a spread step apart)
            assert not {p for p, _ in items} & {p for p, _ in bench}
    assert calibration_items("x", None, 3, ["a cat"]) == [("a cat", CALIBRATION_SEED)]
    with pytest.raises(TuneError, match="--prompt"):
        calibration_items("./my-pipeline", None, 3)
    document = {"tuned_on": {"prompts": ["a red circle moving left"], "seeds": [1000]}}
    assert overlapping_items(document, [("a red circle moving left", 1000), ("a red circle moving left", 0)]) == [
        ("a red circle moving left", 1000)]


def test_knob_table_names_real_fields_and_optional_ones_only_when_present():
    registered = {info.name: info.config_class for info in list_methods()}
    for name, knobs in KNOBS.items():
        if name not in registered:  # a method another version adds (easycache)
            continue
        fields = {f.name for f in dataclasses.fields(registered[name])}
        for knob in knobs_for(name, registered[name]):
            assert set(knob.required_fields()) <= fields, (name, knob.name)
    assert [k.name for k in knobs_for("fbcache", FBCacheConfig)] == (
        ["forecast", "threshold"] if "forecast" in {f.name for f in dataclasses.fields(FBCacheConfig)}
        else ["threshold"])

    @dataclass
    class WithForecast(MethodConfig):
        threshold: float = 0.1
        forecast: str = "none"

    assert [k.name for k in knobs_for("fbcache", WithForecast)] == ["forecast", "threshold"]
    assert [k.name for k in knobs_for("pab", PABConfig)] == ["self_range", "temporal_range", "cross_range"]


def test_parse_method():
    assert parse_method("fbcache") == [("fbcache", None)]
    assert parse_method("adacache:slow") == [("adacache", "slow")]
    assert parse_method("teacache+fbcache") == [("teacache", None), ("fbcache", None)]
    with pytest.raises(UnknownMethodError, match="unknown method"):
        parse_method("nope")
    with pytest.raises(TuneError, match="unknown preset"):
        parse_method("fbcache:nope")
    with pytest.raises(TuneError, match="twice"):
        parse_method("fbcache+fbcache")


# -- preset files: every method loads them --------------------------------------------------------------------------
def _write(path, document):
    path.write_text(json.dumps(document))
    return str(path)


def test_every_method_loads_a_tuned_preset_file(tmp_path):
    for info in list_methods():
        cls = info.config_class
        path = _write(tmp_path / f"{info.name}.json", {"method": info.name, "preset": cls.DEFAULT_PRESET,
                                                        "options": {}, "target": {"min_psnr": 30}})
        config = cls.from_preset(path)
        assert isinstance(config, cls) and config.preset == path
        base = cls.from_preset(None)
        assert {k: v for k, v in config.to_dict().items() if k != "preset"} == {
            k: v for k, v in base.to_dict().items() if k != "preset"}


def test_tuned_preset_options_overrides_and_refusals(tmp_path):
    path = _write(tmp_path / "fb.json", {"method": "fbcache", "preset": "fast", "options": {"threshold": 0.123}})
    assert FBCacheConfig.from_preset(path).threshold == 0.123
    assert FBCacheConfig.from_preset(path, threshold=0.2).threshold == 0.2  # overrides win
    pab = _write(tmp_path / "pab.json", {"method": "pab", "preset": "default", "options": {"window": [50, 900]}})
    assert PABConfig.from_preset(pab).window == (50, 900)  # JSON lists become the config's tuples
    with pytest.raises(ConfigError, match="is for fbcache, not pab.*--methods fbcache:"):
        PABConfig.from_preset(path)
    composed = _write(tmp_path / "both.json", {"method": "teacache+fbcache", "configs": {}})
    with pytest.raises(ConfigError, match="load_preset"):
        FBCacheConfig.from_preset(composed)
    unknown = _write(tmp_path / "unknown.json", {"method": "fbcache", "preset": "default", "options": {"speed": 1}})
    with pytest.raises(UnknownOptionError, match="no option 'speed'"):
        FBCacheConfig.from_preset(unknown)
    for document, match in [({"method": "fbcache"}, "no 'options'"), ([1, 2], "no JSON object"),
                            ({"method": "fbcache", "preset": "nope", "options": {}}, "base preset 'nope'")]:
        with pytest.raises(ConfigError, match=match):
            FBCacheConfig.from_preset(_write(tmp_path / "bad.json", document))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        FBCacheConfig.from_preset(str(tmp_path / "broken.json"))
    with pytest.raises(UnknownMethodError, match="does not exist"):
        FBCacheConfig.from_preset(str(tmp_path / "missing.json"))


def test_teacache_reads_both_its_calibration_files_and_tuned_presets(tmp_path):
    calibrated = _write(tmp_path / "cal.json", {"method": "teacache", "model": "tiny-shapes-t2v",
                                                "coefficients": [1.0, 0.0], "threshold": 0.05})
    assert TeaCacheConfig.from_preset(calibrated).coefficients == (1.0, 0.0)
    tuned = _write(tmp_path / "tuned.json", {"method": "teacache", "preset": "tiny-shapes-t2v",
                                             "options": {"threshold": 0.071}})
    config = TeaCacheConfig.from_preset(tuned)
    assert config.threshold == 0.071 and config.model == "tiny-shapes-t2v" and config.preset == tuned
    with pytest.raises(ConfigError, match="not a TeaCache preset"):
        TeaCacheConfig.from_preset(_write(tmp_path / "fb.json", {"method": "fbcache", "options": {}}))


def test_commands_show_diffcaches_warnings_as_one_line(capsys):
    import warnings

    from diffcache.cli._common import one_line_warnings
    from diffcache.errors import CalibrationOverlapWarning

    with one_line_warnings("bench"):
        warnings.warn("fbcache:x.json was tuned on 1 of these 2 items", CalibrationOverlapWarning)
    assert capsys.readouterr().err == "diffcache bench: warning: fbcache:x.json was tuned on 1 of these 2 items\n"

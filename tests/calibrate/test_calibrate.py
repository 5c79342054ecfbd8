"""``diffcache.calibrate``: the registry, the AdaCache (MoReg normaliser) calibration and ``diffcache calibrate``'s
errors. TeaCache's fit and its command are tested in test_baselines.py."""

import json

import pytest

from diffcache.calibrate import CALIBRATORS, calibrate, calibrator
from diffcache.calibrate.moreg import DEFAULT_QUANTILE, calibrate_moreg_norm
from diffcache.cli import main
from diffcache.errors import CalibrationError, UnknownMethodError
from diffcache.methods import list_methods
from diffcache.methods.adacache import AdaCacheConfig


def test_every_calibrator_is_a_registered_method_and_loads():
    registered = {info.name for info in list_methods()}
    assert set(CALIBRATORS) == {"teacache", "adacache"} and set(CALIBRATORS) <= registered
    for entry in CALIBRATORS.values():
        assert callable(entry.load())
    with pytest.raises(UnknownMethodError, match="can be calibrated: teacache, adacache"):
        calibrator("pab")


def test_moreg_norm_is_a_quantile_of_the_motion_scores(shipped_pipe):
    prompts = ["a red circle moving left", "a blue square moving up"]
    median = calibrate_moreg_norm(shipped_pipe, prompts, num_inference_steps=8, quantile=0.5)
    high = calibrate_moreg_norm(shipped_pipe, prompts, num_inference_steps=8, quantile=1.0)
    assert 0 < median <= high < 1  # motion scores lie in [0, 1] by construction
    with pytest.raises(CalibrationError, match="quantile must be in"):
        calibrate_moreg_norm(shipped_pipe, prompts, quantile=0)


def test_calibrate_adacache_command_writes_the_normaliser(tmp_path, capsys):
    out = tmp_path / "moreg.json"
    assert main(["calibrate", "adacache", "--prompts", "2", "--steps", "8", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["method"] == "adacache" and data["model"] == "tiny-shapes-t2v"
    assert data["fit"] == {"quantile": DEFAULT_QUANTILE, "prompts": 2, "steps": 8, "guidance": 5.0}
    assert 0 < data["moreg_norm"] < 1 and data["use"] == f"adacache:fast-moreg[moreg_norm={data['moreg_norm']:.4g}]"
    AdaCacheConfig.from_preset("fast-moreg", moreg_norm=data["moreg_norm"])  # a usable value
    text = capsys.readouterr().out
    assert "moreg_norm" in text and str(out) in text
    assert main(["calibrate", "adacache", "--prompts", "2", "--steps", "8", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err  # no silent overwrite


def test_calibrate_refuses_bad_arguments_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", "pab", "--out", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2 and "choose from teacache, adacache" in capsys.readouterr().err.replace("'", "")
    assert main(["calibrate", "adacache", "--out", str(tmp_path / "x.txt")]) == 2
    assert "must end in .json" in capsys.readouterr().err
    assert main(["calibrate", "teacache", "--steps", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
    with pytest.raises(CalibrationError, match="--prompt"):
        calibrate("teacache", tmp_path / "x.json", model="./some-wan-pipeline")
    assert not list(tmp_path.iterdir())

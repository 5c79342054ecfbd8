"""Cache memory: the bytes :func:`diffcache.memory.cache_bytes` computes from a family's shapes equal, exactly, the
peak bytes a method's runtime held during a real call (``CallReport.peak_cache_bytes``, each storage once), for
every method × a tiny real pipeline of Wan (split CFG), LTX-Video and Mochi (batched CFG), HunyuanVideo (true CFG,
split), CogVideoX (batched) and Stable Diffusion (a U-Net, DeepCache); and the ``diffcache memory`` command."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from tiny_diffusers import TINY_PIPELINES

import diffcache
from diffcache.cli import main
from diffcache.errors import UnsupportedModelError
from diffcache.memory import MODELS, ModelSpec, cache_bytes, family_shapes, measured_cache_bytes, model_spec

STEPS = 10
#: pixel size of each tiny pipeline's call (tests/tiny_diffusers.py, tests/tiny_families/)
SIZES = {"Wan": (32, 32, 5), "LTX-Video": (32, 32, 9), "HunyuanVideo": (32, 32, 9), "Mochi": (16, 16, 7),
         "CogVideoX": (16, 16, 9), "Stable Diffusion U-Net": (32, 32, 1)}
TEXT_TOKENS = {"HunyuanVideo": 16, "Mochi": 16}  # the tiny calls' max_sequence_length
#: options that let a method run at all on the tiny models (TeaCache has no published coefficients for them; HSA
#: needs a reachable runtime at 10 steps)
OPTIONS = {"teacache": {"coefficients": (1.0, 0.0), "threshold": 0.5}, "hsa": {"runtime": 0.9},
           "easycache": {"warmup_steps": 2, "threshold": 0.3}}
CASES = [("Wan", m) for m in ("fbcache", "teacache", "pab", "fastercache", "cfg-cache", "hsa", "adacache")] + [
    ("LTX-Video", m) for m in ("fbcache", "teacache", "pab", "fastercache", "hsa", "adacache")] + [
    ("HunyuanVideo", m) for m in ("fbcache", "teacache", "pab", "fastercache", "hsa", "adacache")] + [
    ("Mochi", m) for m in ("teacache", "pab", "fastercache", "hsa")] + [
    ("CogVideoX", m) for m in ("fbcache", "pab", "fastercache")] + [("Stable Diffusion U-Net", "deepcache")] + [
    (family, "easycache") for family in ("Wan", "LTX-Video", "HunyuanVideo", "CogVideoX")]
XFAIL: dict = {}  #: (family, method) or method → the reason a case is expected to fail (none now)
#: run by default (about a pipeline call each); every other case is slow-marked (``-m slow``)
FAST = {("Wan", "fastercache"), ("Wan", "cfg-cache"), ("Wan", "hsa"), ("LTX-Video", "teacache"), ("HunyuanVideo", "pab"),
        ("Wan", "easycache")}
_PIPES: dict = {}


def _pipe(family):
    if family not in _PIPES:
        build, call, split = TINY_PIPELINES[family]
        _PIPES[family] = (build(), call, split)
    return _PIPES[family]


def _tiny_spec(family, pipe, split) -> ModelSpec:
    """The tiny pipeline as a ModelSpec: its transformer's config and its VAE's compression."""
    denoiser = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
    spatial = next(getattr(pipe, name) for name in ("vae_scale_factor_spatial", "vae_spatial_compression_ratio",
                                                    "vae_spatial_scale_factor", "vae_scale_factor")
                   if getattr(pipe, name, None))
    temporal = next((getattr(pipe, name) for name in ("vae_scale_factor_temporal", "vae_temporal_compression_ratio",
                                                      "vae_temporal_scale_factor") if getattr(pipe, name, None)), 1)
    return ModelSpec("tiny", family, dict(denoiser.config), spatial, temporal,
                     TEXT_TOKENS.get(family, family_shapes(family).text_tokens), "split" if split else "batched")


def _params():
    for family, method in CASES:
        reason = XFAIL.get((family, method)) or XFAIL.get(method)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        if (family, method) not in FAST:
            marks.append(pytest.mark.slow)
        yield pytest.param(family, method, marks=marks, id=f"{family}-{method}")


@pytest.mark.parametrize("family,method", _params())
def test_formula_equals_measured_peak(family, method):
    pipe, call, split = _pipe(family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        handle = diffcache.enable(pipe, method, **OPTIONS.get(method, {}))
        try:
            call(pipe, STEPS)
            measured = handle.report().calls[-1].peak_cache_bytes
        finally:
            handle.disable()
    formula = cache_bytes(handle.config, _tiny_spec(family, pipe, split), *SIZES[family], dtype="fp32")
    assert measured > 0
    assert formula.total == measured, formula.parts


@pytest.mark.parametrize("method,options", [("teacache", OPTIONS["teacache"]), ("easycache", OPTIONS["easycache"]),
                                            pytest.param("fbcache", {"threshold": 0.08}, marks=pytest.mark.slow)])
def test_forecast_formula_equals_measured_peak(method, options):
    """``forecast="linear"`` keeps one more stack residual per branch, and the formula says so."""
    pipe, call, split = _pipe("Wan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        handle = diffcache.enable(pipe, method, forecast="linear", **options)
        try:
            call(pipe, STEPS)
            measured = handle.report().calls[-1].peak_cache_bytes
        finally:
            handle.disable()
    formula = cache_bytes(handle.config, _tiny_spec("Wan", pipe, split), *SIZES["Wan"], dtype="fp32")
    assert "previous computed step's stack residual (forecast)" in formula.parts
    assert formula.total == measured, formula.parts


def test_measured_bytes_count_each_storage_once_and_skip_weights():
    class Runtime:
        def __init__(self):
            self.cache = {"a": torch.zeros(10), "b": [torch.zeros(5, dtype=torch.float64)]}
            self.view = self.cache["a"][:5]  # the same storage: counted once
            self.model = torch.nn.Linear(100, 100)  # weights are no cache

    assert measured_cache_bytes(Runtime()) == 10 * 4 + 5 * 8


def test_the_issue_sizes_and_refusals():
    # Wan 2.1-14B at 720p, 81 frames: 21 × 45 × 80 = 75,600 tokens × 5,120 wide; one such bf16 tensor is 774 MB
    tokens = 21 * 45 * 80
    one = tokens * 5120 * 2
    fb = cache_bytes("fbcache", "wan2.1-14b", 720, 1280, 81)
    assert fb.total == 2 * (one + one)  # cond and uncond: the stack residual and the first block's residual each
    assert cache_bytes("fbcache", "wan2.1-14b", 720, 1280, 81, cfg="none").total == 2 * one
    assert cache_bytes("fbcache", "wan2.1-14b", 720, 1280, 81, dtype="fp32").total == 2 * fb.total
    hsa = cache_bytes("hsa", "wan2.1-14b", 720, 1280, 81)
    assert hsa.parts["keys and values of every self-attention layer"] == 2 * 2 * 40 * one
    with pytest.raises(UnsupportedModelError, match="hsa does not support CogVideoX.*token-sparse forward"):
        cache_bytes("hsa", "cogvideox-5b", 480, 720, 49)
    with pytest.raises(UnsupportedModelError, match="deepcache does not support Wan"):
        cache_bytes("deepcache", "wan2.1-1.3b", 480, 832, 81)


def test_model_from_a_local_config(tmp_path):
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps(MODELS["wan2.1-1.3b"].config))
    spec = model_spec(str(tmp_path))
    assert (spec.family, spec.vae_spatial, spec.cfg) == ("Wan", 8, "split")
    assert cache_bytes("pab", spec, 480, 832, 81).total == cache_bytes("pab", "wan2.1-1.3b", 480, 832, 81).total
    with pytest.raises(ValueError, match="neither a known model"):
        model_spec(str(tmp_path / "nothing.json"))
    (tmp_path / "odd.json").write_text(json.dumps({"_class_name": "NoSuchModel"}))
    with pytest.raises(ValueError, match="NoSuchModel.*known: "):
        model_spec(str(tmp_path / "odd.json"))


def test_memory_command(capsys):
    assert main(["memory", "--model", "wan2.1-14b", "--height", "720", "--width", "1280", "--frames", "81"]) == 0
    out = capsys.readouterr().out
    assert "75,600 tokens" in out and "fbcache" in out and "deepcache: refused" in out
    assert main(["memory", "--model", "ltx-video", "--json", "--no-cfg", "--dtype", "fp32"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["size"] == {"height": 512, "width": 704, "frames": 161} and data["cfg"] == "none"
    rows = {row["method"]: row for row in data["methods"]}
    assert rows["fbcache"]["total"] == cache_bytes("fbcache", "ltx-video", 512, 704, 161, "fp32", "none").total
    assert "refused" in rows["deepcache"]
    assert main(["memory", "--model", "no-such-model"]) == 2
    assert "neither a known model" in capsys.readouterr().err

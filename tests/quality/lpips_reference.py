"""Random LPIPS weights and image pairs made from numpy's RandomState (the same on every machine and version), and
the distances the official ``lpips`` package gives for them, recorded in ``lpips_reference.json``.

Regenerate the record in a virtual environment where ``lpips`` and torchvision import (torchvision does not import
beside the torch build the project pins), from the repository root:

    python -m venv /tmp/lpipsref && /tmp/lpipsref/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy
    /tmp/lpipsref/bin/pip install --no-deps lpips==0.1.4
    /tmp/lpipsref/bin/pip install scipy tqdm
    /tmp/lpipsref/bin/python tests/quality/lpips_reference.py

The official network is ``lpips.LPIPS(net=..., pretrained=True, pnet_rand=True)`` (its backbone untrained, so
nothing is downloaded) with the random weights below loaded into it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

RECORD = Path(__file__).with_name("lpips_reference.json")
NETS = ("alex", "vgg", "squeeze")
PAIRS, HEIGHT, WIDTH = 3, 64, 48

#: the backbone parameters of torchvision's ``features`` (name -> shape) that lpips' taps use
_CONVS = {
    "alex": [(0, 3, 64, 11), (3, 64, 192, 5), (6, 192, 384, 3), (8, 384, 256, 3), (10, 256, 256, 3)],
    "vgg": [(i, cin, cout, 3) for i, cin, cout in [
        (0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
        (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512)]],
}
_FIRES = [(3, 64, 16, 64, 64), (4, 128, 16, 64, 64), (6, 128, 32, 128, 128), (7, 256, 32, 128, 128),
          (9, 256, 48, 192, 192), (10, 384, 48, 192, 192), (11, 384, 64, 256, 256), (12, 512, 64, 256, 256)]
CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512),
            "squeeze": (64, 128, 256, 384, 384, 512, 512)}


def _backbone_shapes(net: str) -> list[tuple[str, tuple[int, ...]]]:
    convs = []
    if net in _CONVS:
        convs = [(f"features.{i}", cin, cout, k) for i, cin, cout, k in _CONVS[net]]
    else:
        convs = [("features.0", 3, 64, 3)]
        for i, cin, squeeze, e1, e3 in _FIRES:
            convs += [(f"features.{i}.squeeze", cin, squeeze, 1), (f"features.{i}.expand1x1", squeeze, e1, 1),
                      (f"features.{i}.expand3x3", squeeze, e3, 3)]
    shapes = []
    for name, cin, cout, k in convs:
        shapes += [(f"{name}.weight", (cout, cin, k, k)), (f"{name}.bias", (cout,))]
    return shapes


def random_weights(net: str, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A backbone state dict with torchvision's keys and lpips' linear layers (``lin{k}.model.1.weight``), float32,
    He-scaled normal convolutions, small normal biases, non-negative linear weights (as lpips' trained ones are)."""
    rs = np.random.RandomState(seed)
    backbone = {}
    for name, shape in _backbone_shapes(net):
        if name.endswith(".weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            value = rs.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        else:
            value = rs.standard_normal(shape) * 0.05
        backbone[name] = value.astype(np.float32)
    linear = {f"lin{k}.model.1.weight": rs.uniform(0.0, 1.0, (1, c, 1, 1)).astype(np.float32)
              for k, c in enumerate(CHANNELS[net])}
    return backbone, linear


def random_pairs(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``PAIRS`` image pairs, ``(PAIRS, HEIGHT, WIDTH, 3)`` float32 in [0, 1]: smooth random images and the same
    images with growing noise, so the distances differ from pair to pair."""
    rs = np.random.RandomState(seed)
    coarse = rs.uniform(0.0, 1.0, (PAIRS, HEIGHT // 8, WIDTH // 8, 3))
    images = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)
    noise = rs.standard_normal(images.shape) * np.array([0.05, 0.2, 0.5])[:, None, None, None]
    return images.astype(np.float32), np.clip(images + noise, 0.0, 1.0).astype(np.float32)


def official_state_dict(model_keys, backbone: dict, linear: dict) -> dict:
    """``backbone``/``linear`` under an ``lpips.LPIPS`` model's own keys (``net.sliceK.I...``, ``lin{k}...``,
    ``lins.k...``); its scaling buffers are left to the model."""
    import torch

    out = {}
    for key in model_keys:
        if match := re.match(r"^net\.slice\d+\.(\d+\..+)$", key):
            out[key] = torch.from_numpy(backbone[f"features.{match.group(1)}"])
        elif match := re.match(r"^lins?\.?(\d+)\.model\.1\.weight$", key):
            out[key] = torch.from_numpy(linear[f"lin{match.group(1)}.model.1.weight"])
    return out


def official_distances(net: str, spatial: bool = False) -> list[float]:
    """The official distances of :func:`random_pairs`; ``spatial=True``: ``lpips.LPIPS(spatial=True)``'s map
    averaged per pair, as common_metrics_on_video_quality reports it."""
    import lpips
    import torch

    model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False, spatial=spatial).eval()
    backbone, linear = random_weights(net)
    state = official_state_dict(model.state_dict().keys(), backbone, linear)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert set(missing) == {"scaling_layer.shift", "scaling_layer.scale"} and not unexpected, (missing, unexpected)
    a, b = random_pairs()
    to = lambda v: torch.from_numpy(v).permute(0, 3, 1, 2)  # noqa: E731
    with torch.no_grad():
        distances = model(to(a), to(b), normalize=True)
    return [float(d) for d in (distances.mean(dim=[1, 2, 3]) if spatial else distances.flatten())]


if __name__ == "__main__":
    import importlib.metadata

    import torch
    import torchvision

    record = {"made_with": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                            "lpips": importlib.metadata.version("lpips")},
              "pairs": PAIRS, "height": HEIGHT, "width": WIDTH,
              "distances": {net: official_distances(net) for net in NETS},
              "spatial_distances": {net: official_distances(net, spatial=True) for net in NETS}}
    RECORD.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record["distances"]))

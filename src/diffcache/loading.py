"""Finding and loading pipelines: the embedded models by name, or any diffusers pipeline by hub id or folder; folders
of diffcache's own pipeline classes through a registry of class names (:func:`register_pipeline_class`)."""

from __future__ import annotations

import importlib
import json
import os
from importlib import resources
from pathlib import Path

from .errors import ModelLoadError

EMBEDDED_MODELS: dict[str, str] = {
    "tiny-shapes-t2v": "text-to-video, a tiny Wan transformer trained on procedural shape clips (8×32×32)",
    "tiny-shapes-t2i": "text-to-image, a tiny Stable Diffusion-style U-Net trained on procedural shape images (32×32)",
}

# Text-to-image pipelines `diffcache generate` writes PNGs for (class names).
SUPPORTED_IMAGE_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "TinyShapesT2IPipeline")

# Text-to-video pipelines `diffcache generate` / `bench` run from a prompt (class names from diffusers 0.42.1, and the
# embedded models').
SUPPORTED_TEXT_TO_VIDEO_PIPELINES = (
    "WanPipeline",
    "WanVACEPipeline",  # without --image: text-to-video (its video / mask / reference images are not passed)
    "SkyReelsV2Pipeline",
    "SkyReelsV2DiffusionForcingPipeline",
    "CogVideoXPipeline",
    "LTXPipeline",
    "LTX2Pipeline",
    "HunyuanVideoPipeline",
    "HunyuanVideo15Pipeline",
    "MochiPipeline",
    "LattePipeline",
    "AllegroPipeline",
    "AnimateDiffPipeline",
    "AnimateDiffSDXLPipeline",
    "TextToVideoSDPipeline",
    "TinyShapesT2VPipeline",
    "DistilledShapesT2VPipeline",
)

# Image-to-video pipelines: `generate --image FILE` / `bench --images ...` give them a first frame (`image=`, a PIL
# image cropped and resized to the requested size, see diffcache.generation.prepare_image).
SUPPORTED_IMAGE_TO_VIDEO_PIPELINES = (
    "WanImageToVideoPipeline",
    "SkyReelsV2ImageToVideoPipeline",
    "SkyReelsV2DiffusionForcingImageToVideoPipeline",
    "CogVideoXImageToVideoPipeline",
    "LTXImageToVideoPipeline",
    "LTXConditionPipeline",
    "LTX2ImageToVideoPipeline",
    "HunyuanVideoImageToVideoPipeline",
    "HunyuanVideoFramepackPipeline",
    "HunyuanVideo15ImageToVideoPipeline",
    "StableVideoDiffusionPipeline",
    "I2VGenXLPipeline",
)

# Image-to-video pipelines that also run without a first frame (then text-to-video): LTXConditionPipeline's image
# conditions are all optional.
IMAGE_OPTIONAL_PIPELINES = ("LTXConditionPipeline",)

# Every video pipeline `diffcache generate` writes clips for.
SUPPORTED_VIDEO_PIPELINES = SUPPORTED_TEXT_TO_VIDEO_PIPELINES + SUPPORTED_IMAGE_TO_VIDEO_PIPELINES

# Pipeline classes of diffcache's own, by the class name a model_index.json records: diffusers resolves that name only
# among its own pipelines, so load_pipeline looks ours up here. A value is the class, or "module:attribute" imported on
# first use, so that loading imports none of them (nor what they import) until a folder of that class is loaded.
_PIPELINE_CLASSES: dict[str, type | str] = {
    "TinyShapesT2VPipeline": "diffcache.embedded.t2v.pipeline:TinyShapesT2VPipeline",
    "TinyShapesT2IPipeline": "diffcache.embedded.t2i.pipeline:TinyShapesT2IPipeline",
    "DistilledShapesT2VPipeline": "diffcache.distill.sampler:DistilledShapesT2VPipeline",
}


def register_pipeline_class(name: str, target: type | str) -> None:
    """Make :func:`load_pipeline` load a folder whose ``model_index.json`` names class ``name`` with ``target``: the
    pipeline class, or its import path ``"package.module:ClassName"`` (imported when such a folder is loaded)."""
    if isinstance(target, str):
        module, sep, attribute = target.partition(":")
        if not (module and sep and attribute):
            raise ValueError(f"pipeline class {name!r}: import path {target!r} is not of the form 'module:ClassName'.")
    elif not isinstance(target, type):
        raise TypeError(f"pipeline class {name!r}: expected a class or a 'module:ClassName' string, got {target!r}.")
    _PIPELINE_CLASSES[name] = target


def pipeline_class(name: str | None) -> type | None:
    """The registered pipeline class of that name (importing it on first use), or ``None`` if there is none."""
    target = _PIPELINE_CLASSES.get(name) if name is not None else None
    if isinstance(target, str):
        module, _, attribute = target.partition(":")
        target = _PIPELINE_CLASSES[name] = getattr(importlib.import_module(module), attribute)
    return target



def stored_class_name(name_or_path: str | os.PathLike) -> str | None:
    """The pipeline class an embedded model or a local pipeline folder records in its ``model_index.json``, read
    without loading anything (so a command can refuse wrong options first); ``None`` for a hub id or a folder
    without a readable ``model_index.json``."""
    name = str(name_or_path)
    try:
        path = embedded_model_path(name) if name in EMBEDDED_MODELS else Path(name).expanduser()
        return _model_index(path).get("_class_name")
    except (ModelLoadError, OSError, ValueError):
        return None


def _model_index(path: Path) -> dict:
    """The ``model_index.json`` of a pipeline folder as a dict; :class:`ModelLoadError` when it is not a JSON object."""
    try:
        data = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{path / 'model_index.json'} is not JSON ({error}); it should be the file "
                             "save_pretrained writes.") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path / 'model_index.json'} holds a {type(data).__name__}, not the JSON object "
                             "save_pretrained writes (with '_class_name' and the components).")
    return data


def _check_materialised(pipe, path) -> None:
    """Refuse a pipeline some of whose parameters have no weights (left on the meta device by diffusers when a
    component's config describes more layers than its weight file holds)."""
    import torch

    for component, module in getattr(pipe, "components", {}).items():
        if not isinstance(module, torch.nn.Module):
            continue
        missing = [n for n, p in module.named_parameters() if p.is_meta]
        if missing:
            raise ModelLoadError(f"the weights in {path} do not cover the {component} its config describes: "
                                 f"{len(missing)} parameter(s) have no weights (e.g. {missing[0]}); the config and "
                                 "the weight files must come from the same save_pretrained.")


def embedded_model_path(name: str) -> Path:
    """Folder of an embedded model's shipped weights inside the installed package."""
    if name not in EMBEDDED_MODELS:
        raise ModelLoadError(f"unknown embedded model {name!r}; embedded models: {', '.join(EMBEDDED_MODELS)}.")
    path = Path(str(resources.files("diffcache.embedded").joinpath("weights", name)))
    if not (path / "model_index.json").exists():
        raise ModelLoadError(
            f"the weights of {name!r} are missing from the package (looked in {path}); reinstall diffcache, or "
            f"train them with `diffcache train {name} --out DIR` and pass `--model DIR/model`."
        )
    return path


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def load_pipeline(name_or_path: str | os.PathLike = "tiny-shapes-t2v", **kwargs):
    """Load a pipeline: an embedded model by name (``"tiny-shapes-t2v"``), a local folder written by
    ``save_pretrained``, or a diffusers hub id (``"Wan-AI/Wan2.1-T2V-1.3B-Diffusers"``).

    Keyword arguments go to ``DiffusionPipeline.from_pretrained`` (``torch_dtype=...`` for example).
    Raises :class:`ModelLoadError` with a one-line reason when the model cannot be had — for example a hub id
    on a machine with no network.
    """
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    name = str(name_or_path)
    if name in EMBEDDED_MODELS:
        path = embedded_model_path(name)
    elif Path(name).expanduser().exists():
        path = Path(name).expanduser()
        if not (path / "model_index.json").exists():
            raise ModelLoadError(
                f"{path} is not a diffusers pipeline folder (it has no model_index.json); pass a folder written "
                f"by save_pretrained, a hub id, or one of the embedded models: {', '.join(EMBEDDED_MODELS)}."
            )
    elif _looks_like_hub_id(name):
        path = name
    else:
        raise ModelLoadError(
            f"{name!r} is neither an embedded model ({', '.join(EMBEDDED_MODELS)}), an existing folder, "
            "nor a hub id of the form 'organisation/name'."
        )
    loader = DiffusionPipeline
    if isinstance(path, Path):
        class_name = _model_index(path).get("_class_name")
        loader = pipeline_class(class_name) or DiffusionPipeline
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # hub connection warnings would bury the one-line reason
    try:
        pipe = loader.from_pretrained(str(path), **kwargs)
    except Exception as error:  # noqa: BLE001 - translated into one line for the user
        detail = " ".join(str(error).split())
        detail = detail if len(detail) <= 240 else detail[:237] + "..."
        if isinstance(path, str):
            offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
            reason = "HF_HUB_OFFLINE is set; " if offline else ""
            raise ModelLoadError(
                f"could not load {name!r} from the Hugging Face hub, and no local folder of that name exists "
                f"({reason}{type(error).__name__}: {detail}). Check the id; without network access, download "
                "the model elsewhere and pass its local folder."
            ) from error
        raise ModelLoadError(f"could not load the pipeline in {path}: {type(error).__name__}: {detail}") from error
    finally:
        diffusers_logging.set_verbosity(verbosity)
    _check_materialised(pipe, path)
    return pipe

"""Learned video metrics — CLIP score, FVD and VBench dimensions — run only on weights already on this machine.

Nothing here downloads. Each metric is given the location of its weights (an argument, or an environment variable)
and says, through its ``*_unavailable_reason`` function, what is missing when it cannot run; that sentence is what a
benchmark prints for a skipped column.

Videos are ``(frames, H, W, 3)`` arrays of floats in [0, 1]. The networks see them as 8-bit frames (``round(255 x)``),
as they would see a video read back from a file: that is how the reference implementations are fed.

- **CLIP score** (Hessel et al. 2021, CLIPScore, arXiv 2104.08718; CLIP: Radford et al. 2021, arXiv 2103.00020) in the
  form text-to-video papers report: 100 × the cosine similarity between the CLIP embedding of each frame and the
  embedding of the prompt, averaged over the frames and floored at 0 — the formula of torchmetrics' ``clip_score``
  (https://github.com/Lightning-AI/torchmetrics, ``functional/multimodal/clip_score.py``). Hessel et al.'s own
  CLIP-S is ``2.5 × max(cos, 0)`` per image; real CLIP models give positive cosines, and then the two differ only by the
  scale (×40). :func:`clip_frame_similarity` is the reference-based form: image-to-image similarity of each frame of
  a video with the same frame of its reference, on the same scale.
  Weights: a Hugging Face ``transformers`` CLIP folder (``CLIPModel`` saved with ``save_pretrained``, in safetensors)
  with its tokenizer and image processor, from ``path`` or ``$DIFFCACHE_CLIP_MODEL``.
- **FVD** (Unterthiner et al. 2018, arXiv 1812.01717): the Fréchet distance between Gaussians fitted to I3D features of
  reference and test videos, computed as StyleGAN-V does it (Skorokhodov et al. 2022, arXiv 2112.14683,
  https://github.com/universome/stylegan-v, ``src/metrics/frechet_video_distance.py`` and ``metric_utils.py``): its
  TorchScript export of the Kinetics-400 I3D (``i3d_torchscript.pt``) is called on 8-bit videos laid out
  ``[N, 3, T, H, W]`` with ``rescale=True, resize=True, return_features=True`` (the detector rescales [0, 255] to its
  own input range and resizes to 224 × 224 itself), the statistics are the mean and the population covariance of the
  features, and the distance is ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 sqrtm(S_a S_b))`` with ``scipy.linalg.sqrtm``.
  Weights: ``i3d_torchscript.pt`` from ``path`` or ``$DIFFCACHE_FVD_DETECTOR``.
- **VBench** (Huang et al. 2023, arXiv 2311.17982, https://github.com/Vchitect/VBench): the six dimensions VBench
  scores on custom videos (its ``mode='custom_input'``), run through the installed ``vbench`` package when every
  checkpoint that dimension loads is already in VBench's cache (``$VBENCH_CACHE_DIR``, default ``~/.cache/vbench``).

:data:`LEARNED_METRICS` lists the CLIP and FVD metrics for a command line or a benchmark: name, what each needs, and
why it cannot run here.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MetricInputError, VideoShapeError, WeightsError, WeightsNotFoundError

CLIP_ENV = "DIFFCACHE_CLIP_MODEL"
FVD_ENV = "DIFFCACHE_FVD_DETECTOR"

#: The keyword arguments StyleGAN-V passes to its I3D detector for FVD (``compute_fvd`` in
#: ``src/metrics/frechet_video_distance.py``), with 8-bit videos: the detector scales them to I3D's input range and
#: resizes the frames to 224 × 224 itself, and returns the 400 pre-softmax features. (The check that the TorchScript
#: port equals TensorFlow's I3D, https://github.com/universome/fvd-comparison, passes ``rescale=False,
#: resize=False`` on inputs already at 224 × 224; for real videos it points to StyleGAN-V's metric code, followed here.)
FVD_DETECTOR_KWARGS = {"rescale": True, "resize": True, "return_features": True}

_CLIP_BATCH = 32


# -- inputs ----------------------------------------------------------------------------------------------------
def _as_video(video, what: str = "video") -> np.ndarray:
    """``video`` as a float64 ``(frames, H, W, 3)`` array in [0, 1], or a :class:`MetricInputError` saying why not."""
    array = np.asarray(video)
    if array.ndim != 4 or array.shape[-1] != 3 or min(array.shape) == 0:
        raise VideoShapeError(f"{what} has shape {array.shape}; a video is a (frames, H, W, 3) array with at least "
                               "one frame")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise MetricInputError(f"{what} has dtype {array.dtype}; a video holds floats in [0, 1]")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise MetricInputError(f"{what} holds NaN or infinite values; a video holds floats in [0, 1]")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise MetricInputError(f"{what} has values in [{low:g}, {high:g}]; a video holds floats in [0, 1] "
                               "(divide 8-bit frames by 255)")
    return array


def _to_uint8(video: np.ndarray) -> np.ndarray:
    """The 8-bit frames a video file of ``video`` would hold: ``round(255 x)``."""
    return np.clip(np.rint(video * 255.0), 0, 255).astype(np.uint8)


def _device(device) -> str:
    if device is not None:
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _given(path, env: str) -> str | None:
    if path is not None:
        return os.fspath(path)
    value = os.environ.get(env, "").strip()
    return value or None


# -- CLIP ------------------------------------------------------------------------------------------------------
def clip_unavailable_reason(path=None) -> str | None:
    """Why the CLIP metrics cannot run with the CLIP folder ``path`` (default ``$DIFFCACHE_CLIP_MODEL``), or None.

    The folder is one written by ``CLIPModel.save_pretrained`` (safetensors) next to its tokenizer and image
    processor — a Hugging Face CLIP repository such as ``openai/clip-vit-large-patch14`` as it is stored on disk. A
    folder whose weights are only ``pytorch_model.bin`` is refused: that file is a Python pickle, which can run
    arbitrary code when it is loaded. Only files are checked here; a folder that passes can still fail to load
    (corrupted files), which :func:`clip_text_score` reports.
    """
    given = _given(path, CLIP_ENV)
    if given is None:
        return (f"no CLIP model: pass the folder of a transformers CLIP model (saved in safetensors, with its "
                f"tokenizer and image processor) or set {CLIP_ENV}; nothing is downloaded")
    if importlib.util.find_spec("transformers") is None:
        return "the CLIP metrics need the transformers package (pip install transformers)"
    folder = Path(given).expanduser()
    if not folder.exists():
        return f"the CLIP model folder {folder} does not exist"
    if not folder.is_dir():
        return (f"{folder} is a file; the CLIP model is a folder saved with save_pretrained (config.json, "
                "model.safetensors, the tokenizer and the image processor files)")
    config_file = folder / "config.json"
    if not config_file.is_file():
        if (folder / "snapshots").is_dir():
            return (f"{folder} is a Hugging Face cache entry; give its snapshot folder, "
                    f"{folder / 'snapshots' / '<revision>'}")
        return f"{folder} has no config.json; it is not a folder saved with save_pretrained"
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as error:
        return f"{config_file} is not a readable JSON config ({error})"
    if model_type != "clip":
        return f"{folder} holds a {model_type!r} model, not a CLIP model (config.json model_type 'clip')"
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.glob("*.bin"))
        if pickles:
            return (f"{folder} holds its weights only as {', '.join(pickles)}: PyTorch pickles, which can run "
                    "arbitrary code when loaded, so diffcache does not load them; use the model's model.safetensors "
                    "(most CLIP repositories on the Hugging Face Hub ship one)")
        return f"{folder} has no model.safetensors"
    if not ((folder / "tokenizer.json").is_file()
            or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())):
        return f"{folder} has no CLIP tokenizer (tokenizer.json, or vocab.json with merges.txt)"
    if not ((folder / "preprocessor_config.json").is_file() or (folder / "processor_config.json").is_file()):
        return f"{folder} has no image processor config (preprocessor_config.json or processor_config.json)"
    return None


@functools.lru_cache(maxsize=2)
def _load_clip(folder: str, device: str):
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise WeightsError(f"the CLIP model in {folder} could not be loaded: {error}") from error
    return model.float().to(device).eval(), processor


def _clip(path, device):
    reason = clip_unavailable_reason(path)
    if reason is not None:
        raise WeightsNotFoundError(reason)
    folder = str(Path(_given(path, CLIP_ENV)).expanduser().resolve())
    return _load_clip(folder, _device(device))


def _embedding(output):
    """The projected embedding of a ``get_*_features`` call: a tensor up to transformers 4.x, the ``pooler_output``
    of the returned ``BaseModelOutputWithPooling`` from 5.0."""
    import torch

    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _frame_embeddings(model, processor, video: np.ndarray, device: str):
    """Unit-norm CLIP image embeddings of the frames of a [0, 1] video, one row per frame (float32, on the CPU)."""
    import torch

    frames = list(_to_uint8(video))
    rows = []
    for start in range(0, len(frames), _CLIP_BATCH):
        # channels_last: a frame 3 pixels high or wide is not read as channels-first
        inputs = processor(images=frames[start:start + _CLIP_BATCH], return_tensors="pt",
                           input_data_format="channels_last")
        with torch.no_grad():
            rows.append(_embedding(model.get_image_features(pixel_values=inputs["pixel_values"].to(device))).float())
    embeddings = torch.cat(rows).cpu()
    return embeddings / embeddings.norm(p=2, dim=-1, keepdim=True)


def _text_embedding(model, processor, prompt: str, device: str):
    import torch

    inputs = processor(text=[prompt], return_tensors="pt", padding=True, truncation=True,
                       max_length=model.config.text_config.max_position_embeddings)
    with torch.no_grad():
        embedding = _embedding(model.get_text_features(input_ids=inputs["input_ids"].to(device),
                                                       attention_mask=inputs["attention_mask"].to(device))).float()
    embedding = embedding.cpu()
    return embedding / embedding.norm(p=2, dim=-1, keepdim=True)


def clip_text_score(video, prompt: str, path=None, *, device=None) -> float:
    """CLIP score of a video for its prompt: ``max(100 × mean over frames of cos(E_image(frame), E_text(prompt)), 0)``.

    This is torchmetrics' ``clip_score`` over the frames of the video paired with the prompt (Hessel et al. 2021,
    arXiv 2104.08718, in the ×100 form video papers report); higher is better, and values of real CLIP models on
    matching prompts sit around 20–35. The prompt is cut to the text encoder's length (77 tokens for OpenAI's CLIP).
    ``path`` is the CLIP folder (default ``$DIFFCACHE_CLIP_MODEL``; see :func:`clip_unavailable_reason`).
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise MetricInputError(f"the prompt is {prompt!r}; the CLIP score needs the prompt text the video was made from")
    frames = _as_video(video)
    model, processor = _clip(path, device)
    image = _frame_embeddings(model, processor, frames, _device(device))
    text = _text_embedding(model, processor, prompt, _device(device))
    score = 100.0 * float((image @ text.T).mean())
    return max(score, 0.0)


def clip_frame_similarity(video, reference, path=None, *, device=None) -> float:
    """CLIP image similarity of a video to its reference: ``max(100 × mean_t cos(E(video[t]), E(reference[t])), 0)``.

    Frame ``t`` of the video is compared with frame ``t`` of the reference (the two need the same number of frames;
    their sizes may differ, the image processor resizes both). 100 is a video CLIP cannot tell from its reference
    frame by frame; this is torchmetrics' ``clip_score`` between two images, averaged over the frames.
    """
    frames, reference_frames = _as_video(video), _as_video(reference, "reference")
    if frames.shape[0] != reference_frames.shape[0]:
        raise VideoShapeError(f"the video has {frames.shape[0]} frames and its reference {reference_frames.shape[0]}; "
                               "frame t is compared with frame t, so they need the same number")
    model, processor = _clip(path, device)
    a = _frame_embeddings(model, processor, frames, _device(device))
    b = _frame_embeddings(model, processor, reference_frames, _device(device))
    score = 100.0 * float((a * b).sum(dim=-1).mean())
    return max(score, 0.0)


# -- FVD -------------------------------------------------------------------------------------------------------
def fvd_unavailable_reason(path=None) -> str | None:
    """Why FVD cannot run with the detector file ``path`` (default ``$DIFFCACHE_FVD_DETECTOR``), or None.

    The detector is StyleGAN-V's TorchScript export of the Kinetics-400 I3D, ``i3d_torchscript.pt``
    (https://github.com/universome/stylegan-v, ``src/metrics/frechet_video_distance.py`` names where it is published).
    It is loaded with ``torch.jit.load``, never unpickled; a file written by ``torch.save`` (a pickle) is refused.
    """
    given = _given(path, FVD_ENV)
    if given is None:
        return (f"no FVD detector: pass the path of StyleGAN-V's i3d_torchscript.pt or set {FVD_ENV}; nothing is "
                "downloaded")
    file = Path(given).expanduser()
    if not file.exists():
        return f"the FVD detector {file} does not exist"
    if not file.is_file():
        return f"{file} is a folder; the FVD detector is one file, i3d_torchscript.pt"
    if not zipfile.is_zipfile(file):
        return f"{file} is not a TorchScript archive (torch.jit.save writes a zip archive)"
    try:
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as error:
        return f"{file} cannot be read as a TorchScript archive ({error})"
    if not any("/code/" in name for name in names):
        return (f"{file} is a torch.save file (a pickle), not a TorchScript module; diffcache loads the detector only "
                "with torch.jit.load — use StyleGAN-V's i3d_torchscript.pt")
    return None


@functools.lru_cache(maxsize=2)
def _load_detector(file: str, device: str):
    import torch

    try:
        detector = torch.jit.load(file, map_location=device)
    except (RuntimeError, ValueError) as error:
        raise WeightsError(f"the FVD detector {file} could not be loaded as TorchScript: {error}") from error
    return detector.eval()


def video_features(videos: Sequence, path=None, *, device=None, batch_size: int = 16) -> np.ndarray:
    """I3D features of each video, one row per video (``float64``, 400 columns for StyleGAN-V's detector).

    Each ``(frames, H, W, 3)`` [0, 1] video is turned into 8-bit frames and given to the detector as StyleGAN-V does
    (``[N, 3, frames, H, W]``, :data:`FVD_DETECTOR_KWARGS`); videos of the same shape go through together, at most
    ``batch_size`` at a time. FVD is defined on 16-frame clips (StyleGAN-V's ``fvd2048_16f``); a clip much shorter
    can be too short for I3D's temporal pooling, which the detector reports as an error.
    """
    import torch

    if isinstance(videos, np.ndarray) and videos.ndim == 4:
        raise VideoShapeError("video_features takes a list of videos; wrap a single (frames, H, W, 3) video in a list")
    arrays = [_as_video(video, f"video {i}") for i, video in enumerate(videos)]
    if not arrays:
        raise MetricInputError("video_features was given no videos")
    if int(batch_size) < 1:
        raise MetricInputError(f"batch_size is {batch_size}; it is a whole number of at least 1")
    reason = fvd_unavailable_reason(path)
    if reason is not None:
        raise WeightsNotFoundError(reason)
    device = _device(device)
    detector = _load_detector(str(Path(_given(path, FVD_ENV)).expanduser().resolve()), device)
    rows: list[np.ndarray | None] = [None] * len(arrays)
    by_shape: dict[tuple, list[int]] = {}
    for index, array in enumerate(arrays):
        by_shape.setdefault(array.shape, []).append(index)
    for shape, indices in by_shape.items():
        for start in range(0, len(indices), int(batch_size)):
            chunk = indices[start:start + int(batch_size)]
            batch = np.stack([_to_uint8(arrays[i]) for i in chunk])           # [n, T, H, W, 3]
            batch = torch.from_numpy(batch).permute(0, 4, 1, 2, 3).contiguous()  # [n, 3, T, H, W], as StyleGAN-V
            try:
                with torch.no_grad():
                    features = detector(batch.to(device), **FVD_DETECTOR_KWARGS)
            except torch.cuda.OutOfMemoryError:
                raise
            except (RuntimeError, torch.jit.Error) as error:   # a TorchScript raise is a torch.jit.Error
                raise VideoShapeError(f"the FVD detector refused videos of shape {shape} (frames, H, W, 3): "
                                       f"{str(error).strip().splitlines()[-1] if str(error).strip() else error}; FVD is "
                                       "computed on 16-frame clips") from error
            if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[0] != len(chunk):
                got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
                raise WeightsError(f"the FVD detector returned {got} for {len(chunk)} videos, not one feature row per "
                                   "video; it is not StyleGAN-V's I3D detector")
            for row, index in zip(features.double().cpu().numpy(), chunk):
                rows[index] = row
    return np.stack(rows)


def _features(features, what: str) -> np.ndarray:
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] == 0:
        raise MetricInputError(f"{what} has shape {array.shape}; features are a (videos, features) array")
    if array.shape[0] < 2:
        raise MetricInputError(f"{what} has {array.shape[0]} row(s); a Gaussian fit needs at least 2 videos (papers "
                               "use thousands, see fvd)")
    if not np.isfinite(array).all():
        raise MetricInputError(f"{what} holds NaN or infinite values")
    return array


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a ``(videos, features)`` array as StyleGAN-V's ``FeatureStats.get_mean_cov`` computes
    them: ``mu = sum(x) / n``, ``S = x^T x / n - mu mu^T`` in float64 — the population covariance (divided by ``n``,
    not ``n - 1``; pytorch-fid's ``np.cov`` divides by ``n - 1``, which matters only for small ``n``)."""
    x = _features(features, "features")
    n = x.shape[0]
    mean = x.sum(axis=0) / n
    cov = x.T @ x / n - np.outer(mean, mean)
    return mean, cov


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    import scipy.linalg

    root = scipy.linalg.sqrtm(matrix)
    return root[0] if isinstance(root, tuple) else root  # SciPy < 1.16 may return (root, error)


def frechet_distance_from_statistics(mu_a, sigma_a, mu_b, sigma_b) -> float:
    """Fréchet distance between N(mu_a, sigma_a) and N(mu_b, sigma_b):
    ``|mu_a - mu_b|^2 + tr(sigma_a + sigma_b - 2 sqrtm(sigma_a sigma_b))``, as StyleGAN-V's ``compute_fvd`` writes
    it (the real part, ``scipy.linalg.sqrtm``). Where the square root is not finite (singular covariances), 1e-6 is
    added to both diagonals and it is taken again, as pytorch-fid does (https://github.com/mseitzer/pytorch-fid,
    ``src/pytorch_fid/fid_score.py``)."""
    mu_a, mu_b = np.asarray(mu_a, dtype=np.float64), np.asarray(mu_b, dtype=np.float64)
    sigma_a, sigma_b = np.asarray(sigma_a, dtype=np.float64), np.asarray(sigma_b, dtype=np.float64)
    d = mu_a.shape[0]
    if mu_a.shape != (d,) or mu_b.shape != (d,) or sigma_a.shape != (d, d) or sigma_b.shape != (d, d):
        raise MetricInputError(f"the statistics have shapes {mu_a.shape}, {sigma_a.shape}, {mu_b.shape}, "
                               f"{sigma_b.shape}; two means of length d and two d × d covariances are accepted")
    root = _sqrtm(sigma_a @ sigma_b)
    if not np.isfinite(root).all():
        offset = np.eye(d) * 1e-6
        root = _sqrtm((sigma_a + offset) @ (sigma_b + offset))
    m = np.square(mu_a - mu_b).sum()
    return float(np.real(m + np.trace(sigma_a + sigma_b - root * 2)))


def frechet_distance(features_a, features_b) -> float:
    """Fréchet distance between Gaussian fits of two feature sets, ``(videos, features)`` arrays of the same width
    (StyleGAN-V's FVD statistics, :func:`feature_statistics`; the distance,
    :func:`frechet_distance_from_statistics`). 0 for two identical sets; symmetric."""
    a, b = _features(features_a, "features_a"), _features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise MetricInputError(f"the feature sets have {a.shape[1]} and {b.shape[1]} columns; they must come from the "
                               "same detector")
    return frechet_distance_from_statistics(*feature_statistics(a), *feature_statistics(b))


def fvd(test_videos: Sequence, reference_videos: Sequence, path=None, *, device=None, batch_size: int = 16) -> float:
    """Fréchet Video Distance (Unterthiner et al. 2018, arXiv 1812.01717) of a set of test videos from a set of
    reference videos, with StyleGAN-V's I3D detector (``path``, default ``$DIFFCACHE_FVD_DETECTOR``). Lower is better.

    Each side needs at least 2 videos, all with the same number of frames. FVD is a distance between distributions:
    over a handful of videos it is dominated by sampling noise (the 400 × 400 covariances of ``n`` videos have rank at
    most ``n - 1``), and its value depends on ``n`` itself. Published FVDs use thousands: StyleGAN-V's
    ``fvd2048_16f`` takes 2048 reference and 2048 generated 16-frame clips. Compare FVDs only at the same number of
    videos and frames; for a few cached-vs-uncached pairs, the per-video metrics say more.
    """
    test, reference = list(test_videos), list(reference_videos)
    for what, videos in (("test", test), ("reference", reference)):
        if len(videos) < 2:
            raise MetricInputError(f"FVD was given {len(videos)} {what} video(s); it fits a Gaussian to each set, which "
                                   "needs at least 2 videos per side (published FVDs use 2048)")
    test = [_as_video(video, f"test video {i}") for i, video in enumerate(test)]
    reference = [_as_video(video, f"reference video {i}") for i, video in enumerate(reference)]
    frame_counts = sorted({video.shape[0] for video in test + reference})
    if len(frame_counts) != 1:
        raise VideoShapeError(f"the videos have {frame_counts} frames; FVD compares clips of one length (16 frames "
                              "in StyleGAN-V)")
    features = video_features(test + reference, path, device=device, batch_size=batch_size)
    return frechet_distance(features[:len(test)], features[len(test):])


# -- VBench ----------------------------------------------------------------------------------------------------
#: The dimensions VBench scores on custom videos (its README, "Evaluate Your Own Videos"), each with the files its
#: ``init_submodules(..., local=True)`` and its ``compute_<dimension>`` read — relative to VBench's cache folder, or,
#: for DINO's weights, which DINO's ``hubconf.py`` fetches through ``torch.hub``, to ``torch.hub.get_dir()``. A
#: dimension whose files are all there runs without downloading; VBench downloads any that are missing, so
#: :func:`vbench_scores` refuses to start until they are all present.
VBENCH_DIMENSIONS: dict[str, tuple[str, ...]] = {
    "subject_consistency": ("dino_model/facebookresearch_dino_main/hubconf.py",
                            "dino_model/dino_vitbase16_pretrain.pth",
                            "torch-hub:checkpoints/dino_vitbase16_pretrain.pth"),
    "background_consistency": ("clip_model/ViT-B-32.pt",),
    "aesthetic_quality": ("clip_model/ViT-L-14.pt", "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth"),
    "imaging_quality": ("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",),
    "motion_smoothness": ("amt_model/amt-s.pth",),
    "dynamic_degree": ("raft_model/models/raft-things.pth",),
}

_VBENCH_VIDEO_SUFFIXES = (".mp4", ".gif")


def vbench_cache_dir() -> Path:
    """The folder VBench reads its checkpoints from: ``vbench.utils.CACHE_DIR`` once vbench is imported (it reads
    ``$VBENCH_CACHE_DIR`` when it is first imported), else ``$VBENCH_CACHE_DIR``, else ``~/.cache/vbench``."""
    utils = sys.modules.get("vbench.utils")
    if utils is not None and getattr(utils, "CACHE_DIR", None):
        return Path(utils.CACHE_DIR)
    value = os.environ.get("VBENCH_CACHE_DIR")
    return Path(value) if value else Path.home() / ".cache" / "vbench"


def _vbench_required(dimension: str) -> list[Path]:
    cache = vbench_cache_dir()
    paths = []
    for name in VBENCH_DIMENSIONS[dimension]:
        if name.startswith("torch-hub:"):
            import torch

            paths.append(Path(torch.hub.get_dir()) / name.removeprefix("torch-hub:"))
        else:
            paths.append(cache / name)
    return paths


def _vbench_installed() -> bool:
    try:
        return importlib.util.find_spec("vbench") is not None
    except (ImportError, ValueError):
        return False


def vbench_unavailable_reason(dimension: str) -> str | None:
    """Why the VBench dimension ``dimension`` cannot be scored here, or None.

    It needs the ``vbench`` package (https://github.com/Vchitect/VBench; PyPI's ``vbench`` pins ``numpy<2`` and
    ``transformers==4.33.2``, so it usually lives in an environment of its own) and, in VBench's cache, every file of
    :data:`VBENCH_DIMENSIONS` for that dimension. The dimensions that need the prompt's objects, colours or scenes
    (``object_class``, ``color``, ``scene``, …) are not scored on custom videos by VBench and are not offered.
    """
    if dimension not in VBENCH_DIMENSIONS:
        return (f"VBench dimension {dimension!r} is not one VBench scores on custom videos; those are "
                f"{', '.join(VBENCH_DIMENSIONS)}")
    if not _vbench_installed():
        return (f"VBench's {dimension} needs the vbench package (https://github.com/Vchitect/VBench; "
                "pip install vbench), which is not installed")
    missing = [str(p) for p in _vbench_required(dimension) if not p.exists()]
    if missing:
        return (f"VBench's {dimension} needs {', '.join(missing)}, which VBench would download; put those files "
                f"there (VBench's cache is {vbench_cache_dir()}: set VBENCH_CACHE_DIR to move it) — nothing is "
                "downloaded")
    return None


def vbench_scores(video_paths: Sequence, dimensions: Sequence[str], *, device=None) -> dict[str, dict]:
    """Score video files on VBench dimensions with the installed ``vbench`` package, offline.

    ``video_paths`` are ``.mp4`` or ``.gif`` files; ``dimensions`` are names from :data:`VBENCH_DIMENSIONS`. VBench
    is run as its README says for custom videos — ``VBench(device, full_info, output).evaluate(videos_path=FOLDER,
    dimension_list=..., local=True, mode='custom_input')`` — on a temporary folder linking the videos, with its
    checkpoints from its cache (refused, before VBench starts, if any is missing: VBench would download it).
    Returns ``{dimension: {"score": mean, "per_video": {path: value}}}`` with the paths as given. Higher is better
    for every dimension. VBench loads its checkpoints with ``torch.load`` (pickles): run it only on checkpoints from
    the sources VBench names.
    """
    dimensions = list(dict.fromkeys(dimensions))
    if not dimensions:
        raise MetricInputError(f"no VBench dimension given; the dimensions are {', '.join(VBENCH_DIMENSIONS)}")
    for dimension in dimensions:
        reason = vbench_unavailable_reason(dimension)
        if reason is not None:
            error = MetricInputError if dimension not in VBENCH_DIMENSIONS else WeightsNotFoundError
            raise error(reason)
    given = [os.fspath(p) for p in video_paths]
    files = [Path(p).expanduser() for p in given]
    if not files:
        raise MetricInputError("vbench_scores was given no videos")
    for file in files:
        if not file.is_file():
            raise MetricInputError(f"{file} is not a file; VBench scores .mp4 and .gif video files")
        if file.suffix.lower() not in _VBENCH_VIDEO_SUFFIXES:
            raise MetricInputError(f"{file} is not an .mp4 or .gif file; VBench reads only those for custom videos")

    try:
        import vbench
    except ImportError as error:
        raise WeightsNotFoundError(f"the vbench package is installed but cannot be imported ({error}); VBench needs "
                                   "its own requirements (its requirements.txt) installed") from error

    with tempfile.TemporaryDirectory(prefix="diffcache-vbench-") as work:
        folder, output = Path(work) / "videos", Path(work) / "results"
        folder.mkdir()
        linked: dict[str, str] = {}
        for index, file in enumerate(files):
            # VBench reads a prompt from the file name; none of these dimensions uses it. The index keeps names unique.
            link = folder / f"{index:05d}-{file.stem}{file.suffix.lower()}"
            try:
                link.symlink_to(file.resolve())
            except OSError:
                import shutil

                shutil.copyfile(file, link)
            linked[os.path.abspath(link)] = given[index]
        full_info = Path(vbench.__file__).resolve().parent / "VBench_full_info.json"
        bench = vbench.VBench(_device(device), str(full_info), str(output))
        bench.evaluate(videos_path=str(folder), name="diffcache", dimension_list=dimensions, local=True,
                       mode="custom_input")
        results_file = output / "diffcache_eval_results.json"
        if not results_file.is_file():
            raise WeightsError(f"VBench wrote no results ({results_file}); it did not finish")
        results = json.loads(results_file.read_text(encoding="utf-8"))

    scores: dict[str, dict] = {}
    for dimension in dimensions:
        score, per_video = results[dimension]
        scores[dimension] = {
            "score": float(score),
            "per_video": {linked.get(os.path.abspath(entry["video_path"]), entry["video_path"]):
                          float(entry["video_results"]) for entry in per_video},
        }
    return scores


# -- registry --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LearnedMetric:
    """A learned metric as a command line or a benchmark lists it.

    ``inputs`` says what :attr:`compute` takes: ``"video+prompt"`` (``compute(video, prompt, path)``),
    ``"video+reference"`` (``compute(video, reference, path)``) or ``"videos+references"`` (``compute(test_videos,
    reference_videos, path)``, a set metric). ``env_var`` and ``option`` are where the weights' location comes from
    (``option`` is the command-line option a front end is expected to map onto ``path``).
    """

    name: str
    title: str
    inputs: str
    env_var: str
    option: str
    needs: str
    higher_is_better: bool
    compute: Callable
    reason: Callable[[object], str | None]

    def unavailable_reason(self, path=None) -> str | None:
        """Why the metric cannot run with the weights at ``path`` (default: its environment variable), or None."""
        return self.reason(path)


LEARNED_METRICS: dict[str, LearnedMetric] = {
    "clip_text": LearnedMetric(
        name="clip_text", title="CLIP score (text)", inputs="video+prompt", env_var=CLIP_ENV, option="--clip-model",
        needs=f"a transformers CLIP folder in safetensors (--clip-model or {CLIP_ENV})", higher_is_better=True,
        compute=clip_text_score, reason=clip_unavailable_reason),
    "clip_frame": LearnedMetric(
        name="clip_frame", title="CLIP frame similarity", inputs="video+reference", env_var=CLIP_ENV,
        option="--clip-model", needs=f"a transformers CLIP folder in safetensors (--clip-model or {CLIP_ENV})",
        higher_is_better=True, compute=clip_frame_similarity, reason=clip_unavailable_reason),
    "fvd": LearnedMetric(
        name="fvd", title="FVD (I3D)", inputs="videos+references", env_var=FVD_ENV, option="--fvd-detector",
        needs=f"StyleGAN-V's i3d_torchscript.pt (--fvd-detector or {FVD_ENV})", higher_is_better=False,
        compute=fvd, reason=fvd_unavailable_reason),
}

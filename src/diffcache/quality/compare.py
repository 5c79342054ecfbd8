"""Scoring files a user already has: what ``diffcache metrics REF TEST`` runs.

For every pair (:func:`~diffcache.quality.media.pair_media`) and every protocol: PSNR, SSIM, relative L1, LPIPS
where it can run (:mod:`.lpips`), and VBench's temporal flickering of both videos (:mod:`.temporal`); learned
metrics (:mod:`.learned`: CLIP score, CLIP frame similarity, FVD over the set) when their weights are given.
Frames are what the files decode to, so a protocol's ``frames`` setting (which says how the benchmark turns a
pipeline's float frames into the frames it scores) does not apply: the result records ``"frames": "decoded"``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from .media import MediaError, pair_media, read_media
from .protocols import Protocol, parse_protocols, score
from .temporal import temporal_flickering

#: per-pair numbers, in the order of the table and the CSV columns
COLUMNS = ("psnr", "ssim", "rel_l1", "lpips", "flicker", "flicker_reference", "flicker_added", "clip_text",
           "clip_frame")


@dataclass
class MetricsResult:
    """What :func:`compare` measured: one row per pair and protocol, the mean per protocol, set-level numbers
    (FVD) and notes (what was skipped and why)."""

    rows: list[dict]
    means: dict[str, dict]
    set_level: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    unpaired: list[str] = field(default_factory=list)
    protocols: list[dict] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"protocols": self.protocols, "rows": self.rows, "means": self.means, "set_level": self.set_level,
                "notes": self.notes, "unpaired": self.unpaired}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else None


def compare(reference: str | os.PathLike, test: str | os.PathLike, protocols: "str | list | None" = None,
            lpips: bool = True, prompts: dict[str, str] | str | None = None, clip_model: str | None = None,
            fvd_detector: str | None = None, vbench: list[str] | None = None, progress: bool = True) -> MetricsResult:
    """Score ``test`` (a file or folder) against ``reference`` under each protocol (default ``diffcache``).

    ``prompts``: the prompt of every video (one string for all, or by pair name or stem) for the CLIP text score;
    ``clip_model`` / ``fvd_detector``: weights on disk (default: ``DIFFCACHE_CLIP_MODEL`` /
    ``DIFFCACHE_FVD_DETECTOR``); without them those columns stay empty and a note says why. ``vbench``: VBench
    dimensions scored on the MP4/GIF files of both sides by the installed ``vbench`` package
    (:func:`~diffcache.quality.learned.vbench_scores`), as ``vbench_DIMENSION`` and ``vbench_DIMENSION_reference``
    per row, when its checkpoints are in VBench's cache; otherwise a note says what is missing.
    """
    from tqdm.auto import tqdm

    chosen: list[Protocol] = parse_protocols(protocols)
    pairs, unpaired = pair_media(reference, test)
    notes = []
    if unpaired:
        notes.append(f"{len(unpaired)} file(s) on one side only, not scored: {', '.join(unpaired[:5])}"
                     f"{' …' if len(unpaired) > 5 else ''}")
    lpips_note = None
    if lpips:
        from .lpips import lpips_unavailable_reason

        lpips_note = lpips_unavailable_reason()
        if lpips_note:
            notes.append(lpips_note)
    learned = _learned_hooks(clip_model, fvd_detector, prompts, notes)
    rows, test_videos, ref_videos = [], [], []
    for pair in tqdm(pairs, desc="metrics", unit="pair", disable=not progress or len(pairs) < 2):
        video, ref = read_media(pair.test), read_media(pair.reference)
        if video.shape != ref.shape:
            raise MediaError(f"{pair.name}: {str(pair.test)!r} is {_shape(video)} but its reference "
                             f"{str(pair.reference)!r} is {_shape(ref)}; score clips of the same size and length.")
        flicker, flicker_ref = temporal_flickering(video), temporal_flickering(ref)
        extra = {"flicker": flicker, "flicker_reference": flicker_ref,
                 "flicker_added": None if flicker is None else flicker_ref - flicker}
        extra.update(learned.per_pair(pair, video, ref))
        for protocol in chosen:
            numbers = score(video, ref, protocol, lpips=lpips and lpips_note is None, prepared=True)
            rows.append({"name": pair.name, "reference": str(pair.reference), "test": str(pair.test),
                         "protocol": protocol.name, "frames": "decoded", "num_frames": int(video.shape[0]),
                         "height": int(video.shape[1]), "width": int(video.shape[2]), **numbers, **extra})
        if learned.fvd and len(video) > 1:  # FVD compares clips; an image has no I3D features
            test_videos.append(video)
            ref_videos.append(ref)
    extra = _vbench_columns(vbench, pairs, rows, notes) if vbench else []
    means = {p.name: {c: _mean(r.get(c) for r in rows if r["protocol"] == p.name) for c in (*COLUMNS, *extra)}
             for p in chosen}
    set_level = {}
    if learned.fvd:
        set_level["fvd"] = learned.fvd_of(test_videos, ref_videos, notes)
    return MetricsResult(rows, means, set_level, notes, unpaired, [p.describe() for p in chosen])


def _vbench_columns(dimensions, pairs, rows, notes) -> list[str]:
    """Score the video files of both sides on each usable VBench dimension; fills the rows, returns the columns."""
    from .learned import vbench_scores, vbench_unavailable_reason
    from .media import VIDEO_FILES

    usable = []
    for dimension in dimensions:
        reason = vbench_unavailable_reason(dimension)
        if reason:
            notes.append(f"VBench {dimension} skipped: {reason}")
        else:
            usable.append(dimension)
    videos = [p for p in pairs if p.test.suffix.lower() in VIDEO_FILES and p.reference.suffix.lower() in VIDEO_FILES]
    if not usable or not videos:
        if usable:
            notes.append("VBench skipped: it scores video files (.mp4, .gif) and none was given")
        return []
    scores = vbench_scores([str(p.test) for p in videos] + [str(p.reference) for p in videos], usable)
    by_name = {p.name: p for p in videos}
    for row in rows:
        pair = by_name.get(row["name"])
        for dimension in usable:
            per_video = scores[dimension]["per_video"]
            row[f"vbench_{dimension}"] = None if pair is None else per_video.get(str(pair.test))
            row[f"vbench_{dimension}_reference"] = None if pair is None else per_video.get(str(pair.reference))
    return [f"vbench_{d}{suffix}" for d in usable for suffix in ("", "_reference")]


def _shape(video: np.ndarray) -> str:
    return f"{video.shape[0]} frame(s) of {video.shape[1]}×{video.shape[2]}"


#: the learned metrics' weights: key, environment variable, and the function saying why a path cannot be used
LEARNED_WEIGHTS = (("clip", "DIFFCACHE_CLIP_MODEL", "clip_unavailable_reason"),
                   ("fvd", "DIFFCACHE_FVD_DETECTOR", "fvd_unavailable_reason"))


def learned_weights(clip_model: str | None = None, fvd_detector: str | None = None) -> tuple[dict, list[str]]:
    """The CLIP model and FVD detector to use (given, else named by ``DIFFCACHE_CLIP_MODEL`` /
    ``DIFFCACHE_FVD_DETECTOR``): ``({"clip": path, "fvd": path}, notes)``, a path only where it can be used and a
    note (why not) for each one named that cannot; nothing for a metric no one asked for."""
    chosen, notes = {}, []
    for (key, env, reason_of), given in zip(LEARNED_WEIGHTS, (clip_model, fvd_detector)):
        path = given or os.environ.get(env)
        if not path:
            continue
        from . import learned

        reason = getattr(learned, reason_of)(path)
        if reason:
            notes.append(f"{env if not given else key}: {reason}")
        else:
            chosen[key] = path
    return chosen, notes


class _learned_hooks:
    """The learned metrics that can run with the given weights; each missing one adds its reason to ``notes``
    once (only when the user asked for it, by option or environment variable)."""

    def __init__(self, clip_model, fvd_detector, prompts, notes):
        usable, reasons = learned_weights(clip_model, fvd_detector)
        notes += reasons
        self.clip, self.fvd = usable.get("clip"), usable.get("fvd")
        self.prompts = prompts

    def prompt_of(self, pair) -> str | None:
        if isinstance(self.prompts, str):
            return self.prompts
        if not self.prompts:
            return None
        stem = os.path.splitext(pair.name)[0]
        return self.prompts.get(pair.name, self.prompts.get(stem))

    def per_pair(self, pair, video, ref) -> dict:
        out = {"clip_text": None, "clip_frame": None}
        if self.clip:
            from .learned import clip_frame_similarity, clip_text_score

            prompt = self.prompt_of(pair)
            if prompt:
                out["clip_text"] = clip_text_score(video, prompt, self.clip)
            out["clip_frame"] = clip_frame_similarity(video, ref, self.clip)
        return out

    def fvd_of(self, test_videos, ref_videos, notes) -> float | None:
        if len(test_videos) < 2:
            notes.append("FVD skipped: it compares two sets of videos and needs at least 2 pairs of clips (images "
                         "are left out)")
            return None
        lengths = {len(v) for v in test_videos}
        if len(lengths) > 1:
            notes.append(f"FVD skipped: the clips have different lengths ({', '.join(map(str, sorted(lengths)))} "
                         "frames); FVD compares clips of one length")
            return None
        from .learned import fvd

        return fvd(test_videos, ref_videos, self.fvd)


def read_prompts(path: str | os.PathLike) -> dict[str, str]:
    """Prompts by video name from a file: JSON (``{"name": "prompt", …}``) or text lines ``NAME<TAB>PROMPT``."""
    import json
    from pathlib import Path

    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix.lower() == ".json":
        data = json.loads(text)
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise MediaError(f"{str(path)!r}: expected a JSON object of video name → prompt.")
        return data
    prompts = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, sep, prompt = line.partition("\t")
        if not sep or not prompt.strip():
            raise MediaError(f"{str(path)!r} line {number}: expected NAME<TAB>PROMPT, got {line[:60]!r}.")
        prompts[name.strip()] = prompt.strip()
    return prompts


__all__ = ["COLUMNS", "MetricsResult", "compare", "read_prompts"]

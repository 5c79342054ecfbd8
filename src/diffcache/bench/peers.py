"""The peers' own implementations, run on the same model and chart as diffcache's methods.

Each peer is the other project's code, configured as its documentation says and made to fit the model only where
its defaults cannot (module patterns that match nothing, a block count below the default): diffusers' hooks through
``pipe.transformer.enable_cache(config)`` and cache-dit's DBCache through ``cache_dit.enable_cache``. A peer that
cannot run here (not installed, a model it does not know, a crash on this pipeline, hooks that attach to no module)
raises :class:`PeerUnavailable` with a one-line reason; the benchmark lists it as a skipped row.
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from ..errors import PeerUnavailable



@dataclass
class Setup:
    """What a peer may need to know about the run: steps, guidance batching, and a way to run the pipeline once
    (MagCache's calibration)."""

    steps: int
    cfg_mode: str | None
    generate: Callable[[str, int], Any]  #: (prompt, seed) → video, uncached
    calibration_prompt: tuple[str, int] = ("", 0)


@dataclass
class ActivePeer:
    """A peer enabled on a pipeline: ``disable()`` removes it; ``state_roots`` hold its cached tensors."""

    disable: Callable[[], None]
    hooked_modules: int | None = None
    state_roots: list = field(default_factory=list)
    notes: dict = field(default_factory=dict)


def hooked_modules(model: torch.nn.Module) -> dict[str, tuple[str, ...]]:
    """Module name → names of the diffusers hooks registered on it."""
    found = {}
    for name, module in model.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and registry.hooks:
            found[name] = tuple(registry.hooks)
    return found


def _denoiser(pipe) -> torch.nn.Module:
    model = getattr(pipe, "transformer", None)
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "enable_cache"):
        raise PeerUnavailable(f"{type(pipe).__name__} has no transformer with diffusers' enable_cache "
                              "(diffusers' cache hooks are for transformer denoisers)")
    return model


def _enable_diffusers(pipe, config, label: str, notes: dict | None = None) -> ActivePeer:
    model = _denoiser(pipe)
    before = hooked_modules(model)
    try:
        model.enable_cache(config)
    except Exception as error:  # noqa: BLE001 - a peer's refusal becomes a one-line reason
        raise PeerUnavailable(f"{label}: enable_cache refused {type(model).__name__}: "
                              f"{type(error).__name__}: {error}") from error
    added = {name for name, hooks in hooked_modules(model).items() if hooks != before.get(name)}
    added.discard("")  # the root registry holds no method hook by itself
    if not added:
        model.disable_cache()
        raise PeerUnavailable(f"{label}: its hooks attached to no module of {type(model).__name__} "
                              "(its module patterns match nothing here), so it would do nothing")
    roots = [getattr(m, "_diffusers_hook") for n, m in model.named_modules() if n in added]
    return ActivePeer(model.disable_cache, len(added), roots, dict(notes or {}))


# -- the diffusers peers -------------------------------------------------------------------------------------------
def _pab(pipe, setup: Setup, options: dict) -> ActivePeer:
    """Pyramid Attention Broadcast with the ranges diffcache's ``pab`` uses (Open-Sora's: self 2, cross 6, window
    100–800); diffusers' config has no default ranges."""
    from diffusers import PyramidAttentionBroadcastConfig

    values = {"spatial_attention_block_skip_range": 2, "cross_attention_block_skip_range": 6,
              "spatial_attention_timestep_skip_range": (100, 800), "cross_attention_timestep_skip_range": (100, 800),
              **options}
    config = PyramidAttentionBroadcastConfig(current_timestep_callback=lambda: pipe.current_timestep, **values)
    return _enable_diffusers(pipe, config, "diffusers-pab")


def _fastercache(pipe, setup: Setup, options: dict) -> ActivePeer:
    """FasterCache with diffusers' documented example values (attention weight 0.5)."""
    from diffusers import FasterCacheConfig

    weight = options.pop("attention_weight", 0.5)
    config = FasterCacheConfig(current_timestep_callback=lambda: pipe.current_timestep,
                               attention_weight_callback=lambda _: weight, tensor_format="BCFHW", **options)
    return _enable_diffusers(pipe, config, "diffusers-fastercache")


def _fbcache(pipe, setup: Setup, options: dict) -> ActivePeer:
    """First-Block-Cache with diffusers' default threshold (0.05)."""
    from diffusers import FirstBlockCacheConfig

    return _enable_diffusers(pipe, FirstBlockCacheConfig(**options), "diffusers-fbcache")


def _attention_patterns(model: torch.nn.Module) -> list[str]:
    """Regexes (``re.fullmatch``) naming the attention modules of the model's blocks, found through diffcache's
    adapter: TaylorSeer's default patterns (``^blocks.*attn``) match no module of Wan-style models."""
    from ..adapters import find_adapter

    try:
        adapter = find_adapter(model)
    except Exception as error:  # noqa: BLE001
        raise PeerUnavailable(f"diffusers-taylorseer: no diffcache adapter to find the attention modules: {error}")
    wanted = {id(m) for block in adapter.blocks(model) for m in adapter.attention_modules(block).values()}
    return [re.escape(name) for name, module in model.named_modules() if id(module) in wanted]


def _taylorseer(pipe, setup: Setup, options: dict) -> ActivePeer:
    """TaylorSeer (order 1, full compute every 5 steps after 3 warm-up steps: diffusers' defaults) on the blocks'
    attention modules; Taylor factors in float32 (diffusers' default bfloat16 is for GPUs)."""
    from diffusers import TaylorSeerCacheConfig

    model = _denoiser(pipe)
    values = {"taylor_factors_dtype": torch.float32, "cache_identifiers": _attention_patterns(model), **options}
    return _enable_diffusers(pipe, TaylorSeerCacheConfig(**values), "diffusers-taylorseer")


class _MagCache:
    """MagCache with its calibration run: one uncached generation (the sweep's first prompt and seed) with
    ``calibrate=True`` records the per-step magnitude ratios, which then configure the cached runs. With split
    CFG diffusers calibrates cond and uncond separately; their ratios are averaged (diffusers' config takes one
    list for both)."""

    def __init__(self):
        self.ratios: dict[tuple, list[float]] = {}

    def calibrate(self, pipe, setup: Setup) -> list[float]:
        from diffusers import MagCacheConfig

        key = (id(pipe), setup.steps, setup.cfg_mode, setup.calibration_prompt)
        if key in self.ratios:
            return self.ratios[key]
        model = _denoiser(pipe)
        try:
            model.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=setup.steps))
        except Exception as error:  # noqa: BLE001
            raise PeerUnavailable(f"diffusers-magcache: enable_cache refused {type(model).__name__}: "
                                  f"{type(error).__name__}: {error}") from error
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                setup.generate(*setup.calibration_prompt)
        finally:
            model.disable_cache()
        lists = [ast.literal_eval(m) for m in re.findall(r"\[[-+0-9eE.,\s]+\]", printed.getvalue())]
        lists = [values for values in lists if len(values) == setup.steps]
        if not lists:
            raise PeerUnavailable("diffusers-magcache: its calibration run printed no ratios for this model "
                                  f"(expected {setup.steps} values)")
        ratios = [float(sum(v) / len(v)) for v in zip(*lists)]
        self.ratios[key] = ratios
        return ratios

    def __call__(self, pipe, setup: Setup, options: dict) -> ActivePeer:
        from diffusers import MagCacheConfig

        ratios = self.calibrate(pipe, setup)
        config = MagCacheConfig(mag_ratios=ratios, num_inference_steps=setup.steps, **options)
        return _enable_diffusers(pipe, config, "diffusers-magcache",
                                 notes={"mag_ratios": [round(r, 5) for r in ratios]})


def _wan_noisy_latents(module, args, kwargs) -> list[torch.Tensor] | None:
    """SeaCache's ``raw_vision_callback`` for a Wan image-to-video denoiser: the noisy latents of the output, each
    ``(C, T, H, W)``: the first ``out_channels`` of ``hidden_states``, without the image condition concatenated
    after them (SeaCache's docs: exclude visual hints that are not part of the output). diffusers' built-in Wan
    adapter covers text-to-video only (``in_channels == out_channels``)."""
    hidden_states = kwargs.get("hidden_states", args[0] if args else None)
    if not isinstance(hidden_states, torch.Tensor) or hidden_states.ndim != 5:
        return None
    return list(hidden_states[:, : module.config.out_channels].unbind(0))


class _SeaCacheWarnings(logging.Handler):
    """Collects the fail-open warnings of diffusers' SeaCache (it runs in full, silently but for one warning,
    when it lacks what it needs) into the peer's notes."""

    def __init__(self, notes: dict):
        super().__init__(logging.WARNING)
        self.notes = notes

    def emit(self, record: logging.LogRecord) -> None:
        found = self.notes.setdefault("fail_open", [])
        if record.getMessage() not in found:
            found.append(record.getMessage())


def _seacache(pipe, setup: Setup, options: dict) -> ActivePeer:
    """SeaCache (Spectral-Evolution-Aware Cache, CVPR 2026, arXiv 2602.18993; official code
    github.com/jiwoogit/SeaCache) through diffusers' ``SeaCacheConfig`` with its defaults (threshold 0.25,
    first-order residual, first and last step computed, at most 2 reuses in a row, power prior 3). Its gate reads
    the step index, sigma and step count from the pipeline's ``cache_context`` (``WanPipeline`` and the embedded
    pipelines pass them) and the noisy latents from diffusers' built-in Wan text-to-video adapter; a Wan
    image-to-video denoiser gets :func:`_wan_noisy_latents`. Other families have no adapter in diffusers (it would
    run in full, fail-open), so they are refused. Its fail-open warnings are kept in the notes."""
    from diffusers import SeaCacheConfig

    model = _denoiser(pipe)
    values = dict(options)
    if type(model).__name__ != "WanTransformer3DModel" and "raw_vision_callback" not in values:
        raise PeerUnavailable(f"diffusers-seacache: diffusers' SeaCache reads the noisy latents through a model "
                              f"adapter it has for Wan and Cosmos 3 only, not {type(model).__name__}")
    if model.config.in_channels != model.config.out_channels:
        values.setdefault("raw_vision_callback", _wan_noisy_latents)
    notes: dict = {}
    handler = _SeaCacheWarnings(notes)
    sea_logger = logging.getLogger("diffusers.hooks.sea_cache")
    level = sea_logger.level
    sea_logger.addHandler(handler)
    sea_logger.setLevel(logging.WARNING)
    try:
        active = _enable_diffusers(pipe, SeaCacheConfig(**values), "diffusers-seacache")
    except Exception:
        sea_logger.removeHandler(handler)
        sea_logger.setLevel(level)
        raise
    disable = active.disable

    def disable_and_unhook() -> None:
        disable()
        sea_logger.removeHandler(handler)
        sea_logger.setLevel(level)

    active.disable, active.notes = disable_and_unhook, notes
    return active


# -- cache-dit -----------------------------------------------------------------------------------------------------
def _cachedit(pipe, setup: Setup, options: dict) -> ActivePeer:
    """cache-dit's DBCache. Pipelines cache-dit knows go through ``cache_dit.enable_cache(pipe)``; a Wan-family
    denoiser in another pipeline (the embedded models) through a ``BlockAdapter`` as cache-dit's own Wan adapter
    builds it. DBCache's default keeps the first 8 blocks always computed (F8B0); a model with fewer blocks gets
    F1B0, cache-dit's documented fastest setting."""
    import os

    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "warning")  # cache-dit logs every enable to stdout at "info"
    try:
        import cache_dit
    except ImportError as error:
        raise PeerUnavailable("cachedit-dbcache: cache-dit is not installed (pip install 'diffcache[cachedit]')") \
            from error
    from ..adapters import find_adapter

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("cache_dit"):
            logging.getLogger(name).setLevel(max(logging.getLogger(name).level, logging.WARNING))
    model = _denoiser(pipe)
    blocks = find_adapter(model).blocks(model)
    values = {"Fn_compute_blocks": 8 if len(blocks) > 8 else 1, "Bn_compute_blocks": 0, **options}
    config = cache_dit.DBCacheConfig(**values)
    target = pipe
    if type(model).__name__ == "WanTransformer3DModel" and not type(pipe).__name__.startswith("Wan"):
        target = cache_dit.BlockAdapter(pipe=pipe, transformer=model, blocks=model.blocks,
                                        forward_pattern=cache_dit.ForwardPattern.Pattern_2,
                                        has_separate_cfg=setup.cfg_mode != "batched")
    try:
        cache_dit.enable_cache(target, cache_config=config)
    except Exception as error:  # noqa: BLE001
        raise PeerUnavailable(f"cachedit-dbcache: {type(error).__name__}: {error}") from error
    return ActivePeer(lambda: cache_dit.disable_cache(pipe), None, [],
                      {"Fn_compute_blocks": values["Fn_compute_blocks"], "Bn_compute_blocks": values["Bn_compute_blocks"]})


@dataclass(frozen=True)
class PeerInfo:
    """A peer: its name in ``--methods``, a one-line summary, the function that enables it, and its main knob
    with the values its curve sweeps (:data:`PEER_CURVES`)."""

    name: str
    summary: str
    enable: Callable[..., ActivePeer] = field(repr=False)
    knob: str = ""
    curve: tuple = ()


PEERS: dict[str, PeerInfo] = {p.name: p for p in (
    PeerInfo("diffusers-pab", "diffusers' PyramidAttentionBroadcastConfig (self 2, cross 6, window 100-800)", _pab,
             "spatial_attention_block_skip_range", (2, 3, 4)),
    PeerInfo("diffusers-fastercache", "diffusers' FasterCacheConfig (its documented example)", _fastercache,
             "spatial_attention_block_skip_range", (2, 3, 4)),
    PeerInfo("diffusers-fbcache", "diffusers' FirstBlockCacheConfig (threshold 0.05)", _fbcache,
             "threshold", (0.1, 0.15, 0.2)),
    PeerInfo("diffusers-taylorseer", "diffusers' TaylorSeerCacheConfig on the blocks' attention modules", _taylorseer,
             "cache_interval", (3, 5, 8)),
    PeerInfo("diffusers-magcache", "diffusers' MagCacheConfig with a calibration run", _MagCache(),
             "threshold", (0.03, 0.06, 0.12)),
    PeerInfo("diffusers-seacache", "diffusers' SeaCacheConfig (threshold 0.25; Wan adapter)", _seacache,
             "threshold", (0.1, 0.25, 0.5)),
    PeerInfo("cachedit-dbcache", "cache-dit's DBCache via cache_dit.enable_cache (optional extra)", _cachedit,
             "residual_diff_threshold", (0.08, 0.12, 0.16)),
)}

#: each peer's curve in ``--methods`` sweep syntax (``PEER[knob=a|b|c]``); ``--methods peer-curves`` runs them all
PEER_CURVES: dict[str, str] = {p.name: f"{p.name}[{p.knob}={'|'.join(map(str, p.curve))}]" for p in PEERS.values()}

"""Other caches on the same denoiser: diffusers' own (``transformer.enable_cache(...)``) and cache-dit's
(``cache_dit.enable_cache(pipe)``).

Two caches on one denoiser each skip work on their own evidence: the second one's decisions are taken on outputs
the first one already approximated, errors compound, and diffcache's report no longer describes what ran. So
:func:`diffcache.enable` refuses a model that has another cache (:func:`foreign_caches`), naming it and how to
remove it, and the step tracker checks again before each call and each forward (:func:`check_no_foreign_cache`)
for a cache enabled after diffcache, refusing that forward before any work.

What is detected, and where the markers come from:

* diffusers' caches (``diffusers.hooks``: FirstBlockCache, PyramidAttentionBroadcast, FasterCache, MagCache,
  TaylorSeerCache, SeaCache, TextKVCache): ``ModelMixin.enable_cache(config)`` sets ``model._cache_config``
  (``diffusers/models/cache_utils.py``: ``CacheMixin``, whose ``is_cache_enabled`` reads it); the
  ``apply_*`` functions that ``enable_cache`` calls (and users may call directly) register hooks under fixed names
  in the ``HookRegistry`` of the model or of its blocks (``_FBC_LEADER_BLOCK_HOOK = "fbc_leader_block_hook"`` …
  in ``diffusers/hooks/<cache>.py``). Both are checked.
* cache-dit (github.com/vipshop/cache-dit, ``src/cache_dit/caching/cache_adapters/cache_adapter.py`` at commit
  f86744a): ``cache_dit.enable_cache(pipe)`` replaces the transformer's ``forward`` and sets
  ``transformer._is_cached = True``, ``transformer._original_forward`` and ``transformer._context_manager``
  (``mock_transformer``), and on the pipeline ``pipe._context_manager`` (per instance) and
  ``type(pipe)._is_cached`` / ``type(pipe)._original_call`` (on the class). The transformer's instance
  attributes and the pipeline's instance ``_context_manager`` are checked (the class-level flag would mark every
  pipeline of that class). ``cache_dit.disable_cache(pipe)`` removes them all.
"""

from __future__ import annotations

import torch

from .errors import ForeignCacheError

#: diffusers' cache hook names (diffusers/hooks/<module>.py constants) → the cache they belong to
DIFFUSERS_CACHE_HOOKS = {
    "fbc_leader_block_hook": "FirstBlockCache", "fbc_block_hook": "FirstBlockCache",
    "pyramid_attention_broadcast": "PyramidAttentionBroadcast",
    "faster_cache_denoiser": "FasterCache", "faster_cache_block": "FasterCache",
    "mag_cache_leader_block_hook": "MagCache", "mag_cache_block_hook": "MagCache",
    "taylorseer_cache": "TaylorSeerCache",
    "sea_cache_root": "SeaCache", "sea_cache_leader_block": "SeaCache", "sea_cache_block": "SeaCache",
    "sea_cache_post_norm": "SeaCache",
    "text_kv_cache_transformer": "TextKVCache", "text_kv_cache_block": "TextKVCache",
}

#: cache-dit's instance attributes on a transformer it cached (see the module docstring)
CACHE_DIT_MODEL_MARKERS = ("_is_cached", "_original_forward", "_context_manager")


def _diffusers_cache_name(model: torch.nn.Module, scan_hooks: bool) -> str | None:
    config = getattr(model, "_cache_config", None)
    if config is not None:
        return type(config).__name__.removesuffix("Config")
    if not scan_hooks:
        return None
    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        for name in (registry.hooks if registry is not None else ()):
            if name in DIFFUSERS_CACHE_HOOKS:
                return DIFFUSERS_CACHE_HOOKS[name]
    return None


def _has_cache_dit(model: torch.nn.Module, pipeline) -> bool:
    if model.__dict__.get("_is_cached") is True or "_original_forward" in model.__dict__:
        return True
    return pipeline is not None and "_context_manager" in vars(pipeline)


def foreign_caches(model: torch.nn.Module, pipeline=None, *, scan_hooks: bool = True) -> list[str]:
    """The other caches on ``model`` (or its ``pipeline``), each described with how to remove it; empty when none.
    ``scan_hooks=False`` reads only the attributes (cheap enough for every forward), not every submodule's hooks."""
    name = type(model).__name__
    found = []
    cache = _diffusers_cache_name(model, scan_hooks)
    if cache is not None:
        if getattr(model, "_cache_config", None) is not None:
            found.append(f"diffusers' {cache} cache (enabled with {name}.enable_cache(...); remove it with "
                         f"{name}.disable_cache())")
        else:
            found.append(f"diffusers' {cache} cache (its hooks, registered by diffusers.hooks.apply_*, are on the "
                         f"model; remove them with registry.remove_hook(name, recurse=True) or rebuild the {name})")
    if _has_cache_dit(model, pipeline):
        found.append("a cache-dit cache (enabled with cache_dit.enable_cache(pipe); remove it with "
                     "cache_dit.disable_cache(pipe))")
    return found


def refuse_foreign_caches(model: torch.nn.Module, pipeline, method: str) -> None:
    """Raise :class:`~diffcache.errors.ForeignCacheError` when ``model`` already has another cache."""
    found = foreign_caches(model, pipeline)
    if found:
        raise ForeignCacheError(
            f"diffcache cannot enable {method} on this {type(model).__name__}: it already has "
            f"{' and '.join(found)}. Two caches on one denoiser each skip work on the other's approximations and "
            "diffcache's report would not describe what ran; remove the other cache first, then enable diffcache.")


def check_no_foreign_cache(model: torch.nn.Module, pipeline, method: str, scan_hooks: bool) -> None:
    """Raise :class:`~diffcache.errors.ForeignCacheError` when another cache was enabled on ``model`` after
    diffcache (the step tracker asks before every forward, with ``scan_hooks`` at the first forward of a call)."""
    found = foreign_caches(model, pipeline, scan_hooks=scan_hooks)
    if found:
        raise ForeignCacheError(
            f"{' and '.join(found)} was enabled on this {type(model).__name__} after diffcache's {method}; two "
            "caches on one denoiser would each skip work on the other's approximations. This forward was refused "
            f"before any work: remove that cache, or call diffcache's handle.disable() to use the other one alone.")

"""diffcache: faster diffusion video generation by caching work the model would otherwise redo.

Public API::

    import diffcache
    pipe = diffcache.load_pipeline("tiny-shapes-t2v")   # embedded model, a local folder or a hub id
    with diffcache.enable(pipe, "adacache", preset="fast") as handle:
        video = pipe("a red circle moving left", num_inference_steps=30).frames
        print(handle.report())
    diffcache.list_methods()

Re-exports only: the call path (:mod:`diffcache.api`), the report (:mod:`diffcache.report`), the errors
(:mod:`diffcache.errors`), the adapter registry (:mod:`diffcache.adapters`), every method's config, the loader
and the embedded pipelines.
"""

import importlib
import logging

#: public name -> the module that defines it. Imported on first use (PEP 562), so that ``import diffcache`` and
#: ``diffcache --help`` do not load torch and diffusers; ``from diffcache import enable`` works as usual.
_LAZY = {
    **dict.fromkeys(("Adapter", "register_adapter"), ".adapters"),
    **dict.fromkeys(("Handle", "disable", "enable"), ".api"),
    "StepContext": ".context",
    "DistilledShapesT2VPipeline": ".distill.sampler",
    "TinyShapesT2IPipeline": ".embedded.t2i.pipeline",
    "TinyShapesT2VPipeline": ".embedded.t2v.pipeline",
    "ShapesTextEncoder": ".embedded.text",
    **dict.fromkeys(("EMBEDDED_MODELS", "load_pipeline"), ".loading"),
    "list_methods": ".methods.framework",
    "AdaCacheConfig": ".methods.adacache",
    "DeepCacheConfig": ".methods.deepcache",
    "EasyCacheConfig": ".methods.easycache",
    **dict.fromkeys(("CFGCacheConfig", "FasterCacheConfig"), ".methods.fastercache"),
    **dict.fromkeys(("ComposedConfig", "ComposedReport", "compose"), ".composition"),
    "FBCacheConfig": ".methods.fbcache",
    "HSAConfig": ".methods.hsa",
    "PABConfig": ".methods.pab",
    "TeaCacheConfig": ".methods.teacache",
    **dict.fromkeys(("CallReport", "Report", "StepRecord"), ".report"),
}

# the errors have no heavy imports: they are always here
from .errors import *  # noqa: E402,F401,F403
from .errors import __all__ as _ERRORS  # noqa: E402

logging.getLogger("diffcache").addHandler(logging.NullHandler())


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = sorted([*_LAZY, *_ERRORS])

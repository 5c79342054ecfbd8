"""diffcache: faster diffusion video generation by caching work the model would otherwise redo.

Public API::

    import diffcache
    pipe = diffcache.load_pipeline("tiny-shapes-t2v")   # embedded model, a local folder or a hub id
    with diffcache.enable(pipe, "adacache", preset="fast") as handle:
        video = pipe("a red circle moving left", num_inference_steps=30).frames
        print(handle.report())
    diffcache.list_methods()
"""

import importlib

#: public name -> the module that defines it. Imported on first use (PEP 562), so that ``import diffcache`` and
#: ``diffcache --help`` do not load torch and diffusers; ``from diffcache import enable`` works as before.
_LAZY = {
    "UnsupportedModelError": ".adapters",
    "StepContext": ".context",
    "StepTrackingError": ".context",
    "DistilledShapesT2VPipeline": ".distill.sampler",
    **dict.fromkeys(("CallRefusedError", "Handle", "MethodAlreadyEnabledError", "MethodSilentWarning",
                     "NothingSkippedWarning", "Report", "UnknownMethodError", "enable", "list_methods"), ".methods"),
    "AdaCacheConfig": ".methods.adacache",
    "DeepCacheConfig": ".methods.deepcache",
    "FBCacheConfig": ".methods.fbcache",
    "PABConfig": ".methods.pab",
    "TeaCacheConfig": ".methods.teacache",
    "TinyShapesT2VPipeline": ".embedded.t2v.pipeline",
    "TinyShapesT2IPipeline": ".embedded.t2i.pipeline",
    "EMBEDDED_MODELS": ".loading",
    "ModelLoadError": ".loading",
    "load_pipeline": ".loading",
    "PromptError": ".embedded.shapes",
    "ShapesTextEncoder": ".embedded.text",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"


def disable(target) -> None:
    """Disable whatever diffcache method is enabled on a pipeline or denoiser (no-op when none is)."""
    from .methods.base import denoiser_of

    model, _ = denoiser_of(target)
    handle = getattr(model, "_diffcache_handle", None)
    if handle is not None:
        handle.disable()


__all__ = [
    "EMBEDDED_MODELS",
    "AdaCacheConfig",
    "DeepCacheConfig",
    "FBCacheConfig",
    "PABConfig",
    "TeaCacheConfig",
    "NothingSkippedWarning",
    "CallRefusedError",
    "Handle",
    "MethodAlreadyEnabledError",
    "MethodSilentWarning",
    "ModelLoadError",
    "PromptError",
    "Report",
    "DistilledShapesT2VPipeline",
    "ShapesTextEncoder",
    "StepContext",
    "StepTrackingError",
    "TinyShapesT2VPipeline",
    "TinyShapesT2IPipeline",
    "UnknownMethodError",
    "UnsupportedModelError",
    "disable",
    "enable",
    "list_methods",
    "load_pipeline",
]

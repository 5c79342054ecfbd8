"""diffcache: faster diffusion video generation by caching work the model would otherwise redo.

Public API::

    import diffcache
    pipe = diffcache.load_pipeline("tiny-shapes-t2v")   # embedded model, a local folder or a hub id
    with diffcache.enable(pipe, "adacache", preset="fast") as handle:
        video = pipe("a red circle moving left", num_inference_steps=30).frames
        print(handle.report())
    diffcache.list_methods()
"""

from .adapters import UnsupportedModelError
from .context import StepContext, StepTrackingError
from .methods import (CallRefusedError, Handle, MethodAlreadyEnabledError, MethodSilentWarning,
                      NothingSkippedWarning, Report, UnknownMethodError, enable, list_methods)
from .methods.adacache import AdaCacheConfig
from .methods.deepcache import DeepCacheConfig
from .methods.fbcache import FBCacheConfig
from .methods.pab import PABConfig
from .methods.teacache import TeaCacheConfig
from .embedded.t2v.pipeline import TinyShapesT2VPipeline
from .embedded.t2i.pipeline import TinyShapesT2IPipeline
from .loading import EMBEDDED_MODELS, ModelLoadError, load_pipeline
from .embedded.shapes import PromptError
from .embedded.text import ShapesTextEncoder

__version__ = "0.1.0"


def __getattr__(name: str):
    # diffcache.distill (and the benchmark code it uses) is imported only when its pipeline class is asked for
    if name == "DistilledShapesT2VPipeline":
        from .distill.sampler import DistilledShapesT2VPipeline

        return DistilledShapesT2VPipeline
    raise AttributeError(f"module 'diffcache' has no attribute {name!r}")


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

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

<<<<<<< HEAD
import logging as _logging

from .adapters import Adapter, register_adapter
from .api import Handle, disable, enable
from .context import StepContext
from .distill.sampler import DistilledShapesT2VPipeline
from .embedded.shapes import PromptError
from .embedded.t2i.pipeline import TinyShapesT2IPipeline
from .embedded.t2v.pipeline import TinyShapesT2VPipeline
from .embedded.text import ShapesTextEncoder
from .errors import (BenchConfigError, CallRefusedError, ConfigError, DiffcacheError, DiffcacheWarning,
                     MethodAlreadyEnabledError, MethodSilentWarning, ModelLoadError, NothingSkippedWarning,
                     OutputExistsError, StepTrackingError, UnknownMethodError, UnknownOptionError,
                     UnsupportedModelError)
from .loading import EMBEDDED_MODELS, load_pipeline
from .methods import list_methods
from .methods.adacache import AdaCacheConfig
from .methods.deepcache import DeepCacheConfig
from .methods.fastercache import FasterCacheConfig
from .methods.fbcache import FBCacheConfig
from .methods.hsa import HSAConfig
from .methods.pab import PABConfig
from .methods.teacache import TeaCacheConfig
from .report import CallReport, Report, StepRecord

_logging.getLogger("diffcache").addHandler(_logging.NullHandler())
=======
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

>>>>>>> wt-cli

__version__ = "0.1.0"

__all__ = [
    "EMBEDDED_MODELS",
    "AdaCacheConfig",
    "Adapter",
    "BenchConfigError",
    "CallRefusedError",
    "CallReport",
    "ConfigError",
    "DeepCacheConfig",
    "DiffcacheError",
    "DiffcacheWarning",
    "DistilledShapesT2VPipeline",
    "FBCacheConfig",
    "FasterCacheConfig",
    "HSAConfig",
    "Handle",
    "MethodAlreadyEnabledError",
    "MethodSilentWarning",
    "ModelLoadError",
    "NothingSkippedWarning",
    "OutputExistsError",
    "PABConfig",
    "PromptError",
    "Report",
    "ShapesTextEncoder",
    "StepContext",
    "StepRecord",
    "StepTrackingError",
    "TeaCacheConfig",
    "TinyShapesT2IPipeline",
    "TinyShapesT2VPipeline",
    "UnknownMethodError",
    "UnknownOptionError",
    "UnsupportedModelError",
    "disable",
    "enable",
    "list_methods",
    "load_pipeline",
    "register_adapter",
]

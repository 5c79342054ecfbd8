"""diffcache: faster diffusion video generation by caching work the model would otherwise redo.

Public API::

    import diffcache
    pipe = diffcache.load_pipeline("tiny-shapes-t2v")   # embedded model, a local folder or a hub id
    video = pipe("a red circle moving left", num_inference_steps=30).frames
"""

from .models.pipeline import TinyShapesT2VPipeline
from .models.registry import EMBEDDED_MODELS, ModelLoadError, load_pipeline
from .models.shapes import PromptError
from .models.text import ShapesTextEncoder

__version__ = "0.1.0"

__all__ = [
    "EMBEDDED_MODELS",
    "ModelLoadError",
    "PromptError",
    "ShapesTextEncoder",
    "TinyShapesT2VPipeline",
    "load_pipeline",
]

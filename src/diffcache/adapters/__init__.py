"""Adapters: one file per architecture family, the only code that touches a model's attributes.

This is the one list of the built-in families: importing a family's module registers its adapter
(:func:`register_adapter`). A user's own family registers the same way from outside the package.
"""

from .base import Adapter, argument, find_adapter, register_adapter, registered_adapters, supported_families
from .capabilities import (AttentionRoles, BatchedArguments, BlockStack, ModulatedInput, SplitBlocks,
                           TokenGrid, TokenSparseForward, UNetSkipBranches, has_capability)
from ..errors import UnsupportedModelError
from . import wan, cogvideox, ltx, ltx2, unet, mochi, latte, allegro  # noqa: E402,F401 - the built-in families
from . import wan_vace, skyreels_v2  # noqa: E402,F401 - Wan VACE and SkyReels-V2 (Wan-based)
from . import hunyuan_video, hunyuan_video_framepack, hunyuan_video15  # noqa: E402,F401 - HunyuanVideo 1.0, Framepack, 1.5

__all__ = ["Adapter", "AttentionRoles", "BatchedArguments", "BlockStack", "ModulatedInput", "SplitBlocks",
           "TokenGrid", "TokenSparseForward", "UNetSkipBranches", "UnsupportedModelError", "argument",
           "find_adapter", "has_capability", "register_adapter", "registered_adapters", "supported_families"]

"""Adapters: one per architecture family; the only code that knows a model's insides."""

from .base import Adapter, UnsupportedModelError, find_adapter, supported_families

__all__ = ["Adapter", "UnsupportedModelError", "find_adapter", "supported_families"]

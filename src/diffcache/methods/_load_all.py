"""Importing this module registers every built-in method."""

from . import adacache, deepcache, fastercache, fbcache, hsa, pab, teacache  # noqa: F401

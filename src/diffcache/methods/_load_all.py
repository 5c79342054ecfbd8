"""Importing this module registers every built-in method."""

from . import adacache, fbcache, pab, teacache  # noqa: F401

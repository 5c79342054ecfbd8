"""Importing this module registers every built-in method."""

from . import adacache  # noqa: F401

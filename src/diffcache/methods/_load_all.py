"""Importing this module registers every built-in method."""

from . import adacache, fastercache, fbcache, pab, teacache  # noqa: F401
from . import deepcache  # noqa: F401

"""Caching methods, one file each; :func:`list_methods` lists them."""

from .base import (CallRefusedError, Handle, MethodAlreadyEnabledError, MethodConfig, MethodInfo,
                   MethodSilentWarning, NothingSkippedWarning, Report, UnknownMethodError, enable, list_methods)

__all__ = ["CallRefusedError", "Handle", "MethodAlreadyEnabledError", "MethodConfig", "MethodInfo",
           "MethodSilentWarning", "NothingSkippedWarning", "Report", "UnknownMethodError", "enable", "list_methods"]

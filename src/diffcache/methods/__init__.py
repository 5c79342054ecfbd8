"""Caching methods, one file each (config, pure rule, hooks, registration); :func:`list_methods` lists them and
:mod:`diffcache.methods.framework` is what they share."""

from .framework import MethodConfig, MethodInfo, Runtime, list_methods, method_info, register

__all__ = ["MethodConfig", "MethodInfo", "Runtime", "list_methods", "method_info", "register"]

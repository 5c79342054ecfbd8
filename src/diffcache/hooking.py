"""Installing and removing diffcache's hooks so that they compose with the hooks that manage where a model's
weights live: accelerate's (``pipe.enable_model_cpu_offload()``, ``pipe.enable_sequential_cpu_offload()``) and
diffusers' group offloading and layerwise casting.

diffcache's hooks always sit **inside** those, whichever was enabled first:

* accelerate replaces ``module.forward`` by a wrapper that calls ``module._old_forward`` (its ``_hf_hook``). A
  diffusers ``HookRegistry`` hook registered afterwards would wrap that wrapper, and removing it (the registry sets
  ``module.forward`` back) — or accelerate removing *its* hook, which ``maybe_free_model_hooks`` does at the end of
  every pipeline call under model offload — would drop the other's. Here diffcache's hooks are put beneath
  accelerate's wrapper (into ``_old_forward``), so each side can be removed without touching the other, and the
  weights are on the execution device whenever a diffcache hook reads them (sequential offload keeps them on the
  ``meta`` device otherwise).
* diffusers' group offloading (``group_offloading``, its prefetch hooks) and layerwise casting are hooks of the same
  registry. A diffcache hook registered after them is inserted beneath them, so their ``pre_forward`` /
  ``post_forward`` run on every call of the module, also when diffcache answers it from its cache: the group is
  onloaded and offloaded as usual and a prefetch chain (``use_stream=True``) is never broken by a skipped block. The
  price is that a reused block's weights are still moved.

This uses ``HookRegistry``'s private ``_hook_order`` / ``_fn_refs`` (diffusers 0.42) to insert in the chain.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers.hooks.hooks import HookRegistry, ModelHook

#: diffusers hooks that move or cast a module's weights: diffcache's hooks go beneath them
WEIGHT_HOOKS = ("group_offloading", "layer_execution_tracker", "lazy_prefetch_group_offloading", "layerwise_casting",
                "peft_autocast_disable")


@contextmanager
def _beneath_accelerate(module: torch.nn.Module):
    """While inside, ``module.forward`` is what accelerate's hook wraps (``_old_forward``); changes to it made here
    become the new ``_old_forward`` and accelerate's wrapper is put back on top."""
    outer = module.__dict__.get("forward")
    if getattr(module, "_hf_hook", None) is None or "_old_forward" not in module.__dict__ or outer is None:
        yield
        return
    module.forward = module._old_forward
    try:
        yield
    finally:
        module._old_forward = module.forward
        module.forward = outer


def _inner(fn_ref):
    """The forward a registry entry wraps."""
    return fn_ref.original_forward if fn_ref.original_forward is not None else fn_ref.forward


def _set_inner(fn_ref, hook: ModelHook, forward) -> None:
    if hasattr(hook, "new_forward"):
        fn_ref.original_forward = forward  # a new_forward hook calls original_forward; its .forward is itself
    else:
        fn_ref.forward = forward


def register_hook(module: torch.nn.Module, hook: ModelHook, name: str) -> None:
    """Register ``hook`` as ``name`` on ``module``: outermost of diffcache's hooks there, beneath accelerate's
    wrapper and beneath diffusers' weight hooks (:data:`WEIGHT_HOOKS`)."""
    registry = HookRegistry.check_if_exists_or_initialize(module)
    with _beneath_accelerate(module):
        outer = [i for i, n in enumerate(registry._hook_order) if n in WEIGHT_HOOKS]
        if not outer:
            registry.register_hook(hook, name)
            return
        k = outer[0]
        above = registry._fn_refs[k]
        top = module.forward
        module.forward = _inner(above)  # register on what hook k wraps ...
        try:
            registry.register_hook(hook, name)
        finally:
            new, module.forward = module.forward, top
        if registry._hook_order[-1] != name:  # register_hook refused (a duplicate name): nothing was added
            return
        _set_inner(above, registry.hooks[registry._hook_order[k]], new)  # ... and let hook k wrap the new one
        registry._hook_order.insert(k, registry._hook_order.pop())
        registry._fn_refs.insert(k, registry._fn_refs.pop())


def remove_hook(module: torch.nn.Module, name: str) -> None:
    """Remove the hook ``name`` from ``module`` (if there), leaving every other hook and accelerate's wrapper in
    place, whatever their order."""
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None or name not in registry.hooks:
        return
    with _beneath_accelerate(module):
        index = registry._hook_order.index(name)
        below = _inner(registry._fn_refs[index])
        if index == len(registry._hook_order) - 1:
            if getattr(below, "__self__", None) is module and getattr(below, "__func__", None) is type(module).forward:
                # the class's own forward: no instance attribute, as before the hook (a compiled block's graph
                # guards on the absence of `forward` in its submodules' __dict__; diffcache.compile)
                module.__dict__.pop("forward", None)
            else:
                module.forward = below
        else:  # (diffusers' remove_hook sets .forward, which bypasses a new_forward hook above: done here instead)
            _set_inner(registry._fn_refs[index + 1], registry.hooks[registry._hook_order[index + 1]], below)
        hook = registry.hooks.pop(name)
        registry._hook_order.pop(index)
        registry._fn_refs.pop(index)
        registry._module_ref = hook.deinitalize_hook(registry._module_ref)

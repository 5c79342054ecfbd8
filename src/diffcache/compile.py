"""diffcache with ``torch.compile``: the caching decisions stay in Python, outside every compiled region.

A method decides from Python numbers (a relative change read with ``float()``, a step counter, a per-branch
dictionary). Traced by Dynamo, each such read is a graph break or a guard, and a guard on a number that changes
every step is a recompilation every step. So diffcache never lets Dynamo see its hooks:

* **Regional compilation** (``transformer.compile_repeated_blocks()``, or ``block.compile()`` on each block):
  ``Module.compile`` stores ``torch.compile(module._call_impl)`` as ``module._compiled_call_impl``, which would
  trace diffcache's hooks (diffusers' ``HookRegistry`` replaces ``module.forward``, and ``_call_impl`` calls it).
  On every hooked module that is compiled this way — before or after :func:`diffcache.enable`, it is found at the
  start of each pipeline call — diffcache puts a :class:`CompiledCore` in its place: the module's call runs the
  hooks eagerly, and where the hooks run the block, the block's own forward runs through the user's compiled
  wrapper, with the user's backend and options. The compiled graphs are those of the model without diffcache:
  no graph break and no guard comes from diffcache.
* A hook on a module *inside* a compiled region (an attention layer of a compiled block: PAB, FasterCache, HSA)
  would be traced; diffusers' hook wrapper is a distinct ``functools.partial`` per layer, which Dynamo guards by
  identity, so every block compiles its own graphs and past ``recompile_limit`` (8) Dynamo silently runs the rest
  eagerly. :func:`check_regions` refuses that, naming the module and what works instead.
* **Eager regions**: a method may name a few compiled blocks that run uncompiled
  (:meth:`~diffcache.methods.framework.Runtime.eager_regions`; AdaCache's metric blocks, whose split point it
  probes). Hooks inside those blocks are not refused, and their :class:`CompiledCore` runs the block's eager
  forward, with the inner hooks, instead of the user's compiled wrapper; the other blocks run compiled as above.
  The cost is those blocks' compilation speed-up on the steps they compute (1 of 40 blocks at Wan 2.1 14B).
* **Whole-model compilation** (``transformer.compile()`` or ``torch.compile(transformer)``) traces the step
  tracker and every hook; diffcache refuses it (:class:`~diffcache.errors.CompileError`), at
  :func:`diffcache.enable` when the model is compiled first, else at the first compiled forward.

See docs/compile.md for the measured graph and recompile counts.
"""

from __future__ import annotations

import torch

from .errors import CompileError

#: what to use instead, in every refusal
REGIONAL_ADVICE = ("compile the blocks instead (regional compilation: `transformer.compile_repeated_blocks()` where "
                   "diffusers offers it, else `block.compile()` on each block of the model)")
_NOT_IN_DICT = object()


def unwrap_compiled(module):
    """The model inside ``torch.compile(model)``'s ``OptimizedModule`` wrapper (its ``_orig_mod``), else
    ``module``."""
    from torch._dynamo.eval_frame import OptimizedModule

    while isinstance(module, OptimizedModule):
        module = module._orig_mod
    return module


def compiled_wrapper(module: torch.nn.Module):
    """The compiled ``_call_impl`` that ``module.compile()`` stored (``None`` when it is not compiled so, or when
    diffcache's :class:`CompiledCore` already holds it)."""
    impl = module.__dict__.get("_compiled_call_impl")
    return None if impl is None or isinstance(impl, CompiledCore) else impl


def whole_model_message(model: torch.nn.Module, how: str) -> str:
    return (f"diffcache cannot cache a {type(model).__name__} compiled as a whole ({how}): its caching decisions are "
            "Python numbers taken between the blocks, so Dynamo would trace them (graph breaks at every `float()` of "
            "a metric, and a recompilation at every step from guards on the step counters). Keep the model "
            f"uncompiled and {REGIONAL_ADVICE}; diffcache then runs its decisions outside the compiled blocks, with no "
            "graph break and no recompilation of its own (docs/compile.md).")


def check_not_whole_compiled(model: torch.nn.Module, given) -> None:
    """Refuse, at :func:`diffcache.enable`, a denoiser compiled as a whole (``given`` is what the user passed:
    the ``OptimizedModule`` of ``torch.compile(model)``, or the model itself after ``model.compile()``)."""
    from torch._dynamo.eval_frame import OptimizedModule

    if isinstance(given, OptimizedModule):
        raise CompileError(whole_model_message(model, "torch.compile(model)"))
    if compiled_wrapper(model) is not None:
        raise CompileError(whole_model_message(model, "model.compile()"))


@torch.compiler.disable(reason="diffcache: the denoiser is compiled as a whole; see the error message")
def refuse_traced(model: torch.nn.Module) -> None:
    """Called by the step tracker when Dynamo traces it (the model was compiled as a whole after
    :func:`diffcache.enable`): Dynamo runs this function eagerly (or, with ``fullgraph=True``, stops with its
    reason), and it raises."""
    raise CompileError(whole_model_message(model, "compiled after diffcache.enable"))


class CompiledCore:
    """Put in ``module._compiled_call_impl`` in place of the user's compiled wrapper: ``module(...)`` runs the
    module's forward with diffcache's hooks eagerly; where the innermost diffcache hook runs the module, the user's
    compiled wrapper runs, with ``module.forward`` set for that call to what the hooks wrap (the module's own
    forward, or other libraries' hooks below diffcache's), so the traced code is the same as without diffcache.

    With ``eager=True`` (a block the method runs uncompiled: ``Runtime.eager_regions``) the hook keeps calling the
    forward below it, eagerly, so the hooks on the block's inner modules run; the user's wrapper is only kept to be
    given back."""

    def __init__(self, module: torch.nn.Module, compiled, fn_ref, attribute: str, eager: bool = False):
        self.module = module
        self.compiled = compiled  #: the user's compiled ``_call_impl``
        self.eager = eager  #: whether the module runs its eager forward instead of ``compiled``
        self.fn_ref = fn_ref  #: the innermost diffcache hook's function reference
        self.attribute = attribute  #: ``"original_forward"`` or ``"forward"``: what that hook calls to run the module
        self.inner = getattr(fn_ref, attribute)  #: what it called before: the forward below diffcache's hooks
        #: whether that forward is an instance attribute (another library's hook), not the class's own method
        self.inner_in_dict = not (getattr(self.inner, "__self__", None) is module
                                  and getattr(self.inner, "__func__", None) is type(module).forward)

    def __call__(self, *args, **kwargs):
        return self.module.forward(*args, **kwargs)  # eager: diffcache's hooks decide in Python

    def run_compiled(self, *args, **kwargs):
        module = self.module
        hooked = module.__dict__.get("forward", _NOT_IN_DICT)
        if self.inner_in_dict:
            module.__dict__["forward"] = self.inner
        else:  # the class's own forward: what the compiled `_call_impl` finds without any instance attribute
            module.__dict__.pop("forward", None)
        try:
            return self.compiled(*args, **kwargs)
        finally:
            if hooked is _NOT_IN_DICT:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = hooked

    def release(self) -> None:
        """Give the module back its compiled wrapper and the hook its forward (before the hooks are removed)."""
        if getattr(self.fn_ref, self.attribute) == self.run_compiled:
            setattr(self.fn_ref, self.attribute, self.inner)
        if self.module.__dict__.get("_compiled_call_impl") is self:
            self.module._compiled_call_impl = self.compiled


def _innermost_hook(module: torch.nn.Module, names: set[str]):
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None:
        return None
    for name, fn_ref in zip(registry._hook_order, registry._fn_refs):
        if name in names:
            return fn_ref
    return None


def seat(module: torch.nn.Module, hook_names: set[str], eager: bool = False) -> CompiledCore | None:
    """Put a :class:`CompiledCore` on ``module`` if it is compiled with ``module.compile()`` (its own wrapper, not
    one diffcache holds already) and carries diffcache hooks named in ``hook_names``; with ``eager``, one that runs
    the module uncompiled (an eager region of the method)."""
    compiled = compiled_wrapper(module)
    if compiled is None:
        return None
    fn_ref = _innermost_hook(module, hook_names)
    if fn_ref is None:
        return None
    if module._forward_pre_hooks or module._forward_hooks:
        raise CompileError(
            f"diffcache cannot run its hooks outside the compiled {type(module).__name__}: it also has PyTorch "
            "forward hooks (register_forward_hook / register_forward_pre_hook), which would run inside the compiled "
            "call after diffcache's decision instead of before it. Remove them, or keep this module uncompiled.")
    attribute = "original_forward" if fn_ref.original_forward is not None else "forward"
    core = CompiledCore(module, compiled, fn_ref, attribute, eager)
    if not eager:
        setattr(fn_ref, attribute, core.run_compiled)
    module._compiled_call_impl = core
    return core


def check_regions(model: torch.nn.Module, hooked: list[torch.nn.Module], method: str,
                  eager: list[torch.nn.Module] = ()) -> None:
    """Refuse a diffcache hook on a module inside a region compiled with ``module.compile()`` (it would be traced:
    see the module docstring), naming the module and what to do instead. The regions in ``eager`` (the method runs
    them uncompiled) may hold hooks."""
    eager_ids = {id(m) for m in eager}
    compiled = [m for m in model.modules()
                if m.__dict__.get("_compiled_call_impl") is not None and id(m) not in eager_ids]
    if not compiled:
        return
    hooked_ids = {id(m) for m in hooked}
    for region in compiled:
        for name, inner in region.named_modules():
            if name and id(inner) in hooked_ids:
                raise CompileError(
                    f"{method} hooks the {type(inner).__name__} '{name}' inside the compiled "
                    f"{type(region).__name__}: Dynamo would trace that hook, and because diffusers wraps each "
                    "hooked module's forward in its own functools.partial, which Dynamo guards by identity, every "
                    "block would compile its own graphs; past torch._dynamo.config.recompile_limit (8) the rest run "
                    f"eagerly. {method} works uncompiled; with torch.compile, use a method whose hooks sit on whole "
                    "blocks (fbcache, teacache, adacache: its metric block runs uncompiled; deepcache on a U-Net) "
                    "with regional compilation (docs/compile.md).")

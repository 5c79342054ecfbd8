"""What a generation costs: wall-clock and CPU time, denoiser FLOPs per forward, the peak of tensor memory, the
bytes of tensors a method keeps in its cache.

* Time (:func:`timed`): ``time.perf_counter`` and the process's CPU time (``time.process_time``, which other
  processes on a shared machine do not inflate) around one call, after a garbage collection as :mod:`timeit`
  does, so that no collection of earlier garbage lands inside the timed call; and the wall-clock time inside the
  denoiser's forwards (:class:`DenoiserTimer`), the part of the call that skipping can shrink.
* FLOPs: the formulas of :mod:`torch.utils.flop_counter` (those ``FlopCounterMode`` uses) applied to every operator
  run inside a denoiser forward (torch module hooks on the denoiser, so forwards that a method answers from its
  cache count what they really ran). Scaled-dot-product
  attention on CPU (``_scaled_dot_product_flash_attention_for_cpu``) is counted with torch's own SDPA formula,
  which torch registers only for the GPU kernels.
* Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the call, minus what was allocated before it. On
  CPU, where torch has no allocator statistics, the peak of the bytes of tensor storages created during the call
  and still referenced (tracked per operator output with a dispatch mode): activations and caches, not weights
  or inputs.
* Cache memory: the bytes of the distinct tensor storages reachable from a method's state (diffcache's runtime,
  or a peer's diffusers hook registries), measured after every denoiser forward; the maximum is reported.
"""

from __future__ import annotations

import dataclasses
import gc
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry, sdpa_flop_count, shape_wrapper

from ..memory import tensor_bytes  # noqa: F401 - the cache-bytes walk, shared with the runtimes' own reports


def timed(run) -> tuple[object, float, float]:
    """``run()`` timed: ``(its result, wall-clock seconds, CPU seconds of this process)``."""
    gc.collect()
    start, cpu_start = time.perf_counter(), time.process_time()
    result = run()
    seconds = time.perf_counter() - start
    return result, seconds, time.process_time() - cpu_start


class DenoiserTimer:
    """The wall-clock seconds spent inside the denoisers' forwards (``seconds``), summed over the forwards, measured
    while inside ``with`` by a forward pre/post hook pair on each module of ``denoisers``: the time skipping can
    shrink, with every hook inside the forward (the step tracker's and the method's) counted in it. Two clock reads
    per forward."""

    def __init__(self, denoisers):
        self.denoisers = list(denoisers)
        self.seconds = 0.0
        self._start: float | None = None
        self._owner = None
        self._handles: list = []

    def _before(self, module, args):
        if self._start is None:  # (an outer forward already timing: a nested one is inside it)
            self._start = time.perf_counter()
            self._owner = module

    def _after(self, module, args, output):
        if self._start is not None and module is self._owner:
            self.seconds += time.perf_counter() - self._start
            self._start = None

    def __enter__(self):
        for module in self.denoisers:  # outermost of the torch hooks, so their time is inside the forward's
            self._handles += [module.register_forward_pre_hook(self._before, prepend=True),
                              module.register_forward_hook(self._after)]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._start = None
        return False


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_FORMULAS = dict(flop_registry)  #: torch's own formulas (torch.utils.flop_counter), keyed by overload packet
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _FORMULAS[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = shape_wrapper(_cpu_sdpa_flop)


class _CostMode(TorchDispatchMode):
    """One dispatch mode for both counts: FLOPs of the operators that torch's flop counter has formulas for (only
    while ``counting``), and the peak bytes of tensor storages created under the mode and still referenced by some
    tensor (``track_memory``). Lighter than nesting ``FlopCounterMode``, whose module tracker also walks the module
    tree (and recurses forever on models whose blocks reference their parent, as cache-dit's wrappers do)."""

    def __init__(self, track_memory: bool):
        super().__init__()
        self.track_memory = track_memory
        self.counting = False
        self.flops = 0
        self.live: dict[int, list[int]] = {}  # storage pointer -> [bytes, tensors referencing it]
        self.current = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            self.current -= entry[0]
            del self.live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.counting:
            formula = _FORMULAS.get(func._overloadpacket)
            if formula is not None:
                self.flops += int(formula(*args, **kwargs, out_val=out))
        if self.track_memory:
            for tensor in (out,) if isinstance(out, torch.Tensor) else tree_flatten(out)[0]:
                if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                    continue
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key == 0:
                    continue
                entry = self.live.get(key)
                if entry is None:
                    entry = self.live[key] = [storage.nbytes(), 0]
                    self.current += entry[0]
                    self.peak = max(self.peak, self.current)
                entry[1] += 1
                weakref.finalize(tensor, self._release, key)
        return out


@dataclasses.dataclass
class Cost:
    flops_per_forward: list[int]  #: denoiser FLOPs of each forward, in call order
    peak_memory_bytes: int
    memory_measure: str  #: what peak_memory_bytes measures
    cache_bytes: int | None  #: max over forwards of the method's cached tensor bytes (None: not measurable)

    @property
    def flops(self) -> int:
        return sum(self.flops_per_forward)


def measure_cost(denoiser: torch.nn.Module, run, state_roots=None) -> tuple[object, Cost]:
    """Run ``run()`` (one generation) counting the denoiser's FLOPs per forward, the peak tensor memory and,
    when ``state_roots`` is given (a callable returning the objects that hold the method's state), the cache
    bytes. Returns ``(run's result, Cost)``."""
    cuda = torch.cuda.is_available() and any(p.is_cuda for p in denoiser.parameters())
    mode = _CostMode(track_memory=not cuda)
    flops: list[int] = []
    cache = [0]

    def before(module, args):
        mode.counting, mode.flops = True, 0

    def after(module, args, output):
        mode.counting = False
        flops.append(mode.flops)
        if state_roots is not None:
            cache[0] = max(cache[0], tensor_bytes(*state_roots()))

    handles = [denoiser.register_forward_pre_hook(before), denoiser.register_forward_hook(after)]
    try:
        if cuda:
            torch.cuda.synchronize()
            start = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            with mode:
                result = run()
            torch.cuda.synchronize()
            peak, measure = torch.cuda.max_memory_allocated() - start, "CUDA allocator peak during the call"
        else:
            with mode:
                result = run()
            peak, measure = mode.peak, "peak of tensor storages created during the call (CPU)"
    finally:
        for handle in handles:
            handle.remove()
    return result, Cost(flops, int(peak), measure, cache[0] if state_roots is not None else None)

"""Where generation stands: the :class:`StepContext` of every denoiser call, and the hook that works it out.

A method never counts calls itself. :class:`StepTracker` sits on the denoiser as the outermost diffusers hook and,
before each forward, decides

* the **step** (0-based) and the number of steps ``T``, from the first source that knows them:
  1. the pipeline's ``cache_context(name, step_index=i, num_inference_steps=T)`` (WanPipeline and the embedded
     pipeline pass these; so can a hand-written loop);
  2. the position of the forward's ``timestep`` in ``pipeline.scheduler.timesteps`` (CogVideoX, LTX-Video and
     any scheduler: flow-match Euler, UniPC, DPM++, DDIM …);
  3. for a bare denoiser with no scheduler: a new step whenever the timestep changes, with ``T`` given to
     :func:`diffcache.enable` as ``num_inference_steps``;
* the **branch**: the ``cache_context`` name (``"cond"``, ``"uncond"``, ``"cond_uncond"`` for batched CFG or no
  CFG); without one, ``"call0"``, ``"call1"`` … by position within the step;
* whether a **new pipeline call** has begun: the step went backwards, or this (step, branch) was already seen in
  the current call, or ``T`` changed. This needs no cooperation from the pipeline, so a call that died of an
  exception half way leaves the next call correct: its first forward starts a fresh call.

A pipeline with two denoisers that take turns (Wan 2.2 A14B: ``transformer`` for the high-noise steps,
``transformer_2`` for the low-noise ones) gets one tracker per denoiser in one :class:`TrackerGroup`: the step and
call bookkeeping is shared, so steps count the whole loop and a call that never reaches the second expert is still
one call. Each tracker's listeners see their expert's *phase* as a schedule of its own: ``StepContext.step`` counts
from the expert's first step (``step_offset`` is where that is in the whole loop) and ``num_steps`` is the phase's
length, so each expert has its own warm-up, cache and rules.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from diffusers.hooks.hooks import HookRegistry, ModelHook, StateManager
from .errors import StepTrackingError
from .lora import LoraWatch, describe_change
from .hooking import register_hook, remove_hook
from .stacking import check_no_foreign_cache

logger = logging.getLogger("diffcache")

TRACKER_HOOK = "diffcache_step_tracker"



@dataclass(frozen=True)
class StepContext:
    """Where one denoiser forward stands.

    ``step`` is 0-based (``0 … num_steps-1``); ``branch`` names the call within the step (``"cond"``,
    ``"uncond"``, ``"cond_uncond"`` …); ``call_index`` counts pipeline calls since the method was enabled;
    ``first_in_step`` is true for the first forward of a step (where a method takes its one decision per step).
    """

    call_index: int
    step: int
    num_steps: int
    branch: str
    timestep: float | None = None
    sigma: float | None = None
    first_in_step: bool = True
    #: the denoiser of a multi-expert pipeline this forward runs on (``"transformer"``, ``"transformer_2"``), else None
    expert: str | None = None
    #: where the expert's phase starts in the whole loop: the loop's step is ``step + step_offset``
    step_offset: int = 0

    @property
    def step_1based(self) -> int:
        return self.step + 1

    @property
    def loop_step(self) -> int:
        """The step in the whole denoising loop (equal to ``step`` unless this expert's phase starts later)."""
        return self.step + self.step_offset


class _ContextProbe(StateManager):
    """Receives the pipeline's ``cache_context`` (diffusers hands it to every StateManager of a stateful hook)."""

    def __init__(self):
        super().__init__(dict)

    def set_context(self, context) -> None:
        self._context = context

    @property
    def current(self):
        return self._context


@dataclass
class _CallState:
    num_steps: int | None = None
    step: int = -1
    seen: set = field(default_factory=set)
    calls_in_step: int = 0
    last_timestep: float | None = None
    #: forwards the first step had (known once the second step begins): without branch names, a timestep the
    #: schedule repeats (PNDM's PLMS start, Heun) is another branch only while a step has fewer forwards than this
    forwards_per_step: int | None = None


def _first_float(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() == 0:
            return None
        return float(value.detach().flatten().float().max())  # per-token timesteps: the noisiest token
    return float(value)


def _in_dtype_of(timesteps: torch.Tensor | None, given) -> torch.Tensor | None:
    """The scheduler's ``timesteps`` as the pipeline hands them to a denoiser in bf16 / fp16: HunyuanVideo's and
    Mochi's pipelines cast ``t`` to the latents' dtype (``t.to(latents.dtype)``: 956.25 → 956 in bf16), so a
    timestep is looked up among the schedule's timesteps rounded the same way. Float32 and integer timesteps are
    looked up as they are."""
    if (timesteps is None or not isinstance(given, torch.Tensor) or not given.is_floating_point()
            or torch.finfo(given.dtype).bits >= 32):
        return timesteps
    return timesteps.to(given.dtype).float()


class StepListener(Protocol):
    """What the tracker tells (a method's :class:`~diffcache.methods.framework.Runtime` is one)."""

    def begin_call(self, call_index: int, num_steps: int) -> None: ...

    def begin_forward(self, context: StepContext, args: tuple, kwargs: dict) -> None: ...

    def end_forward(self, context: StepContext) -> None: ...


class TrackerGroup:
    """The step and call bookkeeping shared by the trackers of one pipeline's denoisers (one tracker per expert),
    and the number of steps of every call seen (``call_steps[call_index]``)."""

    def __init__(self):
        self.call_index = -1
        self.call = _CallState()
        self.trackers: list[StepTracker] = []
        self.call_steps: dict[int, int] = {}
        self.running: StepTracker | None = None  #: the tracker of the denoiser that ran the last forward

    def reset(self) -> None:
        self.call = _CallState()
        self.running = None
        for tracker in self.trackers:
            tracker.current = None


class StepTracker(ModelHook):
    """Outermost hook on the denoiser: computes a :class:`StepContext` before every forward and tells the
    listeners (the method's runtime) about new calls and new forwards, with the forward's arguments.

    ``group``, ``expert`` and ``phase`` are for a pipeline with several denoisers (see the module docstring):
    ``phase(num_steps)`` gives the steps of the whole loop this tracker's denoiser runs (a ``range``)."""

    _is_stateful = True

    def __init__(self, timestep_of: Callable[[tuple, dict], Any], pipeline=None, num_inference_steps: int | None = None,
                 *, group: TrackerGroup | None = None, expert: str | None = None,
                 phase: Callable[[int], range] | None = None):
        super().__init__()
        self._probe = _ContextProbe()
        self._timestep_of = timestep_of
        self._pipeline = weakref.ref(pipeline) if pipeline is not None else None
        self._fixed_steps = num_inference_steps
        self.listeners: list[StepListener] = []
        self.group = group if group is not None else TrackerGroup()
        self.group.trackers.append(self)
        self.expert = expert
        self._phase_of = phase
        self.phases: dict[int, range] = {}  #: call index -> the loop steps this tracker's denoiser runs in it
        self.current: StepContext | None = None
        self._lora_watch = LoraWatch()
        self._lora: tuple = (None, -1)  #: (LoRA state, call index) of this denoiser's last forward

    @property
    def call_index(self) -> int:
        return self.group.call_index

    @property
    def _call(self) -> _CallState:
        return self.group.call

    @_call.setter
    def _call(self, value: _CallState) -> None:
        self.group.call = value

    # -- diffusers hook protocol ---------------------------------------------------------------------------------
    def pre_forward(self, module, *args, **kwargs):
        if torch.compiler.is_compiling():  # the model was compiled as a whole after diffcache.enable
            from .compile import refuse_traced

            refuse_traced(module)
        context = self._locate(args, kwargs, module)
        self.current = context
        for listener in self.listeners:
            listener.begin_forward(context, args, kwargs)
        return args, kwargs

    def post_forward(self, module, output):
        for listener in self.listeners:
            listener.end_forward(self.current)
        return output

    def reset_state(self, module):
        self.reset()
        return module

    def reset(self) -> None:
        """Forget the call in progress (for every tracker of the group): the next forward starts a new call."""
        self.group.reset()

    def _begin_call(self, call_index: int, num_steps: int, first_step: int, restart: bool = False) -> None:
        """A call of ``num_steps`` began at loop step ``first_step``. Without a phase function the denoiser's phase
        runs from that step to the end: a call that starts late (one expert of a two-expert loop enabled on its own,
        an image-to-image loop that skips the first timesteps) is a shorter schedule to the methods, with its
        warm-up where it starts. ``restart``: the LoRA state changed inside a call, which goes on from
        ``first_step`` as a new call (each expert's phase cut to the steps left)."""
        phase = self._phase_of(num_steps) if self._phase_of is not None else range(first_step, num_steps)
        if restart:
            phase = range(max(phase.start, first_step), max(phase.stop, first_step))
        self.phases[call_index] = phase
        if len(phase):  # an expert the call never reaches hears nothing of it
            for listener in self.listeners:
                listener.begin_call(call_index, len(phase))

    # -- step location -------------------------------------------------------------------------------------------
    def _scheduler_timesteps(self):
        pipeline = self._pipeline() if self._pipeline is not None else None
        scheduler = getattr(pipeline, "scheduler", None)
        timesteps = getattr(scheduler, "timesteps", None)
        if timesteps is None or len(timesteps) == 0:
            return None
        return torch.as_tensor(timesteps).detach().flatten().float().cpu()

    def _locate(self, args, kwargs, module=None) -> StepContext:
        diffusers_context = self._probe.current
        name = getattr(diffusers_context, "name", None)
        given = self._timestep_of(args, kwargs)
        timestep = _first_float(given)
        sigma = getattr(diffusers_context, "sigma", None)
        step = getattr(diffusers_context, "step_index", None)
        num_steps = getattr(diffusers_context, "num_inference_steps", None)
        call = self._call
        # the scheduler's timesteps, only where the pipeline's cache_context does not say the step and the count
        timesteps = (_in_dtype_of(self._scheduler_timesteps(), given) if step is None or num_steps is None
                     else None)

        if step is None and timesteps is not None and timestep is not None:
            step = self._step_from_timesteps(timesteps, timestep, name)
        if num_steps is None:
            num_steps = len(timesteps) if timesteps is not None and step is not None else self._fixed_steps
        if num_steps is None:
            where = (f"the timestep {timestep} is not among the {len(timesteps)} timesteps of "
                     f"{type(self._pipeline().scheduler).__name__}" if timesteps is not None else
                     "there is no pipeline scheduler to look the timestep up in")
            raise StepTrackingError(
                f"diffcache could not tell which denoising step this denoiser call belongs to: {where}, and no "
                "cache_context(step_index=..., num_inference_steps=...) says it. Wrap each call in "
                "`denoiser.cache_context('cond', step_index=i, num_inference_steps=T)`, or pass "
                "num_inference_steps=T to diffcache.enable()."
            )
        if step is None:  # a bare denoiser: a new step whenever the timestep changes
            if call.step < 0 or call.num_steps != num_steps or timestep is None:
                step = 0
            elif timestep == call.last_timestep:
                step = call.step
            elif timestep > call.last_timestep or call.step + 1 >= num_steps:
                step = 0  # the noise level went up, or the steps ran out: a new call
            else:
                step = call.step + 1
        step, num_steps = int(step), int(num_steps)
        if not 0 <= step < num_steps:
            raise StepTrackingError(f"step index {step} is outside 0..{num_steps - 1}")

        branch_key = name
        new_call = (
            call.step < 0
            or num_steps != call.num_steps
            or step < call.step
            or (step == call.step and name is not None and (step, name) in call.seen)
        )
        restart = False
        if module is not None:
            handle = getattr(module, "_diffcache_handle", None)
            pipeline = self._pipeline() if self._pipeline is not None else None
            check_no_foreign_cache(module, pipeline, getattr(handle, "method", "method"), scan_hooks=new_call)
            lora = self._lora_watch.state(module, kwargs)
            before, seen_in = self._lora
            # the LoRA changed after this denoiser already ran in this call: its cache is of the other LoRA
            restart = not new_call and seen_in == self.call_index and lora != before
            if restart:
                logger.info("diffcache: %s at step %d; the method drops its cache and starts afresh from this step "
                            "(a new call in the report).", describe_change(before, lora), step)
        if new_call or restart:
            group = self.group
            group.call_index += 1
            call = group.call = _CallState(num_steps=num_steps)
            group.call_steps[group.call_index] = num_steps
            for tracker in group.trackers:
                tracker._begin_call(group.call_index, num_steps, step, restart=restart)
        if module is not None:
            self._lora = (lora, self.call_index)
        first = step != call.step
        if first:
            if call.step == 0 and call.forwards_per_step is None:
                call.forwards_per_step = call.calls_in_step
            call.calls_in_step = 0
        if branch_key is None:
            branch_key = f"call{call.calls_in_step}"
        call.calls_in_step += 1
        call.seen.add((step, branch_key))
        call.step = step
        call.last_timestep = timestep
        if sigma is None:
            sigma = self._sigma_at(step)
        phase = self.phases.get(self.call_index, range(num_steps))
        if step not in phase:
            raise StepTrackingError(
                f"{self.expert or 'this denoiser'} ran step {step} of {num_steps}, outside its phase (steps "
                f"{phase.start}..{phase.stop - 1}) as the pipeline's boundary_ratio assigns them; diffcache follows "
                "the pipeline's own switch between experts, so a loop that switches elsewhere is not supported.")
        group = self.group
        if group.running is not None and group.running is not self and not new_call:
            for listener in group.running.listeners:  # the other expert's phase is over: it frees its cache
                end_phase = getattr(listener, "end_phase", None)
                if end_phase is not None:
                    end_phase()
        group.running = self
        return StepContext(self.call_index, step - phase.start, len(phase), branch_key, timestep, sigma, first,
                           self.expert, phase.start)

    def _step_from_timesteps(self, timesteps: torch.Tensor, timestep: float, name: str | None) -> int | None:
        """Position of ``timestep`` in the scheduler's timesteps. Some schedules repeat a timestep (PNDM's PLMS
        start ``901, 801, 801, 701 …``, Karras sigmas at many steps, Heun's doubled steps): then the same step again
        if this is another branch of it, else the first occurrence after the current step — every forward of the
        schedule is its own step. Another branch means: a branch name not yet seen in this step or, without names,
        fewer forwards so far in this step than the first step had."""
        matches = torch.isclose(timesteps, torch.tensor(timestep), rtol=1e-5, atol=1e-4).nonzero().flatten().tolist()
        if len(matches) <= 1:
            return matches[0] if matches else None
        call = self._call
        if name is not None:
            new_branch = (call.step, name) not in call.seen
        else:
            new_branch = call.forwards_per_step is None or call.calls_in_step < call.forwards_per_step
        another_branch = call.step in matches and timestep == call.last_timestep and new_branch
        if another_branch:
            return call.step
        later = [m for m in matches if m > call.step]
        return later[0] if later else matches[0]

    def _sigma_at(self, step: int) -> float | None:
        pipeline = self._pipeline() if self._pipeline is not None else None
        sigmas = getattr(getattr(pipeline, "scheduler", None), "sigmas", None)
        if sigmas is None or step >= len(sigmas):
            return None
        return float(sigmas[step])


def install_tracker(denoiser: torch.nn.Module, tracker: StepTracker) -> None:
    """Register ``tracker`` on ``denoiser``: outermost of diffcache's hooks, beneath offload's (:mod:`diffcache.hooking`)."""
    register_hook(denoiser, tracker, TRACKER_HOOK)
    HookRegistry.check_if_exists_or_initialize(denoiser).invalidate_child_registries_cache()


def remove_tracker(denoiser: torch.nn.Module) -> None:
    """Remove the step tracker from ``denoiser`` (if there), leaving every other hook in place."""
    remove_hook(denoiser, TRACKER_HOOK)
    registry = getattr(denoiser, "_diffusers_hook", None)
    if registry is not None:
        registry.invalidate_child_registries_cache()

"""Step tracking: step index, number of steps and branch in every CFG mode, for several schedulers, across
repeated and interrupted calls, and for a bare denoiser in a hand-written loop."""

import pytest
import torch
from diffusers import (CogVideoXDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler)
from tiny_diffusers import tiny_cogvideox_pipeline, tiny_ltx_pipeline, tiny_sd_pipeline

from diffcache.adapters import find_adapter
from diffcache.context import TRACKER_HOOK, StepTracker, StepTrackingError, install_tracker

PROMPT = "a red circle moving left"


class Recorder:
    def __init__(self):
        self.calls, self.forwards = [], []

    def begin_call(self, index, num_steps):
        self.calls.append((index, num_steps))

    def begin_forward(self, ctx, args, kwargs):
        self.forwards.append(ctx)

    def end_forward(self, ctx):
        pass


@pytest.fixture
def track():
    installed = []

    def _track(model, pipeline=None, num_inference_steps=None):
        adapter = find_adapter(model)
        tracker = StepTracker(lambda a, k: adapter.timestep(model, a, k), pipeline, num_inference_steps)
        recorder = Recorder()
        tracker.listeners.append(recorder)
        install_tracker(model, tracker)
        installed.append(model)
        return recorder

    yield _track
    for model in installed:
        model._diffusers_hook.remove_hook(TRACKER_HOOK, recurse=False)


def steps_and_branches(recorder, call_index=None):
    return [(c.step, c.branch, c.first_in_step) for c in recorder.forwards
            if call_index is None or c.call_index == call_index]


def expected(num_steps, branches):
    return [(s, b, i == 0) for s in range(num_steps) for i, b in enumerate(branches)]


@pytest.mark.parametrize("cfg_mode,guidance,branches", [
    ("split", 5.0, ["cond", "uncond"]),
    ("batched", 5.0, ["cond_uncond"]),
    ("split", 1.0, ["cond"]),  # no CFG
])
def test_every_cfg_mode_gives_steps_and_branches(random_pipe, track, cfg_mode, guidance, branches):
    recorder = track(random_pipe.transformer, random_pipe)
    random_pipe(PROMPT, num_inference_steps=7, guidance_scale=guidance, cfg_mode=cfg_mode, output_type="latent")
    assert recorder.calls == [(0, 7)]
    assert steps_and_branches(recorder) == expected(7, branches)
    assert all(c.num_steps == 7 for c in recorder.forwards)


def test_batch_of_two_and_repeated_calls_with_other_step_counts(random_pipe, track):
    recorder = track(random_pipe.transformer, random_pipe)
    random_pipe([PROMPT, "a blue square moving up"], num_inference_steps=4, output_type="latent")
    random_pipe(PROMPT, num_inference_steps=9, output_type="latent")
    random_pipe(PROMPT, num_inference_steps=9, output_type="latent")  # same T again: still a new call
    assert recorder.calls == [(0, 4), (1, 9), (2, 9)]
    assert steps_and_branches(recorder, 0) == expected(4, ["cond", "uncond"])
    assert steps_and_branches(recorder, 2) == expected(9, ["cond", "uncond"])


@pytest.mark.parametrize("scheduler", [
    UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=1.0),
    DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=1.0,
                                algorithm_type="dpmsolver++"),
], ids=["unipc", "dpm++"])
def test_flow_schedulers_found_from_the_timestep(random_pipe, track, scheduler, monkeypatch):
    """The embedded pipeline with its step information withheld: steps come from the scheduler's timesteps."""
    model = random_pipe.transformer
    original_context = type(model).cache_context
    monkeypatch.setattr(model, "cache_context", lambda name, **info: original_context(model, name))
    monkeypatch.setattr(random_pipe, "scheduler", scheduler)
    recorder = track(model, random_pipe)
    random_pipe(PROMPT, num_inference_steps=6, output_type="latent")
    random_pipe(PROMPT, num_inference_steps=6, output_type="latent")
    assert recorder.calls == [(0, 6), (1, 6)]
    assert steps_and_branches(recorder, 1) == expected(6, ["cond", "uncond"])
    assert [c.sigma for c in recorder.forwards[::2]][:6] == [float(s) for s in scheduler.sigmas[:6]]


class _ScheduleOnly:
    """A stand-in pipeline with nothing but a scheduler holding ``timesteps`` (what the tracker reads)."""

    def __init__(self, timesteps):
        self.scheduler = type("Scheduler", (), {"timesteps": torch.tensor(timesteps), "sigmas": None})()


def test_repeated_timesteps_in_a_schedule(random_pipe, track):
    """Karras sigmas at many steps (or Heun) repeat a timestep: each occurrence is its own step."""
    model = random_pipe.transformer
    fake = _ScheduleOnly([900.0, 500.0, 1.0, 1.0])  # kept alive: the tracker holds the pipeline weakly
    recorder = track(model, fake)
    x, text = torch.randn(1, 12, 8, 16, 16), random_pipe.encode_prompt([PROMPT])
    for _ in range(2):
        for t in (900.0, 500.0, 1.0, 1.0):
            for branch in ("cond", "uncond"):
                with model.cache_context(branch):
                    model(hidden_states=x, timestep=torch.tensor([t]), encoder_hidden_states=text)
    assert recorder.calls == [(0, 4), (1, 4)]
    assert steps_and_branches(recorder, 1) == expected(4, ["cond", "uncond"])


@pytest.mark.parametrize("forwards_per_step", [1, 2])
def test_repeated_timesteps_without_branch_names(random_pipe, track, forwards_per_step):
    """PNDM's PLMS start repeats a timestep (``901, 801, 801, 701``). Without branch names, a repeat is another
    branch only while the step has fewer forwards than the first step had: one forward per step (batched CFG,
    Stable Diffusion) gives four steps, two (a hand-written split loop) gives four steps of two branches."""
    model = random_pipe.transformer
    fake = _ScheduleOnly([901.0, 801.0, 801.0, 701.0])  # kept alive: the tracker holds the pipeline weakly
    recorder = track(model, fake)
    x, text = torch.randn(1, 12, 8, 16, 16), random_pipe.encode_prompt([PROMPT])
    for t in fake.scheduler.timesteps.tolist():
        for _ in range(forwards_per_step):
            model(hidden_states=x, timestep=torch.tensor([t]), encoder_hidden_states=text)
    assert recorder.calls == [(0, 4)]
    assert steps_and_branches(recorder) == expected(4, [f"call{i}" for i in range(forwards_per_step)])


@pytest.mark.parametrize("scheduler_class", [None, DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler,
                                             CogVideoXDPMScheduler],
                         ids=["cogvideox-ddim", "ddim", "dpm++", "unipc", "cogvideox-dpm"])
def test_steps_found_from_the_timestep_on_cogvideox(track, scheduler_class):
    """CogVideoX passes no step index: the step is the timestep's position in the scheduler's timesteps."""
    pipe = tiny_cogvideox_pipeline()
    if scheduler_class is not None:
        pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    recorder = track(pipe.transformer, pipe)
    for steps in (5, 8):
        pipe(prompt="a cat", height=16, width=16, num_frames=9, num_inference_steps=steps, output_type="latent",
             generator=torch.Generator().manual_seed(0))
    assert recorder.calls == [(0, 5), (1, 8)]
    assert steps_and_branches(recorder, 1) == expected(8, ["cond_uncond"])


def test_ltx_without_cfg_and_with_flow_match_euler(track):
    pipe = tiny_ltx_pipeline()
    recorder = track(pipe.transformer, pipe)
    pipe(prompt="a cat", height=32, width=32, num_frames=9, num_inference_steps=5, guidance_scale=1.0,
         output_type="latent")
    assert steps_and_branches(recorder) == expected(5, ["cond_uncond"])


def test_an_interrupted_call_leaves_the_next_call_correct(random_pipe, track):
    recorder = track(random_pipe.transformer, random_pipe)

    def explode(pipe, step, timestep, kwargs):
        if step == 3:
            raise KeyboardInterrupt
        return kwargs

    with pytest.raises(KeyboardInterrupt):
        random_pipe(PROMPT, num_inference_steps=8, output_type="latent", callback_on_step_end=explode)
    random_pipe(PROMPT, num_inference_steps=8, output_type="latent")
    assert recorder.calls == [(0, 8), (1, 8)]
    assert steps_and_branches(recorder, 1) == expected(8, ["cond", "uncond"])

    # interrupted inside the very first forward: the next call's first forward is step 0 "cond" again
    def fail(*args, **kwargs):
        raise RuntimeError("out of memory")

    registry = random_pipe.transformer._diffusers_hook
    tracker = registry.get_hook(TRACKER_HOOK)
    original = tracker.fn_ref.forward
    tracker.fn_ref.forward = fail
    with pytest.raises(RuntimeError):
        random_pipe(PROMPT, num_inference_steps=8, output_type="latent")
    tracker.fn_ref.forward = original
    random_pipe(PROMPT, num_inference_steps=8, output_type="latent")
    assert [c[0] for c in recorder.calls] == [0, 1, 2, 3]
    assert steps_and_branches(recorder, 3) == expected(8, ["cond", "uncond"])


def test_hand_written_loop_with_cache_context(random_pipe, track):
    model = random_pipe.transformer
    recorder = track(model)
    x = torch.randn(1, 12, 8, 16, 16)
    text = random_pipe.encode_prompt([PROMPT])
    for i, t in enumerate([900.0, 600.0, 300.0]):
        with model.cache_context("cond", step_index=i, num_inference_steps=3):
            model(hidden_states=x, timestep=torch.tensor([t]), encoder_hidden_states=text)
    assert steps_and_branches(recorder) == expected(3, ["cond"])


def test_bare_denoiser_counts_timestep_changes(random_pipe, track):
    model = random_pipe.transformer
    recorder = track(model, num_inference_steps=3)
    x = torch.randn(1, 12, 8, 16, 16)
    text = random_pipe.encode_prompt([PROMPT])
    for _ in range(2):  # two sampling runs, each: 3 steps, two calls (CFG) per step
        for t in (900.0, 600.0, 300.0):
            for _ in range(2):
                model(hidden_states=x, timestep=torch.tensor([t]), encoder_hidden_states=text)
    assert recorder.calls == [(0, 3), (1, 3)]
    assert steps_and_branches(recorder, 1) == expected(3, ["call0", "call1"])


def test_bare_denoiser_without_step_information_is_a_clear_error(random_pipe, track):
    model = random_pipe.transformer
    track(model)
    with pytest.raises(StepTrackingError, match="num_inference_steps"):
        model(hidden_states=torch.randn(1, 12, 8, 16, 16), timestep=torch.tensor([500.0]),
              encoder_hidden_states=random_pipe.encode_prompt([PROMPT]))


@pytest.mark.parametrize("scheduler", ["heun", "pndm-prk", "pndm"])
def test_schedulers_that_repeat_timesteps_give_one_step_per_forward(track, scheduler):
    """Heun evaluates the model twice per step at repeated timesteps, PNDM's Runge-Kutta (PRK) warm-up four times
    per PLMS step and its PLMS start repeats one: in a real Stable Diffusion pipeline (batched CFG) every forward
    is its own step of ``len(scheduler.timesteps)``, with one branch, in two calls of different lengths."""
    from diffusers import HeunDiscreteScheduler, PNDMScheduler

    pipe = tiny_sd_pipeline(scheduler="pndm" if scheduler == "pndm" else "ddim")
    if scheduler == "heun":
        pipe.scheduler = HeunDiscreteScheduler.from_config(pipe.scheduler.config)
    elif scheduler == "pndm-prk":
        pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=False)
    recorder = track(pipe.unet, pipe)
    lengths = []
    for steps in (5, 7):
        pipe(prompt="a cat", height=32, width=32, num_inference_steps=steps, output_type="latent",
             generator=torch.Generator().manual_seed(0))
        lengths.append(len(pipe.scheduler.timesteps))
    assert len(set(lengths)) == 2 and lengths[0] > 5  # the schedule repeats timesteps: more forwards than steps
    assert recorder.calls == [(0, lengths[0]), (1, lengths[1])]
    assert steps_and_branches(recorder, 1) == expected(lengths[1], ["call0"])

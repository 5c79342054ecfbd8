"""DeepCache: schedules (uniform, the official non-uniform worked examples, lowering p, no fit), which modules a
cached step runs, bit-identical output after disable, batched vs split CFG, branch range errors, the U-Net
families inside their real diffusers pipelines, and the PyPI ``DeepCache`` package as a peer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from tiny_diffusers import (tiny_modelscope_pipeline, tiny_sd_pipeline, tiny_sd_unet, tiny_sdxl_pipeline,
                            tiny_svd_pipeline)

import diffcache
from diffcache.methods.deepcache import DeepCacheConfig, DeepCacheRuntime, nonuniform_schedule, uniform_schedule

PROMPT = "a red circle"


# -- schedules ------------------------------------------------------------------------------------------------------
def test_uniform_schedule_counts_from_the_first_step():
    assert uniform_schedule(10, 3) == [0, 3, 6, 9]
    assert uniform_schedule(50, 5) == list(range(0, 50, 5))
    assert uniform_schedule(7, 1) == list(range(7))
    assert DeepCacheConfig.from_preset("uniform-2").full_steps(5) == [0, 2, 4]


def test_nonuniform_worked_examples_of_the_official_code():
    assert nonuniform_schedule(50, 5, center=15, power=1.4) == ([0, 5, 9, 13, 17, 21, 26, 31, 37, 43], 1.4)
    steps, power = nonuniform_schedule(100, 5, center=40, power=1.2)
    assert steps == [0, 6, 11, 16, 21, 26, 30, 35, 39, 42, 47, 52, 56, 61, 66, 72, 77, 82, 88, 94]
    assert power == 1.2
    assert DeepCacheConfig.from_preset("nonuniform").full_steps(50) == [0, 5, 9, 13, 17, 21, 26, 31, 37, 43]
    assert DeepCacheConfig.from_preset("nonuniform-early").full_steps(50) == [0, 3, 5, 9, 13, 18, 24, 30, 36, 43]


def test_nonuniform_keeps_the_real_part_of_the_complex_root():
    # the official code raises a negative number to 1/p: Python gives a complex number, numpy's int32 cast keeps
    # its real part. Taking |c|^(1/p) with a sign instead would give a different schedule.
    center, power, total, count = 15, 1.4, 50, 10
    start = (-center) ** (1 / power)
    assert isinstance(start, complex)
    signed = np.linspace(-(center ** (1 / power)), (total - center) ** (1 / power), count + 1)
    signed_steps = [0] + [int(v) + center for v in np.unique(np.int32(np.sign(signed) * np.abs(signed) ** power))[1:-1]]
    assert signed_steps != nonuniform_schedule(total, 5, center, power)[0]


def test_nonuniform_lowers_p_until_the_count_fits():
    # with p = 1.4 … 1.2 two rounded steps coincide; the official loop steps p down by 0.02 until 10 distinct remain
    steps, power = nonuniform_schedule(20, 2, center=2, power=1.4)
    assert len(steps) == 10 == len(set(steps)) and steps == sorted(steps)
    assert steps == [0, 2, 3, 4, 6, 8, 10, 12, 15, 17]
    assert power == pytest.approx(1.18)
    p, tried = 1.4, 0
    while p > power + 1e-9:  # every higher p gives fewer than 10 distinct steps
        x = np.linspace((-2) ** (1 / p), 18 ** (1 / p), 11)
        assert len(np.unique(np.real(x**p).astype(np.int32))[1:-1]) + 1 < 10
        p, tried = p - 0.02, tried + 1
    assert tried == 11


def test_nonuniform_error_when_no_power_fits():
    # the public error a caller (and the benchmark, which then skips the row) catches for any refused call
    with pytest.raises(diffcache.CallRefusedError,
                       match=r"no power p in \(1, 1.4\].*5 full steps.*center=5.*uniform=True"):
        nonuniform_schedule(10, 2, center=5, power=1.4)


@pytest.mark.parametrize("overrides,match", [
    ({"interval": 0}, "interval must be an integer >= 1"),
    ({"branch": -1}, "branch must be an integer >= 0"),
    ({"power": 1.0}, "power must be a number > 1"),
    ({"uniform": "yes"}, "uniform must be True or False"),
])
def test_bad_options_name_the_valid_range(overrides, match):
    with pytest.raises(ValueError, match=match):
        DeepCacheConfig.from_preset("default", **overrides)


# -- which modules run ----------------------------------------------------------------------------------------------
def _leaf_counter(module):
    """Hooks every leaf module inside ``module``; the returned list grows by one per leaf call."""
    calls = []
    handles = [leaf.register_forward_hook(lambda *_: calls.append(1))
               for leaf in module.modules() if not list(leaf.children())]
    return calls, handles


def _layer_modules(unet):
    """(name, module, skip index it produces or consumes) for every down/up layer, sampler and the mid block,
    from the skip arithmetic alone: down layer j of block i produces skip 3i+j+1, its downsampler 3(i+1); up layer j
    of up block u (mirrored block m, layer l = k−1−j counted from the end) consumes skip 3m+l."""
    entries = []
    for i, block in enumerate(unet.down_blocks):
        for j in range(len(block.resnets)):
            for part in ("resnets", "temp_convs", "attentions", "temp_attentions"):
                modules = getattr(block, part, None)
                if modules is not None and j < len(modules):
                    entries.append((f"down.{i}.{part}.{j}", modules[j], 3 * i + j + 1))
        for d in block.downsamplers or []:
            entries.append((f"down.{i}.downsampler", d, 3 * (i + 1)))
    entries.append(("mid", unet.mid_block, None))
    n = len(unet.up_blocks)
    for u, block in enumerate(unet.up_blocks):
        m, k = n - 1 - u, len(block.resnets)
        for j in range(k):
            for part in ("resnets", "temp_convs", "attentions", "temp_attentions"):
                modules = getattr(block, part, None)
                if modules is not None and j < len(modules):
                    entries.append((f"up.{u}.{part}.{j}", modules[j], 3 * m + (k - 1 - j)))
        for s in block.upsamplers or []:
            entries.append((f"up.{u}.upsampler", s, 3 * m))
    return entries


def _forward_args(unet, timestep):
    torch.manual_seed(1)
    sample = torch.randn(2, unet.config.in_channels, 8, 8)
    return (sample, timestep), {"encoder_hidden_states": torch.randn(2, 6, unet.config.cross_attention_dim),
                                "return_dict": False}


@pytest.mark.parametrize("branch", [0, 1, 2, 4, 8, 11])
def test_a_cached_step_runs_only_the_modules_of_skips_up_to_the_branch(branch):
    unet = tiny_sd_unet().eval()
    entries = _layer_modules(unet)
    counters = {name: _leaf_counter(module) for name, module, _ in entries}
    handle = diffcache.enable(unet, "deepcache", interval=3, branch=branch, num_inference_steps=3)
    try:
        with torch.no_grad():
            for step, t in enumerate((900, 600, 300)):
                for calls, _ in counters.values():
                    calls.clear()
                unet(*_forward_args(unet, t)[0], **_forward_args(unet, t)[1])
                ran = {name for name, (calls, _) in counters.items() if calls}
                if step == 0:
                    assert ran == {name for name, _, _ in entries}  # a full step runs everything
                else:
                    expected = {name for name, _, skip in entries if skip is not None and skip <= branch}
                    assert ran == expected, f"step {step}: ran {sorted(ran ^ expected)} unexpectedly"
        report = handle.report()
        assert [s.computed for s in report.calls[0].steps] == [True, False, False]
        assert report.calls[0].steps[1].blocks_reused == len(handle.runtime.skipped)
        assert "mid_block" in handle.runtime.skipped
    finally:
        handle.disable()
        for _, handles in counters.values():
            for h in handles:
                h.remove()


def test_branch_out_of_range_names_the_valid_range():
    with pytest.raises(ValueError, match=r"branch=12 is out of range for this UNet2DConditionModel: its skip "
                                         r"branches are 0\.\.11 \(4 blocks × 3 layers"):
        diffcache.enable(tiny_sd_unet(), "deepcache", branch=12)
    unet = tiny_sd_unet()
    handle = diffcache.enable(unet, "deepcache", branch=11)  # the deepest branch is accepted
    handle.disable()
    assert not hasattr(unet, "_diffcache_handle")


def test_other_methods_refuse_a_unet_and_deepcache_refuses_a_transformer(random_pipe):
    with pytest.raises(diffcache.UnsupportedModelError, match="adacache does not support Stable Diffusion U-Net"):
        diffcache.enable(tiny_sd_unet(), "adacache")
    with pytest.raises(diffcache.UnsupportedModelError, match="deepcache does not support Wan models.*Stable "
                                                              "Diffusion U-Net"):
        diffcache.enable(random_pipe, "deepcache")


# -- inside real pipelines ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sd_pipe():
    return tiny_sd_pipeline()


def _sd(pipe, steps=10, seed=0, **kwargs):
    return pipe(PROMPT, num_inference_steps=steps, guidance_scale=7.5, height=32, width=32, output_type="np",
                generator=torch.Generator().manual_seed(seed), **kwargs).images


def test_disable_gives_bit_identical_output(sd_pipe):
    reference = _sd(sd_pipe)
    with diffcache.enable(sd_pipe, "deepcache", "nonuniform", center=2) as handle:
        cached = _sd(sd_pipe)
    assert handle.report().computed_steps() == 2  # ceil(10 / 5) full steps
    assert not np.allclose(cached, reference, atol=1e-4)  # the cache changed something …
    np.testing.assert_array_equal(_sd(sd_pipe), reference)  # … and nothing is left behind
    handle.disable()  # twice is harmless
    np.testing.assert_array_equal(_sd(sd_pipe), reference)


def test_an_interrupted_call_does_not_leak_into_the_next(sd_pipe):
    with diffcache.enable(sd_pipe, "deepcache", interval=3) as handle:
        clean = _sd(sd_pipe, steps=8)

        def stop(pipe, i, t, tensors):
            if i == 4:
                raise KeyboardInterrupt
            return tensors

        with pytest.raises(KeyboardInterrupt):
            _sd(sd_pipe, steps=8, callback_on_step_end=stop)
        np.testing.assert_array_equal(_sd(sd_pipe, steps=8), clean)
        assert [s.computed for s in handle.report().calls[-1].steps] == [True, False, False] * 2 + [True, False]


def test_batched_cfg_equals_two_calls_per_step():
    """Stable Diffusion runs [uncond, cond] as one batch; a loop with two calls per step (uncond then cond) must
    give the same result: each call keeps its own cache, and the batch's halves never mix."""
    pipe = tiny_sd_pipeline()
    unet, scheduler = pipe.unet, pipe.scheduler
    embeds = pipe.encode_prompt([PROMPT], "cpu", 1, True)  # (cond, uncond)
    cond, uncond = embeds[0], embeds[1]

    def sample(batched: bool):
        scheduler.set_timesteps(9)
        latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            for t in scheduler.timesteps:
                if batched:
                    out_u, out_c = unet(torch.cat([latents] * 2), t, torch.cat([uncond, cond]), return_dict=False)[0].chunk(2)
                else:
                    out_u = unet(latents, t, uncond, return_dict=False)[0]
                    out_c = unet(latents, t, cond, return_dict=False)[0]
                latents = scheduler.step(out_u + 7.5 * (out_c - out_u), t, latents).prev_sample
        return latents

    with diffcache.enable(pipe, "deepcache", interval=3) as handle:
        batched = sample(True)
        split = sample(False)
    assert [r.branches for r in handle.report().calls[1].steps[:2]] == [["call0", "call1"]] * 2
    torch.testing.assert_close(batched, split, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(batched, sample(True), atol=1e-4)  # uncached differs: the cache was used


@pytest.mark.parametrize("family", ["sdxl", "modelscope", "svd"])
def test_each_unet_family_inside_its_real_pipeline(family):
    from PIL import Image

    build, run, branches, cls = {
        "sdxl": (tiny_sdxl_pipeline, lambda p, **k: p(PROMPT, height=32, width=32, output_type="np", **k).images,
                 9, "UNet2DConditionModel"),
        "modelscope": (tiny_modelscope_pipeline, lambda p, **k: p(PROMPT, height=32, width=32, num_frames=3,
                                                                     output_type="np", **k).frames, 9,
                       "UNet3DConditionModel"),
        "svd": (tiny_svd_pipeline, lambda p, **k: p(Image.new("RGB", (32, 32), (200, 30, 30)), height=32, width=32,
                                                     num_frames=3, decode_chunk_size=3, output_type="np", **k).frames,
                6, "UNetSpatioTemporalConditionModel"),
    }[family]
    pipe = build()
    generate = lambda: np.asarray(run(pipe, num_inference_steps=7, generator=torch.Generator().manual_seed(0)))  # noqa: E731
    reference = generate()
    with diffcache.enable(pipe, "deepcache", interval=3) as handle:
        cached = generate()
    steps = handle.report().calls[-1].steps
    assert [s.computed for s in steps] == [True, False, False, True, False, False, True]
    assert all(s.blocks_reused == len(handle.runtime.skipped) for s in steps if not s.computed)
    assert np.isfinite(cached).all() and not np.array_equal(cached, reference)
    np.testing.assert_array_equal(generate(), reference)
    with pytest.raises(ValueError, match=rf"out of range for this {cls}: its skip branches are 0\.\.{branches - 1}"):
        diffcache.enable(pipe, "deepcache", branch=branches)


# -- the PyPI DeepCache package as a peer ---------------------------------------------------------------------------
@pytest.mark.parametrize("interval,branch", [(3, 0), (2, 1), (3, 3), (5, 5), (4, 11)])
def test_same_images_as_the_deepcache_package(sd_pipe, interval, branch):
    helper_module = pytest.importorskip(
        "DeepCache", reason="the peer package DeepCache is not installed (pip install 'diffcache[test]' "
                            "or pip install --no-deps DeepCache)")
    helper = helper_module.DeepCacheSDHelper(pipe=sd_pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    helper.enable()
    try:
        peer = _sd(sd_pipe, steps=11)
    finally:
        helper.disable()
    with diffcache.enable(sd_pipe, "deepcache", interval=interval, branch=branch):
        ours = _sd(sd_pipe, steps=11)
    np.testing.assert_allclose(ours, peer, atol=1e-6)
    assert not np.allclose(ours, _sd(sd_pipe, steps=11), atol=1e-4)


@pytest.mark.parametrize("interval", [3, 5])
def test_pndm_repeated_timestep_is_its_own_step_and_matches_the_package(interval):
    """Stable Diffusion 1.5 ships PNDM (PLMS), whose 10-step schedule has 11 timesteps (``901, 801, 801, 701 …``):
    every forward is its own step (no phantom branch with a full U-Net pass), and the images equal the DeepCache
    package's. (With an even interval the package's ``timesteps.index(t)`` files both 801 forwards under the
    first one, where diffcache counts positions: see docs/methods/deepcache.md.)"""
    helper_module = pytest.importorskip("DeepCache", reason="the peer package DeepCache is not installed")
    pipe = tiny_sd_pipeline(scheduler="pndm")
    helper = helper_module.DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=0)
    helper.enable()
    try:
        peer = _sd(pipe, steps=10)
    finally:
        helper.disable()
    timesteps = pipe.scheduler.timesteps.tolist()
    assert len(timesteps) == 11 and timesteps[1] == timesteps[2]
    unet_work = []
    probe = pipe.unet.mid_block.resnets[0].conv1.register_forward_hook(lambda *a: unet_work.append(1))  # full passes
    with diffcache.enable(pipe, "deepcache", interval=interval, branch=0) as handle:
        ours = _sd(pipe, steps=10)
    probe.remove()
    steps = handle.report().calls[-1].steps
    assert len(steps) == 11 and all(s.branches == ["cond_uncond"] or s.branches == ["call0"] for s in steps)
    assert [s.computed for s in steps] == [i % interval == 0 for i in range(11)]
    assert len(unet_work) == sum(s.computed for s in steps)
    np.testing.assert_allclose(ours, peer, atol=1e-6)


# -- what the cache holds --------------------------------------------------------------------------------------------
class _KeepEveryOutput(DeepCacheRuntime):
    """The reference: every skipped module keeps its output for the cached steps (as the DeepCache package does)."""

    def keeps_output(self, name):
        return True


def _cached_tensors(runtime) -> dict:
    """Per branch, the tensors the cache holds (placeholders of shapes are not tensors)."""
    def tensors(value):
        if isinstance(value, torch.Tensor):
            return [value]
        if isinstance(value, (tuple, list)):
            return [t for v in value for t in tensors(v)]
        return []
    return {branch: [t for value in cache.values() for t in tensors(value)] for branch, cache in runtime.caches.items()}


@pytest.mark.parametrize("family,branch", [("Stable Diffusion U-Net", 4), ("AnimateDiff", 0), ("I2VGen-XL", 2)])
def test_the_cache_is_the_deep_feature_alone_with_the_output_of_keeping_every_skipped_output(family, branch, monkeypatch):
    """Per CFG branch the cache holds one tensor, the output of the last skipped module (the input of the up layer
    at the branch), and the output is bit-identical to keeping every skipped module's output."""
    from tiny_diffusers import TINY_PIPELINES

    from diffcache.methods import framework

    build, call, _ = TINY_PIPELINES[family]
    pipe = build()
    outputs, held = [], []
    info = framework.method_info("deepcache")
    for runtime_class in (DeepCacheRuntime, _KeepEveryOutput):
        with monkeypatch.context() as patch:
            patch.setitem(framework._METHODS, "deepcache", dataclasses.replace(info, runtime_class=runtime_class))
            with diffcache.enable(pipe, "deepcache", interval=3, branch=branch) as handle:
                outputs.append(call(pipe, 5))
                held.append(_cached_tensors(handle.runtime))
                deep = handle.runtime.deep
                assert not all(s.computed for s in handle.report().calls[-1].steps)
    new, reference = held
    assert new and all(len(tensors) == 1 for tensors in new.values())
    assert all(len(reference[b]) > len(new[b]) for b in new)
    assert deep.startswith("up_blocks.")
    np.testing.assert_array_equal(outputs[0], outputs[1])

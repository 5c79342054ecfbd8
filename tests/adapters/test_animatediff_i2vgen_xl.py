"""AnimateDiff (``UNetMotionModel``) and I2VGen-XL (``I2VGenXLUNet``) under DeepCache (arXiv:2312.00858).

- A cached step runs exactly the modules of the skips up to the branch (motion modules included), and its output is
  the model's own forward with only the deep modules' outputs taken from the last full step: an independent
  reference built from plain torch forward hooks on the uncached model gives the same output bit for bit.
- Interval 1 (every step full) gives the uncached pipeline output bit for bit.
- AnimateDiff's other pipelines (video-to-video, SDXL) run with DeepCache: the schedule, finite output that the
  cache changed, and ``disable()`` restoring the uncached output.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from tiny_families.animatediff import (tiny_animatediff_pipeline, tiny_animatediff_sdxl_pipeline,
                                       tiny_motion_adapter, tiny_sd15_unet2d)
from tiny_families.i2vgen_xl import tiny_i2vgen_xl_unet
from tiny_diffusers import TINY_PIPELINES
from tiny_parts import frames_of, red_image

import diffcache
from diffcache.adapters import find_adapter
from diffcache.errors import NothingSkippedWarning

PARTS = ("resnets", "temp_convs", "attentions", "temp_attentions", "motion_modules")
FRAMES = 3
TIMESTEPS = (900, 600, 300)


def _animatediff_unet():
    from diffusers import UNetMotionModel

    torch.manual_seed(0)
    return UNetMotionModel.from_unet2d(tiny_sd15_unet2d(), tiny_motion_adapter()).eval()


def _i2vgen_xl_unet():
    torch.manual_seed(0)
    return tiny_i2vgen_xl_unet().eval()


def _animatediff_inputs(unet, seed):
    g = torch.Generator().manual_seed(seed)
    # AnimateDiffPipeline repeats the text embedding per frame (frames are folded into the batch)
    return {"sample": torch.randn(2, 4, FRAMES, 8, 8, generator=g),
            "encoder_hidden_states": torch.randn(2 * FRAMES, 6, 32, generator=g)}


def _i2vgen_xl_inputs(unet, seed):
    g = torch.Generator().manual_seed(seed)
    return {"sample": torch.randn(2, 4, FRAMES, 8, 8, generator=g), "fps": torch.tensor([16, 16]),
            "image_latents": torch.randn(2, 4, FRAMES, 8, 8, generator=g),
            "image_embeddings": torch.randn(2, 32, generator=g),
            "encoder_hidden_states": torch.randn(2, 6, 32, generator=g)}


UNETS = {"AnimateDiff": (_animatediff_unet, _animatediff_inputs, "UNetMotionModel", 12),
         "I2VGen-XL": (_i2vgen_xl_unet, _i2vgen_xl_inputs, "I2VGenXLUNet", 9)}
#: modules outside the down / mid / up path that every step must run
STEM = {"AnimateDiff": ("conv_in", "time_embedding", "conv_out"),
        "I2VGen-XL": ("conv_in", "transformer_in", "image_latents_proj_in", "image_latents_temporal_encoder",
                      "image_latents_context_embedding", "fps_embedding", "context_embedding", "conv_out")}


def _layer_modules(unet):
    """(name, module, skip it produces or consumes) for every down/up layer part, sampler and the mid block, from
    the skip arithmetic alone (3 skips per block): down layer j of block i produces skip 3i+j+1, its downsampler
    3(i+1); up layer j of up block u (mirrored block m, layer l = k−1−j counted from the end) consumes skip 3m+l,
    its upsampler belongs to skip 3m."""
    entries = []
    for i, block in enumerate(unet.down_blocks):
        for j in range(len(block.resnets)):
            for part in PARTS:
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
            for part in PARTS:
                modules = getattr(block, part, None)
                if modules is not None and j < len(modules):
                    entries.append((f"up.{u}.{part}.{j}", modules[j], 3 * m + (k - 1 - j)))
        for s in block.upsamplers or []:
            entries.append((f"up.{u}.upsampler", s, 3 * m))
    return entries


def _leaf_counter(module):
    calls = []
    handles = [leaf.register_forward_hook(lambda *_: calls.append(1))
               for leaf in module.modules() if not list(leaf.children())]
    return calls, handles


def _forward(unet, inputs, timestep):
    with torch.no_grad():
        return unet(timestep=timestep, **inputs, return_dict=False)[0]


@pytest.mark.parametrize("family", list(UNETS))
def test_the_adapter_finds_the_family_and_its_layout(family):
    build, _, cls, branches = UNETS[family]
    unet = build()
    adapter = find_adapter(unet)
    assert adapter.family == family and type(unet).__name__ == cls
    layout = adapter.layout(unet)
    assert layout.num_branches == branches and layout.layers_per_up_block == 3
    if family == "AnimateDiff":  # the motion modules are layer parts, after resnet and attention
        names = [name for name, _ in adapter.layer_modules(unet.down_blocks[0], 1)]
        assert names == ["resnets.1", "attentions.1", "motion_modules.1"]
    else:
        names = [name for name, _ in adapter.layer_modules(unet.up_blocks[2], 2)]
        assert names == ["resnets.2", "temp_convs.2", "attentions.2", "temp_attentions.2"]


@pytest.mark.parametrize("family,branch", [("AnimateDiff", b) for b in (0, 1, 2, 4, 8, 11)]
                         + [("I2VGen-XL", b) for b in (0, 2, 3, 5, 8)])
def test_a_cached_step_is_the_models_forward_with_the_deep_modules_of_the_full_step(family, branch):
    """Interval 3 on the bare U-Net: step 0 runs everything; steps 1 and 2 run only the stem, the modules of skips
    ``0 … branch`` and the output head (leaf calls counted), and each step's output equals the uncached model's
    forward at that step whose deep modules (skip > branch, and the mid block) return their step-0 outputs."""
    build, make_inputs, _, _ = UNETS[family]
    unet = build()
    entries = _layer_modules(unet)
    deep = [(name, module) for name, module, skip in entries if skip is None or skip > branch]
    inputs = [make_inputs(unet, seed) for seed in range(3)]

    # the reference: plain torch hooks on the uncached model, keeping the deep outputs of step 0 ...
    kept: dict[str, torch.Tensor] = {}
    handles = [module.register_forward_hook(lambda m, a, out, name=name: kept.setdefault(name, out))
               for name, module in deep]
    full = _forward(unet, inputs[0], TIMESTEPS[0])
    for h in handles:
        h.remove()
    assert sorted(kept) == sorted(name for name, _ in deep)
    # ... and replaying them on the later steps, everything else computed afresh
    handles = [module.register_forward_hook(lambda m, a, out, name=name: kept[name]) for name, module in deep]
    reference = [full] + [_forward(unet, inputs[s], TIMESTEPS[s]) for s in (1, 2)]
    for h in handles:
        h.remove()
    uncached = [_forward(unet, inputs[s], TIMESTEPS[s]) for s in range(3)]

    counters = {name: _leaf_counter(module) for name, module, _ in entries}
    counters.update({name: _leaf_counter(getattr(unet, name)) for name in STEM[family]})
    handle = diffcache.enable(unet, "deepcache", interval=3, branch=branch, num_inference_steps=3)
    try:
        for step, t in enumerate(TIMESTEPS):
            for calls, _ in counters.values():
                calls.clear()
            out = _forward(unet, inputs[step], t)
            ran = {name for name, (calls, _) in counters.items() if calls}
            if step == 0:
                assert ran == set(counters)  # a full step runs everything
            else:
                expected = {name for name, _, skip in entries if skip is not None and skip <= branch}
                assert ran == expected | set(STEM[family]), f"step {step}: {sorted(ran ^ expected)} differ"
            torch.testing.assert_close(out, reference[step], rtol=0, atol=0)
        assert not torch.equal(reference[1], uncached[1])  # the deep features of step 0 did change the output
        torch.testing.assert_close(uncached[0], full, rtol=0, atol=0)
        steps = handle.report().calls[0].steps
        assert [s.computed for s in steps] == [True, False, False]
        assert steps[1].blocks_reused == len(handle.runtime.skipped)
    finally:
        handle.disable()
        for _, hs in counters.values():
            for h in hs:
                h.remove()
    torch.testing.assert_close(_forward(unet, inputs[1], TIMESTEPS[1]), uncached[1], rtol=0, atol=0)


@pytest.mark.parametrize("family", list(UNETS))
def test_the_branch_range_is_the_models(family):
    build, _, cls, branches = UNETS[family]
    with pytest.raises(ValueError, match=rf"out of range for this {cls}: its skip branches are 0\.\.{branches - 1}"):
        diffcache.enable(build(), "deepcache", branch=branches)


@pytest.fixture(scope="module")
def pipes():
    return {}


def _family_pipe(pipes, family):
    if family not in pipes:
        build, call, _ = TINY_PIPELINES[family]
        pipes[family] = (build(), call)
    return pipes[family]


@pytest.mark.parametrize("family", ["AnimateDiff", "I2VGen-XL"])
def test_interval_1_is_the_uncached_pipeline_bit_for_bit(pipes, family):
    pipe, call = _family_pipe(pipes, family)
    reference = call(pipe, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        with diffcache.enable(pipe, "deepcache", interval=1) as handle:
            every_step = call(pipe, 6)
    assert [s.computed for s in handle.report().calls[-1].steps] == [True] * 6
    np.testing.assert_array_equal(every_step, reference)
    with diffcache.enable(pipe, "deepcache", interval=3) as handle:  # and interval 3 does change it
        cached = call(pipe, 6)
    assert [s.computed for s in handle.report().calls[-1].steps] == [True, False, False] * 2
    assert np.isfinite(cached).all() and not np.array_equal(cached, reference)
    np.testing.assert_array_equal(call(pipe, 6), reference)


def _sdxl_call(pipe, steps):
    return frames_of(pipe("a cat surfing", negative_prompt="dog", num_frames=FRAMES, height=32, width=32,
                          num_inference_steps=steps, guidance_scale=5.0, output_type="np",
                          generator=torch.Generator().manual_seed(0)))


def _video_to_video_call(pipe, steps):
    return frames_of(pipe(video=[red_image(32)] * FRAMES, prompt="a cat surfing", negative_prompt="dog", height=32,
                          width=32, num_inference_steps=steps, strength=0.5, guidance_scale=5.0, output_type="np",
                          generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("name", ["AnimateDiffSDXLPipeline", "AnimateDiffVideoToVideoPipeline"])
def test_other_AnimateDiff_pipelines_with_deepcache(name):
    if name == "AnimateDiffSDXLPipeline":
        pipe, call, steps, run = tiny_animatediff_sdxl_pipeline(), _sdxl_call, 6, 6
    else:  # strength 0.5 of 12 steps: the last 6 of the schedule run
        pipe, call, steps, run = tiny_animatediff_pipeline(video_to_video=True), _video_to_video_call, 12, 6
    assert type(pipe).__name__ == name and type(pipe.unet).__name__ == "UNetMotionModel"
    reference = call(pipe, steps)
    with diffcache.enable(pipe, "deepcache", interval=3) as handle:
        cached = call(pipe, steps)
    report = handle.report().calls[-1]
    assert [s.computed for s in report.steps] == [True, False, False] * (run // 3)
    assert all(s.blocks_reused == len(handle.runtime.skipped) for s in report.steps if not s.computed)
    assert np.isfinite(cached).all() and cached.shape == reference.shape
    assert not np.array_equal(cached, reference)
    np.testing.assert_array_equal(call(pipe, steps), reference)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        with diffcache.enable(pipe, "deepcache", interval=1):
            np.testing.assert_array_equal(call(pipe, steps), reference)

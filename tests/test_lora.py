"""LoRA: a pipeline with LoRAs loaded through diffusers/PEFT (``pipe.load_lora_weights(state_dict, adapter_name=)``),
switched (``set_adapters``), rescaled (``set_adapters(..., weights)``, ``attention_kwargs={"scale": s}``) between
calls and fused (``fuse_lora``), gives every method the same cached behaviour — the same report decisions and
output — as the equivalent merged model (the LoRA's ``B·A`` added by hand to a copy of the base weights); and no
state survives an adapter change: a switch inside a call (a step-end callback) restarts the method from that step,
as ``handle.reset()`` with the merged weights swapped does.

Every method on the tiny Wan pipeline and DeepCache on a tiny Stable Diffusion U-Net; the first case of each
test runs by default, the rest are slow-marked (``pytest -m slow tests/test_lora.py``)."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from tiny_diffusers import tiny_sd_pipeline, tiny_wan_pipeline

import diffcache
from diffcache.errors import NothingSkippedWarning

STEPS = 6
SWITCH_AT = 2  #: the step whose callback (after the step) switches the adapter in the mid-call case
RANK = 2

#: (family, method, options): options that reuse something in a 6-step call of the tiny pipelines
CASES = [
    ("wan", "fbcache", dict(threshold=0.3)),
    ("wan", "adacache", dict(preset="fast", codebook=((0.2, 1), (1.0, 2), (10.0, 3)))),
    ("wan", "teacache", dict(coefficients=(1.0, 0.0), threshold=0.3)),
    ("wan", "fastercache", {}),
    ("wan", "hsa", dict(runtime=0.9)),
    ("wan", "pab", dict(preset="fast")),
    ("sd", "deepcache", {}),
    ("wan", "easycache", dict(warmup_steps=2, threshold=1.0)),
]
PARAMS = [pytest.param(*case, id=f"{case[0]}-{case[1]}", marks=() if i == 0 else pytest.mark.slow)
          for i, case in enumerate(CASES)]


# -- pipelines --------------------------------------------------------------------------------------------------
def denoiser_of(pipe):
    return pipe.transformer if hasattr(pipe, "transformer") else pipe.unet


def prefix_of(pipe) -> str:
    return "transformer" if hasattr(pipe, "transformer") else "unet"


def lora_targets(model) -> list[str]:
    """The linear layers a LoRA adapts: every linear layer inside the blocks (attention projections, MLP)."""
    inside = ("blocks.",) if hasattr(model, "blocks") else ("down_blocks.", "mid_block.", "up_blocks.")
    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name.startswith(inside)
            and any(part in name for part in (".attn", ".ffn.", ".ff."))]


def lora_state_dict(pipe, seed: int) -> dict:
    """A LoRA in diffusers' naming (``transformer.<layer>.lora_A.weight`` / ``lora_B.weight``, rank 2) with random,
    non-zero ``B`` so it changes the output."""
    model, prefix = denoiser_of(pipe), prefix_of(pipe)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name in lora_targets(model):
        layer = model.get_submodule(name)
        state[f"{prefix}.{name}.lora_A.weight"] = torch.randn(RANK, layer.in_features, generator=generator) * 0.3
        state[f"{prefix}.{name}.lora_B.weight"] = torch.randn(layer.out_features, RANK, generator=generator) * 0.3
    return state


def merged_pipeline(pipe, base, loras: list[tuple[dict, float]]):
    """The pipeline with a copy of ``base`` (the denoiser before any LoRA) whose weights have ``weight · B·A`` of
    each LoRA added by hand."""
    model, prefix = copy.deepcopy(base), prefix_of(pipe)
    with torch.no_grad():
        for state, weight in loras:
            for name in lora_targets(model):
                layer = model.get_submodule(name)
                layer.weight += weight * (state[f"{prefix}.{name}.lora_B.weight"]
                                          @ state[f"{prefix}.{name}.lora_A.weight"])
    merged = type(pipe)(**{**pipe.components, prefix: model})
    merged.set_progress_bar_config(disable=True)
    return merged


class Family:
    """A tiny pipeline with two LoRAs ``a`` and ``b`` loaded, and the merged pipelines to compare with."""

    def __init__(self, family: str):
        self.family = family
        self.pipe = tiny_wan_pipeline(num_layers=2) if family == "wan" else tiny_sd_pipeline()
        base = copy.deepcopy(denoiser_of(self.pipe))
        self.loras = {"a": lora_state_dict(self.pipe, 1), "b": lora_state_dict(self.pipe, 2)}
        for name, state in self.loras.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # PEFT: "already found a peft_config" for the second adapter
                self.pipe.load_lora_weights(dict(state), adapter_name=name)
        self.merged = {"a": merged_pipeline(self.pipe, base, [(self.loras["a"], 1.0)]),
                       "b": merged_pipeline(self.pipe, base, [(self.loras["b"], 1.0)]),
                       "a@0.5": merged_pipeline(self.pipe, base, [(self.loras["a"], 0.5)])}
        self.base = base

    def run(self, pipe, steps: int = STEPS, scale: float | None = None, callback=None):
        kwargs = {}
        if scale is not None:
            kwargs["attention_kwargs" if self.family == "wan" else "cross_attention_kwargs"] = {"scale": scale}
        if callback is not None:
            kwargs["callback_on_step_end"] = callback
        common = dict(prompt="a cat surfing", negative_prompt="dog", num_inference_steps=steps, guidance_scale=5.0,
                      generator=torch.Generator().manual_seed(0), **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NothingSkippedWarning)
            if self.family == "wan":
                return pipe(height=16, width=16, num_frames=5, output_type="latent", **common).frames.detach().clone()
            return pipe(height=32, width=32, output_type="latent", **common).images.detach().clone()


_FAMILIES: dict = {}


def family(name: str) -> Family:
    if name not in _FAMILIES:
        _FAMILIES[name] = Family(name)
    return _FAMILIES[name]


# -- comparisons --------------------------------------------------------------------------------------------------
def assert_same_decisions(call, reference_call):
    """Step by step: computed or not, block counts, active token share, and every value the method decided on
    (numbers equal within the float32 noise that separates an unmerged LoRA from merged weights)."""
    def decisions(c):
        return [(r.step, r.computed, r.blocks_computed, r.blocks_reused, r.active_fraction, r.values) for r in c.steps]
    assert_nested_close(decisions(call), decisions(reference_call))


def assert_nested_close(a, b, path="steps"):
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (path, a, b)
        for key in a:
            assert_nested_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), (path, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            assert_nested_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-6), (path, a, b)
    else:
        assert a == b, (path, a, b)


def assert_same_behaviour(call, out, reference_call, reference_out):
    assert_same_decisions(call, reference_call)
    torch.testing.assert_close(out, reference_out, rtol=1e-4, atol=1e-4)


def cached(fam: Family, pipe, method, options, **run):
    """Output and report call of one fresh-handle cached call on ``pipe``."""
    with diffcache.enable(pipe, method, **options) as handle:
        out = fam.run(pipe, **run)
    return out, handle.report().calls[-1]


# -- tests --------------------------------------------------------------------------------------------------------
def test_the_loras_change_the_output():
    fam = family("wan")
    fam.pipe.set_adapters("a")
    with_a = fam.run(fam.pipe, steps=2)
    fam.pipe.set_adapters("b")
    with_b = fam.run(fam.pipe, steps=2)
    fam.pipe.disable_lora()
    plain = fam.run(fam.pipe, steps=2)
    fam.pipe.enable_lora()
    assert (with_a - plain).abs().max() > 0.05 and (with_b - with_a).abs().max() > 0.05
    torch.testing.assert_close(with_a, fam.run(fam.merged["a"], steps=2), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(plain, fam.run(type(fam.pipe)(**{**fam.pipe.components, "transformer": fam.base}),
                                              steps=2), rtol=0, atol=0)


@pytest.mark.parametrize("name,method,options", PARAMS)
def test_lora_switched_rescaled_and_fused_behaves_as_the_merged_model(name, method, options):
    """One handle across five calls: adapter ``a``; switched to ``b``; ``a`` at weight 0.5; ``a`` with
    ``attention_kwargs={"scale": 0.5}``; ``a`` fused. Each call has the decisions and output of a fresh handle on the
    merged model of that call's LoRA — so nothing of an earlier call's LoRA is carried into it."""
    fam = family(name)
    pipe = fam.pipe
    references = {key: cached(fam, fam.merged[key], method, options) for key in ("a", "b", "a@0.5")}
    handle = diffcache.enable(pipe, method, **options)
    try:
        outputs = []
        pipe.set_adapters("a")
        outputs.append((fam.run(pipe), "a"))
        pipe.set_adapters("b")
        outputs.append((fam.run(pipe), "b"))
        pipe.set_adapters("a", 0.5)
        outputs.append((fam.run(pipe), "a@0.5"))
        pipe.set_adapters("a")
        outputs.append((fam.run(pipe, scale=0.5), "a@0.5"))
        pipe.fuse_lora(components=[prefix_of(pipe)], adapter_names=["a"])
        try:
            outputs.append((fam.run(pipe), "a"))
        finally:
            pipe.unfuse_lora(components=[prefix_of(pipe)])
        calls = handle.report().calls
        assert len(calls) == len(outputs)
        assert any(not s.computed or (s.active_fraction or 1) < 1 or s.blocks_reused for s in calls[0].steps), \
            "the options must reuse something, or the comparison shows nothing"
        for (out, key), call in zip(outputs, calls):
            reference_out, reference_call = references[key]
            assert_same_behaviour(call, out, reference_call, reference_out)
    finally:
        handle.disable()
        pipe.set_adapters("a")


@pytest.mark.parametrize("name,method,options", PARAMS)
def test_an_adapter_switch_inside_a_call_restarts_the_method(name, method, options):
    """A step-end callback switches ``a`` → ``b`` after step ``SWITCH_AT - 1``: the method drops everything it
    cached under ``a`` and starts afresh at step ``SWITCH_AT`` — the same decisions and output as the merged model of
    ``a`` whose weights the same callback replaces by those of ``b`` and whose handle it resets."""
    fam = family(name)
    pipe = fam.pipe
    merged = fam.merged["a"]
    merged_a = copy.deepcopy(denoiser_of(merged).state_dict())
    merged_b = denoiser_of(fam.merged["b"]).state_dict()

    def switch_lora(p, step, timestep, kwargs):
        if step == SWITCH_AT - 1:
            p.set_adapters("b")
        return kwargs

    def switch_weights(p, step, timestep, kwargs):
        if step == SWITCH_AT - 1:
            denoiser_of(p).load_state_dict(merged_b)
            reference_handle.reset()
        return kwargs

    try:
        reference_handle = diffcache.enable(merged, method, **options)
        reference = fam.run(merged, callback=switch_weights)
        reference_handle.disable()
        pipe.set_adapters("a")
        with diffcache.enable(pipe, method, **options) as handle:
            out = fam.run(pipe, callback=switch_lora)
    finally:
        denoiser_of(merged).load_state_dict(merged_a)
        pipe.set_adapters("a")
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)
    calls, reference_calls = handle.report().calls, reference_handle.report().calls
    assert [c.num_steps for c in calls] == [STEPS, STEPS]  # the call went on as a new one from the switch
    assert [s.step for s in calls[1].steps] == list(range(SWITCH_AT, STEPS))
    assert calls[1].steps[0].computed  # nothing cached under ``a`` answers the first step under ``b``
    for call, reference_call in zip(calls, reference_calls, strict=True):
        assert_same_decisions(call, reference_call)

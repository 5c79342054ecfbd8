"""Baselines: TeaCache (rule by hand, calibration, presets), First-Block-Cache, PAB, steps:N and the
skipped-nothing warning; and every method inside each real diffusers pipeline."""

import json
import warnings

import numpy as np
import pytest
import torch
from tiny_diffusers import VIDEO_FAMILIES, tiny_wan_pipeline

import diffcache
from diffcache.bench.specs import MethodSpec, parse_methods
from diffcache.cli import main
from diffcache.errors import NothingSkippedWarning
from diffcache.calibrate.teacache import calibrate_teacache, fit_polynomial, threshold_for
from diffcache.methods import teacache
from diffcache.methods.teacache import TeaCacheConfig, teacache_schedule

PROMPT = "a red circle moving left"


def generate(pipe, steps=30, **kwargs):
    kwargs.setdefault("guidance_scale", 5.0)
    return pipe(PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="np",
                **kwargs).frames


# -- TeaCache -------------------------------------------------------------------------------------------------------
def test_teacache_rule_by_hand():
    # poly(x) = 2x; threshold 0.5. Step 0 forced; then the accumulator grows 0.2 per step and resets on compute
    rel = [None, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    assert teacache_schedule(rel, (2.0, 0.0), 0.5) == [True, False, False, True, False, False, True, True]
    # the official retention mode: 5 warm-up steps, the last step not forced
    assert teacache_schedule(rel, (2.0, 0.0), 0.5, warmup_steps=5, compute_last_step=False) == \
        [True] * 5 + [False, False, True]


def test_calibration_recovers_a_known_polynomial():
    rng = np.random.default_rng(0)
    truth = (30.0, -8.0, 1.5, 0.2, 0.01)
    x = rng.uniform(0.01, 0.3, 400)
    coefficients, r2 = fit_polynomial(x, np.poly1d(truth)(x), degree=4)
    np.testing.assert_allclose(coefficients, truth, rtol=1e-6, atol=1e-8)
    assert r2 == pytest.approx(1.0)
    with pytest.raises(ValueError, match="more than 4"):
        fit_polynomial([0.1, 0.2], [0.1, 0.2])


def test_thresholds_hit_their_computed_fraction():
    sequences = [[None] + [0.05] * 29] * 3
    threshold = threshold_for(sequences, (1.0, 0.0), computed_fraction=0.5)
    assert np.mean(teacache_schedule(sequences[0], (1.0, 0.0), threshold)) <= 0.5
    assert np.mean(teacache_schedule(sequences[0], (1.0, 0.0), threshold * 0.9)) > 0.5


def test_calibrate_on_the_embedded_model_and_load_the_preset(shipped_pipe, tmp_path):
    calibration = calibrate_teacache(shipped_pipe, [PROMPT, "a blue square moving up"], num_inference_steps=10,
                                     progress=False)
    assert len(calibration.input_changes) == 2 * 2 * 9  # prompts x branches x (steps - 1)
    assert 0 < calibration.thresholds["slow"] <= calibration.thresholds["fast"]  # fast computes fewer steps
    path = tmp_path / "preset.json"
    path.write_text(json.dumps(calibration.preset("tiny-shapes-t2v")))
    config = TeaCacheConfig.from_preset(str(path))
    assert config.coefficients == calibration.coefficients and config.threshold == calibration.thresholds["fast"]
    with diffcache.enable(shipped_pipe, "teacache", preset=str(path)) as handle:
        generate(shipped_pipe, steps=10)
    assert handle.report().calls[-1].num_steps == 10
    with pytest.raises(diffcache.UnknownMethodError, match="does not exist"):
        diffcache.enable(shipped_pipe, "teacache", preset=str(tmp_path / "missing.json"))


def test_calibrate_command_writes_preset_and_plot(tmp_path, capsys):
    out = tmp_path / "tiny.json"
    assert main(["calibrate", "teacache", "--prompts", "2", "--steps", "8", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["method"] == "teacache" and out.with_suffix(".png").stat().st_size > 1000
    assert "preset:" in capsys.readouterr().out
    assert main(["calibrate", "teacache", "--prompts", "2", "--out", str(out)]) == 2  # no silent overwrite


def test_teacache_runtime_follows_the_rule_and_branches_are_apart(shipped_pipe):
    with diffcache.enable(shipped_pipe, "teacache") as handle:
        generate(shipped_pipe)
        states = handle.runtime.states
        config = handle.config
    steps = handle.report().calls[-1].steps
    for prefix in ("", "uncond_"):  # each branch's decisions replay from its own recorded input changes
        rel = [s.values.get(prefix + "rel_l1") for s in steps]
        expected = teacache_schedule(rel, config.coefficients, config.threshold)
        decided = [s.values.get(prefix + "accumulated", 0.0) >= config.threshold or i == 0 or i == len(steps) - 1
                   for i, s in enumerate(steps)]
        assert decided == expected
    assert set(states) == {"cond", "uncond"}
    assert not torch.equal(states["cond"].residual[0], states["uncond"].residual[0])
    assert steps[0].computed and steps[-1].computed and 5 < sum(s.computed for s in steps) < 30
    blocks = len(shipped_pipe.transformer.blocks)
    for s in steps:  # a step is all-computed or all-reused, in both branches
        assert (s.blocks_computed, s.blocks_reused) in ((2 * blocks, 0), (0, 2 * blocks))


@pytest.mark.parametrize("preset", ["wan2.1-t2v-1.3b", "cogvideox-5b", "ltx-video", "hunyuanvideo-slow"])
def test_published_presets(preset):
    config = TeaCacheConfig.from_preset(preset)
    assert len(config.coefficients) == 5 and config.threshold > 0


# -- the family adapters under the stack-caching baselines ---------------------------------------------------------
FAMILIES = VIDEO_FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method,options", [("adacache", {"preset": "fast-moreg"}), ("fastercache", {}),
                                            ("teacache", {"coefficients": (1.0, 0.0), "threshold": 1.0}),
                                            ("fbcache", {"threshold": 10.0}), ("pab", {})])
def test_every_method_runs_in_each_real_pipeline(family, method, options):
    build, size = FAMILIES[family]
    pipe = build(num_layers=3)

    def run():
        return pipe(prompt="a cat", num_inference_steps=10, output_type="np",
                    generator=torch.Generator().manual_seed(0), **size).frames

    reference = run()
    with diffcache.enable(pipe, method, **options) as handle:
        cached = run()
    steps = handle.report().calls[-1].steps
    assert np.isfinite(cached).all() and cached.shape == reference.shape and len(steps) == 10
    assert steps[0].computed and sum(s.blocks_reused for s in steps) > 0
    assert np.array_equal(run(), reference)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method,options", [("teacache", {"coefficients": (1.0, 0.0), "threshold": 1.0}),
                                            ("fbcache", {"threshold": 0.5})])
def test_a_reused_stack_returns_the_computed_output(family, method, options):
    """Fed the same input twice, a reused step must return what the computed step returned (all streams)."""
    build, size = FAMILIES[family]
    pipe = build(num_layers=3)
    model = pipe.transformer
    inputs = {}
    grab = model.register_forward_pre_hook(lambda m, a, k: inputs.setdefault("call", (a, k)), with_kwargs=True)
    pipe(prompt="a cat", num_inference_steps=2, output_type="latent", **size)
    grab.remove()
    args, kwargs = inputs["call"]
    kwargs = {k: v for k, v in kwargs.items() if k != "return_dict"}
    outputs = []
    with diffcache.enable(model, method, num_inference_steps=10, **options) as handle:
        for step in range(2):
            with model.cache_context("cond", step_index=step, num_inference_steps=10):
                outputs.append(model(*args, **kwargs, return_dict=False)[0])
    assert [s.computed for s in handle.report().calls[-1].steps] == [True, False]
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)


def test_teacache_preset_must_fit_the_model_family():
    pipe = tiny_wan_pipeline()
    with pytest.raises(diffcache.UnsupportedModelError, match="fitted on cogvideox-5b.*Use a Wan preset"):
        diffcache.enable(pipe, "teacache", preset="cogvideox-5b")
    with pytest.warns(UserWarning, match="fitted on the embedded tiny-shapes-t2v"):
        diffcache.enable(pipe, "teacache", preset="tiny-shapes-t2v").disable()


def test_teacache_default_preset_is_the_recognised_models_or_a_refusal():
    """The default preset ``auto`` takes the published coefficients of the model enabled on (by its checkpoint
    name, else its architecture) and refuses a model that has none, saying how to calibrate it."""
    pipe = tiny_wan_pipeline()
    with pytest.raises(diffcache.UnsupportedModelError, match="none of Wan 2.1.*diffcache calibrate teacache"):
        diffcache.enable(pipe, "teacache")
    pipe.register_to_config(_name_or_path="Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    handle = diffcache.enable(pipe, "teacache", threshold=0.07)  # a given field is kept
    handle.disable()
    assert (handle.config.preset, handle.config.coefficients, handle.config.threshold, handle.config.warmup_steps,
            handle.config.compute_last_step) == ("wan2.1-t2v-1.3b", teacache.WAN_1_3B, 0.07, 5, False)
    pipe.register_to_config(_name_or_path="Wan-AI/Wan2.2-T2V-A14B-Diffusers")
    with pytest.raises(diffcache.UnsupportedModelError, match="Wan 2.2 has no published TeaCache coefficients"):
        diffcache.enable(pipe, "teacache")


@pytest.mark.parametrize("family, config, expected", [
    ("Wan", dict(num_attention_heads=12, attention_head_dim=128, num_layers=30, in_channels=16), "wan2.1-t2v-1.3b"),
    ("Wan", dict(num_attention_heads=40, attention_head_dim=128, num_layers=40, in_channels=16), "wan2.1-t2v-14b"),
    ("Wan", dict(num_attention_heads=40, attention_head_dim=128, num_layers=40, in_channels=36, image_dim=1280),
     None),  # 480P and 720P share the architecture: the checkpoint name must say which
    ("CogVideoX", dict(num_attention_heads=30, num_layers=30, in_channels=16), "cogvideox-2b"),
    ("CogVideoX", dict(num_attention_heads=48, num_layers=42, in_channels=32, patch_size_t=2), "cogvideox1.5-5b-i2v"),
    ("LTX-Video", dict(num_attention_heads=32, attention_head_dim=64, num_layers=28), "ltx-video"),
    ("HunyuanVideo", dict(num_layers=20, num_single_layers=40, in_channels=16), "hunyuanvideo"),
    ("Mochi", dict(num_layers=48), "mochi"),
    ("Latte", dict(num_attention_heads=16, attention_head_dim=72, num_layers=28), "latte"),
    ("Allegro", dict(num_layers=32), None),
])
def test_teacache_recognises_published_models_by_architecture(family, config, expected):
    model = torch.nn.Module()
    model.config = {"image_dim": None, **config}
    name, reason = teacache.recognise_model(family, model, None)
    assert name == expected and (name is not None or reason)
    if name is not None:
        assert teacache.PRESET_FAMILIES[name] == family and name in TeaCacheConfig.PRESETS


def test_bad_teacache_preset_files(tmp_path):
    for text, match in [("[1, 2]", "not a TeaCache preset"), ('{"coefficients": 5}', "sequence of numbers"),
                        ("{", "not valid JSON")]:
        path = tmp_path / "bad.json"
        path.write_text(text)
        with pytest.raises(ValueError, match=match):
            TeaCacheConfig.from_preset(str(path))


# -- First-Block-Cache ----------------------------------------------------------------------------------------------
def test_fbcache_first_block_always_runs_and_tail_is_reused(shipped_pipe):
    reference = generate(shipped_pipe)
    with diffcache.enable(shipped_pipe, "fbcache", preset="fast") as handle:
        cached = generate(shipped_pipe)
    steps = handle.report().calls[-1].steps
    blocks = len(shipped_pipe.transformer.blocks)
    reused = [s for s in steps if not s.computed]
    assert reused and all(s.blocks_computed == 2 and s.blocks_reused == 2 * (blocks - 1) for s in reused)
    assert all(s.values.get("diff", 0) < 0.15 for s in reused)
    assert not np.array_equal(cached, reference)


# -- PAB ------------------------------------------------------------------------------------------------------------
def test_pab_keeps_cond_and_uncond_apart_so_guidance_still_works(shipped_pipe):
    with diffcache.enable(shipped_pipe, "pab") as handle:
        guided = generate(shipped_pipe, guidance_scale=5.0)
        states = handle.runtime.states
        cond, uncond = states[("0.cross", "cond")]["cache"], states[("0.cross", "uncond")]["cache"]
        unguided = generate(shipped_pipe, guidance_scale=1.0)
    assert not torch.equal(cond, uncond)
    assert np.abs(guided - unguided).mean() > 0.01  # guidance still changes the video


class CountingProcessor:
    """Wraps an attention processor and counts the times attention is really computed."""

    def __init__(self, inner):
        self.inner, self.runs = inner, 0

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        self.runs += 1
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)


def test_pab_counter_and_window_by_hand(shipped_pipe):
    """Self-attention range 2, cross range 6: inside the window a module computes on every 2nd / 6th call."""
    block = shipped_pipe.transformer.blocks[0]
    originals = block.attn1.processor, block.attn2.processor
    block.attn1.processor, block.attn2.processor = CountingProcessor(originals[0]), CountingProcessor(originals[1])
    try:
        with diffcache.enable(shipped_pipe, "pab") as handle:
            generate(shipped_pipe, steps=30, guidance_scale=1.0)
            timesteps = [float(t) for t in shipped_pipe.scheduler.timesteps]
        runs = block.attn1.processor.runs, block.attn2.processor.runs
    finally:
        block.attn1.processor, block.attn2.processor = originals

    def expected(block_range):
        count, runs = 0, 0
        for t in timesteps:
            if not 100 < t < 800 or count == 0 or count % block_range == 0:
                runs += 1
            count += 1
        return runs

    assert runs == (expected(2), expected(6)) and expected(2) < 30 and expected(6) < expected(2)
    blocks = len(shipped_pipe.transformer.blocks)
    assert handle.report().calls[-1].block_forwards == blocks * (expected(2) + expected(6))


# -- the skipped-nothing warning and steps:N -------------------------------------------------------------------------
def test_a_call_that_skipped_nothing_warns_with_a_suggestion(shipped_pipe):
    with pytest.warns(NothingSkippedWarning, match="reused nothing.*never changed by less than threshold 0.05 "
                                                   r"\(smallest change 0\.\d+\); try threshold="):
        with diffcache.enable(shipped_pipe, "fbcache", preset="diffusers"):
            generate(shipped_pipe, steps=30)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NothingSkippedWarning)
        with diffcache.enable(shipped_pipe, "fbcache", preset="fast"):
            generate(shipped_pipe, steps=30)


def test_fewer_steps_is_a_bench_method(shipped_pipe):
    assert MethodSpec.parse("steps:15") == MethodSpec("steps", "15")
    with pytest.raises(diffcache.UnknownMethodError, match="steps:N"):
        parse_methods("steps:0")
    # measured in the sweep: tests/bench/test_bench.py::test_bench_end_to_end_with_skipped_rows (steps:2 of 3)

"""FasterCache: the frequency split, the official per-model tables, split vs batched CFG, bad parameters."""

import numpy as np
import pytest
import torch

import diffcache
from diffcache.methods.fastercache import (FasterCacheConfig, low_frequency_mask, plan, rebuild_uncond,
                                           split_delta)

PROMPT = "a red circle moving left"


def test_frequency_split_is_exact():
    torch.manual_seed(0)
    cond, uncond = torch.randn(2, 3, 4, 16, 12), torch.randn(2, 3, 4, 16, 12)
    zero = torch.zeros(2, 3, 4, 16, 12, dtype=torch.complex64)
    torch.testing.assert_close(rebuild_uncond(cond, zero, zero), cond, atol=1e-5, rtol=1e-5)
    low, high = split_delta(uncond, cond, radius=min(16, 12) // 5)
    torch.testing.assert_close(rebuild_uncond(cond, low, high), uncond, atol=1e-5, rtol=1e-5)
    # boosting only the low band moves the result by exactly the low band's share of the delta
    boosted = rebuild_uncond(cond, low, high, w_low=2.0)
    low_only = rebuild_uncond(torch.zeros_like(cond), low, torch.zeros_like(high))
    torch.testing.assert_close(boosted - uncond, low_only, atol=1e-5, rtol=1e-5)


def test_low_frequency_disk():
    mask = low_frequency_mask(16, 16, radius=3)
    assert mask[8, 8] and mask[8, 11] and not mask[8, 12] and not mask[0, 0]
    assert int(mask.sum()) == 29  # lattice points within radius 3


def test_official_tables_at_their_own_step_counts():
    for c in range(1, 30):
        p = plan("official-opensora", c, 30)
        assert p.reuse_attention == (c > 7 and c % 2 == 0)
        assert p.skip_uncond == (c % 5 != 0 and c > 11)
        assert p.weight == pytest.approx(max(0.0, (c - 7) / 20 * 0.9))
        assert (p.high_factor, p.low_factor) == (1.15 if c >= 20 else 1.0, 1.15 if c <= 25 else 1.0)
        assert p.cumulative
    for c in range(1, 50):
        p = plan("official-cogvideox", c, 50)
        assert (p.reuse_attention, p.skip_uncond, p.weight) == (c >= 18 and c % 3 != 0, c >= 18 and c % 5 != 0, 0.3)
        assert (p.low_factor, p.high_factor) == (1.1 if c <= 40 else 1.0, 1.1 if c >= 30 else 1.0)
        p = plan("official-latte", c, 50)
        assert (p.reuse_attention, p.skip_uncond, p.weight) == (c >= 16 and c % 2 == 0, c >= 18 and c % 5 != 0, 0.5)
        assert (p.low_factor, p.high_factor) == ((1.1, 1.0) if c < 45 else (1.0, 1.1))
    for c in range(1, 150):
        p = plan("official-opensoraplan", c, 150)
        assert (p.reuse_attention, p.skip_uncond) == (c >= 45 and c % 3 != 0, c >= 40 and c % 6 != 0)
        assert (p.low_factor, p.high_factor) == ((1.1, 1.0) if c <= 130 else (1.0, 1.2))
    assert not plan("official-opensora", 30, 30).skip_uncond  # the last step always runs in full


def test_tables_scale_with_the_step_count_and_paper_schedule():
    assert not plan("official-opensora", 14, 60).reuse_attention and plan("official-opensora", 16, 60).reuse_attention
    skipped = [c for c in range(1, 31) if plan("paper", c, 30).skip_uncond]
    assert skipped[:5] == [11, 12, 13, 14, 16] and 15 not in skipped  # full CFG every 5 steps from T/3
    assert plan("paper", 12, 30).low_factor == 1.2 and plan("paper", 20, 30).high_factor == 1.2
    assert not plan("paper", 12, 30).cumulative


@pytest.mark.parametrize("overrides,match", [
    ({"radius_divisor": 0}, "radius_divisor must be an integer >= 1"),
    ({"schedule": "official-sora"}, "schedule must be one of"),
    ({"enhance": "mid"}, "enhance must be"),
    ({"attention_reuse": False, "cfg_cache": False}, "would do nothing"),
    ({"batch_order": "cond_first"}, "batch_order"),
])
def test_bad_parameters(overrides, match):
    with pytest.raises(ValueError, match=match):
        FasterCacheConfig.from_preset("default", **overrides)
    with pytest.raises(diffcache.UnknownMethodError, match="presets: default, official-opensora"):
        FasterCacheConfig.from_preset("official")


def generate(pipe, prompt=PROMPT, **kwargs):
    kwargs.setdefault("guidance_scale", 5.0)
    return pipe(prompt, num_inference_steps=30, output_type="np",
                generator=torch.Generator().manual_seed(0), **kwargs).frames


def test_split_and_batched_cfg_give_the_same_schedule_and_video(shipped_pipe):
    prompts = [PROMPT, "a blue square moving up"]  # batch of two
    with diffcache.enable(shipped_pipe, "fastercache") as handle:
        split = generate(shipped_pipe, prompts, cfg_mode="split")
        batched = generate(shipped_pipe, prompts, cfg_mode="batched")
        calls = handle.report().calls
    decisions = [[(s.computed, s.values.get("uncond")) for s in call.steps] for call in calls]
    assert decisions[0] == decisions[1]
    schedule = FasterCacheConfig.from_preset("default").schedule
    assert sum(v == "rebuilt" for _, v in decisions[0]) == sum(plan(schedule, c, 30).skip_uncond for c in range(1, 31))
    np.testing.assert_allclose(split, batched, atol=2e-3)
    assert np.isfinite(split).all()


def test_split_cfg_never_runs_uncond_on_a_skipped_step(shipped_pipe):
    block_runs = []  # the first block runs only when the model really runs
    hook = shipped_pipe.transformer.blocks[0].register_forward_pre_hook(lambda *a: block_runs.append(1))
    with diffcache.enable(shipped_pipe, "fastercache", attention_reuse=False) as handle:
        video = generate(shipped_pipe)
    hook.remove()
    skipped = sum(s.values.get("uncond") == "rebuilt" for s in handle.report().calls[-1].steps)
    assert skipped > 10 and np.isfinite(video).all()
    assert len(block_runs) == 60 - skipped


def test_attention_reuse_extrapolates_from_the_last_two_outputs(shipped_pipe):
    """On a reuse step self-attention returns F_t + (F_t - F_{t+2}) * w from its own last two outputs."""
    model = shipped_pipe.transformer
    returned = []
    hook = model.blocks[0].attn1.register_forward_hook(lambda m, a, out: returned.append(out.detach().clone()))
    with diffcache.enable(shipped_pipe, "fastercache", cfg_cache=False) as handle:
        generate(shipped_pipe, guidance_scale=1.0)  # one branch: one attention call per step
    hook.remove()
    schedule = handle.config.schedule
    reused = [c for c in range(1, 31) if plan(schedule, c, 30).reuse_attention]
    computed = [c for c in range(1, 31) if c not in reused]
    c = next(c for c in reused if sum(k < c for k in computed) >= 2)
    t, t2 = [k for k in computed if k < c][-1], [k for k in computed if k < c][-2]
    w = plan(schedule, c, 30).weight
    expected = returned[t - 1] + (returned[t - 1] - returned[t2 - 1]) * w
    torch.testing.assert_close(returned[c - 1], expected, atol=1e-5, rtol=1e-5)
    assert w > 0 and not torch.allclose(returned[c - 1], returned[t - 1])


def test_bare_denoiser_batch_is_not_mistaken_for_cfg(shipped_pipe):
    model = shipped_pipe.transformer
    x = torch.randn(2, 12, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    text = shipped_pipe.encode_prompt([PROMPT, "a blue square moving up"])
    with diffcache.enable(model, "fastercache", attention_reuse=False, num_inference_steps=30) as handle:
        for i in range(30):
            with model.cache_context("cond_uncond", step_index=i, num_inference_steps=30):
                model(hidden_states=x, timestep=torch.tensor([1000.0 - 30 * i] * 2), encoder_hidden_states=text)
    assert not any(s.values.get("uncond") for s in handle.report().calls[-1].steps)

"""HSA: the schedule on worked examples, the allocation, K/V-cache synchronisation, the cached Euler update, FLOPs,
CFG and batches, and the errors."""

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import diffcache
from diffcache.adapters.base import UnsupportedModelError
from diffcache.generation import budget_map_clip
from diffcache.methods.hsa import (Allocation, HSABudgetError, group_active, plan_allocation,
                                   token_groups)

PROMPT = "a red circle moving left"
pytestmark = pytest.mark.filterwarnings("ignore:HSA enabled on a bare denoiser")


def run(pipe, steps=10, seed=0, **kwargs):
    return pipe(PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), **kwargs).frames


# -- the schedule ------------------------------------------------------------------------------------------------
def test_active_set_rule_worked_example():
    # T = 8, budgets (8, 4, 2), 2 dense warm-up steps and 1 dense final step
    plan = Allocation(num_steps=8, num_tokens=10, budgets=(8, 4, 2), sizes=(2, 3, 5), warmup=2, dense_tail=1,
                      overhead=0.0)
    table = [plan.active_groups(i) for i in range(8)]
    assert table == [[True] * 3, [True] * 3,  # warm-up
                     [True, True, False], [True, False, False], [True, True, True], [True, False, False],
                     [True, True, False],
                     [True] * 3]  # dense tail
    assert [group_active(i, 8, 2) for i in range(8)] == [True, False, False, False, True, False, False, False]
    assert plan.active_fraction(3) == 0.2 and plan.active_fraction(2) == 0.5
    assert plan.steps_computed() == [8, 6, 4]  # dense steps count for every group
    assert plan.cost() == pytest.approx((3 + 0.5 + 0.2 + 1.0 + 0.2 + 0.5) / 8)


def test_token_groups_by_score_per_sample():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.0], [0.8, 0.0, 0.1, 0.3]])
    groups = token_groups(scores, (1, 2, 1))
    assert groups.tolist() == [[1, 0, 1, 2], [0, 2, 1, 1]]


def test_allocation_meets_the_runtime_and_favours_changing_tokens():
    rng = np.random.default_rng(0)
    scores = rng.gamma(1.0, 1.0, 256)
    for runtime in (0.75, 0.5, 0.3):
        plan = plan_allocation(scores, 40, runtime)
        assert plan.cost() <= runtime + 1e-9 and plan.cost() > runtime - 0.05
        assert plan.budgets[0] == 40 and plan.sizes[0] >= 1 and sum(plan.sizes) == 256
        assert all(40 % b == 0 for b in plan.budgets) and list(plan.budgets) == sorted(plan.budgets, reverse=True)
    # flat scores on half the tokens and zero on the rest: the changing half never gets less than the still half
    scores = np.r_[np.ones(128), np.zeros(128)]
    plan = plan_allocation(scores, 40, 0.5)
    assert sum(plan.sizes[:1]) <= 128
    # explicit budgets are kept, and only the sizes chosen
    plan = plan_allocation(rng.random(64), 30, 0.5, budgets=(30, 10, 5))
    assert plan.budgets == (30, 10, 5) and plan.cost() <= 0.5 + 1e-9


def test_unreachable_runtime_and_bad_budgets_are_refused():
    with pytest.raises(HSABudgetError, match=r"cannot reach runtime=0.1 at T=40.*cheapest allocation costs"):
        plan_allocation(np.ones(16), 40, 0.1)
    with pytest.raises(HSABudgetError, match=r"divide the number of steps T=40.*7 not allowed.*Divisors of 40"):
        plan_allocation(np.ones(16), 40, 0.5, budgets=(40, 7))
    with pytest.raises(HSABudgetError, match="start with the full budget T=40"):
        plan_allocation(np.ones(16), 40, 0.5, budgets=(20, 10))


def test_bad_options_name_the_valid_range(random_pipe):
    for bad, match in (({"runtime": 0.0}, r"runtime must be .* in \(0, 1\]"), ({"runtime": 1.5}, r"\(0, 1\]"),
                       ({"budgets": 5}, "budgets must be a list"), ({"warmup": 1}, "warmup must be"),
                       ({"overhead": 1.0}, r"overhead must be a fraction in \[0, 1\)")):
        with pytest.raises(ValueError, match=match):
            diffcache.enable(random_pipe, "hsa", **bad)
    assert not hasattr(random_pipe.transformer, "_diffcache_handle") or not random_pipe.transformer._diffcache_handle.enabled
    with pytest.raises(ValueError, match="groups must be an integer from 1 to 5"):
        diffcache.enable(random_pipe, "hsa", groups=8)
    with diffcache.enable(random_pipe, "hsa", budgets=(8, 3)):
        with pytest.raises(HSABudgetError, match="Divisors of 8: \\[1, 2, 4, 8\\]"):
            run(random_pipe, steps=8)
    # a runtime this call cannot meet is refused before any work, not after the warm-up
    with diffcache.enable(random_pipe, "hsa", preset="hsa-25") as handle:
        with pytest.raises(HSABudgetError, match="cannot reach runtime=0.25 at T=9.*Use more steps"):
            run(random_pipe, steps=9)
        assert handle.report().calls[-1].steps[-1].blocks_computed == 0
        run(random_pipe, steps=20)  # enough steps: fine


# -- inside the model --------------------------------------------------------------------------------------------
def _forward_inputs(pipe, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 12, 8, 16, 16, generator=g)
    return x, torch.full((batch,), 700.0), pipe.encode_prompt([PROMPT] * batch)


def test_synchronised_attention_equals_full_attention_when_every_token_is_active(shipped_pipe):
    model = shipped_pipe.transformer
    x, t, text = _forward_inputs(shipped_pipe, batch=2)
    with torch.no_grad():
        reference = model(x, t, text, return_dict=False)[0]
    handle = diffcache.enable(model, "hsa", num_inference_steps=10)
    try:
        runtime, adapter = handle.runtime, handle.runtime.adapter
        from diffcache.methods.hsa import _BranchState

        runtime.branch = _BranchState(len(runtime.layers))
        every = torch.arange(256).expand(2, -1)
        with torch.no_grad():
            runtime.active = None  # fills the K/V cache
            full = model._diffusers_hook.get_hook("diffcache_hsa").fn_ref.original_forward(x, t, text,
                                                                                           return_dict=False)[0]
            runtime.active = every
            sparse = adapter.sparse_forward(model, (x, t, text), {}, every)
            # a shuffled active list is the same computation in another order
            shuffled = torch.stack([torch.randperm(256, generator=torch.Generator().manual_seed(i)) for i in range(2)])
            runtime.active = shuffled
            permuted = adapter.sparse_forward(model, (x, t, text), {}, shuffled)
    finally:
        runtime.branch = runtime.active = None
        handle.disable()
    assert torch.equal(full, reference)  # the synchronised processor computes exactly what diffusers' does
    tokens = adapter.output_tokens(model, reference)
    torch.testing.assert_close(sparse, tokens, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(permuted, tokens.gather(1, shuffled[:, :, None].expand(-1, -1, tokens.shape[-1])),
                               atol=1e-5, rtol=1e-4)
    assert torch.equal(adapter.tokens_to_output(model, tokens, (4, 8, 8)), reference)


def test_flops_fall_with_the_active_fraction(shipped_pipe):
    model = shipped_pipe.transformer
    x, t, text = _forward_inputs(shipped_pipe)
    handle = diffcache.enable(model, "hsa", num_inference_steps=10)
    runtime, adapter = handle.runtime, handle.runtime.adapter
    from diffcache.methods.hsa import _BranchState

    def flops(active):
        runtime.branch, runtime.active = _BranchState(len(runtime.layers)), None
        with torch.no_grad():
            model._diffusers_hook.get_hook("diffcache_hsa").fn_ref.original_forward(x, t, text)  # fill the cache
            runtime.active = active
            with FlopCounterMode(display=False) as counter:
                if active is None:
                    model._diffusers_hook.get_hook("diffcache_hsa").fn_ref.original_forward(x, t, text)
                else:
                    adapter.sparse_forward(model, (x, t, text), {}, active)
        return counter.get_total_flops()

    try:
        full = flops(None)
        quarter = flops(torch.arange(0, 256, 4)[None])
        eighth = flops(torch.arange(0, 256, 8)[None])
    finally:
        runtime.branch = runtime.active = None
        handle.disable()
    assert 0.2 < quarter / full < 0.3 and 0.1 < eighth / full < 0.16


def test_a_partial_active_set_reproduces_the_full_forward_at_its_tokens():
    """With the K/V cache filled from the same input, a sparse forward of any token subset equals the full forward
    at those tokens — here on a Wan 2.2-style model with per-token timesteps and an image-conditioned (I2V) one."""
    from diffusers import WanTransformer3DModel

    common = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                  text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 8, 8, generator=g)  # 3 × 4 × 4 = 48 tokens
    text = torch.randn(2, 7, 16, generator=g)
    cases = [({}, {"timestep": torch.rand(2, 48, generator=g) * 1000}),
             ({"image_dim": 8, "added_kv_proj_dim": 24},
              {"timestep": torch.tensor([300.0, 800.0]), "encoder_hidden_states_image": torch.randn(2, 5, 8, generator=g)})]
    for extra_config, inputs in cases:
        torch.manual_seed(0)
        model = WanTransformer3DModel(**common, **extra_config).eval()
        kwargs = {"hidden_states": x, "encoder_hidden_states": text, **inputs, "return_dict": False}
        with torch.no_grad():
            reference = model(**kwargs)[0]
        handle = diffcache.enable(model, "hsa", num_inference_steps=10)
        runtime, adapter = handle.runtime, handle.runtime.adapter
        from diffcache.methods.hsa import _BranchState

        try:
            runtime.branch, runtime.active = _BranchState(len(runtime.layers)), None
            with torch.no_grad():
                model._diffusers_hook.get_hook("diffcache_hsa").fn_ref.original_forward(**kwargs)  # fills the cache
                subset = torch.stack([torch.randperm(48, generator=g)[:13] for _ in range(2)])
                runtime.active = subset
                sparse = adapter.sparse_forward(model, (), kwargs, subset)
        finally:
            runtime.branch = runtime.active = None
            handle.disable()
        tokens = adapter.output_tokens(model, reference)
        expected = tokens.gather(1, subset[:, :, None].expand(-1, -1, tokens.shape[-1]))
        torch.testing.assert_close(sparse, expected, atol=1e-5, rtol=1e-4)


# -- in the pipeline -----------------------------------------------------------------------------------------------
def test_every_budget_T_reproduces_the_uncached_run(shipped_pipe):
    reference = run(shipped_pipe, steps=8)
    with diffcache.enable(shipped_pipe, "hsa", budgets=(8, 8, 8), runtime=1.0) as handle:
        out = run(shipped_pipe, steps=8)
    assert np.array_equal(out, reference)
    assert all(s.active_fraction == 1.0 for s in handle.report().calls[-1].steps)


def test_inactive_tokens_follow_the_cached_euler_update(shipped_pipe):
    latents, sigmas = [], []

    def keep(pipe, i, t, tensors):
        latents.append(tensors["latents"].clone())
        return tensors

    steps = 20
    with diffcache.enable(shipped_pipe, "hsa", preset="hsa-25") as handle:
        x0 = torch.randn(1, 12, 8, 16, 16, generator=torch.Generator().manual_seed(3))
        shipped_pipe(PROMPT, num_inference_steps=steps, latents=x0.clone(), callback_on_step_end=keep)
        runtime = handle.runtime
        plan, groups = runtime.plan, runtime.groups
        sigmas = shipped_pipe.scheduler.sigmas.tolist()
    xs = [x0] + latents  # xs[i] = latents entering step i
    tokens = [runtime.adapter.output_tokens(shipped_pipe.transformer, x) for x in xs]  # same patches as the output
    smallest = len(plan.budgets) - 1
    token = int((groups[0] == smallest).nonzero()[0])
    computed = [i for i in range(steps) if plan.active_groups(i)[smallest]]
    skipped = [i for i in range(steps) if i not in computed]
    assert skipped, plan
    checked = 0
    for i in skipped:
        last = max(j for j in computed if j < i)  # the token's velocity was last computed at step `last`
        v = (tokens[last + 1][0, token] - tokens[last][0, token]) / (sigmas[last + 1] - sigmas[last])
        expected = tokens[last + 1][0, token] + (sigmas[i + 1] - sigmas[last + 1]) * v
        torch.testing.assert_close(tokens[i + 1][0, token], expected, atol=1e-5, rtol=1e-4)
        checked += 1
    assert checked >= 5


def test_cfg_split_and_batched_share_the_active_set_and_agree(shipped_pipe):
    with diffcache.enable(shipped_pipe, "hsa", preset="hsa-50") as handle:
        split = run(shipped_pipe, steps=16, cfg_mode="split")
        split_steps = handle.report().calls[-1].steps
        batched = run(shipped_pipe, steps=16, cfg_mode="batched")
        batched_steps = handle.report().calls[-1].steps
    assert [s.branches for s in split_steps[:2]] == [["cond", "uncond"]] * 2
    fractions = [s.active_fraction for s in split_steps]
    assert fractions == [s.active_fraction for s in batched_steps]
    assert min(fractions) < 0.5 and fractions[0] == 1.0 and fractions[-1] == 1.0
    np.testing.assert_allclose(split, batched, atol=2e-3)


def test_batch_of_two_has_per_sample_groups_of_equal_size(shipped_pipe):
    prompts = [PROMPT, "a blue square moving up"]
    with diffcache.enable(shipped_pipe, "hsa", preset="hsa-50") as handle:
        out = shipped_pipe(prompts, num_inference_steps=16, generator=torch.Generator().manual_seed(0)).frames
        runtime = handle.runtime
        groups, sizes = runtime.groups, runtime.plan.sizes
        mean_scores = (runtime.scores / runtime.score_counts)
        batched = shipped_pipe(prompts, num_inference_steps=16, generator=torch.Generator().manual_seed(0),
                               cfg_mode="batched").frames
        assert torch.equal(runtime.groups, groups)  # the [uncond, cond] halves map to the same two samples
    np.testing.assert_allclose(out, batched, atol=2e-3)
    assert out.shape[0] == 2 and groups.shape == (2, 256)
    assert not torch.equal(groups[0], groups[1])  # each sample's moving shape gets its own tokens
    for b in range(2):
        assert torch.bincount(groups[b], minlength=len(sizes)).tolist() == list(sizes)
        assert torch.equal(groups[b], token_groups(mean_scores[b:b + 1], sizes)[0])


def test_report_and_budget_map(shipped_pipe):
    with diffcache.enable(shipped_pipe, "hsa", preset="hsa-50") as handle:
        clip = run(shipped_pipe, steps=16)[0]
        budgets = np.asarray(handle.report().calls[-1].token_steps)
        call = handle.report().calls[-1]
    assert len(call.steps) == 16
    fractions = [s.active_fraction for s in call.steps]
    assert fractions[:3] == [1.0] * 3 and fractions[-1] == 1.0 and min(fractions) < 0.5  # dense warm-up and end
    plan_step = next(s for s in call.steps if "budgets" in s.values)
    assert plan_step.step == 3 and plan_step.values["predicted_runtime"] <= 0.5
    assert budgets.shape == (1, 4, 8, 8) and budgets.max() == 16 and budgets.min() < 16
    frames = budget_map_clip(budgets[0], clip, 16)
    assert frames.shape == (8, 32, 64, 3) and 0 <= frames.min() and frames.max() <= 1
    assert np.array_equal(frames[:, :, :32], clip)


def test_only_euler_flow_matching_and_wan_are_accepted():
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    from tiny_diffusers import tiny_cogvideox_pipeline, tiny_wan_pipeline

    wan = tiny_wan_pipeline()
    with diffcache.enable(wan, "hsa", preset="hsa-75"):  # a real WanPipeline with the Euler scheduler works
        frames = wan("a cat", num_inference_steps=16, height=32, width=32, num_frames=5, output_type="np").frames
    assert np.isfinite(frames).all()
    wan.scheduler = UniPCMultistepScheduler.from_config(wan.scheduler.config, flow_shift=3.0, use_flow_sigmas=True,
                                                        prediction_type="flow_prediction")  # as Wan 2.1 ships it
    advice = r"FlowMatchEulerDiscreteScheduler\.from_config\(pipe\.scheduler\.config, shift=3\)"
    with pytest.raises(UnsupportedModelError, match=advice):  # the advice keeps UniPC's flow_shift
        diffcache.enable(wan, "hsa")
    switched = FlowMatchEulerDiscreteScheduler.from_config(wan.scheduler.config, shift=3)
    assert switched.config.shift == 3.0 and FlowMatchEulerDiscreteScheduler.from_config(
        wan.scheduler.config).config.shift != 3.0  # what the old advice did: UniPC's flow_shift silently dropped
    wan.scheduler = FlowMatchEulerDiscreteScheduler.from_config(wan.scheduler.config, stochastic_sampling=True)
    with pytest.raises(UnsupportedModelError, match="with stochastic sampling.*stochastic_sampling=False"):
        diffcache.enable(wan, "hsa")
    with pytest.raises(UnsupportedModelError, match="hsa does not support CogVideoX models; it supports: Wan"):
        diffcache.enable(tiny_cogvideox_pipeline(), "hsa")
    with pytest.warns(UserWarning, match="bare denoiser: it cannot see the sampler"):
        diffcache.enable(wan.transformer, "hsa", num_inference_steps=16).disable()

    from diffusers.models.attention_processor import AttnProcessor2_0

    wan.scheduler = FlowMatchEulerDiscreteScheduler.from_config(wan.scheduler.config, stochastic_sampling=False)
    wan.transformer.blocks[1].attn1.set_processor(AttnProcessor2_0())
    with pytest.raises(UnsupportedModelError, match="uses AttnProcessor2_0; restore the default processor"):
        diffcache.enable(wan, "hsa")


def test_generate_writes_the_budget_map(tmp_path, capsys):
    import imageio.v3 as iio

    from diffcache.cli import main

    out, heat = tmp_path / "hsa.gif", tmp_path / "map.gif"
    assert main(["generate", "--prompt", PROMPT, "--steps", "16", "--method", "hsa:hsa-50", "--budget-map", str(heat),
                 "--upscale", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "of the tokens on average" in printed and "budget map (" in printed
    frames = iio.imread(heat, index=None)
    assert frames.shape[:3] == (8, 32, 64)
    assert main(["generate", "--prompt", PROMPT, "--method", "adacache", "--budget-map", str(tmp_path / "m.gif"),
                 "--out", str(tmp_path / "a.gif")]) == 2
    assert "use it with --method hsa" in capsys.readouterr().err
    assert main(["generate", "--prompt", PROMPT, "--steps", "16", "--method", "hsa", "--budget-map", str(heat),
                 "--out", str(tmp_path / "b.gif")]) == 2  # never overwrites without --force
    assert "--force" in capsys.readouterr().err


def test_evaluate_scores_hsa_at_a_chosen_size(shipped_pipe, capsys):
    from diffcache.cli import main
    from diffcache.embedded.evaluate import evaluate_adherence

    assert main(["evaluate", "--prompts", "2", "--steps", "8", "--method", "hsa:hsa-50", "--height", "64",
                 "--width", "48"]) == 0
    printed = capsys.readouterr().out
    # the method took effect (every step ran, on part of the tokens) at the size asked for
    assert "hsa:hsa-50 (8/8 steps computed with " in printed and "of the tokens on average per call)" in printed
    assert "64×48 px" in printed and "over 2 prompts" in printed
    _, clips = evaluate_adherence(shipped_pipe, num_prompts=1, num_inference_steps=2, progress=False,
                                  return_clips=True, height=64, width=48)
    assert clips.shape[2:4] == (64, 48)
    assert main(["evaluate", "--prompts", "2", "--height", "0"]) == 2
    assert "height" in capsys.readouterr().err

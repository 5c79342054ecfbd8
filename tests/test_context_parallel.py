"""Context parallelism (docs/context-parallel.md): every method under diffusers' Ulysses context parallelism on two
CPU processes (gloo) gives the single-process output, and the two ranks report the same decisions and values.

The two ranks run tests/cp_worker.py (spawned once for the module); each also runs every method in its process
alone first, the reference. Diffusers' ring attention cannot run on CPU processes (docs/context-parallel.md shows
why), so Ulysses is the mode tested here.
"""

from __future__ import annotations

import math
import socket
import sys
from pathlib import Path

import pytest
import torch
from diffusers.hooks.hooks import HookRegistry, ModelHook

sys.path.insert(0, str(Path(__file__).parent))
import cp_worker  # noqa: E402

from diffcache.distributed import arrange_hooks, context_parallel_group, gather_tokens, global_sums  # noqa: E402
from diffcache.errors import UnsupportedModelError  # noqa: E402

DECIDING = ["teacache", "fbcache", "adacache"]  #: methods whose decisions read the tokens
METHODS = list(cp_worker.METHODS)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the two ranks saved: ``[rank0, rank1]``."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path_factory.mktemp("cp")
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(cp_worker.main, args=(2, f"tcp://127.0.0.1:{port}", str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _decisions(summary):
    """(step, computed, blocks computed, blocks reused) of every step of every call."""
    return [[s[:4] for s in call] for call in summary]


def _values_close(a, b, rel=1e-5):
    for call_a, call_b in zip(a, b, strict=True):
        for step_a, step_b in zip(call_a, call_b, strict=True):
            va, vb = step_a[4], step_b[4]
            assert va.keys() == vb.keys(), (step_a[0], va, vb)
            for key in va:
                if isinstance(va[key], float):
                    assert math.isclose(va[key], vb[key], rel_tol=rel, abs_tol=1e-7), (step_a[0], key, va[key], vb[key])
                else:  # a step's kind, a rate
                    assert va[key] == vb[key], (step_a[0], key, va[key], vb[key])


@pytest.mark.parametrize("method", ["none", *METHODS])
def test_parallel_output_equals_single_process(ranks, method):
    """Under Ulysses CP the video of each rank equals the one the same method makes in one process."""
    reference = ranks[0]["reference"][method][0]
    for rank in ranks:
        frames = rank["parallel"][method][0]
        assert frames.shape == reference.shape
        torch.testing.assert_close(frames, reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_ranks_report_the_same_decisions_and_values(ranks, method):
    """Both ranks report identical steps (computed or reused, block counts) and identical values (the reduced
    metrics); they are the single-process decisions, and the values agree with it to float rounding."""
    summary0, summary1 = ranks[0]["parallel"][method][1], ranks[1]["parallel"][method][1]
    assert summary0 == summary1
    reference = ranks[0]["reference"][method][1]
    assert _decisions(summary0) == _decisions(reference)
    _values_close(summary0, reference)
    steps = summary0[0]
    assert any(s[1] for s in steps) and any(s[3] for s in steps), "the check needs both computed and reused work"


def test_without_the_reduction_the_ranks_would_disagree(ranks):
    """The shard-local metrics differ from rank to rank, so a decision taken on them would differ: FBCache's
    relative L1 of the first block's residual, and AdaCache's MoReg motion score (which compares frames across the
    shard boundary). The reduced values are the same on both ranks."""
    local0 = [local for local, _ in ranks[0]["fbcache_metrics"]]
    local1 = [local for local, _ in ranks[1]["fbcache_metrics"]]
    global0 = [g for _, g in ranks[0]["fbcache_metrics"]]
    assert global0 == [g for _, g in ranks[1]["fbcache_metrics"]]
    assert len(local0) == len(local1) > 0
    assert all(abs(a - b) > 1e-4 * max(a, b) for a, b in zip(local0, local1))
    # a threshold between the two ranks' local values at the first decision: one rank would reuse, the other compute
    threshold = (local0[0] + local1[0]) / 2
    assert (local0[0] < threshold) != (local1[0] < threshold)

    motion0, motion1 = ranks[0]["adacache_motion"], ranks[1]["adacache_motion"]
    assert motion0 and [g for _, g in motion0] == [g for _, g in motion1]
    gaps = [abs(a - b) / max(a, b) for (a, _), (b, _) in zip(motion0, motion1)]
    assert min(gaps) > 1e-4 and max(gaps) > 0.2, gaps


def test_cache_enabled_before_parallelism(ranks):
    """diffcache enabled first and parallelism after gives the same video and decisions as the reverse order."""
    reference_frames, reference = ranks[0]["reference"]["teacache"]
    for rank in ranks:
        frames, summary = rank["cache_first"]
        torch.testing.assert_close(frames, reference_frames, rtol=0, atol=1e-5)
        assert _decisions(summary) == _decisions(reference)
    assert ranks[0]["cache_first"][1] == ranks[1]["cache_first"][1]


def test_hsa_refuses_a_context_parallel_model(ranks):
    """At enable on a context-parallel model, and at the first call when parallelism was enabled after HSA."""
    for rank in ranks:
        assert "HSA cannot run on a context-parallel WanTransformer3DModel" in rank["hsa"]
        assert "HSA cannot run on a context-parallel WanTransformer3DModel" in rank["hsa_first"]


def test_reductions_across_two_ranks(ranks):
    """gather_tokens puts uneven shards back in rank order; global_sums adds over the ranks."""
    for rank in ranks:
        assert rank["gathered"].flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert rank["sums"] == [3.0, 1.0]


# -- in one process ------------------------------------------------------------------------------------------------
def test_reductions_are_no_ops_in_one_process():
    x = torch.randn(1, 6, 4, dtype=torch.bfloat16)
    assert gather_tokens(x) is x
    a, b = torch.tensor(1.5), torch.tensor(2.0)
    assert global_sums(a, b) == (a, b)
    assert context_parallel_group(torch.nn.Linear(2, 2)) is None


class _Named(ModelHook):
    pass


def _order(module):
    return list(module._diffusers_hook._hook_order)


def test_arrange_hooks_puts_cp_outside_blocks_and_inside_the_model():
    """On a block the context-parallel split runs before diffcache's hook; on the denoiser diffcache's tracker runs
    before the context-parallel input hook (it reads the timestep the pipeline passed)."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    for module, cp in ((model, "cp_input---"), (model[0], "cp_input---0")):
        registry = HookRegistry.check_if_exists_or_initialize(module)
        registry.register_hook(_Named(), cp)
        registry.register_hook(_Named(), "diffcache_method")
    HookRegistry.check_if_exists_or_initialize(model).register_hook(_Named(), "diffcache_step_tracker")
    arrange_hooks(model)
    assert _order(model) == ["cp_input---", "diffcache_method", "diffcache_step_tracker"]  # last = outermost
    assert _order(model[0]) == ["diffcache_method", "cp_input---0"]
    torch.testing.assert_close(model(torch.ones(1, 2)), model[1](model[0](torch.ones(1, 2))))


def test_arrange_hooks_refuses_a_foreign_hook_in_between():
    block = torch.nn.Linear(2, 2)
    registry = HookRegistry.check_if_exists_or_initialize(block)
    for name in ("cp_input---x", "group_offloading", "diffcache_method"):
        registry.register_hook(_Named(), name)
    model = torch.nn.Sequential(block)
    with pytest.raises(UnsupportedModelError, match="group_offloading"):
        arrange_hooks(model)


def test_unets_have_no_context_parallel_plan():
    """DeepCache serves U-Nets only, and diffusers 0.42.1 gives no U-Net a context-parallel plan (``_cp_plan``), so
    ``enable_parallelism`` cannot shard one: context parallelism does not arise for DeepCache. If diffusers adds a
    plan, this fails and DeepCache's cell in docs/compatibility.md needs a test of its own."""
    from diffcache.adapters.base import registered_adapters
    from diffcache.methods.framework import method_info

    families = set(method_info("deepcache").families)
    import diffusers

    classes = [getattr(diffusers, name) for adapter in registered_adapters() if adapter.family in families
               for name in adapter.model_classes]
    assert classes
    assert all(getattr(cls, "_cp_plan", None) is None for cls in classes), \
        [cls.__name__ for cls in classes if getattr(cls, "_cp_plan", None) is not None]

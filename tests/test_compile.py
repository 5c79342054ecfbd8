"""diffcache with torch.compile, counted with Dynamo's own counters on tiny real pipelines (docs/compile.md).

Regional compilation (``compile_repeated_blocks``): the methods whose hooks sit on whole blocks — and AdaCache,
whose metric block runs uncompiled — compile exactly the graphs the model compiles without diffcache, with no graph
break of diffcache's, no recompilation on a second call of the same shape
(``torch.compiler.set_stance("fail_on_recompile")``), one compiled graph run per computed block outside the method's
eager regions, and the uncompiled cached output and report. What cannot work is refused with a CompileError: hooks inside a
compiled block, and the model compiled as a whole (either order).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

import diffcache
from diffcache.errors import CompileError, NothingSkippedWarning
from tiny_diffusers import tiny_ltx_pipeline, tiny_sd_pipeline, tiny_wan_pipeline
from tiny_parts import video_call

STEPS = 5
WAN_CALL = video_call(dict(height=16, width=16, num_frames=5))
LTX = lambda: tiny_ltx_pipeline(num_layers=3)  # noqa: E731 - three blocks: the residual methods need two
LTX_CALL = video_call(dict(height=32, width=32, num_frames=9))
SD_CALL = video_call(dict(height=32, width=32), many="num_images_per_prompt")
#: the methods whose hooks sit on whole blocks (or, DeepCache, on a U-Net's down / up blocks, above its compiled
#: transformer blocks; AdaCache's split-point probe sits inside its metric block, which runs uncompiled), and an
#: option set each that reuses something on the tiny models (AdaCache: rate 2 whatever the distance)
BLOCK_METHODS = {"fbcache": {"threshold": 0.5}, "teacache": {"coefficients": (1.0, 0.0), "threshold": 0.3},
                 "adacache": {"codebook": ((1e9, 2),)}, "easycache": {"warmup_steps": 2, "threshold": 1.0}}
#: the methods that hook modules inside every block (attention layers)
INNER_METHODS = ("fastercache", "hsa", "pab")


class CountingBackend:
    """A Dynamo backend that runs the captured graph as it is (eager) and counts graphs compiled and graph runs."""

    def __init__(self):
        self.compiled = 0
        self.runs = 0

    def __call__(self, graph_module, example_inputs):
        self.compiled += 1

        def run(*args):
            self.runs += 1
            return graph_module.forward(*args)
        return run

    def reset(self):
        self.compiled = self.runs = 0


def _build(builder):
    pipe = builder()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _enable(pipe, method):
    options = dict(BLOCK_METHODS.get(method, {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # teacache's coefficients of the embedded model: wanted here
        return diffcache.enable(pipe, method, **options)


def _decisions(handle):
    return [[(s.step, s.computed, s.blocks_computed, s.blocks_reused) for s in call.steps]
            for call in handle.report().calls]


class EagerRuns:
    """Counts the eager runs of the blocks a method runs uncompiled (``Runtime.eager_regions``), from a forward hook
    on each one's first submodule: it only fires where that block runs eagerly (traced in a compiled block, it
    would break or guard the graph and fail the counts)."""

    def __init__(self, handle):
        self.runs = 0
        self.blocks = handle.runtime.eager_regions()
        self._hooks = [next(block.children()).register_forward_hook(self._count) for block in self.blocks]

    def _count(self, module, args, output):
        self.runs += 1

    def remove(self):
        for hook in self._hooks:
            hook.remove()


def _counted_call(pipe, call, backend, eager_runs=None):
    """One pipeline call; (frames, graphs compiled, graph runs, graph breaks) of it."""
    counters.clear()
    backend.reset()
    if eager_runs is not None:
        eager_runs.runs = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        frames = call(pipe, STEPS)
    return frames, backend.compiled, backend.runs, sum(counters["graph_break"].values())


@pytest.fixture(scope="module")
def wan_baseline():
    """Graphs and graph breaks of the tiny Wan pipeline under regional compilation with no method enabled."""
    pipe = _build(tiny_wan_pipeline)
    backend = CountingBackend()
    pipe.transformer.compile_repeated_blocks(backend=backend)
    _, compiled, runs, breaks = _counted_call(pipe, WAN_CALL, backend)
    return dict(compiled=compiled, runs=runs, breaks=breaks, blocks=len(pipe.transformer.blocks))


def _check_regional(builder, call, method, baseline, compile_first: bool):
    """The cached call uncompiled, then regionally compiled (after or before enable) twice: same graphs as the
    baseline, no recompilation, a graph run per computed block outside the eager regions (each of those computed
    blocks one eager run), the same frames and report."""
    torch._dynamo.reset()
    pipe = _build(builder)
    backend = CountingBackend()
    if compile_first:
        reference_pipe = _build(builder)  # the same weights (seeded builder), never compiled
        reference_handle = _enable(reference_pipe, method)
        reference = _counted_call(reference_pipe, call, backend)[0]
        reference_decisions = _decisions(reference_handle)
        pipe.transformer.compile_repeated_blocks(backend=backend)
        handle = _enable(pipe, method)
    else:
        handle = _enable(pipe, method)
        reference = _counted_call(pipe, call, backend)[0]
        reference_decisions = _decisions(handle)
        pipe.transformer.compile_repeated_blocks(backend=backend)
    eager = EagerRuns(handle)
    first, compiled, _, breaks = _counted_call(pipe, call, backend)
    assert compiled == baseline["compiled"], "diffcache changed the graphs the compiled blocks capture"
    assert breaks == baseline["breaks"], dict(counters["graph_break"])
    with torch.compiler.set_stance("fail_on_recompile"):
        second, compiled, runs, breaks = _counted_call(pipe, call, backend, eager)
    assert compiled == 0 and breaks == 0
    decisions = _decisions(handle)
    computed_blocks = sum(record[2] for record in decisions[-1])
    assert any(record[3] for record in decisions[-1]), "the method reused nothing: the test shows nothing"
    if eager.blocks:  # AdaCache computes all blocks of a forward or none: each computed forward runs its metric
        blocks = len(pipe.transformer.transformer_blocks if hasattr(pipe.transformer, "transformer_blocks")
                     else pipe.transformer.blocks)  # block(s) eagerly, once
        assert eager.runs * blocks == computed_blocks * len(eager.blocks) and eager.runs > 0
    assert runs == computed_blocks - eager.runs, \
        "every computed block outside the eager regions is one compiled graph run (none eager, none split)"
    eager.remove()
    counts = dict(graph_runs=runs, eager_runs=eager.runs, computed_blocks=computed_blocks,
                  reused_blocks=sum(record[3] for record in decisions[-1]))
    assert decisions[-1] == decisions[-2] == reference_decisions[-1]
    np.testing.assert_allclose(first, reference, atol=1e-5)
    np.testing.assert_allclose(second, reference, atol=1e-5)
    return pipe, handle, backend, counts


@pytest.mark.parametrize("method", sorted(BLOCK_METHODS))
def test_regional_compile_after_enable_wan(method, wan_baseline):
    assert wan_baseline["breaks"] == 0 and wan_baseline["compiled"] >= 1
    pipe, handle, backend, counts = _check_regional(tiny_wan_pipeline, WAN_CALL, method, wan_baseline,
                                                    compile_first=False)
    if method == "adacache":  # docs/compile.md's figures: 10 forwards (split CFG), step 3 reused (rate 2), block 1
        assert wan_baseline["runs"] == 20  # (the metric block) eager on the 8 computed forwards
        assert counts == dict(graph_runs=8, eager_runs=8, computed_blocks=16, reused_blocks=4)
    cores = [block._compiled_call_impl for block in pipe.transformer.blocks]
    eager = [core.eager for core in cores]
    assert eager == [index in getattr(handle.runtime, "metric_blocks", ()) for index in range(len(cores))]
    handle.disable()  # the user's compiled wrapper is back, and runs the block as without diffcache
    assert all(block._compiled_call_impl.__class__.__name__ != "CompiledCore" for block in pipe.transformer.blocks)
    _, compiled, runs, _ = _counted_call(pipe, WAN_CALL, backend)
    assert runs == wan_baseline["runs"] and compiled == 0


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(BLOCK_METHODS))
def test_regional_compile_before_enable_wan(method, wan_baseline):
    _check_regional(tiny_wan_pipeline, WAN_CALL, method, wan_baseline, compile_first=True)


@pytest.mark.slow
@pytest.mark.parametrize("compile_first", [False, True], ids=["enable-first", "compile-first"])
@pytest.mark.parametrize("method", sorted(BLOCK_METHODS))
def test_regional_compile_ltx(method, compile_first):
    pipe = _build(LTX)
    backend = CountingBackend()
    pipe.transformer.compile_repeated_blocks(backend=backend)
    _, compiled, runs, breaks = _counted_call(pipe, LTX_CALL, backend)
    baseline = dict(compiled=compiled, runs=runs, breaks=breaks)
    _check_regional(LTX, LTX_CALL, method, baseline, compile_first)


@pytest.mark.slow
def test_regional_compile_unet_deepcache():
    """DeepCache hooks a U-Net's down and up blocks; compile_repeated_blocks compiles the transformer blocks inside
    them, so a skipped branch skips its compiled graphs and nothing of DeepCache's is traced."""
    torch._dynamo.reset()
    pipe = _build(tiny_sd_pipeline)
    backend = CountingBackend()
    pipe.unet.compile_repeated_blocks(backend=backend)
    _, baseline_compiled, baseline_runs, baseline_breaks = _counted_call(pipe, SD_CALL, backend)
    reference_pipe = _build(tiny_sd_pipeline)
    reference_handle = diffcache.enable(reference_pipe, "deepcache")
    reference = _counted_call(reference_pipe, SD_CALL, backend)[0]
    handle = diffcache.enable(pipe, "deepcache")
    first, compiled, _, breaks = _counted_call(pipe, SD_CALL, backend)
    assert compiled == 0 and breaks == baseline_breaks  # the baseline's graphs serve the cached call as they are
    with torch.compiler.set_stance("fail_on_recompile"):
        second, compiled, runs, _ = _counted_call(pipe, SD_CALL, backend)
    assert compiled == 0 and runs < baseline_runs  # the skipped branches' compiled blocks did not run
    assert _decisions(handle)[-1] == _decisions(reference_handle)[-1]
    np.testing.assert_allclose(first, reference, atol=1e-5)
    np.testing.assert_allclose(second, reference, atol=1e-5)


@pytest.mark.slow
def test_regional_compile_inductor_fbcache_wan():
    """The real compiler once: inductor-compiled Wan blocks with First-Block-Cache, no recompilation on the
    second call, the uncompiled cached output within float tolerance."""
    torch._dynamo.reset()
    pipe = _build(tiny_wan_pipeline)
    handle = _enable(pipe, "fbcache")
    reference = WAN_CALL(pipe, STEPS)
    decisions = _decisions(handle)
    pipe.transformer.compile_repeated_blocks(backend="inductor", fullgraph=True)
    counters.clear()
    first = WAN_CALL(pipe, STEPS)
    assert sum(counters["graph_break"].values()) == 0
    with torch.compiler.set_stance("fail_on_recompile"):
        second = WAN_CALL(pipe, STEPS)
    assert _decisions(handle)[-1] == decisions[-1]
    np.testing.assert_allclose(first, reference, atol=1e-4)
    np.testing.assert_allclose(second, reference, atol=1e-4)


# -- refusals --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wan_regional():
    pipe = _build(tiny_wan_pipeline)
    pipe.transformer.compile_repeated_blocks(backend=CountingBackend())
    return pipe


@pytest.mark.parametrize("method", INNER_METHODS)
def test_hook_inside_compiled_block_is_refused(method, wan_regional):
    """Their hooks would be traced inside every compiled block, each block with its own guards (diffusers' hook
    wrapper is a partial per module, guarded by identity): refused at the call's first forward, before any work."""
    handle = diffcache.enable(wan_regional, method)
    try:
        with pytest.raises(CompileError,
                           match=r"inside the compiled WanTransformerBlock.*recompile_limit.*adacache: its metric block"):
            WAN_CALL(wan_regional, STEPS)
    finally:
        handle.disable()


def test_whole_model_compile_is_refused():
    """torch.compile(model)'s wrapper is seen through (the message names the real model), model.compile() before
    enable is refused at enable, and after enable at the first compiled forward (fullgraph or not)."""
    pipe = _build(tiny_wan_pipeline)
    model = pipe.transformer
    pipe.transformer = torch.compile(model, backend=CountingBackend())
    with pytest.raises(CompileError, match=r"WanTransformer3DModel compiled as a whole \(torch.compile\(model\)\)"):
        diffcache.enable(pipe, "fbcache")
    pipe.transformer = model
    model.compile(backend=CountingBackend())
    with pytest.raises(CompileError, match=r"compiled as a whole \(model.compile\(\)\).*compile_repeated_blocks"):
        diffcache.enable(pipe, "fbcache")
    model._compiled_call_impl = None
    for fullgraph in (False, True):
        torch._dynamo.reset()
        handle = diffcache.enable(pipe, "fbcache")
        model.compile(backend=CountingBackend(), fullgraph=fullgraph)
        with pytest.raises(Exception, match="compiled as a whole"):
            WAN_CALL(pipe, STEPS)
        handle.disable()
        model._compiled_call_impl = None

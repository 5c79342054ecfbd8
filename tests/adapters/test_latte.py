"""Latte's alternating layouts: a step-level residual taken in one layout replays the block stack exactly, and
MoReg sees a block's tokens frame-major."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from tiny_families.latte import LATTE_SIZE, tiny_latte_pipeline
from tiny_parts import video_call

import diffcache
from diffcache.adapters import find_adapter


def test_stack_residual_in_the_spatial_layout_replays_the_blocks():
    """``input + residual`` returned by the first block, with every other block passing its input through, gives the
    computed output: the residual is in the spatial layout and the temporal position embedding (which the forward
    adds again) is taken off."""
    model = tiny_latte_pipeline().transformer
    adapter = find_adapter(model)
    blocks = adapter.blocks(model)
    assert blocks[1] is model.temporal_transformer_blocks[0] and blocks[-1] is model.temporal_transformer_blocks[-1]
    seen = {}
    hooks = [blocks[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0])),
             blocks[-1].register_forward_hook(lambda m, a, o: seen.__setitem__("out", o))]
    x, t, text = torch.randn(2, 4, 3, 8, 8), torch.tensor([500, 500]), torch.randn(2, 5, 32)
    with torch.no_grad():
        reference = model(x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
    for hook in hooks:
        hook.remove()
    (run_output,) = adapter.run_output_streams(model, blocks[-1], (seen["out"],), (seen["x"],))
    residual = run_output - seen["x"]
    hooks = [blocks[0].register_forward_hook(lambda m, a, o: a[0] + residual)]
    hooks += [block.register_forward_hook(lambda m, a, o: a[0]) for block in blocks[1:]]
    with torch.no_grad():
        replayed = model(x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(replayed, reference, rtol=0, atol=1e-5)
    # without taking the embedding off, the replay would add it twice
    assert model.temp_pos_embed.abs().max() > 1e-3

    # MoReg's view: a temporal block's [B·N, F, D] tokens as [B, F·N, D], frame-major like a spatial block's
    temporal = seen["out"]
    spatial = temporal.reshape(2, 16, 3, -1).permute(0, 2, 1, 3).reshape(6, 16, -1)
    torch.testing.assert_close(adapter.frame_major_tokens(blocks[-1], temporal, (3, 4, 4)),
                               spatial.reshape(2, 48, -1), rtol=0, atol=0)


def test_teacache_and_pab_roles_on_latte():
    pipe = tiny_latte_pipeline()
    call = video_call(LATTE_SIZE, many="num_images_per_prompt")
    reference = call(pipe, 6)
    roles = [sorted(find_adapter(pipe.transformer).attention_modules(b)) for b in pipe.transformer.transformer_blocks]
    assert roles == [["cross", "spatial"]] * 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        handle = diffcache.enable(pipe, "teacache", coefficients=[1.0, 0.0], threshold=0.5)
        cached = call(pipe, 6)
    steps = handle.report().calls[-1].steps
    assert len(steps) == 6 and sum(s.blocks_reused for s in steps) > 0 and np.isfinite(cached).all()
    handle.disable()
    np.testing.assert_array_equal(call(pipe, 6), reference)
    handle = diffcache.enable(pipe, "pab", self_range=None, cross_range=None, temporal_range=2, window=(0, 1000))
    call(pipe, 6)
    hooked = {id(m) for m, _ in handle.runtime._hooked}
    assert hooked == {id(b.attn1) for b in pipe.transformer.temporal_transformer_blocks}
    assert sum(s.blocks_reused for s in handle.report().calls[-1].steps) > 0
    handle.disable()

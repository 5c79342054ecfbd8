"""The bytes each cache layout holds at real size, measured on meta tensors (shapes only: nothing is computed or
allocated). Run from the repository root:

    PYTHONPATH=src:tests:tests/methods python docs/experiments/memory_layout.py

* AdaCache on Wan 2.1-14B's transformer (40 blocks, 5,120 wide) at 720p, 81 frames (75,600 tokens), bf16, split CFG
  (two branches): one computed step of each branch; the per-block layout is the reference of
  tests/methods/test_adacache.py (``PerBlockAdaCache``).
* DeepCache on Stable Diffusion 1.5's U-Net at 512 × 512 (batched CFG, batch 2), fp16, branch 0 and 4; the
  keep-every-output layout is the reference of tests/methods/test_deepcache.py.
"""

from __future__ import annotations

import dataclasses

import torch
from diffusers import UNet2DConditionModel, WanTransformer3DModel

import diffcache
import diffcache.context
from diffcache.methods import framework
from diffcache.methods.adacache import AdaCacheRuntime
from diffcache.methods.deepcache import DeepCacheRuntime
from test_adacache import PerBlockAdaCache
from test_deepcache import _KeepEveryOutput

GB = 1e9

# the step tracker reads the timestep's value, which a meta tensor does not have: read 999 (the first step)
_first_float = diffcache.context._first_float
diffcache.context._first_float = lambda v: 999.0 if isinstance(v, torch.Tensor) and v.is_meta else _first_float(v)


def tensor_bytes(value, seen=None) -> int:
    """Bytes of the distinct storages of the tensors in ``value`` (nested containers, dataclasses)."""
    seen = set() if seen is None else seen
    if isinstance(value, torch.Tensor):
        key = (value.untyped_storage().data_ptr(), value.untyped_storage().nbytes()) if value.device.type != "meta" \
            else id(value)
        if key in seen:
            return 0
        seen.add(key)
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v, seen) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(tensor_bytes(v, seen) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(tensor_bytes(getattr(value, f.name), seen) for f in dataclasses.fields(value))
    return 0


def with_runtime(method, runtime_class):
    info = framework.method_info(method)
    framework._METHODS[method] = dataclasses.replace(info, runtime_class=runtime_class)
    return info


def adacache_wan14b():
    with torch.device("meta"):
        model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128,
                                      in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824,
                                      num_layers=40, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                      rope_max_seq_len=1024).to(torch.bfloat16)
        latents = torch.empty(1, 16, 21, 90, 160, dtype=torch.bfloat16)
        text = torch.empty(1, 512, 4096, dtype=torch.bfloat16)
    rows = {}
    for name, runtime_class in (("per block (before)", PerBlockAdaCache), ("stack residual (after)", AdaCacheRuntime)):
        info = with_runtime("adacache", runtime_class)
        try:
            with diffcache.enable(model, "adacache", preset="fast", num_inference_steps=30) as handle, torch.no_grad():
                for branch in ("cond", "uncond"):  # step 0 of split CFG: both branches computed
                    with model.cache_context(branch):
                        model(latents, torch.tensor([999.0], device="meta"), text, return_dict=False)
                runtime = handle.runtime
                held = runtime.caches if runtime_class is PerBlockAdaCache else runtime.states
                rows[name] = tensor_bytes(held)
        finally:
            framework._METHODS["adacache"] = info
    return rows


def deepcache_unets():
    with torch.device("meta"):
        unet = UNet2DConditionModel(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                                    cross_attention_dim=768, attention_head_dim=8,
                                    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3).half()
    # AnimateDiff (UNetMotionModel) is not measured: its forward fails on meta tensors in diffusers 0.42.1 (a
    # broadcast error inside its cross-attention), with or without diffcache
    cases = {"SD 1.5 U-Net, 512 px": (unet, (2, 4, 64, 64), {})}
    rows = {}
    for label, (model, shape, extra) in cases.items():
        sample = torch.empty(*shape, device="meta", dtype=torch.half)
        text = torch.empty(2, 77, 768, device="meta", dtype=torch.half)
        for branch in (0, 4):
            for name, runtime_class in (("every skipped output (before)", _KeepEveryOutput),
                                        ("deep feature (after)", DeepCacheRuntime)):
                info = with_runtime("deepcache", runtime_class)
                try:
                    with diffcache.enable(model, "deepcache", interval=3, branch=branch,
                                          num_inference_steps=3) as handle, torch.no_grad():
                        model(sample, 999, encoder_hidden_states=text, **extra)
                        rows[(label, branch, name)] = tensor_bytes(handle.runtime.caches)
                finally:
                    framework._METHODS["deepcache"] = info
    return rows


if __name__ == "__main__":
    for name, value in adacache_wan14b().items():
        print(f"AdaCache, Wan 2.1-14B 720p 81 frames, bf16, 2 branches, {name}: {value / GB:.2f} GB")
    for (label, branch, name), value in deepcache_unets().items():
        print(f"DeepCache, {label}, fp16, batched CFG, branch {branch}, {name}: {value / GB:.3f} GB")

"""Quantized denoisers: torchao int8 weight-only (``torchao.quantization.quantize_(transformer,
Int8WeightOnlyConfig())``) and diffusers' GGUF path (a Q8_0 ``.gguf`` file of the tiny Wan transformer in the
original Wan layout, read by ``WanTransformer3DModel.from_single_file(..., quantization_config=
GGUFQuantizationConfig(compute_dtype=torch.float32))``). bitsandbytes is not installed here, so its path is not
tested.

Every method runs on the quantized model, and is unaffected beyond the quantization itself:

* the quantization is real: the layers hold int8 / Q8_0 weights and the uncached output moves by a relative L1 ``q``
  (about 2e-3 here) from the float32 model's;
* the method's decisions are those it takes on the float32 model — every step computed or reused alike, every
  number it decided on within ``DECISION_RTOL`` of its float32 value (on these configs no decision margin is as
  small as the quantization's perturbation; a margin that small would flip, and this test would say so);
* the method's own error, cached against uncached on the same quantized model, is the float32 one's within
  ``q``: ``|e_quantized − e_float32| <= 0.1·e_float32 + q``.

The first method on int8 runs by default, the others are slow-marked (``pytest -m slow tests/test_quantization.py``).
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from tiny_parts import WAN_TRANSFORMER, eval_mode, wan_text_and_vae

import diffcache
from diffcache.errors import NothingSkippedWarning

STEPS = 6
DECISION_RTOL = 0.05  #: how far a decision value may move (relative) under quantization: ~20× q here

CASES = [
    ("fbcache", dict(threshold=0.3)),
    ("adacache", dict(preset="fast", codebook=((0.2, 1), (1.0, 2), (10.0, 3)))),
    ("teacache", dict(coefficients=(1.0, 0.0), threshold=0.3)),
    ("fastercache", {}),
    ("hsa", dict(runtime=0.9)),
    ("pab", dict(preset="fast")),
    ("easycache", dict(warmup_steps=2, threshold=1.0)),
]
PARAMS = [pytest.param(method, options, id=method, marks=() if i == 0 else pytest.mark.slow)
          for i, (method, options) in enumerate(CASES)]

#: diffusers' WanTransformer3DModel names → the original Wan checkpoint's, the inverse of diffusers'
#: ``convert_wan_transformer_to_diffusers`` (loaders/single_file_utils.py), applied in order
_TO_ORIGINAL = [("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
                ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
                ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
                ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
                ("condition_embedder.time_proj", "time_projection.1"), ("attn2", "cross_attn"), ("attn1", "self_attn"),
                (".to_out.0.", ".o."), (".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."),
                ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"),
                ("norm2", "norm_swap"), ("norm3", "norm2"), ("norm_swap", "norm3")]


def original_name(name: str) -> str:
    if name == "scale_shift_table":
        return "head.modulation"
    if name.startswith("proj_out."):
        return name.replace("proj_out.", "head.head.")
    name = name.replace("scale_shift_table", "modulation")
    for diffusers_part, original_part in _TO_ORIGINAL:
        name = name.replace(diffusers_part, original_part)
    return name


def write_gguf(model: torch.nn.Module, path) -> None:
    """``model``'s weights as a GGUF file in the original Wan layout: Q8_0 for every matrix whose rows are whole
    32-value blocks, F32 for the rest (biases, norms, the patch-embedding convolution, the modulation tables)."""
    import gguf
    from gguf.quants import quantize

    writer = gguf.GGUFWriter(str(path), arch="wan")
    for name, tensor in model.state_dict().items():
        array = tensor.detach().float().numpy()
        if array.ndim == 2 and array.shape[-1] % 32 == 0:
            data = quantize(array, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(original_name(name), data, raw_shape=data.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(original_name(name), array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    """The float32 tiny Wan pipeline (width 32, so every matrix row is whole Q8_0 blocks), and the same pipeline
    with its transformer int8 weight-only (torchao) and Q8_0 GGUF (diffusers)."""
    from diffusers import (FlowMatchEulerDiscreteScheduler, GGUFQuantizationConfig, WanPipeline,
                           WanTransformer3DModel)
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    parts = wan_text_and_vae(0)
    transformer = WanTransformer3DModel(**{**WAN_TRANSFORMER, "attention_head_dim": 16, "ffn_dim": 64}, num_layers=2)
    fp32 = eval_mode(WanPipeline(**parts, transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0)))

    int8 = copy.deepcopy(transformer)
    quantize_(int8, Int8WeightOnlyConfig())

    folder = tmp_path_factory.mktemp("gguf")
    transformer.save_pretrained(folder / "config")  # from_single_file reads the model config from here, offline
    write_gguf(transformer, folder / "wan.gguf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gguf_model = WanTransformer3DModel.from_single_file(
            str(folder / "wan.gguf"), config=str(folder / "config"), torch_dtype=torch.float32,
            quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32))
    return {"fp32": fp32,
            "int8": eval_mode(WanPipeline(**{**fp32.components, "transformer": int8})),
            "gguf": eval_mode(WanPipeline(**{**fp32.components, "transformer": gguf_model}))}


def run(pipe):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingSkippedWarning)
        return pipe(prompt="a cat surfing", negative_prompt="dog", height=16, width=16, num_frames=5,
                    num_inference_steps=STEPS, guidance_scale=5.0, output_type="latent",
                    generator=torch.Generator().manual_seed(0)).frames.detach().clone()


def relative_l1(test: torch.Tensor, reference: torch.Tensor) -> float:
    return float((test - reference).abs().sum() / reference.abs().sum())


_UNCACHED: dict = {}


def uncached(pipes, kind):
    if kind not in _UNCACHED:
        _UNCACHED[kind] = run(pipes[kind])
    return _UNCACHED[kind]


def test_the_gguf_file_is_in_the_layout_diffusers_converts(pipes):
    """The names written are those diffusers' converter maps back to the model's own, one to one."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    state = pipes["fp32"].transformer.state_dict()
    converted = convert_wan_transformer_to_diffusers({original_name(k): v for k, v in state.items()})
    assert set(converted) == set(state)


def test_the_quantization_is_real(pipes):
    from diffusers.quantizers.gguf.utils import GGUFParameter

    int8_layer, gguf_layer = pipes["int8"].transformer.blocks[0].attn1.to_q, pipes["gguf"].transformer.blocks[0].attn1.to_q
    assert "Int8" in type(int8_layer.weight).__name__
    assert isinstance(gguf_layer.weight, GGUFParameter) and gguf_layer.weight.dtype == torch.uint8
    reference = uncached(pipes, "fp32")
    for kind in ("int8", "gguf"):
        assert 1e-4 < relative_l1(uncached(pipes, kind), reference) < 1e-2


@pytest.mark.parametrize("kind", ["int8", pytest.param("gguf", marks=pytest.mark.slow)])
@pytest.mark.parametrize("method,options", PARAMS)
def test_a_method_on_a_quantized_model_decides_as_on_float32(pipes, method, options, kind):
    q = relative_l1(uncached(pipes, kind), uncached(pipes, "fp32"))
    with diffcache.enable(pipes["fp32"], method, **options) as handle:
        cached_fp32 = run(pipes["fp32"])
    reference = handle.report().calls[-1]
    with diffcache.enable(pipes[kind], method, **options) as handle:
        cached_quantized = run(pipes[kind])
    call = handle.report().calls[-1]
    assert np.isfinite(cached_quantized.numpy()).all()
    assert any(not s.computed or (s.active_fraction or 1) < 1 or s.blocks_reused for s in reference.steps), \
        "the options must reuse something, or the comparison shows nothing"

    assert [(s.step, s.computed, s.blocks_computed, s.blocks_reused, s.active_fraction) for s in call.steps] == \
        [(s.step, s.computed, s.blocks_computed, s.blocks_reused, s.active_fraction) for s in reference.steps]
    for record, fp32_record in zip(call.steps, reference.steps):
        assert record.values.keys() == fp32_record.values.keys()
        for key, value in fp32_record.values.items():
            if isinstance(value, float):
                assert record.values[key] == pytest.approx(value, rel=DECISION_RTOL, abs=1e-6), (record.step, key)
            else:
                assert record.values[key] == value, (record.step, key)

    error_fp32 = relative_l1(cached_fp32, uncached(pipes, "fp32"))
    error_quantized = relative_l1(cached_quantized, uncached(pipes, kind))
    print(f"\n{method:12s} {kind}: q={q:.2e} cached-vs-uncached float32 {error_fp32:.4f}, {kind} {error_quantized:.4f}, "
          f"computed steps {sum(s.computed for s in call.steps)}/{STEPS}")  # the table in docs/lora-quantization.md
    assert abs(error_quantized - error_fp32) <= 0.1 * error_fp32 + q, (error_quantized, error_fp32, q)


def test_deepcache_on_an_int8_unet_is_unaffected_beyond_the_quantization():
    """DeepCache on a Stable Diffusion U-Net quantized int8 weight-only (torchao): the same cached and computed steps
    as in float32 (its schedule is fixed), and its error against the uncached quantized U-Net is the float32 one
    within the quantization's own change."""
    from tiny_diffusers import TINY_PIPELINES
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    build, call, _ = TINY_PIPELINES["Stable Diffusion U-Net"]
    fp32 = build()
    int8 = copy.deepcopy(fp32)
    quantize_(int8.unet, Int8WeightOnlyConfig())
    assert "Int8" in type(int8.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight).__name__

    def frames(pipe):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.from_numpy(np.asarray(call(pipe, STEPS))).float()

    uncached_fp32, uncached_int8 = frames(fp32), frames(int8)
    q = relative_l1(uncached_int8, uncached_fp32)
    assert 0 < q < 1e-2, q
    with diffcache.enable(fp32, "deepcache") as handle:
        cached_fp32 = frames(fp32)
    reference = handle.report().calls[-1]
    with diffcache.enable(int8, "deepcache") as handle:
        cached_int8 = frames(int8)
    steps = handle.report().calls[-1].steps
    assert [(s.computed, s.blocks_reused) for s in steps] == [(s.computed, s.blocks_reused) for s in reference.steps]
    assert any(s.blocks_reused for s in steps)
    error_fp32, error_int8 = relative_l1(cached_fp32, uncached_fp32), relative_l1(cached_int8, uncached_int8)
    assert abs(error_int8 - error_fp32) <= 0.1 * error_fp32 + q, (error_int8, error_fp32, q)

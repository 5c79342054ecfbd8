"""Which of diffusers' context-parallel modes run on CPU processes (gloo): docs/context-parallel.md.

    torchrun --nproc-per-node 2 docs/experiments/context_parallel_modes.py

For each case, a tiny random-weight WanTransformer3DModel (tests/tiny_parts.py) runs one forward in each rank alone,
then ``enable_parallelism`` is called and the same forward runs across the two ranks; rank 0 prints the largest
difference, or the error. Each case builds its own model (parallelism cannot be enabled twice on one).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from unittest import mock

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

CASES = [  # (name, config kwargs, attention backend, dtype, work around the CPU device count)
    ("ulysses, no device-count work-around", dict(ulysses_degree=2), None, torch.float32, False),
    ("ulysses, native", dict(ulysses_degree=2), None, torch.float32, True),
    ("ring, native", dict(ring_degree=2), None, torch.float32, True),
    ("ring, _native_flash (bf16)", dict(ring_degree=2), "_native_flash", torch.bfloat16, True),
    ("ring, _native_cudnn (bf16)", dict(ring_degree=2), "_native_cudnn", torch.bfloat16, True),
]


def case(kwargs, backend, dtype, workaround) -> str:
    from diffusers import ContextParallelConfig, WanTransformer3DModel
    from tiny_parts import WAN_TRANSFORMER

    torch.manual_seed(0)
    model = WanTransformer3DModel(**WAN_TRANSFORMER, num_layers=2).eval().to(dtype)
    if backend:
        model.set_attention_backend(backend)
    x = torch.randn(1, 16, 2, 8, 8, dtype=dtype)
    t, text = torch.tensor([500]), torch.randn(1, 5, 32, dtype=dtype)
    try:
        with torch.no_grad():
            alone = model(x, t, text, return_dict=False)[0]
        count = mock.patch("torch.accelerator.device_count", return_value=1) if workaround else mock.MagicMock()
        with count:
            model.enable_parallelism(config=ContextParallelConfig(**kwargs))
        with torch.no_grad():
            parallel = model(x, t, text, return_dict=False)[0]
        return f"runs; largest difference from one process {float((parallel - alone).abs().max()):.3g}"
    except Exception as error:  # noqa: BLE001 - the point is to show the error
        return f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"


def main() -> None:
    dist.init_process_group("gloo")
    for name, kwargs, backend, dtype, workaround in CASES:
        result = case(kwargs, backend, dtype, workaround)
        dist.barrier()
        if dist.get_rank() == 0:
            print(f"{name}: {result}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()

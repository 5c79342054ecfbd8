"""The data cache: one slice of teacher trajectories per round, computed once, stored, reused by later rounds.

A slice (``DIR/cache/slice-07.safetensors``) holds, for ``clips`` prompts:

- ``prompt_embeds`` ``(N, L, D)`` and ``negative_prompt_embeds`` ``(1, L, D)``: the text encoder's output,
  encoded once (a real Wan model's T5 is the expensive part; it is never run again for this slice);
- ``trajectory`` ``(N, P, C, F, h, w)`` float16: the teacher's probability-flow ODE solution from the noise
  ``trajectory[:, 0]`` (σ = 1) to the sample ``trajectory[:, -1]`` (σ = 0), kept at ``P`` points;
- ``sigmas`` ``(P,)``: the σ of every kept point (for a diffusers teacher, :mod:`.pipelines`: the model
  timestep of every kept point, the clean end last);
- metadata: the prompts and seeds (JSON), the seconds it took.

The teacher solver is the teacher's own sampler: Euler on ``solver_steps`` uniform σ steps with
classifier-free guidance (one batched call on ``[uncond, cond]`` per step). Files are written atomically;
a slice that exists is loaded, never recomputed (:attr:`DataCache.built` counts what this process computed).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


@dataclass
class Slice:
    prompts: list[str]
    seeds: list[int]
    prompt_embeds: torch.Tensor  # (N, L, D)
    negative_prompt_embeds: torch.Tensor  # (1, L, D)
    trajectory: torch.Tensor  # (N, P, C, F, h, w) float16
    sigmas: torch.Tensor  # (P,)


def uniform_sigmas(steps: int) -> torch.Tensor:
    """``steps + 1`` σ values ``1, 1 − 1/steps, …, 0`` (the solver grid)."""
    return torch.linspace(1.0, 0.0, steps + 1)


@torch.no_grad()
def teacher_trajectory(transformer, prompt_embeds: torch.Tensor, negative_prompt_embeds: torch.Tensor,
                       noise: torch.Tensor, guidance_scale: float, solver_steps: int, keep_every: int,
                       batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve the teacher's guided flow ODE ``dx/dσ = v_u + w·(v_c − v_u)`` with Euler from σ = 1 to 0.

    Works for any ``WanTransformer3DModel`` (latents ``(N, C, F, h, w)``, embeddings ``(N, L, D)``).
    Returns the trajectory at every ``keep_every``-th grid point ``(N, P, C, F, h, w)`` and their σ ``(P,)``.
    """
    if solver_steps % keep_every:
        raise ValueError(f"solver_steps ({solver_steps}) must be a multiple of keep_every ({keep_every}).")
    sigmas = uniform_sigmas(solver_steps)
    kept = []
    dtype = transformer.dtype
    for start in range(0, noise.shape[0], batch_size):
        x = noise[start:start + batch_size].float()
        cond = prompt_embeds[start:start + batch_size].to(dtype)
        n = x.shape[0]
        uncond = negative_prompt_embeds.to(dtype).expand(n, -1, -1)
        points = [x.half()]
        for i in range(solver_steps):
            s, s_next = sigmas[i], sigmas[i + 1]
            both = transformer(hidden_states=torch.cat([x, x]).to(dtype), timestep=(1000 * s).expand(2 * n),
                               encoder_hidden_states=torch.cat([uncond, cond]), return_dict=False)[0].float()
            v_u, v_c = both.chunk(2)
            x = x + (s_next - s) * (v_u + guidance_scale * (v_c - v_u))
            if (i + 1) % keep_every == 0:
                points.append(x.half())
        kept.append(torch.stack(points, 1))
    return torch.cat(kept), sigmas[::keep_every].clone()


class DataCache:
    """The slices of one distillation run, in ``folder``; ``get(index, make)`` loads a slice or builds it once."""

    def __init__(self, folder: str | os.PathLike, embed_dtype: torch.dtype = torch.float32):
        self.folder = Path(folder)
        # embeddings are stored in float32, or in bfloat16 / float16 when the text encoder runs in it (a real
        # Wan's UMT5 output, 512 × 4096 per prompt, is 4 MB in bfloat16)
        self.embed_dtype = embed_dtype if embed_dtype in (torch.bfloat16, torch.float16) else torch.float32
        self.built: list[int] = []  # slices computed (not loaded) by this process

    def path(self, index: int) -> Path:
        return self.folder / f"slice-{index:02d}.safetensors"

    def exists(self, index: int) -> bool:
        return self.path(index).exists()

    def get(self, index: int, make) -> Slice:
        """The slice ``index``: loaded if stored, else ``make()`` (a :class:`Slice`) is computed and stored."""
        if self.exists(index):
            return self.load(index)
        start = time.perf_counter()
        data = make()
        self.save(index, data, seconds=time.perf_counter() - start)
        self.built.append(index)
        return data

    def save(self, index: int, data: Slice, seconds: float = 0.0) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(index)
        tmp = path.with_name(f".{path.name}.tmp")
        tensors = {"prompt_embeds": data.prompt_embeds.to(self.embed_dtype).contiguous(),
                   "negative_prompt_embeds": data.negative_prompt_embeds.to(self.embed_dtype).contiguous(),
                   "trajectory": data.trajectory.half().contiguous(), "sigmas": data.sigmas.float().contiguous()}
        meta = {"prompts": json.dumps(data.prompts), "seeds": json.dumps(data.seeds), "slice": str(index),
                "seconds": f"{seconds:.1f}"}
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
        return path

    def load(self, index: int) -> Slice:
        path = self.path(index)
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        t = load_file(str(path))
        return Slice(json.loads(meta["prompts"]), json.loads(meta["seeds"]), t["prompt_embeds"],
                     t["negative_prompt_embeds"], t["trajectory"], t["sigmas"])

"""Context parallelism: the ranks of one sample take the same decisions.

Under diffusers' context parallelism (``transformer.enable_parallelism(config=ContextParallelConfig(...))``, the
Ulysses all-to-all of Jacobs et al. 2023, arXiv:2309.14509, and ring attention, Liu et al. 2023,
arXiv:2310.01889) each rank of the context-parallel mesh runs every block on a contiguous shard of the tokens: the
model's ``_cp_plan`` splits the sequence where it enters the blocks (Wan: the input of ``blocks.0`` and the rotary
embedding) and gathers it at the output projection. Inside the blocks a method therefore sees only its rank's
shard, and a metric computed on it (a relative L1 change, a motion score) is the shard's, not the sample's. If two
ranks then take different branches (one reuses the blocks, the other computes them), the attention's collectives
no longer pair up: the ranks deadlock or silently produce different videos.

This module finds the context-parallel process group diffusers recorded on the model
(``model._parallel_config.context_parallel_config._flattened_mesh``: the ring × ulysses ranks that share a sample)
and reduces across it what a decision reads:

* :func:`global_sums` — an ``all_reduce`` of partial sums (the numerator and denominator of a relative L1 change),
  so the ratio every rank computes is the one over the whole sequence;
* :func:`gather_tokens` — an ``all_gather`` of a token-sharded tensor along its sequence dimension, in rank order
  (the order diffusers' ``EquipartitionSharder`` / ``PartitionAnythingSharder`` split it in), for a metric that
  compares tokens across the shard boundary (MoReg's frame-to-frame motion).

Both are no-ops (no communication, no change of value or dtype) without a group, i.e. in a single process.

:func:`arrange_hooks` puts diffcache's hooks where they see a consistent view: on a submodule (a block) inside
diffusers' context-parallel split/gather hooks (they see their rank's shard, whatever was enabled first), on the
denoiser itself outside them (the step tracker and whole-model hooks see the inputs the pipeline passed and the
gathered output).
"""

from __future__ import annotations

import torch

#: the name prefixes of the hooks diffusers' ``apply_context_parallel`` registers (diffusers.hooks.context_parallel)
CP_HOOK_PREFIXES = ("cp_input---", "cp_output---")
#: the prefix of every hook diffcache registers
DIFFCACHE_HOOK_PREFIX = "diffcache"


def context_parallel_config(model: torch.nn.Module):
    """The ``ContextParallelConfig`` diffusers' ``enable_parallelism`` set up on ``model``, or ``None``."""
    parallel = getattr(model, "_parallel_config", None)
    config = getattr(parallel, "context_parallel_config", None)
    if config is None or getattr(config, "_flattened_mesh", None) is None:
        return None
    return config


def context_parallel_group(model: torch.nn.Module):
    """The process group of ``model``'s context-parallel ranks (those that share one sample's tokens), or ``None``
    when the model is not context-parallel or the group has a single rank."""
    config = context_parallel_config(model)
    if config is None or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return None
    group = config._flattened_mesh.get_group()
    return group if torch.distributed.get_world_size(group) > 1 else None


@torch.no_grad()
def global_sums(*values: torch.Tensor, group=None) -> tuple[torch.Tensor, ...]:
    """``values`` (scalar tensors: partial sums over this rank's tokens) summed over the ranks of ``group``.

    Without a group they are returned as they are. With one, they are added in float64 (so the sum over ranks
    does not lose what a float32 sum over the whole sequence keeps) by one ``all_reduce``; every rank receives the
    same numbers, so every rank takes the same branch."""
    if group is None:
        return values
    stacked = torch.stack([v.detach().reshape(()).double() for v in values])
    torch.distributed.all_reduce(stacked, op=torch.distributed.ReduceOp.SUM, group=group)
    return tuple(stacked.unbind(0))


@torch.no_grad()
def gather_tokens(tensor: torch.Tensor, dim: int = 1, group=None) -> torch.Tensor:
    """The whole sequence of a token-sharded ``tensor``: the ranks' shards concatenated along ``dim`` in rank order
    (shards may differ in length by a token, as ``ulysses_anything`` / ``ring_anything`` split them). Without a group
    the tensor itself."""
    if group is None:
        return tensor
    world = torch.distributed.get_world_size(group)
    tensor = tensor.detach().contiguous()
    length = torch.tensor([tensor.shape[dim]], dtype=torch.long, device=tensor.device)
    lengths = [torch.zeros_like(length) for _ in range(world)]
    torch.distributed.all_gather(lengths, length, group=group)
    lengths = [int(n) for n in lengths]
    longest = max(lengths)
    if tensor.shape[dim] < longest:  # gloo gathers equal shapes only: pad, then trim each shard
        pad = list(tensor.shape)
        pad[dim] = longest - tensor.shape[dim]
        tensor = torch.cat([tensor, tensor.new_zeros(pad)], dim=dim)
    shards = [torch.empty_like(tensor) for _ in range(world)]
    torch.distributed.all_gather(shards, tensor, group=group)
    return torch.cat([shard.narrow(dim, 0, n) for shard, n in zip(shards, lengths)], dim=dim)


def _is_cp(name: str) -> bool:
    return name.startswith(CP_HOOK_PREFIXES)


def _is_ours(name: str) -> bool:
    return name.startswith(DIFFCACHE_HOOK_PREFIX)


def arrange_hooks(model: torch.nn.Module) -> None:
    """Order diffcache's hooks and diffusers' context-parallel hooks on every module of ``model`` that has both:
    on submodules the context-parallel hooks outermost (a block's diffcache hook gets, and returns, its rank's
    shard: the split happens even on a step whose blocks are all reused), on ``model`` itself innermost (the step
    tracker reads the timestep the pipeline passed, not a shard of a per-token one).

    The hooks from the first of either kind outward are removed (outermost first, which leaves diffusers'
    registry consistent) and registered again in that order. Another library's hook among them is left alone: then
    the order is refused with an error naming it and what to do."""
    from .errors import UnsupportedModelError

    for name, module in model.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is None:
            continue
        order = list(registry._hook_order)
        if not any(map(_is_cp, order)) or not any(map(_is_ours, order)):
            continue
        start = min(i for i, hook in enumerate(order) if _is_cp(hook) or _is_ours(hook))
        moved = order[start:]
        others = [hook for hook in moved if not (_is_cp(hook) or _is_ours(hook))]
        root = name == ""
        wanted = ([h for h in moved if _is_cp(h)] + [h for h in moved if _is_ours(h)] if root
                  else [h for h in moved if _is_ours(h)] + [h for h in moved if _is_cp(h)])
        if wanted == moved:
            continue
        if others:
            raise UnsupportedModelError(
                f"diffcache cannot order its hooks on {name or type(model).__name__} around diffusers' context "
                f"parallelism: the hooks {others} sit between them. Enable parallelism, then diffcache, then "
                f"{', '.join(others)} (or diffcache before parallelism).")
        hooks = {hook: registry.hooks[hook] for hook in moved}
        for hook in reversed(moved):
            registry.remove_hook(hook, recurse=False)
        for hook in wanted:
            registry.register_hook(hooks[hook], hook)

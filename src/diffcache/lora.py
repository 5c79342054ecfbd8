"""The LoRA state of a denoiser, as the step tracker compares it between forwards.

A LoRA loaded through diffusers (``pipe.load_lora_weights``, ``transformer.add_adapter``) is a set of PEFT tuner
layers inside the model; ``set_adapters`` (which adapters, at which weights), ``enable_lora`` / ``disable_lora``,
``fuse_lora`` / ``unfuse_lora`` and a forward's ``attention_kwargs={"scale": s}`` change what the model computes.
A cache filled under one LoRA state must not answer a forward under another, so the tracker reads
:func:`lora_state` before every forward: a change between two calls is a new call anyway (every method drops its
cache at a new call), and a change inside a call (a ``callback_on_step_end`` that switches adapters) restarts the
method from that step, with its warm-up (see :mod:`diffcache.context`).

What is compared, per tuner layer: the active adapters, whether adapters are disabled, the merged (fused)
adapters and the per-adapter scaling; and the LoRA scale of the forward's ``attention_kwargs`` /
``cross_attention_kwargs`` / ``joint_attention_kwargs``. Not seen: LoRA weights overwritten in place under the
same adapter name (``hotswap=True``) inside a call — between calls that is a new call like any other.
"""

from __future__ import annotations

import torch

_SCALE_ARGUMENTS = ("attention_kwargs", "cross_attention_kwargs", "joint_attention_kwargs")


class LoraWatch:
    """Reads the LoRA state of one denoiser; the tuner layers are looked up again whenever the adapters loaded
    (``model.peft_config``) change, so a LoRA loaded after :func:`diffcache.enable` is seen too."""

    def __init__(self):
        self._key = None
        self._layers: list = []

    def _tuner_layers(self, model: torch.nn.Module) -> list:
        key = tuple(getattr(model, "peft_config", None) or ())
        if key != self._key:
            self._key = key
            # duck-typed PEFT tuner layers (peft.tuners.tuners_utils.BaseTunerLayer), without importing peft
            self._layers = [m for m in model.modules() if hasattr(m, "merged_adapters") and hasattr(m, "scaling")]
        return self._layers

    def state(self, model: torch.nn.Module, kwargs: dict):
        """A comparable value of the LoRA state of a forward of ``model`` with ``kwargs``; ``None`` without LoRA."""
        if not getattr(model, "_hf_peft_config_loaded", False):
            return None
        layers = self._tuner_layers(model)
        if not layers:
            return None
        scale = 1.0
        for name in _SCALE_ARGUMENTS:
            given = kwargs.get(name)
            if isinstance(given, dict) and "scale" in given:
                scale = float(given["scale"])
        return (scale, tuple((tuple(layer.active_adapters), bool(layer.disable_adapters), tuple(layer.merged_adapters),
                              tuple(sorted(layer.scaling.items()))) for layer in layers))


def describe_change(before, after) -> str:
    """What changed between two :meth:`LoraWatch.state` values, for the log."""
    if before is None or after is None:
        return "a LoRA was loaded" if before is None else "the LoRA was unloaded"
    if before[0] != after[0]:
        return f"the LoRA scale of attention_kwargs went from {before[0]:g} to {after[0]:g}"
    return "the LoRA adapters, their weights or their fusion changed"

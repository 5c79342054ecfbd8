"""U-Nets: Stable Diffusion 1.x / 2.x and SDXL (``UNet2DConditionModel``, also the embedded ``tiny-shapes-t2i``),
ModelScope text-to-video (``UNet3DConditionModel``) and Stable Video Diffusion
(``UNetSpatioTemporalConditionModel``).

All three share one skeleton: ``conv_in`` → ``down_blocks`` → ``mid_block`` → ``up_blocks`` → ``conv_out``. A down
block is a list of *layers* (layer ``i`` = ``resnets[i]`` followed by whichever of ``temp_convs[i]``,
``attentions[i]``, ``temp_attentions[i]`` the block has) and an optional downsampler; an up block is a list of
layers and an optional upsampler. The forward collects *skip branches* — ``conv_in``'s output, then the output of
every down layer and downsampler — and each up layer concatenates one of them, deepest first, to its input.

Skip branch ``b`` (0 = ``conv_in``'s output, the shallowest) is consumed by up block ``b // k`` counted from the
output end, layer ``b % k`` counted from the block's end, where ``k`` is the number of layers of an up block (3 in
every Stable Diffusion-style U-Net: two layers + one downsampler per down block). This is what DeepCache's
``cache_branch_id`` names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UnsupportedModelError
from .base import Adapter, register_adapter
from .capabilities import UNetSkipBranches

LAYER_PARTS = ("resnets", "temp_convs", "attentions", "temp_attentions")


@dataclass(frozen=True)
class UNetLayout:
    """The skip structure of one U-Net (see the module docstring)."""

    num_blocks: int  #: number of down (and up) blocks
    layers_per_up_block: int  #: ``k``: layers of each up block = skip branches per block

    @property
    def num_branches(self) -> int:
        return self.num_blocks * self.layers_per_up_block

    def locate(self, branch: int) -> tuple[int, int]:
        """``(block, layer)`` of skip branch ``branch``: the down block that produces it and, mirrored, the up block
        and layer (counted from the output end) that consume it."""
        return divmod(branch, self.layers_per_up_block)


class UNetAdapter(Adapter, UNetSkipBranches):
    """Shared by the three U-Net families; they differ only in the parts a layer has."""

    def blocks(self, model):
        return [*model.down_blocks, model.mid_block, *model.up_blocks]

    def layer_modules(self, block, index: int) -> list[tuple[str, torch.nn.Module]]:
        """The modules of layer ``index`` of a down or up block, in execution order, with their attribute names."""
        parts = []
        for name in LAYER_PARTS:
            modules = getattr(block, name, None)
            if modules is not None and index < len(modules) and modules[index] is not None:
                parts.append((f"{name}.{index}", modules[index]))
        return parts

    def num_layers(self, block) -> int:
        return len(block.resnets)

    def samplers(self, block, name: str) -> list[tuple[str, torch.nn.Module]]:
        modules = getattr(block, name, None)
        return [(f"{name}.{i}", m) for i, m in enumerate(modules)] if modules is not None else []

    def layout(self, model) -> UNetLayout:
        """The skip layout, checked: every up block has the same number of layers ``k``, and the down path produces
        exactly ``k`` skip branches per block (otherwise branch ids would not map to blocks as DeepCache assumes)."""
        down, up = list(model.down_blocks), list(model.up_blocks)
        counts = {self.num_layers(block) for block in up}
        skips = 1 + sum(self.num_layers(b) + len(self.samplers(b, "downsamplers")) for b in down)
        if len(down) != len(up) or len(counts) != 1 or skips != len(up) * next(iter(counts)):
            raise UnsupportedModelError(
                f"this {type(model).__name__} has {len(down)} down blocks producing {skips} skip branches and "
                f"{len(up)} up blocks of {sorted(counts)} layers; DeepCache needs k skip branches per block and k "
                "layers in every up block (as in Stable Diffusion, SDXL, SVD and ModelScope U-Nets)."
            )
        return UNetLayout(len(down), next(iter(counts)))


@register_adapter
class UNet2DAdapter(UNetAdapter):
    family = "Stable Diffusion U-Net"
    model_classes = ("UNet2DConditionModel",)
    examples = "Stable Diffusion 1.5 / 2.1, SDXL, tiny-shapes-t2i"


@register_adapter
class UNet3DAdapter(UNetAdapter):
    family = "ModelScope U-Net"
    model_classes = ("UNet3DConditionModel",)
    examples = "ModelScope text-to-video (damo-vilab/text-to-video-ms-1.7b), Zeroscope"


@register_adapter
class UNetSpatioTemporalAdapter(UNetAdapter):
    family = "Stable Video Diffusion U-Net"
    model_classes = ("UNetSpatioTemporalConditionModel",)
    examples = "Stable Video Diffusion (img2vid, img2vid-xt)"

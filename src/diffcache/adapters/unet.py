"""U-Nets: Stable Diffusion 1.x / 2.x and SDXL (``UNet2DConditionModel``, also the embedded ``tiny-shapes-t2i``),
ModelScope text-to-video (``UNet3DConditionModel``), Stable Video Diffusion (``UNetSpatioTemporalConditionModel``),
AnimateDiff (``UNetMotionModel``) and I2VGen-XL (``I2VGenXLUNet``).

All five share one skeleton: a *stem* → ``down_blocks`` → ``mid_block`` → ``up_blocks`` → ``conv_out``. A down
block is a list of *layers* (layer ``i`` = ``resnets[i]`` followed by whichever of ``temp_convs[i]``,
``attentions[i]``, ``temp_attentions[i]``, ``motion_modules[i]`` the block has, in that order — the order each
block's forward runs them) and an optional downsampler; an up block is a list of layers and an optional upsampler.
The forward collects *skip branches* — the stem's output, then the output of every down layer and downsampler — and
each up layer concatenates one of them, deepest first, to its input.

The stem is ``conv_in`` (Stable Diffusion, SDXL, SVD, AnimateDiff), ``conv_in`` then the temporal transformer
``transformer_in`` (ModelScope, I2VGen-XL). Everything the forward computes before the stem — time, fps, text and
image embeddings, I2VGen-XL's image-latent encoder whose output is concatenated to the noisy latents — and after
the up path runs on every step; DeepCache never touches it.

Per family (diffusers 0.42 ``models/unets/``):

- **AnimateDiff** (``unet_motion_model.py``; Guo et al., arXiv:2307.04725, github.com/guoyww/AnimateDiff): a
  Stable Diffusion 1.5 or SDXL U-Net whose every down and up layer is followed by a *motion module*
  (``AnimateDiffTransformer3D``: attention over the frames of each pixel, given ``num_frames``), and whose mid block
  has one too (``UNetMidBlockCrossAttnMotion``; a motion adapter without a mid block, e.g. the SDXL beta, leaves
  Stable Diffusion's ``UNetMidBlock2DCrossAttn``). Frames are folded into the batch (``[B·F, C, H, W]``) from the
  stem on; the motion modules unfold them. Layers: ``resnets[i]`` → ``attentions[i]`` (cross-attention blocks) →
  ``motion_modules[i]``.
- **I2VGen-XL** (``unet_i2vgen_xl.py``; Zhang et al., arXiv:2311.04145, github.com/ali-vilab/VGen): ModelScope's 3-D
  blocks (``unet_3d_blocks.py``: ``resnets[i]`` → ``temp_convs[i]`` → ``attentions[i]`` → ``temp_attentions[i]``)
  behind the stem ``conv_in`` (of the noisy latents concatenated with the encoded image latents) →
  ``transformer_in``; its cross-attention context is the text, the first frame's image latents and the CLIP image
  embedding, and its time embedding adds the ``fps`` micro-condition.

Skip branch ``b`` (0 = the stem's output, the shallowest) is consumed by up block ``b // k`` counted from the
output end, layer ``b % k`` counted from the block's end, where ``k`` is the number of layers of an up block (3 in
every Stable Diffusion-style U-Net: two layers + one downsampler per down block, the deepest without a downsampler,
so ``1 + 2·blocks + (blocks − 1) = 3·blocks`` skips; AnimateDiff and I2VGen-XL keep that rule, checked by
:meth:`UNetAdapter.layout`). This is what DeepCache's ``cache_branch_id`` names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UnsupportedModelError
from ..memory import Shapes, register_shapes, unet_deep_feature
from .base import Adapter, register_adapter
from .capabilities import UNetSkipBranches

#: the parts of a layer, in the order the blocks run them (ModelScope / I2VGen-XL: the first four; AnimateDiff:
#: resnets, attentions, motion_modules)
LAYER_PARTS = ("resnets", "temp_convs", "attentions", "temp_attentions", "motion_modules")


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
    """Shared by the U-Net families; they differ only in the parts a layer has (:data:`LAYER_PARTS`)."""

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
                "layers in every up block (as in Stable Diffusion, SDXL, SVD, ModelScope, AnimateDiff and I2VGen-XL "
                "U-Nets)."
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


@register_adapter
class AnimateDiffAdapter(UNetAdapter):
    """AnimateDiff's ``UNetMotionModel``: a Stable Diffusion 1.5 / SDXL U-Net with a motion module after every layer
    (Guo et al., arXiv:2307.04725; the module docstring has the layout)."""

    family = "AnimateDiff"
    model_classes = ("UNetMotionModel",)
    examples = ("AnimateDiff on Stable Diffusion 1.5 (guoyww/animatediff-motion-adapter-v1-5-2, -v1-5-3), "
                "AnimateDiff-Lightning, AnimateDiff SDXL (guoyww/animatediff-motion-adapter-sdxl-beta)")


@register_adapter
class I2VGenXLAdapter(UNetAdapter):
    """I2VGen-XL's ``I2VGenXLUNet``: ModelScope's 3-D blocks behind an image-conditioned stem (Zhang et al.,
    arXiv:2311.04145; the module docstring has the layout)."""

    family = "I2VGen-XL"
    model_classes = ("I2VGenXLUNet",)
    examples = "I2VGen-XL (ali-vilab/i2vgen-xl)"


@register_shapes("Stable Diffusion U-Net", "ModelScope U-Net", "Stable Video Diffusion U-Net", "AnimateDiff",
                 "I2VGen-XL", vae_spatial=8, vae_temporal=1, text_tokens=77, cfg="batched")
def unet_shapes(config: dict, latent: tuple[int, int, int], text_tokens: int) -> Shapes:
    """Cache shapes (:mod:`diffcache.memory`): DeepCache's deep feature at branch 0, the output of the last up
    block's second-to-last layer (``block_out_channels[0]`` channels at the latent's resolution, per frame: video
    U-Nets fold the frames into the batch)."""
    frames, height, width = latent
    layers = config.get("layers_per_block", 2)
    k = (max(layers) if isinstance(layers, (list, tuple)) else layers) + 1
    unet = {"channels": list(config["block_out_channels"]), "layers": k, "frames": frames, "height": height,
            "width": width}
    out = config.get("out_channels", 4)
    return Shapes("U-Net", deep_feature=unet_deep_feature(unet, 0), unet=unet, output=out * frames * height * width)

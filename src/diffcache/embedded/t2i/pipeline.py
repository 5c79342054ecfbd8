"""The embedded text-to-image pipeline: a tiny ``UNet2DConditionModel`` sampled like ``StableDiffusionPipeline``.

``tiny-shapes-t2i`` draws one still shape, ``"a {colour} {shape}"``, on a 32 × 32 image. As in the
text-to-video model there is no VAE: the image in [0, 1] is mapped to [-1, 1], pixel-unshuffled by 2 into
a ``12 × 16 × 16`` array and normalised to zero mean and unit variance over the training images — the role of
Stable Diffusion 3's VAE ``shift_factor`` and ``scaling_factor`` — giving the latent (``pack_images`` /
``unpack_images``). The denoiser is a real diffusers
``UNet2DConditionModel`` with the layout of Stable Diffusion in miniature (cross-attention down blocks, a
mid block, cross-attention up blocks, two layers per down block and three per up block), trained with
ε-prediction on Stable Diffusion's noise schedule and sampled with ``DDIMScheduler`` (50 steps, classifier-free guidance on
the batch ``[uncond, cond]``), so DeepCache's U-Net code paths serve it and real Stable Diffusion alike.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_output import StableDiffusionPipelineOutput

from .. import shapes
from ..pipeline import ShapesPipeline
from ..text import ShapesTextEncoder

UNSHUFFLE = 2
IMAGE_SIZE = 32
# Mean and standard deviation of the training images in [-1, 1] (512 images: −0.819 and 0.350; a dark background
# covers nine tenths of each): latents are ``(x − LATENT_SHIFT) · LATENT_SCALE``, zero-mean and unit-variance.
# Why it matters (44.5 % → 93 % adherence), in the docstring of ``diffcache.embedded.t2i.train``.
LATENT_SHIFT = -0.82
LATENT_SCALE = 1 / 0.35


def pack_images(images: torch.Tensor) -> torch.Tensor:
    """Pixels ``(B, H, W, 3)`` in [0, 1] → latents ``(B, 3·r², H/r, W/r)``, normalised (``LATENT_SHIFT``,
    ``LATENT_SCALE``)."""
    pixels = F.pixel_unshuffle(images.permute(0, 3, 1, 2) * 2 - 1, UNSHUFFLE)
    return ((pixels - LATENT_SHIFT) * LATENT_SCALE).contiguous()


def unpack_images(latents: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_images`: latents → pixels ``(B, H, W, 3)`` in [0, 1] (clamped)."""
    pixels = latents / LATENT_SCALE + LATENT_SHIFT
    return ((F.pixel_shuffle(pixels, UNSHUFFLE).permute(0, 2, 3, 1) + 1) / 2).clamp(0, 1)


def tiny_unet_config() -> dict:
    """The config of the embedded U-Net (3.2 M parameters): three resolutions (16, 8, 4) of a 16 × 16 latent."""
    return dict(
        sample_size=IMAGE_SIZE // UNSHUFFLE,
        in_channels=3 * UNSHUFFLE**2,
        out_channels=3 * UNSHUFFLE**2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64, 96),
        layers_per_block=2,
        cross_attention_dim=64,
        attention_head_dim=2,  # diffusers' historical name: this is the number of heads
        norm_num_groups=16,
    )


def tiny_scheduler() -> DDIMScheduler:
    """DDIM over Stable Diffusion's β schedule (scaled linear, 0.00085 … 0.012, the schedule the model is trained
    on), spaced as Stable Diffusion's and, as there, without clipping the predicted clean sample."""
    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading", prediction_type="epsilon",
    )


class TinyShapesT2IPipeline(ShapesPipeline):
    """Text-to-image for the still-shape grammar ``"a {colour} {shape}"``, with the calling conventions of
    diffusers' ``StableDiffusionPipeline``.

    Example::

        pipe = diffcache.load_pipeline("tiny-shapes-t2i")
        image = pipe("a red circle", num_inference_steps=50, guidance_scale=5.0,
                     generator=torch.Generator().manual_seed(0)).images[0]          # a 32 × 32 PIL image
        arr = pipe("a red circle", output_type="np").images                          # (1, 32, 32, 3) in [0, 1]

    Guidance runs one U-Net call per step on the batch ``[uncond, cond]``, as ``StableDiffusionPipeline``
    does; the step is known to caches from the timestep's position in ``scheduler.timesteps``.
    """

    model_cpu_offload_seq = "text_encoder->unet"
    denoiser_name = "unet"

    def __init__(self, unet: UNet2DConditionModel, text_encoder: ShapesTextEncoder, scheduler: DDIMScheduler):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, scheduler=scheduler)
        self._init_call_state()
        self._cross_attention_kwargs = None

    @classmethod
    def from_scratch(cls, seed: int = 0) -> "TinyShapesT2IPipeline":
        """A randomly initialised pipeline with the embedded model's architecture (what training starts from)."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            unet = UNet2DConditionModel(**tiny_unet_config())
            text_encoder = ShapesTextEncoder(embed_dim=unet.config.cross_attention_dim)
        return cls(unet, text_encoder, tiny_scheduler())

    @property
    def cross_attention_kwargs(self):
        return self._cross_attention_kwargs

    def check_inputs(self, num_inference_steps, guidance_scale, output_type, height, width):
        self.check_common_inputs(num_inference_steps, guidance_scale, output_type)
        factor = UNSHUFFLE * 2 ** (len(self.unet.config.block_out_channels) - 1)
        if height % factor or width % factor or height < factor or width < factor:
            raise ValueError(f"height and width must be positive multiples of {factor}; got {height}×{width}.")

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int = IMAGE_SIZE,
        width: int = IMAGE_SIZE,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ):
        """Generate images. Returns ``StableDiffusionPipelineOutput(images=...)``: ``output_type="pil"`` a list
        of PIL images, ``"np"`` floats in [0, 1] of shape ``(batch, height, width, 3)``, ``"pt"`` a tensor
        ``(batch, 3, height, width)``, ``"latent"`` the packed latents."""
        self.check_inputs(num_inference_steps, guidance_scale, output_type, height, width)
        self.check_callback_inputs(callback_on_step_end_tensor_inputs)
        self.begin_call(guidance_scale)
        self._cross_attention_kwargs = cross_attention_kwargs
        do_cfg = self.do_classifier_free_guidance
        device = self._execution_device
        dtype = self.unet.dtype
        embeds, uncond, batch = self.prepare_embeddings(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                                        num_images_per_prompt, device)
        if do_cfg:
            embeds = torch.cat([uncond, embeds])  # [uncond, cond], as StableDiffusionPipeline

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        shape = (batch, self.unet.config.in_channels, height // UNSHUFFLE, width // UNSHUFFLE)
        latents = self.prepare_latents(shape, generator, latents, device) * self.scheduler.init_noise_sigma
        extra = {"eta": eta, "generator": generator} if isinstance(self.scheduler, DDIMScheduler) else {}

        def predict(i, t, latents):
            x = torch.cat([latents] * 2) if do_cfg else latents
            x = self.scheduler.scale_model_input(x, t).to(dtype)
            noise_pred = self.unet(x, t, encoder_hidden_states=embeds,
                                   cross_attention_kwargs=cross_attention_kwargs, return_dict=False)[0]
            return self.guide(*noise_pred.chunk(2)) if do_cfg else noise_pred

        latents = self.denoise(latents, timesteps, predict, extra, callback_on_step_end,
                               callback_on_step_end_tensor_inputs)
        images = self.convert_output(latents, output_type, unpack_images)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, None)
        return StableDiffusionPipelineOutput(images=images, nsfw_content_detected=None)


def render_images(specs: list[shapes.ClipSpec], generator: torch.Generator | None = None):
    """Still training images ``(B, H, W, 3)`` and their shape coverage ``(B, H, W)`` (one-frame clips)."""
    clips, masks = shapes.render_clips(specs, generator, num_frames=1, height=IMAGE_SIZE, width=IMAGE_SIZE)
    return clips[:, 0], masks[:, 0]

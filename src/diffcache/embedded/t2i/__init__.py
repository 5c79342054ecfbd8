"""tiny-shapes-t2i: the embedded text-to-image U-Net (a diffusers UNet2DConditionModel), for DeepCache."""

"""tiny-shapes-t2i: the embedded text-to-image U-Net (a diffusers UNet2DConditionModel), for DeepCache.

:mod:`.pipeline`: :class:`~.pipeline.TinyShapesT2IPipeline` and the latent packing; :mod:`.train`: the training
recipe (``diffcache train tiny-shapes-t2i``)."""

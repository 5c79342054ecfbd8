"""tiny-shapes-t2v: the embedded text-to-video model (a diffusers WanTransformer3DModel on procedural clips).

:mod:`.pipeline`: :class:`~.pipeline.TinyShapesT2VPipeline` and the latent packing; :mod:`.train`: the training
recipe (``diffcache train tiny-shapes-t2v``)."""

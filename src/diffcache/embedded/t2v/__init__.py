"""tiny-shapes-t2v: the embedded text-to-video model (a diffusers WanTransformer3DModel on procedural clips)."""

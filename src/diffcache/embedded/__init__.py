"""The embedded tiny models, ``tiny-shapes-t2v`` (text-to-video) and ``tiny-shapes-t2i`` (text-to-image): a package of
their own that needs neither the benchmark (:mod:`diffcache.bench`) nor distillation (:mod:`diffcache.distill`).

Modules:

- :mod:`.shapes`: the prompt grammar ``a {colour} {shape} moving {direction}`` (and its still-image form), the
  procedural clips it describes, and :func:`.shapes.prompts`, the one helper for lists of grammar prompts;
- :mod:`.text`: :class:`~.text.ShapesTextEncoder`, the word-level text encoder of both models;
- :mod:`.checker`: the analytic, reference-free check of a clip or image against its prompt;
- :mod:`.evaluate`: the adherence gates (the fixed prompt set, generated and scored by the checker);
- :mod:`.pipeline`: what both pipelines share (:class:`~.pipeline.ShapesPipeline`: call state, prompt encoding,
  guidance, initial noise, sampling loop, output conversion);
- :mod:`.trainer`: what both training recipes share (:class:`~.trainer.ShapesTrainer`: loop, learning-rate
  schedule, EMA, checkpoints and resume);
- :mod:`.t2v` (``pipeline``: :class:`TinyShapesT2VPipeline`, a Wan transformer sampled like ``WanPipeline``;
  ``train``: its recipe) and :mod:`.t2i` (``pipeline``: :class:`TinyShapesT2IPipeline`, a U-Net sampled like
  ``StableDiffusionPipeline``; ``train``: its recipe);
- ``weights/``: the shipped weights of both models (``save_pretrained`` folders, loaded by
  :func:`diffcache.loading.load_pipeline`).
"""

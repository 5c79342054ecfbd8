"""Cache memory: the bytes a method's runtime holds (:func:`measured_cache_bytes`, recorded per call as
``CallReport.peak_cache_bytes``) and the bytes it will hold at a given model and video size (:func:`cache_bytes`),
computed from the model family's shapes (:func:`register_shapes`, one small function beside each adapter) and
each method's storage rule. ``diffcache memory`` prints the latter; tests check the two agree on tiny models.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import ConfigError, UnsupportedModelError
from .files import read_json

if TYPE_CHECKING:
    from .methods.framework import MethodConfig


# -- measured ------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _opaque_types() -> tuple[type, ...]:
    """Objects whose tensors are not a method's cache: modules (weights), pipelines, schedulers; and diffcache's
    bookkeeping, which holds no tensors — the report (host numbers, growing with every step, so walking it at every
    forward cost more than the rest of the walk), configs, adapters and step contexts."""
    from diffusers import DiffusionPipeline, SchedulerMixin

    from .adapters.base import Adapter
    from .context import StepContext
    from .methods.framework import MethodConfig
    from .report import CallReport, Report, StepRecord

    return (torch.nn.Module, DiffusionPipeline, SchedulerMixin, types.FunctionType, types.MethodType,
            types.BuiltinFunctionType, types.ModuleType, type, Report, CallReport, StepRecord, MethodConfig, Adapter,
            StepContext)


def tensor_bytes(*roots) -> int:
    """Bytes of the distinct tensor storages reachable from ``roots`` through attributes, dicts, lists, tuples and
    dataclasses. Modules (the model's weights), pipelines and schedulers are not entered (a root itself is)."""
    opaque = _opaque_types()
    root_ids = {id(root) for root in roots}
    seen_objects, seen_storages, total = set(), set(), 0
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if obj is None or isinstance(obj, (str, bytes, int, float, bool, complex)) or id(obj) in seen_objects:
            continue
        seen_objects.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if isinstance(obj, torch.nn.Parameter):
                continue
            storage = obj.untyped_storage()
            key = (storage.data_ptr(), str(obj.device))
            if storage.data_ptr() != 0 and key not in seen_storages:
                seen_storages.add(key)
                total += storage.nbytes()
        elif isinstance(obj, opaque) and id(obj) not in root_ids:
            continue
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
        elif hasattr(obj, "__slots__"):
            stack.extend(getattr(obj, name, None) for name in obj.__slots__)
    return total


def measured_cache_bytes(runtime) -> int:
    """The bytes of the tensors a method's runtime holds now: every tensor reachable from its attributes (its
    caches, kept signals, metrics), each storage counted once; the model's weights, the pipeline and the
    scheduler are not entered. The runtime records the peak over each call in ``CallReport.peak_cache_bytes``."""
    return tensor_bytes(runtime)


# -- a model's shapes ----------------------------------------------------------------------------------------------
#: bytes per element of the dtypes ``cache_bytes`` takes
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
#: how CFG runs: no guidance (one branch), two denoiser calls per step (cond, uncond), or one call on the batch
#: ``[uncond, cond]`` (one branch of twice the rows)
CFG_MODES = ("none", "split", "batched")


@dataclass(frozen=True)
class Shapes:
    """What a method's cache is made of, for one sample of one forward, in elements (a family's
    :func:`register_shapes` function computes it from the denoiser's config and the latent size). Every tensor
    counted is one storage as the model hands it out: where an attention returns views of one joint
    ``[video; text]`` output (CogVideoX, HunyuanVideo's single-stream blocks), the joint size is counted."""

    family: str
    tokens: int = 0  #: video tokens ``N`` of a forward
    width: int = 0  #: the blocks' hidden size (heads × head dim)
    streams: tuple[int, ...] = ()  #: each residual stream the blocks update (video first, then text): elements
    #: per block, the output of each attention role (``"self"``, ``"cross"`` …): elements
    attention: tuple[dict, ...] = ()
    #: the same, counting each output's own elements where it is a view of a larger joint output (what a cache that
    #: copies such views keeps: FasterCache); ``None``: as ``attention``
    own_attention: tuple[dict, ...] | None = None
    kv: tuple[int, ...] = ()  #: per self-attention layer, the elements of its keys (as many again of values)
    signal: int = 0  #: TeaCache's modulated input (``ModulatedInput``): elements
    output: int = 0  #: the denoiser's output: elements
    output_maps: bool = True  #: the output has 2-D maps per frame (FasterCache splits its CFG delta by frequency)
    deep_feature: int = 0  #: U-Nets: the deep feature DeepCache reuses (at the config's default branch 0)
    unet: dict | None = None  #: U-Nets: what :func:`unet_deep_feature` needs for another branch
    notes: tuple[str, ...] = ()

    @property
    def blocks(self) -> int:
        return len(self.attention)


@dataclass(frozen=True)
class FamilyShapes:
    """A family's shape function and the pipeline facts a transformer config does not hold."""

    function: object  #: ``(config: dict, latent: (frames, height, width), text_tokens: int) -> Shapes``
    vae_spatial: int  #: pixels per latent pixel
    vae_temporal: int  #: frames per latent frame after the first (1: no temporal compression)
    text_tokens: int  #: text tokens the pipeline gives the denoiser by default (0: none in the block streams)
    cfg: str  #: how the family's pipeline runs CFG by default (:data:`CFG_MODES`)


_SHAPES: dict[str, FamilyShapes] = {}


def register_shapes(*families: str, vae_spatial: int, vae_temporal: int, text_tokens: int, cfg: str):
    """Decorator, beside an adapter: ``function(config, latent, text_tokens) -> Shapes`` computes the shapes of
    the ``families``' denoisers; the keyword arguments are the family's usual pipeline (its VAE's compression, its
    text length, its CFG mode)."""
    if cfg not in CFG_MODES:
        raise ValueError(f"cfg must be one of {', '.join(CFG_MODES)}, got {cfg!r}")

    def decorate(function):
        for family in families:
            _SHAPES[family] = FamilyShapes(function, vae_spatial, vae_temporal, text_tokens, cfg)
        return function

    return decorate


def family_shapes(family: str) -> FamilyShapes:
    from . import adapters  # noqa: F401 - the built-in families register their shapes

    if family not in _SHAPES:
        raise UnsupportedModelError(
            f"diffcache has no shape formula for {family} models yet; families with one: {', '.join(sorted(_SHAPES))} "
            "(a family adds one with diffcache.memory.register_shapes beside its adapter).")
    return _SHAPES[family]


def latent_size(frames: int, height: int, width: int, vae_spatial: int, vae_temporal: int) -> tuple[int, int, int]:
    """The latent ``(frames, height, width)`` of a video: the first frame alone, then ``vae_temporal`` frames per
    latent frame (as the video VAEs of Wan, HunyuanVideo, CogVideoX, LTX and Mochi do)."""
    return (frames - 1) // vae_temporal + 1, height // vae_spatial, width // vae_spatial


def heads_width(config: dict) -> int:
    """The blocks' width: ``num_attention_heads × attention_head_dim`` of a diffusers transformer config."""
    return int(config["num_attention_heads"]) * int(config["attention_head_dim"])


# -- each method's rule --------------------------------------------------------------------------------------------
@dataclass
class CacheBytes:
    """The bytes one method keeps at one size: ``parts`` names each kind of tensor (summed over blocks and
    branches), ``total`` is their sum."""

    method: str
    parts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def add(self, name: str, elements: int, element_bytes: int) -> None:
        if elements:
            self.parts[name] = self.parts.get(name, 0) + int(elements) * int(element_bytes)

    def to_dict(self) -> dict:
        return {"method": self.method, "total": self.total, "parts": dict(self.parts), "notes": list(self.notes)}


def _branch_rows(cfg: str, batch: int) -> list[tuple[str, int]]:
    """The branches a method keeps state for, with their rows: one of ``batch`` rows without CFG, cond and uncond
    of ``batch`` rows each with split CFG, one ``[uncond, cond]`` branch of ``2·batch`` rows with batched CFG."""
    if cfg not in CFG_MODES:
        raise ValueError(f"cfg must be one of {', '.join(CFG_MODES)}, got {cfg!r}")
    return {"none": [("cond", batch)], "split": [("cond", batch), ("uncond", batch)],
            "batched": [("cond_uncond", 2 * batch)]}[cfg]


def _stack_residuals(shapes, config, rows, b, out):
    """The block stack's residual of one branch, and with ``forecast="linear"`` the previous computed step's too."""
    out.add("residual of the block stack (per stream)", sum(shapes.streams) * rows, b)
    if getattr(config, "forecast", "none") == "linear":
        out.add("previous computed step's stack residual (forecast)", sum(shapes.streams) * rows, b)


def _fbcache(shapes, config, cfg, batch, b, out):
    for _, rows in _branch_rows(cfg, batch):
        _stack_residuals(shapes, config, rows, b, out)
        out.add("first block's previous residual", shapes.streams[0] * rows, b)


def _teacache(shapes, config, cfg, batch, b, out):
    for _, rows in _branch_rows(cfg, batch):
        _stack_residuals(shapes, config, rows, b, out)
        out.add("previous modulated input", shapes.signal * rows, b)


def _easycache(shapes, config, cfg, batch, b, out):
    for index, (_, rows) in enumerate(_branch_rows(cfg, batch)):
        _stack_residuals(shapes, config, rows, b, out)
        if index == 0:  # the step's first call decides for the step: only it keeps the signals
            # (the latent input counted as large as the output: Wan I2V's 36-channel input is 36/16 of that)
            out.add("latent input of the previous and of the last computed step", 2 * shapes.output * rows, b)
            out.add("output of the last computed step", shapes.output * rows, b)


def _pab_roles(config) -> set[str]:
    ranges = {"self": config.self_range, "spatial": config.self_range, "temporal": config.temporal_range,
              "cross": config.cross_range}
    return {role for role, value in ranges.items() if value is not None}


def _pab(shapes, config, cfg, batch, b, out):
    roles = _pab_roles(config)
    for _, rows in _branch_rows(cfg, batch):
        for block in shapes.attention:
            for role, elements in block.items():
                if role.split(".")[0] in roles:
                    out.add(f"{role.split('.')[0]}-attention outputs", elements * rows, b)


def _fastercache(shapes, config, cfg, batch, b, out):
    from .methods.fastercache import SELF_ATTENTION_ROLES

    # the history is per CFG half even in a batched call: cond and uncond each keep their last two outputs
    halves = 1 if cfg == "none" else 2
    if config.attention_reuse:
        own = shapes.attention if shapes.own_attention is None else shapes.own_attention
        per_layer = sum(e for block in own for role, e in block.items() if role in SELF_ATTENTION_ROLES)
        out.add("self-attention outputs of the last two computed steps", 2 * per_layer * batch * halves, b)
    if cfg != "none" and config.cfg_cache:
        # the spectrum of uncond − cond (complex64: two float32s), split in a low- and a high-frequency part
        if shapes.output_maps:
            out.add("CFG deltas (low and high frequency, complex64)", 2 * shapes.output * batch, 8)
        else:
            out.add("CFG delta", shapes.output * batch, b)
        if cfg == "split":
            out.add("cond output of the step (for rebuilding uncond)", shapes.output * batch, b)


def _hsa(shapes, config, cfg, batch, b, out):
    for _, rows in _branch_rows(cfg, batch):
        out.add("keys and values of every self-attention layer", 2 * sum(shapes.kv) * rows, b)
        out.add("last velocity (tokens)", shapes.output * rows, b)
    out.add("velocity-change scores (float32)", shapes.tokens * batch, 4)
    out.add("token groups (int64)", shapes.tokens * batch, 8)


def _adacache(shapes, config, cfg, batch, b, out):
    metric = len(config.metric_blocks) if config.metric_blocks else 1
    for index, (_, rows) in enumerate(_branch_rows(cfg, batch)):
        out.add("total residual of the blocks (per stream)", sum(shapes.streams) * rows, b)
        if index == 0:  # the step's first call decides the schedule: only it keeps the metric residual
            out.add("metric block's self-attention residual", metric * shapes.streams[0] * rows, b)


def _deepcache(shapes, config, cfg, batch, b, out):
    feature = shapes.deep_feature if config.branch == 0 else unet_deep_feature(shapes.unet, config.branch)
    for _, rows in _branch_rows(cfg, batch):
        out.add("deep feature", feature * rows, b)


#: method -> ``(shapes, config, cfg, batch, element bytes, CacheBytes)`` adding what the method keeps
#: (``cfg-cache`` is FasterCache's runtime with attention reuse off: the same formula)
FORMULAS = {"fbcache": _fbcache, "teacache": _teacache, "pab": _pab, "fastercache": _fastercache, "hsa": _hsa,
            "adacache": _adacache, "deepcache": _deepcache, "cfg-cache": _fastercache,
            "easycache": _easycache}


def unet_deep_feature(unet: dict, branch: int) -> int:
    """Elements per sample of the feature DeepCache reuses at skip branch ``branch`` of a Stable Diffusion-style
    U-Net (:mod:`diffcache.adapters.unet`): the output of the last up-path module a cached step skips. ``unet``:
    ``channels`` (``block_out_channels``), ``layers`` (per up block ``k``), ``frames``, ``height``, ``width`` (the
    latent), ``mid`` (whether there is a mid block)."""
    channels, k = list(unet["channels"]), unet["layers"]
    blocks = len(channels)
    block, layer = divmod(branch, k)
    up = blocks - 1 - block  # the up block that consumes this branch
    scale = 2 ** block  # up block `up` works at the resolution of down block `block`
    pixels = unet["frames"] * (unet["height"] // scale) * (unet["width"] // scale)
    up_channels = channels[::-1]
    if layer <= k - 2:  # layers 0 … k−2−layer of that up block are skipped: the feature is the last one's output
        return up_channels[up] * pixels
    if up > 0:  # none of its layers: the feature is the previous up block's output (after its upsampler)
        return up_channels[up - 1] * pixels
    return channels[-1] * pixels  # the deepest branch: only the mid block is skipped


# -- models --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """A denoiser to size: its family, its diffusers transformer config and the pipeline facts the config does not
    hold (the VAE's compression, the text length, how CFG runs)."""

    name: str
    family: str
    config: dict
    vae_spatial: int
    vae_temporal: int
    text_tokens: int
    cfg: str  #: the pipeline's CFG mode when it guides (:data:`CFG_MODES`; HunyuanVideo's ``true_cfg`` is split)
    guides_by_default: bool = True  #: whether the pipeline runs CFG by default (HunyuanVideo: distilled guidance)
    experts: int = 1  #: denoisers of the pipeline (Wan 2.2 A14B: 2; one runs at a time, so caches count once)
    default_size: tuple[int, int, int] | None = None  #: the pipeline's default ``(height, width, frames)``
    source: str = ""


def _wan(layers, heads, ffn, **extra):
    return {"_class_name": "WanTransformer3DModel", "patch_size": [1, 2, 2], "num_attention_heads": heads,
            "attention_head_dim": 128, "in_channels": 16, "out_channels": 16, "text_dim": 4096, "freq_dim": 256,
            "ffn_dim": ffn, "num_layers": layers, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads",
            "eps": 1e-6, **extra}


#: the transformer configs of common checkpoints, as their ``transformer/config.json`` on the Hugging Face Hub has
#: them (written out here: diffcache runs offline), with their pipelines' VAE compression, text length and CFG
MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("wan2.1-1.3b", "Wan", _wan(30, 12, 8960), 8, 4, 512, "split", default_size=(480, 832, 81),
              source="Wan-AI/Wan2.1-T2V-1.3B-Diffusers"),
    ModelSpec("wan2.1-14b", "Wan", _wan(40, 40, 13824), 8, 4, 512, "split", default_size=(720, 1280, 81),
              source="Wan-AI/Wan2.1-T2V-14B-Diffusers"),
    ModelSpec("wan2.2-a14b", "Wan", _wan(40, 40, 13824), 8, 4, 512, "split", experts=2, default_size=(720, 1280, 81),
              source="Wan-AI/Wan2.2-T2V-A14B-Diffusers (transformer and transformer_2)"),
    ModelSpec("hunyuanvideo", "HunyuanVideo",
              {"_class_name": "HunyuanVideoTransformer3DModel", "in_channels": 16, "out_channels": 16,
               "num_attention_heads": 24, "attention_head_dim": 128, "num_layers": 20, "num_single_layers": 40,
               "num_refiner_layers": 2, "mlp_ratio": 4.0, "patch_size": 2, "patch_size_t": 1, "qk_norm": "rms_norm",
               "guidance_embeds": True, "text_embed_dim": 4096, "pooled_projection_dim": 768, "rope_theta": 256.0,
               "rope_axes_dim": [16, 56, 56]},
              8, 4, 256, "split", guides_by_default=False, default_size=(720, 1280, 129),
              source="hunyuanvideo-community/HunyuanVideo (true_cfg_scale > 1 runs CFG as two calls)"),
    ModelSpec("ltx-video", "LTX-Video",
              {"_class_name": "LTXVideoTransformer3DModel", "in_channels": 128, "out_channels": 128, "patch_size": 1,
               "patch_size_t": 1, "num_attention_heads": 32, "attention_head_dim": 64, "cross_attention_dim": 2048,
               "num_layers": 28, "activation_fn": "gelu-approximate", "qk_norm": "rms_norm_across_heads",
               "norm_elementwise_affine": False, "norm_eps": 1e-6, "caption_channels": 4096, "attention_bias": True,
               "attention_out_bias": True},
              32, 8, 128, "batched", default_size=(512, 704, 161), source="Lightricks/LTX-Video"),
    ModelSpec("cogvideox-5b", "CogVideoX",
              {"_class_name": "CogVideoXTransformer3DModel", "num_attention_heads": 48, "attention_head_dim": 64,
               "in_channels": 16, "out_channels": 16, "flip_sin_to_cos": True, "freq_shift": 0, "time_embed_dim": 512,
               "text_embed_dim": 4096, "num_layers": 42, "dropout": 0.0, "attention_bias": True, "sample_width": 90,
               "sample_height": 60, "sample_frames": 49, "patch_size": 2, "temporal_compression_ratio": 4,
               "max_text_seq_length": 226, "activation_fn": "gelu-approximate", "timestep_activation_fn": "silu",
               "norm_elementwise_affine": True, "norm_eps": 1e-5, "spatial_interpolation_scale": 1.875,
               "temporal_interpolation_scale": 1.0, "use_rotary_positional_embeddings": True,
               "use_learned_positional_embeddings": False},
              8, 4, 226, "batched", default_size=(480, 720, 49), source="THUDM/CogVideoX-5b"),
    ModelSpec("mochi", "Mochi",
              {"_class_name": "MochiTransformer3DModel", "patch_size": 2, "num_attention_heads": 24,
               "attention_head_dim": 128, "num_layers": 48, "pooled_projection_dim": 1536, "in_channels": 12,
               "out_channels": None, "qk_norm": "rms_norm", "text_embed_dim": 4096, "time_embed_dim": 256,
               "activation_fn": "swiglu", "max_sequence_length": 256},
              8, 6, 256, "batched", default_size=(480, 848, 19), source="genmo/mochi-1-preview"),
)}
MODELS["wan2.2-14b"] = MODELS["wan2.2-a14b"]


def model_spec(model: str | dict | ModelSpec) -> ModelSpec:
    """``model``: a name of :data:`MODELS`, the path of a diffusers transformer ``config.json`` (or of its folder),
    or such a config as a dict. A config's family is the adapter whose ``model_classes`` name its ``_class_name``;
    the VAE compression, text length and CFG mode are then the family's usual ones."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, str) and model.lower() in MODELS:
        return MODELS[model.lower()]
    if isinstance(model, str):
        path = Path(model).expanduser()
        if path.is_dir():
            path = path / "transformer" / "config.json" if (path / "transformer" / "config.json").is_file() \
                else path / "config.json"
        if not path.is_file():
            raise ConfigError(f"{model!r} is neither a known model ({', '.join(sorted(MODELS))}) nor a "
                                    "diffusers transformer config.json (or a folder holding one).")
        config = read_json(path, f"--model {model}: the transformer config")
        if not isinstance(config, dict):
            raise ConfigError(f"--model {model}: the transformer config {path} holds a {type(config).__name__}, not "
                              "the JSON object a diffusers config.json is.")
        name = str(path)
    else:
        config, name = dict(model), model.get("_class_name", "config")
    family = _family_of(config.get("_class_name"))
    shapes = family_shapes(family)
    return ModelSpec(name, family, config, shapes.vae_spatial, shapes.vae_temporal, shapes.text_tokens, shapes.cfg,
                     source=name)


def _family_of(class_name: str | None) -> str:
    from .adapters import registered_adapters

    for adapter in reversed(registered_adapters()):
        if class_name in adapter.model_classes:
            return adapter.family
    known = sorted({c for a in registered_adapters() for c in a.model_classes})
    raise ConfigError(f"the config's _class_name {class_name!r} is no model class diffcache has an adapter for; "
                            f"known: {', '.join(known)}.")


def parameter_count(spec: ModelSpec) -> int | None:
    """The denoiser's parameters (all experts), counted on a model built from its config on the ``meta`` device (no
    memory, no weights); ``None`` where diffusers cannot build it from the config."""
    import diffusers

    cls = getattr(diffusers, spec.config.get("_class_name", ""), None)
    if cls is None:
        return None
    try:
        with torch.device("meta"):
            model = cls.from_config({k: v for k, v in spec.config.items() if not k.startswith("_")})
    except Exception:  # noqa: BLE001 - a config diffusers cannot build: the size is left out, not the cache bytes
        return None
    return spec.experts * sum(p.numel() for p in model.parameters())


def shapes_of(spec: ModelSpec, height: int, width: int, frames: int) -> Shapes:
    """The :class:`Shapes` of ``spec``'s denoiser for a ``frames``-frame video of ``height × width`` pixels."""
    family = family_shapes(spec.family)
    latent = latent_size(frames, height, width, spec.vae_spatial, spec.vae_temporal)
    if min(latent) < 1:
        raise ConfigError(f"a {width}×{height} video of {frames} frames has no latent at {spec.family}'s VAE "
                          f"compression ({spec.vae_spatial}× spatial, {spec.vae_temporal}× temporal)")
    return family.function(spec.config, latent, spec.text_tokens)


def cache_bytes(method: str | MethodConfig, model: str | dict | ModelSpec, height: int, width: int, frames: int,
                dtype: str = "bf16", cfg: str | None = None, batch: int = 1, shapes: Shapes | None = None,
                ) -> CacheBytes:
    """The bytes ``method`` (a name, with its default preset, or a config) keeps at its peak during a call of
    ``model`` (:func:`model_spec`) on a ``frames``-frame ``height × width`` video with ``batch`` videos per prompt,
    in ``dtype`` (``"bf16"``, ``"fp16"``, ``"fp32"``). ``cfg``: ``"none"`` (one branch), ``"split"`` (cond and
    uncond as two calls), ``"batched"`` (one call on ``[uncond, cond]``); ``None``: the pipeline's default.
    ``shapes`` overrides the ones computed from the model (tests pass a tiny pipeline's own).

    Raises :class:`~diffcache.errors.UnsupportedModelError` where the method does not support the family (naming
    what the family's adapter lacks).

    A composition (``"teacache+cfg-cache"``, a list of parts or a :class:`~diffcache.composition.ComposedConfig`)
    keeps what each of its methods keeps: the sum, each part named ``"method: part"``."""
    from .composition import compose, is_composition
    from .methods.framework import MethodConfig, method_info, missing_capabilities

    if is_composition(method):
        composed = compose(method)
        out = CacheBytes(composed.name)
        for config in composed.ordered():
            one = cache_bytes(config, model, height, width, frames, dtype, cfg, batch, shapes)
            out.parts.update({f"{one.method}: {name}": value for name, value in one.parts.items()})
            out.notes.extend(note for note in one.notes if note not in out.notes)
        return out
    spec = model_spec(model)
    if isinstance(method, MethodConfig):
        from .methods.framework import info_for_config

        info, config = info_for_config(method), method
    else:
        info = method_info(method)
        config = info.config_class.from_preset(None)
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
    if cfg is None:
        cfg = spec.cfg if spec.guides_by_default else "none"
    _branch_rows(cfg, batch)  # checks cfg
    adapter = _adapter_class(spec.family)
    missing = missing_capabilities(config, adapter)
    if missing:
        raise UnsupportedModelError(f"{info.name} does not support {spec.family} models: their adapter lacks "
                                    f"{', '.join(missing)}.")
    shapes = shapes or shapes_of(spec, height, width, frames)
    out = CacheBytes(info.name, notes=list(shapes.notes))
    FORMULAS[info.name](shapes, config, cfg, batch, DTYPE_BYTES[dtype], out)
    return out


def _adapter_class(family: str):
    from .adapters import registered_adapters

    for adapter in reversed(registered_adapters()):
        if adapter.family == family:
            return adapter
    raise UnsupportedModelError(f"no adapter of family {family!r}")

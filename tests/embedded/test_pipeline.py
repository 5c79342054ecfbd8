import numpy as np
import pytest
import torch

from diffcache.embedded.t2v.pipeline import TinyShapesT2VPipeline, pack, unpack
from diffcache.embedded.shapes import ClipSpec, PromptError, render_clips


def _run(pipe, prompt="a red circle moving left", **kw):
    kw.setdefault("num_inference_steps", 3)
    kw.setdefault("generator", torch.Generator().manual_seed(0))
    return pipe(prompt, **kw).frames


def test_pack_unpack_roundtrip():
    clips, _ = render_clips([ClipSpec("blue", "triangle", "up")] * 2, torch.Generator().manual_seed(0))
    latents = pack(clips)
    assert latents.shape == (2, 12, 8, 16, 16)
    assert latents.min() >= -1 and latents.max() <= 1
    torch.testing.assert_close(unpack(latents), clips)


def test_output_shape_dtype_range(random_pipe):
    frames = _run(random_pipe, ["a red circle moving left", "a blue square moving up"], num_videos_per_prompt=2)
    assert isinstance(frames, np.ndarray) and frames.dtype == np.float32
    assert frames.shape == (4, 8, 32, 32, 3)
    assert frames.min() >= 0 and frames.max() <= 1


def test_output_types(random_pipe):
    pt = _run(random_pipe, output_type="pt")
    assert pt.shape == (1, 8, 3, 32, 32)
    pil = _run(random_pipe, output_type="pil")
    assert len(pil) == 1 and len(pil[0]) == 8 and pil[0][0].size == (32, 32)
    latent = _run(random_pipe, output_type="latent")
    assert latent.shape == (1, 12, 8, 16, 16)


def test_deterministic_given_seed(random_pipe):
    a, b = _run(random_pipe), _run(random_pipe)
    c = _run(random_pipe, generator=torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_split_and_batched_cfg_agree(random_pipe):
    prompts = ["a red circle moving left", "a blue square moving up"]
    split = _run(random_pipe, prompts, guidance_scale=5.0, cfg_mode="split", num_videos_per_prompt=2,
                 negative_prompt=["a green triangle moving down", ""])
    batched = _run(random_pipe, prompts, guidance_scale=5.0, cfg_mode="batched", num_videos_per_prompt=2,
                   negative_prompt=["a green triangle moving down", ""])
    np.testing.assert_allclose(split, batched, atol=2e-5)
    assert not np.allclose(split[0], split[2], atol=1e-4)  # the prompts matter
    assert not np.allclose(split, _run(random_pipe, guidance_scale=1.0), atol=1e-4)


def test_split_cfg_calls_cond_then_uncond_in_cache_contexts(random_pipe):
    from diffusers.hooks import HookRegistry, ModelHook

    seen = []

    class Spy(ModelHook):
        _is_stateful = False

        def pre_forward(self, module, *args, **kwargs):
            seen.append(kwargs["encoder_hidden_states"].shape[0])
            return args, kwargs

    names = []
    transformer = random_pipe.transformer
    original = transformer.cache_context

    def recording(name, **kw):
        names.append((name, kw.get("step_index")))
        return original(name, **kw)

    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.register_hook(Spy(), "spy")
    transformer.cache_context = recording
    try:
        _run(random_pipe, num_inference_steps=2, guidance_scale=5.0, cfg_mode="split")
        assert names == [("cond", 0), ("uncond", 0), ("cond", 1), ("uncond", 1)]
        names.clear()
        _run(random_pipe, num_inference_steps=2, guidance_scale=5.0, cfg_mode="batched")
        assert names == [("cond_uncond", 0), ("cond_uncond", 1)]
        assert seen == [1, 1, 1, 1, 2, 2]
    finally:
        del transformer.cache_context
        registry.remove_hook("spy")


def test_bad_inputs_are_explained(random_pipe):
    with pytest.raises(ValueError, match="cfg_mode"):
        _run(random_pipe, cfg_mode="interleaved")
    with pytest.raises(ValueError, match="num_inference_steps"):
        _run(random_pipe, num_inference_steps=0)
    with pytest.raises(PromptError, match="Accepted words"):
        _run(random_pipe, "a red dragon moving left")
    with pytest.raises(ValueError, match="output_type"):
        _run(random_pipe, output_type="gif")


def test_save_load_roundtrip(random_pipe, tmp_path):
    import diffcache

    random_pipe.save_pretrained(tmp_path / "pipe")
    files = {p.name for p in (tmp_path / "pipe").rglob("*")}
    assert "diffusion_pytorch_model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    loaded = diffcache.load_pipeline(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded, TinyShapesT2VPipeline)
    np.testing.assert_array_equal(_run(random_pipe), _run(loaded))


def test_shipped_model_loads_offline(monkeypatch):
    import diffcache
    from diffcache.loading import embedded_model_path
    from diffusers import WanTransformer3DModel

    folder = embedded_model_path("tiny-shapes-t2v")
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 30 * 2**20
    assert {p.suffix for p in files} == {".json", ".safetensors"}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = diffcache.load_pipeline("tiny-shapes-t2v")
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.transformer, WanTransformer3DModel)
    assert _run(pipe, num_inference_steps=2).shape == (1, 8, 32, 32, 3)


def test_wan_pipeline_state_is_exposed_during_a_call(random_pipe):
    seen = []

    def callback(pipe, i, t, tensors):
        seen.append((i, float(pipe.current_timestep), pipe.num_timesteps, pipe.do_classifier_free_guidance,
                     tuple(tensors["latents"].shape)))
        return {}

    _run(random_pipe, num_inference_steps=3, callback_on_step_end=callback)
    timesteps = random_pipe.scheduler.timesteps.tolist()
    assert [s[:2] for s in seen] == [(i, t) for i, t in enumerate(timesteps)]
    assert all(s[2:] == (3, True, (1, 12, 8, 16, 16)) for s in seen)
    assert random_pipe.current_timestep is None
    with pytest.raises(ValueError, match="not available"):
        _run(random_pipe, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["prompt_embeds"])


def test_prompt_embeds_instead_of_prompts(random_pipe):
    embeds = random_pipe.encode_prompt(["a red circle moving left"])
    np.testing.assert_array_equal(_run(random_pipe, None, prompt_embeds=embeds), _run(random_pipe))


def test_load_pipeline_errors(tmp_path, monkeypatch):
    import diffcache

    with pytest.raises(diffcache.ModelLoadError, match="tiny-shapes-t2v"):
        diffcache.load_pipeline("no-such-model")
    with pytest.raises(diffcache.ModelLoadError, match="model_index.json"):
        diffcache.load_pipeline(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(diffcache.ModelLoadError, match="could not load 'Wan-AI/Wan2.1-T2V-1.3B-Diffusers'") as info:
        diffcache.load_pipeline("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    assert "\n" not in str(info.value)


class _RegisteredShapesPipeline(TinyShapesT2VPipeline):
    """A pipeline class diffusers does not know: loadable only once registered with diffcache.loading."""


def test_registered_pipeline_class_loads_its_folders(random_pipe, tmp_path, monkeypatch):
    import diffcache
    from diffcache import loading

    monkeypatch.setattr(loading, "_PIPELINE_CLASSES", dict(loading._PIPELINE_CLASSES))
    pipe = _RegisteredShapesPipeline(random_pipe.transformer, random_pipe.text_encoder, random_pipe.scheduler)
    pipe.save_pretrained(tmp_path / "pipe")
    with pytest.raises(diffcache.ModelLoadError):
        diffcache.load_pipeline(tmp_path / "pipe")  # diffusers alone cannot resolve the class name
    loading.register_pipeline_class("_RegisteredShapesPipeline", f"{__name__}:_RegisteredShapesPipeline")
    assert type(diffcache.load_pipeline(tmp_path / "pipe")) is _RegisteredShapesPipeline
    loading.register_pipeline_class("_RegisteredShapesPipeline", TinyShapesT2VPipeline)
    assert type(diffcache.load_pipeline(tmp_path / "pipe")) is TinyShapesT2VPipeline
    with pytest.raises(ValueError, match="module:ClassName"):
        loading.register_pipeline_class("X", "no_colon_here")
    with pytest.raises(TypeError, match="expected a class"):
        loading.register_pipeline_class("X", 3)


def test_embedded_package_imports_neither_bench_nor_distill():
    import pkgutil
    import subprocess
    import sys

    import diffcache.embedded

    modules = ["diffcache.embedded", "diffcache.loading"] + [
        m.name for m in pkgutil.walk_packages(diffcache.embedded.__path__, "diffcache.embedded.")]
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n    importlib.import_module(name)\n"
            "print(sorted(k for k in sys.modules if k.split('.')[:2] in (['diffcache', 'bench'], "
            "['diffcache', 'distill'])))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "diffcache.embedded.trainer" in modules and "diffcache.embedded.t2i.train" in modules
    assert out.stdout.strip() == "[]"

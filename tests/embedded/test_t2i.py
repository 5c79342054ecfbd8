"""The embedded text-to-image model tiny-shapes-t2i: pipeline, training recipe, generate/evaluate, the gate."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import diffcache
from diffcache.cli import main
from diffcache.embedded.checker import check
from diffcache.embedded.t2i.pipeline import (TinyShapesT2IPipeline, pack_images, render_images,
                                           unpack_images)
from diffcache.embedded.shapes import ClipSpec, prompts
from diffcache.embedded.t2i.train import T2ITrainConfig, T2ITrainer, make_image_batch

SMOKE = T2ITrainConfig(steps=30, batch_size=8, warmup_steps=5, checkpoint_every=1000)


@pytest.fixture(scope="module")
def scratch():
    pipe = TinyShapesT2IPipeline.from_scratch(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_packing_round_trips_and_ground_truth_images_pass_the_checker():
    specs = [ClipSpec(c, s) for c, s in [("red", "circle"), ("blue", "square"), ("white", "triangle")]]
    images, masks = render_images(specs, torch.Generator().manual_seed(0))
    assert images.shape == (3, 32, 32, 3) and masks.shape == (3, 32, 32)
    torch.testing.assert_close(unpack_images(pack_images(images)), images)
    assert pack_images(images).shape == (3, 12, 16, 16)
    for image, spec in zip(images.numpy(), specs):
        result = check(image, spec.prompt)
        assert result.adherence == 1.0 and set(result.matches) == {"colour", "shape"}
    assert len(prompts(kind="image")) == 15 and "a red circle" in prompts(kind="image")


def test_latents_are_normalised_over_the_training_images():
    # the model is trained and sampled on zero-mean, unit-variance latents (SD3's shift and scaling factor):
    # unnormalised, the dark background would put the mean at -0.82 and the spread at 0.35
    specs = [ClipSpec(c, s) for c in ("red", "green", "blue", "yellow", "white") for s in ("circle", "square",
                                                                                          "triangle")] * 16
    images, _ = render_images(specs, torch.Generator().manual_seed(5))
    latents = pack_images(images)
    assert abs(latents.mean().item()) < 0.05 and abs(latents.std().item() - 1) < 0.05


def test_pipeline_outputs_like_stable_diffusion(scratch):
    kwargs = dict(num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    arr = scratch(["a red circle", "a blue square"], output_type="np", **kwargs).images
    assert arr.shape == (2, 32, 32, 3) and arr.dtype == np.float32 and 0 <= arr.min() and arr.max() <= 1
    # the same batch and seed (float results of CPU kernels may depend on the batch size)
    pil = scratch(["a red circle", "a blue square"], num_inference_steps=3,
                  generator=torch.Generator().manual_seed(0)).images
    assert pil[0].size == (32, 32)
    np.testing.assert_array_equal(np.asarray(pil[0]), (arr[0] * 255).round().astype(np.uint8))
    pt = scratch("a red circle", output_type="pt", **{**kwargs, "generator": torch.Generator().manual_seed(0)}).images
    assert pt.shape == (1, 3, 32, 32)
    two = scratch("a red circle", num_images_per_prompt=2, output_type="np", num_inference_steps=2).images
    assert two.shape == (2, 32, 32, 3)
    with pytest.raises(ValueError, match="output_type='gif' is not supported; use one of np, pt, pil, latent"):
        scratch("a red circle", output_type="gif")
    with pytest.raises(ValueError, match="multiples of 8"):
        scratch("a red circle", height=20)
    with pytest.raises(diffcache.PromptError, match="outside the vocabulary"):
        scratch("a purple circle")


def test_the_scheduler_is_the_training_schedule(scratch):
    # 50 DDIM steps spaced like Stable Diffusion's, on the scaled-linear betas the model is trained with
    scratch.scheduler.set_timesteps(50)
    assert scratch.scheduler.timesteps[0] == 981 and scratch.scheduler.timesteps[-1] == 1
    assert scratch.scheduler.config.beta_schedule == "scaled_linear" and scratch.scheduler.config.prediction_type == "epsilon"


def test_save_and_load_pipeline(scratch, tmp_path):
    scratch.save_pretrained(tmp_path / "t2i")
    loaded = diffcache.load_pipeline(tmp_path / "t2i")
    assert isinstance(loaded, TinyShapesT2IPipeline)
    assert not list((tmp_path / "t2i").rglob("*.bin"))  # safetensors only
    a = scratch("a red circle", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(1))
    b = loaded("a red circle", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(a.images, b.images)


def test_deepcache_on_the_embedded_unet(scratch):
    reference = scratch("a red circle", num_inference_steps=9, output_type="np",
                        generator=torch.Generator().manual_seed(0)).images
    with diffcache.enable(scratch, "deepcache", "uniform-3") as handle:
        scratch("a red circle", num_inference_steps=9, output_type="np", generator=torch.Generator().manual_seed(0))
    assert [s.computed for s in handle.report().calls[0].steps] == [True, False, False] * 3
    again = scratch("a red circle", num_inference_steps=9, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images
    np.testing.assert_array_equal(again, reference)


# -- training -------------------------------------------------------------------------------------------------------
def test_image_batches_are_a_pure_function_of_seed_and_step():
    a, b = make_image_batch(SMOKE, 3), make_image_batch(SMOKE, 3)
    assert a[0] == b[0] and all(torch.equal(x, y) for x, y in zip(a[1:], b[1:]))
    assert not torch.equal(make_image_batch(SMOKE, 4)[1], a[1])
    prompts = [p for p in a[0] if p]
    assert prompts and all(len(p.split()) == 3 for p in prompts)  # "a {colour} {shape}", no direction
    weight = a[4]
    assert weight.shape == (8, 1, 16, 16) and weight.max() == 4.0 and weight.min() == 1.0


def test_smoke_training_lowers_the_loss(tmp_path):
    trainer = T2ITrainer(SMOKE, tmp_path)
    losses = [trainer.train_step()["loss"] for _ in range(SMOKE.steps)]
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5, losses


def test_resume_continues_exactly(tmp_path):
    config = replace(SMOKE, steps=4, batch_size=2, checkpoint_every=2)
    straight = T2ITrainer(config, tmp_path / "a")
    straight.run(progress=False)
    interrupted = T2ITrainer(config, tmp_path / "b")
    interrupted.run(progress=False, until=2)
    resumed = T2ITrainer(config, tmp_path / "b")
    assert resumed.load_checkpoint() and resumed.step == 2
    resumed.run(progress=False)
    for name, p in straight.params.items():
        torch.testing.assert_close(resumed.params[name], p, rtol=0, atol=0)
        torch.testing.assert_close(resumed.ema[name], straight.ema[name], rtol=0, atol=0)
    assert json.loads((tmp_path / "b" / "checkpoint" / "meta.json").read_text())["step"] == 4


def test_train_command_exports_a_loadable_pipeline(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "tiny-shapes-t2i", "--out", str(out), "--steps", "2", "--batch-size", "2"]) == 0
    assert "diffcache evaluate --model" in capsys.readouterr().out
    loaded = diffcache.load_pipeline(out / "model")
    assert isinstance(loaded, TinyShapesT2IPipeline)
    assert main(["train", "tiny-shapes-t2i", "--out", str(out), "--steps", "2"]) == 2  # no silent overwrite


# -- command line ---------------------------------------------------------------------------------------------------
def test_generate_writes_a_png(scratch, tmp_path, capsys):
    folder = tmp_path / "model"
    scratch.save_pretrained(folder)
    out = tmp_path / "red.png"
    assert main(["generate", "--model", str(folder), "--prompt", "a red circle", "--steps", "4", "--out",
                 str(out)]) == 0
    from PIL import Image

    assert Image.open(out).size == (256, 256)  # 32 × 32 enlarged 8× (nearest)
    assert main(["generate", "--model", str(folder), "--prompt", "a red circle", "--steps", "6", "--method",
                 "deepcache:uniform-3", "--out", str(tmp_path / "fast.png")]) == 0
    assert "deepcache:uniform-3: 2/6 steps computed" in capsys.readouterr().out
    assert main(["generate", "--model", str(folder), "--prompt", "a red circle", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["generate", "--model", "tiny-shapes-t2i", "--prompt", "a red circle", "--out",
                 str(tmp_path / "x.gif")]) == 2
    assert "use a file name ending in .png" in capsys.readouterr().err
    assert main(["generate", "--model", "tiny-shapes-t2i", "--prompt", "a red circle moving", "--out",
                 str(tmp_path / "y.png")]) == 2
    assert "does not follow the grammar" in capsys.readouterr().err


def test_evaluate_scores_a_cached_pipeline(capsys):
    args = ["evaluate", "--model", "tiny-shapes-t2i", "--prompts", "2", "--steps", "6"]
    assert main(args + ["--method", "deepcache:uniform-3"]) == 0
    out = capsys.readouterr().out
    # the method took effect: 2 of the 6 steps ran the whole U-Net, in every call
    assert "tiny-shapes-t2i, deepcache:uniform-3 (2/6 steps computed per call): adherence" in out
    assert "over 2 prompts" in out
    assert main(args + ["--method", "steps:3"]) == 2
    assert "evaluate takes a diffcache method" in capsys.readouterr().err
    assert main(args + ["--method", "nocache"]) == 2
    assert "nocache" in capsys.readouterr().err


# -- the shipped weights --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_shipped_t2i_model_meets_the_adherence_gate():
    from diffcache.embedded.evaluate import evaluate_adherence

    pipe = diffcache.load_pipeline("tiny-shapes-t2i")
    # the held-out seeds (1,000,000 …), which no recipe choice or checkpoint was selected on
    report = evaluate_adherence(pipe, num_prompts=64, num_inference_steps=50, guidance_scale=5.0, progress=False)
    assert report.images and report.seed_start == 1_000_000
    assert report.adherence >= 0.95 and min(report.colour, report.shape) >= 0.9, report.summary()
    assert report.one_object >= 0.9, report.summary()  # one shape, no duplicate or fragment
    assert report.clean >= 0.9, report.summary()  # one shape on a uniform background: no grain, no second object


def test_bench_measures_deepcache_on_images(scratch, tmp_path):
    from diffcache.bench.benchmark import benchmark

    reports = benchmark(model="tiny-shapes-t2i", methods="deepcache:uniform-3,deepcache:nonuniform[center=2]",
                        out=tmp_path, pipe=scratch, num_prompts=2, steps=6, repeats=1, progress=False)
    rows = {r["method"]: r for r in reports["summary"]}
    assert list(rows) == ["none", "deepcache:uniform-3", "deepcache:nonuniform[center=2]"]
    assert rows["none"]["computed_mean"] == 6 and rows["deepcache:uniform-3"]["computed_mean"] == 2
    assert rows["deepcache:nonuniform[center=2]"]["computed_mean"] == 2  # ceil(6 / 5)
    assert rows["none"]["psnr"] == float("inf") and rows["deepcache:uniform-3"]["psnr"] < 100
    assert rows["deepcache:uniform-3"]["flop_speedup"] > 1.5  # 4 of 6 steps run only the shallow layers
    assert all(0 <= r["adherence"] <= 1 and r["temporal_stability"] is None for r in rows.values())


def test_same_images_as_the_deepcache_package_on_the_embedded_unet(scratch):
    pytest.importorskip("DeepCache", reason="the peer package DeepCache is not installed (pip install "
                                            "'diffcache[test]')")
    from diffcache.bench.parity import compare_with_deepcache_package

    result = compare_with_deepcache_package(scratch, interval=3, branch=1, num_prompts=1, steps=7, repeats=1,
                                            progress=False)
    assert result["max_abs_difference"] <= 1e-6 and set(result["seconds"]) == {"diffcache", "DeepCache"}
    assert result["speed_ratio"] == pytest.approx(result["seconds"]["DeepCache"] / result["seconds"]["diffcache"])

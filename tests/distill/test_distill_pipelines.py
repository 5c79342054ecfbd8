"""diffcache distill --model on real diffusers pipelines (tiny random weights, offline): a WanPipeline and a U-Net
video pipeline (ModelScope's TextToVideoSDPipeline) are distilled end to end; the students load in plain diffusers."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffcache.cli import main
from diffcache.distill.pipelines import PipelineDistillConfig, PipelineDistiller, prompts_digest, read_prompts
from diffcache.distill.rounds import finished_rounds, load_round
from diffcache.distill.teachers import UnsupportedTeacherError, teacher_for

PROMPTS = ["A dog walking on a treadmill", "a red car on a wet road", "waves on a beach at sunset"]
WAN_SIZE = ["--height", "16", "--width", "16", "--frames", "5"]
SMALL_RUN = ["--slice-clips", "2", "--train-steps", "2", "--batch-size", "2", "--eval-prompts", "2",
             "--solver-steps", "8", "--keep-every", "2", "--dtype", "float32", "--device", "cpu"]


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    import tiny_diffusers

    folder = tmp_path_factory.mktemp("wan") / "tiny-wan"
    tiny_diffusers.tiny_wan_pipeline(num_layers=2).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("# training prompts\n" + "\n".join(PROMPTS) + "\n\n", encoding="utf-8")
    return path


def _distill(wan_folder, prompts_file, out, rounds, *extra):
    return main(["distill", "--model", str(wan_folder), "--prompts", str(prompts_file), "--out", str(out),
                 "--rounds", str(rounds), *WAN_SIZE, *SMALL_RUN, *extra])


@pytest.fixture(scope="module")
def wan_run(wan_folder, prompts_file, tmp_path_factory):
    """Round 1, then continued to round 2 by a second command: (run folder, slice stamps after round 1)."""
    out = tmp_path_factory.mktemp("run") / "wan-distill"
    assert _distill(wan_folder, prompts_file, out, 1) == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "cache").glob("slice-*.safetensors")}
    assert _distill(wan_folder, prompts_file, out, 2) == 0
    return out, stamps


def test_the_cli_distils_a_wan_pipeline_in_rounds_and_never_rewrites_a_slice(wan_run):
    out, stamps = wan_run
    assert finished_rounds(out) == [1, 2]
    assert sorted(stamps) == ["slice-00.safetensors", "slice-01.safetensors"]
    for name, stamp in stamps.items():  # round 2 loaded slices 0 and 1, it did not recompute them
        assert (out / "cache" / name).stat().st_mtime_ns == stamp
    assert load_round(out, 2)["slices_built"] == [2]
    manifest = json.loads((out / "cache" / "manifest.json").read_text())
    assert [s["file"] for s in manifest["slices"]] == ["slice-00.safetensors", "slice-01.safetensors",
                                                        "slice-02.safetensors"]
    assert manifest["bytes"] == sum((out / "cache" / s["file"]).stat().st_size for s in manifest["slices"])


def test_the_data_cache_holds_embeddings_and_latent_trajectories_never_pixels(wan_run, prompts_file):
    out, _ = wan_run
    tensors = load_file(str(out / "cache" / "slice-01.safetensors"))
    assert set(tensors) == {"prompt_embeds", "negative_prompt_embeds", "trajectory", "sigmas"}
    # latents of a 5-frame 16 × 16 clip: Wan's VAE makes 2 latent frames of 2 × 2 (16 channels)
    assert tensors["trajectory"].shape[0] == 2 and tensors["trajectory"].shape[2:] == (16, 2, 2, 2)
    assert tensors["trajectory"].dtype == torch.float16
    assert tensors["prompt_embeds"].shape[0] == 2 and tensors["negative_prompt_embeds"].shape[0] == 1
    points = tensors["sigmas"]
    assert points[0] == 1000 and points[-1] == 0 and (points.diff() < 0).all()
    # every timestep the student's scheduler visits at 2, 4 and 8 steps is a stored point
    from diffusers import FlowMatchLCMScheduler

    scheduler = FlowMatchLCMScheduler.from_pretrained(out / "round-02" / "scheduler")
    for steps in (2, 4, 8):
        scheduler.set_timesteps(steps)
        for t in scheduler.timesteps:
            assert (points - t).abs().min() < 1e-2


def test_the_student_loads_in_plain_diffusers_and_samples_at_two_steps(wan_run, wan_folder):
    from diffusers import DiffusionPipeline, FlowMatchLCMScheduler, WanPipeline

    out, _ = wan_run
    pipe = DiffusionPipeline.from_pretrained(out / "round-02")
    assert isinstance(pipe, WanPipeline) and isinstance(pipe.scheduler, FlowMatchLCMScheduler)
    frames = pipe(PROMPTS[0], num_inference_steps=2, guidance_scale=1.0, height=16, width=16, num_frames=5,
                  output_type="np", generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 5, 16, 16, 3) and np.isfinite(frames).all()
    info = json.loads((out / "round-02" / "distillation.json").read_text())
    assert info["guidance_scale"] == 1.0 and info["pipeline"] == "WanPipeline" and info["frames"] == 5
    # the student differs from the teacher; the text encoder is the teacher's, hard-linked, not copied
    teacher = load_file(str(wan_folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    student = load_file(str(out / "round-02" / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert teacher.keys() == student.keys() and any(not torch.equal(teacher[k], student[k]) for k in teacher)
    encoder = next((out / "round-02" / "text_encoder").glob("*.safetensors"))
    assert os.stat(encoder).st_ino == os.stat(out / "base" / "text_encoder" / encoder.name).st_ino
    # only the last round keeps the optimiser state a resume needs
    assert (out / "round-02" / "training_state.safetensors").exists()
    assert not (out / "round-01" / "training_state.safetensors").exists()


def test_diffcache_generate_runs_the_student_at_its_size_without_guidance(wan_run, tmp_path, capsys):
    out, _ = wan_run
    clip = tmp_path / "dog.gif"
    assert main(["generate", "--model", str(out / "round-02"), "--steps", "2", "--prompt", PROMPTS[0],
                 "--out", str(clip)]) == 0
    assert "(2 steps" in capsys.readouterr().out
    import imageio.v3 as iio

    assert iio.imread(clip, index=None).shape[0] == 5  # the trained 5 frames, not WanPipeline's 81


def test_an_interrupted_run_resumes_to_the_same_student(wan_folder, prompts_file, wan_run, tmp_path, monkeypatch):
    out, _ = wan_run
    broken = tmp_path / "broken"
    assert _distill(wan_folder, prompts_file, broken, 1) == 0
    calls = {"n": 0}
    real = PipelineDistiller.train_step

    def dies_in_round_two(self, g):
        calls["n"] += 1
        if self.round == 1 and calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, g)

    monkeypatch.setattr(PipelineDistiller, "train_step", dies_in_round_two)
    assert _distill(wan_folder, prompts_file, broken, 2) == 130  # Ctrl-C: one line, exit 130
    assert finished_rounds(broken) == [1]
    monkeypatch.setattr(PipelineDistiller, "train_step", real)
    assert _distill(wan_folder, prompts_file, broken, 2) == 0
    a = load_file(str(out / "round-02" / "transformer" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(broken / "round-02" / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_with_other_settings_is_refused_and_force_starts_over(wan_folder, prompts_file, wan_run, capsys):
    out, _ = wan_run
    assert _distill(wan_folder, prompts_file, out, 2, "--lr", "3e-4") == 2
    assert "lr: stored 1e-05, asked 0.0003" in capsys.readouterr().err


def test_the_estimate_is_printed_before_the_run(wan_folder, prompts_file, tmp_path, capsys):
    assert _distill(wan_folder, prompts_file, tmp_path / "r", 1, "--eval-prompts", "1") == 0
    text = capsys.readouterr().out
    estimate = next(line for line in text.splitlines() if line.startswith("estimate:"))
    assert "data cache" in estimate and "one round about" in estimate
    manifest = json.loads((tmp_path / "r" / "cache" / "manifest.json").read_text())
    stated = float(estimate.split("(")[1].split(" KB a slice")[0].split()[-1]) * 1000  # "(138.2 KB a slice"
    written = manifest["slices"][1]["bytes"]
    assert stated <= written < stated + 4096  # the estimate is the tensors' bytes; the file adds its header


def test_pipeline_refusals_are_one_line(wan_folder, prompts_file, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    assert main(["distill", "--model", str(wan_folder), "--prompts", str(empty), "--out", str(tmp_path / "a")]) == 2
    assert "holds no prompt" in capsys.readouterr().err
    assert main(["distill", "--model", str(wan_folder), "--prompts", str(prompts_file), "--out", str(tmp_path / "b"),
                 "--frames", "6", "--height", "16", "--width", "16", "--device", "cpu"]) == 2
    assert "4k + 1 frames" in capsys.readouterr().err
    assert main(["distill", "--model", str(wan_folder), "--prompts", str(prompts_file), "--out", str(tmp_path / "c"),
                 "--frames", "5", "--height", "20", "--width", "16", "--device", "cpu"]) == 2
    assert "multiples of 16" in capsys.readouterr().err
    assert not (tmp_path / "b" / "cache").exists() and not (tmp_path / "c" / "cache").exists()
    assert read_prompts(prompts_file) == PROMPTS


def test_unsupported_families_are_refused_with_the_accepted_ones():
    import tiny_diffusers

    with pytest.raises(UnsupportedTeacherError, match="WanPipeline .*TextToVideoSDPipeline"):
        teacher_for(tiny_diffusers.tiny_cogvideox_pipeline())


# -- the U-Net family: ModelScope text-to-video (DDPM schedule, ε prediction, LCMScheduler student) -------------

def test_a_unet_video_pipeline_is_distilled_and_its_student_loads_in_plain_diffusers(tmp_path):
    import tiny_diffusers
    from diffusers import DiffusionPipeline, LCMScheduler, TextToVideoSDPipeline

    pipe = tiny_diffusers.tiny_modelscope_pipeline()
    config = PipelineDistillConfig(teacher="tiny-modelscope", rounds=2, slice_clips=1, probe_clips=1, solver_steps=50,
                                   keep_every=10, train_steps=2, batch_size=2, eval_prompts=1, eval_steps=(2,),
                                   reference_steps=4, prompts_sha256=prompts_digest(PROMPTS), height=16, width=16,
                                   frames=2, dtype="float32", max_sequence_length=77)
    d = PipelineDistiller(config, tmp_path / "ms", pipe, PROMPTS, progress=False, log=lambda *_: None)
    assert d.run() == [1, 2]
    assert d.cache.built == [0, 1, 2]
    student = DiffusionPipeline.from_pretrained(tmp_path / "ms" / "round-02")
    assert isinstance(student, TextToVideoSDPipeline) and isinstance(student.scheduler, LCMScheduler)
    frames = student(PROMPTS[0], num_inference_steps=2, guidance_scale=1.0, height=16, width=16, num_frames=2,
                     output_type="np", generator=torch.Generator().manual_seed(0)).frames
    assert np.asarray(frames).shape == (1, 2, 16, 16, 3)
    traj = load_file(str(tmp_path / "ms" / "cache" / "slice-01.safetensors"))
    assert traj["sigmas"][0] == 999 and traj["sigmas"][-1] == -1  # LCM's grid, then the clean sample


def test_the_unet_trajectory_is_diffusers_ddim_on_lcms_grid():
    """The teacher solver is DDIM (η = 0) with guidance on the 50-step trailing grid 999 … 19 and a last step to
    ᾱ = 1: exactly DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=True)."""
    import tiny_diffusers
    from diffusers import DDIMScheduler

    pipe = tiny_diffusers.tiny_modelscope_pipeline()
    teacher = teacher_for(pipe)
    cond, uncond = teacher.encode(PROMPTS[:1], "")
    noise = torch.randn((1, *teacher.latent_shape(16, 16, 2)), generator=torch.Generator().manual_seed(3))
    traj, points = teacher.trajectory(cond, uncond, noise, 5.0, 50, 1)
    ddim = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing", set_alpha_to_one=True)
    ddim.set_timesteps(50)
    assert ddim.timesteps.tolist() == points[:-1].long().tolist()
    x = noise.clone()
    with torch.no_grad():
        for t in ddim.timesteps:
            both = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
            u, c = both.chunk(2)
            x = ddim.step(u + 5.0 * (c - u), t, x).prev_sample
    torch.testing.assert_close(traj[0, -1].float(), x[0].half().float(), atol=2e-3, rtol=2e-3)


def test_the_consistency_functions_are_what_the_saved_schedulers_compute():
    """f(x, t) in training is the denoised sample the student's scheduler takes at t: LCMScheduler's
    c_skip·x + c_out·x̂0 and FlowMatchLCMScheduler's x − σ·v (checked at its last step, where it returns it)."""
    import tiny_diffusers

    unet = teacher_for(tiny_diffusers.tiny_modelscope_pipeline())
    lcm = unet.student_scheduler()
    lcm.set_timesteps(2)
    x, out = torch.randn(1, 4, 2, 8, 8), torch.randn(1, 4, 2, 8, 8)
    t = lcm.timesteps[-1]
    denoised = lcm.step(out, t, x, return_dict=False)[1]
    torch.testing.assert_close(unet.consistency(x, t.view(1).float(), out), denoised, atol=1e-5, rtol=1e-5)

    wan = teacher_for(tiny_diffusers.tiny_wan_pipeline(num_layers=1))
    flow = wan.student_scheduler()
    assert flow.config.shift == 7.0  # the teacher's FlowMatchEulerDiscreteScheduler(shift=7)
    flow.set_timesteps(2)
    flow.step(out, flow.timesteps[0], x)  # to the last step
    last = flow.timesteps[-1]
    final = flow.step(out, last, x, return_dict=False)[0]
    torch.testing.assert_close(wan.consistency(x, last.view(1), out), final, atol=1e-5, rtol=1e-5)


def test_the_wan_trajectory_is_euler_on_the_teachers_shifted_grid():
    import tiny_diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe = tiny_diffusers.tiny_wan_pipeline(num_layers=1)
    teacher = teacher_for(pipe)
    cond, uncond = teacher.encode(PROMPTS[:1], "")
    noise = torch.randn((1, *teacher.latent_shape(16, 16, 5)), generator=torch.Generator().manual_seed(1))
    traj, points = teacher.trajectory(cond, uncond, noise, 4.0, 8, 1)
    euler = FlowMatchEulerDiscreteScheduler(shift=1.0)  # the grid is given as σ already shifted
    euler.set_timesteps(sigmas=(points[:-1] / 1000).tolist())
    x = noise.clone()
    with torch.no_grad():
        for t in euler.timesteps:
            both = pipe.transformer(hidden_states=torch.cat([x, x]), timestep=t.expand(2),
                                    encoder_hidden_states=torch.cat([uncond, cond]), return_dict=False)[0]
            u, c = both.chunk(2)
            x = euler.step(u + 4.0 * (c - u), t, x).prev_sample
    torch.testing.assert_close(traj[0, -1].float(), x[0].half().float(), atol=2e-3, rtol=2e-3)
    base = 7 * torch.linspace(1, 0, 9) / (1 + 6 * torch.linspace(1, 0, 9))  # the teacher's shift-7 grid is in it
    assert all((points / 1000 - s).abs().min() < 1e-5 for s in base)


def test_round_metrics_name_psnr_and_probe_loss(wan_run):
    out, _ = wan_run
    m = load_round(out, 2)["metrics"]
    assert set(m) == {"2", "4", "8"} and {"psnr", "probe_loss"} <= set(m["2"])


def test_the_gallery_of_a_pipeline_run(wan_run, tmp_path):
    from diffcache.distill.gallery import referenced_files

    out, _ = wan_run
    page = tmp_path / "g.html"
    assert main(["distill", "gallery", str(out), "--out", str(page), "--prompts", "2"]) == 0
    text = page.read_text()
    assert PROMPTS[0] in text and "probe loss" in text and "checker:" not in text
    assert all(p.exists() for p in referenced_files(page))


def test_config_identity_ignores_checkpointing():
    a = PipelineDistillConfig(teacher="x", prompts_sha256="y")
    assert a.identity() == replace(a, gradient_checkpointing=False).identity()


def test_the_benchmark_puts_teacher_cache_student_and_student_cache_in_one_sweep(wan_run, wan_folder):
    """One sweep on the teacher: its uncached reference, the teacher with fbcache, the student at 2 steps, the
    student with fbcache, and the student with PAB, which is refused with its reason (a consistency sampler)."""
    from diffcache.bench.prompts import Item
    from diffcache.bench.specs import MethodSpec
    from diffcache.bench.sweep import Sweep
    from diffcache.loading import load_pipeline

    out, _ = wan_run
    student = out / "round-02"
    labels = ["none", "fbcache:default", f"student:{student}[steps=2]", f"student:{student}[steps=2;method=fbcache]",
              f"student:{student}[method=pab]"]
    teacher = load_pipeline(wan_folder)
    teacher.set_progress_bar_config(disable=True)
    sweep = Sweep(teacher, [MethodSpec.parse(label) for label in labels], steps=4, guidance=5.0, repeats=1,
                  size={"height": 16, "width": 16, "num_frames": 5})
    record = sweep.run_item(Item(0, PROMPTS[0], 0))
    rows = record["methods"]
    assert set(rows) == set(labels[:4])
    assert rows[labels[2]]["steps_run"] == 2 and rows["none"]["steps_run"] == 4
    assert rows[labels[2]]["flops"] < rows["none"]["flops"] / 3  # 2 steps without CFG against 4 with it
    assert np.isfinite(rows[labels[3]]["psnr"]) and rows[labels[3]]["computed_steps"] is not None
    assert "consistency sampler" in record["skipped"][labels[4]]


def test_student_specs_are_checked_when_read(wan_run, tmp_path):
    from diffcache.bench.specs import MethodSpec
    from diffcache.errors import UnknownMethodError

    out, _ = wan_run
    with pytest.raises(UnknownMethodError, match="distillation.json"):
        MethodSpec.parse(f"student:{tmp_path}")
    with pytest.raises(UnknownMethodError, match="steps=N and method=NAME"):
        MethodSpec.parse(f"student:{out / 'round-02'}[guidance=3]")
    with pytest.raises(UnknownMethodError, match="names a diffcache method"):
        MethodSpec.parse(f"student:{out / 'round-02'}[method=none]")
    assert MethodSpec.parse(f"student:{out / 'round-02'}").kind == "student"

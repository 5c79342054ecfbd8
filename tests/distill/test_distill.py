"""diffcache distill: data cache written once, resume, a smoke run that learns, round folders as pipelines, gallery."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from diffcache.distill.cache import DataCache, teacher_trajectory
from diffcache.distill.gallery import referenced_files, write_gallery
from diffcache.distill.rounds import DistillConfig, Distiller, finished_rounds, load_round, round_dir
from diffcache.distill.sampler import (ConsistencyFlowMatchScheduler, DistilledShapesT2VPipeline,
                                       GuidanceDistilledWarning)

SMALL = DistillConfig(rounds=2, slice_clips=3, probe_clips=2, solver_steps=4, keep_every=2, train_steps=3,
                      batch_size=3, eval_prompts=3, eval_steps=(2, 4), reference_steps=4)


@pytest.fixture(scope="module")
def small_teacher():
    """A 1-block random-weight teacher with the embedded model's interface: fast enough for round tests."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

    from diffcache.embedded.t2v.pipeline import TinyShapesT2VPipeline
    from diffcache.embedded.text import ShapesTextEncoder

    torch.manual_seed(0)
    transformer = WanTransformer3DModel(patch_size=(2, 2, 2), num_attention_heads=2, attention_head_dim=16,
                                        in_channels=12, out_channels=12, text_dim=64, freq_dim=32, ffn_dim=64,
                                        num_layers=1, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                        rope_max_seq_len=32)
    pipe = TinyShapesT2VPipeline(transformer.eval(), ShapesTextEncoder(embed_dim=64).eval(),
                                 FlowMatchEulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(config, out, teacher, **kwargs):
    d = Distiller(config, out, teacher=teacher, progress=False, log=lambda *_: None)
    return d, d.run(**kwargs)


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def three_rounds(small_teacher, tmp_path_factory):
    """A run of 2 rounds, then continued to 3: (folder, first Distiller, its rounds, cache stamps, second, rounds)."""
    out = tmp_path_factory.mktemp("run")
    d, trained = _run(SMALL, out, small_teacher)
    stamps = {i: d.cache.path(i).stat().st_mtime_ns for i in (0, 1, 2)}
    d3, trained3 = _run(replace(SMALL, rounds=3), out, small_teacher)
    return out, d, trained, stamps, d3, trained3


def test_data_cache_is_written_once_and_reused_by_later_rounds(three_rounds):
    tmp_path, d, trained, stamps, d3, trained3 = three_rounds
    assert trained == [1, 2]
    assert d.cache.built == [0, 1, 2]  # probe slice + one slice per round
    assert load_round(tmp_path, 2)["slices_built"] == [2]
    assert load_round(tmp_path, 2)["training_clips"] == 2 * SMALL.slice_clips
    assert trained3 == [3]
    assert d3.cache.built == [3]  # slices 0..2 were loaded, not recomputed
    assert {i: d3.cache.path(i).stat().st_mtime_ns for i in (0, 1, 2)} == stamps
    assert load_round(tmp_path, 3)["training_clips"] == 3 * SMALL.slice_clips
    # what the cache holds: embeddings, the teacher's trajectory from the noise (σ = 1) to its sample (σ = 0)
    s = DataCache(tmp_path / "cache").load(2)
    assert s.trajectory.shape == (3, SMALL.solver_steps // SMALL.keep_every + 1, 12, 8, 16, 16)
    assert s.sigmas.tolist() == [1.0, 0.5, 0.0]
    assert s.prompts == d3.slice_prompts(2)[0]
    noise = torch.randn(s.trajectory.shape[2:], generator=torch.Generator().manual_seed(s.seeds[0]))
    assert torch.equal(s.trajectory[0, 0], noise.half())


def test_resume_after_an_interruption_continues_where_it_stopped(tmp_path, small_teacher, monkeypatch):
    straight = tmp_path / "straight"
    _run(SMALL, straight, small_teacher)
    resumed = tmp_path / "resumed"
    calls = {"n": 0}
    original = Distiller.train_step

    def interrupted(self, g):
        calls["n"] += 1
        if self.round == 1 and calls["n"] == SMALL.train_steps + 2:  # in the middle of round 2
            raise KeyboardInterrupt
        return original(self, g)

    monkeypatch.setattr(Distiller, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(SMALL, resumed, small_teacher)
    monkeypatch.setattr(Distiller, "train_step", original)
    assert finished_rounds(resumed) == [1]
    round1 = (round_dir(resumed, 1) / "round.json").stat().st_mtime_ns
    d, trained = _run(SMALL, resumed, small_teacher)
    assert trained == [2]  # round 1 is not redone
    assert d.cache.built == []  # slice 2 was stored before the interruption
    assert (round_dir(resumed, 1) / "round.json").stat().st_mtime_ns == round1
    a, b = _weights(round_dir(straight, 2)), _weights(round_dir(resumed, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)  # same result as the uninterrupted run
    assert load_round(resumed, 2)["optimizer_steps"] == 2 * SMALL.train_steps


def test_a_run_refuses_other_settings_in_the_same_folder(tmp_path, small_teacher):
    _run(replace(SMALL, rounds=1), tmp_path, small_teacher)
    with pytest.raises(ValueError, match="train_steps: stored 3, asked 4"):
        Distiller(replace(SMALL, train_steps=4), tmp_path, teacher=small_teacher, progress=False)


def test_a_round_trains_whatever_the_callers_grad_mode(tmp_path, small_teacher):
    """A distillation round inside ``torch.no_grad()`` (or after something left grad mode off) still trains the
    student, instead of failing with "element 0 of tensors does not require grad"; the caller's mode is kept."""
    with torch.no_grad():
        d, _ = _run(replace(SMALL, rounds=1), tmp_path, small_teacher)
        assert not torch.is_grad_enabled()
    assert d.optimizer_steps == SMALL.train_steps and finished_rounds(tmp_path) == [1]


def test_two_round_smoke_run_lowers_the_students_two_step_loss(tmp_path, shipped_pipe):
    config = replace(SMALL, slice_clips=2, probe_clips=2, solver_steps=4, train_steps=4, batch_size=4, lr=4e-4,
                     eval_steps=(2,), eval_prompts=1, reference_steps=2)
    _run(config, tmp_path, shipped_pipe)
    before = json.loads((tmp_path / "eval" / "round-00.json").read_text())["metrics"]["2"]["probe_loss"]
    after = load_round(tmp_path, 2)["metrics"]["2"]["probe_loss"]
    assert after < 0.9 * before, (before, after)


def test_round_folder_is_a_loadable_few_step_pipeline(tmp_path, three_rounds):
    import diffcache
    from diffcache.cli import main

    folder = round_dir(three_rounds[0], 1)
    pipe = diffcache.load_pipeline(folder)
    assert type(pipe) is DistilledShapesT2VPipeline
    assert type(pipe.scheduler) is ConsistencyFlowMatchScheduler
    assert json.loads((folder / "distillation.json").read_text())["guidance_scale_distilled"] == 5.0
    pipe.set_progress_bar_config(disable=True)
    run = lambda **kw: pipe("a red circle moving left", num_inference_steps=2,  # noqa: E731
                            generator=torch.Generator().manual_seed(3), **kw).frames
    first = run()
    assert first.shape == (1, 8, 32, 32, 3)
    np.testing.assert_array_equal(first, run())  # the re-noising follows the seed
    with pytest.warns(GuidanceDistilledWarning, match="guidance_scale=5 ignored"):
        guided = run(guidance_scale=5.0)
    np.testing.assert_array_equal(first, guided)  # CFG is never applied on top of the distilled guidance
    calls = []
    hook = pipe.transformer.register_forward_hook(lambda *a: calls.append(1))
    run()
    hook.remove()
    assert len(calls) == 2  # one denoiser call per step
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["generate", "--model", str(folder), "--steps", "2", "--prompt", "a red circle moving left",
                     "--out", str(tmp_path / "clip.gif")]) == 0
    assert (tmp_path / "clip.gif").stat().st_size > 0


def test_gallery_lists_every_clip_it_references_and_they_exist(tmp_path, three_rounds):
    from diffcache.cli import main

    run = three_rounds[0]
    page = tmp_path / "page.html"
    result = write_gallery(run, page, prompts=2)
    assert result["columns"] == ["Baseline", "Iter=3 (final)"]
    files = referenced_files(page)
    clips = [f for f in files if f.suffix == ".gif"]
    assert len(clips) == 2 * len(SMALL.eval_steps) * 2  # prompts × step counts × columns
    assert all(f.exists() and f.stat().st_size > 0 for f in files)
    assert sorted(clips) == sorted(result["clips"])
    assert any(f.name == "rounds.png" for f in files)
    assert 'Step=2, "' in page.read_text()
    assert main(["distill", "gallery", str(run), "--out", str(page)]) == 2  # no overwrite without --force
    assert main(["distill", "gallery", str(run), "--out", str(page), "--force"]) == 0
    assert main(["distill", "gallery", str(tmp_path), "--out", str(tmp_path / "x.html")]) == 2  # not a run


def test_consistency_scheduler_uses_the_uniform_grid_and_renoises_the_x0_estimate():
    s = ConsistencyFlowMatchScheduler()
    s.set_timesteps(4)
    assert s.sigmas.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert s.timesteps.tolist() == [1000.0, 750.0, 500.0, 250.0]
    x, v = torch.full((1, 2), 2.0), torch.full((1, 2), 1.0)
    s.step(v, s.timesteps[0], x)  # σ = 1 → x0 = x − v = 1, re-noised at 0.75
    out = s.step(v, s.timesteps[1], x, generator=torch.Generator().manual_seed(0)).prev_sample
    noise = torch.randn((1, 2), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, 0.5 * (2.0 - 0.75 * 1.0) + 0.5 * noise)  # x0 = x − 0.75·v, to σ = 0.5


def test_teacher_trajectory_is_the_guided_euler_solution():
    class Fake(torch.nn.Module):  # v = 1 for the conditional embedding (ones), 0 for the unconditional (zeros)
        dtype = torch.float32

        def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=False):
            v = encoder_hidden_states.mean((1, 2)).view(-1, 1, 1, 1, 1).expand_as(hidden_states)
            return (v.clone(),)

    noise = torch.zeros(2, 1, 2, 2, 2)
    traj, sigmas = teacher_trajectory(Fake(), torch.ones(2, 3, 4), torch.zeros(1, 3, 4), noise,
                                      guidance_scale=5.0, solver_steps=4, keep_every=2)
    assert sigmas.tolist() == [1.0, 0.5, 0.0]
    # dx/dσ = v_u + 5·(v_c − v_u) = 5, integrated from σ = 1 down to σ: x = −5·(1 − σ)
    assert traj[:, :, 0, 0, 0, 0].tolist() == [[0.0, -2.5, -5.0]] * 2


def test_cli_distill_refuses_a_folder_that_is_not_a_run(tmp_path):
    from diffcache.cli import main

    (tmp_path / "notes.txt").write_text("mine")
    assert main(["distill", "tiny-shapes-t2v", "--out", str(tmp_path), "--rounds", "1"]) == 2
    assert (tmp_path / "notes.txt").exists()
    assert main(["distill", "tiny-shapes-t2v", "--out", str(tmp_path / "r"), "--rounds", "0"]) == 2

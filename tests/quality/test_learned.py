"""diffcache.quality.learned: CLIP score, FVD and the VBench hook, on small stand-in models built here.

The CLIP metrics run on a tiny random CLIPModel saved as a real transformers folder (safetensors, tokenizer, image
processor) and are checked against the model's own similarity and against torchmetrics' clip_score; FVD runs on a
tiny TorchScript detector with the call signature of StyleGAN-V's I3D that refuses any other input convention; the
Fréchet distance is checked against closed forms and a direct eigen-decomposition; VBench against a stand-in package
that records how it is called.
"""

import json
import sys

import numpy as np
import pytest
import torch

from diffcache.errors import MetricInputError, VideoShapeError, WeightsNotFoundError
from diffcache.quality import learned
from diffcache.quality.learned import (
    LEARNED_METRICS,
    clip_frame_similarity,
    clip_text_score,
    clip_unavailable_reason,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_statistics,
    fvd,
    fvd_unavailable_reason,
    vbench_scores,
    vbench_unavailable_reason,
    video_features,
)

from learned_standins import make_clip_folder, make_detector_file

PROMPT = "a red ball on the grass"


def _video(seed, frames=4, height=40, width=48):
    return np.random.default_rng(seed).random((frames, height, width, 3))


def _uint8(video):
    return np.clip(np.rint(video * 255.0), 0, 255).astype(np.uint8)


# -- a tiny CLIP folder ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return make_clip_folder(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def clip_reference(clip_folder):
    """The saved model and processor, loaded here, independently of the code under test."""
    from transformers import CLIPModel, CLIPProcessor

    return (CLIPModel.from_pretrained(str(clip_folder), local_files_only=True).eval(),
            CLIPProcessor.from_pretrained(str(clip_folder), local_files_only=True))


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    for name in (learned.CLIP_ENV, learned.FVD_ENV):
        monkeypatch.delenv(name, raising=False)


class _TensorFeatures(torch.nn.Module):
    """Adapts transformers 5's ``get_*_features`` (a ModelOutput) to the tensor torchmetrics' clip_score expects."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, *args, **kwargs):
        out = self.model.get_image_features(*args, **kwargs)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_text_features(self, *args, **kwargs):
        out = self.model.get_text_features(*args, **kwargs)
        return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_clip_text_score_is_100_times_the_mean_frame_prompt_cosine(clip_folder, clip_reference):
    model, processor = clip_reference
    video = _video(1)
    text = processor(text=[PROMPT], return_tensors="pt", padding=True)
    pixels = processor(images=list(_uint8(video)), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels)
    cosines = (out.logits_per_image[:, 0] / model.logit_scale.exp()).detach().double()   # CLIP's own cosine, per frame
    expected = 100.0 * float(cosines.mean())
    assert expected > 1.0   # the tiny model's prompt and frames are not orthogonal: the comparison has teeth
    assert clip_text_score(video, PROMPT, clip_folder, device="cpu") == pytest.approx(expected, rel=1e-5)
    # another prompt, another score: the prompt reaches the text encoder
    assert clip_text_score(video, "a blue cat", clip_folder, device="cpu") != pytest.approx(expected, rel=1e-3)


def test_clip_scores_match_torchmetrics_clip_score(clip_folder, clip_reference):
    multimodal = pytest.importorskip("torchmetrics.functional.multimodal")
    model, processor = clip_reference
    video, reference = _video(2), _video(3)
    frames = [torch.from_numpy(f).permute(2, 0, 1) for f in _uint8(video)]
    reference_frames = [torch.from_numpy(f).permute(2, 0, 1) for f in _uint8(reference)]
    backend = lambda: (_TensorFeatures(model), processor)  # noqa: E731

    with torch.no_grad():
        text_expected = float(multimodal.clip_score(frames, [PROMPT] * len(frames), backend))
        frame_expected = float(multimodal.clip_score(frames, reference_frames, backend))
    assert text_expected > 0 and 0 < frame_expected < 100
    assert clip_text_score(video, PROMPT, clip_folder, device="cpu") == pytest.approx(text_expected, rel=1e-5)
    assert clip_frame_similarity(video, reference, clip_folder, device="cpu") == pytest.approx(frame_expected, rel=1e-5)


def test_clip_reads_frames_as_channels_last_whatever_their_size(clip_folder, clip_reference):
    model, processor = clip_reference
    video = _video(9, frames=2, height=3, width=40)   # (2, 3, 40, 3): ambiguous to a channel-guessing processor
    text = processor(text=[PROMPT], return_tensors="pt", padding=True)
    pixels = processor(images=list(_uint8(video)), return_tensors="pt", input_data_format="channels_last")
    with torch.no_grad():
        out = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                    pixel_values=pixels["pixel_values"])
    expected = 100.0 * float((out.logits_per_image[:, 0] / model.logit_scale.exp()).detach().double().mean())
    assert clip_text_score(video, PROMPT, clip_folder, device="cpu") == pytest.approx(max(expected, 0.0), rel=1e-5)


def test_clip_frame_similarity_compares_frame_t_with_frame_t(clip_folder, clip_reference):
    model, processor = clip_reference
    video, reference = _video(4), _video(5, height=36, width=36)
    assert clip_frame_similarity(video, video, clip_folder, device="cpu") == pytest.approx(100.0, abs=1e-3)

    def embed(v):
        pixels = processor(images=list(_uint8(v)), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            e = model.get_image_features(pixel_values=pixels)
        e = e if isinstance(e, torch.Tensor) else e.pooler_output
        return (e / e.norm(dim=-1, keepdim=True)).double()

    expected = 100.0 * float((embed(video) * embed(reference)).sum(-1).mean())
    assert clip_frame_similarity(video, reference, clip_folder, device="cpu") == pytest.approx(expected, rel=1e-5)
    # reversing the reference's frames pairs other frames: a different value
    assert clip_frame_similarity(video, reference[::-1], clip_folder, device="cpu") != pytest.approx(expected, rel=1e-4)
    with pytest.raises(VideoShapeError, match="same number"):
        clip_frame_similarity(video, reference[:3], clip_folder)


def test_clip_reads_the_environment_variable(clip_folder, monkeypatch):
    video = _video(6)
    assert "DIFFCACHE_CLIP_MODEL" in clip_unavailable_reason()
    with pytest.raises(WeightsNotFoundError, match="DIFFCACHE_CLIP_MODEL"):
        clip_text_score(video, PROMPT)
    monkeypatch.setenv(learned.CLIP_ENV, str(clip_folder))
    assert clip_unavailable_reason() is None
    assert clip_text_score(video, PROMPT, device="cpu") == clip_text_score(video, PROMPT, clip_folder, device="cpu")


def test_clip_refuses_missing_and_pickle_only_folders(clip_folder, tmp_path):
    assert "does not exist" in clip_unavailable_reason(tmp_path / "nowhere")
    (tmp_path / "file.safetensors").write_bytes(b"")
    assert "is a file" in clip_unavailable_reason(tmp_path / "file.safetensors")

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                 "processor_config.json"):
        if (clip_folder / name).is_file():
            (pickled / name).write_bytes((clip_folder / name).read_bytes())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    reason = clip_unavailable_reason(pickled)
    assert "pytorch_model.bin" in reason and "pickle" in reason
    with pytest.raises(WeightsNotFoundError, match="pickle"):
        clip_text_score(_video(7), PROMPT, pickled)

    hub_entry = tmp_path / "models--openai--clip-vit-large-patch14"
    (hub_entry / "snapshots").mkdir(parents=True)
    assert "snapshots" in clip_unavailable_reason(hub_entry)

    not_clip = tmp_path / "not_clip"
    not_clip.mkdir()
    (not_clip / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert "'bert'" in clip_unavailable_reason(not_clip)


def test_clip_refuses_bad_inputs(clip_folder):
    with pytest.raises(MetricInputError, match=r"\[0, 1\]"):
        clip_text_score(_video(8) * 255, PROMPT, clip_folder)
    with pytest.raises(VideoShapeError, match=r"\(frames, H, W, 3\)"):
        clip_text_score(_video(8)[..., :1], PROMPT, clip_folder)
    with pytest.raises(MetricInputError, match="prompt"):
        clip_text_score(_video(8), "  ", clip_folder)


# -- a tiny TorchScript detector -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def detector_file(tmp_path_factory):
    return make_detector_file(tmp_path_factory.mktemp("i3d") / "i3d_torchscript.pt")


def _direct_features(file, videos):
    detector = torch.jit.load(str(file), map_location="cpu")
    rows = []
    for v in videos:
        x = torch.from_numpy(_uint8(v)).permute(3, 0, 1, 2)[None].contiguous()
        with torch.no_grad():
            rows.append(detector(x, rescale=True, resize=True, return_features=True)[0].double().numpy())
    return np.stack(rows)


def test_fvd_is_the_frechet_distance_of_the_detector_features(detector_file):
    test = [_video(10 + i, frames=5, height=12, width=16) for i in range(3)]
    reference = [_video(20 + i, frames=5, height=12, width=16) * 0.5 for i in range(4)]
    test_features, reference_features = _direct_features(detector_file, test), _direct_features(detector_file, reference)
    np.testing.assert_allclose(video_features(test, detector_file, device="cpu"), test_features, rtol=1e-6, atol=1e-7)
    expected = frechet_distance(test_features, reference_features)
    assert expected > 0.01
    assert fvd(test, reference, detector_file, device="cpu") == pytest.approx(expected, rel=1e-6)
    assert fvd(test, test, detector_file, device="cpu") == pytest.approx(0.0, abs=1e-8)


def test_video_features_batches_without_changing_features(detector_file, monkeypatch):
    videos = [_video(30 + i, frames=4, height=8, width=8) for i in range(3)]
    videos.insert(1, _video(40, frames=4, height=10, width=6))   # another size goes through on its own
    one_by_one = video_features(videos, detector_file, device="cpu", batch_size=1)
    np.testing.assert_allclose(video_features(videos, detector_file, device="cpu", batch_size=8), one_by_one,
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(one_by_one, _direct_features(detector_file, videos), rtol=1e-6, atol=1e-7)
    monkeypatch.setenv(learned.FVD_ENV, str(detector_file))
    np.testing.assert_allclose(video_features(videos, device="cpu"), one_by_one, rtol=1e-6, atol=1e-7)


def test_fvd_refuses_too_few_videos_and_mixed_lengths(detector_file):
    two = [_video(50, frames=4, height=8, width=8), _video(51, frames=4, height=8, width=8)]
    with pytest.raises(MetricInputError, match="at least 2"):
        fvd(two[:1], two, detector_file)
    with pytest.raises(MetricInputError, match="at least 2"):
        fvd(two, two[:1], detector_file)
    with pytest.raises(VideoShapeError, match="one length"):
        fvd(two, [_video(52, frames=5, height=8, width=8), _video(53, frames=5, height=8, width=8)], detector_file)
    with pytest.raises(VideoShapeError, match="refused"):   # the detector's own error, with the shape it got
        video_features([_video(54, frames=2, height=8, width=8)], detector_file, device="cpu")
    with pytest.raises(VideoShapeError, match="list of videos"):
        video_features(two[0], detector_file)


def test_fvd_refuses_missing_files_and_pickles(tmp_path, detector_file):
    assert "DIFFCACHE_FVD_DETECTOR" in fvd_unavailable_reason()
    assert "does not exist" in fvd_unavailable_reason(tmp_path / "i3d.pt")
    assert "folder" in fvd_unavailable_reason(tmp_path)
    pickled = tmp_path / "pickled.pt"
    torch.save({"weight": torch.zeros(2)}, str(pickled))
    assert "pickle" in fvd_unavailable_reason(pickled)
    with pytest.raises(WeightsNotFoundError, match="pickle"):
        video_features([_video(60, frames=4, height=8, width=8)], pickled)
    assert fvd_unavailable_reason(detector_file) is None


# -- the Fréchet distance --------------------------------------------------------------------------------------
def test_frechet_distance_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(0)
    many = rng.standard_normal((64, 8)) @ rng.standard_normal((8, 8))
    assert frechet_distance(many, many) == pytest.approx(0.0, abs=1e-8)
    few = rng.standard_normal((5, 16))   # fewer videos than features: singular covariances
    assert frechet_distance(few, few) == pytest.approx(0.0, abs=1e-5)


def test_frechet_distance_closed_form_for_diagonal_covariances():
    from scipy.linalg import hadamard

    design = hadamard(8)[:, 1:].astype(np.float64)   # 8 rows of ±1 with zero mean: population covariance = I
    mu_a, mu_b = np.arange(7.0), np.linspace(-1.0, 2.0, 7)
    sd_a, sd_b = np.linspace(0.5, 2.0, 7), np.linspace(3.0, 0.2, 7)
    a, b = mu_a + design * sd_a, mu_b + design * sd_b
    mean, cov = feature_statistics(a)
    np.testing.assert_allclose(mean, mu_a, atol=1e-12)
    np.testing.assert_allclose(cov, np.diag(sd_a ** 2), atol=1e-12)   # divided by n, as StyleGAN-V
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((sd_a - sd_b) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance_from_statistics(mu_a, np.diag(sd_a ** 2), mu_b, np.diag(sd_b ** 2)) == \
        pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_a_direct_eigendecomposition():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((40, 6)) @ rng.standard_normal((6, 6)) + 1.0
    b = rng.standard_normal((30, 6)) @ rng.standard_normal((6, 6))
    sa, sb = np.cov(a, rowvar=False, ddof=0), np.cov(b, rowvar=False, ddof=0)
    w, v = np.linalg.eigh(sa)
    root_a = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root_a @ sb @ root_a)   # tr sqrtm(Sa Sb) = tr sqrt(Sa^1/2 Sb Sa^1/2)
    expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(sa) + np.trace(sb) - 2 * np.sum(np.sqrt(inner.clip(0)))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_retries_a_non_finite_square_root_with_pytorch_fids_offset(monkeypatch):
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((20, 4)), rng.standard_normal((20, 4)) + 0.5
    exact = frechet_distance(a, b)
    products, real_sqrtm = [], learned._sqrtm

    def first_fails(matrix):
        products.append(matrix)
        return np.full_like(matrix, np.inf) if len(products) == 1 else real_sqrtm(matrix)

    monkeypatch.setattr(learned, "_sqrtm", first_fails)
    retried = frechet_distance(a, b)
    (_, sa), (_, sb) = feature_statistics(a), feature_statistics(b)
    offset = np.eye(4) * 1e-6
    np.testing.assert_allclose(products[1], (sa + offset) @ (sb + offset), rtol=1e-12)
    assert retried == pytest.approx(exact, abs=1e-4) and retried != exact


def test_frechet_distance_refuses_unusable_feature_sets():
    rng = np.random.default_rng(2)
    with pytest.raises(MetricInputError, match="columns"):
        frechet_distance(rng.random((4, 3)), rng.random((4, 5)))
    with pytest.raises(MetricInputError, match="at least 2"):
        frechet_distance(rng.random((1, 3)), rng.random((4, 3)))


# -- the VBench hook -------------------------------------------------------------------------------------------
_STAND_IN = '''
import json, os
from .utils import CACHE_DIR
CALLS = []

class VBench:
    def __init__(self, device, full_info_dir, output_path):
        self.device, self.full_info_dir, self.output_path = device, full_info_dir, output_path
        os.makedirs(output_path, exist_ok=True)

    def evaluate(self, videos_path, name, prompt_list=[], dimension_list=None, local=False, read_frame=False,
                 mode="vbench_standard", **kwargs):
        listing = sorted(os.listdir(videos_path))
        CALLS.append(dict(device=self.device, videos_path=videos_path, name=name, dimensions=list(dimension_list),
                          local=local, mode=mode, listing=listing, kwargs=kwargs))
        videos = [os.path.join(videos_path, f) for f in listing if f.endswith((".mp4", ".gif"))]
        results = {}
        for d in dimension_list:
            per = [{"video_path": v, "video_results": os.path.getsize(v) / 100 + len(d)} for v in videos]
            results[d] = [sum(p["video_results"] for p in per) / len(per), per]
        with open(os.path.join(self.output_path, name + "_eval_results.json"), "w") as f:
            json.dump(results, f)
'''


@pytest.fixture
def stand_in_vbench(tmp_path, monkeypatch):
    package = tmp_path / "site" / "vbench"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(_STAND_IN)
    (package / "utils.py").write_text("import os\nCACHE_DIR = os.environ.get('VBENCH_CACHE_DIR') or "
                                      "os.path.join(os.path.expanduser('~'), '.cache', 'vbench')\n")
    cache = tmp_path / "cache"
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in ("vbench", "vbench.utils"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield cache
    for name in ("vbench", "vbench.utils"):
        sys.modules.pop(name, None)


def _place(paths):
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_vbench_names_what_is_missing(stand_in_vbench, tmp_path, monkeypatch):
    reason = vbench_unavailable_reason("background_consistency")
    assert str(stand_in_vbench / "clip_model" / "ViT-B-32.pt") in reason
    _place([stand_in_vbench / "clip_model" / "ViT-B-32.pt"])
    assert vbench_unavailable_reason("background_consistency") is None

    reason = vbench_unavailable_reason("subject_consistency")   # DINO's hubconf takes its weights from torch.hub
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "dino_vitbase16_pretrain.pth") in reason
    assert "facebookresearch_dino_main" in reason

    assert "custom videos" in vbench_unavailable_reason("object_class")
    with pytest.raises(MetricInputError, match="subject_consistency"):
        vbench_scores([], ["object_class"])
    monkeypatch.setitem(sys.modules, "vbench", None)   # not installed
    assert "pip install vbench" in vbench_unavailable_reason("background_consistency")


def test_vbench_reads_the_cache_folder_it_was_imported_with(stand_in_vbench, tmp_path, monkeypatch):
    import vbench  # noqa: F401  (reads VBENCH_CACHE_DIR now, as VBench does)

    monkeypatch.setenv("VBENCH_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert learned.vbench_cache_dir() == stand_in_vbench


def test_vbench_scores_runs_custom_input_offline_and_maps_results_back(stand_in_vbench, tmp_path):
    _place([stand_in_vbench / "clip_model" / "ViT-B-32.pt", stand_in_vbench / "amt_model" / "amt-s.pth"])
    videos = []
    for i, folder in enumerate(["a", "b", "b2"]):
        (tmp_path / folder).mkdir()
        videos.append(tmp_path / folder / "same name.mp4")   # one file name twice: links are kept apart
        videos[-1].write_bytes(b"x" * (100 * (i + 1)))
    scores = vbench_scores([str(v) for v in videos], ["background_consistency", "motion_smoothness"], device="cpu")

    import vbench

    (call,) = vbench.CALLS
    assert call["mode"] == "custom_input" and call["local"] is True and call["device"] == "cpu"
    assert call["dimensions"] == ["background_consistency", "motion_smoothness"]
    assert len(call["listing"]) == 3
    for dimension in ("background_consistency", "motion_smoothness"):
        per_video = scores[dimension]["per_video"]
        assert per_video == {str(v): pytest.approx(i + 1 + len(dimension)) for i, v in enumerate(videos)}
        assert scores[dimension]["score"] == pytest.approx(np.mean(list(per_video.values())))


def test_vbench_scores_says_when_an_installed_vbench_cannot_be_imported(stand_in_vbench, tmp_path):
    _place([stand_in_vbench / "clip_model" / "ViT-B-32.pt"])
    (tmp_path / "site" / "vbench" / "__init__.py").write_text("import a_requirement_vbench_lacks\n")
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    with pytest.raises(WeightsNotFoundError, match="a_requirement_vbench_lacks"):
        vbench_scores([video], ["background_consistency"])


def test_vbench_scores_refuses_before_vbench_starts(stand_in_vbench, tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    with pytest.raises(WeightsNotFoundError, match="ViT-B-32.pt"):
        vbench_scores([video], ["background_consistency"])
    _place([stand_in_vbench / "clip_model" / "ViT-B-32.pt"])
    (tmp_path / "v.txt").write_bytes(b"x")
    with pytest.raises(MetricInputError, match=r"\.mp4 or \.gif"):
        vbench_scores([tmp_path / "v.txt"], ["background_consistency"])
    with pytest.raises(MetricInputError, match="not a file"):
        vbench_scores([tmp_path / "missing.mp4"], ["background_consistency"])
    import vbench

    assert vbench.CALLS == []


# -- the registry ----------------------------------------------------------------------------------------------
def test_registry_lists_each_metric_with_what_it_needs(clip_folder, detector_file):
    assert set(LEARNED_METRICS) == {"clip_text", "clip_frame", "fvd"}
    for name, metric in LEARNED_METRICS.items():
        assert metric.name == name
        assert metric.env_var in metric.needs and metric.option in metric.needs
        assert metric.env_var in metric.unavailable_reason()
    assert LEARNED_METRICS["clip_text"].unavailable_reason(clip_folder) is None
    assert LEARNED_METRICS["fvd"].unavailable_reason(detector_file) is None
    assert LEARNED_METRICS["fvd"].unavailable_reason(clip_folder) is not None
    video = _video(70)
    assert LEARNED_METRICS["clip_text"].compute(video, PROMPT, clip_folder) == clip_text_score(video, PROMPT,
                                                                                              clip_folder)
    assert not LEARNED_METRICS["fvd"].higher_is_better and LEARNED_METRICS["clip_frame"].higher_is_better

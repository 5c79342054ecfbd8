import numpy as np
import pytest
import torch

from diffcache.embedded import shapes
from diffcache.embedded.checker import analyse, check
from diffcache.embedded.shapes import ClipSpec, PromptError, parse_prompt, render_clips


def test_parse_prompt_full_grammar():
    spec = parse_prompt("A Yellow triangle moving up")
    assert spec == ClipSpec("yellow", "triangle", "up")
    assert spec.prompt == "a yellow triangle moving up"
    assert len(shapes.prompts()) == 60


def test_unknown_word_lists_accepted_words():
    with pytest.raises(PromptError) as info:
        parse_prompt("a purple circle moving left")
    message = str(info.value)
    assert "'purple'" in message
    for word in shapes.VOCABULARY:
        assert word in message


@pytest.mark.parametrize("prompt", ["a red circle", "red circle moving left", "a red circle moving",
                                    "a red blue circle moving left", "a red circle moving left right"])
def test_malformed_prompt_names_the_grammar(prompt):
    with pytest.raises(PromptError, match=r"\{colour\} \{shape\} moving \{direction\}"):
        parse_prompt(prompt)


def test_still_image_prompt_allowed_when_direction_not_required():
    assert parse_prompt("a green square", require_direction=False) == ClipSpec("green", "square", None)


def test_render_is_deterministic_and_well_formed():
    specs = shapes.random_specs(16, torch.Generator().manual_seed(1))
    a, ma = render_clips(specs, torch.Generator().manual_seed(7))
    b, _ = render_clips(specs, torch.Generator().manual_seed(7))
    c, _ = render_clips(specs, torch.Generator().manual_seed(8))
    assert a.shape == (16, 8, 32, 32, 3) and ma.shape == (16, 8, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    # the shape never touches the border: the border is pure background in every frame
    assert ma[:, :, 0].max() == 0 and ma[:, :, -1].max() == 0
    assert ma[:, :, :, 0].max() == 0 and ma[:, :, :, -1].max() == 0
    # dark background
    assert a[:, :, 0, 0].max() <= 0.1


def test_motion_goes_the_prompted_way():
    for direction, (dx, dy) in shapes.DIRECTIONS.items():
        clips, masks = render_clips([ClipSpec("red", "square", direction)], torch.Generator().manual_seed(0))
        ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
        m = masks[0]
        cx = (m * xs).sum((1, 2)) / m.sum((1, 2))
        cy = (m * ys).sum((1, 2)) / m.sum((1, 2))
        vx, vy = (cx[-1] - cx[0]) / 7, (cy[-1] - cy[0]) / 7
        assert abs(vx - dx * abs(vx + vy)) < 1e-3 and abs(vy - dy * abs(vx + vy)) < 1e-3
        assert shapes.SPEED_RANGE[0] - 1e-3 <= abs(vx + vy) <= shapes.SPEED_RANGE[1] + 1e-3


def test_checker_scores_ground_truth_at_least_99_percent():
    g = torch.Generator().manual_seed(123)
    specs = shapes.random_specs(300, g)
    clips, _ = render_clips(specs, g)
    results = [check(c.numpy(), s.prompt) for c, s in zip(clips, specs)]
    assert np.mean([r.adherence for r in results]) >= 0.99
    assert np.mean([r.temporal_stability for r in results]) > 0.9


def test_checker_fails_wrong_prompts():
    clips, _ = render_clips([ClipSpec("red", "circle", "left")], torch.Generator().manual_seed(0))
    clip = clips[0].numpy()
    assert check(clip, "a red circle moving left").adherence == 1.0
    assert check(clip, "a blue circle moving left").matches == {"colour": False, "shape": True, "direction": True}
    assert check(clip, "a red square moving right").adherence == pytest.approx(1 / 3)
    assert check(clip, "a green triangle moving up").adherence == 0.0


def test_checker_on_empty_and_still_clips():
    blank = np.full((8, 32, 32, 3), 0.05, dtype=np.float32)
    result = check(blank, "a red circle moving left")
    assert result.adherence == 0.0 and result.colour is None
    clips, _ = render_clips([ClipSpec("white", "triangle")], torch.Generator().manual_seed(0))
    assert analyse(clips[0].numpy())["direction"] == "still"
    # an image (H, W, 3) is scored on colour and shape only
    image = check(clips[0, 0].numpy(), "a white triangle")
    assert image.matches == {"colour": True, "shape": True}


def test_checker_ignores_small_specks():
    clips, _ = render_clips([ClipSpec("green", "square", "down")], torch.Generator().manual_seed(3))
    noisy = clips[0].numpy().copy()
    noisy[:, 1, 1] = 1.0  # a one-pixel white speck in every frame
    assert check(noisy, "a green square moving down").adherence == 1.0
    assert check(noisy, "a green square moving down").clean  # a speck of 1 pixel is not an object


def test_checker_ground_truth_is_clean():
    g = torch.Generator().manual_seed(321)
    specs = shapes.random_specs(200, g)
    clips, _ = render_clips(specs, g)
    results = [check(c.numpy(), s.prompt) for c, s in zip(clips, specs)]
    assert all(r.clean and r.objects == 1 and r.present_every_frame and r.background_uniform for r in results)
    images = [check(c[0].numpy(), s.prompt.split(" moving")[0]) for c, s in zip(clips[:50], specs[:50])]
    assert all(r.clean for r in images)


def _clean_clip(seed=5, spec=ClipSpec("red", "square", "right")):
    clips, masks = render_clips([spec], torch.Generator().manual_seed(seed))
    return clips[0].numpy().copy(), masks[0].numpy()


def test_checker_flags_a_duplicate_object():
    clip, mask = _clean_clip()
    prompt = "a red square moving right"
    assert check(clip, prompt).clean
    colour = clip[mask > 0.99][0]
    clip[:, 26:30, 2:6] = colour  # a second square of the same colour, away from the first
    result = check(clip, prompt)
    assert result.objects == 2 and not result.clean
    assert result.adherence == 1.0  # still the right colour, shape and motion: the two figures are separate


def test_checker_flags_a_fragment_beside_the_object():
    clip, mask = _clean_clip(spec=ClipSpec("yellow", "square", "up"))
    colour = clip[mask > 0.99][0]
    for f in range(len(clip)):  # a small bar of 3 pixels, two pixels to the right of the square in every frame
        ys, xs = np.nonzero(mask[f] > 0.5)
        x = min(xs.max() + 3, 31)
        clip[f, ys.min():ys.min() + 3, x] = colour
    result = check(clip, "a yellow square moving up")
    assert result.objects == 2 and not result.clean


def test_checker_flags_an_object_that_vanishes():
    clip, mask = _clean_clip(spec=ClipSpec("white", "circle", "up"))
    background = clip[0, 0, 0].copy()
    clip[5:] = background  # gone after frame 5
    result = check(clip, "a white circle moving up")
    assert not result.present_every_frame and not result.clean
    shrinking, mask = _clean_clip(spec=ClipSpec("white", "circle", "up"))
    for f in range(4, 8):  # shrinks to a third of its area: keep only the middle rows
        ys, _ = np.nonzero(mask[f] > 0.5)
        keep = (np.arange(32) >= np.percentile(ys, 35)) & (np.arange(32) <= np.percentile(ys, 65))
        shrinking[f, ~keep] = background
    result = check(shrinking, "a white circle moving up")
    assert result.detail["min_area_ratio"] < 0.5 and not result.present_every_frame and not result.clean


@pytest.mark.parametrize("defect", ["bright", "noisy", "drifting"])
def test_checker_flags_a_wrong_background(defect):
    clip, mask = _clean_clip(spec=ClipSpec("blue", "triangle", "left"))
    away = np.broadcast_to((mask < 0.01)[..., None], clip.shape)
    if defect == "bright":
        clip = np.where(away, 0.35, clip)
    elif defect == "noisy":
        noise = np.random.default_rng(0).normal(0, 0.08, clip.shape).clip(-0.2, 0.2)
        clip = np.where(away, (clip + noise).clip(0, 1), clip)
    else:  # the level climbs from 0.02 to 0.15 over the clip
        level = np.linspace(0.02, 0.15, len(clip))[:, None, None, None]
        clip = np.where(away, level, clip)
    result = check(clip.astype(np.float32), "a blue triangle moving left")
    assert not result.background_uniform and not result.clean


def test_checker_calls_a_bar_elongated_not_a_square():
    """A tall bar fills its box like a square; its aspect says it is not one (the ground truth's is 0.88–1.14)."""
    spec = ClipSpec("blue", "square", "right")
    clip, mask = _clean_clip(spec=spec)
    assert check(clip, spec.prompt).shape == "square"
    colour, background = clip[mask > 0.99][0], clip[0, 0, 0].copy()
    bar = np.broadcast_to(background, clip.shape).copy()
    for f in range(clip.shape[0]):
        bar[f, 4:28, 6 + 2 * f:12 + 2 * f] = colour  # 6 px wide, 24 px tall, moving right
    result = check(bar, spec.prompt)
    assert result.shape == "elongated" and result.adherence == pytest.approx(2 / 3)
    assert result.clean  # one object on a uniform background: the shape is adherence's business


def test_a_recipe_can_render_larger_shapes_that_the_checker_still_reads():
    specs = shapes.random_specs(120, torch.Generator().manual_seed(5))
    _, small = render_clips(specs, torch.Generator().manual_seed(9))
    clips, large = render_clips(specs, torch.Generator().manual_seed(9), radius_range=(5.0, 7.0))
    # same draws, larger radius: every shape covers more pixels, and the ground truth stays readable and clean
    assert (large.sum((2, 3)) > small.sum((2, 3))).all()
    results = [check(c.numpy(), s.prompt) for c, s in zip(clips, specs)]
    assert np.mean([r.adherence for r in results]) >= 0.99
    assert np.mean([r.clean for r in results]) >= 0.99


@pytest.mark.parametrize("radius_range", [(0.0, 5.0), (6.0, 5.0), (-1.0, 2.0)])
def test_a_bad_radius_range_is_refused(radius_range):
    with pytest.raises(ValueError, match="radius_range"):
        render_clips([ClipSpec("red", "circle", "left")], radius_range=radius_range)

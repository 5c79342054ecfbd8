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

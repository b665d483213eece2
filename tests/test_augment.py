"""The training augmentation: each part of a view does what it says to each image alone, draws as often and as
far as the recipe says, and a view is the same image whenever its parameters are replayed."""

import math

import pytest
import torch
from pydantic import ValidationError

from distillery import augment
from distillery.augment import Recipe, Views
from project.config import AugmentConfig
from project.settings import recipe

FULL = Recipe(scale=0.1, levels=0.5, thicken=0.3, blur=0.3)


def dot(n: int = 1, size: int = 9) -> torch.Tensor:
    """`n` black images with one white pixel in the middle."""
    x = torch.zeros(n, 1, size, size)
    x[:, :, size // 2, size // 2] = 1.0
    return x


def view(n: int = 1, **parts: float) -> Views:
    """`n` identity views with some parts set, e.g. paper=0.3."""
    found = augment.identity(n)
    return Views(found.theta, *(torch.full((n,), parts.get(p, getattr(found, p)[0].item())) for p in PARTS))


PARTS = ("paper", "ink", "thicken", "blur")


def test_the_identity_view_is_the_image_as_stored():
    x = torch.rand(3, 2, 12, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(augment.apply(x, augment.identity(3)), x, atol=1e-6)


def test_paper_and_ink_levels_set_the_ground_and_the_strokes():
    seen = augment.apply(dot(), view(paper=0.3, ink=0.8))
    assert seen.min().item() == pytest.approx(0.3) and seen.max().item() == pytest.approx(0.8)
    assert seen[0, 0, 4, 4].item() == pytest.approx(0.8)


def test_thickened_strokes_grow_by_a_pixel_at_full_strength_and_part_way_below():
    full, half = augment.apply(dot(), view(thicken=1.0)), augment.apply(dot(), view(thicken=0.5))
    assert torch.equal(full[0, 0, 3:6, 3:6], torch.ones(3, 3)) and full.sum().item() == pytest.approx(9)
    assert half[0, 0, 3, 3].item() == pytest.approx(0.5) and half[0, 0, 4, 4].item() == pytest.approx(1.0)


def test_a_blur_spreads_a_stroke_and_keeps_its_ink():
    blurred = augment.apply(dot(), view(blur=1.0))
    assert blurred[0, 0, 4, 4].item() < 0.5 and blurred[0, 0, 3, 4].item() > 0.05
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5) and blurred[0, 0, 2].sum() == 0  # 3 x 3


def test_each_image_gets_its_own_view():
    x = dot(n=2)
    views = augment.identity(2)
    views = Views(views.theta, torch.tensor([0.0, 0.4]), torch.ones(2), torch.tensor([1.0, 0.0]), torch.zeros(2))
    seen = augment.apply(x, views)
    assert seen[0].min() == 0 and seen[0].sum().item() == pytest.approx(9)  # thickened, on black
    assert seen[1].min().item() == pytest.approx(0.4) and seen[1, 0, 3, 3].item() == pytest.approx(0.4)


def test_a_view_is_drawn_as_the_recipe_says():
    n = 20_000
    drawn = augment.draw(n, 1.0, FULL, torch.Generator().manual_seed(0))
    assert (drawn.paper > 0).float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert torch.equal(drawn.paper > 0, drawn.ink < 1)  # paper and ink change together
    assert (drawn.paper <= 0.4).all() and drawn.paper.max() > 0.39 and drawn.ink[drawn.ink < 1].min() < 0.61
    assert ((drawn.ink >= 0.6) & (drawn.ink <= 1)).all()
    assert (drawn.ink < 1).float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert (drawn.thicken > 0).float().mean().item() == pytest.approx(0.3, abs=0.02)
    assert (drawn.blur > 0).float().mean().item() == pytest.approx(0.3, abs=0.02)
    zoom = 1 / torch.linalg.det(drawn.theta[:, :, :2]).sqrt()  # the grid samples 1/zoom of each side
    assert zoom.min().item() >= 1 / 1.1 - 1e-6 and zoom.max().item() <= 1.1 + 1e-6 and zoom.std() > 0.04
    angle = torch.atan2(drawn.theta[:, 1, 0], drawn.theta[:, 0, 0]).abs()
    assert angle.max().item() <= math.radians(10) + 1e-6 and angle.max().item() > math.radians(9.9)
    shifts = drawn.theta[:, :, 2].abs()  # a shift of 10% is 0.2 in normalised units
    assert shifts.max().item() <= 0.2 + 1e-6 and shifts.max().item() > 0.199
    geometric = augment.draw(n, 1.0, Recipe(), torch.Generator().manual_seed(0))
    assert not geometric.paper.any() and not geometric.thicken.any() and not geometric.blur.any()
    assert (geometric.ink == 1).all()


def test_a_rotation_turns_the_pixels_of_a_wide_image_and_a_zoom_grows_it():
    """On an image twice as wide as high, a quarter turn of a horizontal bar is a vertical one of the same length
    in pixels; a zoom of 1.5 makes a dot's neighbourhood 1.5 times wider."""
    x = torch.zeros(1, 1, 21, 42)
    x[0, 0, 10, 16:26] = 1.0  # a bar 10 pixels long
    quarter = augment.affine_theta(torch.tensor([math.pi / 2]), torch.zeros(1), torch.zeros(1), aspect=2.0)
    views = augment.identity(1)
    turned = augment.apply(x, Views(quarter, views.paper, views.ink, views.thicken, views.blur))
    rows, cols = torch.nonzero(turned[0, 0] > 0.2, as_tuple=True)  # a column between two pixels: half in each
    assert 9 <= rows.max() - rows.min() + 1 <= 11 and cols.max() - cols.min() + 1 <= 2
    zoom = Views(
        torch.tensor([[[1 / 1.5, 0.0, 0.0], [0.0, 1 / 1.5, 0.0]]]), views.paper, views.ink, views.thicken, views.blur
    )
    grown = augment.apply(x, zoom)
    cols = torch.nonzero(grown[0, 0].amax(dim=0) > 0.5).flatten()
    assert 14 <= cols.max() - cols.min() + 1 <= 16  # 10 pixels at 1.5x


def test_the_same_seed_draws_the_same_views_and_replaying_them_gives_the_same_images():
    x = torch.rand(8, 1, 10, 10, generator=torch.Generator().manual_seed(1))
    first, again = (augment.draw(8, 1.0, FULL, torch.Generator().manual_seed(3)) for _ in range(2))
    assert all(
        torch.equal(a, b) for a, b in zip(first.to_tensors("").values(), again.to_tensors("").values(), strict=True)
    )
    assert torch.equal(augment.apply(x, first), augment.apply(x, again))
    stacked = Views.stack([augment.identity(8), first])
    assert torch.equal(augment.apply(x, stacked[1, torch.arange(8)]), augment.apply(x, first))


def test_the_params_section_is_the_recipe_and_refuses_ink_darker_than_paper():
    assert recipe(AugmentConfig()) == Recipe(scale=0.1, levels=0.5, paper_max=0.4, ink_min=0.6, thicken=0.3, blur=0.3)
    with pytest.raises(ValidationError, match=r"augment.ink_min \(0.4\) must exceed augment.paper_max \(0.4\)"):
        AugmentConfig(ink_min=0.4)


def test_strokes_grow_and_blurs_spread_a_pixel_per_28_of_the_side_and_a_pixel_at_least():
    for size, reach in ((9, 1), (28, 1), (56, 2), (84, 3)):
        grown = augment.apply(dot(size=size), view(thicken=1.0))
        assert grown.sum().item() == pytest.approx((2 * reach + 1) ** 2, abs=1e-3), size
        blurred = augment.apply(dot(size=size), view(blur=1.0))
        middle = size // 2
        assert blurred[0, 0, middle, middle + reach].item() > 0 and blurred[0, 0, middle, middle + reach + 1] < 1e-6

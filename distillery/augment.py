"""The training augmentation: what a deployment does to an image, drawn for each image of a batch. A view is
recorded as its parameters (`Views`), so that the teachers' outputs cached on a view are those on the very image
a student later sees. In order: a random rotation, scale and shift; strokes thickened; a slight blur; random paper
and ink levels (the ground's and the strokes' brightness, so also the contrast)."""

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import gaussian_blur

from distillery.corruptions import MIN_SIDE
from distillery.data import affine_theta, warp

OVERLAPS = ("brightness", "contrast", "blur", "shift", "rotate")  # the corruption suite's kinds this trains on


@dataclass(frozen=True)
class Recipe:
    """How far each part of a view may move an image, and how often the photometric parts apply. Its defaults are
    rotation and shift alone; the params' `augment` section gives the pipeline's recipe."""

    degrees: float = 10.0  # rotation up to this, either way
    shift: float = 0.1  # shift up to this share of the width and height
    scale: float = 0.0  # zoom by up to this share, in or out
    levels: float = 0.0  # share of images given random paper and ink levels
    paper_max: float = 0.4  # the ground's brightness, 0..1: up to this
    ink_min: float = 0.6  # the strokes' brightness, 0..1: down to this
    thicken: float = 0.0  # share of images whose strokes grow by up to a pixel (per 28 of the image's side)
    blur: float = 0.0  # share of images blurred by up to a 3 x 3 gaussian of sigma 1 (the same, scaled)


@dataclass(frozen=True)
class Views:
    """Per image: its affine map and the strength of each photometric part (0: none). Any leading shape, e.g.
    views x images for a cache."""

    theta: torch.Tensor  # ... x 2 x 3, as `affine_theta` makes
    paper: torch.Tensor
    ink: torch.Tensor
    thicken: torch.Tensor
    blur: torch.Tensor

    def __getitem__(self, index) -> "Views":
        return Views(*(getattr(self, f.name)[index] for f in fields(self)))

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {prefix + f.name: getattr(self, f.name).contiguous() for f in fields(self)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> "Views":
        return cls(*(tensors[prefix + f.name] for f in fields(cls)))

    @classmethod
    def stack(cls, views: list["Views"]) -> "Views":
        return cls(*(torch.stack([getattr(v, f.name) for v in views]) for f in fields(cls)))


def identity(n: int) -> Views:
    """`n` images as stored."""
    zero = torch.zeros(n)
    return Views(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(n, 2, 3), zero, torch.ones(n), zero, zero)


def draw(n: int, aspect: float, recipe: Recipe, generator: torch.Generator) -> Views:
    """`n` random views of images whose width is `aspect` times their height, drawn from `generator`
    (thread-safe and reproducible)."""

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    def chosen(share: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) < share

    def sometimes(where: torch.Tensor, strength: torch.Tensor, neutral: float = 0.0) -> torch.Tensor:
        return torch.where(where, strength, torch.full((n,), neutral))

    angle = uniform(-1, 1) * math.radians(recipe.degrees)
    zoom = torch.exp(uniform(-1, 1) * math.log1p(recipe.scale))
    tx, ty = uniform(-1, 1) * recipe.shift * 2, uniform(-1, 1) * recipe.shift * 2  # normalised: 2 spans the image
    theta = affine_theta(angle, tx, ty, aspect=aspect)
    theta[:, :, :2] /= zoom[:, None, None]  # the grid samples a smaller area: the image grows
    levelled = chosen(recipe.levels)  # paper and ink change together
    return Views(
        theta=theta,
        paper=sometimes(levelled, uniform(0, recipe.paper_max)),
        ink=sometimes(levelled, uniform(recipe.ink_min, 1), neutral=1.0),
        thicken=sometimes(chosen(recipe.thicken), uniform(0, 1)),
        blur=sometimes(chosen(recipe.blur), uniform(0, 1)),
    )


def stroke_pixels(x: torch.Tensor) -> int:
    """How far strokes grow and blurs spread in images `x`: a pixel per MIN_SIDE pixels of their shorter side, as
    the corruption suite scales its blurs, and a pixel at least."""
    return max(1, round(min(x.shape[-2:]) / MIN_SIDE))


def apply(x: torch.Tensor, views: Views) -> torch.Tensor:
    """The images `x` (N x C x H x W, 0..1) seen as `views` describes, one view per image."""
    x = warp(x, views.theta)
    reach = stroke_pixels(x)

    def mixed(strength: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
        s = strength.to(x.device, x.dtype)[:, None, None, None]
        return x + s * (changed - x)

    if views.thicken.any():
        x = mixed(views.thicken, torch.maximum(x, F.max_pool2d(x, 2 * reach + 1, stride=1, padding=reach)))
    if views.blur.any():
        x = mixed(views.blur, gaussian_blur(x, [2 * reach + 1] * 2, [float(reach)] * 2))
    paper, ink = (v.to(x.device, x.dtype)[:, None, None, None] for v in (views.paper, views.ink))
    return paper + (ink - paper) * x


def augmented(x: torch.Tensor, recipe: Recipe, generator: torch.Generator) -> torch.Tensor:
    """`x` with a fresh random view of each image."""
    return apply(x, draw(len(x), x.shape[-1] / x.shape[-2], recipe, generator))

"""A deterministic corruption suite for robustness, in the spirit of MNIST-C and CIFAR-10-C (Hendrycks &
Dietterich 2019): ten kinds of corruption at three severities, for uint8 images of any size and channel count.

Sizes scale with the image: a shift is a share of its width and height, an elastic warp's smoothness a
share of its side, a blur's sigma and a pixelation's blocks a share of its side (at least that share of 28
pixels, so that they still change an 8x8 image). Each kind's random parts (noise, directions, displacement
fields) come from a generator seeded by the kind's name and the position of the block of images, the same
at every severity: a higher severity moves the same images further the same way. Severity 0 is each kind
at its neutral setting, which leaves the images as they are.
"""

import math
import zlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg
from torchvision.transforms.v2.functional import gaussian_blur

from distillery.data import Split, affine_theta, normalise, warp

SEVERITIES = (1, 2, 3)
BLOCK = 256  # images corrupted together: one random stream per block of a split
MIN_SIDE = 28  # a blur's sigma and a pixel block are shares of the image's side, or of this many pixels if more


def _noise(x: torch.Tensor, g: torch.Generator, sigma: float) -> torch.Tensor:
    return x + torch.randn(x.shape, generator=g) * sigma


def _impulse(x: torch.Tensor, g: torch.Generator, share: float) -> torch.Tensor:
    """Salt and pepper: `share` of the pixels set to black or white."""
    hit = torch.rand(x.shape, generator=g) < share
    salt = (torch.rand(x.shape, generator=g) < 0.5).to(x.dtype)
    return torch.where(hit, salt, x)


def _blur(x: torch.Tensor, g: torch.Generator, share: float) -> torch.Tensor:
    if share == 0:
        return x
    sigma = share * max(min(x.shape[-2:]), MIN_SIDE)
    size = 2 * math.ceil(3 * sigma) + 1
    return gaussian_blur(x, [size, size], [sigma, sigma])


def _contrast(x: torch.Tensor, g: torch.Generator, factor: float) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * factor + mean


def _brightness(x: torch.Tensor, g: torch.Generator, offset: float) -> torch.Tensor:
    return x + offset


def _shift(x: torch.Tensor, g: torch.Generator, share: float) -> torch.Tensor:
    """Every image moved by `share` of its width and height, in a random direction."""
    direction = torch.rand(len(x), generator=g) * 2 * math.pi
    tx, ty = 2 * share * torch.cos(direction), 2 * share * torch.sin(direction)  # normalised: 2 spans the image
    return warp(x, affine_theta(torch.zeros(len(x)), tx, ty, aspect=x.shape[-1] / x.shape[-2]))


def _rotate(x: torch.Tensor, g: torch.Generator, degrees: float) -> torch.Tensor:
    angle = (torch.randint(0, 2, (len(x),), generator=g) * 2.0 - 1) * math.radians(degrees)
    zero = torch.zeros(len(x))
    return warp(x, affine_theta(angle, zero, zero, aspect=x.shape[-1] / x.shape[-2]))


def _elastic(x: torch.Tensor, g: torch.Generator, strength: float) -> torch.Tensor:
    """A smooth random displacement field (Simard et al. 2003): white noise blurred over an eighth of the
    image's side, scaled so that its largest move is `strength` of the image's size."""
    n, _, h, w = x.shape
    field = torch.rand((n, 2, h, w), generator=g) * 2 - 1
    sigma = min(h, w) / 8
    field = gaussian_blur(field, [2 * math.ceil(3 * sigma) + 1] * 2, [sigma, sigma])
    field = field / field.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12) * 2 * strength
    return warp(x, torch.eye(2, 3).expand(n, 2, 3), field.permute(0, 2, 3, 1))


def _pixelate(x: torch.Tensor, g: torch.Generator, share: float) -> torch.Tensor:
    """The image shrunk to blocks of `share` of its side (of MIN_SIDE pixels at least), each its mean colour,
    and scaled back up."""
    if share == 0:
        return x
    block = share * max(min(x.shape[-2:]), MIN_SIDE)
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, round(h / block)), max(1, round(w / block))), mode="area")
    return F.interpolate(small, size=(h, w), mode="nearest")


def _jpeg(x: torch.Tensor, g: torch.Generator, quality: int | None) -> torch.Tensor:
    """JPEG at `quality` (None: not encoded); each channel a grayscale JPEG of its own unless the images are RGB."""
    if quality is None:
        return x
    pixels = (x * 255).round().clamp(0, 255).to(torch.uint8)
    n, c, h, w = pixels.shape
    planes = list(pixels) if c == 3 else list(pixels.reshape(n * c, 1, h, w))
    decoded = decode_jpeg(encode_jpeg(planes, quality=quality), mode=ImageReadMode.UNCHANGED)
    return torch.stack(decoded).reshape(n, c, h, w).float() / 255


# kind: (transform, its setting at severities 0 (neutral), 1, 2, 3)
KINDS: dict[str, tuple[Callable, tuple]] = {
    "gaussian_noise": (_noise, (0.0, 0.08, 0.16, 0.28)),
    "impulse_noise": (_impulse, (0.0, 0.03, 0.07, 0.12)),
    "blur": (_blur, (0.0, 0.02, 0.035, 0.05)),
    "contrast": (_contrast, (1.0, 0.5, 0.3, 0.15)),
    "brightness": (_brightness, (0.0, 0.2, 0.4, 0.6)),
    "shift": (_shift, (0.0, 0.1, 0.15, 0.2)),
    "rotate": (_rotate, (0.0, 15.0, 30.0, 45.0)),
    "elastic": (_elastic, (0.0, 0.04, 0.07, 0.1)),
    "pixelate": (_pixelate, (0.0, 0.07, 0.14, 0.25)),
    "jpeg": (_jpeg, (None, 20, 10, 5)),
}


def corrupt(images: torch.Tensor, kind: str, severity: int, *, start: int = 0) -> torch.Tensor:
    """`images` (uint8 N x C x H x W, the block of the split that begins at image `start`) with `kind` of
    corruption at `severity` (1..3; 0: the neutral setting), as uint8."""
    transform, settings = KINDS[kind]
    g = torch.Generator().manual_seed(zlib.crc32(kind.encode()) * 1_000_003 + start)
    x = images.float() / 255
    return (transform(x, g, settings[severity]) * 255).round().clamp(0, 255).to(torch.uint8)


def corrupted_blocks(split: Split, kind: str, severity: int) -> Iterator[tuple[int, torch.Tensor]]:
    """`split`'s images with `kind` of corruption at `severity`, one block at a time, normalised as the models
    take them: (the block's first position in the split, its images)."""
    for start in range(0, len(split), BLOCK):
        rows = split.rows[start : start + BLOCK]
        yield start, normalise(corrupt(split.images[rows], kind, severity, start=start))

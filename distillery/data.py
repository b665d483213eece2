"""The canonical dataset (data/raw/: uint8 images, labels, split ids), read batch by batch from disk."""

import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from distillery import raw_format
from distillery.errors import DistilleryError
from distillery.files import read_json

CPU = torch.device("cpu")
FILES = (raw_format.IMAGES, raw_format.LABELS, raw_format.SPLITS, raw_format.INFO)


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0..255 to the float32 range the models take, 0..1. The int8 model's input
    quantizer then maps every pixel back to itself (scale 1/255, zero point 0); on -1..1 every pixel
    fell exactly halfway between two steps, and rounding noise decided which one."""
    return pixels.float().div_(255.0)


@dataclass(frozen=True)
class Split(torch.utils.data.Dataset):
    """One split of the dataset: its images stay on disk (memory-mapped) until a batch needs them."""

    images: torch.Tensor  # uint8 N x C x H x W: the whole dataset, memory-mapped (or this split on the GPU)
    rows: torch.Tensor  # int64: where this split's images are in `images`
    y: torch.Tensor  # int64 labels, one per row

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        """Images at `index` (positions within the split) as normalised float32, and their labels."""
        return normalise(self.images[self.rows[index]]), self.y[index]

    def head(self, n: int) -> torch.Tensor:
        """The first `n` images: examples for exporters, latency timing and calibration."""
        return self[: min(n, len(self))][0]


@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split
    test: Split
    unlabeled: Split  # the transfer set: images without labels (label UNLABELED) that students distil from
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]

    @property
    def transfer(self) -> Split:
        """What students distil from: the training images, then the transfer set's (so a training image has the
        same place in both splits)."""
        if not len(self.unlabeled):
            return self.train
        rows, y = (torch.cat([self.train.rows, self.unlabeled.rows]), torch.cat([self.train.y, self.unlabeled.y]))
        return Split(self.train.images, rows, y)


def load_dataset(raw: Path) -> Dataset:
    """Open the ingest stage's output: the images are memory-mapped, not read into memory."""
    missing = [name for name in FILES if not (raw / name).exists()]
    if missing:
        raise DistilleryError(f"{raw} lacks {', '.join(missing)}; run the ingest stage first.")
    images = torch.from_numpy(np.load(raw / raw_format.IMAGES, mmap_mode="c"))  # copy-on-write: the file stays as is
    labels = torch.from_numpy(np.load(raw / raw_format.LABELS)).long()
    splits = torch.from_numpy(np.load(raw / raw_format.SPLITS))
    if not len(images) == len(labels) == len(splits):
        raise DistilleryError(
            f"{raw}: {len(images)} images, {len(labels)} labels and {len(splits)} split ids do not "
            "match; rerun the ingest stage."
        )
    num_classes = len(read_json(raw / raw_format.INFO)["classes"])
    parts = []
    for i in range(len(raw_format.SPLIT_NAMES)):
        rows = torch.nonzero(splits == i).flatten()
        parts.append(Split(images, rows, labels[rows]))
    return Dataset(*parts, num_classes=num_classes, in_channels=images.shape[1], image_size=tuple(images.shape[2:]))


def loader_workers() -> int:
    """DataLoader worker processes (reading batches ahead of a CUDA training loop, decoding image
    files in ingest); none inside a daemon process (a Dask worker), which may not start children."""
    return 0 if multiprocessing.current_process().daemon else min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class Indexed(torch.utils.data.Dataset):
    """A split whose batches also say where in the split their images are: (x, y, index)."""

    split: Split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return *self.split[index], index


def batches(
    split: Split,
    batch_size: int,
    generator: torch.Generator | None = None,
    device: torch.device = CPU,
    with_index: bool = False,
) -> DataLoader:
    """(x, y) mini-batches, or (x, y, index) `with_index`, shuffled with `generator` when one is given,
    read from disk as they are needed. Feeding a GPU from host memory, DataLoader workers read and pin
    the next batches; on the CPU the training process reads them itself, as workers would only take its
    cores."""
    n = len(split)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    streamed = device.type == "cuda" and not split.images.is_cuda
    return DataLoader(
        Indexed(split) if with_index else split,
        batch_size=None,
        sampler=order.split(batch_size),
        num_workers=loader_workers() if streamed else 0,
        pin_memory=streamed,
    )


def affine_theta(angle: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor, aspect: float) -> torch.Tensor:
    """Per-image 2x3 matrices for `F.affine_grid`: a rotation by `angle` (radians) of images whose width is
    `aspect` times their height (a true rotation of the pixels, not of the normalised square), and a shift
    of (tx, ty) in normalised units (2 is the whole width or height)."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([cos, -sin / aspect, tx], 1), torch.stack([sin * aspect, cos, ty], 1)], 1)


def warp(x: torch.Tensor, theta: torch.Tensor, displacement: torch.Tensor | None = None) -> torch.Tensor:
    """Resample each image through its affine map `theta` (N x 2 x 3), plus a displacement field (N x H x W x 2,
    normalised units) when one is given; the border pixels extend outwards."""
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    if displacement is not None:
        grid = grid + displacement
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def to_device(split: Split, device: torch.device) -> Split:
    """On CUDA: the split's uint8 images in GPU memory when they take under a quarter of what is free
    (else they stream from disk through DataLoader workers). On the CPU: unchanged."""
    if device.type != "cuda":
        return split
    free_bytes, _ = torch.cuda.mem_get_info(device)
    if len(split) * split.images[0].nbytes >= free_bytes // 4:
        return split
    images = split.images[split.rows].to(device)
    return Split(images, torch.arange(len(split), device=device), split.y.to(device))

"""The canonical dataset file (uint8 images, labels, split ids) as tensors and batches."""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from distillery.errors import DistilleryError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # float32, N x C x H x W, scaled to [0, 1] and normalised
    y: torch.Tensor  # int64, N


@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split
    test: Split
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]


def load_dataset(path: Path) -> Dataset:
    """Load `dataset.npz` (x uint8 NxCxHxW, y int64, split int8 0/1/2, num_classes)."""
    if not path.exists():
        raise DistilleryError(f"Dataset {path} does not exist; run the ingest stage first.")
    with np.load(path) as arrays:
        x = torch.from_numpy(arrays["x"]).float().div_(255.0)
        y = torch.from_numpy(arrays["y"]).long()
        split = arrays["split"]
        num_classes = int(arrays["num_classes"])
    x = (x - 0.5) / 0.5
    parts = [Split(x[split == i], y[split == i]) for i in range(len(SPLITS))]
    return Dataset(*parts, num_classes=num_classes, in_channels=x.shape[1], image_size=tuple(x.shape[2:]))


def batches(split: Split, batch_size: int, generator: torch.Generator | None = None):
    """Yield (x, y) mini-batches; shuffled with `generator` when one is given."""
    n = len(split.y)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield split.x[idx], split.y[idx]


def random_affine(x: torch.Tensor, generator: torch.Generator, degrees: float = 10.0, shift: float = 0.1):
    """Small random rotations and shifts, drawn from `generator` (thread-safe and reproducible)."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(degrees)
    tx, ty = ((torch.rand(2, n, generator=generator) * 2 - 1) * shift * 2).unbind(0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def to_device(split: Split, device: torch.device) -> Split:
    """On CUDA: the whole split in GPU memory when it takes under a quarter of what is free, else
    in pinned host memory so batches copy asynchronously. On the CPU: unchanged."""
    if device.type != "cuda":
        return split
    free_bytes, _ = torch.cuda.mem_get_info(device)
    if split.x.nbytes + split.y.nbytes < free_bytes // 4:
        return Split(split.x.to(device), split.y.to(device))
    return Split(split.x.pin_memory(), split.y.pin_memory())

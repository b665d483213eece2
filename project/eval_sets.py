"""The labelled sets the report measures every model on beside the test split (`report.eval_sets`), read and
checked before anything is measured: built-in digit sets, folders of class sub-folders (converted to the run's
colour and size as ingest converts images) and .npz files of the run's shape. A bad set is one paragraph that
names it and what to change; so is a set with copies of the images the run learns or chooses from."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from distillery import digit_sets, images
from distillery.data import load_dataset
from distillery.errors import DistilleryError
from distillery.files import inside
from distillery.raw_format import SPLIT_NAMES, image_sha256
from project.config import EvalSet
from project.layout import Layout

DIGITS = [str(i) for i in range(10)]
LEARNT_SPLITS = tuple(s for s in SPLIT_NAMES if s != "test")  # what models learn from, are chosen or calibrated on


@dataclass(frozen=True)
class LoadedSet:
    """An evaluation set as the models take it: uint8 N x C x H x W images and their labels."""

    name: str
    source: str
    images: np.ndarray
    labels: np.ndarray


def problem(index: int, entry: EvalSet, text: str) -> DistilleryError:
    return DistilleryError(f"report.eval_sets[{index}] ({entry.name}): {text}. Nothing was measured.")


def built_in(index: int, entry: EvalSet, classes: list[str], shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    if classes != DIGITS or shape[0] != 1:
        raise problem(
            index,
            entry,
            f"the built-in {entry.source} set holds gray digits 0-9, and this run's images are "
            f"{images.color_of(shape[0])} of the classes {', '.join(classes[:5])}{'...' if len(classes) > 5 else ''}; "
            "list your own sets (folders or .npz in data/eval/), or set report.eval_sets: []",
        )
    found, labels = digit_sets.SETS[entry.source](tuple(shape[1:]))
    return found[:, None], labels


def folder(
    index: int, entry: EvalSet, path: Path, classes: list[str], shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Images in class sub-folders, each converted to the run's colour and size."""
    color = images.color_of(shape[0])
    if not path.is_dir():
        raise problem(index, entry, f"{path} is not a folder (source: folder); for an .npz file, set source: npz")
    sub_folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [p.name for p in sub_folders if p.name not in classes]
    if unknown:
        raise problem(index, entry, f"{path} has folders {unknown} that are none of the run's classes {classes}")
    found, labels = [], []
    for sub_folder in sub_folders:
        files = images.image_files([sub_folder])
        try:
            found += [images.read_image(f, color, tuple(shape[1:])) for f in files]
        except DistilleryError as e:
            raise problem(index, entry, str(e).rstrip(".")) from e
        labels += [classes.index(sub_folder.name)] * len(files)
    if not found:
        raise problem(index, entry, f"{path} holds no images in class sub-folders named as the run's classes")
    return np.stack(found), np.array(labels, dtype=np.int64)


def npz(
    index: int, entry: EvalSet, path: Path, classes: list[str], shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Arrays x (N x H x W, N x H x W x C or N x C x H x W, 0..255) and y (labels 0..K-1)."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            x, y = arrays["x"], arrays["y"]
    except (OSError, ValueError, KeyError) as e:
        raise problem(index, entry, f"{path} is not an .npz file with arrays x and y ({e})") from e
    channels, height, width = shape
    layouts = {(height, width): lambda a: a[:, None], (height, width, channels): lambda a: a.transpose(0, 3, 1, 2)}
    layouts[(channels, height, width)] = lambda a: a
    to_nchw = layouts.get(tuple(x.shape[1:]))
    if not len(x) or to_nchw is None or len(y) != len(x):
        raise problem(
            index,
            entry,
            f"{path} holds x of shape {x.shape} and y of {len(y)} labels; it needs images of the run's shape "
            f"({channels} x {height} x {width}) and one label each",
        )
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= len(classes):
        raise problem(index, entry, f"{path}: labels must be 0..{len(classes) - 1}, the run's classes {classes}")
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 255:
        raise problem(index, entry, f"{path}: pixels must be 0..255")
    return np.round(to_nchw(x)).astype(np.uint8), y.astype(np.int64)


def learnt_images(layout: Layout) -> frozenset[str]:
    """The sha256 of every image of the run's training and validation splits and transfer set (ingest's facts)."""
    facts = pd.read_csv(layout.facts, usecols=["split", "sha256"], dtype=str)
    return frozenset(facts.loc[facts["split"].isin(LEARNT_SPLITS), "sha256"])


def load(
    entries: list[EvalSet], layout: Layout, classes: list[str], shape: tuple[int, ...], *, learnt: frozenset[str]
) -> list[LoadedSet]:
    """Every set of `report.eval_sets`, read and checked, for a run of `classes` and images of `shape` (C, H, W).
    A set may not hold copies of the images whose sha256 is in `learnt` (`learnt_images`)."""
    found = []
    for index, entry in enumerate(entries):
        if entry.source == "test_split":
            test = load_dataset(layout.raw).test
            x, y = test.images[test.rows].numpy(), test.y.numpy()
        elif entry.path is None:
            x, y = built_in(index, entry, classes, shape)
        else:
            path = layout.root / entry.path
            if not inside(path, layout.user_eval_sets) or not path.exists():
                folder_name = layout.user_eval_sets.relative_to(layout.root)
                raise problem(index, entry, f"{entry.path} must exist inside {folder_name}/ (DVC tracks that folder)")
            reader = folder if entry.source == "folder" else npz
            x, y = reader(index, entry, path, classes, shape)
        copies = sum(digest in learnt for digest in image_sha256(x))
        if copies:
            raise problem(
                index,
                entry,
                f"{copies} of its {len(x)} images are copies of images of the run's training or validation split or "
                "transfer set, which the models learn from or are chosen on; remove them (the test split can be "
                "measured as source: test_split)",
            )
        if entry.paper:
            if shape[0] != 1:
                raise problem(index, entry, f"paper applies to gray images; this run's are {images.color_of(shape[0])}")
            x = digit_sets.on_grey_paper(x, entry.paper)
        found.append(LoadedSet(entry.name, entry.source, x, y))
    return found

"""The canonical dataset folder that the ingest stage writes and `distillery.data` reads, file by file."""

import hashlib

import numpy as np

IMAGES = "images.npy"  # uint8 N x C x H x W, memory-mapped by readers
LABELS = "labels.npy"  # int64, one per image (UNLABELED for an image of the transfer set)
SPLITS = "splits.npy"  # int8 split ids: the place of the split's name in SPLIT_NAMES
INFO = "info.json"  # source, class names, image shape, split sizes
FACTS = "facts.csv"  # one row of facts per image, for the validation stage

SPLIT_NAMES = ("train", "val", "test", "unlabeled")  # unlabeled: the transfer set (ingest.unlabeled_path)
UNLABELED_SPLIT = SPLIT_NAMES.index("unlabeled")
UNLABELED = -1  # the label of an image of the transfer set: only the teachers' soft targets teach it


def image_sha256(stored: np.ndarray) -> list[str]:
    """The sha256 of each image's uint8 pixels as stored (N x C x H x W): the facts' `sha256`."""
    return [hashlib.sha256(row.tobytes()).hexdigest() for row in np.ascontiguousarray(stored).reshape(len(stored), -1)]

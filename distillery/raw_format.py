"""The canonical dataset folder that the ingest stage writes and `distillery.data` reads, file by file."""

IMAGES = "images.npy"  # uint8 N x C x H x W, memory-mapped by readers
LABELS = "labels.npy"  # int64, one per image (UNLABELED for an image of the transfer set)
SPLITS = "splits.npy"  # int8 split ids: the place of the split's name in SPLIT_NAMES
INFO = "info.json"  # source, class names, image shape, split sizes
FACTS = "facts.csv"  # one row of facts per image, for the validation stage

SPLIT_NAMES = ("train", "val", "test", "unlabeled")  # unlabeled: the transfer set (ingest.unlabeled_path)
UNLABELED_SPLIT = SPLIT_NAMES.index("unlabeled")
UNLABELED = -1  # the label of an image of the transfer set: only the teachers' soft targets teach it

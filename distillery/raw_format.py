"""The canonical dataset folder that the ingest stage writes and `distillery.data` reads, file by file."""

IMAGES = "images.npy"  # uint8 N x C x H x W, memory-mapped by readers
LABELS = "labels.npy"  # int64, one per image
SPLITS = "splits.npy"  # int8 split ids: 0 train, 1 val, 2 test
INFO = "info.json"  # source, class names, image shape, split sizes
FACTS = "facts.csv"  # one row of facts per image, for the validation stage

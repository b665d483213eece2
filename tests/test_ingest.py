"""Ingest: every source lands as the same canonical arrays with a stratified, seeded split."""

import math

import numpy as np
from PIL import Image

from tasks import ingest
from tasks.config import IngestConfig
from tasks.layout import Layout


def test_digits_split_is_stratified_and_deterministic(tmp_path):
    layout = Layout(tmp_path)
    info = ingest.run(IngestConfig(source="digits", seed=3), layout)
    assert info["images"] == 1797 and info["shape"] == [1, 8, 8]
    with np.load(layout.dataset) as a:
        x, y, split = a["x"], a["y"], a["split"]
    assert x.dtype == np.float32 and 0 <= x.min() and x.max() <= 255
    assert info["n_test"] == (split == 2).sum() == math.ceil(1797 * 0.2)  # sklearn rounds the test share up
    for part in range(3):  # every class in every split, in about the same proportion
        shares = np.bincount(y[split == part], minlength=10) / (split == part).sum()
        assert np.allclose(shares, np.bincount(y) / len(y), atol=0.02)
    again = Layout(tmp_path / "again")
    ingest.run(IngestConfig(source="digits", seed=3), again)
    with np.load(again.dataset) as b:
        assert np.array_equal(b["split"], split)


def test_mnist5k_is_the_bundled_default():
    x, y, classes = ingest.mnist5k()
    assert x.shape == (5000, 1, 28, 28) and len(classes) == 10 and set(np.unique(y)) == set(range(10))


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_npz_source(tmp_path):
    rng = np.random.default_rng(0)
    path = write_npz(tmp_path / "d.npz", x=rng.integers(0, 256, (60, 6, 6, 3)).astype(np.uint8),
                     y=np.repeat(np.arange(3), 20))
    info = ingest.run(IngestConfig(source="npz", path=path), Layout(tmp_path))
    assert info["shape"] == [3, 6, 6] and info["images"] == 60


def test_npz_folder_joins_shards_in_name_order_relative_to_the_root(tmp_path):
    shards = tmp_path / "data" / "source" / "batches"
    shards.mkdir(parents=True)
    x = np.arange(60 * 16).reshape(60, 4, 4) % 256
    y = np.repeat(np.arange(3), 20)
    write_npz(shards / "b.npz", x=x[30:], y=y[30:])
    write_npz(shards / "a.npz", x=x[:30], y=y[:30])
    layout = Layout(tmp_path)
    info = ingest.run(IngestConfig(source="npz", path="data/source/batches"), layout)
    assert info["images"] == 60 and info["classes"] == ["0", "1", "2"]
    with np.load(layout.dataset) as a:
        assert np.array_equal(a["x"][:, 0], x) and np.array_equal(a["y"], y)


def image_folder(root, sizes=((8, 8),) * 3, per_class=12):
    rng = np.random.default_rng(0)
    for label, size in enumerate(sizes):
        (root / f"class_{label}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (*size, 3)).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class_{label}" / f"{i}.png")
    return root


def test_image_folder_source_converts_and_resizes(tmp_path):
    root = image_folder(tmp_path / "imgs", sizes=((8, 8), (8, 8), (10, 12)))
    config = IngestConfig(source="folder", path=root, image_size=(8, 8), color="gray")
    info = ingest.run(config, Layout(tmp_path))
    assert info["classes"] == ["class_0", "class_1", "class_2"] and info["shape"] == [1, 8, 8]




def test_gray_and_rgb_images_mix_under_the_color_policy(tmp_path):
    root = image_folder(tmp_path / "imgs")
    Image.new("L", (8, 8), color=200).save(root / "class_0" / "gray.png")
    layout = Layout(tmp_path)
    info = ingest.run(IngestConfig(source="folder", path=root, color="rgb"), layout)
    assert info["shape"] == [3, 8, 8] and info["images"] == 37
    with np.load(layout.dataset) as a:
        assert any((image == 200).all() for image in a["x"])  # the gray image, its value in all 3 channels

"""Ingest: every source lands as the same canonical arrays with a stratified, seeded split."""

import math

import numpy as np
import pytest
from PIL import Image

from distillery.errors import DistilleryError
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


def test_npz_shards_must_share_one_image_shape(tmp_path):
    write_npz(tmp_path / "a.npz", x=np.zeros((4, 5, 5)), y=np.zeros(4, int))
    write_npz(tmp_path / "b.npz", x=np.zeros((4, 6, 6)), y=np.zeros(4, int))
    with pytest.raises(DistilleryError, match="b.npz holds images of shape"):
        ingest.run(IngestConfig(source="npz", path=tmp_path), Layout(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DistilleryError, match="folder without .npz files"):
        ingest.run(IngestConfig(source="npz", path="empty"), Layout(tmp_path))


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((4, 5, 5))}, "lacks array(s) y"),
    ({"x": np.zeros((4, 5, 5)), "y": np.zeros(3, int)}, "4 images but `y` has 3"),
    ({"x": np.zeros((4, 5, 5)), "y": np.zeros(4)}, "must be integers"),
    ({"x": np.zeros((4, 5)), "y": np.zeros(4, int)}, "must be (N,H,W)"),
])
def test_bad_npz_is_rejected(tmp_path, arrays, message):
    path = write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DistilleryError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ingest.run(IngestConfig(source="npz", path=path), Layout(tmp_path))
    assert not Layout(tmp_path).raw.exists()


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


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "class_1" / "3.png").write_bytes(b"not an image"), "Cannot read image"),
    (lambda r: (r / "class_1" / "3.png").write_bytes((r / "class_1" / "4.png").read_bytes()[:40]), "Cannot read image"),
    (lambda r: (r / "empty").mkdir(), "holds no PNG or JPEG"),
    (lambda r: Image.new("RGB", (5, 5)).save(r / "class_0" / "odd.png"), "set ingest.image_size"),
])
def test_bad_image_folder_is_rejected(tmp_path, damage, message):
    root = image_folder(tmp_path / "imgs")
    damage(root)
    with pytest.raises(DistilleryError, match=message):
        ingest.run(IngestConfig(source="folder", path=root), Layout(tmp_path))
    assert not Layout(tmp_path).raw.exists()

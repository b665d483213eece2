"""Ingest: every source lands as the same canonical arrays with a stratified, seeded split."""

import math
import os
import re
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distillery.data import load_dataset
from distillery.errors import DistilleryError
from distillery.images import read_image
from project.config import IngestConfig
from project.layout import Layout
from tasks import ingest


def stored(layout: Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What ingest wrote: images, labels and split ids."""
    return tuple(np.load(layout.raw / name) for name in ("images.npy", "labels.npy", "splits.npy"))


def test_digits_split_is_stratified_and_deterministic(tmp_path):
    layout = Layout(tmp_path)
    info = ingest.run(IngestConfig(source="digits", seed=3), layout)
    assert info["images"] == 1797 and info["shape"] == [1, 8, 8]
    x, y, split = stored(layout)
    assert x.dtype == np.uint8 and np.array_equal(x, ingest.digits()[0])  # digits are whole numbers 0..255
    assert info["n_test"] == (split == 2).sum() == math.ceil(1797 * 0.2)  # sklearn rounds the test share up
    for part in range(3):  # every class in every split, in about the same proportion
        shares = np.bincount(y[split == part], minlength=10) / (split == part).sum()
        assert np.allclose(shares, np.bincount(y) / len(y), atol=0.02)
    again = Layout(tmp_path / "again")
    ingest.run(IngestConfig(source="digits", seed=3), again)
    assert np.array_equal(stored(again)[2], split)


def test_mnist5k_is_the_bundled_default():
    x, y, classes = ingest.mnist5k()
    assert x.shape == (5000, 1, 28, 28) and len(classes) == 10 and set(np.unique(y)) == set(range(10))


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_npz_source(tmp_path):
    rng = np.random.default_rng(0)
    path = write_npz(
        tmp_path / "d.npz", x=rng.integers(0, 256, (60, 6, 6, 3)).astype(np.uint8), y=np.repeat(np.arange(3), 20)
    )
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
    images, labels, _ = stored(layout)
    assert np.array_equal(images[:, 0], x) and np.array_equal(labels, y)


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
    assert any((image == 200).all() for image in stored(layout)[0])  # the gray image, its value in all 3 channels


def test_npz_shards_stream_one_at_a_time(tmp_path):
    """Ingest holds one shard of pixels (and its facts) at a time, not the dataset: with 12 shards of
    3 MB of float32 pixels each, numpy's peak allocation stays well under the 36 MB they add up to."""
    shards = tmp_path / "shards"
    shards.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        write_npz(
            shards / f"{i:02d}.npz", x=rng.integers(0, 256, (750, 32, 32)).astype(np.float32), y=np.arange(750) % 10
        )
    tracemalloc.start()
    try:
        info = ingest.run(IngestConfig(source="npz", path=shards), Layout(tmp_path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info["images"] == 9000
    assert peak < 15e6, f"peak {peak / 1e6:.1f} MB"


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_a_single_large_npz_streams_in_blocks_of_rows(tmp_path, save, monkeypatch):
    """One 36 MB .npz (stored or compressed) is read a block of rows at a time, not whole: with
    2 MB blocks, numpy's peak allocation stays well under the file's size; the pixels arrive intact."""
    monkeypatch.setattr(ingest, "FACTS_BYTES", 2 * 2**20)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (9000, 32, 32)).astype(np.float32)
    save(tmp_path / "one.npz", x=x, y=np.arange(9000) % 10)
    layout = Layout(tmp_path)
    tracemalloc.start()
    try:
        info = ingest.run(IngestConfig(source="npz", path=tmp_path / "one.npz"), layout)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info["images"] == 9000 and np.array_equal(stored(layout)[0][:, 0], x)
    assert peak < 15e6, f"peak {peak / 1e6:.1f} MB"


def test_image_files_decode_in_worker_processes_in_file_order(tmp_path):
    root = image_folder(tmp_path / "imgs", per_class=ingest.DECODE_BATCH * 3)  # enough files for workers
    layout = Layout(tmp_path)
    ingest.run(IngestConfig(source="folder", path=root), layout)
    images, labels, _ = stored(layout)
    files = sorted((root / "class_1").iterdir(), key=lambda f: f.name)
    first = np.flatnonzero(labels == 1)[0]
    assert np.array_equal(images[first], read_image(files[0], "gray", None))
    assert all(np.array_equal(images[first + i], read_image(f, "gray", None)) for i, f in enumerate(files))


def test_an_unreadable_file_in_a_worker_is_named_without_its_traceback(tmp_path):
    root = image_folder(tmp_path / "imgs", per_class=ingest.DECODE_BATCH * 3)
    (root / "class_2" / "7.png").write_text("not an image")
    with pytest.raises(DistilleryError) as raised:
        ingest.run(IngestConfig(source="folder", path=root), Layout(tmp_path))
    assert str(raised.value).startswith(f"Cannot read image {root / 'class_2' / '7.png'}")
    assert "Traceback" not in str(raised.value) and not Layout(tmp_path).raw.exists()


def test_the_dataset_is_memory_mapped_not_read(tmp_path):
    """A 2 GB images.npy (a sparse file) opens without growing resident memory; a batch reads only
    its own rows."""
    raw = Layout(tmp_path).raw
    raw.mkdir(parents=True)
    n = 2_000_000
    images = np.lib.format.open_memmap(raw / "images.npy", mode="w+", dtype=np.uint8, shape=(n, 1, 32, 32))
    images[1] = 255
    del images
    np.save(raw / "labels.npy", np.arange(n) % 10)
    np.save(raw / "splits.npy", (np.arange(n) % 3).astype(np.int8))
    (raw / "info.json").write_text('{"classes": ["0","1","2","3","4","5","6","7","8","9"]}')
    before = resident_bytes()
    data = load_dataset(raw)
    x, y = data.val[torch.tensor([0, 5])]  # rows 1 and 16
    assert resident_bytes() - before < 200e6  # the 16 MB of labels and split ids, not 2 GB of images
    assert x.shape == (2, 1, 32, 32) and (x[0] == 1.0).all() and (x[1] == 0.0).all()
    assert y.tolist() == [1, 6] and len(data.train) + len(data.val) + len(data.test) == n


def resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


GRADIENT = np.tile(np.linspace(0, 255, 16).round().astype(np.uint8), (16, 1))  # 16 x 16, 0..255


def saved(path: Path, image: Image.Image) -> Path:
    image.save(path)
    return path


@pytest.mark.parametrize(
    ("mode", "suffix"),
    [
        ("L", "png"),
        ("LA", "png"),
        ("P", "png"),
        ("RGB", "png"),
        ("RGBA", "png"),
        ("RGB", "jpg"),
        ("PA", "tif"),
        ("CMYK", "tif"),
        ("YCbCr", "tif"),
    ],
)
def test_every_8_bit_pil_mode_reads_as_gray_and_rgb(tmp_path, mode, suffix):
    file = saved(tmp_path / f"g.{suffix}", Image.fromarray(GRADIENT).convert(mode))
    tolerance = 4 if suffix == "jpg" else 0  # JPEG is lossy
    for color, channels in (("gray", 1), ("rgb", 3)):
        pixels = read_image(file, color, None)
        assert pixels.shape == (channels, 16, 16) and pixels.dtype == np.uint8
        assert np.abs(pixels.astype(int) - GRADIENT).max() <= tolerance, (mode, color)


def test_1_bit_images_read_as_black_and_white(tmp_path):
    file = saved(tmp_path / "b.png", Image.fromarray(GRADIENT).point(lambda v: 255 if v >= 128 else 0).convert("1"))
    assert np.array_equal(read_image(file, "gray", None)[0], np.where(GRADIENT >= 128, 255, 0))


@pytest.mark.parametrize("suffix", ["png", "tif"])
def test_16_bit_images_scale_to_8_bits_instead_of_clipping_to_white(tmp_path, suffix):
    """A 16-bit gradient reads as the 8-bit gradient it scales to: PIL's own conversion clipped
    every value above 255 to white, and the gate then saw duplicates."""
    sixteen = GRADIENT.astype(np.uint16) * 257  # 0..65535
    file = saved(tmp_path / f"g16.{suffix}", Image.fromarray(sixteen))
    assert Image.open(file).mode.startswith("I")
    assert np.array_equal(read_image(file, "gray", None)[0], GRADIENT)
    assert np.array_equal(read_image(file, "rgb", None), np.repeat(GRADIENT[None], 3, axis=0))


def test_a_folder_of_16_bit_images_ingests_its_pixels(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    expected = []
    for label in range(3):
        (root / f"class_{label}").mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 65536, (8, 8)).astype(np.uint16)
            Image.fromarray(pixels).save(root / f"class_{label}" / f"{i:02d}.png")
            expected.append(np.round(pixels / 257))
    layout = Layout(tmp_path)
    ingest.run(IngestConfig(source="folder", path=root), layout)
    images, _, _ = stored(layout)
    assert np.array_equal(images[:, 0], np.array(expected)) and len(np.unique(images.reshape(36, -1), axis=0)) == 36


@pytest.mark.parametrize(
    ("image", "says"),
    [
        (Image.fromarray(GRADIENT.astype(np.float32) / 255), "32-bit floats"),
        (Image.fromarray(GRADIENT.astype(np.int32)), "32-bit integers"),
    ],
)
def test_pixels_without_a_known_scale_are_refused_naming_the_file(tmp_path, image, says):
    file = saved(tmp_path / "odd.tif", image)
    with pytest.raises(DistilleryError, match=f"Cannot read image {file}: .*{says}"):
        read_image(file, "gray", None)


def test_a_decompression_bomb_is_refused_naming_the_file(tmp_path, monkeypatch):
    file = saved(tmp_path / "bomb.png", Image.fromarray(GRADIENT))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 256 pixels is over twice the limit, as a bomb is
    with pytest.raises(DistilleryError, match=f"Cannot read image {file}: .*decompression bomb"):
        read_image(file, "gray", None)


@pytest.mark.parametrize(
    ("stray", "says"),
    [
        (99, "no image has label 3, 4, 5, 6, 7, ... (96 labels), yet label 99 has 2 images."),
        (-1, "label -1 (2 images) is negative."),
    ],
)
def test_a_stray_label_is_named_as_such(tmp_path, stray, says):
    y = np.repeat(np.arange(3), 10)
    y[[4, 17]] = stray
    path = write_npz(tmp_path / "d.npz", x=np.zeros((30, 5, 5), np.uint8), y=y)
    with pytest.raises(DistilleryError, match=re.escape(says)) as raised:
        ingest.run(IngestConfig(source="npz", path=path), Layout(tmp_path))
    assert str(raised.value).startswith(f"{path}: labels must number the classes 0..K-1")
    assert not Layout(tmp_path).raw.exists()


def test_an_npz_damaged_after_its_header_is_named(tmp_path):
    path = tmp_path / "d.npz"
    x = np.random.default_rng(0).integers(0, 256, (30, 16, 16)).astype(np.uint8)
    np.savez_compressed(path, x=x, y=np.repeat(np.arange(3), 10))
    with zipfile.ZipFile(path) as archive:
        member = archive.getinfo("x.npy")
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[member.header_offset + 26 : member.header_offset + 30])
    middle = member.header_offset + 30 + name_length + extra_length + member.compress_size // 2
    data[middle : middle + 64] = bytes(64)  # the pixels' compressed stream, well past the array header
    path.write_bytes(bytes(data))
    with pytest.raises(DistilleryError, match=f"{path} is not a readable .npz file"):
        ingest.run(IngestConfig(source="npz", path=path), Layout(tmp_path))
    assert not Layout(tmp_path).raw.exists()

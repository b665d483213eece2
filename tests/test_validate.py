"""Validation gate: good data passes; each kind of bad data fails naming the expectation,
Data Docs are written either way, and training refuses to start after a failure."""

import json
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from distillery.errors import DistilleryError
from project.artifacts import require_valid
from project.config import AugmentConfig, IngestConfig, TeachersConfig, ValidateConfig
from project.layout import Layout
from tasks import ingest, train_teachers, validate


@contextmanager
def labels_unchecked() -> Iterator[None]:
    """Ingest without its own label check (tested in test_ingest), so that stray labels reach the gate,
    the second line of defence for data in data/raw/ however it got there."""
    check = ingest.check_labels
    ingest.check_labels = lambda y, where: None
    try:
        yield
    finally:
        ingest.check_labels = check


def ingest_npz(tmp_path, x, y) -> Layout:
    np.savez(tmp_path / "d.npz", x=x, y=y)
    layout = Layout(tmp_path)
    with labels_unchecked():
        ingest.run(IngestConfig(source="npz", path=tmp_path / "d.npz"), layout)
    return layout


def clean_data(n_per_class=40, classes=3):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (n_per_class * classes, 6, 6)).astype(np.float32)
    return x, np.repeat(np.arange(classes), n_per_class)


def test_clean_data_passes_and_docs_are_built(tmp_path):
    layout = ingest_npz(tmp_path, *clean_data())
    summary = validate.run(ValidateConfig(), layout)
    assert summary["success"] and (layout.data_docs / "index.html").exists()
    require_valid(layout)


def leak(x, y):
    x[1] = x[0]  # the same image twice; the split will usually put them apart
    return x, y


def nan_pixels(x, y):
    x[5, 2, 2] = np.nan
    return x, y


def out_of_range(x, y):
    x[7, 0, 0] = 300
    return x, y


def starve_class(x, y):
    keep = np.r_[np.flatnonzero(y != 2), np.flatnonzero(y == 2)[:8]]
    return x[keep], y[keep]


def label_gap(x, y):
    return x, np.where(y == 2, 3, y)


@pytest.mark.parametrize(
    "corrupt, expectation",
    [
        (leak, "expect_column_values_to_be_unique(sha256)"),
        (nan_pixels, "expect_column_values_to_be_in_set(non_finite)"),
        (out_of_range, "expect_column_values_to_be_between(pixel_max)"),
        (starve_class, "expect_column_values_to_be_between(n_images)"),
        (
            label_gap,
            "classes: a class with fewer images than validate.min_images_per_class — "
            "expect_column_values_to_be_between(n_images)",
        ),
    ],
)
def test_bad_data_fails_naming_the_expectation(tmp_path, corrupt, expectation):
    layout = ingest_npz(tmp_path, *corrupt(*clean_data()))
    with pytest.raises(DistilleryError, match="Data validation failed") as info:
        validate.run(ValidateConfig(), layout)
    assert expectation in str(info.value)
    summary = json.loads(layout.validation_summary.read_text())
    assert not summary["success"] and (layout.data_docs / "index.html").exists()
    with pytest.raises(DistilleryError, match="failed validation"):
        train_teachers.run(TeachersConfig(epochs=1), AugmentConfig(), layout)
    assert not layout.teachers.exists()


def test_imbalance_bound(tmp_path):
    x, y = clean_data(n_per_class=40)
    keep = np.r_[np.flatnonzero(y != 1), np.flatnonzero(y == 1)[:25]]
    layout = ingest_npz(tmp_path, x[keep], y[keep])
    with pytest.raises(DistilleryError, match=r"share_of_largest"):
        validate.run(ValidateConfig(max_class_imbalance=1.5), layout)
    assert validate.run(ValidateConfig(max_class_imbalance=2.0), layout)["success"]

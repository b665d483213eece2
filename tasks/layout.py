"""Where every stage reads and writes, relative to a project root: the one place for paths."""

from dataclasses import dataclass
from pathlib import Path


def under_root(*parts: str) -> property:
    return property(lambda self: self.root.joinpath(*parts))


@dataclass(frozen=True)
class Layout:
    root: Path

    params = under_root("params.yaml")
    data = under_root("data")
    raw = under_root("data", "raw")
    images = under_root("data", "raw", "images.npy")
    facts = under_root("data", "raw", "facts.csv")
    dataset_info = under_root("data", "raw", "info.json")
    validation = under_root("data", "validation")
    validation_summary = under_root("data", "validation", "summary.json")
    data_docs = under_root("data", "validation", "docs")
    teachers = under_root("data", "models", "teachers")
    student = under_root("data", "models", "student")
    pruned = under_root("data", "models", "pruned")
    qat = under_root("data", "models", "qat")
    export = under_root("data", "export")
    reports = under_root("data", "reports")
    metrics = under_root("data", "reports", "metrics.json")
    published = under_root("data", "published.json")
    lock = under_root(".distillery", "run.lock")

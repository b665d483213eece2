"""Where every stage reads and writes, relative to a project root: the one place for paths."""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def raw(self) -> Path:
        return self.data / "raw"

    @property
    def dataset(self) -> Path:
        return self.raw / "dataset.npz"

    @property
    def facts(self) -> Path:
        return self.raw / "facts.csv"

    @property
    def validation(self) -> Path:
        return self.data / "validation"

    @property
    def validation_summary(self) -> Path:
        return self.validation / "summary.json"

    @property
    def data_docs(self) -> Path:
        return self.validation / "docs"

    @property
    def teachers(self) -> Path:
        return self.data / "models" / "teachers"

    @property
    def student(self) -> Path:
        return self.data / "models" / "student"

    @property
    def pruned(self) -> Path:
        return self.data / "models" / "pruned"

    @property
    def qat(self) -> Path:
        return self.data / "models" / "qat"

    @property
    def export(self) -> Path:
        return self.data / "export"

    @property
    def reports(self) -> Path:
        return self.data / "reports"

    @property
    def metrics(self) -> Path:
        return self.reports / "metrics.json"

"""Keeps DVC in step with flow runs: DVC decides which stages are stale, and records what ran."""

from contextlib import chdir
from pathlib import Path

import yaml

from distillery.errors import DistilleryError


class DvcTracker:
    """`dvc status` and `dvc commit` for single stages, through DVC's Python API."""

    def __init__(self, root: Path):
        from dvc.repo import Repo

        self.repo = Repo(str(root))

    @classmethod
    def for_root(cls, root: Path) -> "DvcTracker | None":
        """A tracker when `root` is a DVC project with a dvc.yaml, else None (then every stage runs)."""
        if (root / ".dvc").is_dir() and (root / "dvc.yaml").is_file():
            return cls(root)
        return None

    def stage_names(self) -> list[str]:
        return list(yaml.safe_load((Path(self.repo.root_dir) / "dvc.yaml").read_text())["stages"])

    def is_fresh(self, stage: str) -> bool:
        """True when the stage's deps, params and outs match dvc.lock (nothing to rerun)."""
        with chdir(self.repo.root_dir):  # DVC resolves some paths against the working directory
            return not self.repo.status(targets=[stage])

    def commit(self, stage: str) -> None:
        """Record the stage's current deps and outs in dvc.lock and the cache, as `dvc repro` would."""
        with chdir(self.repo.root_dir):
            self.repo.commit(stage, force=True)

    def update_import(self, path: Path) -> bool | None:
        """`dvc update` the DVC import at `path` (e.g. an S3 prefix brought in with `dvc import-url`):
        True when new or changed data arrived, False when none did, None when `path` is no import."""
        from dvc.exceptions import DvcException

        dvcfile = path.with_name(path.name + ".dvc")
        if not dvcfile.is_file() or not yaml.safe_load(dvcfile.read_text()).get("deps"):
            return None
        before = dvcfile.read_text()
        with chdir(self.repo.root_dir):
            try:
                self.repo.update([str(dvcfile)])
            except DvcException as e:
                raise DistilleryError(f"dvc update {dvcfile} (the ingest source) failed: {e}") from e
        return dvcfile.read_text() != before

    def push(self) -> int:
        """`dvc push`: send data and checkpoints to the default remote (the S3 store)."""
        from dvc.exceptions import DvcException

        with chdir(self.repo.root_dir):
            try:
                return self.repo.push()
            except DvcException as e:
                raise DistilleryError(f"dvc push to the default remote failed: {e}") from e

    def close(self) -> None:
        self.repo.close()

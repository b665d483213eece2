"""Atomic writes (an output appears complete or not at all), JSON files, file hashes, the workspace lock, and
whether a user's file is where DVC tracks it."""

import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from distillery.errors import DistilleryError

CANNOT_WRITE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


@contextmanager
def explain_write_failures(final: Path) -> Iterator[None]:
    """A full disk, a file-size limit or a read-only folder becomes one clear error naming `final`."""
    try:
        yield
    except OSError as e:
        if e.errno not in CANNOT_WRITE:
            raise
        raise DistilleryError(
            f"Cannot write {final}: {e.strerror} ({e.filename or final}). Nothing was replaced: any earlier "
            "output there is intact. Free disk space or make the folder writable, then rerun."
        ) from e


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a staging folder beside `final`; on success it replaces `final` in one rename.
    Staging folders left by a killed run (one run holds the workspace at a time) are removed first."""
    with explain_write_failures(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        for stale in final.parent.glob(f".{final.name}.*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        staging.chmod(0o755)
        try:
            yield staging
            if final.exists():
                trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
                os.replace(final, trash / final.name)
                os.replace(staging, final)
                shutil.rmtree(trash)
            else:
                os.replace(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success it is renamed onto `final`."""
    with explain_write_failures(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", dir=final.parent)
        os.close(fd)
        os.chmod(name, 0o644)
        tmp = Path(name)
        try:
            yield tmp
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def inside(path: Path, folder: Path) -> bool:
    """Whether `path` is in `folder` as written, `..` resolved: a link there may point elsewhere, as DVC-tracked
    files often do."""
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


@contextmanager
def exclusive_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` for the block, or fail at once naming the holder.
    The operating system drops the lock when its process ends, so a killed run leaves none behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise DistilleryError(
                f"{what} is busy: {holder} holds {path}. Wait for that run to end, or stop "
                "it; two runs at once would overwrite each other's outputs."
            ) from None
        f.truncate(0)
        f.write(f"run pid {os.getpid()} started {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)

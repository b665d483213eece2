"""`distillery predict`: classify image files with a packaged model (a local file, the current run's, or a
published version, downloaded once into a cache and checked against its manifest sha256). Images are decoded in
worker processes while the model classifies the batches decoded before, and converted to the colour and size the
model's metadata asks for."""

import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from distillery import images, model_package
from distillery.errors import DistilleryError
from distillery.files import file_digest
from project.layout import PACKAGED_MODEL, Layout
from project.store import ArtifactStore, S3Settings, check_name

PROGRESS_FROM = 1000  # images: from this many, a progress bar (on a terminal)
PARALLEL_FROM = 64  # images: from this many, decoded by worker processes (starting them costs more below)


@dataclass(frozen=True)
class Predictions:
    files: list[Path]
    probabilities: np.ndarray  # N x classes
    converted: int  # images that were converted or resized to the model's input

    def top(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The `k` most probable classes of each image, best first, and their probabilities."""
        order = np.argsort(-self.probabilities, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(self.probabilities, order, axis=1)


def cache_dir() -> Path:
    """Where published models are kept once downloaded: DISTILLERY_CACHE, else the user's cache folder."""
    if "DISTILLERY_CACHE" in os.environ:
        return Path(os.environ["DISTILLERY_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "distillery"


def cached_copy(path: Path) -> Path | None:
    """`path` if it is there and still has the sha256 recorded beside it when it was downloaded."""
    digest = path.with_name(path.name + ".sha256")
    if path.exists() and digest.exists() and file_digest(path) == digest.read_text().strip():
        return path
    return None


def published_model(name: str, version: str | None, cache: Path) -> Path:
    """The packaged model of version `version` (None: the latest) of `name` in the S3 store, from `cache` when it
    was downloaded before (a named version is then not looked up at all)."""
    check_name("model name", name)
    found = cached_copy(cache / "models" / name / check_name("version", version) / PACKAGED_MODEL) if version else None
    if found:
        return found
    settings = S3Settings.from_env()
    if not settings.configured:
        raise DistilleryError(
            f"No S3 store is configured to fetch {name} from: run `make up`, or set DISTILLERY_BUCKET and the AWS "
            "settings (AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY); or pass a local .onnx file."
        )
    store = ArtifactStore(settings)
    version = version or store.latest(name)
    dest = cache / "models" / name / version / PACKAGED_MODEL
    if not cached_copy(dest):
        digest = store.download_file(name, version, PACKAGED_MODEL, dest)
        dest.with_name(dest.name + ".sha256").write_text(digest)
    return dest


def resolve_model(spec: str | None, root: Path) -> Path:
    """The model file `--model` names: a local .onnx file, the run in `root` (none given), or NAME[@VERSION]."""
    if spec is None:
        path = Layout(root).packaged_model
        if not path.exists():
            raise DistilleryError(
                f"{root} has no packaged model ({path} is missing): run the pipeline first (`make run` or "
                "`distillery run`), or name a model with --model (a .onnx file, or NAME[@VERSION] from the store)."
            )
        return path
    if spec.endswith(".onnx"):
        if not Path(spec).is_file():
            raise DistilleryError(f"--model {spec}: there is no such file.")
        return Path(spec)
    name, _, version = spec.partition("@")
    return published_model(name, version or None, cache_dir())


def decode(job: tuple[Path, str, tuple[int, int]]) -> tuple[np.ndarray, bool] | DistilleryError:
    """One image as the model takes it (H x W x C) and whether it was converted; its error if it cannot be read
    (raised by the main process: a worker's exception would carry the worker's traceback)."""
    try:
        return images.decode(*job)
    except DistilleryError as e:
        return e


def decoded(files: list[Path], spec: model_package.InputSpec) -> Iterator[tuple[np.ndarray, bool]]:
    """Each file's pixels and whether they were converted, in order; decoded by worker processes for many."""
    if spec.color not in images.COLOR_MODES:
        raise DistilleryError(
            f"The model takes {spec.color} images, which image files do not give; feed it arrays with onnxruntime."
        )
    jobs = [(f, spec.color, (spec.height, spec.width)) for f in files]
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if len(files) < PARALLEL_FROM or workers == 1:
        yield from raised(map(decode, jobs))
        return
    with multiprocessing.get_context("forkserver").Pool(workers) as pool:  # not forked from onnxruntime's threads
        yield from raised(pool.imap(decode, jobs, chunksize=16))


def raised(results: Iterator) -> Iterator[tuple[np.ndarray, bool]]:
    for result in results:
        if isinstance(result, DistilleryError):
            raise result
        yield result


def classify(model: model_package.PackagedModel, files: list[Path], *, batch_size: int) -> Predictions:
    """Every file's class probabilities, `batch_size` images per run of the model, with a progress bar for many."""
    from tqdm import tqdm

    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    found, batch, converted = [], [], 0
    with tqdm(total=len(files), unit="image", disable=None if len(files) >= PROGRESS_FROM else True) as bar:
        for i, (pixels, changed) in enumerate(decoded(files, model.input)):
            batch.append(pixels)
            converted += changed
            if len(batch) == batch_size or i == len(files) - 1:
                found.append(session.run([model_package.PROBABILITIES], {model_package.INPUT: np.stack(batch)})[0])
                bar.update(len(batch))
                batch = []
    probabilities = np.concatenate(found) if found else np.zeros((0, len(model.classes)), np.float32)
    return Predictions(files=files, probabilities=probabilities, converted=converted)

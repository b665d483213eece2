"""`distillery predict`: classify image files with a packaged model (a local file, the current run's, or a
published version, downloaded once into a cache and checked against its manifest sha256). Images are decoded in
worker processes while the model classifies the batches decoded before, and converted to the colour and size the
model's metadata asks for."""

import multiprocessing
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from distillery import images, model_package
from distillery.errors import DistilleryError
from distillery.files import file_digest
from project.layout import MODEL_CARD, PACKAGED_MODEL, Layout
from project.store import ArtifactStore, S3Settings, check_name

PROGRESS_FROM = 1000  # images: from this many, a progress bar (on a terminal)
PARALLEL_FROM = 64  # images: from this many, decoded by worker processes (starting them costs more below)
DECODE_BATCH = 64  # images a worker decodes at a time, handed back as one array (each image alone cost more)


@dataclass(frozen=True)
class Predictions:
    files: list[Path]
    probabilities: np.ndarray  # N x classes
    labels: np.ndarray  # N: the model's class (argmax of its logits)
    converted: int  # images that were converted or resized to the model's input

    def top(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The `k` most probable classes of each image, the model's class first (two classes whose logits differ
        may get the same float32 probability), and their probabilities."""
        ranked = np.argsort(-self.probabilities, axis=1, kind="stable")
        others = ranked[ranked != self.labels[:, None]].reshape(len(ranked), -1)
        order = np.concatenate([self.labels[:, None], others], axis=1)[:, :k]
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
    store.entry(name, version, MODEL_CARD)  # published with a packaged model: one without a card has a bare one
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


@dataclass(frozen=True)
class Batch:
    """Image files to decode together as the model takes them."""

    files: list[Path]
    spec: model_package.InputSpec


def decode(batch: Batch) -> tuple[np.ndarray, int] | DistilleryError:
    """The batch's images as one N x H x W x C array and how many were converted; or the error of the first that
    cannot be read (raised by the main process: a worker's exception would carry the worker's traceback)."""
    spec = batch.spec
    try:
        decoded = [images.decode(f, spec.color, (spec.height, spec.width), spec.resample) for f in batch.files]
    except DistilleryError as e:
        return e
    return np.stack([pixels for pixels, _ in decoded]), sum(converted for _, converted in decoded)


@contextmanager
def decoded_batches(
    files: list[Path], spec: model_package.InputSpec, size: int, *, workers: int
) -> Iterator[Iterator[tuple[np.ndarray, int]]]:
    """The files' pixels, `size` images at a time, in order, with how many of each batch were converted; for many
    files and more than one worker, decoded by that many worker processes, forked here: enter this before opening
    an onnxruntime session or starting a thread, which a fork would copy."""
    if spec.color not in images.COLOR_MODES:
        raise DistilleryError(
            f"The model takes {spec.color} images, which image files do not give; feed it arrays with onnxruntime."
        )
    batches = [Batch(files[i : i + size], spec) for i in range(0, len(files), size)]
    if len(files) < PARALLEL_FROM or workers == 1:
        yield raised(map(decode, batches))
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield raised(pool.imap(decode, batches))


def raised(results: Iterator) -> Iterator[tuple[np.ndarray, int]]:
    for result in results:
        if isinstance(result, DistilleryError):
            raise result
        yield result


def session(path: Path) -> ort.InferenceSession:
    """The CPU session that classifies: its idle threads do not spin, which took the CPU from decoding between
    batches (10,000 28x28 images took 2.0 s instead of 1.2)."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def classify(model: model_package.PackagedModel, files: list[Path], *, batch_size: int) -> Predictions:
    """Every file's class probabilities and class, `batch_size` images per run of the model (decoded
    DECODE_BATCH at a time, or fewer), with a progress bar for many."""
    from tqdm import tqdm

    probabilities, labels, pending, converted = [], [], [], 0
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with decoded_batches(files, model.input, min(DECODE_BATCH, batch_size), workers=workers) as batches:
        classifier = session(model.path)
        show = None if len(files) >= PROGRESS_FROM else True  # None: on a terminal
        with tqdm(total=len(files), unit="image", disable=show) as bar:
            for pixels, changed in batches:
                pending.append(pixels)
                converted += changed
                waiting = np.concatenate(pending)
                done = sum(map(len, labels)) + len(waiting) == len(files)
                while len(waiting) >= batch_size or (done and len(waiting)):
                    batch, waiting = waiting[:batch_size], waiting[batch_size:]
                    outputs = [model_package.PROBABILITIES, model_package.LABEL]
                    p, label = classifier.run(outputs, {model_package.INPUT: batch})
                    probabilities.append(p)
                    labels.append(label)
                    bar.update(len(batch))
                pending = [waiting]
    if not labels:
        return Predictions(files, np.zeros((0, len(model.classes)), np.float32), np.zeros(0, np.int64), converted)
    return Predictions(files, np.concatenate(probabilities), np.concatenate(labels), converted)

"""`distillery predict` end to end: image files classified as the packaged model classifies their pixels, from the
current run, a local file or the real S3 store (downloaded once, verified, cached); converted images said so once;
bad inputs as one paragraph and exit code 2, with nothing on stdout."""

import csv
import fcntl
import io
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from distillery import images, model_package
from distillery.files import file_digest
from project.layout import Layout
from project.predict import PARALLEL_FROM, Predictions, classify, decoded_batches
from project.store import ArtifactStore, S3Settings
from tasks import ingest, publish
from tests.conftest import ROOT, venv_env


def first_test_images(layout: Layout, count: int) -> np.ndarray:
    """The first `count` test images as ingest stored them (uint8 N x H x W, gray)."""
    return np.load(layout.images)[np.load(layout.splits) == 2][:count, 0]


def digit_images(count: int) -> np.ndarray:
    """The first `count` of scikit-learn's 8x8 digits as uint8 gray images (N x H x W), as ingest reads them."""
    return ingest.digits()[0][:count, 0].astype(np.uint8)


def write_pngs(pixels: np.ndarray, folder: Path) -> list[Path]:
    """One PNG per image, half of them in a sub-folder (folders are searched to any depth)."""
    files = []
    for i, image in enumerate(pixels):
        path = folder / ("nested" if i % 2 else "") / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        files.append(path)
    return files


def predict(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cli", "predict", *args]
    return subprocess.run(command, cwd=ROOT, env=env or venv_env(), capture_output=True, text=True, timeout=300)


def model_labels(model: Path, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the packaged model gives gray images (N x H x W): probabilities and labels."""
    return ort.InferenceSession(str(model)).run(None, {"images": pixels[..., None]})


@pytest.mark.e2e  # runs `distillery predict`
def test_predict_classifies_a_folder_as_the_model_classifies_its_pixels(packaged, tmp_path):
    pixels = digit_images(80)  # enough to be decoded by worker processes
    files = write_pngs(pixels, tmp_path / "images")
    probabilities, labels = model_labels(packaged.packaged_model, pixels)
    assert len(set(labels)) >= 8  # the images get many classes: a mix-up of rows or classes would show

    result = predict(str(tmp_path / "images"), "--root", str(packaged.root), "--format", "json", "--top-k", "3")
    assert result.returncode == 0, result.stderr
    found = {Path(item["image"]): item["predictions"] for item in json.loads(result.stdout)}
    assert set(found) == set(files) and "note:" not in result.stderr  # the images were already 8x8 gray
    for file, label, p in zip(files, labels, probabilities, strict=True):
        top = found[file]
        assert [t["index"] for t in top][0] == label and top[0]["class"] == str(label)
        assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
        assert top[0]["probability"] == pytest.approx(float(p.max()), abs=1e-6) and len(top) == 3

    result = predict(str(files[0]), str(files[1]), "--model", str(packaged.packaged_model), "--format", "csv")
    assert list(csv.DictReader(io.StringIO(result.stdout))) == [
        {"image": str(f), "class": str(label), "probability": f"{p.max():.4f}"}
        for f, label, p in zip(files[:2], labels[:2], probabilities[:2], strict=True)
    ]
    table = predict(str(files[0]), "--root", str(packaged.root)).stdout.splitlines()
    assert table[0].split() == ["image", "class", "probability"] and table[1].split()[:2] == [
        str(files[0]),
        str(labels[0]),
    ]


@pytest.mark.e2e  # runs `distillery predict`
def test_predict_converts_colour_and_size_as_the_metadata_asks_and_says_so_once(packaged, tmp_path):
    pixels = digit_images(20)
    folder = tmp_path / "rgb"
    folder.mkdir()
    for i, image in enumerate(pixels):  # 24x24 colour images: red, green and blue each a different picture
        big = np.asarray(Image.fromarray(image).resize((24, 24)))
        rgb = np.stack([big, np.roll(big, 3, axis=1), 255 - big], axis=-1)
        Image.fromarray(rgb, "RGB").save(folder / f"{i:02d}.png")

    def shrunk(channel: str | None, resample: Image.Resampling) -> np.ndarray:
        """The images as gray (or one `channel` of them) at 8x8 through `resample`."""
        found = []
        for i in range(20):
            image = Image.open(folder / f"{i:02d}.png")
            gray = image.convert("L") if channel is None else image.getchannel(channel)
            found.append(np.asarray(gray.resize((8, 8), resample)))
        return np.stack(found)

    expected, _ = model_labels(packaged.packaged_model, shrunk(None, Image.Resampling.BICUBIC))
    wrong_ways = [  # what a converter that took one channel, or resized with another filter, would give
        *(shrunk(channel, Image.Resampling.BICUBIC) for channel in "RGB"),
        shrunk(None, Image.Resampling.NEAREST),
    ]
    result = predict(str(folder), "--root", str(packaged.root), "--format", "json")
    assert result.returncode == 0, result.stderr
    found = np.array([item["predictions"][0]["probability"] for item in json.loads(result.stdout)])
    assert found == pytest.approx(expected.max(axis=1), abs=1e-6)
    for wrong in wrong_ways:  # each would have shown
        assert not np.allclose(model_labels(packaged.packaged_model, wrong)[0].max(axis=1), found, atol=1e-6)
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert notes == [
        "note: 20 of 20 images converted to gray and/or resized to 8x8 (bicubic), as model.onnx's metadata asks"
    ]


RECORDED_PIDS: Path | None = None  # where decode_recording_its_process writes the id of each process it runs in


def decode_recording_its_process(*args, **kwargs):
    """images.decode, a little slower (so that every worker gets images), noting the process it ran in."""
    time.sleep(0.01)
    with RECORDED_PIDS.open("a") as f:
        f.write(f"{os.getpid()}\n")
    return DECODE(*args, **kwargs)


DECODE = images.decode


@pytest.fixture
def decoding_recorded(tmp_path, monkeypatch) -> Path:
    """The file that images.decode, in this process and the workers it forks, adds its process id to."""
    global RECORDED_PIDS
    RECORDED_PIDS = tmp_path / "pids"
    monkeypatch.setattr(images, "decode", decode_recording_its_process)  # forked workers inherit it
    return RECORDED_PIDS


@pytest.mark.parametrize("workers", [1, 2])
def test_many_images_are_decoded_by_worker_processes(workers, packaged, tmp_path, decoding_recorded):
    files = sorted(write_pngs(digit_images(PARALLEL_FROM), tmp_path / "images"))
    spec = model_package.read(packaged.packaged_model).input
    with decoded_batches(files, spec, 16, workers=workers) as batches:
        decoded = np.concatenate([pixels for pixels, _ in batches])
    assert decoded[..., 0] == pytest.approx(np.stack([np.asarray(Image.open(f)) for f in files]))  # in order
    pids = decoding_recorded.read_text().split()
    assert len(pids) == len(files)
    if workers == 1:
        assert set(pids) == {str(os.getpid())}
    else:
        assert str(os.getpid()) not in pids and len(set(pids)) == workers


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one CPU: nothing to decode in parallel with")
def test_predict_decodes_in_as_many_workers_as_it_may_use_cpus(packaged, tmp_path, decoding_recorded):
    files = sorted(write_pngs(digit_images(PARALLEL_FROM), tmp_path / "images"))
    pinned = os.sched_getaffinity(0)  # a pytest-xdist worker runs on its share of the CPUs
    os.sched_setaffinity(0, range(os.cpu_count()))
    try:
        found = classify(model_package.read(packaged.packaged_model), files, batch_size=16)
    finally:
        os.sched_setaffinity(0, pinned)
    pids = decoding_recorded.read_text().split()
    assert len(found.labels) == len(files) and str(os.getpid()) not in pids and len(set(pids)) >= 2


@pytest.mark.e2e  # runs `distillery predict`
def test_a_large_folder_gets_a_progress_bar_on_a_terminal(packaged, tmp_path):
    files = write_pngs(np.resize(digit_images(10), (1000, 8, 8)), tmp_path / "images")
    command = [sys.executable, "-m", "cli", "predict", str(tmp_path / "images"), "--root", str(packaged.root)]
    terminal, stderr = pty.openpty()
    fcntl.ioctl(stderr, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # rows, columns: a bar needs width
    result = subprocess.run(command, cwd=ROOT, env=venv_env(), stdout=subprocess.PIPE, stderr=stderr, timeout=300)
    os.close(stderr)
    shown = b""
    while True:
        try:
            chunk = os.read(terminal, 65536)
        except OSError:  # the terminal's other end is closed: all was read
            break
        if not chunk:
            break
        shown += chunk
    os.close(terminal)
    assert result.returncode == 0 and len(result.stdout.decode().splitlines()) == len(files) + 1
    assert b"1000/1000" in shown and b"image/s" in shown
    quiet = predict(str(tmp_path / "images"), "--root", str(packaged.root))  # stderr not a terminal: no bar
    assert "1000/1000" not in quiet.stderr


@pytest.mark.e2e  # runs `distillery predict`
def test_predict_resizes_with_the_filter_the_metadata_names_and_runs_the_batch_size_asked(packaged, tmp_path):
    model = onnx.load(str(packaged.packaged_model))
    props = {p.key: p.value for p in model.metadata_props}
    spec = json.loads(props["input"]) | {"resample": "nearest"}
    onnx.helper.set_model_props(model, props | {"input": json.dumps(spec)})
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 5  # a model that takes batches of 5 alone
    onnx.save(model, str(tmp_path / "nearest.onnx"))
    folder = tmp_path / "big"
    folder.mkdir()
    for i, image in enumerate(digit_images(70)):  # 13x13: bicubic and nearest give other pixels
        Image.fromarray(image).resize((13, 13), Image.Resampling.BICUBIC).save(folder / f"{i:02d}.png")
    shrunk = np.stack(
        [np.asarray(Image.open(folder / f"{i:02d}.png").resize((8, 8), Image.Resampling.NEAREST)) for i in range(70)]
    )
    probabilities = np.concatenate(
        [model_labels(tmp_path / "nearest.onnx", shrunk[i : i + 5])[0] for i in range(0, 70, 5)]
    )
    result = predict(str(folder), "--model", str(tmp_path / "nearest.onnx"), "--format", "json", "--batch-size", "5")
    assert result.returncode == 0, result.stderr
    found = [item["predictions"][0]["probability"] for item in json.loads(result.stdout)]
    assert found == pytest.approx(probabilities.max(axis=1).tolist(), abs=1e-6)
    other = predict(str(folder), "--model", str(tmp_path / "nearest.onnx"), "--batch-size", "7")
    assert other.returncode != 0 and "Got: 7 Expected: 5" in other.stderr  # batches of 7: the model refuses them


def test_the_top_classes_start_with_the_models_class_when_probabilities_tie():
    tied = Predictions([Path("a.png")], np.array([[0.5, 0.5, 0.0]], np.float32), np.array([1]), converted=0)
    order, probabilities = tied.top(2)
    assert order.tolist() == [[1, 0]] and probabilities.tolist() == [[0.5, 0.5]]


@pytest.mark.e2e  # runs `distillery predict`
def test_a_damaged_model_file_is_one_paragraph(packaged, tmp_path):
    files = write_pngs(digit_images(1), tmp_path)
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert "onnxruntime cannot load" in one_paragraph(predict(str(files[0]), "--model", str(tmp_path / "empty.onnx")))


def one_paragraph(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    return result.stderr


@pytest.mark.e2e  # runs `distillery predict`
def test_an_unreadable_image_is_named_and_nothing_is_printed(packaged, tmp_path):
    write_pngs(digit_images(70), tmp_path / "images")
    (tmp_path / "images" / "nested" / "broken.png").write_text("not a picture")
    message = one_paragraph(predict(str(tmp_path / "images"), "--root", str(packaged.root)))
    assert f"Cannot read image {tmp_path / 'images' / 'nested' / 'broken.png'}" in message


@pytest.mark.e2e  # runs `distillery predict`
def test_a_model_without_distillerys_metadata_is_refused(packaged, tmp_path):
    files = write_pngs(digit_images(1), tmp_path)
    message = one_paragraph(predict(str(files[0]), "--model", str(packaged.onnx("pruned"))))
    assert "pruned.onnx is an ONNX model without Distillery's metadata" in message


@pytest.mark.e2e  # runs `distillery predict`
def test_a_missing_run_or_path_is_named(packaged, tmp_path):
    files = write_pngs(digit_images(1), tmp_path)
    assert "has no packaged model" in one_paragraph(predict(str(files[0]), "--root", str(tmp_path)))
    message = one_paragraph(predict(str(tmp_path / "nowhere.png"), "--root", str(packaged.root)))
    assert "nowhere.png does not exist" in message


def test_predict_fetches_a_published_version_once_verified_and_then_runs_from_the_cache(staged, s3_env, tmp_path):
    receipt = publish.upload("predict-test", staged, version="v1")
    files = write_pngs(first_test_images(staged, 4), tmp_path / "images")
    cache = tmp_path / "cache"
    env = venv_env() | {"DISTILLERY_CACHE": str(cache), "AWS_MAX_ATTEMPTS": "1"}
    first = predict(str(tmp_path / "images"), "--model", "predict-test", "--format", "json", env=env)  # the latest
    assert first.returncode == 0, first.stderr
    cached = cache / "models" / "predict-test" / "v1" / "model.onnx"
    entry = ArtifactStore(S3Settings.from_env()).entry("predict-test", receipt["version"], "model.onnx")
    assert file_digest(cached) == entry["sha256"]
    _, labels = model_labels(cached, first_test_images(staged, 4))
    assert [item["predictions"][0]["index"] for item in json.loads(first.stdout)] == [
        int(labels[files.index(f)]) for f in sorted(files)
    ]

    offline = env | {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}  # nothing listens there
    again = predict(str(tmp_path / "images"), "--model", "predict-test@v1", "--format", "json", env=offline)
    assert again.returncode == 0 and again.stdout == first.stdout  # a named version, cached: no store needed
    message = one_paragraph(predict(str(tmp_path / "images"), "--model", "predict-test", env=offline))
    assert "http://127.0.0.1:9" in message  # the latest version must be asked for: the store is named

    cached.write_bytes(b"tampered")  # a cached copy that changed is fetched again, and verified
    assert predict(str(tmp_path / "images"), "--model", "predict-test@v1", "--format", "json", env=env).stdout == (
        first.stdout
    )
    assert file_digest(cached) == entry["sha256"]

"""How fast `distillery predict` classifies a folder of image files, decoding included, beside the packaged model's
own throughput on images already in memory.

    python -m bench.predict --run . [--images 10000] [--repeats 3]

The run's packaged model (`data/package/model.onnx`; the package stage is run first if the run has none) and
`--images` PNG files written from its test images (repeated as often as it takes) into bench/work/predict/. Timed:
the whole command (`distillery predict --format csv`, process start and output included), and its work in this
process (`project.predict.classify`: decoding and classifying); then the packaged model alone in onnxruntime on the
decoded uint8 images, and the file it wraps on float32 ones, already converted (batches of 256; sessions opened as
`predict` opens its own). The best of `--repeats` runs each. Writes bench/results/predict.json and predict.md.
"""

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from bench import save_results
from distillery import model_package
from distillery.data import load_dataset
from distillery.machine import cpu_flags
from project import predict
from project.layout import Layout
from tasks import package
from tasks.report import git_commit

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "work" / "predict"
BATCH = 256


def write_images(layout: Layout, count: int, folder: Path) -> list[Path]:
    """`count` PNG files of the run's test images, in turn."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    test = load_dataset(layout.raw).test
    pixels = test.images[test.rows].numpy().transpose(0, 2, 3, 1)  # N x H x W x C
    files = []
    for i in range(count):
        image = pixels[i % len(pixels)]
        files.append(folder / f"{i:05d}.png")
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(files[-1])
    return files


def best_seconds(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def session_images_per_s(path: Path, images: np.ndarray, repeats: int) -> float:
    """Images per second through one onnxruntime session (as `predict` opens it), batch by batch."""
    session = predict.session(path)
    name = session.get_inputs()[0].name

    def run_all():
        for start in range(0, len(images), BATCH):
            session.run(None, {name: images[start : start + BATCH]})

    run_all()  # warm-up
    return len(images) / best_seconds(run_all, repeats)


def measure(layout: Layout, count: int, repeats: int, work: Path = WORK) -> dict:
    if not layout.packaged_model.exists():
        package.run(layout)
    files = write_images(layout, count, work / "images")
    model = model_package.read(layout.packaged_model)
    command = [sys.executable, "-m", "cli", "predict", str(work / "images"), "--model", str(model.path)]
    command += ["--format", "csv"]
    cli_s = best_seconds(lambda: subprocess.run(command, cwd=ROOT, check=True, capture_output=True), repeats)
    predictions = predict.classify(model, files, batch_size=BATCH)
    in_process_s = best_seconds(lambda: predict.classify(model, files, batch_size=BATCH), repeats)
    pixels = np.stack([np.asarray(Image.open(f)).reshape(model.input.height, model.input.width, -1) for f in files])
    wrapped = layout.onnx(model.props["wrapped_model"])
    floats = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=np.float32) / 255
    return {
        "run": str(layout.root),
        "model": model.props["wrapped_model"],
        "images": count,
        "repeats": repeats,
        "image_shape": list(pixels.shape[1:]),
        "converted": predictions.converted,
        "images_per_s": {
            "distillery_predict_command": count / cli_s,
            "classify_in_process": count / in_process_s,
            "packaged_model_uint8": session_images_per_s(model.path, pixels, repeats),
            "wrapped_model_float32": session_images_per_s(wrapped, floats, repeats),
        },
        "seconds": {"distillery_predict_command": cli_s, "classify_in_process": in_process_s},
    }


def markdown(results: dict) -> str:
    rates = results["images_per_s"]
    rows = [
        ("`distillery predict` (the command: start, decoding, classifying, CSV out)", "distillery_predict_command"),
        ("`classify` in process (decoding and classifying)", "classify_in_process"),
        ("packaged model.onnx on decoded uint8 images", "packaged_model_uint8"),
        (f"the {results['model']}.onnx it wraps on float32 images", "wrapped_model_float32"),
    ]
    return "\n".join(
        [
            f"# Predict throughput: {results['images']:,} PNG files ({'x'.join(map(str, results['image_shape']))})",
            "",
            f"git {results['git_commit']}, {results['cpu']['model']} ({results['cpu']['cores']} cores), onnxruntime "
            f"{results['onnxruntime']}; best of {results['repeats']} runs; batches of {BATCH}.",
            "",
            "| what | images/s |",
            "|---|---:|",
            *[f"| {label} | {rates[key]:,.0f} |" for label, key in rows],
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("."), help="a finished run (its project root)")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = {
        "git_commit": git_commit(ROOT),
        "cpu": cpu_flags(),
        "onnxruntime": ort.__version__,
    } | measure(Layout(args.run.resolve()), args.images, args.repeats)
    save_results("predict", results, markdown(results))


if __name__ == "__main__":
    main()

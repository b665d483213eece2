"""Cost and peak memory of the data path at 1x, 4x and 16x the default data.

    python -m bench.scale [--scales 1 4 16] [--epochs 1] [--repeats 2]

For each scale it writes that many copies of the bundled 5,000-image MNIST subset, each copy
shifted by a different offset of up to 2 pixels (so no two images are equal and validation
passes), twice: as .npz shards of 5,000 images and as an image folder of PNG files. Then it runs
the stage commands a user runs, each in its own process: ingest of either source, validate, and
train_teachers with one wide CNN for `--epochs` and no output cache (on the shards' dataset), each `--repeats` times
(this VM has slow spells: the fastest run counts, and the highest memory). Per stage: wall
seconds, microseconds per image (without the command's start) and peak memory: the largest sum,
sampled every 50 ms, of the proportional set size (PSS) of the command and its child processes
(DataLoader workers), so pages they share count once.
Writes bench/results/scale.json and scale.md.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import yaml
from PIL import Image

from bench import save_results
from project.layout import Layout
from tasks.ingest import mnist5k

ROOT = Path(__file__).resolve().parents[1]
ROWS = {  # row name: (stage command, source)
    "ingest (npz shards)": ("ingest", "npz"),
    "ingest (image folder)": ("ingest", "folder"),
    "validate": ("validate", "npz"),
    "train_teachers": ("train_teachers", "npz"),
}


def shifted_copies(scale: int):
    """(copy index, images, labels) of `scale` distinct shifted copies of mnist5k, as uint8 N x 28 x 28."""
    x, y, _ = mnist5k()
    shifts = sorted(((dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)), key=lambda s: abs(s[0]) + abs(s[1]))
    if scale > len(shifts):
        raise SystemExit(f"at most {len(shifts)} distinct copies")
    for copy, shift in enumerate(shifts[:scale]):
        yield copy, np.roll(x, shift, axis=(2, 3)).astype(np.uint8)[:, 0], y


def write_source(folder: Path, scale: int) -> int:
    """`scale` shifted copies of mnist5k as .npz shards; returns the number of images."""
    folder.mkdir(parents=True, exist_ok=True)
    images = 0
    for copy, x, y in shifted_copies(scale):
        np.savez(folder / f"copy-{copy:03d}.npz", x=x, y=y)
        images += len(y)
    return images


def write_image_folder(folder: Path, scale: int) -> None:
    """The same images as PNG files, one sub-folder per class."""
    for copy, x, y in shifted_copies(scale):
        for i, (image, label) in enumerate(zip(x, y, strict=True)):
            (folder / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / str(label) / f"{copy:03d}-{i:04d}.png")


def tree_pss(process: psutil.Process) -> int:
    """Proportional set size of a process and its descendants, in bytes. A process that ended since it
    was listed holds no memory; one this process may not read raises (the total would be too low)."""
    total = 0
    for p in (process, *process.children(recursive=True)):
        try:
            total += p.memory_full_info().pss
        except psutil.NoSuchProcess:
            pass
    return total


def run_stage(stage: str, *args: str) -> dict:
    """Run `python -m tasks.<stage> ARGS` in its own process: wall seconds and peak PSS (MB)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", f"tasks.{stage}", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    tree, peak = psutil.Process(process.pid), 0
    while not (done := os.wait4(process.pid, os.WNOHANG))[0]:
        try:
            peak = max(peak, tree_pss(tree))
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    if done[1] != 0:
        raise SystemExit(f"tasks.{stage} {' '.join(args)} failed: {process.stderr.read()}")
    return {
        "seconds": round(seconds, 2),
        "peak_mb": round(peak / 2**20, 1),
        "peak_rss_main_mb": round(done[2].ru_maxrss / 1024, 1),
    }


def startup(stage: str) -> dict:
    """The stage command's fixed cost: start Python and import it (`--help` exits after the imports);
    the fastest of three runs, as the first may read the libraries from disk."""
    return min((run_stage(stage, "--help") for _ in range(3)), key=lambda r: r["seconds"])


def workspace(root: Path, source: str, epochs: int) -> Path:
    root.mkdir(parents=True)
    Layout(root).params.write_text(
        yaml.safe_dump(
            {
                "ingest": {"source": source, "path": f"data/source/{source}"},
                "teachers": {"models": ["wide_cnn"], "epochs": epochs, "cached_views": 0},  # training only
            }
        )
    )
    return root


def repeated(repeats: int, stage: str, *args: str) -> dict:
    """The fastest of `repeats` runs, with the highest peak memory of them."""
    runs = [run_stage(stage, *args) for _ in range(repeats)]
    return {
        **min(runs, key=lambda r: r["seconds"]),
        "peak_mb": max(r["peak_mb"] for r in runs),
        "peak_rss_main_mb": max(r["peak_rss_main_mb"] for r in runs),
        "all_seconds": [r["seconds"] for r in runs],
    }


def measure(scale: int, epochs: int, repeats: int, work: Path, startups: dict) -> dict:
    roots = {source: workspace(work / f"x{scale}" / source, source, epochs) for source in ("npz", "folder")}
    images = write_source(roots["npz"] / "data" / "source" / "npz", scale)
    write_image_folder(roots["folder"] / "data" / "source" / "folder", scale)
    stages = {name: repeated(repeats, stage, "--root", str(roots[source])) for name, (stage, source) in ROWS.items()}
    for name, result in stages.items():
        stage = ROWS[name][0]
        per = images * (epochs if stage == "train_teachers" else 1)
        result["us_per_image"] = round((result["seconds"] - startups[stage]["seconds"]) / per * 1e6, 1)
    return {"images": images, "stages": stages}


def growth(results: dict) -> dict:
    """Per stage, the largest scale against 1x: cost per image and peak memory."""
    low, high = results[str(min(results["scales"]))]["stages"], results[str(max(results["scales"]))]["stages"]
    return {
        name: {
            "us_per_image": round(high[name]["us_per_image"] / low[name]["us_per_image"], 2),
            "peak_mb": round(high[name]["peak_mb"] / low[name]["peak_mb"], 2),
        }
        for name in ROWS
    }


def markdown(results: dict) -> str:
    scales = results["scales"]
    top = f"{max(scales)}x / {min(scales)}x"
    lines = [
        f"# Data path at {', '.join(f'{s}x' for s in scales)} the default data",
        "",
        f"`python -m bench.scale`, {os.cpu_count()} CPUs; train_teachers: one wide CNN, "
        f"{results['epochs']} epoch(s). Each stage is its own process, the fastest of {results['repeats']} "
        "runs; peak MB: proportional set size of the command and its workers (the highest of the runs).",
        "",
        "| stage | "
        + " | ".join(f"{s}x: s / µs per image / peak MB" for s in scales)
        + f" | {top}: µs per image / peak MB |",
        "|---|" + "---|" * (len(scales) + 1),
    ]
    for name in ROWS:
        cells = [results[str(s)]["stages"][name] for s in scales]
        ratio = results["growth"][name]
        lines.append(
            f"| {name} | "
            + " | ".join(f"{c['seconds']} / {c['us_per_image']} / {c['peak_mb']}" for c in cells)
            + f" | {ratio['us_per_image']} / {ratio['peak_mb']} |"
        )
    lines += [
        "",
        "µs per image leave out each command's start (Python and its imports, timed with `--help`): "
        + ", ".join(f"{k} {v['seconds']} s / {v['peak_mb']} MB" for k, v in results["startup"].items())
        + ". Images: "
        + ", ".join(f"{results[str(s)]['images']:,}" for s in scales)
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    work = ROOT / "bench" / "work" / "scale"
    shutil.rmtree(work, ignore_errors=True)
    startups = {stage: startup(stage) for stage in sorted({stage for stage, _ in ROWS.values()})}
    results = {"scales": args.scales, "epochs": args.epochs, "repeats": args.repeats, "startup": startups}
    for scale in args.scales:
        results[str(scale)] = measure(scale, args.epochs, args.repeats, work, startups)
        print(scale, results[str(scale)], flush=True)
    results["growth"] = growth(results)
    save_results("scale", results, markdown(results))


if __name__ == "__main__":
    main()

"""Cost and peak memory of the data path at 1x, 4x and 16x the default data.

    python -m bench.scale [--scales 1 4 16] [--epochs 1]

For each scale it writes an `npz` source of that many copies of the bundled 5,000-image MNIST
subset, each copy shifted by a different offset of up to 2 pixels (so no two images are equal and
validation passes), as shards of 5,000 images. Then it runs the stage commands a user runs,
each in its own process: ingest, validate, and train_teachers with one wide CNN for `--epochs`.
Per stage: wall seconds, microseconds per image (without the command's start) and the process's
peak resident memory.
Writes bench/results/scale.json and scale.md.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from bench import save_results
from tasks.ingest import mnist5k

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "validate", "train_teachers")


def write_source(folder: Path, scale: int) -> int:
    """`scale` shifted copies of mnist5k as .npz shards; returns the number of images."""
    x, y, _ = mnist5k()
    shifts = sorted(((dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)), key=lambda s: abs(s[0]) + abs(s[1]))
    if scale > len(shifts):
        raise SystemExit(f"at most {len(shifts)} distinct copies")
    folder.mkdir(parents=True, exist_ok=True)
    for copy, shift in enumerate(shifts[:scale]):
        shifted = np.roll(x, shift, axis=(2, 3)).astype(np.uint8)
        np.savez(folder / f"copy-{copy:03d}.npz", x=shifted[:, 0], y=y)
    return scale * len(y)


def run_stage(stage: str, *args: str) -> dict:
    """Run `python -m tasks.<stage> ARGS` in its own process: wall seconds and peak RSS (MB)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", f"tasks.{stage}", *args], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"tasks.{stage} {' '.join(args)} failed: {process.stderr.read()}")
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def startup(stage: str) -> dict:
    """The stage command's fixed cost: start Python and import it (`--help` exits after the imports);
    the faster of two runs, as the first may read the libraries from disk."""
    return min((run_stage(stage, "--help") for _ in range(2)), key=lambda r: r["seconds"])


def measure(scale: int, epochs: int, work: Path, startups: dict) -> dict:
    root = work / f"x{scale}"
    images = write_source(root / "data" / "source" / "shards", scale)
    params = {"ingest": {"source": "npz", "path": "data/source/shards"},
              "teachers": {"models": ["wide_cnn"], "epochs": epochs}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    stages = {stage: run_stage(stage, "--root", str(root)) for stage in STAGES}
    for stage, result in stages.items():
        per = images * (epochs if stage == "train_teachers" else 1)
        result["us_per_image"] = round((result["seconds"] - startups[stage]["seconds"]) / per * 1e6, 1)
    return {"images": images, "stages": stages}


def markdown(results: dict) -> str:
    scales = results["scales"]
    lines = [f"# Data path at {', '.join(f'{s}x' for s in scales)} the default data", "",
             f"`python -m bench.scale`, {os.cpu_count()} CPUs; train_teachers: one wide CNN, "
             f"{results['epochs']} epoch(s). Each stage is its own process.", "",
             "| stage | " + " | ".join(f"{s}x: s / µs per image / peak MB" for s in scales) + " |",
             "|---|" + "---|" * len(scales)]
    for stage in STAGES:
        cells = [results[str(s)]["stages"][stage] for s in scales]
        lines.append(f"| {stage} | " + " | ".join(
            f"{c['seconds']} / {c['us_per_image']} / {c['peak_rss_mb']}" for c in cells) + " |")
    lines += ["", "µs per image leave out each command's start (Python and its imports, timed with `--help`): "
              + ", ".join(f"{k} {v['seconds']} s / {v['peak_rss_mb']} MB" for k, v in results["startup"].items())
              + ". Images: " + ", ".join(f"{results[str(s)]['images']:,}" for s in scales) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    work = ROOT / "bench" / "work" / "scale"
    startups = {stage: startup(stage) for stage in STAGES}
    results = {"scales": args.scales, "epochs": args.epochs, "startup": startups}
    for scale in args.scales:
        results[str(scale)] = measure(scale, args.epochs, work, startups)
        print(scale, results[str(scale)], flush=True)
    save_results("scale", results, markdown(results))


if __name__ == "__main__":
    main()

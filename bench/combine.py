"""Each kd.combine rule on the teachers of finished runs: chosen or fitted on the validation split, measured on the
test split (accuracy, NLL, ECE), beside each teacher alone.

    python -m bench.combine --root PROJECT [--root PROJECT ...]

PROJECT: a project whose train_teachers stage has run. Writes bench/results/combine.json and combine.md.
"""

import argparse
from pathlib import Path

import torch

from bench import save_results
from distillery import calibration, combine, stats
from distillery.data import load_dataset
from distillery.machine import cpu_flags
from distillery.training import logits
from project.artifacts import load_model
from project.layout import TEACHER, Layout
from project.settings import device
from tasks.report import git_commit

ROOT = Path(__file__).resolve().parents[1]


def figures(probabilities: torch.Tensor, labels: torch.Tensor) -> dict:
    """Test accuracy with its 95% interval, NLL and ECE of class probabilities."""
    log_p = probabilities.clamp_min(1e-12).log().double().numpy()
    hits = (probabilities.argmax(dim=1) == labels).numpy()
    return {
        "accuracy": float(hits.mean()),
        "interval": stats.accuracy_interval(hits),
        "nll": calibration.nll(log_p, labels.numpy()),
        "ece": calibration.ece(log_p, labels.numpy()),
    }


def measure(project: Path) -> dict:
    """Every rule fitted on the validation split of `project`'s teachers and measured on its test split."""
    layout = Layout(project.resolve())
    data = load_dataset(layout.raw)
    teachers = {name: load_model(layout, name).to(device()).eval() for name in layout.teacher_models()}
    on = {
        split: torch.stack([logits(t, getattr(data, split), device()) for t in teachers.values()], dim=1)
        for split in ("val", "test")
    }
    rows = {}
    for place, name in enumerate(teachers):
        rows[name.removeprefix(TEACHER)] = figures(torch.softmax(on["test"][:, place], dim=1), data.test.y)
    for rule in combine.RULES:
        combination = combine.choose(rule, on["val"], data.val.y)
        rows[rule] = figures(combination.probabilities(on["test"]), data.test.y) | {"weights": combination.weights}
    return {
        "project": str(project),
        "project_commit": git_commit(layout.root),  # the code that trained its teachers, if nothing changed since
        "n_val": len(data.val),
        "n_test": len(data.test),
        "rows": rows,
    }


def markdown(results: dict) -> str:
    cpu = results["cpu"]
    lines = [
        "# How the ensemble joins its teachers (kd.combine)",
        "",
        f"Commit `{results['git_commit']}`, {cpu['model']} ({cpu['cores']} cores), `python -m bench.combine`. Each "
        "rule chosen (fitted weights: fitted by NLL) on the validation split, measured on the test split.",
    ]
    for run in results["runs"]:
        lines += [
            "",
            f"## `{run['project']}` at `{run['project_commit']}` ({run['n_val']} validation, {run['n_test']} test "
            "images)",
            "",
            "| teachers or rule | test accuracy % (95% interval) | NLL | ECE % | weights |",
            "|---|---:|---:|---:|---|",
        ]
        for name, row in run["rows"].items():
            low, high = (100 * b for b in row["interval"])
            weights = ", ".join(f"{w:.3f}" for w in row.get("weights", ()))
            lines.append(
                f"| {name} | {100 * row['accuracy']:.2f} [{low:.2f}, {high:.2f}] | {row['nll']:.4f} | "
                f"{100 * row['ece']:.2f} | {weights} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, action="append", required=True, help="a project whose teachers ran")
    args = parser.parse_args()
    results = {"git_commit": git_commit(ROOT), "cpu": cpu_flags(), "runs": [measure(root) for root in args.root]}
    save_results("combine", results, markdown(results))


if __name__ == "__main__":
    main()

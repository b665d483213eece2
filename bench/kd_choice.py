"""Which distillation temperature: the distill and prune stages on a finished run's teachers at each candidate
`kd.temperature` and seed, every student measured on the validation split and on the development shift sets of
`bench.augment_choice` (typeset digits, and both on grey paper), never on the test split or the report's sets.

    python -m bench.kd_choice --root PROJECT [--temperatures 4 2] [--seeds 0 1]

Writes bench/results/kd_choice.json and kd_choice.md.
"""

import argparse
import os
import shutil
from pathlib import Path

import numpy as np

from bench import RESULTS, save_results
from bench.augment_choice import development_sets, measured
from distillery.machine import cpu_flags
from project.artifacts import load_model
from project.config import load_params
from project.layout import Layout
from tasks import stage

ROOT = Path(__file__).resolve().parents[1]
STUDENTS = ("student_alone", "student_kd", "pruned_alone", "pruned")


def markdown(results: dict) -> str:
    names = list(results["sizes"])
    sets = ", ".join(f"{name} ({size} images)" for name, size in results["sizes"].items())
    lines = [
        "# Distillation temperature: the students on a run's teachers",
        "",
        f"`python -m bench.kd_choice --root {results['root']}`: seeds {results['seeds']} of distill and prune, "
        f"{results['cpus']} CPUs ({results['cpu']}). Accuracy in %, the mean over seeds (each seed's beside), on "
        f"{sets}.",
        "",
        "| kd.temperature | model | " + " | ".join(names) + " |",
        "|---|---|" + "---:|" * len(names),
    ]
    for temperature, found in results["temperatures"].items():
        for model in STUDENTS:
            cells = []
            for name in names:
                per_seed = [seed[model][name] * 100 for seed in found]
                cells.append(f"{np.mean(per_seed):.1f} ({', '.join(f'{v:.1f}' for v in per_seed)})")
            lines.append(f"| {temperature} | {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="a finished run: its data, params and teachers")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[4.0, 2.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "kd_choice")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    source = Layout(args.root)
    params = load_params(source.params)
    results = {"root": str(args.root), "seeds": args.seeds, "cpus": os.cpu_count(), "cpu": cpu_flags()["model"]}
    results["temperatures"] = {}
    for temperature in args.temperatures:
        found = []
        for seed in args.seeds:
            layout = Layout(args.work / f"t{temperature}-seed{seed}")
            shutil.rmtree(layout.root, ignore_errors=True)
            for folder in (source.raw, source.validation, source.teachers):
                shutil.copytree(folder, layout.root / folder.relative_to(source.root))
            update = {
                "kd": params.kd.model_copy(update={"temperature": temperature}),
                "distill": params.distill.model_copy(update={"seed": seed}),
                "prune": params.prune.model_copy(update={"seed": seed}),
            }
            run_params = params.model_copy(update=update)
            for name in ("distill", "prune"):
                stage(name).call(run_params, layout)
            sets = development_sets(layout)
            results["sizes"] = {name: len(split) for name, split in sets.items()}
            found.append({model: measured(load_model(layout, model), sets) for model in STUDENTS})
        results["temperatures"][str(temperature)] = found
    save_results("kd_choice", results, markdown(results), args.out)


if __name__ == "__main__":
    main()

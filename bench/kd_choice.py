"""How to distil: the distill and prune stages on a finished run's teachers under each candidate variant of the
params and each seed, every student measured on the validation split and on the development shift sets of
`bench.augment_choice` (typeset digits, and both on grey paper), never on the test split or the report's sets.

    python -m bench.kd_choice --root PROJECT [--variants kd.temperature=4 kd.temperature=2,distill.epochs=40]
                              [--seeds 0 1]

A variant sets params keys (`section.key=value`, several joined by commas) over the run's params.
Writes bench/results/kd_choice.json and kd_choice.md.
"""

import argparse
import os
import shutil
from pathlib import Path

import numpy as np
import yaml

from bench import RESULTS, save_results
from bench.augment_choice import development_sets, measured
from distillery.errors import DistilleryError
from distillery.machine import cpu_flags
from project.artifacts import load_model
from project.config import PipelineParams, load_params
from project.layout import Layout
from tasks import stage

ROOT = Path(__file__).resolve().parents[1]
STUDENTS = ("student_alone", "student_kd", "pruned_alone", "pruned")


VARIED = ("kd.temperature", "kd.alpha", "distill.", "prune.")  # what the stages rerun here read; not the teachers


def with_variant(params: PipelineParams, variant: str, seed: int) -> PipelineParams:
    """`params` with the variant's keys set and the students' seed."""
    values = params.model_dump()
    for assignment in [*variant.split(","), f"distill.seed={seed}", f"prune.seed={seed}"]:
        key, _, value = assignment.partition("=")
        if not key.startswith(VARIED) or not value or key.count(".") != 1:
            raise DistilleryError(f"Variant {assignment!r}: set one of {', '.join(VARIED)}... as section.key=value.")
        section, name = key.split(".")
        values[section][name] = yaml.safe_load(value)
    return PipelineParams.model_validate(values)


def cells(per_seed: list[float]) -> str:
    return f"{np.mean(per_seed):.1f} ({', '.join(f'{v:.1f}' for v in per_seed)})"


def markdown(results: dict) -> str:
    names = list(results["sizes"])
    sets = ", ".join(f"{name} ({size} images)" for name, size in results["sizes"].items())
    lines = [
        "# How to distil: the students on a run's teachers",
        "",
        f"`python -m bench.kd_choice --root {results['root']} --variants {' '.join(results['variants'])}`: seeds "
        f"{results['seeds']} of distill and prune, {results['cpus']} CPUs ({results['cpu']}). Accuracy in %, the "
        f"mean over seeds (each seed's beside), on {sets}. Students alone do not depend on the kd section.",
        "",
        "| variant | model | " + " | ".join(names) + " |",
        "|---|---|" + "---:|" * len(names),
        "| (teachers) | ensemble | " + " | ".join(f"{100 * results['ensemble'][n]:.1f}" for n in names) + " |",
    ]
    for variant, found in results["variants"].items():
        for model in STUDENTS:
            row = " | ".join(cells([seed[model][name] * 100 for seed in found]) for name in names)
            lines.append(f"| {variant} | {model} | {row} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="a finished run: its data, params and teachers")
    parser.add_argument("--variants", nargs="+", default=["kd.temperature=4", "kd.temperature=2"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "kd_choice")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    source = Layout(args.root)
    params = load_params(source.params)
    results = {"root": str(args.root), "seeds": args.seeds, "cpus": os.cpu_count(), "cpu": cpu_flags()["model"]}
    sets = development_sets(source)  # the run's validation split: every variant copies it
    results["sizes"] = {name: len(split) for name, split in sets.items()}
    results["ensemble"] = measured(load_model(source, "ensemble"), sets)  # variants keep the teachers and kd.combine
    results["variants"] = {}
    for variant in args.variants:
        found = []
        for seed in args.seeds:
            layout = Layout(args.work / f"{variant}-seed{seed}")
            shutil.rmtree(layout.root, ignore_errors=True)
            for folder in (source.raw, source.validation, source.teachers):
                shutil.copytree(folder, layout.root / folder.relative_to(source.root))
            run_params = with_variant(params, variant, seed)
            for name in ("distill", "prune"):
                stage(name).call(run_params, layout)
            found.append({model: measured(load_model(layout, model), sets) for model in STUDENTS})
            print(variant, seed, found[-1], flush=True)
        results["variants"][variant] = found
    save_results("kd_choice", results, markdown(results), args.out)


if __name__ == "__main__":
    main()

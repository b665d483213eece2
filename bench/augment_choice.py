"""Which training augmentation: the student at the shipped widths trained alone with each candidate recipe, on the
default data, measured on the validation split and on development shift sets of our own, never on the test split
or the sets the report evaluates on (uci_digits):

- `val`: the validation split as stored; `val grey`: the same on grey paper (60/255);
- `typeset`: the digits 0-9 in the 22 fonts matplotlib ships (`digit_sets.typeset_digits`); `typeset grey`: the
  same on grey paper.

    python -m bench.augment_choice [--seeds 0 1] [--epochs 20] [--widths 8 16 32 32] [--only NAME ...]

Writes bench/results/augment_choice.json and augment_choice.md.
"""

import argparse
import os
from pathlib import Path

import numpy as np
import torch

from bench import RESULTS, save_results
from distillery import digit_sets
from distillery.data import Split, load_dataset
from distillery.machine import cpu_flags
from distillery.names import GREY_PAPER
from distillery.stats import accuracy_interval
from distillery.training import predict
from project.config import AugmentConfig, PipelineParams
from project.layout import Layout
from project.settings import device
from project.students import train_student
from tasks import stages_through

ROOT = Path(__file__).resolve().parents[1]
GEOMETRIC = {"degrees": 10.0, "shift": 0.1, "scale": 0.0, "levels": 0.0, "thicken": 0.0, "blur": 0.0}
PHOTOMETRIC = {"levels": 0.5, "thicken": 0.3, "blur": 0.3}
CANDIDATES = {
    "rotate + shift (before)": GEOMETRIC,
    "+ scale": GEOMETRIC | {"scale": 0.1},
    "+ paper and ink levels": GEOMETRIC | {"levels": 0.5},
    "+ levels, strokes, blur, scale": GEOMETRIC | PHOTOMETRIC | {"scale": 0.1},
    "+ the same, levels for 80%": GEOMETRIC | PHOTOMETRIC | {"scale": 0.1, "levels": 0.8},
    "+ the same, paper to 0.5": GEOMETRIC | PHOTOMETRIC | {"scale": 0.1, "paper_max": 0.5, "ink_min": 0.55},
}


def development_sets(layout: Layout) -> dict[str, Split]:
    """The validation split and the typeset digits, each as stored and on grey paper."""
    val = load_dataset(layout.raw).val
    stored = val.images[val.rows].numpy()
    typeset, labels = digit_sets.typeset_digits(tuple(stored.shape[2:]))
    found = {}
    for name, (images, y) in {"val": (stored, val.y.numpy()), "typeset": (typeset[:, None], labels)}.items():
        for suffix, pixels in (("", images), (" grey", digit_sets.on_grey_paper(images, GREY_PAPER))):
            found[name + suffix] = Split(torch.from_numpy(pixels), torch.arange(len(pixels)), torch.from_numpy(y))
    return found


def measured(model: torch.nn.Module, sets: dict[str, Split]) -> dict[str, float]:
    model.eval()
    return {name: (predict(model, split, device()) == split.y).float().mean().item() for name, split in sets.items()}


def markdown(results: dict) -> str:
    names = list(next(iter(results["candidates"].values()))["mean"])
    lines = [
        "# Training augmentation: the student alone at the shipped widths",
        "",
        f"`python -m bench.augment_choice`: widths {results['widths']}, {results['epochs']} epochs, seeds "
        f"{results['seeds']}, {results['cpus']} CPUs ({results['cpu']}). Accuracy in %, the mean over seeds; "
        f"the 95% interval of one seed's accuracy on {results['sizes']['val']} validation images is about "
        f"±{results['val_half_width_pp']:.1f} points, on {results['sizes']['typeset']} typeset digits "
        f"±{results['typeset_half_width_pp']:.1f}. Grey paper: ground {GREY_PAPER}/255.",
        "",
        "| recipe | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for name, found in results["candidates"].items():
        cells = " | ".join(f"{100 * found['mean'][s]:.1f}" for s in names)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=PipelineParams().distill.epochs)
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32, 32])
    parser.add_argument("--only", nargs="*", help="candidate names to run (default: all)")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "augment_choice")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    params = PipelineParams()
    layout = Layout(args.work)
    if not layout.raw.exists():
        for stage in stages_through("validate"):
            stage.call(params, layout)
    data, sets = load_dataset(layout.raw), development_sets(layout)
    spec = {"arch": "student_cnn", "in_channels": 1, "num_classes": 10, "widths": args.widths, "pooled_blocks": 1}
    results = {
        "widths": args.widths,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "cpus": os.cpu_count(),
        "cpu": cpu_flags()["model"],
        "sizes": {name: len(split) for name, split in sets.items()},
        "val_half_width_pp": 100 * half_width(0.97, len(sets["val"])),
        "typeset_half_width_pp": 100 * half_width(0.9, len(sets["typeset"])),
        "candidates": {},
    }
    for name, recipe in CANDIDATES.items():
        if args.only and name not in args.only:
            continue
        augment, per_seed = AugmentConfig(**recipe), []
        for seed in args.seeds:
            config = params.distill.model_copy(update={"epochs": args.epochs, "seed": seed})
            model, _ = train_student(spec, data, config, augment=augment, kd=None, teaching=None, name=name)
            per_seed.append(measured(model, sets))
            print(name, seed, {k: round(v, 4) for k, v in per_seed[-1].items()}, flush=True)
        mean = {s: float(np.mean([found[s] for found in per_seed])) for s in sets}
        results["candidates"][name] = {
            "recipe": augment.model_dump(),
            "per_seed": per_seed,
            "mean": mean,
        }
    save_results("augment_choice", results, markdown(results), args.out)


def half_width(p: float, n: int) -> float:
    """Half the 95% interval of an accuracy `p` on `n` images."""
    hits = np.arange(n) < round(p * n)
    low, high = accuracy_interval(hits)
    return (high - low) / 2


if __name__ == "__main__":
    main()

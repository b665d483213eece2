"""Which teachers to train: every set of candidate teachers, compared on the validation split.

    python -m bench.teacher_choice [--archs small_resnet wide_cnn] [--seeds 0 1] [--epochs 20]

Trains each architecture with each seed once, with the train_teachers stage's own recipe (the default
`teachers` params otherwise), then scores every set of them as an ensemble (the mean of their
probabilities, as the pipeline's) on the validation split: accuracy, NLL and accuracy under the
corruption suite (10 kinds at 3 severities), beside the teachers' training seconds. Test-split figures
are listed too, for the record: choose on validation. Writes bench/results/teacher_choice.json and .md.
"""

import argparse
import itertools
import shutil
from pathlib import Path

import numpy as np
import torch

from bench import save_results
from distillery import calibration, checkpoint, corruptions
from distillery.data import Split, load_dataset
from distillery.machine import cpu_flags
from distillery.training import logits
from project.config import PipelineParams
from project.layout import Layout
from project.settings import device
from tasks import report, stages_through, train_teachers

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("val", "test")


@torch.no_grad()
def probabilities(model: torch.nn.Module, split: Split) -> dict[str, np.ndarray]:
    """The model's class probabilities on the split's images (N x K) and on every corrupted copy of them
    (kinds x severities x N x K)."""
    dev = device()
    clean = torch.softmax(logits(model, split, dev), dim=1).numpy()
    copies = []
    for kind in corruptions.KINDS:
        for severity in corruptions.SEVERITIES:
            blocks = corruptions.corrupted_blocks(split, kind, severity)
            copies.append(
                np.concatenate([torch.softmax(model(x.to(dev)).float(), dim=1).cpu().numpy() for _, x in blocks])
            )
    return {"clean": clean, "corrupted": np.stack(copies)}


def scores(members: list[dict[str, np.ndarray]], labels: np.ndarray) -> dict[str, float]:
    """Accuracy, NLL and corrupted accuracy of the mean of `members`' probabilities."""
    clean = np.mean([m["clean"] for m in members], axis=0)
    corrupted = np.mean([m["corrupted"] for m in members], axis=0)
    return {
        "accuracy": float((clean.argmax(axis=1) == labels).mean()),
        "nll": calibration.nll(np.log(np.clip(clean, 1e-12, None)), labels),
        "corrupted_accuracy": float((corrupted.argmax(axis=2) == labels).mean()),
    }


def beats_every_member(ensemble: dict[str, float], members: list[dict[str, float]]) -> dict[str, bool]:
    """Measure by measure: is the ensemble better than every one of its members?"""
    return {
        "accuracy": all(ensemble["accuracy"] > m["accuracy"] for m in members),
        "nll": all(ensemble["nll"] < m["nll"] for m in members),
        "corrupted_accuracy": all(ensemble["corrupted_accuracy"] > m["corrupted_accuracy"] for m in members),
    }


def markdown(results: dict) -> str:
    def mark(flag: bool) -> str:
        return "yes" if flag else "no"

    lines = [
        "# Teacher sets compared on validation",
        "",
        f"`python -m bench.teacher_choice`, {results['epochs']} epochs per teacher, at {results['git_commit']}; "
        f"{results['cpu']['model']}, {results['cpu']['cores']} cores. Ensemble: the mean of the members' "
        "probabilities. Corrupted: accuracy over the 10 corruptions at 3 severities. Sorted by validation "
        "accuracy, then NLL. "
        "'Beats every member': on validation, accuracy / NLL / corrupted accuracy.",
        "",
        "| teachers | train s | val acc % | val NLL | val corrupted % | beats every member | "
        "test acc % | test NLL | test corrupted % |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for row in results["sets"]:
        v, t, b = row["val"], row["test"], row["beats_every_member"]
        beats = "—" if len(row["teachers"]) == 1 else " / ".join(mark(b[k]) for k in b)
        lines.append(
            f"| {' + '.join(row['teachers'])} | {row['train_seconds']:.0f} | {v['accuracy'] * 100:.2f} | "
            f"{v['nll']:.4f} | {v['corrupted_accuracy'] * 100:.2f} | {beats} | {t['accuracy'] * 100:.2f} | "
            f"{t['nll']:.4f} | {t['corrupted_accuracy'] * 100:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["small_resnet", "wide_cnn"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=PipelineParams().teachers.epochs)
    args = parser.parse_args()
    params = PipelineParams()
    layout = Layout(ROOT / "bench" / "work" / "teacher_choice")
    shutil.rmtree(layout.root, ignore_errors=True)
    layout.root.mkdir(parents=True)
    for stage in stages_through("validate"):
        stage.call(params, layout)
    data = load_dataset(layout.raw)
    labels = {split: getattr(data, split).y.numpy() for split in SPLITS}
    candidates, seconds = {}, {}
    for arch, seed in itertools.product(args.archs, args.seeds):
        name, out = f"{arch} seed {seed}", layout.root / "candidates" / f"{arch}_{seed}"
        out.mkdir(parents=True)
        config = params.teachers.model_copy(update={"models": [arch], "seed": seed, "epochs": args.epochs})
        record = train_teachers.train_teacher(config, 0, layout, out)
        model = checkpoint.load(out / f"{record['name']}.safetensors")[0].eval().to(device())
        candidates[name] = {split: probabilities(model, getattr(data, split)) for split in SPLITS}
        seconds[name] = record["seconds"]
    single = {name: scores([c["val"]], labels["val"]) for name, c in candidates.items()}
    sets = []
    for size in range(1, len(candidates) + 1):
        for members in itertools.combinations(candidates, size):
            found = {split: scores([candidates[m][split] for m in members], labels[split]) for split in SPLITS}
            beats = beats_every_member(found["val"], [single[m] for m in members])
            sets.append(
                {
                    "teachers": list(members),
                    "train_seconds": sum(seconds[m] for m in members),
                    **found,
                    "beats_every_member": beats,
                }
            )
    sets.sort(key=lambda s: (-s["val"]["accuracy"], s["val"]["nll"]))
    results = {
        "epochs": args.epochs,
        "git_commit": report.git_commit(ROOT),
        "cpu": cpu_flags(),
        "sets": sets,
    }
    save_results("teacher_choice", results, markdown(results))


if __name__ == "__main__":
    main()

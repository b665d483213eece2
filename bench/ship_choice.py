"""Is the ship choice stable? The ship stage's timing and decision, repeated on the fixed models of one
finished run: every repeat should ship the same model.

    python -m bench.ship_choice --run . [--repeats 20]

Writes bench/results/ship_choice.json and ship_choice.md.
"""

import argparse
import collections
from pathlib import Path

from bench import RESULTS, save_results
from distillery import onnx_export
from distillery.data import load_dataset
from distillery.files import read_json
from distillery.machine import cpu_flags
from project.artifacts import verified_onnx
from project.config import PipelineParams, load_params
from project.layout import Layout
from project.ship_decision import ShipDecision
from tasks import report, ship

ROOT = Path(__file__).resolve().parents[1]


def repeat_choice(layout: Layout, params: PipelineParams, repeats: int) -> dict:
    """The ship decision `repeats` times over on the run's models, each with fresh timing rounds."""
    metrics = read_json(layout.metrics)
    val = ShipDecision.read(layout.ship_decision).val_accuracy
    data, paths = load_dataset(layout.raw), verified_onnx(layout)
    choices = []
    for _ in range(repeats):
        rounds = ship.latency_rounds(paths, data, params.ship, params.measure)
        model, reason = ship.choose(val, rounds, params.ship)
        choices.append({"model": model, "best_latency_ms": {m: min(r) for m, r in rounds.items()}, "reason": reason})
    return {
        "run": str(layout.root),
        "git_commit": report.git_commit(ROOT),
        "models_git_commit": metrics["git_commit"],
        "ship": params.ship.model_dump(),
        "val_accuracy": val,
        "cpu": cpu_flags(),
        "onnxruntime_threads": onnx_export.cpu_threads(params.measure.latency_threads),
        "counts": dict(collections.Counter(str(c["model"]) for c in choices)),
        "choices": choices,
    }


def markdown(result: dict) -> str:
    lines = [
        "# Ship choice, repeated on fixed models",
        "",
        f"{result['cpu']['model']}, {result['cpu']['cores']} CPUs, onnxruntime "
        f"{result['onnxruntime_threads']} threads; run `{result['run']}` (models of commit "
        f"`{str(result['models_git_commit'])[:7]}`); `python -m bench.ship_choice` at commit "
        f"`{str(result['git_commit'])[:7]}`.",
        f"Choices: **{result['counts']}** (margin {result['ship']['latency_margin']:.0%}, "
        f"{result['ship']['latency_rounds']} interleaved rounds, batch {result['ship']['latency_batch']}).",
        "",
        "| repeat | shipped | pruned, best round (ms) | int8, best round (ms) |",
        "|---|---|---:|---:|",
    ]
    for i, choice in enumerate(result["choices"], 1):
        best = choice["best_latency_ms"]
        lines.append(f"| {i} | {choice['model']} | {best['pruned']:.4f} | {best['int8']:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ship_choice", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, default=ROOT, help="the root of a finished run")
    parser.add_argument("--params", type=Path, help="the run's params file (default: RUN/params.yaml)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    layout = Layout(args.run.resolve())
    result = repeat_choice(layout, load_params(args.params or layout.params), args.repeats)
    save_results("ship_choice", result, markdown(result), args.out)


if __name__ == "__main__":
    main()

"""Student architectures side by side on the default data: the built-in student and torchvision MobileNets, each
distilled from the same teachers, then pruned, quantized, exported and reported as the pipeline does.

    python -m bench.students [--students student_cnn torchvision:mobilenet_v3_small@0.5]

The project's params.yaml, once through the teachers stage in bench/work/students/teachers/; then per student (an
arch, and for a MobileNet its width multiplier after @) a copy of that run through the report, with `distill.arch`
and `distill.width_scales` set. One seed: on 1,000 test images a difference under about 1 point is noise (the
report's intervals). Writes bench/results/students.json and students.md.
"""

import argparse
import json
import shutil
from pathlib import Path

from bench import save_results
from bench.transfer_set import run_stages
from distillery.machine import cpu_flags
from project.config import PipelineParams, load_params
from project.layout import Layout
from project.ship_decision import ShipDecision
from tasks import stages_through
from tasks.report import git_commit

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("ensemble", "student_kd", "pruned", "int8")


def student_params(params: PipelineParams, student: str) -> PipelineParams:
    """`params` with the student `ARCH` or `ARCH@WIDTH_MULT`."""
    arch, _, width = student.partition("@")
    update = {"arch": arch} | ({"width_scales": [float(width)]} if width else {})
    return params.model_copy(update={"distill": params.distill.model_copy(update=update)})


def measured(layout: Layout, seconds: dict) -> dict:
    """What the report and the export check of the run in `layout` say of each model."""
    metrics = json.loads(layout.metrics.read_text())
    int8 = json.loads(layout.verification.read_text())["files"]["int8"]
    return {
        "student": metrics["student"],
        "models": {
            name: {k: metrics[name][k] for k in ("accuracy", "accuracy_interval", "params", "bytes", "latency_ms")}
            for name in MODELS
        },
        "shipped": ShipDecision.read(layout.ship_decision).model,
        "int8_check": {
            "as_written": {k: int8[k] for k in ("top1_agreement", "mean_error_steps", "max_error_steps")},
            "fused_kernels": {k: int8["fused_kernels"][k] for k in ("top1_agreement", "mean_error_steps")},
        },
        "seconds": seconds,
    }


def measure(students: list[str], work: Path) -> dict:
    params = load_params(ROOT / "params.yaml")
    teachers = work / "teachers"
    shutil.rmtree(teachers, ignore_errors=True)
    teacher_seconds = run_stages(params, teachers, stages_through("train_teachers"))
    runs = {}
    for student in students:
        root = work / student.replace(":", "_").replace("@", "_")
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(teachers, root)
        later = stages_through("report")[len(stages_through("train_teachers")) :]
        runs[student] = measured(Layout(root), run_stages(student_params(params, student), root, later))
    return {"git_commit": git_commit(ROOT), "cpu": cpu_flags(), "teacher_seconds": teacher_seconds, "runs": runs}


def accuracy(model: dict) -> str:
    low, high = (100 * v for v in model["accuracy_interval"])
    return f"{model['accuracy']:.1%} [{low:.1f}, {high:.1f}]"


def latency(model: dict) -> str:
    return f"{model['latency_ms']['b1']:.3f} / {model['latency_ms']['b256']:.1f}"


def markdown(results: dict) -> str:
    cpu = results["cpu"]
    lines = [
        "# Student architectures",
        "",
        f"Commit `{results['git_commit']}`, {cpu['model']} ({cpu['cores']} cores), `python -m bench.students`: "
        "params.yaml (mnist5k, two small ResNet teachers, seed 0) with `distill.arch` and `distill.width_scales` "
        "per row; the same teachers for all. One seed. Test accuracy with its 95% interval; latency in onnxruntime "
        "(1 thread), batch 1 / 256; the int8 export check: top-1 agreement with PyTorch's int8 model and mean logit "
        "difference in steps, for the graph run as written (the gate) and with onnxruntime's fused int8 kernels.",
        "",
        "| student | distilled | pruned | int8 | pruned params | int8 bytes | pruned ms | int8 ms | shipped "
        "| int8 check, as written | int8 check, fused | distill→report s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for student, run in results["runs"].items():
        m, check = run["models"], run["int8_check"]
        written, fused = check["as_written"], check["fused_kernels"]
        lines.append(
            f"| {student} | {accuracy(m['student_kd'])} | {accuracy(m['pruned'])} | {accuracy(m['int8'])} | "
            f"{m['pruned']['params']:,} | {m['int8']['bytes']:,} | {latency(m['pruned'])} | {latency(m['int8'])} | "
            f"{run['shipped']} | {written['top1_agreement']:.1%}, {written['mean_error_steps']:.2f} | "
            f"{fused['top1_agreement']:.1%}, {fused['mean_error_steps']:.2f} | {sum(run['seconds'].values()):.0f} |"
        )
    ensemble = next(iter(results["runs"].values()))["models"]["ensemble"]
    lines += ["", f"The ensemble: {ensemble['accuracy']:.1%} on the same test images."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--students",
        nargs="+",
        default=["student_cnn", "torchvision:mobilenet_v3_small@0.5"],
        help="ARCH or ARCH@WIDTH_MULT",
    )
    args = parser.parse_args()
    results = measure(args.students, ROOT / "bench" / "work" / "students")
    save_results("students", results, markdown(results))


if __name__ == "__main__":
    main()

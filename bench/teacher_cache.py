"""The distill stage learning from the teachers' cached outputs against running the teachers on every batch, on the
teachers of a finished run (yours: any mix of architectures, checkpoints and ONNX models).

    python -m bench.teacher_cache --root PROJECT [--epochs N]

PROJECT: a project whose train_teachers stage has run. In a scratch copy of its data and teachers (bench/work/),
with its params (distill epochs overridden by --epochs): the cache computed again (its cost), the distill stage
with it, then without it (the teachers run on every batch, on fresh random augmentations). Writes
bench/results/teacher_cache.json and teacher_cache.md.
"""

import argparse
import shutil
import time
from pathlib import Path

from bench import save_results
from distillery.machine import cpu_flags
from project.artifacts import read_record
from project.config import load_params
from project.layout import Layout
from tasks import distill, train_teachers
from tasks.report import git_commit

ROOT = Path(__file__).resolve().parents[1]


def timed(run) -> tuple[float, dict]:
    started = time.perf_counter()
    result = run()
    return round(time.perf_counter() - started, 1), result


def markdown(results: dict) -> str:
    cpu = results["cpu"]
    lines = [
        "# The distill stage with and without the teachers' cached outputs",
        "",
        f"Commit `{results['git_commit']}`, {cpu['model']} ({cpu['cores']} cores), `python -m bench.teacher_cache` on "
        f"the teachers of `{results['project']}`; {results['epochs']} distill epochs, "
        f"{results['cached_views']} cached views.",
        "",
        "| teacher | params |",
        "|---|---:|",
        *(f"| {name} | {params:,} |" for name, params in results["teachers"].items()),
        "",
        "| | seconds | student_kd val accuracy |",
        "|---|---:|---:|",
        f"| computing the cache (once per teachers stage) | {results['cache_s']} | |",
        f"| distill from the cache | {results['cached']['seconds']} | {results['cached']['student_kd']:.4f} |",
        f"| distill running the teachers on every batch | {results['live']['seconds']} | "
        f"{results['live']['student_kd']:.4f} |",
        "",
        f"The stage trains two students (distilled and alone); only the distilled one runs the teachers. "
        f"Cache + distill from it: {results['cache_s'] + results['cached']['seconds']:.1f} s against "
        f"{results['live']['seconds']} s.",
    ]
    return "\n".join(lines) + "\n"


def measure(project: Path, work: Path, epochs: int | None = None) -> dict:
    """The cache's cost and the distill stage's time and result with and without it, on `project`'s teachers,
    in `work` (emptied first)."""
    source = Layout(project.resolve())
    params = load_params(source.params)
    if not params.teachers.cached_views:
        raise SystemExit(f"{source.params} sets teachers.cached_views to 0: there is no cache to measure")
    if epochs:
        params = params.model_copy(update={"distill": params.distill.model_copy(update={"epochs": epochs})})
    layout = Layout(work)
    shutil.rmtree(layout.root, ignore_errors=True)
    for folder in (source.raw, source.validation, source.teachers):
        shutil.copytree(folder, layout.root / folder.relative_to(source.root))
    layout.teacher_outputs.unlink(missing_ok=True)
    cache_s, _ = timed(lambda: train_teachers.cache_outputs(params.teachers, params.augment, layout, layout.teachers))
    runs = {}
    for kind in ("cached", "live"):
        if kind == "live":
            layout.teacher_outputs.unlink()
        seconds, result = timed(lambda: distill.run(params.distill, params.kd, params.ship, params.augment, layout))
        runs[kind] = {"seconds": seconds, "student_kd": result["student_kd"]}
    return {
        "project": str(project),
        "git_commit": git_commit(ROOT),
        "cpu": cpu_flags(),
        "epochs": params.distill.epochs,
        "cached_views": params.teachers.cached_views,
        "teachers": {name: read_record(layout, name)["params"] for name in layout.teacher_models()},
        "cache_s": cache_s,
        **runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="a project whose train_teachers stage has run")
    parser.add_argument("--epochs", type=int, help="distill epochs (default: the project's)")
    args = parser.parse_args()
    results = measure(args.root, ROOT / "bench" / "work" / "teacher_cache", args.epochs)
    save_results("teacher_cache", results, markdown(results))


if __name__ == "__main__":
    main()

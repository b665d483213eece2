"""The teacher stage on a local Dask cluster against one teacher after another, on the default data.

    python -m bench.teachers [--workers 2] [--epochs N]

Both run the train_teachers stage inside a Prefect flow, as `distillery run` does: `local` trains
each teacher in turn in the flow's process (torch uses every core), `dask` submits all of them
at once to a temporary `distributed.LocalCluster` of `--workers` processes with one thread each
(the cluster's start counts). Training only: no output cache. Writes bench/results/teachers.json and teachers.md.
"""

import argparse
import os
import time
from pathlib import Path

from prefect import flow

from bench import save_results
from cli.flow import prefect_environment
from flows.runners import RunnerConfig, teacher_map
from project.artifacts import read_record
from project.config import PipelineParams
from project.layout import TEACHER, Layout
from tasks import stages_through, train_teachers

ROOT = Path(__file__).resolve().parents[1]


@flow(name="bench-teachers")
def teacher_stage(params: PipelineParams, root: str, runner: RunnerConfig) -> dict:
    """Wall seconds of the stage, and each teacher's seconds, threads and validation accuracy."""
    layout = Layout(Path(root))
    started = time.perf_counter()
    train_teachers.run(params.teachers, params.augment, layout, map_fn=teacher_map(runner))
    wall = time.perf_counter() - started
    teachers = {
        teacher.removeprefix(TEACHER): {
            k: read_record(layout, teacher)[k] for k in ("seconds", "torch_threads", "val_accuracy")
        }
        for teacher in layout.teacher_models()
    }
    return {"wall_s": round(wall, 1), "teachers": teachers}


def markdown(results: dict) -> str:
    local, dask = results["local"], results["dask"]
    lines = [
        f"# Teachers: one after another vs a {results['workers']}-worker local Dask cluster",
        "",
        f"{results['cpus']} CPUs, {results['epochs']} epochs, `python -m bench.teachers`. "
        f"Dask / local wall time: **{results['dask_over_local']:.2f}**",
        "",
        "| teacher | local s | local threads | dask s | dask threads | local val acc | dask val acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, a in local["teachers"].items():
        b = dask["teachers"][name]
        lines.append(
            f"| {name} | {a['seconds']} | {a['torch_threads']} | {b['seconds']} | {b['torch_threads']} | "
            f"{a['val_accuracy']:.4f} | {b['val_accuracy']:.4f} |"
        )
    lines.append(f"| **stage wall** | {local['wall_s']} | | {dask['wall_s']} | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=PipelineParams().teachers.epochs)
    args = parser.parse_args()
    params = PipelineParams.model_validate({"teachers": {"epochs": args.epochs, "cached_views": 0}})  # training only
    layout = Layout(ROOT / "bench" / "work" / "teachers")
    prefect_environment(layout.root)
    for stage in stages_through("validate"):
        stage.call(params, layout)
    runners = {
        "local": RunnerConfig(),
        "dask": RunnerConfig(kind="dask", dask_cluster_kwargs={"n_workers": args.workers, "threads_per_worker": 1}),
    }
    results = {"workers": args.workers, "epochs": args.epochs, "cpus": os.cpu_count()}
    for kind, runner in runners.items():
        results[kind] = teacher_stage(params, str(layout.root), runner)
    results["dask_over_local"] = results["dask"]["wall_s"] / results["local"]["wall_s"]
    save_results("teachers", results, markdown(results))


if __name__ == "__main__":
    main()

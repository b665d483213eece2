"""Report: every model's accuracy with its interval, calibration, robustness, agreement with the ensemble, size
and onnxruntime latency; paired comparisons; the shipped model; metrics.json, report.md and plots."""

import hashlib
import json
import logging
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from distillery import checkpoint, onnx_export, stats
from distillery.data import Dataset, Split, load_dataset
from distillery.evaluation import PerImage, evaluate, evaluate_set
from distillery.files import atomic_dir, file_digest, read_json, write_json
from distillery.machine import cpu_flags
from distillery.models import count_params
from project import eval_sets
from project.artifacts import load_model, read_record, verified_onnx
from project.config import PipelineParams
from project.eval_sets import LoadedSet
from project.layout import PIPELINE_MODELS, PROBABILITY_OUTPUTS, TEACHER, Layout
from project.report_markdown import markdown_report, models
from project.report_plots import accuracy_vs_size, save, training_curves, what_the_student_kept
from project.ship_decision import ShipDecision
from project.stage import Stage

log = logging.getLogger("distillery")


def dvc_md5(folder: Path) -> str:
    """The md5 DVC records for a folder output (as in dvc.lock): the md5 of its sorted file listing
    with each file's md5, plus ".dir"."""
    files = sorted((f.relative_to(folder).as_posix(), f) for f in folder.rglob("*") if f.is_file())
    listing = [{"md5": file_digest(f, "md5"), "relpath": relpath} for relpath, f in files]
    return hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest() + ".dir"


def git_commit(root: Path) -> str | None:
    """HEAD's commit, with "-dirty" when tracked files differ from it; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        if not head:
            return None
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", ".", ":!dvc.lock", ":!params.yaml"], cwd=root
        ).returncode
    except OSError:
        return None
    return head + ("-dirty" if dirty else "")


def param_counts(layout: Layout) -> dict[str, int]:
    """Parameters of every model of the run; the int8 model has the pruned student's, the ensemble its teachers'."""
    return {
        name: count_params(load_model(layout, "pruned" if name == "int8" else name)) for name in layout.run_models()
    }


def student_architecture(layout: Layout) -> dict:
    """The distilled student's architecture, at the size the distill stage chose."""
    spec = checkpoint.read_spec(layout.checkpoint("student_kd"))
    return {k: spec[k] for k in ("arch", "width_mult", "widths") if k in spec}


def footprint(path: Path, data: Dataset, *, params: int | None, budget_s: float, threads: int) -> dict:
    """Parameters, size and batch-1/256 latency (`threads` intra-op threads) of one ONNX model in onnxruntime."""
    sess = onnx_export.session(path, threads)
    x = data.test.head(256).numpy()
    return {
        "params": params,
        "bytes": path.stat().st_size,
        "latency_ms": {
            "b1": onnx_export.latency_ms(sess, x, batch=1, budget_s=budget_s),
            "b256": onnx_export.latency_ms(sess, x, batch=256, budget_s=budget_s),
        },
    }


def summary(metrics: dict, headline: str) -> dict:
    """Headline ratios of the `headline` model (the shipped one; the int8 one when none ships) against the
    teachers; the best teacher is the one with the best validation accuracy (test accuracy chooses nothing)."""
    ensemble = metrics["ensemble"]
    shipped = metrics[headline]
    best = max(metrics["teachers"], key=lambda t: t["val_accuracy"])
    return {
        "compression_ratio_vs_ensemble": ensemble["bytes"] / shipped["bytes"],
        "compression_ratio_vs_best_teacher": best["bytes"] / shipped["bytes"],
        "speedup_b1_vs_ensemble": ensemble["latency_ms"]["b1"] / shipped["latency_ms"]["b1"],
        "speedup_b256_vs_ensemble": ensemble["latency_ms"]["b256"] / shipped["latency_ms"]["b256"],
        "accuracy_drop_pp_vs_ensemble": (ensemble["accuracy"] - shipped["accuracy"]) * 100,
        "best_teacher": best["name"],
    }


# Paired comparisons, each (A, B): "shipped" is the shipped model (int8 when none ships), "best_teacher" the
# teacher with the best validation accuracy.
PAIRS = {
    "ensemble_vs_best_teacher": ("ensemble", "best_teacher"),
    "shipped_vs_ensemble": ("shipped", "ensemble"),
    "kd_vs_alone_at_shipped_size": ("pruned", "pruned_alone"),
    "kd_vs_alone_at_student_size": ("student_kd", "student_alone"),
}


def pair_names(metrics: dict, headline: str) -> dict[str, tuple[str, str]]:
    """PAIRS by the run's model names (`headline`: the shipped model)."""
    names = {"shipped": headline, "best_teacher": TEACHER + metrics["best_teacher"]}
    return {key: (names.get(a, a), names.get(b, b)) for key, (a, b) in PAIRS.items()}


def paired(a: str, b: str, hits: dict[str, np.ndarray]) -> dict:
    """A against B on the same images: the difference with its paired interval, and McNemar's test."""
    return {"a": a, "b": b} | stats.paired_difference(hits[a], hits[b]) | stats.mcnemar(hits[a], hits[b])


def comparisons(metrics: dict, per_image: PerImage, headline: str) -> dict[str, dict]:
    """Each of PAIRS on the same test images: the difference in clean accuracy with its paired interval and
    McNemar's test, and the difference in accuracy under corruption with its paired interval."""
    return {
        key: paired(a, b, per_image.clean)
        | {"corrupted": stats.paired_difference(per_image.corrupted[a], per_image.corrupted[b])}
        for key, (a, b) in pair_names(metrics, headline).items()
    }


def measured_on_sets(sets: list[LoadedSet], sessions: dict, metrics: dict, headline: str) -> dict[str, dict]:
    """Every model on each evaluation set: its figures (as on the test split, each model scaled by the temperature
    fitted on the validation split) and the paired comparisons on the set's images."""
    temperatures = {name: metrics[name]["temperature"] for name in PIPELINE_MODELS} | {
        TEACHER + t["name"]: t["temperature"] for t in metrics["teachers"]
    }
    found = {}
    for loaded in sets:
        split = Split(
            torch.from_numpy(loaded.images), torch.arange(len(loaded.labels)), torch.from_numpy(loaded.labels)
        )
        figures, hits = evaluate_set(
            sessions, split, probabilities=PROBABILITY_OUTPUTS, ensemble="ensemble", temperatures=temperatures
        )
        found[loaded.name] = {
            "source": loaded.source,
            "images": len(loaded.labels),
            "models": figures,
            "comparisons": {key: paired(a, b, hits) for key, (a, b) in pair_names(metrics, headline).items()},
        }
    return found


def histories(layout: Layout) -> dict[str, list[dict]]:
    """The validation curve of every trained model (the ensemble is not trained)."""
    return {name: read_record(layout, name)["history"] for name in layout.run_models() if name != "ensemble"}


def run(params: PipelineParams, layout: Layout) -> dict:
    """Write data/reports/: the metrics (with the whole run's params), the markdown report and its plots."""
    data = load_dataset(layout.raw)
    info = read_json(layout.dataset_info)
    shape, learnt = tuple(info["shape"]), eval_sets.learnt_images(layout)
    sets = eval_sets.load(params.report.eval_sets, layout, info["classes"], shape, learnt=learnt)  # checked first
    decision = ShipDecision.read(layout.ship_decision)
    counts = param_counts(layout)
    paths = verified_onnx(layout)
    checks = read_json(layout.verification)["files"]
    threads = onnx_export.cpu_threads(params.measure.latency_threads)
    sessions = {name: onnx_export.session(path) for name, path in paths.items()}
    evaluated, per_image = evaluate(sessions, data, probabilities=PROBABILITY_OUTPUTS, ensemble="ensemble")
    measured = {
        name: evaluated[name]
        | footprint(path, data, params=counts[name], budget_s=params.measure.latency_budget_s, threads=threads)
        | {"verified": {k: checks[name][k] for k in ("top1_agreement", "max_error_steps")}}
        for name, path in paths.items()
    }
    metrics = {
        "teachers": [
            {"name": k.removeprefix(TEACHER), "source": read_record(layout, k)["source"], **v}  # a user's file: sha256
            for k, v in measured.items()
            if k.startswith(TEACHER)
        ],
        **{m: measured[m] for m in PIPELINE_MODELS},
        "dataset": {
            "name": info["source"],
            "md5": dvc_md5(layout.raw),
            "n_train": info["n_train"],
            "n_val": info["n_val"],
            "n_test": info["n_test"],
            "n_unlabeled": info["n_unlabeled"],
        },
        "student": student_architecture(layout),
        "git_commit": git_commit(layout.root),
        "onnxruntime": {"version": ort.__version__, "threads": threads},
        "cpu": cpu_flags(),  # the machine every latency was measured on
        "params": params.to_yaml_dict(),
    }
    metrics["ensemble"]["combination"] = read_json(layout.ensemble_combination)
    metrics.update(summary(metrics, decision.headline_model))
    metrics["comparisons"] = comparisons(metrics, per_image, decision.headline_model)
    metrics["eval_sets"] = measured_on_sets(sets, sessions, metrics, decision.headline_model)
    with atomic_dir(layout.reports) as out:
        write_json(out / layout.metrics.name, metrics)
        (out / layout.report.name).write_text(markdown_report(metrics, decision, layout))
        save(accuracy_vs_size(models(metrics)), out / layout.accuracy_plot.name)
        save(what_the_student_kept(models(metrics)), out / layout.kept_plot.name)
        save(training_curves(histories(layout)), out / layout.curves_plot.name)
    log.info("report written to %s", layout.reports)
    return {
        "shipped": decision.model,
        **{
            k: metrics[k]
            for k in ("compression_ratio_vs_ensemble", "speedup_b1_vs_ensemble", "accuracy_drop_pp_vs_ensemble")
        },
    }


STAGE = Stage(
    run,
    reads=(
        Layout.raw,
        Layout.teachers,
        Layout.student,
        Layout.pruned,
        Layout.int8,
        Layout.export,
        Layout.ship_decision,
        Layout.user_eval_sets,
    ),
    writes=(Layout.report,),
    metrics=(Layout.metrics,),
    plots=(Layout.accuracy_plot, Layout.curves_plot, Layout.kept_plot),
)

if __name__ == "__main__":
    from project.stage_cli import main

    main(STAGE)

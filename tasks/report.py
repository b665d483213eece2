"""Report: accuracy, size and onnxruntime latency of every model; metrics.json, markdown, plots."""

import hashlib
import logging
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort

from distillery import checkpoint, onnx_export
from distillery.data import load_dataset
from distillery.files import atomic_dir
from distillery.models import count_params
from tasks.config import PipelineParams, ReportConfig
from tasks.layout import Layout
from tasks.runtime import read_json, write_json

log = logging.getLogger("distillery")
MODELS = ("ensemble", "student_alone", "student_kd", "pruned", "int8")


def md5(path: Path) -> str:
    """The md5 DVC records for this file."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def git_commit(root: Path) -> str | None:
    """HEAD's commit, with "-dirty" when tracked files differ from it; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", ".", ":!dvc.lock", ":!params.yaml"],
                               cwd=root).returncode
    except OSError:
        return None
    return (head + ("-dirty" if dirty else "")) if head else None


def param_counts(layout: Layout) -> dict[str, int]:
    teachers = sorted(layout.teachers.glob("*.safetensors"))
    counts = {f"teacher_{f.stem}": count_params(checkpoint.load(f)[0]) for f in teachers}
    counts["ensemble"] = sum(counts.values())
    for name in ("student_alone", "student_kd"):
        counts[name] = count_params(checkpoint.load(layout.student / f"{name}.safetensors")[0])
    counts["pruned"] = counts["int8"] = count_params(checkpoint.load(layout.pruned / "pruned.safetensors")[0])
    return counts


def measure(path: Path, x: np.ndarray, y: np.ndarray, params: int, budget_s: float) -> dict:
    sess = onnx_export.session(path)
    return {"accuracy": onnx_export.accuracy(sess, x, y), "params": params, "bytes": path.stat().st_size,
            "latency_ms": {"b1": onnx_export.latency_ms(sess, x, 1, budget_s),
                           "b256": onnx_export.latency_ms(sess, x, 256, budget_s)}}


def summary(models: dict, teachers: list[dict]) -> dict:
    ensemble, int8 = models["ensemble"], models["int8"]
    best = max(teachers, key=lambda t: t["accuracy"])
    return {
        "compression_ratio_vs_ensemble": ensemble["bytes"] / int8["bytes"],
        "compression_ratio_vs_best_teacher": best["bytes"] / int8["bytes"],
        "speedup_b1_vs_ensemble": ensemble["latency_ms"]["b1"] / int8["latency_ms"]["b1"],
        "speedup_b256_vs_ensemble": ensemble["latency_ms"]["b256"] / int8["latency_ms"]["b256"],
        "accuracy_drop_pp_vs_ensemble": (ensemble["accuracy"] - int8["accuracy"]) * 100,
        "best_teacher": best["name"],
    }


def row(m: dict) -> dict:
    """One model's line of the report table, formatted."""
    return {"test accuracy": f"{m['accuracy']:.4f}", "params": f"{m['params']:,}", "bytes": f"{m['bytes']:,}",
            "latency b1 (ms)": f"{m['latency_ms']['b1']:.3f}", "latency b256 (ms)": f"{m['latency_ms']['b256']:.2f}"}


def table_rows(metrics: dict) -> list[dict]:
    rows = [{"model": f"teacher {t['name']}", **row(t)} for t in metrics["teachers"]]
    return rows + [{"model": m, **row(metrics[m])} for m in MODELS]


def markdown_table(metrics: dict) -> str:
    rows = table_rows(metrics)
    lines = ["| " + " | ".join(rows[0]) + " |", "|---" + "|---:" * (len(rows[0]) - 1) + "|"]
    lines += ["| " + " | ".join(r.values()) + " |" for r in rows]
    return "\n".join(lines)


def markdown_report(metrics: dict) -> str:
    d = metrics["dataset"]
    return "\n".join([
        "# Distillery report", "",
        f"Dataset `{d['name']}` (md5 {d['md5']}): {d['n_train']} train / {d['n_val']} val / {d['n_test']} test images.",
        f"Git commit: `{metrics['git_commit']}`. Latency: onnxruntime on CPU, median of repeated runs.", "",
        markdown_table(metrics), "",
        f"- Compression vs the ensemble: **{metrics['compression_ratio_vs_ensemble']:.0f}x** fewer bytes; "
        f"vs the best teacher ({metrics['best_teacher']}): {metrics['compression_ratio_vs_best_teacher']:.0f}x.",
        f"- Batch-1 speed-up vs the ensemble: **{metrics['speedup_b1_vs_ensemble']:.0f}x**; "
        f"batch 256: {metrics['speedup_b256_vs_ensemble']:.1f}x.",
        f"- Accuracy change vs the ensemble: {-metrics['accuracy_drop_pp_vs_ensemble']:+.2f} points.",
        f"- Distillation: student alone {metrics['student_alone']['accuracy']:.4f}, "
        f"with KD {metrics['student_kd']['accuracy']:.4f} (one seed; differences under ~0.5 points are noise).",
        "", "![accuracy vs size](accuracy_vs_size.png)", "", "![training curves](training_curves.png)", ""])


def plot(metrics: dict, histories: dict[str, list[dict]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = [(t["name"], t) for t in metrics["teachers"]] + [(m, metrics[m]) for m in MODELS]
    for name, m in points:
        ax.scatter(m["bytes"] / 1024, m["accuracy"] * 100)
        ax.annotate(name, (m["bytes"] / 1024, m["accuracy"] * 100), fontsize=8, xytext=(4, 2),
                    textcoords="offset points")
    ax.set(xscale="log", xlabel="ONNX file size (KiB, log scale)", ylabel="test accuracy (%)",
           title="Accuracy vs size")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_size.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, history in histories.items():
        ax.plot([h["epoch"] for h in history], [h["val_accuracy"] * 100 for h in history], marker=".", label=name)
    ax.set(xlabel="epoch (within its stage)", ylabel="validation accuracy (%)", title="Training curves")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "training_curves.png", dpi=120)
    plt.close(fig)


def histories(layout: Layout) -> dict[str, list[dict]]:
    files = sorted(layout.teachers.glob("*.json")) + [layout.student / "student_alone.json",
                                                      layout.student / "student_kd.json",
                                                      layout.pruned / "pruned.json", layout.qat / "qat.json"]
    return {f.stem: read_json(f)["history"] for f in files}


def run(config: ReportConfig, params: PipelineParams, layout: Layout) -> dict:
    """Write data/reports/: metrics.json, report.md and PNG plots."""
    data = load_dataset(layout.dataset)
    x, y = data.test.x.numpy(), data.test.y.numpy()
    counts = param_counts(layout)
    measured = {p.stem: measure(p, x, y, counts[p.stem], config.latency_budget_s)
                for p in sorted(layout.export.glob("*.onnx"))}
    info = read_json(layout.raw / "info.json")
    metrics = {
        "teachers": [{"name": k.removeprefix("teacher_"), **v}
                     for k, v in measured.items() if k.startswith("teacher_")],
        **{m: measured[m] for m in MODELS},
        "dataset": {"name": info["source"], "md5": md5(layout.dataset), "n_train": info["n_train"],
                    "n_val": info["n_val"], "n_test": info["n_test"]},
        "git_commit": git_commit(layout.root),
        "onnxruntime": {"version": ort.__version__, "threads": "default"},
        "params": params.to_yaml_dict(),
    }
    metrics.update(summary(metrics, metrics["teachers"]))
    with atomic_dir(layout.reports) as out:
        write_json(out / "metrics.json", metrics)
        (out / "report.md").write_text(markdown_report(metrics))
        plot(metrics, histories(layout), out)
    log.info("report written to %s", layout.reports)
    return {k: metrics[k] for k in ("compression_ratio_vs_ensemble", "speedup_b1_vs_ensemble",
                                    "accuracy_drop_pp_vs_ensemble")}


if __name__ == "__main__":
    from tasks.cli import main

    main(run, ("report", "all"))

"""`make bench`: Distillery and the alternatives a user would reach for, side by side, over seeds.

For each seed the stage functions run directly in `bench/work/seed-N` (each stage timed); then
the baselines are built from that run's models (bench/baselines.py). Seeds run one after another,
or each as a task on Dask workers (`--dask-workers N` for a local cluster, `--dask-address` for
an existing one whose workers share this folder); models stay in files. At the end every ONNX model
of every seed is timed in this one process with the same onnxruntime threads. The first seed
also runs first as the Prefect flow (`distillery run`) in a clone of this repo, which measures the
orchestration overhead. Writes bench/results/latest.json and latest.md.
"""

import argparse
import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from bench import baselines, save_results
from distillery import checkpoint, models, onnx_export, stats
from distillery.data import Split, load_dataset
from distillery.files import read_json
from distillery.machine import cpu_flags
from distillery.models import Ensemble
from distillery.names import GREY_PAPER
from distillery.teacher_outputs import TeacherOutputs
from distillery.training import Objective
from project import eval_sets
from project.artifacts import load_model, read_record
from project.config import EvalSet, PipelineParams, load_params
from project.eval_sets import LoadedSet
from project.layout import PIPELINE_MODELS, TEACHER, Layout
from project.settings import device, kd_settings, train_settings
from project.ship_decision import ShipDecision
from project.students import load_teaching, train_student
from tasks import report, stages_through, train_teachers

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("distillery")
SEEDED = ("teachers", "distill", "prune", "quantize")
SHIFT_SETS = (  # beside the test split: the default report's sets, then development sets (the augmentation's choice)
    EvalSet(name="uci-digits", source="uci_digits"),
    EvalSet(name="uci-digits-grey-paper", source="uci_digits", paper=GREY_PAPER),
    EvalSet(name="test-grey-paper", source="test_split", paper=GREY_PAPER),
    EvalSet(name="typeset-digits-dev", source="typeset_digits"),
    EvalSet(name="typeset-digits-grey-paper-dev", source="typeset_digits", paper=GREY_PAPER),
)
SHIFT_PAIRS = report.PAIRS | {"int8_vs_pruned": ("int8", "pruned")}
MODELS = (
    "ensemble",
    "best_teacher",
    "student_alone",
    "student_kd_best_teacher",
    "student_kd",
    "probe_alone",
    "probe_kd",
    "masked_pruned",
    "pruned_alone",
    "pruned",
    "ptq_int8",
    "int8",
    "shipped",
)


def seed_params(params: PipelineParams, seed: int) -> PipelineParams:
    """The same run with every training seed set to `seed` (the data split stays fixed)."""
    return params.model_copy(update={s: params.section(s).model_copy(update={"seed": seed}) for s in SEEDED})


def shift_hits(entry: dict, sets: list[LoadedSet]) -> dict[str, np.ndarray]:
    """The model's hits on each set beyond the test split."""
    sess = onnx_export.session(entry["onnx"])
    found = {}
    for loaded in sets:
        split = Split(
            torch.from_numpy(loaded.images), torch.arange(len(loaded.labels)), torch.from_numpy(loaded.labels)
        )
        found[loaded.name] = onnx_export.predict(sess, split) == loaded.labels
    return found


def run_stages(params: PipelineParams, layout: Layout) -> dict[str, float]:
    """Every stage but publish, called directly; wall seconds per stage."""
    seconds = {}
    for stage in stages_through("report"):
        started = time.perf_counter()
        stage.call(params, layout)
        seconds[stage.name] = time.perf_counter() - started
    return seconds


def build_baselines(params: PipelineParams, layout: Layout, probe_scale: float) -> dict[str, dict]:
    """The alternatives, from this run's models: ONNX path and parameter count of each. Also the
    student at `probe_scale` of its widths, alone and distilled: where the default student matches
    the ensemble on its own, KD's value shows at a smaller size."""
    out = layout.root / "baselines"
    out.mkdir(exist_ok=True)
    data = load_dataset(layout.raw)
    example, dev = data.test.head(2), device()
    teaching = load_teaching(layout, data.transfer)  # as the stages distil
    best_name = read_json(layout.metrics)["best_teacher"]  # the report's: on validation, not test
    best = TEACHER + best_name
    student, spec = checkpoint.load(layout.checkpoint("student_kd"))
    if isinstance(teaching, TeacherOutputs):  # its cached outputs: the same views as every other student
        one_teacher = teaching.member(train_teachers.teacher_names(params.teachers).index(best_name))
    else:
        one_teacher = Ensemble([load_model(layout, best)]).to(dev)
    kd_one, _ = train_student(
        spec,
        data,
        params.distill,
        augment=params.augment,
        kd=params.kd,
        teaching=one_teacher,
        name="student_kd_best_teacher",
    )
    pruned_params = models.count_params(load_model(layout, "pruned"))
    masked = baselines.masked_prune(
        student,
        data,
        remove=models.count_params(student) - pruned_params,
        steps=params.prune.steps,
        settings=train_settings(params.prune, params.augment),
        objective=Objective(teaching, kd_settings(params.kd)),
        device=dev,
    )
    probe = models.scaled(spec, probe_scale)
    probe_alone, _ = train_student(
        probe, data, params.distill, augment=params.augment, kd=None, teaching=teaching, name="probe_alone"
    )
    probe_kd, _ = train_student(
        probe, data, params.distill, augment=params.augment, kd=params.kd, teaching=teaching, name="probe_kd"
    )
    found = {
        "best_teacher": {
            "onnx": layout.onnx(best),
            "name": best_name,
            "params": read_record(layout, best)["params"],
        }
    }
    for name, model in (
        ("student_kd_best_teacher", kd_one),
        ("masked_pruned", masked),
        ("probe_alone", probe_alone),
        ("probe_kd", probe_kd),
    ):
        onnx_export.export(model.cpu().eval(), example, out / f"{name}.onnx")
        found[name] = {"onnx": out / f"{name}.onnx", "params": baselines.nonzero_params(model)}
    calibration = data.train.head(512).numpy()
    found["ptq_int8"] = {
        "onnx": baselines.ort_static_int8(layout.onnx("pruned"), calibration, out / "ptq_int8.onnx"),
        "params": pruned_params,
    }
    return found


def run_seed(params: PipelineParams, seed: int, work: Path, probe_scale: float) -> dict:
    """One seed in work/seed-N: every stage (timed), then the baselines built from its models."""
    layout = Layout(work / f"seed-{seed}")
    shutil.rmtree(layout.root, ignore_errors=True)
    layout.root.mkdir(parents=True)
    p = seed_params(params, seed)
    stage_seconds = run_stages(p, layout)
    started = time.perf_counter()
    found = pipeline_models(layout) | build_baselines(p, layout, probe_scale)
    stage_seconds["baselines (bench only)"] = time.perf_counter() - started
    return {
        "seed": seed,
        "stage_seconds": stage_seconds,
        "layout": layout,
        "found": found,
        "process": f"{socket.gethostname()}:{os.getpid()}",
    }


@contextmanager
def seed_map(dask_address: str | None, dask_workers: int | None) -> Iterator[Callable]:
    """`map` in this process, or one that runs each call as a task on a Dask cluster: an existing
    scheduler, or a temporary local one of `dask_workers` one-thread processes on 127.0.0.1."""
    if not (dask_address or dask_workers):
        yield map
        return
    import dask
    from distributed import Client

    from flows.runners import RunnerConfig, cluster_kwargs, without_malloc_trim

    local = RunnerConfig(kind="dask", dask_cluster_kwargs={"n_workers": dask_workers, "threads_per_worker": 1})
    with (
        dask.config.set(without_malloc_trim()),
        Client(dask_address) if dask_address else Client(**cluster_kwargs(local)) as client,
    ):
        yield lambda fn, *args: client.gather(client.map(fn, *args, pure=False))


def pipeline_models(layout: Layout) -> dict[str, dict]:
    metrics, decision = read_json(layout.metrics), ShipDecision.read(layout.ship_decision)
    found = {m: {"onnx": layout.onnx(m), "params": metrics[m]["params"]} for m in PIPELINE_MODELS}
    found["shipped"] = {**found[decision.headline_model], "name": decision.model}
    return found


def measure(entry: dict, data, *, budget_s: float, threads: int) -> tuple[dict, np.ndarray]:
    """Test and validation accuracy (as the report measures them) and the report's footprint (the same
    onnxruntime threads), plus the entry's name; and the model's hits on the test images (for intervals and
    paired comparisons over the seeds)."""
    sess = onnx_export.session(entry["onnx"])
    hits = onnx_export.predict(sess, data.test) == data.test.y.numpy()
    found = {
        "accuracy": float(hits.mean()),
        "val_accuracy": onnx_export.accuracy(sess, data.val),
        "name": entry.get("name"),
    }
    return found | report.footprint(
        entry["onnx"], data, params=entry.get("params"), budget_s=budget_s, threads=threads
    ), hits


EVALUATED = ("best_teacher", "ensemble", "student_alone", "student_kd", "pruned_alone", "pruned", "int8", "shipped")


def evaluated(layout: Layout) -> dict[str, dict]:
    """The report's measures beyond accuracy for the pipeline's models, the best teacher (on validation) and
    the shipped model; and the NLL and corrupted accuracy of every teacher."""
    metrics = read_json(layout.metrics)
    entries = {m: metrics[m] for m in PIPELINE_MODELS}
    entries["best_teacher"] = next(t for t in metrics["teachers"] if t["name"] == metrics["best_teacher"])
    entries["shipped"] = metrics[ShipDecision.read(layout.ship_decision).headline_model]
    keep = ("calibration", "temperature", "calibrated", "corrupted", "agreement_with_ensemble", "train_test_gap_pp")
    found = {m: {k: entries[m][k] for k in keep} for m in EVALUATED}
    found["teachers"] = {
        t["name"]: {"nll": t["calibration"]["nll"], "corrupted_accuracy": t["corrupted"]["accuracy"]}
        for t in metrics["teachers"]
    }
    return found


def pooled(hits: list[dict[str, np.ndarray]], pairs: dict[str, tuple[str, str]] = report.PAIRS) -> dict:
    """Over every seed's predictions on the (shared) test images: each model's accuracy with its 95% interval,
    and the report's paired comparisons, with each seed's difference beside. The bootstrap resamples images, each
    with its hits in every seed: the intervals hold for these seeds' models, not for a fresh seed's."""
    stacked = {m: np.stack([h[m] for h in hits]) for m in hits[0]}  # seeds x images
    return {
        "accuracy": {
            m: {
                "accuracy": float(h.mean()),
                "interval": stats.accuracy_interval(h),
                "per_seed": h.mean(axis=1).tolist(),
            }
            for m, h in stacked.items()
        },
        "comparisons": {
            key: {"a": a, "b": b, "per_seed": (stacked[a].mean(axis=1) - stacked[b].mean(axis=1)).tolist()}
            | stats.paired_difference(stacked[a], stacked[b])
            for key, (a, b) in pairs.items()
        },
    }


def flow_wall_time(params: PipelineParams, work: Path) -> float:
    """`distillery run` of these params in a fresh clone of the repo: the user's path, with DVC."""
    clone = work / "flow"
    shutil.rmtree(clone, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    Layout(clone).params.write_text(json.dumps(params.to_yaml_dict()))  # JSON is YAML; the clone's own
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "DISTILLERY_BUCKET")}
    env["DISTILLERY_STACK_DIR"] = str(clone / "no-stack")  # nothing is published from a benchmark
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cli", "run", "--root", str(clone)], cwd=ROOT, env=env, check=True)
    return time.perf_counter() - started


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


FIGURES = {  # the report's measures the bench summarizes: name -> path in a model's entry
    "nll": ("calibration", "nll"),
    "nll_scaled": ("calibrated", "nll"),
    "ece": ("calibration", "ece"),
    "ece_scaled": ("calibrated", "ece"),
    "brier": ("calibration", "brier"),
    "brier_scaled": ("calibrated", "brier"),
    "temperature": ("temperature",),
    "corrupted_accuracy": ("corrupted", "accuracy"),
    "agreement_with_ensemble": ("agreement_with_ensemble",),
    "corrupted_agreement_with_ensemble": ("corrupted", "agreement_with_ensemble"),
    "train_test_gap_pp": ("train_test_gap_pp",),
}


def figure(entry: dict, path: tuple[str, ...]) -> float:
    for key in path:
        entry = entry[key]
    return entry


def summarize(runs: list[dict], hits: list[dict[str, np.ndarray]], shifted: list[dict[str, dict]]) -> dict:
    table = {}
    for m in MODELS:
        entries = [r["models"][m] for r in runs]
        table[m] = {
            "accuracy": spread([e["accuracy"] for e in entries]),
            "bytes": spread([e["bytes"] for e in entries]),
            "params": spread([e["params"] for e in entries if e["params"] is not None] or [0]),
            "latency_ms": {b: spread([e["latency_ms"][b] for e in entries]) for b in ("b1", "b256")},
            "names": sorted({str(e["name"]) for e in entries if e["name"]}),
        }
    evaluated_table = {
        m: {f: spread([figure(r["evaluated"][m], path) for r in runs]) for f, path in FIGURES.items()}
        for m in EVALUATED
    }
    stages = {s: spread([r["stage_seconds"][s] for r in runs]) for s in runs[0]["stage_seconds"]}
    off_split = {
        s.name: pooled([{m: by_set[s.name] for m, by_set in seed.items()} for seed in shifted], SHIFT_PAIRS)
        for s in SHIFT_SETS
    }
    return {
        "models": table,
        "evaluated": evaluated_table,
        "pooled": pooled(hits),
        "off_split": off_split,
        "stage_seconds": stages,
    }


def targets(runs: list[dict], summary: dict, orchestration: dict | None) -> list[dict]:
    """The issues' targets, from the seeds' medians: a difference between two models is the median of each seed's
    difference (its models on the same images); an interval comes from every seed's images pooled."""
    acc = {m: summary["models"][m]["accuracy"]["median"] for m in MODELS}
    lat = {m: summary["models"][m]["latency_ms"] for m in ("ensemble", "shipped", "pruned", "int8")}
    ev = {m: {f: v["median"] for f, v in figures.items()} for m, figures in summary["evaluated"].items()}
    pp = 100  # points per unit of accuracy

    def median_over_seeds(value: Callable[[dict], float]) -> float:
        return statistics.median(value(r) for r in runs)

    def gain(a: str, b: str) -> float:  # a's accuracy minus b's, in points
        return median_over_seeds(lambda r: r["models"][a]["accuracy"] - r["models"][b]["accuracy"]) * pp

    def gap_closed(alone: str, kd: str) -> float:  # undefined when the student alone matches the ensemble
        gap = gain("ensemble", alone)
        return gain(kd, alone) / gap if gap > 0 else float("nan")

    def corrupted(run: dict, model: str) -> float:
        return run["evaluated"][model]["corrupted"]["accuracy"]

    def corrupted_gain(a: str, b: str) -> float:  # a's corrupted accuracy minus b's, in points
        return median_over_seeds(lambda r: corrupted(r, a) - corrupted(r, b)) * pp

    def nll_margin(run: dict) -> float:  # the lowest teacher NLL minus the ensemble's
        ensemble = run["evaluated"]["ensemble"]["calibration"]["nll"]
        return min(t["nll"] for t in run["evaluated"]["teachers"].values()) - ensemble

    def robustness_margin(run: dict) -> float:  # the ensemble's corrupted accuracy minus the best teacher's
        teachers = run["evaluated"]["teachers"].values()
        ensemble = run["evaluated"]["ensemble"]["corrupted"]["accuracy"]
        return ensemble - max(t["corrupted_accuracy"] for t in teachers)

    kd_at_shipped_size = summary["pooled"]["comparisons"]["kd_vs_alone_at_shipped_size"]
    off_split = summary["off_split"]

    def on(name: str, model: str) -> float:  # the median over seeds of a model's accuracy on a set, in %
        return statistics.median(off_split[name]["accuracy"][model]["per_seed"]) * pp

    def shift_gain(name: str, pair: str) -> float:  # the median of each seed's paired difference on a set, points
        return statistics.median(off_split[name]["comparisons"][pair]["per_seed"]) * pp

    def mildest(run: dict) -> float:  # the shipped model's accuracy under its worst corruption kind at severity 1
        return min(
            by_severity[0] for by_severity in run["evaluated"]["shipped"]["corrupted"]["accuracy_by_kind"].values()
        )

    uci, uci_grey, test_grey = (s.name for s in SHIFT_SETS[:3])
    rows = [
        ("ensemble test accuracy >= 98.8%", acc["ensemble"] * pp, ">=", 98.8),
        ("ensemble >= its best member (on validation), points", gain("ensemble", "best_teacher"), ">=", 0),
        ("ensemble NLL below every member's (lowest member NLL - ensemble NLL)", median_over_seeds(nll_margin), ">", 0),
        ("shipped accuracy >= ensemble - 0.3 pt", gain("shipped", "ensemble"), ">=", -0.3),
        ("shipped top-1 agreement with the ensemble >= 99%", ev["shipped"]["agreement_with_ensemble"] * pp, ">=", 99),
        ("KD at the shipped size >= the same size alone + 0.5 pt", gain("pruned", "pruned_alone"), ">=", 0.5),
        (
            "the same: lower end of the paired 95% interval, seeds pooled (these seeds' models; points)",
            kd_at_shipped_size["interval"][0] * pp,
            ">",
            0,
        ),
        (
            "shipped ECE after temperature scaling <= the ensemble's ECE",
            ev["shipped"]["ece_scaled"],
            "<=",
            ev["ensemble"]["ece"],
        ),
        (
            "corrupted accuracy: ensemble >= best member + 1 pt",
            corrupted_gain("ensemble", "best_teacher"),
            ">=",
            1,
        ),
        (
            "corrupted accuracy: ensemble >= its most robust member (points)",
            median_over_seeds(robustness_margin) * pp,
            ">=",
            0,
        ),
        (
            "corrupted accuracy: shipped >= the same size alone + 1 pt",
            corrupted_gain("shipped", "pruned_alone"),
            ">=",
            1,
        ),
        ("int8 accuracy >= ensemble - 0.5 pt", gain("int8", "ensemble"), ">=", -0.5),
        ("shipped test accuracy >= 98.0%", acc["shipped"] * pp, ">=", 98.0),
        (f"grey paper: shipped on {uci_grey} >= 90%", on(uci_grey, "shipped"), ">=", 90),
        (f"grey paper: shipped on {test_grey} >= 90%", on(test_grey, "shipped"), ">=", 90),
        (f"grey paper: ensemble on {uci_grey} >= 95%", on(uci_grey, "ensemble"), ">=", 95),
        (f"grey paper: ensemble on {test_grey} >= 95%", on(test_grey, "ensemble"), ">=", 95),
        (
            "corrupted accuracy: shipped, the mean of every kind and severity >= 85%",
            ev["shipped"]["corrupted_accuracy"] * pp,
            ">=",
            85,
        ),
        ("corrupted accuracy: shipped, the worst kind at severity 1 >= 80%", median_over_seeds(mildest) * pp, ">=", 80),
        (f"natural shift: shipped on {uci} >= ensemble - 2 pt", shift_gain(uci, "shipped_vs_ensemble"), ">=", -2),
        (
            f"natural shift: KD at the shipped size on {uci} >= alone + 2 pt",
            shift_gain(uci, "kd_vs_alone_at_shipped_size"),
            ">=",
            2,
        ),
        (
            "the same: lower end of the paired 95% interval, seeds pooled (points)",
            off_split[uci]["comparisons"]["kd_vs_alone_at_shipped_size"]["interval"][0] * pp,
            ">",
            0,
        ),
        (f"natural shift: int8 on {uci} >= pruned - 1 pt", shift_gain(uci, "int8_vs_pruned"), ">=", -1),
        (
            "KD from the ensemble closes >= 50% of the alone-ensemble gap",
            gap_closed("student_alone", "student_kd"),
            ">=",
            0.5,
        ),
        (
            "the same at the probe size (--kd-probe-scale of the widths)",
            gap_closed("probe_alone", "probe_kd"),
            ">=",
            0.5,
        ),
        ("int8 bytes <= 20 KB", summary["models"]["int8"]["bytes"]["median"] / 1000, "<=", 20),
        (
            "int8 >= 100x fewer bytes than the best teacher (on validation)",
            median_over_seeds(lambda r: r["models"]["best_teacher"]["bytes"] / r["models"]["int8"]["bytes"]),
            ">=",
            100,
        ),
        (
            "shipped batch-1 latency >= 50x lower than the ensemble",
            lat["ensemble"]["b1"]["median"] / lat["shipped"]["b1"]["median"],
            ">=",
            50,
        ),
        (
            "shipped batch-256 throughput >= 40x the ensemble",
            lat["ensemble"]["b256"]["median"] / lat["shipped"]["b256"]["median"],
            ">=",
            40,
        ),
        ("QAT int8 accuracy >= onnxruntime PTQ", gain("int8", "ptq_int8"), ">=", 0),
        (
            "int8 >= 1.5x faster than fp32 pruned at batch 256 (needs VNNI)",
            lat["pruned"]["b256"]["median"] / lat["int8"]["b256"]["median"],
            ">=",
            1.5,
        ),
    ]
    if orchestration:
        rows += [
            ("`distillery run` (the flow, fresh clone) <= 8 minutes", orchestration["flow_s"] / 60, "<=", 8),
            ("orchestration overhead <= 5% of the flow's wall time", orchestration["overhead_share"], "<=", 0.05),
        ]
    met = {">=": lambda v, g: v >= g, ">": lambda v, g: v > g, "<=": lambda v, g: v <= g}
    return [{"target": t, "value": v, "goal": f"{op} {g:.3g}", "met": met[op](v, g)} for t, v, op, g in rows]


def machine() -> dict:
    return {"cpu": cpu_flags(), "torch": torch.__version__, "onnxruntime": ort.__version__, "device": str(device())}


def markdown(result: dict) -> str:
    def cell(s: dict, fmt: str, scale: float = 1) -> str:
        return f"{s['median'] * scale:{fmt}} [{s['min'] * scale:{fmt}}–{s['max'] * scale:{fmt}}]"

    lines = [
        f"# Distillery benchmark ({len(result['seeds'])} seeds: median [min–max])",
        "",
        f"Commit `{result['git_commit']}`, {result['machine']}.",
        "",
        "Test accuracy per seed, and over every seed's test images pooled with its 95% bootstrap interval.",
        "",
        "| model | test accuracy (%) | pooled (95% interval) | params | ONNX bytes | latency b1 (ms) "
        "| latency b256 (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    pooled = result["summary"]["pooled"]
    for m, s in result["summary"]["models"].items():
        name = f"{m} ({', '.join(s['names'])})" if s["names"] else m
        p = pooled["accuracy"][m]
        lines.append(
            f"| {name} | {cell(s['accuracy'], '.2f', 100)} | {p['accuracy'] * 100:.2f} "
            f"[{p['interval'][0] * 100:.2f}, {p['interval'][1] * 100:.2f}] | {cell(s['params'], ',.0f')} | "
            f"{cell(s['bytes'], ',.0f')} | {cell(s['latency_ms']['b1'], '.3f')} | "
            f"{cell(s['latency_ms']['b256'], '.2f')} |"
        )
    lines += [
        "",
        "What the ensemble gave, what the student kept (the report's measures; ECE in %, corrupted accuracy and "
        "agreement in %):",
        "",
        "| model | NLL raw → scaled | ECE raw → scaled | corrupted accuracy | agreement with ensemble "
        "| train − test (points) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m, f in result["summary"]["evaluated"].items():
        lines.append(
            f"| {m} | {cell(f['nll'], '.4f')} → {cell(f['nll_scaled'], '.4f')} | {cell(f['ece'], '.2f', 100)} → "
            f"{cell(f['ece_scaled'], '.2f', 100)} | {cell(f['corrupted_accuracy'], '.2f', 100)} | "
            f"{cell(f['agreement_with_ensemble'], '.2f', 100)} | {cell(f['train_test_gap_pp'], '+.2f')} |"
        )
    lines += [
        "",
        "Paired on the same test images, every seed's pooled (the intervals resample images: they hold for these "
        "seeds' models, not for a fresh seed's; each seed's difference beside):",
        "",
    ]
    for key, c in pooled["comparisons"].items():
        per_seed = ", ".join(f"{d * 100:+.1f}" for d in c["per_seed"])
        lines.append(
            f"- {key}: {c['a']} − {c['b']} = {c['difference'] * 100:+.2f} points "
            f"[{c['interval'][0] * 100:+.2f}, {c['interval'][1] * 100:+.2f}] over {c['images']} test images, "
            f"each with its {len(result['seeds'])} seeds' predictions; per seed {per_seed}"
        )
    off_split = result["summary"]["off_split"]
    lines += [
        "",
        "Off the test split (`SHIFT_SETS`; grey paper: ground 60/255; the typeset sets are the development sets the "
        "training augmentation was chosen on): accuracy in %, the median over seeds, and every seed's images pooled "
        "with its 95% interval.",
        "",
        "| model | " + " | ".join(off_split) + " |",
        "|---|" + "---:|" * len(off_split),
    ]
    for m in MODELS:
        cells = []
        for found in off_split.values():
            a = found["accuracy"][m]
            low, high = (100 * v for v in a["interval"])
            cells.append(f"{statistics.median(a['per_seed']) * 100:.1f} [{low:.1f}, {high:.1f}]")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Paired on each set's images, seeds pooled (points, 95% interval; each seed's difference beside):",
        "",
    ]
    for name, found in off_split.items():
        for key, c in found["comparisons"].items():
            per_seed = ", ".join(f"{d * 100:+.1f}" for d in c["per_seed"])
            lines.append(
                f"- {name}, {key}: {c['difference'] * 100:+.2f} [{c['interval'][0] * 100:+.2f}, "
                f"{c['interval'][1] * 100:+.2f}]; per seed {per_seed}"
            )
    lines += ["", "| stage | wall time (s) |", "|---|---:|"]
    lines += [f"| {s} | {cell(v, '.1f')} |" for s, v in result["summary"]["stage_seconds"].items()]
    if result["orchestration"]:
        o = result["orchestration"]
        lines += [
            "",
            f"Orchestration: `distillery run` (Prefect flow + DVC, fresh clone) {o['flow_s']:.0f} s vs the "
            f"stage functions called directly {o['direct_s']:.0f} s, same seed: overhead "
            f"{o['overhead_share'] * 100:.1f}% of the flow's wall time.",
        ]
    lines += ["", "| target | value | goal | met |", "|---|---:|---|---|"]
    lines += [
        f"| {t['target']} | {t['value']:.3g} | {t['goal']} | {'yes' if t['met'] else '**no**'} |"
        for t in result["targets"]
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--params", type=Path, default=Layout(ROOT).params)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--no-flow", action="store_true", help="skip the orchestration-overhead run")
    parser.add_argument("--latency-budget-s", type=float, default=1.0)
    parser.add_argument("--dask-workers", type=int, help="run the seeds on a local Dask cluster of this many workers")
    parser.add_argument("--dask-address", help="run the seeds on this Dask scheduler (workers share this folder)")
    parser.add_argument(
        "--kd-probe-scale",
        type=float,
        default=0.25,
        help="KD vs alone also for the student at this share of its widths",
    )
    args = parser.parse_args()
    os.environ["DISTILLERY_DEVICE"] = args.device
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)
    params = load_params(args.params)
    commit = report.git_commit(ROOT)  # the code this run imports: the tree may change while it runs

    flow_s = None if args.no_flow else flow_wall_time(seed_params(params, args.seeds[0]), args.work)  # fails first
    one_seed = partial(run_seed, params, work=args.work, probe_scale=args.kd_probe_scale)
    with seed_map(args.dask_address, args.dask_workers) as map_seeds:
        runs = list(map_seeds(one_seed, args.seeds))
    found = {run["seed"]: run.pop("found") for run in runs}
    orchestration = None
    if flow_s is not None:
        direct_s = sum(v for k, v in runs[0]["stage_seconds"].items() if k != "baselines (bench only)")
        orchestration = {"flow_s": flow_s, "direct_s": direct_s, "overhead_share": (flow_s - direct_s) / flow_s}

    threads = onnx_export.cpu_threads(params.measure.latency_threads)
    hits, shifted = [], []
    for run in runs:  # one process, one thread setting, every model of every seed
        layout = run.pop("layout")
        data = load_dataset(layout.raw)
        measured = {
            m: measure(e, data, budget_s=args.latency_budget_s, threads=threads) for m, e in found[run["seed"]].items()
        }
        run["models"] = {m: figures for m, (figures, _) in measured.items()}
        run["evaluated"] = evaluated(layout)
        hits.append({m: model_hits for m, (_, model_hits) in measured.items()})
        info = read_json(layout.dataset_info)
        learnt = eval_sets.learnt_images(layout)
        sets = eval_sets.load(list(SHIFT_SETS), layout, info["classes"], tuple(info["shape"]), learnt=learnt)
        shifted.append({m: shift_hits(e, sets) for m, e in found[run["seed"]].items()})

    summary = summarize(runs, hits, shifted)
    result = {
        "seeds": args.seeds,
        "params": params.to_yaml_dict(),
        "git_commit": commit,
        "machine": machine(),
        "onnxruntime_threads": threads,
        "runs": runs,
        "summary": summary,
        "orchestration": orchestration,
        "targets": targets(runs, summary, orchestration),
    }
    save_results("latest", result, markdown(result), args.out)


if __name__ == "__main__":
    main()

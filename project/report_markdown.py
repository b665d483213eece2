"""The report's text: report.md and the rows of its tables (also the Prefect table artifacts), from metrics.json."""

from distillery import calibration, corruptions
from project.layout import PIPELINE_MODELS, TEACHER, Layout
from project.ship_decision import ShipDecision


def percent(value: float) -> str:
    return f"{value * 100:.2f}"


def ratio(value: float) -> str:
    """A ratio as a reader takes it in: whole numbers from 10 up (1,834), two significant digits below (0.18)."""
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def interval(bounds: list[float], *, signed: bool = False) -> str:
    """A 95% interval in percent or points, at the precision of the figures beside it."""
    form = "+.2f" if signed else ".2f"
    return f"[{bounds[0] * 100:{form}}, {bounds[1] * 100:{form}}]"


def table(rows: list[dict]) -> list[str]:
    """A markdown table: one column per key of the rows, the first left-aligned."""
    return [
        "| " + " | ".join(rows[0]) + " |",
        "|---" + "|---:" * (len(rows[0]) - 1) + "|",
        *["| " + " | ".join(r.values()) + " |" for r in rows],
    ]


def models(metrics: dict) -> dict[str, dict]:
    """Every model's entry by its name in the report: "teacher <name>", then the pipeline's models."""
    return {f"teacher {t['name']}": t for t in metrics["teachers"]} | {m: metrics[m] for m in PIPELINE_MODELS}


def table_rows(metrics: dict, shipped: str | None) -> list[dict]:
    """Accuracy, size, latency and the export check of every model, the `shipped` one marked."""
    return [
        {
            "model": name + (" (shipped)" if name == shipped else ""),
            "test accuracy % (95% interval)": f"{percent(m['accuracy'])} {interval(m['accuracy_interval'])}",
            "params": f"{m['params']:,}",
            "bytes": f"{m['bytes']:,}",
            "latency b1 (ms)": f"{m['latency_ms']['b1']:.3f}",
            "latency b256 (ms)": f"{m['latency_ms']['b256']:.2f}",
            "ONNX = torch (top-1 / max diff)": f"{m['verified']['top1_agreement']:.2%} / "
            f"{m['verified']['max_error_steps']:.2g} steps",
        }
        for name, m in models(metrics).items()
    ]


def markdown_table(metrics: dict, shipped: str | None) -> str:
    """The table of every model's accuracy, size, latency and export check (`distillery run` prints it)."""
    return "\n".join(table(table_rows(metrics, shipped)))


def kept_rows(metrics: dict) -> list[dict]:
    """What the ensemble gave and the student kept: robustness, agreement, calibration and the train-test gap."""
    rows = []
    for name, m in models(metrics).items():
        raw, scaled, corrupted = m["calibration"], m["calibrated"], m["corrupted"]
        rows.append(
            {
                "model": name,
                "corrupted accuracy % (95% interval)": f"{percent(corrupted['accuracy'])} "
                f"{interval(corrupted['accuracy_interval'])}",
                "agreement with ensemble % (clean / corrupted)": f"{m['agreement_with_ensemble'] * 100:.1f} / "
                f"{corrupted['agreement_with_ensemble'] * 100:.1f}",
                "NLL raw → scaled (T)": f"{raw['nll']:.4f} → {scaled['nll']:.4f} ({m['temperature']:.2f})",
                "ECE % raw → scaled": f"{percent(raw['ece'])} → {percent(scaled['ece'])}",
                "Brier raw → scaled": f"{raw['brier']:.4f} → {scaled['brier']:.4f}",
                "train − test (points)": f"{m['train_test_gap_pp']:+.2f}",
            }
        )
    return rows


def separates(bounds: list[float]) -> bool:
    """Whether an interval of a difference excludes 0."""
    return bounds[0] > 0 or bounds[1] < 0


def difference(value: float, bounds: list[float], distinct: bool) -> str:
    """A difference in points with its interval: bold where the test split tells the two models apart."""
    text = f"{value * 100:+.2f} points {interval(bounds, signed=True)}"
    return f"**{text}**" if distinct else f"{text} (not distinguishable)"


def comparison_line(title: str, c: dict) -> str:
    """A paired comparison in a sentence: on clean images, and under corruption where it was measured."""
    clean = difference(c["difference"], c["interval"], separates(c["interval"]) and c["mcnemar_p"] < 0.05)
    line = (
        f"- {title}: {c['a']} − {c['b']} = {clean}, McNemar p = {c['mcnemar_p']:.2g} ({c['only_a']} "
        f"image{'' if c['only_a'] == 1 else 's'} only {c['a']} gets right, {c['only_b']} only {c['b']})"
    )
    if "corrupted" not in c:
        return line + "."
    corrupted = c["corrupted"]
    under = difference(corrupted["difference"], corrupted["interval"], separates(corrupted["interval"]))
    return f"{line}; under corruption {under}."


def set_rows(metrics: dict, found: dict) -> list[dict]:
    """Every model on one evaluation set: accuracy with its interval, agreement with the ensemble, calibration."""
    names = {f"teacher {t['name']}": TEACHER + t["name"] for t in metrics["teachers"]} | {m: m for m in PIPELINE_MODELS}
    rows = []
    for shown, name in names.items():
        m = found["models"][name]
        rows.append(
            {
                "model": shown,
                "accuracy % (95% interval)": f"{percent(m['accuracy'])} {interval(m['accuracy_interval'])}",
                "agreement with ensemble %": f"{m['agreement_with_ensemble'] * 100:.1f}",
                "NLL raw → scaled": f"{m['calibration']['nll']:.4f} → {m['calibrated']['nll']:.4f}",
                "ECE % raw → scaled": f"{percent(m['calibration']['ece'])} → {percent(m['calibrated']['ece'])}",
            }
        )
    return rows


def eval_sets_section(metrics: dict) -> list[str]:
    """Every model on each evaluation set (`report.eval_sets`), and the paired comparisons there."""
    lines = [
        "## Off the test split",
        "",
        "Every model on labelled sets from where the model will be used (`report.eval_sets`): accuracy with its 95% "
        "interval, agreement with the ensemble's class, NLL and ECE raw and scaled by the temperature fitted on the "
        "validation split. Paired on the set's images, as on the test split.",
    ]
    for name, found in metrics["eval_sets"].items():
        c = found["comparisons"]
        lines += [
            "",
            f"### {name} ({found['images']:,} images, {found['source']})",
            "",
            *table(set_rows(metrics, found)),
            "",
            comparison_line("The shipped model against the ensemble", c["shipped_vs_ensemble"]),
            comparison_line("Distillation at the shipped size", c["kd_vs_alone_at_shipped_size"]),
            comparison_line("Distillation at the student's size", c["kd_vs_alone_at_student_size"]),
        ]
    return lines if metrics["eval_sets"] else []


def kept_section(metrics: dict, layout: Layout) -> list[str]:
    c = metrics["comparisons"]
    return [
        "## What the ensemble gave, what the student kept",
        "",
        f"On the {metrics['dataset']['n_test']} test images. Corrupted accuracy: the mean over "
        f"{len(corruptions.KINDS)} corruptions ({', '.join(corruptions.KINDS)}) at {len(corruptions.SEVERITIES)} "
        "severities of every test image; its interval resamples images. Agreement: the share of images given the "
        f"ensemble's class. Calibration: NLL, ECE ({calibration.ECE_BINS} bins) and Brier score, raw and after "
        "temperature scaling (T fitted on the validation split by NLL).",
        "",
        *table(kept_rows(metrics)),
        "",
        "Paired on the same test images: the difference, its 95% paired bootstrap interval and McNemar's exact test "
        "on clean images, and the difference under corruption. In bold where the interval excludes 0 (and, on clean "
        "images, p < 0.05); otherwise this test split cannot tell the two apart.",
        "",
        comparison_line(
            f"The ensemble over its best member (chosen on validation: {metrics['best_teacher']})",
            c["ensemble_vs_best_teacher"],
        ),
        comparison_line("The shipped model against the ensemble", c["shipped_vs_ensemble"]),
        comparison_line(
            "Distillation at the shipped size (the same architecture trained alone, as many epochs)",
            c["kd_vs_alone_at_shipped_size"],
        ),
        comparison_line("Distillation at the student's size", c["kd_vs_alone_at_student_size"]),
        "",
        f"![what the student kept]({layout.kept_plot.name})",
    ]


RULE_WORDS = {
    "mean_probabilities": "the mean of their probabilities",
    "mean_logits": "the softmax of the mean of their logits",
    "fitted_weights": "a weighted mean of their probabilities, the weights fitted on the validation split by NLL",
}


def combination_line(combination: dict) -> str:
    """Which rule joins the teachers (`kd.combine`), with each teacher's weight and every rule's validation NLL."""
    weights = ", ".join(
        f"{name.removeprefix('teacher_')} {weight:.3f}"
        for name, weight in zip(combination["members"], combination["weights"], strict=True)
    )
    others = "; ".join(f"{rule} {v['val_nll']:.4f}" for rule, v in combination["validation"].items())
    return (
        f"The ensemble joins its teachers by {RULE_WORDS[combination['rule']]} (`kd.combine: {combination['rule']}`); "
        f"weights: {weights}. Validation NLL of each rule (fitted weights: on the same images): {others}."
    )


def student_line(student: dict) -> str:
    size = f"width multiplier {student['width_mult']:g}" if "width_mult" in student else f"widths {student['widths']}"
    return f"Student: `{student['arch']}`, {size} before pruning."


def markdown_report(metrics: dict, decision: ShipDecision, layout: Layout) -> str:
    d = metrics["dataset"]
    return "\n".join(
        [
            "# Distillery report",
            "",
            f"**Shipped model: {decision.model or 'none'}** ({decision.reason}).",
            "",
            f"Dataset `{d['name']}` (md5 {d['md5']}): "
            f"{d['n_train']} train / {d['n_val']} val / {d['n_test']} test images"
            + (f", and {d['n_unlabeled']} unlabeled images the students distilled from." if d["n_unlabeled"] else "."),
            student_line(metrics["student"]),
            f"Git commit: `{metrics['git_commit']}`. Accuracy: with its 95% bootstrap interval over the test images. "
            "Latency: onnxruntime on CPU, median of repeated runs. The last column compares each ONNX file with its "
            "PyTorch model on every test image (the int8 file with PyTorch's int8 model); a step is 1/255 of the "
            "model's output range.",
            "",
            markdown_table(metrics, decision.model),
            "",
            combination_line(metrics["ensemble"]["combination"]),
            "",
            f"Ratios below are for {decision.model or 'the int8 model'}.",
            "",
            f"- Compression vs the ensemble: **{ratio(metrics['compression_ratio_vs_ensemble'])}x** fewer bytes; "
            f"vs the best teacher ({metrics['best_teacher']}): {ratio(metrics['compression_ratio_vs_best_teacher'])}x.",
            f"- Batch-1 speed-up vs the ensemble: **{ratio(metrics['speedup_b1_vs_ensemble'])}x**; "
            f"batch 256: {ratio(metrics['speedup_b256_vs_ensemble'])}x.",
            f"- Accuracy change vs the ensemble: {-metrics['accuracy_drop_pp_vs_ensemble']:+.2f} points.",
            "",
            f"![accuracy vs size]({layout.accuracy_plot.name})",
            "",
            *kept_section(metrics, layout),
            "",
            *eval_sets_section(metrics),
            "",
            f"![training curves]({layout.curves_plot.name})",
            "",
        ]
    )

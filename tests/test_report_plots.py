"""Every label of the report's figures can be read: no two pieces of text overlap, even where two models
have the same size and accuracy (a label placed beside each point overprinted the other)."""

import itertools
import json

from matplotlib.figure import Figure
from matplotlib.text import Text

from project import report_markdown, report_plots
from project.layout import PIPELINE_MODELS


def overlapping_texts(fig: Figure) -> list[tuple[str, str]]:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    return [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2) if box_a.overlaps(box_b)]


def model(accuracy: float, size: int) -> dict:
    return {
        "accuracy": accuracy,
        "accuracy_interval": [accuracy - 0.008, accuracy + 0.006],
        "bytes": size,
        "corrupted": {"accuracy": accuracy - 0.1, "accuracy_interval": [accuracy - 0.11, accuracy - 0.09]},
        "calibration": {"ece": 0.02},
        "calibrated": {"ece": 0.01},
    }


TWINS = {  # two pairs of models with the same size and accuracy
    "student_alone": model(0.984, 70_000),
    "student_kd": model(0.984, 70_000),
    "teacher 2_resnet18": model(0.977, 44_000_000),
    "ensemble": model(0.977, 44_000_000),
    "int8": model(0.983, 22_000),
}


def test_no_label_overlaps_another_when_models_coincide():
    assert overlapping_texts(report_plots.accuracy_vs_size(TWINS)) == []
    assert overlapping_texts(report_plots.what_the_student_kept(TWINS)) == []


def test_no_label_overlaps_another_in_the_runs_figures(staged):
    metrics = json.loads(staged.metrics.read_text())
    models = {f"teacher {t['name']}": t for t in metrics["teachers"]} | {m: metrics[m] for m in PIPELINE_MODELS}
    histories = {name: json.loads(staged.record(name).read_text())["history"] for name in ("student_kd", "pruned")}
    for fig in (
        report_plots.accuracy_vs_size(models),
        report_plots.what_the_student_kept(models),
        report_plots.training_curves(histories),
    ):
        assert overlapping_texts(fig) == []


def comparison(clean: list[float], p: float, corrupted: list[float]) -> dict:
    return {
        "a": "pruned",
        "b": "pruned_alone",
        "difference": sum(clean) / 2,
        "interval": clean,
        "mcnemar_p": p,
        "only_a": 12,
        "only_b": 4,
        "corrupted": {"difference": sum(corrupted) / 2, "interval": corrupted},
    }


def test_only_differences_the_test_split_can_tell_apart_are_bold():
    unclear = report_markdown.comparison_line("KD", comparison([-0.002, 0.01], 0.3, [-0.004, 0.005]))
    assert "**" not in unclear and unclear.count("(not distinguishable)") == 2
    clear = report_markdown.comparison_line("KD", comparison([0.002, 0.014], 0.01, [0.02, 0.03]))
    assert "**+0.80 points [+0.20, +1.40]**" in clear and "**+2.50 points [+2.00, +3.00]**" in clear
    interval_alone = report_markdown.comparison_line("KD", comparison([0.001, 0.009], 0.09, [-0.03, -0.02]))
    assert "+0.50 points [+0.10, +0.90] (not distinguishable)" in interval_alone  # McNemar disagrees
    assert "**-2.50 points [-3.00, -2.00]**" in interval_alone


def test_ratios_read_as_whole_numbers_from_ten_and_two_digits_below():
    assert [report_markdown.ratio(v) for v in (1834.4, 94.3, 9.87, 0.177)] == ["1,834", "94", "9.9", "0.18"]

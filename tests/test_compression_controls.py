"""Compression controls: a search over student widths against the accuracy floor; the prune stage's
AGP schedule, per-layer ratios from a sensitivity scan, and pruning toward a target latency."""

import json
import shutil

import pytest
import torch

from distillery import checkpoint
from distillery.models import StudentCNN, widths
from distillery.pruning import agp_schedule, kept_channels, make_pruner, ratios_from_scan
from project.config import AugmentConfig, DistillConfig, KDConfig, MeasureConfig, PruneConfig, ShipConfig
from project.layout import Layout
from tasks import distill, prune


def test_agp_prunes_most_channels_early_and_reaches_the_ratio():
    ratios = agp_schedule(0.5, 4)
    assert ratios[0] == 0 and ratios[-1] == pytest.approx(0.5)
    steps = [b - a for a, b in zip(ratios, ratios[1:], strict=False)]
    assert steps == sorted(steps, reverse=True) and steps[0] > 0.5 / 4  # front-loaded vs linear


@pytest.mark.parametrize(
    ("round_to", "steps", "expected"),
    [(8, 1, [8, 16, 32, 32]), (8, 3, [8, 16, 32, 32]), (0, 2, [7, 13, 26, 26]), (4, 1, [8, 16, 28, 28])],
)
def test_no_layer_loses_more_than_the_ratio_after_rounding(round_to, steps, expected):
    model = StudentCNN(1, 10, [16, 32, 64, 64]).eval()
    pruner = make_pruner(model, torch.zeros(2, 1, 28, 28), ratio=0.6, steps=steps, round_to=round_to)
    seen = [widths(model)]
    for _ in range(steps):
        pruner.step()
        seen.append(widths(model))
    assert widths(model) == expected  # torch-pruning's own rounding gave [8, 8, 24, 24] at round_to 8
    for earlier, later in zip(seen, seen[1:], strict=False):  # every step, not only the last: pruning may stop early
        assert all(w % (round_to or 1) == 0 and w <= e for w, e in zip(later, earlier, strict=True)), seen
    assert all(1 - after / before <= 0.6 for after, before in zip(expected, [16, 32, 64, 64], strict=True))
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)  # still a working model


def test_each_layer_gets_the_largest_ratio_within_the_allowed_drop():
    grid = [0.25, 0.5, 0.75]
    scan = {"robust": [0.98, 0.975, 0.97], "sensitive": [0.97, 0.90, 0.50], "fragile": [0.90, 0.8, 0.5]}
    assert ratios_from_scan(scan, grid, baseline=0.98, max_drop_pp=1.5, cap=0.6) == {
        "robust": 0.5,
        "sensitive": 0.25,
        "fragile": 0.0,
    }


def pruned_copy(staged, tmp_path, **settings) -> tuple[Layout, dict]:
    layout = Layout(tmp_path)
    shutil.copytree(staged.data, layout.data, ignore=shutil.ignore_patterns("pruned"))
    config = PruneConfig(epochs=2, steps=2, ratio=0.5, round_to=4, **settings)
    prune.run(config, DistillConfig(epochs=1), KDConfig(), ShipConfig(), MeasureConfig(), AugmentConfig(), layout)
    return layout, json.loads((layout.pruned / "pruned.json").read_text())


def test_sensitivity_scan_chooses_per_layer_ratios_and_plots_them(staged, tmp_path):
    layout, result = pruned_copy(staged, tmp_path, per_layer="sensitivity", sensitivity_max_drop_pp=5.0)
    sensitivity = result["sensitivity"]
    assert set(sensitivity["layer_ratios"]) == set(sensitivity["val_accuracy"]) and len(sensitivity["grid"]) == 9
    for accs in sensitivity["val_accuracy"].values():  # removing most of a layer hurts more than removing little
        measured = [a for a in accs if a is not None]
        assert len(measured) >= 2 and measured[-1] < measured[0]
    before = widths(checkpoint.load(staged.checkpoint("student_kd"))[0])
    assert sensitivity["channels"] == dict(zip(sensitivity["channels"], before, strict=True))
    for (name, ratio), width in zip(sensitivity["layer_ratios"].items(), result["widths"], strict=True):
        channels = sensitivity["channels"][name]
        assert width == kept_channels(channels, ratio, round_to=4)  # the rounded count, as scanned
        if ratio > 0:  # the accuracy that chose this ratio was measured at this very width
            assert sensitivity["kept_channels"][name][sensitivity["grid"].index(ratio)] == width
        assert result["removed_share"][name] == pytest.approx(1 - width / channels) and 1 - width / channels <= 0.5
    assert (layout.pruned / "sensitivity.png").stat().st_size > 1000


def test_pruning_stops_once_the_latency_target_is_met(staged, tmp_path):
    _, reached = pruned_copy(staged, tmp_path / "easy", target_latency_ms=1e6)  # already fast enough: no cuts
    assert reached["target_latency_met"] and reached["params"] == reached["params_before"]
    _, unreachable = pruned_copy(staged, tmp_path / "hard", target_latency_ms=1e-6)  # prunes up to the cap
    assert not unreachable["target_latency_met"] and unreachable["params"] < unreachable["params_before"]
    assert reached["onnxruntime_threads"] == json.loads(staged.metrics.read_text())["onnxruntime"]["threads"]


def test_width_search_keeps_the_smallest_student_that_meets_the_floor(staged, tmp_path):
    def search(ship: ShipConfig, **settings) -> dict:
        layout = Layout(tmp_path / str(len(list(tmp_path.iterdir()))))
        shutil.copytree(staged.data, layout.data, ignore=shutil.ignore_patterns("student", "pruned", "int8"))
        config = DistillConfig(epochs=1, widths=[8, 16], width_scales=[1.0, 0.5], **settings)
        distill.run(config, KDConfig(), ship, AugmentConfig(), layout)
        return json.loads((layout.student / "student_kd.json").read_text())

    easy = search(ShipConfig(max_accuracy_drop_pp=100))
    assert easy["widths"] == [4, 8] and len(easy["width_search"]) == 1
    never = search(ShipConfig(max_accuracy_drop_pp=0), lr=1e-7)  # students that learn nothing miss the floor
    assert [s["widths"] for s in never["width_search"]] == [[4, 8], [8, 16]] and never["widths"] == [8, 16]

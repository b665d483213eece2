"""The export check: rounding ties on close calls pass, real export bugs fail, in the int8 file and in
an fp32 one."""

import numpy as np
import onnx
import pytest
import torch

from distillery import checkpoint, models, onnx_export
from distillery.data import load_dataset
from distillery.errors import DistilleryError
from distillery.fidelity import FidelityRule, compare_logits
from distillery.models import conv_layers
from distillery.quantize import convert, load_prepared, prepare_qat, to_train
from project.artifacts import load_model
from tasks.export import fused_kernel_failures, rules, verify, verify_int8
from tests import export_bugs
from tests.conftest import tiny_params

RULE = FidelityRule(min_top1_agreement=0.5, max_mean_error_steps=0.5, decisive_margin_steps=8)
FP32_RULE, INT8_RULE = rules(tiny_params().export)


def logits_with_margins(margins: list[float]) -> np.ndarray:
    """A first image scoring 25.5 for class 0 (so the logits span 0..25.5: a step of 0.1), then one
    image per margin, class 0 ahead of classes 1 and 2 by that margin."""
    return np.array([[25.5, 0, 0]] + [[m, 0, 0] for m in margins])


def test_a_rounding_flip_on_a_near_tie_passes():
    reference = logits_with_margins([0.05, 3.0, 3.0])
    candidate = reference.copy()
    candidate[1, 1] += 0.1  # one step: the near-tied image changes class
    result = compare_logits(reference, candidate, RULE)
    assert not result["failures"] and result["top1_agreement"] == 0.75 and result["decisive_flips"] == 0


def test_a_flip_of_a_clear_call_fails():
    reference = logits_with_margins([3.0] * 40)
    candidate = reference.copy()
    candidate[1, 1] += 3.1  # 31 steps: an image 30 steps clear changes class
    result = compare_logits(reference, candidate, RULE)
    assert result["mean_error_steps"] < 0.5 and result["decisive_flips"] == 1
    assert result["failures"] == ["1 of 41 images with a margin of at least 8 steps changed class"]


def test_logits_off_by_more_than_the_mean_bound_fail_without_any_flip():
    reference = logits_with_margins([3.0] * 40)
    result = compare_logits(reference, reference + np.array([0.0, 0.2, 0.0]), RULE)  # class 1 up by 2 steps
    assert result["top1_agreement"] == 1 and result["mean_error_steps"] > 0.5
    assert result["failures"] == [f"mean difference {result['mean_error_steps']:.3g} steps > 0.5"]


def test_too_many_near_tie_flips_fail_the_agreement_bound():
    reference = logits_with_margins([0.05] * 3)
    candidate = reference.copy()
    candidate[1:, 1] += 0.1  # three near ties flip: 1 of 4 images keeps its class
    result = compare_logits(reference, candidate, RULE)
    assert result["decisive_flips"] == 0 and result["failures"] == ["top-1 agreement 0.2500 < 0.5"]


def test_an_fp32_file_may_differ_by_float_rounding_only():
    reference = logits_with_margins([3.0] * 4)
    assert not compare_logits(reference, reference + 1e-6, FP32_RULE)["failures"]
    result = compare_logits(reference, reference + 0.01, FP32_RULE)  # a tenth of a step, no class changes
    assert result["top1_agreement"] == 1 and result["failures"] == ["largest difference 0.1 steps > 0.01"]


def test_logits_without_a_spread_are_refused():
    with pytest.raises(DistilleryError, match="same outputs"):
        compare_logits(np.ones((4, 3)), np.ones((4, 3)), RULE)


@pytest.fixture(scope="module")
def int8_model(staged):
    test = load_dataset(staged.raw).test
    return convert(load_prepared(staged.checkpoint("int8"), test.head(2))[0]), test


def session_for(model: onnx.ModelProto, path, *, optimized: bool = True):
    onnx.save(model, str(path))
    return onnx_export.session(path, optimized=optimized)


def test_the_exported_int8_model_passes(staged, int8_model):
    model, test = int8_model
    for optimized in (False, True):  # as written (the stage's check); and, for this small student, as run
        result = verify(model, onnx_export.session(staged.onnx("int8"), optimized=optimized), test, INT8_RULE)
        assert not result["failures"] and result["top1_agreement"] >= 0.99, optimized


@pytest.mark.parametrize("bug", export_bugs.BUGS)
def test_an_int8_export_bug_fails_the_check(bug, staged, int8_model, tmp_path):
    model, test = int8_model
    broken = export_bugs.BUGS[bug](onnx.load(str(staged.onnx("int8"))))
    result = verify(model, session_for(broken, tmp_path / "broken.onnx", optimized=False), test, INT8_RULE)
    assert result["failures"], result


@pytest.mark.parametrize("bug", export_bugs.FP32_BUGS)
def test_an_fp32_export_bug_fails_the_check(bug, staged, tmp_path):
    model, test = load_model(staged, "pruned"), load_dataset(staged.raw).test
    assert not verify(model, onnx_export.session(staged.onnx("pruned")), test, FP32_RULE)["failures"]
    broken = export_bugs.FP32_BUGS[bug](onnx.load(str(staged.onnx("pruned"))))
    result = verify(model, session_for(broken, tmp_path / "broken.onnx"), test, FP32_RULE)
    assert result["failures"], result


def test_fused_int8_kernels_may_not_lose_more_accuracy_than_allowed():
    assert fused_kernel_failures(0.95, 0.945, max_drop_pp=1.0) == []  # half a point: rounding
    assert fused_kernel_failures(0.95, 0.96, max_drop_pp=0.0) == []  # a gain is no failure
    assert fused_kernel_failures(0.95, 0.93, max_drop_pp=1.0) == [
        "onnxruntime's fused int8 kernels lose 2.00 points of test accuracy (> 1.0)"
    ]


def test_fused_kernels_that_lose_accuracy_fail_the_int8_check(staged, int8_model, tmp_path, monkeypatch):
    """The wiring of the gate: the session users run (optimized) is held to the accuracy drop, the graph as
    written to the int8 rule. Here only the optimized session gets a broken graph (weight scales doubled)."""
    model, test = int8_model
    broken = tmp_path / "broken.onnx"
    onnx.save(export_bugs.BUGS["weight layout transposed"](onnx.load(str(staged.onnx("int8")))), str(broken))
    real_session = onnx_export.session
    monkeypatch.setattr(
        onnx_export, "session", lambda path, threads=0, *, optimized=True: real_session(broken if optimized else path)
    )
    found = verify_int8(model, staged.onnx("int8"), test, tiny_params().export)
    drop = found["test_accuracy_onnxruntime"] - found["fused_kernels"]["test_accuracy_onnxruntime"]
    assert found["top1_agreement"] >= 0.99 and drop > tiny_params().export.max_fused_int8_accuracy_drop_pp / 100
    assert any("fused int8 kernels lose" in failure for failure in found["failures"]), found["failures"]


def test_the_images_quantizer_keeps_0_to_1_whatever_the_training_views_span():
    spec = {"arch": "student_cnn", "in_channels": 1, "num_classes": 10, "widths": [4, 8]}
    prepared = prepare_qat(models.build(spec).eval(), torch.rand(2, 1, 8, 8))
    to_train(prepared)
    prepared(torch.rand(16, 1, 8, 8) * 0.5 + 0.2)  # views whose pixels span 0.2..0.7 only
    int8 = convert(prepared)
    (first,) = [n for n in int8.graph.nodes if "quantize_per_tensor" in str(n.target) and n.args[0].op == "placeholder"]
    assert first.args[1] == pytest.approx(1 / 255) and first.args[2] == 0


def test_a_saved_qat_model_reloads_to_the_int8_model_it_was(tmp_path):
    """The export stage rebuilds the QAT model from its file: the same int8 weights and scales, down to the X86
    config's smallest weight scale (2**-12), which a reload without module versions reset to float32's eps."""
    spec = {"arch": "student_cnn", "in_channels": 1, "num_classes": 10, "widths": [8, 16], "pooled_blocks": 1}
    model, images = models.build(spec).eval(), torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first_conv = next(iter(conv_layers(model).values()))
        first_conv.weight[0] *= 1e-3  # a channel whose weight scale falls under 2**-12
    prepared = prepare_qat(model, images[:2])
    prepared(images)
    checkpoint.save(prepared, spec, tmp_path / "int8.safetensors")
    reloaded = convert(load_prepared(tmp_path / "int8.safetensors", images[:2])[0]).state_dict()
    int8 = convert(prepared).state_dict()
    torch.testing.assert_close(reloaded, int8, rtol=0, atol=0)
    assert any(2**-12 in scale for name, scale in int8.items() if name.startswith("_scale"))

"""The int8 export check: rounding ties on close calls pass, real export bugs fail."""

import numpy as np
import onnx
import pytest

from distillery import onnx_export
from distillery.data import load_dataset
from distillery.errors import DistilleryError
from distillery.fidelity import FidelityRule, compare_logits
from distillery.quantize import convert, load_prepared
from tasks.export import verify_int8
from tests import export_bugs
from tests.conftest import tiny_params

RULE = FidelityRule(decisive_margin_steps=8, max_mean_logit_error_steps=0.5)


def logits_with_margins(margins: list[float]) -> np.ndarray:
    """A first image scoring 25.5 for class 0 (so the logits span 0..25.5: a step of 0.1), then one
    image per margin, class 0 ahead of classes 1 and 2 by that margin."""
    return np.array([[25.5, 0, 0]] + [[m, 0, 0] for m in margins])


def test_a_rounding_flip_on_a_near_tie_passes():
    reference = logits_with_margins([0.05, 3.0, 3.0])
    candidate = reference.copy()
    candidate[1, 1] += 0.1  # one step: the near-tied image changes class
    result = compare_logits(reference, candidate, RULE)
    assert result["passed"] and result["top1_agreement"] == 0.75 and result["decisive_flips"] == 0


def test_a_flip_of_a_clear_call_fails():
    reference = logits_with_margins([3.0] * 40)
    candidate = reference.copy()
    candidate[1, 1] += 3.1  # 31 steps: an image 30 steps clear changes class
    result = compare_logits(reference, candidate, RULE)
    assert result["mean_error_steps"] < 0.5 and result["decisive_flips"] == 1 and not result["passed"]


def test_logits_off_by_more_than_the_mean_bound_fail_without_any_flip():
    reference = logits_with_margins([3.0] * 40)
    result = compare_logits(reference, reference + np.array([0.0, 0.2, 0.0]), RULE)  # class 1 up by 2 steps
    assert result["top1_agreement"] == 1 and result["mean_error_steps"] > 0.5 and not result["passed"]


def test_logits_without_a_spread_are_refused():
    with pytest.raises(DistilleryError, match="same logits"):
        compare_logits(np.ones((4, 3)), np.ones((4, 3)), RULE)


@pytest.fixture(scope="module")
def int8_model(staged):
    test = load_dataset(staged.raw).test
    return convert(load_prepared(staged.qat / "qat.safetensors", test.head(2))[0]), test


def session_for(model: onnx.ModelProto):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_the_exported_int8_model_passes(staged, int8_model):
    model, test = int8_model
    result = verify_int8(model, onnx_export.session(staged.export / "int8.onnx"), test, tiny_params().export)
    assert result["passed"] and result["top1_agreement"] >= 0.99


@pytest.mark.parametrize("bug", export_bugs.BUGS)
def test_an_export_bug_fails_the_check(bug, staged, int8_model):
    model, test = int8_model
    broken = export_bugs.BUGS[bug](onnx.load(str(staged.export / "int8.onnx")))
    result = verify_int8(model, session_for(broken), test, tiny_params().export)
    assert not result["passed"], result

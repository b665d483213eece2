"""The packaged model: a plain onnxruntime session on uint8 images gives the reported accuracy; its metadata says
what it is; it computes what the file it wraps computes, or the stage fails and writes nothing; its model card's
example runs as written."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from distillery import model_package
from distillery.errors import DistilleryError
from distillery.files import file_digest, read_json
from project.layout import Layout
from project.model_card import calibration_statement, example
from project.ship_decision import ShipDecision
from tasks import package
from tests.conftest import ROOT


def test_a_plain_onnxruntime_session_on_uint8_test_images_gives_the_reported_accuracy(staged):
    """No project code: the raw arrays ingest stored, the packaged file, onnxruntime."""
    raw = staged.root / "data" / "raw"
    images, labels, splits = (np.load(raw / f"{name}.npy") for name in ("images", "labels", "splits"))
    test = splits == 2
    session = ort.InferenceSession(str(staged.root / "data" / "package" / "model.onnx"))
    probabilities, label = session.run(None, {"images": images[test].transpose(0, 2, 3, 1)})
    metrics = json.loads((staged.root / "data" / "reports" / "metrics.json").read_text())
    shipped = json.loads((staged.root / "data" / "ship.json").read_text())["model"]
    assert images.dtype == np.uint8 and test.sum() == metrics["dataset"]["n_test"]
    assert float((label == labels[test]).mean()) == metrics[shipped]["accuracy"]
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5) and (probabilities.argmax(axis=1) == label).all()


def test_the_packaged_model_describes_itself(staged):
    metrics, info = read_json(staged.metrics), read_json(staged.dataset_info)
    packaged = model_package.read(staged.packaged_model)
    decision = ShipDecision.read(staged.ship_decision)
    shipped, figures = decision.model, metrics[decision.model]
    assert packaged.classes == info["classes"] == [str(i) for i in range(10)]
    assert packaged.input == model_package.InputSpec(height=8, width=8, channels=1, color="gray", resample="bicubic")
    props = packaged.props
    assert float(props["temperature"]) == pytest.approx(decision.temperature, rel=1e-12)
    assert props["wrapped_model"] == shipped and props["dataset_md5"] == metrics["dataset"]["md5"]
    assert props["wrapped_sha256"] == file_digest(staged.onnx(shipped)) and props["dataset"] == "digits"
    assert "git_commit" not in props and metrics["git_commit"] is None  # the tests' run is outside git
    assert json.loads(props["metrics"]) == {
        "test_images": info["n_test"],
        "test_accuracy": figures["accuracy"],
        "test_accuracy_interval": figures["accuracy_interval"],
        "val_accuracy": figures["val_accuracy"],
        "corrupted_accuracy": figures["corrupted"]["accuracy"],
        "nll": figures["calibrated"]["nll"],
        "ece": figures["calibrated"]["ece"],
        "bytes": figures["bytes"],
        "params": figures["params"],
    }
    session = ort.InferenceSession(str(staged.packaged_model))
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == [
        ("images", "tensor(uint8)", ["batch", 8, 8, 1])
    ]
    assert [o.name for o in session.get_outputs()] == ["probabilities", "label"]


def assert_computes_the_wrapped_model_scaled(packaged: Path, wrapped: Path, temperature: float, raw: np.ndarray):
    """`packaged` on uint8 images gives `wrapped`'s class on pixels / 255, and softmax(its logits / temperature)."""
    probabilities, label = ort.InferenceSession(str(packaged)).run(None, {"images": raw.transpose(0, 2, 3, 1)})
    logits = ort.InferenceSession(str(wrapped)).run(None, {"images": raw.astype(np.float32) / 255})[0]
    logits = logits.astype(np.float64) / temperature
    scaled = np.exp(logits - logits.max(axis=1, keepdims=True))
    scaled /= scaled.sum(axis=1, keepdims=True)
    assert np.abs(probabilities - scaled).max() < 1e-5 and (label == logits.argmax(axis=1)).all()


def test_its_probabilities_are_the_wrapped_models_logits_scaled_by_the_temperature(staged, tmp_path):
    decision, raw = ShipDecision.read(staged.ship_decision), np.load(staged.images)[:50]
    assert_computes_the_wrapped_model_scaled(
        staged.packaged_model, staged.onnx(decision.model), decision.temperature, raw
    )
    assert read_json(staged.package_record)["verification"]["differing_labels"] == 0
    layout = staged_copy(staged, tmp_path)  # a temperature other than 1, so that the scaling shows
    decision.model_copy(update={"temperature": 1.7}).write(layout.ship_decision)
    package.run(layout)
    assert_computes_the_wrapped_model_scaled(layout.packaged_model, layout.onnx(decision.model), 1.7, raw)


def staged_copy(staged: Layout, tmp_path) -> Layout:
    """A copy of the shared run that a test may change."""
    layout = Layout(tmp_path)
    shutil.copytree(staged.data, layout.data)
    return layout


def test_a_package_that_computes_something_else_fails_and_leaves_the_last_package(staged, tmp_path, monkeypatch):
    layout = staged_copy(staged, tmp_path)
    before = layout.packaged_model.read_bytes()
    wrap = model_package.wrap

    def scales_pixels_wrongly(model, **kwargs):  # a wrapper bug: pixels / 128 instead of / 255
        wrapped = wrap(model, **kwargs)
        for tensor in wrapped.graph.initializer:
            if tensor.name == "pixel_max":
                tensor.CopyFrom(onnx.numpy_helper.from_array(np.array(128.0, np.float32), "pixel_max"))
        return wrapped

    monkeypatch.setattr(model_package, "wrap", scales_pixels_wrongly)
    with pytest.raises(DistilleryError, match=r"images get another class than .*\.onnx gives them"):
        package.run(layout)
    assert layout.packaged_model.read_bytes() == before


def test_a_package_with_another_temperature_fails(staged, tmp_path, monkeypatch):
    layout = staged_copy(staged, tmp_path)
    wrap = model_package.wrap
    monkeypatch.setattr(
        model_package, "wrap", lambda model, *, temperature, spec: wrap(model, temperature=2 * temperature, spec=spec)
    )
    with pytest.raises(DistilleryError, match=r"its probabilities differ from softmax\(logits / T\) by up to"):
        package.run(layout)


def test_a_package_whose_accuracy_is_not_the_reported_one_fails(staged, tmp_path):
    layout = staged_copy(staged, tmp_path)
    metrics = read_json(layout.metrics)
    metrics[ShipDecision.read(layout.ship_decision).model]["accuracy"] -= 0.01  # the report and the file disagree
    layout.metrics.write_text(json.dumps(metrics))
    with pytest.raises(DistilleryError, match="test accuracy .* is not the reported"):
        package.run(layout)


@pytest.mark.parametrize("model", ["pruned", "int8"])
def test_either_deployable_model_packages_to_the_same_classes(model, staged, tmp_path):
    """Whichever the ship stage chooses: the int8 file too, whose fused kernels now take pixels the graph scaled."""
    layout = staged_copy(staged, tmp_path)
    metrics = read_json(layout.metrics)
    decision = ShipDecision.read(layout.ship_decision)
    decision.model_copy(update={"model": model, "temperature": metrics[model]["temperature"]}).write(
        layout.ship_decision
    )
    assert package.run(layout) == {"packaged": True, "model": model, "test_accuracy": metrics[model]["accuracy"]}
    test = np.load(layout.splits) == 2
    raw = np.load(layout.images)[test]  # every test image, checked here apart from the stage's own check
    assert_computes_the_wrapped_model_scaled(
        layout.packaged_model, layout.onnx(model), metrics[model]["temperature"], raw
    )


def test_a_run_that_ships_nothing_packages_nothing_and_says_why(staged, tmp_path):
    layout = staged_copy(staged, tmp_path)
    decision = ShipDecision.read(layout.ship_decision)
    nothing = {"model": None, "temperature": None, "reason": "no model reaches the floor"}
    decision.model_copy(update=nothing).write(layout.ship_decision)
    assert package.run(layout) == {"packaged": False, "reason": "no model reaches the floor"}
    assert sorted(p.name for p in layout.package.iterdir()) == ["package.json"]


def test_a_model_without_distillerys_metadata_is_named(staged):
    with pytest.raises(DistilleryError, match=r"int8\.onnx is an ONNX model without Distillery's metadata"):
        model_package.read(staged.onnx("int8"))


def test_the_model_cards_example_runs_as_written(staged, tmp_path):
    card = staged.model_card.read_text()
    code = re.search(r"```python\n(.*?)```", card, re.DOTALL).group(1)
    shutil.copy(staged.packaged_model, tmp_path / "model.onnx")
    raw = np.load(staged.images)
    Image.fromarray(raw[7, 0]).resize((32, 32)).save(tmp_path / "image.png")  # any size: the example resizes
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    predicted, probability = result.stdout.split()
    resized = np.asarray(Image.open(tmp_path / "image.png").resize((8, 8), Image.Resampling.BICUBIC))
    session = ort.InferenceSession(str(staged.packaged_model))
    probabilities, label = session.run(None, {"images": resized[None, :, :, None]})
    assert predicted == str(label[0]) and float(probability) == pytest.approx(float(probabilities[0, label[0]]))


def test_the_docs_show_the_cards_example_for_the_default_data():
    spec = model_package.InputSpec(height=28, width=28, channels=1, color="gray", resample="bicubic")
    packaged = model_package.PackagedModel(path=Path("model.onnx"), classes=[], input=spec, props={})
    assert example(packaged) in (ROOT / "docs" / "shipped-model.md").read_text()


def test_the_model_card_states_the_runs_figures(staged):
    card, metrics = staged.model_card.read_text(), read_json(staged.metrics)
    decision = ShipDecision.read(staged.ship_decision)
    shipped = metrics[decision.model]
    assert card.startswith("# Distillery model (a local run, not published)")
    low, high = shipped["accuracy_interval"]
    assert f"{shipped['accuracy'] * 100:.2f} [{low * 100:.2f}, {high * 100:.2f}]" in card
    assert f"{shipped['bytes']:,}" in card and metrics["cpu"]["model"] in card
    assert "## Limits" in card and metrics["dataset"]["md5"] in card and decision.reason in card
    mnist = metrics["eval_sets"]["mnist"]["models"]
    off_split = (
        f"Measured off its test split: on mnist (5,000 images, mnist5k) {mnist[decision.model]['accuracy'] * 100:.2f}%"
    )
    assert off_split in card and f"(the ensemble {mnist['ensemble']['accuracy'] * 100:.2f}%)" in card
    assert f"with an ECE of {mnist[decision.model]['calibrated']['ece'] * 100:.2f}%" in card
    by_kind = {k: np.mean(v) for k, v in shipped["corrupted"]["accuracy_by_kind"].items()}
    weakest = min(by_kind, key=by_kind.get)  # computed here apart from the card's code
    assert f"Its weakest corruption is {weakest}: {by_kind[weakest] * 100:.2f}% accurate" in card


def calibrated_figures(nll: tuple[float, float], ece: tuple[float, float]) -> dict:
    """A model's NLL and ECE before and after its temperature."""
    return {"calibration": {"nll": nll[0], "ece": ece[0]}, "calibrated": {"nll": nll[1], "ece": ece[1]}}


@pytest.mark.parametrize(
    ("nll", "ece", "calibrated"),
    [
        ((0.2, 0.1), (0.05, 0.02), True),  # both lower: calibrated
        ((0.2, 0.1), (0.02, 0.05), False),  # ECE higher
        ((0.1, 0.2), (0.05, 0.02), False),  # NLL higher
        ((0.1, 0.2), (0.02, 0.05), False),
    ],
)
def test_the_card_says_calibrated_only_where_the_temperature_lowered_both_nll_and_ece(nll, ece, calibrated):
    sentence = calibration_statement(calibrated_figures(nll, ece))
    assert sentence.startswith("Its probabilities are calibrated") == calibrated
    if not calibrated:
        assert f"NLL from {nll[0]:.4f} to {nll[1]:.4f}" in sentence and f"ECE from {ece[0] * 100:.2f}%" in sentence


def test_the_packaged_model_carries_the_runs_git_commit(staged, tmp_path):
    layout = staged_copy(staged, tmp_path)
    metrics = read_json(layout.metrics)
    metrics["git_commit"] = "0123abc-dirty"  # as the report records it for a run inside git
    layout.metrics.write_text(json.dumps(metrics))
    package.run(layout)
    assert model_package.read(layout.packaged_model).props["git_commit"] == "0123abc-dirty"
    assert "at git commit 0123abc-dirty." in layout.model_card.read_text()

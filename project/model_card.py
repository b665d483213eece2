"""MODEL_CARD.md: what a packaged model does, the data it learnt from, what it measured, its limits, where it
came from, and a short onnxruntime example that runs as written (in the spirit of Hugging Face model cards)."""

import statistics

from distillery.images import COLOR_MODES
from distillery.model_package import INPUT, LABEL, PROBABILITIES, PackagedModel
from project.report_markdown import interval, percent, table
from project.ship_decision import ShipDecision

MAX_LISTED_CLASSES = 20


def example(packaged: PackagedModel) -> str:
    """Python that classifies image.png with onnxruntime, numpy and Pillow alone."""
    spec = packaged.input
    mode = COLOR_MODES[spec.color]
    return f"""```python
import json

import numpy as np
import onnxruntime as ort
from PIL import Image

session = ort.InferenceSession("model.onnx")
classes = json.loads(session.get_modelmeta().custom_metadata_map["classes"])
image = Image.open("image.png").convert("{mode}")
image = image.resize(({spec.width}, {spec.height}), Image.Resampling.{spec.resample.upper()})
pixels = np.asarray(image, dtype=np.uint8).reshape(1, {spec.height}, {spec.width}, {spec.channels})
{PROBABILITIES}, {LABEL} = session.run(None, {{"{INPUT}": pixels}})
print(classes[{LABEL}[0]], {PROBABILITIES}[0, {LABEL}[0]])
```"""


def usage(packaged: PackagedModel, name: str | None) -> list[str]:
    spec = packaged.input
    lines = [
        "## How to use it",
        "",
        f"`{INPUT}`: uint8 pixels, N x {spec.height} x {spec.width} x {spec.channels} ({spec.color}), as an image "
        "decoder gives them; the graph scales them itself. Out: "
        f"`{PROBABILITIES}` (N x {len(packaged.classes)}, scaled by the temperature) and `{LABEL}` (N, an index into "
        "the `classes` property). An image of another size or colour is converted and resized "
        f"({spec.resample}) first, as Distillery's ingest converts a folder of images. The example expects 8-bit "
        "images (Distillery scales 16-bit ones to 8 bits first).",
        "",
    ]
    if spec.color in COLOR_MODES:
        lines += ["With onnxruntime, numpy and Pillow only:", "", example(packaged), ""]
    model = f" --model {name}@{packaged.props['model_version']}" if name else ""  # predict's default: the run's
    lines += ["Or with Distillery, on files or folders:", "", f"    distillery predict{model} IMAGES...", ""]
    return lines


def weakest_corruption(model: dict) -> tuple[str, float]:
    """The kind of corruption the model is least accurate under (mean over its severities)."""
    by_kind = {kind: statistics.mean(values) for kind, values in model["corrupted"]["accuracy_by_kind"].items()}
    kind = min(by_kind, key=by_kind.get)
    return kind, by_kind[kind]


def measured(packaged: PackagedModel, metrics: dict) -> list[str]:
    shipped = packaged.props["wrapped_model"]
    model, ensemble, cpu = metrics[shipped], metrics["ensemble"], metrics.get("cpu", {})
    raw, scaled = model["calibration"], model["calibrated"]
    rows = [
        {
            "measure": "test accuracy % (95% interval)",
            "value": f"{percent(model['accuracy'])} {interval(model['accuracy_interval'])}",
        },
        {"measure": "validation accuracy %", "value": percent(model["val_accuracy"])},
        {"measure": "the teacher ensemble's test accuracy %", "value": percent(ensemble["accuracy"])},
        {"measure": "agreement with the ensemble %", "value": percent(model["agreement_with_ensemble"])},
        {
            "measure": "accuracy % under corruptions (95% interval)",
            "value": f"{percent(model['corrupted']['accuracy'])} {interval(model['corrupted']['accuracy_interval'])}",
        },
        {"measure": "NLL raw → with the temperature", "value": f"{raw['nll']:.4f} → {scaled['nll']:.4f}"},
        {"measure": "ECE % raw → with the temperature", "value": f"{percent(raw['ece'])} → {percent(scaled['ece'])}"},
        {"measure": "size (bytes)", "value": f"{model['bytes']:,} ({model['params']:,} parameters)"},
        {
            "measure": "latency ms, batch 1 / 256",
            "value": f"{model['latency_ms']['b1']:.3f} / {model['latency_ms']['b256']:.2f}",
        },
    ]
    return [
        "## Metrics",
        "",
        f"On the {metrics['dataset']['n_test']:,} test images, never used to choose anything; the temperature "
        f"({float(packaged.props['temperature']):.3f}) was fitted on the {metrics['dataset']['n_val']:,} "
        "validation images. Corruptions: every kind of the report's suite at each severity. Latency: onnxruntime "
        f"{metrics['onnxruntime']['version']}, {metrics['onnxruntime']['threads']} thread(s), on "
        f"{cpu.get('model', 'an unrecorded CPU')}, of the file this one wraps.",
        "",
        *table(rows),
        "",
    ]


def off_the_test_split(metrics: dict, model: str) -> str:
    """Where the model was measured beyond its test split (the report's evaluation sets), in a sentence."""
    measured = [
        f"on {name} ({found['images']:,} images, {found['source']}) {percent(found['models'][model]['accuracy'])}% "
        f"{interval(found['models'][model]['accuracy_interval'])} with an ECE of "
        f"{percent(found['models'][model]['calibrated']['ece'])}% (the ensemble "
        f"{percent(found['models']['ensemble']['accuracy'])}%)"
        for name, found in metrics.get("eval_sets", {}).items()
    ]
    if not measured:
        return "On other kinds of images its accuracy was not measured."
    return f"Measured off its test split: {'; '.join(measured)}. On other kinds of images it was not measured."


def limits(packaged: PackagedModel, metrics: dict) -> list[str]:
    model = metrics[packaged.props["wrapped_model"]]
    kind, accuracy = weakest_corruption(model)
    low, high = model["accuracy_interval"]
    return [
        "## Limits",
        "",
        f"- It has seen only {metrics['dataset']['name']} images ({packaged.input.height} x {packaged.input.width}, "
        f"{packaged.input.color}). {off_the_test_split(metrics, packaged.props['wrapped_model'])} An image of "
        "another size is resized, which may lose what tells the classes apart.",
        f"- With {metrics['dataset']['n_test']:,} test images its test accuracy is known to within "
        f"{percent(low)}–{percent(high)}% (95%). To compare it with another model, compare both on the same "
        "images (the report's paired comparisons).",
        f"- Its weakest corruption is {kind}: {percent(accuracy)}% accurate on average over the severities.",
        "- The temperature was fitted and checked on clean images only; under corruption or on unfamiliar "
        "images its confidence was not checked.",
        "- It always answers with one of its classes; it cannot say that an image belongs to none.",
        "",
    ]


def lineage(packaged: PackagedModel, metrics: dict, decision: ShipDecision) -> list[str]:
    props, student = packaged.props, metrics["student"]
    teachers = ", ".join(f"{t['name']} ({percent(t['accuracy'])}%)" for t in metrics["teachers"])
    return [
        "## Lineage",
        "",
        f"- Data: {props['dataset']}, DVC md5 {props['dataset_md5']}; {metrics['dataset']['n_train']:,} training, "
        f"{metrics['dataset']['n_val']:,} validation, {metrics['dataset']['n_test']:,} test"
        + (f", {metrics['dataset']['n_unlabeled']:,} unlabeled" if metrics["dataset"]["n_unlabeled"] else "")
        + " images.",
        f"- Teachers (test accuracy): {teachers}; their ensemble combined by {metrics['params']['kd']['combine']}.",
        f"- Student: {student.get('arch')}, distilled, pruned and "
        + ("quantized to int8 (QAT)" if props["wrapped_model"] == "int8" else "kept in fp32")
        + f"; {decision.reason}.",
        f"- Wraps {props['wrapped_model']}.onnx (sha256 {props['wrapped_sha256']}); code "
        + (f"at git commit {props['git_commit']}." if "git_commit" in props else "outside git (no commit recorded)."),
        "",
    ]


def calibration_statement(model: dict) -> str:
    """What the temperature did on the test images, in a sentence."""
    raw, scaled = model["calibration"], model["calibrated"]
    if scaled["nll"] < raw["nll"] and scaled["ece"] < raw["ece"]:
        return (
            "Its probabilities are calibrated: the temperature fitted on validation lowered both NLL and ECE on test."
        )
    return (
        "Its probabilities are scaled by the temperature fitted on validation, which on the test images took NLL "
        f"from {raw['nll']:.4f} to {scaled['nll']:.4f} and ECE from {percent(raw['ece'])}% to "
        f"{percent(scaled['ece'])}%."
    )


def model_card(packaged: PackagedModel, metrics: dict, decision: ShipDecision, *, name: str | None = None) -> str:
    """The card of `packaged` (its metadata, its run's metrics.json and ship decision); `name` once published."""
    classes = packaged.classes
    listed = ", ".join(classes[:MAX_LISTED_CLASSES]) + (", …" if len(classes) > MAX_LISTED_CLASSES else "")
    title = f"{name} {packaged.props['model_version']}" if name else "Distillery model (a local run, not published)"
    wrapped = packaged.props["wrapped_model"]
    return "\n".join(
        [
            f"# {title}",
            "",
            f"An image classifier of {len(classes)} classes ({listed}) for {packaged.input.height} x "
            f"{packaged.input.width} {packaged.input.color} images, distilled by Distillery from an ensemble of "
            f"{len(metrics['teachers'])} teachers into a small "
            + ("int8" if wrapped == "int8" else "fp32")
            + f" model of {metrics[wrapped]['bytes']:,} bytes. {calibration_statement(metrics[wrapped])}",
            "",
            *usage(packaged, name),
            *measured(packaged, metrics),
            *limits(packaged, metrics),
            *lineage(packaged, metrics, decision),
        ]
    )

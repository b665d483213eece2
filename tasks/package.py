"""Package: the shipped model as a file anyone can run with onnxruntime alone, and its model card.

The shipped ONNX file (fp32 or int8, as the report chose) is wrapped to take uint8 images as a decoder gives them
(N x H x W x C) and to return class probabilities (with the temperature fitted on the validation split inside)
and the predicted class; its metadata_props carry the class names, the input it takes, the temperature, the
lineage and the headline metrics (`distillery.model_package`). Verified on the raw uint8 test images: it must
give every image the class the file it wraps gives, and those probabilities; otherwise the stage fails and
writes nothing. A run that ships no model packages none, and says why.
"""

import logging
from pathlib import Path

import numpy as np
import onnx

from distillery import calibration, images, model_package, onnx_export
from distillery.data import Split, load_dataset, normalise
from distillery.errors import DistilleryError
from distillery.files import atomic_dir, file_digest, read_json, write_json
from project.artifacts import verified_onnx
from project.layout import Layout
from project.model_card import model_card
from project.ship_decision import ShipDecision
from project.stage import Stage

log = logging.getLogger("distillery")
MAX_PROBABILITY_ERROR = 1e-5  # float32 rounding of softmax(logits / T), computed here in float64
BATCH = 512


def headline(metrics: dict, model: str) -> dict:
    """The shipped model's figures that its metadata carries (test accuracy and calibration after scaling)."""
    found = metrics[model]
    return {
        "test_images": metrics["dataset"]["n_test"],
        "test_accuracy": found["accuracy"],
        "test_accuracy_interval": found["accuracy_interval"],
        "val_accuracy": found["val_accuracy"],
        "corrupted_accuracy": found["corrupted"]["accuracy"],
        "nll": found["calibrated"]["nll"],
        "ece": found["calibrated"]["ece"],
        "bytes": found["bytes"],
        "params": found["params"],
    }


def props(metrics: dict, info: dict, spec: model_package.InputSpec, *, decision: ShipDecision, source: Path) -> dict:
    """The packaged model's metadata_props (before publishing gives it a name and version)."""
    model = decision.model
    return {
        "classes": info["classes"],
        "input": spec.props(),
        "temperature": decision.temperature,
        "wrapped_model": model,
        "wrapped_sha256": file_digest(source),
        "dataset": metrics["dataset"]["name"],
        "dataset_md5": metrics["dataset"]["md5"],
        "git_commit": metrics["git_commit"],
        "metrics": headline(metrics, model),
    }


def input_spec(info: dict) -> model_package.InputSpec:
    channels, height, width = info["shape"]
    return model_package.InputSpec(
        height=height, width=width, channels=channels, color=images.color_of(channels), resample=images.RESAMPLE
    )


def verify(packaged: Path, source: Path, test: Split, temperature: float) -> dict:
    """The packaged file on the raw uint8 test images against the file it wraps on the pixels the pipeline feeds
    it: the same class for every image, and softmax(logits / temperature) to float rounding."""
    outer, inner = onnx_export.session(packaged), onnx_export.session(source)
    differing, worst, hits = 0, 0.0, 0
    for start in range(0, len(test), BATCH):
        rows = test.rows[start : start + BATCH]
        pixels = test.images[rows]  # uint8 N x C x H x W, as ingest stored them
        probabilities, labels = outer.run(None, {model_package.INPUT: pixels.numpy().transpose(0, 2, 3, 1)})
        logits = inner.run(None, {inner.get_inputs()[0].name: normalise(pixels).numpy()})[0].astype(np.float64)
        expected = np.exp(calibration.scaled(calibration.log_probabilities(logits, probabilities=False), temperature))
        differing += int((labels != logits.argmax(axis=1)).sum())
        worst = max(worst, float(np.abs(probabilities - expected).max()))
        hits += int((labels == test.y[start : start + BATCH].numpy()).sum())
    failures = []
    if differing:
        failures.append(f"{differing} of {len(test)} images get another class than {source.name} gives them")
    if worst > MAX_PROBABILITY_ERROR:
        failures.append(f"its probabilities differ from softmax(logits / T) by up to {worst:.2g}")
    return {
        "images": len(test),
        "differing_labels": differing,
        "max_probability_error": worst,
        "test_accuracy": hits / len(test),
        "failures": failures,
    }


def run(layout: Layout) -> dict:
    """Write data/package/: model.onnx (the shipped model, self-describing), MODEL_CARD.md and package.json
    (what was checked); or, when nothing ships, only package.json saying why."""
    metrics = read_json(layout.metrics)
    decision = ShipDecision.read(layout.ship_decision)
    shipped = decision.model
    with atomic_dir(layout.package) as out:
        if not shipped:
            record = {"packaged": False, "reason": decision.reason}
            write_json(out / layout.package_record.name, record)
            log.warning("nothing packaged: %s", record["reason"])
            return record
        source = verified_onnx(layout)[shipped]
        info = read_json(layout.dataset_info)
        spec = input_spec(info)
        model = model_package.wrap(onnx.load(str(source)), temperature=decision.temperature, spec=spec)
        model_package.set_props(model, props(metrics, info, spec, decision=decision, source=source))
        packaged = out / layout.packaged_model.name
        onnx.save(model, str(packaged))
        check = verify(packaged, source, load_dataset(layout.raw).test, decision.temperature)
        reported = metrics[shipped]["accuracy"]
        if check["test_accuracy"] != reported:
            check["failures"].append(f"its test accuracy {check['test_accuracy']} is not the reported {reported}")
        if check["failures"]:
            raise DistilleryError(
                f"The packaged {shipped} model does not compute what {source.name} does on the {check['images']} raw "
                f"test images: {'; '.join(check['failures'])}. Nothing was written."
            )
        (out / layout.model_card.name).write_text(model_card(model_package.read(packaged), metrics, decision))
        record = {
            "packaged": True,
            "model": shipped,
            "sha256": file_digest(packaged),
            "metrics_sha256": file_digest(layout.metrics),  # the report and decision it was packaged from
            "decision_sha256": file_digest(layout.ship_decision),
            "verification": check,
        }
        write_json(out / layout.package_record.name, record)
    log.info("packaged %s: %s verified on %d raw test images", shipped, layout.packaged_model, check["images"])
    return {"packaged": True, "model": shipped, "test_accuracy": check["test_accuracy"]}


STAGE = Stage(run, reads=(Layout.raw, Layout.export, Layout.metrics, Layout.ship_decision), writes=(Layout.package,))

if __name__ == "__main__":
    from project.stage_cli import main

    main(STAGE)

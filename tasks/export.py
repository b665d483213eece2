"""Export: every model to ONNX, and proof that the int8 ONNX model matches PyTorch's int8 model.

On the test split, onnxruntime's int8 logits must stay close to PyTorch's (`distillery.fidelity`):
no image that PyTorch classifies with a clear margin may change class, and the mean logit
difference must stay under a fraction of one quantization step. Otherwise the stage fails and
writes nothing.
"""

import logging

import torch

from distillery import onnx_export
from distillery.data import load_dataset
from distillery.errors import DistilleryError
from distillery.fidelity import FidelityRule, compare_logits
from distillery.files import atomic_dir, write_json
from distillery.quantize import convert, load_prepared
from distillery.training import logits
from project.artifacts import load_model, onnx_hashes
from project.config import ExportConfig
from project.layout import Layout

log = logging.getLogger("distillery")


SECTIONS = ("export",)


def run(config: ExportConfig, layout: Layout) -> dict:
    """Write data/export/: an ONNX file for every model of the run, and the verification record (with
    every file's sha256, which the report and publish stages check)."""
    data = load_dataset(layout.raw)
    example, test = data.test.head(2), data.test
    int8 = convert(load_prepared(layout.checkpoint("int8"), example)[0])
    with atomic_dir(layout.export) as out:
        for name in layout.run_models():
            model = int8 if name == "int8" else load_model(layout, name)
            onnx_export.export(model, example, out / layout.onnx(name).name)
        verification = verify_int8(int8, onnx_export.session(out / layout.onnx("int8").name), test, config)
        if not verification["passed"]:
            raise DistilleryError(
                f"Export verification failed: onnxruntime's int8 model does not compute what PyTorch's does. "
                f"{verification['decisive_flips']} of {verification['decisive_images']} test images with a clear "
                f"margin (>= {config.decisive_margin_steps} logit steps) changed class (allowed 0); the mean logit "
                f"difference is {verification['mean_error_steps']:.2f} steps (allowed "
                f"{config.max_mean_logit_error_steps}). A step is {verification['logit_step']:.4g}, 1/255 of the "
                "range of PyTorch's test logits."
            )
        verification["sha256"] = onnx_hashes(out)
        write_json(out / layout.verification.name, verification)
    log.info(
        "exported; int8 verified on %d test images: top-1 agreement %.4f, mean logit difference %.3f steps",
        verification["images"],
        verification["top1_agreement"],
        verification["mean_error_steps"],
    )
    return verification


def verify_int8(int8: torch.nn.Module, session, test, config: ExportConfig) -> dict:
    """Compare onnxruntime's int8 logits with PyTorch's on the test split; test accuracies for the record."""
    reference = logits(int8, test, torch.device("cpu")).numpy()
    candidate = onnx_export.logits(session, test)
    labels = test.y.numpy()
    rule = FidelityRule(**config.model_dump())
    return {
        "int8_test_accuracy_torch": float((reference.argmax(axis=1) == labels).mean()),
        "int8_test_accuracy_onnxruntime": float((candidate.argmax(axis=1) == labels).mean()),
        **compare_logits(reference, candidate, rule),
    }


if __name__ == "__main__":
    from project.stage_cli import main

    main(run, SECTIONS)

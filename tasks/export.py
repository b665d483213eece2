"""Export: every model to ONNX, and proof that the int8 ONNX model matches PyTorch's int8 model.

On the test split, onnxruntime's int8 logits must stay close to PyTorch's (`distillery.fidelity`):
no image that PyTorch classifies with a clear margin may change class, and the mean logit
difference must stay under a fraction of one quantization step. Otherwise the stage fails and
writes nothing.
"""

import logging

import torch

from distillery import checkpoint, onnx_export
from distillery.data import load_dataset
from distillery.errors import DistilleryError
from distillery.fidelity import FidelityRule, compare_logits
from distillery.files import atomic_dir
from distillery.quantize import convert, load_prepared
from distillery.training import logits
from tasks import exported
from tasks.config import ExportConfig
from tasks.layout import Layout
from tasks.runtime import write_json
from tasks.teachers import load_ensemble

log = logging.getLogger("distillery")


def float_models(layout: Layout) -> dict[str, torch.nn.Module]:
    """The fp32 models by export name: each teacher, the ensemble, the students, the pruned student."""
    found = {f"teacher_{f.stem}": checkpoint.load(f)[0] for f in sorted(layout.teachers.glob("*.safetensors"))}
    found["ensemble"] = load_ensemble(layout)
    for name in ("student_alone", "student_kd"):
        found[name] = checkpoint.load(layout.student / f"{name}.safetensors")[0]
    found["pruned"] = checkpoint.load(layout.pruned / "pruned.safetensors")[0]
    return found


def run(config: ExportConfig, layout: Layout) -> dict:
    """Write data/export/: <model>.onnx for every model, int8.onnx, and verification.json (with
    every file's sha256, which the report and publish stages check)."""
    data = load_dataset(layout.raw)
    example, test = data.test.head(2), data.test
    int8 = convert(load_prepared(layout.qat / "qat.safetensors", example)[0])
    with atomic_dir(layout.export) as out:
        for name, model in float_models(layout).items():
            onnx_export.export(model.eval(), example, out / f"{name}.onnx")
        onnx_export.export(int8, example, out / "int8.onnx")
        verification = verify_int8(int8, onnx_export.session(out / "int8.onnx"), test, config)
        if not verification["passed"]:
            raise DistilleryError(
                f"Export verification failed: onnxruntime's int8 model does not compute what PyTorch's does. "
                f"{verification['decisive_flips']} of {verification['decisive_images']} test images with a clear "
                f"margin (>= {config.decisive_margin_steps} logit steps) changed class (allowed 0); the mean logit "
                f"difference is {verification['mean_error_steps']:.2f} steps (allowed "
                f"{config.max_mean_logit_error_steps}). A step is {verification['logit_step']:.4g}, 1/255 of the "
                "range of PyTorch's test logits."
            )
        verification["sha256"] = exported.onnx_hashes(out)
        write_json(out / exported.VERIFICATION, verification)
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
    from tasks.cli import main

    main(run, ("export",))

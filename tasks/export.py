"""Export: every model to ONNX (a teacher brought as ONNX as it was wrapped; the ensemble as its members' files
joined), and proof that each file computes what its PyTorch model computes.

On the whole test split, in onnxruntime (`distillery.fidelity`): an fp32 file must give nearly every
image the class its model gives, with outputs equal to within float rounding; the int8 file must
agree with PyTorch's int8 model on at least `min_int8_agreement` of the images, change the class of
no image that PyTorch classifies with a clear margin, and keep the mean logit difference under a
fraction of one quantization step. Otherwise the stage fails and writes nothing.
"""

import logging
import shutil
from pathlib import Path

import torch

from distillery import onnx_export
from distillery.data import Split, load_dataset
from distillery.errors import DistilleryError
from distillery.fidelity import FidelityRule, compare_logits
from distillery.files import atomic_dir, write_json
from distillery.onnx_teacher import OnnxClassifier
from distillery.quantize import convert, load_prepared
from distillery.training import logits
from project.artifacts import load_model, onnx_hashes
from project.config import ExportConfig
from project.layout import Layout
from project.stage import Stage

log = logging.getLogger("distillery")


def run(config: ExportConfig, layout: Layout) -> dict:
    """Write data/export/: an ONNX file for every model of the run, each verified against its PyTorch
    model, and the verification record (with every file's sha256, which the report and publish
    stages check)."""
    data = load_dataset(layout.raw)
    example, test = data.test.head(2), data.test
    int8 = convert(load_prepared(layout.checkpoint("int8"), example)[0])
    fp32_rule = rules(config)[0]
    with atomic_dir(layout.export) as out:
        files = {}
        for name in layout.run_models():
            model = int8 if name == "int8" else load_model(layout, name)
            path = out / layout.onnx(name).name
            if name == "ensemble":  # its members' files joined: some may be ONNX classifiers that torch cannot trace
                members = [out / layout.onnx(t).name for t in layout.teacher_models()]
                onnx_export.ensemble(members, path, model.combination)
            elif isinstance(model, OnnxClassifier):  # already in the run's interface
                shutil.copyfile(model.path, path)
            else:
                onnx_export.export(model, example, path)
            if name == "int8":
                files[name] = verify_int8(model, path, test, config)
            else:
                files[name] = verify(model, onnx_export.session(path), test, fp32_rule)
            log.info(
                "%s verified: top-1 agreement %.4f, largest difference %.3g steps",
                name,
                files[name]["top1_agreement"],
                files[name]["max_error_steps"],
            )
        failed = {name: record["failures"] for name, record in files.items() if record["failures"]}
        if failed:
            raise DistilleryError(
                f"Export verification failed on the {len(test)} test images: onnxruntime does not compute what "
                "PyTorch does for "
                + "; ".join(f"{layout.onnx(name).name} ({', '.join(found)})" for name, found in failed.items())
                + ". A step is 1/255 of the range of the PyTorch model's outputs; nothing was written."
            )
        verification = {"passed": True, "images": len(test), "files": files, "sha256": onnx_hashes(out)}
        write_json(out / layout.verification.name, verification)
    return {name: record["top1_agreement"] for name, record in files.items()}


def rules(config: ExportConfig) -> tuple[FidelityRule, FidelityRule]:
    """What an fp32 file and the int8 file must keep of their PyTorch model's outputs."""
    fp32 = FidelityRule(min_top1_agreement=config.min_fp32_agreement, max_error_steps=config.max_fp32_error_steps)
    int8 = FidelityRule(
        min_top1_agreement=config.min_int8_agreement,
        max_mean_error_steps=config.max_mean_logit_error_steps,
        decisive_margin_steps=config.decisive_margin_steps,
    )
    return fp32, int8


RECORD_ONLY = FidelityRule(min_top1_agreement=0.0)


def verify_int8(model: torch.nn.Module, path: Path, test: Split, config: ExportConfig) -> dict:
    """The int8 file's graph run as written (onnxruntime's optimizations off), held to the int8 rule; and, under
    `fused_kernels`, the session users run, whose fused int8 kernels round each layer their own way (in a deep
    student the differences carry from layer to layer): recorded, and held only to `fused_kernel_failures`."""
    written = verify(model, onnx_export.session(path, optimized=False), test, rules(config)[1])
    fused = verify(model, onnx_export.session(path), test, RECORD_ONLY)
    written["failures"] += fused_kernel_failures(
        written["test_accuracy_onnxruntime"],
        fused["test_accuracy_onnxruntime"],
        max_drop_pp=config.max_fused_int8_accuracy_drop_pp,
    )
    return written | {"fused_kernels": fused}


def fused_kernel_failures(written_accuracy: float, fused_accuracy: float, *, max_drop_pp: float) -> list[str]:
    """How the fused kernels break `export.max_fused_int8_accuracy_drop_pp`, in words; none when they keep it."""
    drop_pp = (written_accuracy - fused_accuracy) * 100
    if drop_pp <= max_drop_pp + 1e-9:
        return []
    return [f"onnxruntime's fused int8 kernels lose {drop_pp:.2f} points of test accuracy (> {max_drop_pp})"]


def verify(model: torch.nn.Module, session, test: Split, rule: FidelityRule) -> dict:
    """Compare onnxruntime's outputs with PyTorch's on the test split; both test accuracies for the record."""
    reference = logits(model, test, torch.device("cpu")).numpy()
    candidate = onnx_export.logits(session, test)
    labels = test.y.numpy()
    return {
        "test_accuracy_torch": float((reference.argmax(axis=1) == labels).mean()),
        "test_accuracy_onnxruntime": float((candidate.argmax(axis=1) == labels).mean()),
        **compare_logits(reference, candidate, rule),
    }


STAGE = Stage(
    run, reads=(Layout.raw, Layout.teachers, Layout.student, Layout.pruned, Layout.int8), writes=(Layout.export,)
)

if __name__ == "__main__":
    from project.stage_cli import main

    main(STAGE)

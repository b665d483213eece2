"""Export: every model to ONNX, and proof that the int8 ONNX model matches PyTorch's int8 model.

The int8 student's test accuracy in onnxruntime must be within `max_accuracy_gap_pp` of the
PyTorch int8 model's, or the stage fails and writes nothing.
"""

import logging

import torch

from distillery import checkpoint, onnx_export
from distillery.data import load_dataset
from distillery.errors import DistilleryError
from distillery.files import atomic_dir
from distillery.quantize import convert, load_prepared
from distillery.training import accuracy
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
        torch_acc = accuracy(int8, test, torch.device("cpu"))
        onnx_acc = onnx_export.accuracy(onnx_export.session(out / "int8.onnx"), test)
        gap_pp = abs(torch_acc - onnx_acc) * 100
        verification = {"int8_test_accuracy_torch": torch_acc, "int8_test_accuracy_onnxruntime": onnx_acc,
                        "gap_pp": gap_pp, "max_gap_pp": config.max_accuracy_gap_pp,
                        "passed": gap_pp <= config.max_accuracy_gap_pp}
        if not verification["passed"]:
            raise DistilleryError(
                f"Export verification failed: int8 test accuracy is {onnx_acc:.4f} in onnxruntime but "
                f"{torch_acc:.4f} in PyTorch ({gap_pp:.2f} points apart, allowed {config.max_accuracy_gap_pp}).")
        verification["sha256"] = exported.onnx_hashes(out)
        write_json(out / exported.VERIFICATION, verification)
    log.info("exported; int8 verified: torch %.4f vs onnxruntime %.4f", torch_acc, onnx_acc)
    return verification


if __name__ == "__main__":
    from tasks.cli import main

    main(run, ("export",))

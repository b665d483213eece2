"""Reading a run's stage outputs: the validation verdict, checkpoints, training records, the teacher
ensemble and the exported ONNX files. An ONNX file is used only while it is the file the export stage
verified: one changed after the export (tampered, truncated, swapped) is refused before anything
measures or publishes it."""

from pathlib import Path

from torch import nn

from distillery import checkpoint
from distillery.combine import Combination
from distillery.errors import DistilleryError
from distillery.files import file_digest, read_json
from distillery.models import Ensemble
from distillery.onnx_teacher import OnnxClassifier
from project.layout import TEACHER, Layout


def require_valid(layout: Layout) -> None:
    """The gate the training stages pass through: the dataset must have passed validation."""
    if not layout.validation_summary.exists():
        raise DistilleryError(f"{layout.validation_summary} is missing; run the validate stage first.")
    if not read_json(layout.validation_summary)["success"]:
        raise DistilleryError("The dataset failed validation; fix it and rerun ingest and validate.")


def load_model(layout: Layout, model: str) -> nn.Module:
    """A trained fp32 model of the run by name (see `Layout.run_models`), in eval mode. The int8 model
    is a quantization-aware training state: `distillery.quantize.load_prepared` reads it."""
    if model == "int8":
        raise ValueError("the int8 model is a QAT state; load it with distillery.quantize.load_prepared")
    if model == "ensemble":
        return load_ensemble(layout)
    if model.startswith(TEACHER):
        return teacher_in(layout.teachers, layout, model)
    return checkpoint.load(layout.checkpoint(model))[0]


def teacher_in(folder: Path, layout: Layout, model: str) -> nn.Module:
    """Teacher `model` from `folder` (layout.teachers, or the teachers stage's staging folder): its wrapped ONNX
    classifier, or its checkpoint."""
    wrapped = folder / layout.onnx_teacher(model).name
    return OnnxClassifier(wrapped) if wrapped.exists() else checkpoint.load(folder / layout.checkpoint(model).name)[0]


def load_ensemble(layout: Layout, combination: Combination | None = None) -> Ensemble:
    """The teachers joined by `combination`, or by the one the distill stage chose (`kd.combine`)."""
    teachers = layout.teacher_models()
    if not teachers:
        raise DistilleryError(f"No teachers in {layout.teachers}; run the train_teachers stage first.")
    return Ensemble([load_model(layout, t) for t in teachers], combination or read_combination(layout)).eval()


def read_combination(layout: Layout) -> Combination:
    """How the ensemble joins its teachers, as the distill stage chose it (`kd.combine`)."""
    if not layout.ensemble_combination.exists():
        raise DistilleryError(f"{layout.ensemble_combination} is missing; run the distill stage first.")
    record = read_json(layout.ensemble_combination)
    if record["members"] != layout.teacher_models():
        raise DistilleryError(
            f"{layout.ensemble_combination} joins {', '.join(record['members'])}, not this run's teachers "
            f"({', '.join(layout.teacher_models())}); rerun the distill stage."
        )
    return Combination.from_json(record)


def read_record(layout: Layout, model: str) -> dict:
    """What the stage that trained `model` recorded: its history, validation accuracy, widths..."""
    return read_json(layout.record(model))


def onnx_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every ONNX file in `folder`, by file name."""
    return {p.name: file_digest(p) for p in sorted(folder.glob("*.onnx"))}


def verified_onnx(layout: Layout) -> dict[str, Path]:
    """The exported models by name, after checking each against the sha256 the export stage recorded."""
    if not layout.verification.exists():
        raise DistilleryError(f"{layout.verification} is missing; run the export stage first.")
    record = read_json(layout.verification)
    if not record["passed"]:
        raise DistilleryError("The export did not pass verification; rerun the export stage.")
    if not {"sha256", "files"} <= record.keys():
        raise DistilleryError(
            f"{layout.verification} records no file hashes or checks (an older export); rerun the export stage."
        )
    found = onnx_hashes(layout.export)
    changed = sorted(
        name for name in record["sha256"].keys() | found.keys() if record["sha256"].get(name) != found.get(name)
    )
    if changed:
        raise DistilleryError(
            f"ONNX files in {layout.export} differ from what the export stage verified: {', '.join(changed)} "
            "(changed, added or missing since). Rerun the export stage."
        )
    return {Path(name).stem: layout.export / name for name in found}

"""Where every file of a run lives, relative to the project root: the one place for paths and file names.

A stage builds its output folder elsewhere and renames it into place (`distillery.files.atomic_dir`),
so it names each file it writes by the final path's name: `out / layout.checkpoint("pruned").name`.
"""

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from distillery import raw_format
from distillery.files import exclusive_lock

TEACHER = "teacher_"  # a teacher's model name is this prefix and its file stem, e.g. teacher_0_wide_cnn
# After the teachers, in this order. pruned_alone: the pruned student's architecture trained from scratch
# without a teacher, the baseline for what distillation gave at the shipped size.
PIPELINE_MODELS = ("ensemble", "student_alone", "student_kd", "pruned_alone", "pruned", "int8")
PACKAGED_MODEL, MODEL_CARD = "model.onnx", "MODEL_CARD.md"  # what ships, named alike in a run and in the store
DEPLOYABLE = ("pruned", "int8")  # the fp32 and the int8 student: the faster one that meets the floor ships
PROBABILITY_OUTPUTS = {"ensemble"}  # its ONNX file outputs class probabilities; every other model's, logits


def under_root(*parts: str) -> property:
    return property(lambda self: self.root.joinpath(*parts))


@dataclass(frozen=True)
class Layout:
    root: Path

    params = under_root("params.yaml")
    data = under_root("data")
    raw = under_root("data", "raw")
    images = under_root("data", "raw", raw_format.IMAGES)
    labels = under_root("data", "raw", raw_format.LABELS)
    splits = under_root("data", "raw", raw_format.SPLITS)
    facts = under_root("data", "raw", raw_format.FACTS)
    dataset_info = under_root("data", "raw", raw_format.INFO)
    validation = under_root("data", "validation")
    validation_summary = under_root("data", "validation", "summary.json")
    data_docs = under_root("data", "validation", "docs")
    data_docs_index = under_root("data", "validation", "docs", "index.html")
    models = under_root("data", "models")
    teachers = under_root("data", "models", "teachers")
    teacher_outputs = under_root("data", "models", "teachers", "teacher_outputs.safetensors")
    user_teachers = under_root("data", "teachers")  # the teachers users bring: a dependency of the teachers stage
    user_unlabeled = under_root("data", "unlabeled")  # the transfer sets users bring: a dependency of ingest
    user_eval_sets = under_root("data", "eval")  # the labelled sets users measure on: a dependency of the report
    student = under_root("data", "models", "student")
    ensemble_combination = under_root("data", "models", "student", "ensemble.json")  # kd.combine, as distill fitted it
    pruned = under_root("data", "models", "pruned")
    int8 = under_root("data", "models", "int8")
    sensitivity_plot = under_root("data", "models", "pruned", "sensitivity.png")
    export = under_root("data", "export")
    verification = under_root("data", "export", "verification.json")
    ship_decision = under_root("data", "ship.json")  # which student ships, and why
    reports = under_root("data", "reports")
    metrics = under_root("data", "reports", "metrics.json")
    report = under_root("data", "reports", "report.md")
    accuracy_plot = under_root("data", "reports", "accuracy_vs_size.png")
    curves_plot = under_root("data", "reports", "training_curves.png")
    kept_plot = under_root("data", "reports", "what_the_student_kept.png")
    package = under_root("data", "package")  # what ships: the self-describing model and its card
    packaged_model = under_root("data", "package", PACKAGED_MODEL)
    model_card = under_root("data", "package", MODEL_CARD)
    package_record = under_root("data", "package", "package.json")
    published = under_root("data", "published.json")
    lock_file = under_root(".distillery", "run.lock")

    def teacher_models(self) -> list[str]:
        """The teachers' model names in their order in the params, from their files (a checkpoint, or a wrapped
        ONNX classifier): teacher_<index>_<kind>."""
        found = [f for f in self.teachers.glob("*.safetensors") if f != self.teacher_outputs]
        found += self.teachers.glob("*.onnx")
        return [TEACHER + f.stem for f in sorted(found, key=lambda f: int(f.stem.split("_")[0]))]

    def run_models(self) -> list[str]:
        """Every model of a finished run, in report order: each teacher, the ensemble, the students,
        the pruned architecture trained alone, the pruned student and the int8 student."""
        return self.teacher_models() + list(PIPELINE_MODELS)

    def checkpoint(self, model: str) -> Path:
        """The weights of `model` (every model but the ensemble, which is its teachers)."""
        return self.home(model) / f"{self.stem(model)}.safetensors"

    def record(self, model: str) -> Path:
        """What the stage that trained `model` recorded about it: its history, validation accuracy, ..."""
        return self.home(model) / f"{self.stem(model)}.json"

    def onnx(self, model: str) -> Path:
        return self.export / f"{model}.onnx"

    def onnx_teacher(self, model: str) -> Path:
        """The file of teacher `model` when it is an ONNX classifier (wrapped into the run's interface)."""
        return self.teachers / f"{self.stem(model)}.onnx"

    def home(self, model: str) -> Path:
        """The folder of the stage that trains `model`."""
        if model.startswith(TEACHER):
            return self.teachers
        return {
            "student_alone": self.student,
            "student_kd": self.student,
            "pruned_alone": self.pruned,
            "pruned": self.pruned,
            "int8": self.int8,
        }[model]

    @staticmethod
    def stem(model: str) -> str:
        """The file stem of `model`'s checkpoint and record (the int8 model's checkpoint is its QAT state)."""
        return model.removeprefix(TEACHER)

    def lock(self) -> AbstractContextManager[None]:
        """One run at a time in a project: the flow and every stage command hold this."""
        return exclusive_lock(self.lock_file, f"The workspace {self.root}")

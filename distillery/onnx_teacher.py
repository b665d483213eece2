"""A classifier from any framework as a teacher: its ONNX file wrapped into Distillery's interface (`images`:
N x C x H x W float32 pixels in 0..1; `scores`: N x classes logits) by a few ONNX nodes that convert the pixels to
the range and layout it was trained on, and turn probabilities into log-probabilities (logits whose softmax is
those probabilities). The wrapped file runs in onnxruntime, on CUDA when onnxruntime can."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from torch import nn

from distillery.errors import DistilleryError
from distillery.files import atomic_file

INPUT, OUTPUT = "images", "scores"  # the names every exported model of a run uses
PREFIX = "teacher/"  # the wrapped graph's own names, kept apart from the wrapper's
FLOATS = (TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE)  # the pixels and scores it may take and give
SMALLEST_PROBABILITY = 1e-12  # log(0) would be -inf
ROUND_OPSET = 11  # the first with Round, which takes the pixels of a uint8 model back to whole values
RUN_ERRORS = (  # what onnxruntime raises for a graph it cannot load or run on given inputs (each a plain Exception)
    ort_errors.Fail,
    ort_errors.InvalidArgument,
    ort_errors.InvalidGraph,
    ort_errors.NotImplemented,
    ort_errors.RuntimeException,
)


@dataclass(frozen=True)
class PixelFormat:
    """How an ONNX classifier takes its images and gives its scores."""

    layout: str  # NCHW, NHWC, or flat (each image's C x H x W values in a row)
    scale: tuple[float, ...]  # the pixels it takes are the 0..1 pixels times scale plus shift: one, or one a channel
    shift: tuple[float, ...]
    probabilities: bool  # its scores are probabilities (else logits)
    output: str | None = None  # the output with the scores; None: its only float output of shape [N, classes]


def describe(value: onnx.ValueInfoProto) -> str:
    """`name: type [dims]` of a graph input or output, as a user would recognise it."""
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return f"{value.name}: {kind.removesuffix('_type')}"
    tensor = value.type.tensor_type
    dims = ", ".join(d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?") for d in tensor.shape.dim)
    return f"{value.name}: {TensorProto.DataType.Name(tensor.elem_type).lower()} [{dims}]"


def dims(value: onnx.ValueInfoProto) -> list[int | None]:
    """The fixed sizes of a tensor's dimensions (None where symbolic)."""
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


def wrap(
    model: onnx.ModelProto, fmt: PixelFormat, *, image_shape: tuple[int, int, int], num_classes: int
) -> onnx.ModelProto:
    """`model` behind Distillery's interface for images of `image_shape` (C, H, W) and `num_classes` classes.
    Raises DistilleryError, saying what does not fit, when its input or outputs cannot be those."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise DistilleryError(
            f"it takes {len(inputs)} inputs ({', '.join(map(describe, inputs))}), not one batch of images"
        )
    source = inputs[0]
    channels, height, width = image_shape
    expected = {
        "NCHW": [channels, height, width],
        "NHWC": [height, width, channels],
        "flat": [channels * height * width],
    }
    wanted = expected[fmt.layout]
    pixel_type = source.type.tensor_type.elem_type
    if pixel_type == TensorProto.UINT8 and (fmt.scale, fmt.shift) != ((255.0,), (0.0,)):
        raise DistilleryError(f"its input is {describe(source)}: pixels in 0..255; set scaling: 0..255")
    opset = default_opset(model)
    if pixel_type == TensorProto.UINT8 and opset < ROUND_OPSET:
        raise DistilleryError(
            f"it takes uint8 pixels at opset {opset}; rounding the pixels to them needs opset {ROUND_OPSET} or later: "
            f"convert it with onnx.version_converter.convert_version(model, {ROUND_OPSET})"
        )
    if pixel_type not in (*FLOATS, TensorProto.UINT8):
        raise DistilleryError(f"its input is {describe(source)}; Distillery feeds float or uint8 images")
    if dims(source)[0] is not None:
        raise DistilleryError(
            f"its input is {describe(source)}: a fixed batch of {dims(source)[0]}; export it with a dynamic batch "
            "dimension"
        )
    found = dims(source)[1:]
    if len(found) != len(wanted) or any(f not in (None, w) for f, w in zip(found, wanted, strict=False)):
        raise DistilleryError(
            f"its input is {describe(source)}, but the data's images are {channels} x {height} x {width}, which "
            f"layout {fmt.layout} gives as [N, {', '.join(map(str, wanted))}]; check `layout`, or retrain it on "
            "these images"
        )
    scores = classifier_output(model, fmt.output, num_classes)
    classes = dims(scores)[1]
    if classes not in (None, num_classes):
        raise DistilleryError(f"its output {describe(scores)} has {classes} classes; the data has {num_classes}")

    wrapped = onnx.compose.add_prefix(model, PREFIX)
    nodes = [
        helper.make_node("Mul", [INPUT, "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "shift"], ["pixels"]),
    ]
    pixels = "pixels"
    if fmt.layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [pixels], ["channels_last"], perm=[0, 2, 3, 1]))
        pixels = "channels_last"
    elif fmt.layout == "flat":
        nodes.append(helper.make_node("Flatten", [pixels], ["flat"], axis=1))
        pixels = "flat"
    if pixel_type == TensorProto.UINT8:  # the stored 8-bit pixels again, whatever float rounding did to them
        nodes.append(helper.make_node("Round", [pixels], ["whole"]))
        pixels = "whole"
    nodes.append(helper.make_node("Cast", [pixels], [PREFIX + source.name], to=pixel_type))
    nodes += list(wrapped.graph.node)
    result = OUTPUT if not fmt.probabilities else "float_scores"
    nodes.append(helper.make_node("Cast", [PREFIX + scores.name], [result], to=TensorProto.FLOAT))
    if fmt.probabilities:
        nodes += [
            helper.make_node("Max", [result, "smallest_probability"], ["kept"]),
            helper.make_node("Log", ["kept"], [OUTPUT]),
        ]
    per_channel = [1, len(fmt.scale), 1, 1]
    constants = [
        numpy_helper.from_array(np.array(fmt.scale, np.float32).reshape(per_channel), "scale"),
        numpy_helper.from_array(np.array(fmt.shift, np.float32).reshape(per_channel), "shift"),
        numpy_helper.from_array(np.array(SMALLEST_PROBABILITY, np.float32), "smallest_probability"),
    ]
    graph = helper.make_graph(
        nodes,
        model.graph.name or "teacher",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", channels, height, width])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", num_classes])],
        initializer=[*constants, *wrapped.graph.initializer],
    )
    result_model = helper.make_model(
        graph,
        opset_imports=opset_imports([model]),
        ir_version=model.ir_version,
        functions=list(wrapped.functions),
    )
    try:
        onnx.checker.check_model(result_model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise DistilleryError(f"wrapping it in Distillery's input and output gave an invalid graph ({e})") from e
    return result_model


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default (ai.onnx) domain the model imports; 0 when it imports none."""
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def opset_imports(models: list[onnx.ModelProto]) -> list[onnx.OperatorSetIdProto]:
    """Each domain the models import once, at the highest version any imports (some converters list one twice)."""
    versions = {}
    for o in (o for m in models for o in m.opset_import):
        versions[o.domain] = max(o.version, versions.get(o.domain, 0))
    return [helper.make_opsetid(domain, version) for domain, version in versions.items()]


def is_scores(value: onnx.ValueInfoProto) -> bool:
    """A float tensor of rank 2: what a classifier's scores for a batch are."""
    tensor = value.type.tensor_type
    return value.type.WhichOneof("value") == "tensor_type" and tensor.elem_type in FLOATS and len(tensor.shape.dim) == 2


def classifier_output(model: onnx.ModelProto, name: str | None, num_classes: int) -> onnx.ValueInfoProto:
    """The output with the class scores: `name`, or the only float tensor output of rank 2 (of those, the only
    one with `num_classes` columns, or a number unknown until it runs)."""
    outputs = list(model.graph.output)
    listed = ", ".join(map(describe, outputs))
    if name is not None:
        found = [o for o in outputs if o.name == name]
        if not found:
            raise DistilleryError(f"it has no output {name!r}; its outputs: {listed}")
        if not is_scores(found[0]):
            raise DistilleryError(f"its output {describe(found[0])} is not a float [N, classes] tensor of scores")
        return found[0]
    candidates = [o for o in outputs if is_scores(o)]
    if len(candidates) > 1:  # e.g. scores and an embedding
        candidates = [o for o in candidates if dims(o)[1] in (None, num_classes)] or candidates
    if not candidates:
        raise DistilleryError(
            f"its outputs ({listed}) include no float [N, classes] tensor, so it does not give a classifier's scores "
            "(a scikit-learn classifier gives them when converted with options={id(model): {'zipmap': False}})"
        )
    if len(candidates) > 1:
        raise DistilleryError(
            f"its outputs ({listed}) include several float [N, classes] tensors; name the one with the "
            "class scores with `output:`"
        )
    return candidates[0]


def write(model: onnx.ModelProto, path: Path) -> None:
    with atomic_file(path) as tmp:
        onnx.save(model, str(tmp))


class OnnxClassifier(nn.Module):
    """A wrapped ONNX classifier (see `wrap`) as a torch module that runs it in onnxruntime: a teacher whose
    outputs can be computed, cached and averaged like any other's, but not trained. It has no torch parameters;
    `onnx_params` counts the weights in its file."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        try:
            self.session = ort.InferenceSession(str(path), providers=providers())
        except RUN_ERRORS as e:
            raise DistilleryError(f"onnxruntime cannot load {path}: {e}") from e
        self.onnx_params = weight_count(onnx.load(str(path)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.session.run([OUTPUT], {INPUT: x.detach().float().cpu().numpy()})[0]
        return torch.from_numpy(scores).to(x.device)


def weight_count(model: onnx.ModelProto) -> int:
    """The weights a wrapped classifier holds (not the wrapper's constants): its initializers, constant tensors
    and float-list attributes (where converters such as skl2onnx put a linear model's coefficients or a forest's
    thresholds)."""
    count = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.name.startswith(PREFIX))
    for node in model.graph.node:
        for a in node.attribute:
            count += len(a.floats) + (int(np.prod(a.t.dims)) if a.HasField("t") else 0)
    return count


def providers() -> list[str]:
    """onnxruntime's CUDA provider when this install has it, with the CPU one to fall back on."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]

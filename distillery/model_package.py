"""The shipped model as anyone can run it: one ONNX graph that takes uint8 images as a decoder gives them
(N x H x W x C), scales them as the pipeline does (pixels / 255, channels first), runs the model and returns
temperature-calibrated class probabilities and the predicted class index. Its metadata_props say what it is:
the class names, the input it takes, the temperature, where it came from and what it measured."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from distillery.errors import DistilleryError

INPUT, PROBABILITIES, LABEL = "images", "probabilities", "label"
FORMAT = "distillery-classifier/1"  # the `format` property: a model packaged by Distillery, and how
PREFIX = "model/"  # the wrapped model's own names, kept apart from the wrapper's
JSON_PROPS = ("classes", "input", "metrics")  # the properties whose values are JSON, the rest plain text
UNREADABLE = (  # what onnxruntime raises for a file that is not a model it can load (an empty file: InvalidArgument)
    ort_errors.NoSuchFile,
    ort_errors.InvalidProtobuf,
    ort_errors.InvalidGraph,
    ort_errors.InvalidArgument,
    ort_errors.NotImplemented,
    ort_errors.Fail,
)


@dataclass(frozen=True)
class InputSpec:
    """The images a packaged model takes: `color` ("gray" or "rgb") pixels at `height` x `width`."""

    height: int
    width: int
    channels: int
    color: str
    resample: str  # how an image of another size is brought to this one (PIL's filter)

    def props(self) -> dict:
        return {
            "name": INPUT,
            "dtype": "uint8",
            "layout": "NHWC",
            "height": self.height,
            "width": self.width,
            "channels": self.channels,
            "color": self.color,
            "resample": self.resample,
        }


@dataclass(frozen=True)
class PackagedModel:
    """What a packaged model's metadata says, as `distillery predict` needs it."""

    path: Path
    classes: list[str]
    input: InputSpec
    props: dict[str, str]


def wrap(model: onnx.ModelProto, *, temperature: float, spec: InputSpec) -> onnx.ModelProto:
    """`model` (float32 N x C x H x W pixels in 0..1 in, logits out) behind a uint8 N x H x W x C input of `spec`'s
    size and two outputs: softmax(logits / `temperature`) and argmax(logits)."""
    source, scores = model.graph.input[0], model.graph.output[0]
    channels, height, width = spec.channels, spec.height, spec.width
    classes = scores.type.tensor_type.shape.dim[1].dim_value
    inner = onnx.compose.add_prefix(model, PREFIX)
    nodes = [
        helper.make_node("Cast", [INPUT], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["pixels", "pixel_max"], ["scaled"]),
        helper.make_node("Transpose", ["scaled"], [PREFIX + source.name], perm=[0, 3, 1, 2]),
        *inner.graph.node,
        helper.make_node("Div", [PREFIX + scores.name, "temperature"], ["calibrated_logits"]),
        helper.make_node("Softmax", ["calibrated_logits"], [PROBABILITIES], axis=1),
        helper.make_node("ArgMax", [PREFIX + scores.name], [LABEL], axis=1, keepdims=0),
    ]
    constants = [
        numpy_helper.from_array(np.array(255.0, np.float32), "pixel_max"),
        numpy_helper.from_array(np.array(temperature, np.float32), "temperature"),
    ]
    graph = helper.make_graph(
        nodes,
        "distillery_classifier",
        [helper.make_tensor_value_info(INPUT, TensorProto.UINT8, ["batch", height, width, channels])],
        [
            helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["batch", classes]),
            helper.make_tensor_value_info(LABEL, TensorProto.INT64, ["batch"]),
        ],
        initializer=[*constants, *inner.graph.initializer],
    )
    wrapped = helper.make_model(
        graph, opset_imports=list(model.opset_import), ir_version=model.ir_version, functions=list(inner.functions)
    )
    wrapped.producer_name = "distillery"
    wrapped.doc_string = (
        f"An image classifier: uint8 {INPUT} [N, {height}, {width}, {channels}] ({spec.color}, resized "
        f"{spec.resample}) in; "
        f"{PROBABILITIES} [N, {classes}] (calibrated) and {LABEL} [N] (an index into the `classes` property) out."
    )
    onnx.checker.check_model(wrapped, full_check=True)
    return wrapped


def set_props(model: onnx.ModelProto, props: dict) -> None:
    """Replace `model`'s metadata_props with `props` (the JSON_PROPS as JSON, the rest as text; None left out) and
    `format`."""
    text = {k: json.dumps(v) if k in JSON_PROPS else str(v) for k, v in props.items() if v is not None}
    helper.set_model_props(model, {"format": FORMAT} | text)


def stamp(path: Path, dest: Path, *, name: str, version: str) -> None:
    """Write to `dest` the packaged model at `path` with its published `name` and `version` among its properties;
    its graph is unchanged."""
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    helper.set_model_props(model, props | {"model_name": name, "model_version": version})
    onnx.save(model, str(dest))


def read(path: Path) -> PackagedModel:
    """The metadata of a packaged model file; a DistilleryError for a file that is not one."""
    try:
        props = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
    except UNREADABLE as e:
        raise DistilleryError(f"onnxruntime cannot load {path}: {e}") from e
    found = props.custom_metadata_map
    if found.get("format") != FORMAT:
        raise DistilleryError(
            f"{path} is an ONNX model without Distillery's metadata (its `format` property is "
            f"{found.get('format')!r}, not {FORMAT!r}), so nothing says how to feed it images or name its classes. "
            "Use the model.onnx of a published version (`distillery models download`) or of a run's data/package/."
        )
    try:
        spec = json.loads(found["input"])
        return PackagedModel(
            path=path,
            classes=json.loads(found["classes"]),
            input=InputSpec(**{k: spec[k] for k in ("height", "width", "channels", "color", "resample")}),
            props=dict(found),
        )
    except (KeyError, ValueError, TypeError) as e:
        raise DistilleryError(
            f"{path}: its Distillery metadata is incomplete or damaged ({e!r}); download it again."
        ) from e

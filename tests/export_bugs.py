"""Real export bugs, injected into an int8 or an fp32 ONNX graph: each returns a broken copy of the model."""

import copy

import numpy as np
import onnx
from onnx import numpy_helper


def with_constant(model: onnx.ModelProto, name: str, change) -> onnx.ModelProto:
    broken = copy.deepcopy(model)
    constant = next(i for i in broken.graph.initializer if i.name == name)
    constant.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(constant)), name))
    return broken


def producer(model: onnx.ModelProto, output: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if output in n.output)


def last_conv(model: onnx.ModelProto) -> onnx.NodeProto:
    return [n for n in model.graph.node if n.op_type == "Conv"][-1]


def weight_scale_doubled(model: onnx.ModelProto) -> onnx.ModelProto:
    """The last conv's weight scales written twice too large."""
    scales = producer(model, last_conv(model).input[1]).input[1]
    return with_constant(model, scales, lambda a: a * 2)


def weight_layout_transposed(model: onnx.ModelProto) -> onnx.ModelProto:
    """The first conv's int8 kernels stored with height and width swapped (OIWH for OIHW)."""
    first = next(n for n in model.graph.node if n.op_type == "Conv")
    weights = producer(model, first.input[1]).input[0]
    return with_constant(model, weights, lambda a: np.ascontiguousarray(a.transpose(0, 1, 3, 2)))


def conv_bias_dropped(model: onnx.ModelProto) -> onnx.ModelProto:
    """The last conv's bias (where the folded batch norm's shift lives) lost."""
    return with_constant(model, last_conv(model).input[2], np.zeros_like)


def classifier_bias_dropped(model: onnx.ModelProto) -> onnx.ModelProto:
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    return with_constant(model, gemm.input[2], np.zeros_like)


def first_kernel_transposed(model: onnx.ModelProto) -> onnx.ModelProto:
    """The first conv's fp32 kernels stored with height and width swapped."""
    first = next(n for n in model.graph.node if n.op_type == "Conv")
    return with_constant(model, first.input[1], lambda a: np.ascontiguousarray(a.transpose(0, 1, 3, 2)))


def last_kernel_one_percent_off(model: onnx.ModelProto) -> onnx.ModelProto:
    """The last conv's fp32 weights 1% too large: few images change class, every output moves."""
    return with_constant(model, last_conv(model).input[1], lambda a: a * 1.01)


FP32_BUGS = {
    "first kernel transposed": first_kernel_transposed,
    "last kernel 1% off": last_kernel_one_percent_off,
    "classifier bias dropped": classifier_bias_dropped,
}
BUGS = {
    "weight scale doubled": weight_scale_doubled,
    "weight layout transposed": weight_layout_transposed,
    "conv bias dropped": conv_bias_dropped,
    "classifier bias dropped": classifier_bias_dropped,
}

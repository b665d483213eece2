"""ONNX export (dynamo exporter, dynamic batch) and onnxruntime evaluation and timing."""

import math
import os
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, version_converter
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from torch import nn

from distillery.combine import Combination
from distillery.data import Split, batches
from distillery.errors import DistilleryError
from distillery.files import atomic_file
from distillery.onnx_teacher import default_opset, opset_imports

BATCH = torch.export.Dim("batch", min=1, max=4096)
UNREADABLE = (ort_errors.NoSuchFile, ort_errors.InvalidProtobuf, ort_errors.InvalidGraph)  # a missing or bad file


def export(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Write `model` as one self-contained ONNX file with a dynamic batch dimension."""
    with atomic_file(path) as tmp:
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            external_data=False,
            optimize=True,
            input_names=["images"],
            output_names=["scores"],
            dynamic_shapes=({0: BATCH},),
            verbose=False,
        )
        program.save(str(tmp))
        strip_debug_info(tmp)


def ensemble(members: list[Path], path: Path, combination: Combination) -> None:
    """One ONNX file that joins the class scores of the member files (each takes `images` and gives logits as
    `scores`) into probabilities as `combination` does, as `models.Ensemble` does. The members, exported by torch
    or wrapped from any framework, are brought to the newest opset among them and their names prefixed."""
    loaded = [onnx.load(str(p)) for p in members]
    opset = max(default_opset(m) for m in loaded)
    for i, (member, source) in enumerate(zip(loaded, members, strict=True)):
        try:
            loaded[i] = member if default_opset(member) == opset else version_converter.convert_version(member, opset)
        except version_converter.ConvertError as e:
            raise DistilleryError(
                f"{source.name} (opset {default_opset(member)}) cannot be brought to opset {opset} to join the "
                f"ensemble's other members ({e}); export it at opset {opset}"
            ) from e
    nodes, initializers, functions, weighted = [], [], [], []
    for i, (member, weight) in enumerate(zip(loaded, combination.weights, strict=True)):
        prefix = f"member{i}/"
        member = onnx.compose.add_prefix(member, prefix)
        scores = prefix + "scores"
        nodes += [helper.make_node("Identity", ["images"], [prefix + "images"]), *member.graph.node]
        if not combination.averages_logits:
            nodes.append(helper.make_node("Softmax", [scores], [prefix + "probabilities"], axis=1))
            scores = prefix + "probabilities"
        initializers += [
            onnx.numpy_helper.from_array(np.array(weight, np.float32), prefix + "weight"),
            *member.graph.initializer,
        ]
        nodes.append(helper.make_node("Mul", [scores, prefix + "weight"], [prefix + "weighted"]))
        weighted.append(prefix + "weighted")
        functions += member.functions
    if combination.averages_logits:
        nodes += [
            helper.make_node("Sum", weighted, ["mean_logits"]),
            helper.make_node("Softmax", ["mean_logits"], ["scores"], axis=1),
        ]
    else:
        nodes.append(helper.make_node("Sum", weighted, ["scores"]))
    first = onnx.load(str(members[0])).graph
    images, scores = first.input[0], first.output[0]  # every member's input and output are these
    graph = helper.make_graph(nodes, "ensemble", [images], [scores], initializer=initializers)
    model = helper.make_model(
        graph,
        opset_imports=opset_imports(loaded),
        ir_version=max(m.ir_version for m in loaded),
        functions=functions,
    )
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise DistilleryError(
            f"joining {', '.join(p.name for p in members)} gave an invalid ensemble graph ({e})"
        ) from e
    with atomic_file(path) as tmp:
        onnx.save(model, str(tmp))


def strip_debug_info(path: Path) -> None:
    """Drop the exporter's per-node provenance (source names, FX nodes) and intermediate shape hints:
    two thirds of a small model's bytes, none of them needed to run it."""
    proto = onnx.load(str(path))
    for item in (*proto.graph.node, *proto.graph.input, *proto.graph.output):
        del item.metadata_props[:]
    del proto.graph.value_info[:]
    onnx.save(proto, str(path))


def cpu_threads(requested: int = 0) -> int:
    """onnxruntime's intra-op threads: `requested`, or for 0 the CPUs this process may run on, within a
    container's CPU quota (cgroup v2 cpu.max)."""
    if requested:
        return requested
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = Path("/sys/fs/cgroup/cpu.max")
    if quota.exists() and (limit := quota.read_text().split())[0] != "max":
        cpus = min(cpus, max(1, math.ceil(int(limit[0]) / int(limit[1]))))
    return cpus


def session(path: Path, threads: int = 0, *, optimized: bool = True) -> ort.InferenceSession:
    """A CPU session of `cpu_threads(threads)` intra-op threads. Not `optimized`: the graph's ops run one by one as
    written, without onnxruntime's fusions (for an int8 graph, its fused integer kernels)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = cpu_threads(threads)
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except UNREADABLE as e:  # other onnxruntime errors are bugs, ours or its, and keep their traceback
        raise DistilleryError(f"onnxruntime cannot load {path}: {e}") from e


def outputs(sess: ort.InferenceSession, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """The model's outputs for normalised float32 images (N x C x H x W), in order, `batch_size` at a time."""
    name = sess.get_inputs()[0].name
    return np.concatenate(
        [sess.run(None, {name: images[i : i + batch_size]})[0] for i in range(0, len(images), batch_size)]
    )


def logits(sess: ort.InferenceSession, data: Split, batch_size: int = 512) -> np.ndarray:
    """The model's outputs for every image of `data`, in order, read from disk a batch at a time."""
    return np.concatenate([outputs(sess, x.numpy(), batch_size) for x, _ in batches(data, batch_size)])


def predict(sess: ort.InferenceSession, data: Split) -> np.ndarray:
    return logits(sess, data).argmax(axis=1)


def accuracy(sess: ort.InferenceSession, data: Split) -> float:
    return float((predict(sess, data) == data.y.numpy()).mean())


def latency_ms(
    sess: ort.InferenceSession, sample: np.ndarray, *, batch: int, budget_s: float = 2.0, max_runs: int | None = 200
) -> float:
    """Median wall time of one `sess.run` on a batch of `batch` images, after a warm-up: at least 5 runs, then
    runs until `budget_s` is spent or `max_runs` (None: no cap) are done."""
    name = sess.get_inputs()[0].name
    x = np.ascontiguousarray(np.resize(sample, (batch, *sample.shape[1:])).astype(np.float32))
    for _ in range(3):
        sess.run(None, {name: x})
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while (max_runs is None or len(times) < max_runs) and (len(times) < 5 or time.perf_counter() < deadline):
        start = time.perf_counter()
        sess.run(None, {name: x})
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def interleaved_latency_ms(
    paths: dict[str, Path], sample: np.ndarray, *, batch: int, rounds: int, budget_s: float, threads: int
) -> dict[str, list[float]]:
    """Each model's `latency_ms` in `rounds` rounds of `budget_s` each, taking turns (in reverse order every
    other round) so that a slow spell of the machine hits every model alike. Each round opens a fresh session
    of each model: where its threads land made one session of a model up to 2x slower than the next (seen on
    a 2-core VM), so a session is one sample of the model's speed, not the speed."""
    found: dict[str, list[float]] = {name: [] for name in paths}
    for round_index in range(rounds):
        order = list(paths) if round_index % 2 == 0 else list(reversed(paths))
        for name in order:
            sess = session(paths[name], threads)
            found[name].append(latency_ms(sess, sample, batch=batch, budget_s=budget_s, max_runs=None))
    return found

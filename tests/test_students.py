"""Students of other architectures: torchvision's MobileNets at a width multiplier, pruned, rebuilt from their spec,
quantized and exported as the built-in student is; a run that distils into one; the names refused."""

import json
import shutil

import onnx
import pytest
import torch
from pydantic import ValidationError

from distillery import checkpoint, models, onnx_export
from distillery.data import load_dataset
from distillery.errors import DistilleryError
from distillery.models import conv_layers, widths
from distillery.names import TORCHVISION, TORCHVISION_STUDENTS
from distillery.pruning import make_pruner, pruned_spec
from distillery.quantize import convert, load_prepared, prepare_qat
from distillery.training import Objective, accuracy, fit
from project.config import AugmentConfig, DistillConfig, ExportConfig, PipelineParams
from project.layout import Layout
from project.settings import device, train_settings
from project.students import train_student
from tasks import distill, export, stages_through
from tests.conftest import TINY, tiny_params


@pytest.mark.parametrize("name", TORCHVISION_STUDENTS)
def test_each_torchvision_student_prunes_rebuilds_quantizes_and_exports(name, staged, tmp_path):
    data, config = load_dataset(staged.raw), DistillConfig(arch=TORCHVISION + name, width_scales=[0.5], epochs=3)
    (spec,) = distill.candidate_specs(config, in_channels=data.in_channels, num_classes=data.num_classes)
    model, _ = train_student(spec, data, config, augment=AugmentConfig(), kd=None, teaching=None, name=name)
    images = data.val.head(64)
    before = {layer_name: layer.out_channels for layer_name, layer in conv_layers(model).items()}
    make_pruner(model.eval(), images[:2], ratio=0.5, steps=1, round_to=8).step()
    after = {layer_name: layer.out_channels for layer_name, layer in conv_layers(model).items()}
    fit(
        model,
        data.train,
        data.val,
        train_settings(config.model_copy(update={"epochs": 1}), AugmentConfig()),
        device(),
        Objective(),
    )
    assert sum(after.values()) < 0.7 * sum(before.values())
    assert all(after[k] % 8 == 0 and after[k] >= before[k] / 2 for k in before if before[k] >= 8), (before, after)

    checkpoint.save(model, pruned_spec(spec, model), tmp_path / "pruned.safetensors")
    rebuilt, rebuilt_spec = checkpoint.load(tmp_path / "pruned.safetensors")
    assert widths(rebuilt) == list(after.values()) and torch.equal(rebuilt(images), model(images))
    fresh = models.build(rebuilt_spec).eval()  # the pruned architecture from its spec alone, as pruned_alone starts
    assert fresh(images).shape == (64, 10) and not torch.equal(fresh(images), model(images))

    prepared = prepare_qat(model, images[:2])
    prepared(data.val.head(len(data.val)))  # the observers see data, as in QAT
    checkpoint.save(prepared, rebuilt_spec, tmp_path / "int8.safetensors")  # as the quantize stage saves it
    reloaded = convert(load_prepared(tmp_path / "int8.safetensors", images[:2])[0])
    int8 = convert(prepared)
    torch.testing.assert_close(reloaded.state_dict(), int8.state_dict(), rtol=0, atol=0)  # same int8 weights, scales
    onnx_export.export(int8, images[:2], tmp_path / "int8.onnx")
    session = onnx_export.session(tmp_path / "int8.onnx", optimized=False)  # as the export stage checks it
    found = export.verify(int8, session, data.test, export.rules(ExportConfig())[1])
    assert found["failures"] == [], found


def test_a_width_scale_is_a_torchvision_student_s_width_multiplier():
    config = DistillConfig(arch="torchvision:mobilenet_v3_small", width_scales=[1.0, 0.35, 0.5])
    specs = distill.candidate_specs(config, in_channels=1, num_classes=10)
    assert [s["width_mult"] for s in specs] == [0.35, 0.5, 1.0] and all("widths" not in s for s in specs)
    params = [models.count_params(models.build(s)) for s in specs]
    assert params == sorted(params) and params[0] < params[-1] / 3


def test_a_mobilenet_student_scales_images_up_in_onnx_as_in_pytorch_at_any_ratio(tmp_path):
    """28 to 32 pixels a side (MNIST's): torch's "nearest" exported to a Resize that picked other pixels."""
    config = DistillConfig(arch="torchvision:mobilenet_v3_small", width_scales=[0.5])
    (spec,) = distill.candidate_specs(config, in_channels=1, num_classes=10)
    model, images = models.build(spec).eval(), torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    onnx_export.export(model, images[:2], tmp_path / "student.onnx")
    session = onnx_export.session(tmp_path / "student.onnx")
    scores, expected = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0], model(images)
    step = (expected.max() - expected.min()).item() / 255  # a logit step, as the export check measures it
    assert abs(scores - expected.detach().numpy()).max() < 0.01 * step


def test_student_cnn_sizes_that_round_alike_are_tried_once():
    config = DistillConfig(widths=[8, 16], width_scales=[1.0, 0.5, 0.45])
    specs = distill.candidate_specs(config, in_channels=1, num_classes=10)
    assert [s["widths"] for s in specs] == [[4, 8], [8, 16]]


@pytest.mark.parametrize("arch", ["torchvision:shufflenet_v2_x0_5", "torchvision:resnet18", "mobilenet_v2"])
def test_a_student_no_test_has_taken_through_the_pipeline_is_refused_naming_those_that_are(arch):
    with pytest.raises(ValidationError, match="torchvision:mobilenet_v3_small"):
        PipelineParams.model_validate({"distill": {"arch": arch}})


def test_a_spec_sizing_a_layer_its_architecture_lacks_is_refused():
    spec = {"arch": "torchvision:mobilenet_v2", "in_channels": 1, "num_classes": 10, "width_mult": 0.35}
    with pytest.raises(DistilleryError, match="net.features.99"):
        models.build(spec | {"layers": {"net.features.99": [8, 8, 1]}})


@pytest.fixture(scope="module")
def mobilenet_run(staged, tmp_path_factory):
    """The tiny run's teachers distilled into a MobileNetV3-small at half width, then pruned, quantized, exported
    and reported."""
    layout = Layout(tmp_path_factory.mktemp("mobilenet"))
    shutil.copytree(staged.data, layout.data, ignore=shutil.ignore_patterns("student", "pruned", "int8", "export"))
    shutil.rmtree(layout.reports, ignore_errors=True)
    params = tiny_params().model_copy(
        update={"distill": DistillConfig.model_validate(TINY["distill"] | STUDENT)}, deep=True
    )
    for stage in stages_through("report"):
        if stage.name not in ("ingest", "validate", "train_teachers"):  # the tiny run's teachers
            stage.call(params, layout)
    return layout


STUDENT = {"arch": "torchvision:mobilenet_v3_small", "width_scales": [0.5]}


def test_a_run_distils_prunes_quantizes_exports_and_reports_a_mobilenet_student(mobilenet_run):
    layout = mobilenet_run
    student, spec = checkpoint.load(layout.checkpoint("student_kd"))
    assert spec["arch"] == STUDENT["arch"] and spec["width_mult"] == 0.5 and spec["upscale"] == "nearest-exact"
    pruned, pruned_spec_ = checkpoint.load(layout.checkpoint("pruned"))
    assert pruned_spec_["layers"] == models.layer_sizes(pruned)
    alone, alone_spec = checkpoint.load(layout.checkpoint("pruned_alone"))
    assert alone_spec == pruned_spec_ and models.layer_sizes(alone) == models.layer_sizes(pruned)
    assert models.count_params(pruned) < 0.6 * models.count_params(student)
    assert sum(widths(pruned)) < 0.6 * sum(widths(student))

    verification = json.loads(layout.verification.read_text())
    assert verification["passed"] and set(verification["files"]) >= {"pruned", "int8", "student_kd"}
    metrics = json.loads(layout.metrics.read_text())
    assert metrics["student"] == {"arch": STUDENT["arch"], "width_mult": 0.5}
    assert "Student: `torchvision:mobilenet_v3_small`, width multiplier 0.5" in layout.report.read_text()
    for name in ("student_alone", "student_kd", "pruned_alone", "pruned", "int8"):  # batch-norm statistics that
        assert metrics[name]["accuracy"] > 0.7, name  # lag the weights (torchvision's momentum) failed this
    assert metrics["pruned"]["params"] == models.count_params(pruned)
    (tried,) = json.loads(layout.record("student_kd").read_text())["width_search"]
    assert {k: tried[k] for k in ("width_mult", "widths", "params")} == {
        "width_mult": 0.5,
        "widths": widths(student),
        "params": models.count_params(student),
    }
    assert tried["val_accuracy"] == pytest.approx(accuracy(student, load_dataset(layout.raw).val, device()))


def test_every_conv_of_the_mobilenet_int8_file_has_int8_weights(mobilenet_run):
    graph = onnx.load(str(mobilenet_run.onnx("int8"))).graph
    int8 = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT8}
    dequantized = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == len(conv_layers(checkpoint.load(mobilenet_run.checkpoint("pruned"))[0]))
    assert all(dequantized.get(conv.input[1]) in int8 for conv in convs)


@pytest.mark.parametrize("model", ["torchvision:mobilenet_v3_small", "torchvision:mnasnet0_5"])  # 0.01, 0.0003
def test_torchvision_batch_norms_update_at_pytorch_s_default_rate(model):
    spec = {"arch": model, "in_channels": 1, "num_classes": 10}
    built = models.build(spec)
    norms = [m for m in built.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    first = next(name for name, m in built.named_modules() if isinstance(m, torch.nn.BatchNorm2d))
    resized = models.build(spec | {"layers": {first: [8]}}).get_submodule(first)  # a pruned layer, made anew
    assert norms and {m.momentum for m in norms} == {resized.momentum} == {0.1}


@pytest.mark.parametrize("run", ["staged", "mobilenet_run"])
def test_int8_files_pool_in_float(run, request):
    """Quantized, an average keeps its input's scale and falls on rounding ties that runtimes break differently.
    In float, a pooled value is quantized only as the input of a quantized op, on that op's own scale."""
    graph = onnx.load(str(request.getfixturevalue(run).onnx("int8"))).graph
    scale = {t.name: onnx.numpy_helper.to_array(t).tolist() for t in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}
    pools = [n for n in graph.node if n.op_type in ("ReduceMean", "GlobalAveragePool", "AveragePool")]
    assert pools
    for pool in pools:
        source = producer[pool.input[0]]  # quantized pooling reads a DequantizeLinear and requantizes at its scale
        requantized = [n for n in graph.node if n.op_type == "QuantizeLinear" and pool.output[0] in n.input]
        shared = source.op_type == "DequantizeLinear" and any(
            scale[q.input[1]] == scale[source.input[1]] for q in requantized
        )
        assert not shared, pool.name


def test_the_students_bench_tabulates_a_run_s_report_and_export_check(mobilenet_run):
    from bench import students as bench

    params = bench.student_params(tiny_params(), "torchvision:mobilenet_v2@0.35")
    assert (params.distill.arch, params.distill.width_scales) == ("torchvision:mobilenet_v2", [0.35])
    run = bench.measured(mobilenet_run, {"distill": 2.0, "report": 1.0})
    metrics = json.loads(mobilenet_run.metrics.read_text())
    assert run["student"] == metrics["student"] and run["models"]["int8"]["accuracy"] == metrics["int8"]["accuracy"]
    assert run["int8_check"]["as_written"]["top1_agreement"] >= 0.99 and "fused_kernels" in run["int8_check"]
    table = bench.markdown({"git_commit": "abc", "cpu": {"model": "a CPU", "cores": 2}, "runs": {"mobilenet": run}})
    row = next(line for line in table.splitlines() if line.startswith("| mobilenet |"))
    assert f"{metrics['int8']['accuracy']:.1%}" in row and row.endswith("| 3 |")

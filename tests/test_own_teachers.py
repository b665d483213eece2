"""Teachers users bring: torchvision architectures by name, their trained torch weights, ONNX classifiers from
other frameworks (scikit-learn through skl2onnx here), mixed in one run; and the bad inputs, refused before
anything trains."""

import logging
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
import yaml
from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import save_file
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression
from torch import nn

from distillery import checkpoint, models, onnx_export
from distillery.data import Dataset, Split, load_dataset
from distillery.errors import DistilleryError
from distillery.files import file_digest, read_json
from distillery.names import BUILT_IN_TEACHERS
from distillery.onnx_teacher import OnnxClassifier
from distillery.training import logits, seeded
from project.artifacts import verified_onnx
from project.config import AugmentConfig, PipelineParams, TeachersConfig
from project.layout import Layout
from project.user_errors import describe_invalid
from tasks import stages_through, train_teachers
from tests.conftest import ROOT, TINY, copy_project, venv_env

CPU = torch.device("cpu")


@pytest.fixture
def validated(staged, tmp_path) -> Layout:
    """A project folder with the tiny run's validated data and an empty data/teachers/."""
    layout = Layout(tmp_path)
    for folder in (layout.raw, layout.validation):
        shutil.copytree(staged.root / folder.relative_to(layout.root), folder)
    layout.user_teachers.mkdir(parents=True)
    return layout


def pixels(split) -> np.ndarray:
    """A split's images as a scikit-learn user has them: one row of 0..255 values per image."""
    return split.images[split.rows].reshape(len(split), -1).numpy().astype(np.float32)


def sklearn_teacher(
    layout: Layout, name: str, *, classes=10, features=None, zipmap=False, dtype=np.float32, fixed_batch=False
):
    """A logistic regression trained on the training images (0..255, flattened), as ONNX in data/teachers/."""
    train = load_dataset(layout.raw).train
    x, y = pixels(train)[:, :features].astype(dtype), train.y.numpy() % classes
    clf = LogisticRegression(max_iter=200).fit(x, y)
    options = {} if zipmap else {id(clf): {"zipmap": False}}
    example = {"initial_types": [("X", FloatTensorType([1, x.shape[1]]))]} if fixed_batch else {"X": x[:1]}
    (layout.user_teachers / name).write_bytes(to_onnx(clf, options=options, **example).SerializeToString())
    return clf


def torch_weights(layout: Layout, name: str, arch: str, *, seed: int = 7, as_a_run_saves_it: bool = False) -> nn.Module:
    """A model of `arch` (randomly initialised with `seed`) whose state dict a user saved as safetensors; for a
    torchvision architecture, the builder's model's state dict, as the user has it, or `as_a_run_saves_it`."""
    data = load_dataset(layout.raw)
    spec = train_teachers.spec_for(arch, data)
    model = seeded(seed, lambda: models.build(spec)).eval()
    if as_a_run_saves_it:
        checkpoint.save(model, spec, layout.user_teachers / name)
        return model
    plain = model.net if isinstance(model, models.TorchvisionClassifier) else model
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(layout.user_teachers / name))
    return model


class UserModel(nn.Module):
    """A user's model that takes images in its own layout and range (`to_unit` undoes them) and gives logits."""

    def __init__(self, inner: nn.Module, to_unit):
        super().__init__()
        self.inner, self.to_unit = inner, to_unit

    def forward(self, x):
        return self.inner(self.to_unit(x))


FORMATS = {  # an ONNX teacher's declared input: the entry's keys, the model's input from 0..1 images, and back
    "NHWC -1..1": (
        {"layout": "NHWC", "scaling": "-1..1"},
        lambda x: x.permute(0, 2, 3, 1) * 2 - 1,
        lambda x: (x.permute(0, 3, 1, 2) + 1) / 2,
    ),
    "NCHW mean_std": (
        {"layout": "NCHW", "scaling": "mean_std", "mean": [0.5], "std": [0.25]},
        lambda x: (x - 0.5) / 0.25,
        lambda x: x * 0.25 + 0.5,
    ),
    "flat 0..255": (
        {"layout": "flat", "scaling": "0..255"},
        lambda x: x.flatten(1) * 255,
        lambda x: x.reshape(-1, 1, 8, 8) / 255,
    ),
}


def test_config_takes_every_kind_of_teacher_and_names_what_is_wrong():
    config = TeachersConfig(
        models=[
            "wide_cnn",
            "torchvision:resnet50",
            {"checkpoint": "data/teachers/mine.safetensors", "arch": "torchvision:resnet18", "fine_tune_epochs": 2},
            {"onnx": "data/teachers/forest.onnx", "layout": "flat", "scaling": "0..255", "outputs": "probabilities"},
        ]
    )
    assert tuple(models.TEACHER_ARCHS) == BUILT_IN_TEACHERS  # what the schema accepts is what builds
    assert train_teachers.teacher_names(config) == [
        "0_wide_cnn",
        "1_torchvision-resnet50",
        "2_checkpoint-mine",
        "3_onnx-forest",
    ]
    bad = [
        ("torchvision:resnet5", "did you mean torchvision:resnet50"),
        ("resnet", "neither a built-in architecture"),
        ({"path": "data/teachers/x.onnx"}, "a teacher is an architecture name"),
    ]
    for entry, says in bad:
        with pytest.raises(ValidationError) as e:
            TeachersConfig(models=["wide_cnn", entry])
        message = describe_invalid(e.value, "params.yaml")
        assert message.startswith("Invalid parameters in params.yaml: models.1") and says in message
    with pytest.raises(ValidationError, match="mean and std"):
        TeachersConfig(models=[{"onnx": "data/teachers/x.onnx", "scaling": "mean_std", "mean": [0.5]}])
    with pytest.raises(ValidationError, match="torchvision:resnet5"):
        TeachersConfig(models=[{"checkpoint": "data/teachers/x.safetensors", "arch": "torchvision:resnet5"}])


def test_a_torchvision_teacher_takes_small_gray_images_and_exports(tmp_path):
    seen = []
    model = models.build({"arch": "torchvision:shufflenet_v2_x0_5", "in_channels": 1, "num_classes": 10}).eval()
    model.net.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape)))
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        scores = model(x)
    assert scores.shape == (3, 10) and seen == [(3, 3, 32, 32)]  # gray to 3 channels, scaled up to 32 a side
    onnx_export.export(model, x[:2], tmp_path / "m.onnx")
    assert np.allclose(onnx_export.session(tmp_path / "m.onnx").run(None, {"images": x.numpy()})[0], scores, atol=1e-5)
    four = models.build({"arch": "torchvision:squeezenet1_1", "in_channels": 4, "num_classes": 3}).eval()
    with torch.no_grad():
        assert four(torch.rand(2, 4, 40, 20)).shape == (2, 3)  # a 1x1 conv maps 4 channels to 3; 21 a side at least
    assert four.channels.in_channels == 4 and four.min_side == 32
    assert models.smallest_input("inception_v3") == (75, 75)  # scaled up to 75 a side, not 32


@pytest.mark.parametrize(
    ("arch", "as_a_run_saves_it"),
    [("small_resnet", False), ("torchvision:shufflenet_v2_x0_5", False), ("torchvision:shufflenet_v2_x0_5", True)],
)
def test_a_checkpoint_teacher_is_the_model_it_was_saved_from_or_fine_tunes_it(
    validated, arch, as_a_run_saves_it, tmp_path
):
    source = torch_weights(validated, "mine.safetensors", arch, as_a_run_saves_it=as_a_run_saves_it)
    assert next(iter(safe_open(validated.user_teachers / "mine.safetensors", "pt").keys())).startswith("net.") == (
        as_a_run_saves_it
    )
    val = load_dataset(validated.raw).val
    for epochs in (0, 1):
        entry = {"checkpoint": "data/teachers/mine.safetensors", "arch": arch, "fine_tune_epochs": epochs}
        config = TeachersConfig(epochs=1, models=[entry])
        out = tmp_path / f"epochs{epochs}"
        out.mkdir()
        record = train_teachers.train_teacher(config, 0, validated, out, augment=AugmentConfig())
        teacher, spec = checkpoint.load(out / "0_checkpoint-mine.safetensors")
        same = torch.equal(logits(teacher, val, CPU), logits(source, val, CPU))
        assert same == (epochs == 0) and len(record["history"]) == epochs and spec["arch"] == arch
        assert record["source"] == {
            "path": "data/teachers/mine.safetensors",
            "sha256": file_digest(validated.user_teachers / "mine.safetensors"),
        }


def test_a_checkpoint_teacher_fine_tunes_at_its_own_learning_rate(validated, tmp_path):
    source = torch_weights(validated, "mine.safetensors", "wide_cnn")
    moved = {}
    for lr in (1e-9, None):  # None: teachers.lr
        entry = {"checkpoint": "data/teachers/mine.safetensors", "arch": "wide_cnn", "fine_tune_epochs": 1}
        train_teachers.train_teacher(
            TeachersConfig(models=[entry | {"fine_tune_lr": lr}]), 0, validated, tmp_path, augment=AugmentConfig()
        )
        tuned = checkpoint.load(tmp_path / "0_checkpoint-mine.safetensors")[0]
        moved[lr] = max(
            (a - b).abs().max().item() for a, b in zip(tuned.parameters(), source.parameters(), strict=True)
        )
    assert moved[1e-9] < 1e-6 < 1e-3 < moved[None]


def test_a_checkpoint_teacher_gets_the_pixel_range_it_was_trained_on(validated, tmp_path):
    source = torch_weights(validated, "mine.safetensors", "wide_cnn")
    entry = {"checkpoint": "data/teachers/mine.safetensors", "arch": "wide_cnn", "scaling": "mean_std"}
    config = TeachersConfig(models=[entry | {"mean": [0.13], "std": [0.31]}])
    train_teachers.train_teacher(config, 0, validated, tmp_path, augment=AugmentConfig())
    teacher, spec = checkpoint.load(tmp_path / "0_checkpoint-mine.safetensors")  # rebuilt from its spec
    val = load_dataset(validated.raw).val
    expected = logits(UserModel(source, lambda x: (x - 0.13) / 0.31), val, CPU)
    assert torch.allclose(logits(teacher, val, CPU), expected, atol=1e-5)
    assert spec["input_scale"] == pytest.approx([1 / 0.31]) and spec["input_shift"] == pytest.approx([-0.13 / 0.31])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_onnx_teacher_from_scikit_learn_gives_its_probabilities(validated, dtype, tmp_path):
    clf = sklearn_teacher(validated, "logreg.onnx", dtype=dtype)
    entry = {"onnx": "data/teachers/logreg.onnx", "layout": "flat", "scaling": "0..255", "outputs": "probabilities"}
    record = train_teachers.train_teacher(
        TeachersConfig(models=[entry]), 0, validated, tmp_path, augment=AugmentConfig()
    )
    teacher = OnnxClassifier(tmp_path / "0_onnx-logreg.onnx")
    val = load_dataset(validated.raw).val
    expected = clf.predict_proba(pixels(val).astype(dtype))
    assert np.allclose(torch.softmax(logits(teacher, val, CPU), dim=1).numpy(), expected, atol=1e-4)
    assert record["val_accuracy"] == pytest.approx((expected.argmax(1) == val.y.numpy()).mean())
    weights = clf.coef_.size + clf.intercept_.size  # as attributes (float32) or initializers with a few constants
    assert record["params"] == teacher.onnx_params and weights <= teacher.onnx_params <= weights + 20


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_onnx_teacher_gets_its_pixels_in_the_layout_and_range_it_declares(validated, fmt, tmp_path):
    keys, from_unit, to_unit = FORMATS[fmt]
    data = load_dataset(validated.raw)
    inner = seeded(0, lambda: models.build(train_teachers.spec_for("wide_cnn", data))).eval()
    torch.onnx.export(
        UserModel(inner, to_unit), (from_unit(data.val.head(2)),), validated.user_teachers / "user.onnx", dynamo=True,
        external_data=False, dynamic_shapes=({0: torch.export.Dim("batch")},),
    )  # fmt: skip
    train_teachers.train_teacher(
        TeachersConfig(models=[{"onnx": "data/teachers/user.onnx", **keys}]),
        0,
        validated,
        tmp_path,
        augment=AugmentConfig(),
    )
    teacher = OnnxClassifier(tmp_path / "0_onnx-user.onnx")
    assert torch.allclose(logits(teacher, data.val, CPU), logits(inner, data.val, CPU), atol=1e-4)


def linear_onnx(
    layout: Layout, name: str, pixel_type: int, score_type: int, opset: int = 17
) -> tuple[np.ndarray, np.ndarray]:
    """A linear classifier over flattened pixels of `pixel_type` giving scores of `score_type`, as a converter
    for an edge runtime writes it, in data/teachers/; its weights and bias."""
    features = int(np.prod(load_dataset(layout.raw).val.images.shape[1:]))
    rng = np.random.default_rng(0)
    weights, bias = rng.normal(0, 0.01, (features, 10)).astype(np.float32), rng.normal(0, 1, 10).astype(np.float32)
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Cast", ["x"], ["x_float"], to=onnx.TensorProto.FLOAT),
            onnx.helper.make_node("MatMul", ["x_float", "weights"], ["product"]),
            onnx.helper.make_node("Add", ["product", "bias"], ["logits"]),
            onnx.helper.make_node("Cast", ["logits"], ["scores"], to=score_type),
        ],
        "edge",
        [onnx.helper.make_tensor_value_info("x", pixel_type, ["n", features])],
        [onnx.helper.make_tensor_value_info("scores", score_type, ["n", 10])],
        initializer=[onnx.numpy_helper.from_array(weights, "weights"), onnx.numpy_helper.from_array(bias, "bias")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    (layout.user_teachers / name).write_bytes(model.SerializeToString())
    return weights, bias


@pytest.mark.parametrize("pixel_type", ["uint8", "float16"])
def test_an_onnx_teacher_takes_8_bit_or_half_precision_pixels(validated, pixel_type, tmp_path):
    kind = {"uint8": onnx.TensorProto.UINT8, "float16": onnx.TensorProto.FLOAT16}[pixel_type]
    weights, bias = linear_onnx(validated, "edge.onnx", kind, score_type=kind if pixel_type == "float16" else 1)
    scaling = "0..255" if pixel_type == "uint8" else "0..1"
    entry = {"onnx": "data/teachers/edge.onnx", "layout": "flat", "scaling": scaling}
    train_teachers.train_teacher(TeachersConfig(models=[entry]), 0, validated, tmp_path, augment=AugmentConfig())
    val = load_dataset(validated.raw).val
    stored = pixels(val)  # 0..255
    fed = stored.astype(np.uint8) if pixel_type == "uint8" else (stored / 255).astype(np.float16)
    expected = (fed.astype(np.float32) @ weights + bias).astype(np.float16 if pixel_type == "float16" else np.float32)
    teacher = OnnxClassifier(tmp_path / "0_onnx-edge.onnx")
    assert np.allclose(logits(teacher, val, CPU).numpy(), expected, rtol=1e-3, atol=1e-4)  # a pixel off: ~0.01
    if pixel_type == "uint8":  # a cached view's interpolated pixels are rounded to the nearest whole value
        below_white = np.minimum(stored, 254)
        view = torch.from_numpy((below_white + 0.6) / 255).reshape(len(val), *val.images.shape[1:])
        expected = (below_white + 1) @ weights + bias
        assert np.allclose(teacher(view).numpy(), expected, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    ("scaling", "opset", "says"),
    [
        ("0..1", 17, r"its input is x: uint8 \[n, 64\]: pixels in 0..255; set scaling: 0..255"),
        ("0..255", 10, r"uint8 pixels at opset 10; .* needs opset 11 or later: convert it with onnx.version_converter"),
    ],
)
def test_an_onnx_teacher_that_takes_8_bit_pixels_is_declared_0_to_255_at_opset_11_or_later(
    validated, scaling, opset, says
):
    linear_onnx(validated, "edge.onnx", onnx.TensorProto.UINT8, score_type=onnx.TensorProto.FLOAT, opset=opset)
    entry = {"onnx": "data/teachers/edge.onnx", "layout": "flat", "scaling": scaling}
    with pytest.raises(DistilleryError, match=says):
        train_teachers.run(TeachersConfig(models=["wide_cnn", entry]), AugmentConfig(), validated)
    assert not validated.teachers.exists()


def torch_onnx(layout: Layout, name: str) -> None:
    """A torch model that gives logits, as ONNX in data/teachers/."""
    model = torch_weights(layout, "x.safetensors", "wide_cnn")
    onnx_export.export(model, load_dataset(layout.raw).val.head(2), layout.user_teachers / name)


class TwoOutputs(nn.Module):
    """A user's model with two [N, classes] outputs: its logits and twice them."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        scores = self.inner(x)
        return scores, scores * 2


def two_outputs(layout: Layout) -> nn.Module:
    """TwoOutputs of a wide CNN, as ONNX in data/teachers/two.onnx (outputs `scores` and `doubled`)."""
    inner = torch_weights(layout, "x.safetensors", "wide_cnn")
    torch.onnx.export(
        TwoOutputs(inner), (load_dataset(layout.raw).val.head(2),), layout.user_teachers / "two.onnx", dynamo=True,
        external_data=False, output_names=["scores", "doubled"], dynamic_shapes=({0: torch.export.Dim("batch")},),
    )  # fmt: skip
    return inner


def test_an_onnx_teacher_s_scores_come_from_the_output_it_names(validated, tmp_path):
    inner = two_outputs(validated)
    entry = {"onnx": "data/teachers/two.onnx", "output": "doubled"}
    train_teachers.train_teacher(TeachersConfig(models=[entry]), 0, validated, tmp_path, augment=AugmentConfig())
    val = load_dataset(validated.raw).val
    got = logits(OnnxClassifier(tmp_path / "0_onnx-two.onnx"), val, CPU)
    assert torch.allclose(got, 2 * logits(inner, val, CPU), atol=1e-4)


def batch_of_one_inside(layout: Layout) -> None:
    """An ONNX classifier whose input takes any batch but whose graph reshapes it to one image."""
    nodes = [
        onnx.helper.make_node("Reshape", ["X", "one"], ["row"]),
        onnx.helper.make_node("MatMul", ["row", "W"], ["scores"]),
    ]
    graph = onnx.helper.make_graph(
        nodes,
        "batch_of_one",
        [onnx.helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [None, 64])],
        [onnx.helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, [None, 10])],
        initializer=[
            onnx.numpy_helper.from_array(np.array([1, 64], np.int64), "one"),
            onnx.numpy_helper.from_array(np.zeros((64, 10), np.float32), "W"),
        ],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.save(model, str(layout.user_teachers / "m.onnx"))


def write_pickle(layout: Layout) -> None:
    torch.save(torch_weights(layout, "x.safetensors", "wide_cnn").state_dict(), layout.user_teachers / "mine.pt")


def write_outside(layout: Layout) -> None:
    torch_weights(layout, "x.safetensors", "wide_cnn")
    shutil.move(layout.user_teachers / "x.safetensors", layout.root / "mine.safetensors")


BAD_TEACHERS = {  # the entry, how to make its file, what the error must say
    "onnx class count": (
        {"onnx": "data/teachers/m.onnx", "layout": "flat", "scaling": "0..255", "outputs": "probabilities"},
        lambda layout: sklearn_teacher(layout, "m.onnx", classes=5),
        "has 5 classes; the data has 10",
    ),
    "onnx input size": (
        {"onnx": "data/teachers/m.onnx", "layout": "flat", "outputs": "probabilities"},
        lambda layout: sklearn_teacher(layout, "m.onnx", features=32),
        "[?, 32], but the data's images are 1 x 8 x 8",
    ),
    "onnx outputs that are no classifier's": (
        {"onnx": "data/teachers/m.onnx", "layout": "flat"},
        lambda layout: sklearn_teacher(layout, "m.onnx", zipmap=True),
        "include no float [N, classes] tensor",
    ),
    "onnx probabilities called logits": (
        {"onnx": "data/teachers/m.onnx", "layout": "flat", "outputs": "logits"},
        lambda layout: sklearn_teacher(layout, "m.onnx"),
        "set outputs: probabilities",
    ),
    "onnx with a fixed batch size": (
        {"onnx": "data/teachers/m.onnx", "layout": "flat", "outputs": "probabilities"},
        lambda layout: sklearn_teacher(layout, "m.onnx", fixed_batch=True),
        "a fixed batch of 1; export it with a dynamic batch dimension",
    ),
    "onnx with several score outputs": (
        {"onnx": "data/teachers/two.onnx"},
        two_outputs,
        "include several float [N, classes] tensors; name the one with the class scores with `output:`",
    ),
    "onnx mean and std of other lengths": (
        {"onnx": "data/teachers/m.onnx", "scaling": "mean_std", "mean": [0.5], "std": [0.2, 0.2, 0.2]},
        lambda layout: torch_onnx(layout, "m.onnx"),
        "mean and std need one value or one per channel (1)",
    ),
    "onnx that onnxruntime cannot run": (
        {"onnx": "data/teachers/m.onnx", "layout": "flat"},
        batch_of_one_inside,
        "onnxruntime cannot run it on the validation images",
    ),
    "onnx logits called probabilities": (
        {"onnx": "data/teachers/m.onnx", "outputs": "probabilities"},
        lambda layout: torch_onnx(layout, "m.onnx"),
        "are declared probabilities but sum to",
    ),
    "not an onnx file": (
        {"onnx": "data/teachers/m.onnx"},
        lambda layout: (layout.user_teachers / "m.onnx").write_bytes(b"not a model"),
        "data/teachers/m.onnx is not an ONNX file",
    ),
    "checkpoint of another architecture": (
        {"checkpoint": "data/teachers/mine.safetensors", "arch": "wide_cnn"},
        lambda layout: torch_weights(layout, "mine.safetensors", "small_resnet"),
        "does not fit wide_cnn",
    ),
    "not safetensors": (
        {"checkpoint": "data/teachers/mine.safetensors", "arch": "wide_cnn"},
        lambda layout: (layout.user_teachers / "mine.safetensors").write_bytes(b"\x05\x00" * 20),
        "is not a safetensors file",
    ),
    "a pickle": (
        {"checkpoint": "data/teachers/mine.pt", "arch": "wide_cnn"},
        write_pickle,
        "is a pickle",
    ),
    "a file outside data/teachers": (
        {"checkpoint": "mine.safetensors", "arch": "wide_cnn"},
        write_outside,
        "is not inside data/teachers/",
    ),
    "a missing file": ({"onnx": "data/teachers/none.onnx"}, lambda layout: None, "does not exist"),
}


@pytest.mark.parametrize("case", BAD_TEACHERS)
def test_a_bad_teacher_is_refused_naming_the_entry_and_nothing_trains(validated, case, caplog):
    entry, make, says = BAD_TEACHERS[case]
    make(validated)
    config = TeachersConfig(epochs=1, models=["wide_cnn", entry])
    with caplog.at_level(logging.INFO, logger="distillery"), pytest.raises(DistilleryError) as e:
        train_teachers.run(config, AugmentConfig(), validated)
    assert str(e.value).startswith("teachers.models[1] (1_") and says in str(e.value)
    assert str(e.value).endswith("Nothing was trained.") and str(e.value).count("teachers.models") == 1
    assert not validated.teachers.exists() and not any("epoch" in r.message for r in caplog.records)


def test_teachers_keep_their_order_past_ten(tmp_path):
    layout = Layout(tmp_path)
    layout.teachers.mkdir(parents=True)
    for i in (10, 2, 1, 0, 11):
        (layout.teachers / f"{i}_wide_cnn.{'onnx' if i == 2 else 'safetensors'}").touch()
    layout.teacher_outputs.touch()
    assert layout.teacher_models() == [f"teacher_{i}_wide_cnn" for i in (0, 1, 2, 10, 11)]


def test_a_run_mixes_built_in_torchvision_checkpoint_and_scikit_learn_teachers_with_fitted_weights(validated):
    torch_weights(validated, "mine.safetensors", "small_resnet")
    sklearn_teacher(validated, "logreg.onnx")
    teachers = [
        "wide_cnn",
        "torchvision:shufflenet_v2_x0_5",
        {
            "checkpoint": "data/teachers/mine.safetensors",
            "arch": "small_resnet",
            "fine_tune_epochs": 2,
            "scaling": "-1..1",
        },
        {"onnx": "data/teachers/logreg.onnx", "layout": "flat", "scaling": "0..255", "outputs": "probabilities"},
    ]
    params = PipelineParams.model_validate(
        {**TINY, "teachers": {**TINY["teachers"], "models": teachers}, "kd": {"combine": "fitted_weights"}}
    )
    for stage in stages_through("report")[2:]:  # after ingest and validate
        stage.call(params, validated)
    names = ["0_wide_cnn", "1_torchvision-shufflenet_v2_x0_5", "2_checkpoint-mine", "3_onnx-logreg"]
    assert validated.teacher_models() == [f"teacher_{n}" for n in names]
    metrics = read_json(validated.metrics)
    assert [t["name"] for t in metrics["teachers"]] == names
    sources = {t["name"]: t["source"] for t in metrics["teachers"]}
    assert sources["0_wide_cnn"] is None and sources["1_torchvision-shufflenet_v2_x0_5"] is None
    for name, file in (("2_checkpoint-mine", "mine.safetensors"), ("3_onnx-logreg", "logreg.onnx")):
        assert sources[name]["sha256"] == file_digest(validated.user_teachers / file)
    assert all(t["params"] > 600 and t["bytes"] > 0 and t["latency_ms"]["b1"] > 0 for t in metrics["teachers"])
    ensemble = onnx.load(str(verified_onnx(validated)["ensemble"]))  # the export stage checked it against torch
    assert {o.domain for o in ensemble.opset_import} == {"", "ai.onnx.ml"}  # the scikit-learn member is in it
    assert metrics["ensemble"]["params"] == sum(t["params"] for t in metrics["teachers"])
    combination = metrics["ensemble"]["combination"]  # fitted by distill; export checked the file against it
    assert combination["rule"] == "fitted_weights" and combination["members"] == validated.teacher_models()
    assert len(combination["weights"]) == 4 and sum(combination["weights"]) == pytest.approx(1)
    assert set(combination["validation"]) == {"mean_probabilities", "mean_logits", "fitted_weights"}
    report = validated.report.read_text()
    assert "`kd.combine: fitted_weights`); weights: 0_wide_cnn " in report
    assert all(
        f"{rule} {combination['validation'][rule]['val_nll']:.4f}" in report for rule in combination["validation"]
    )


def docs_example() -> tuple[str, dict]:
    """The docs' own-teachers example (docs/your-teachers.md): its script and its params."""
    block = (
        (ROOT / "docs" / "your-teachers.md")
        .read_text()
        .split("<!-- example: tests/test_own_teachers.py runs this block")[1]
    )
    script = block.split("```python\n")[1].split("```")[0]
    return script, yaml.safe_load(block.split("```yaml\n")[1].split("```")[0])


def test_the_docs_example_makes_a_teacher_the_stage_takes(validated):
    script, params = docs_example()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", script], cwd=validated.root, env=env, check=True)
    config = TeachersConfig(**{**params["teachers"], "epochs": 1, "cached_views": 0})
    val_accuracy = train_teachers.run(config, AugmentConfig(), validated)
    assert list(val_accuracy) == ["1_torchvision-resnet18", "0_small_resnet", "2_onnx-forest"]  # largest first
    assert val_accuracy["2_onnx-forest"] > 0.9  # a 100-tree forest on the digits' 64 pixels


def test_the_teachers_stage_depends_on_the_teachers_users_bring():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    folder = Layout(ROOT).user_teachers
    assert str(folder.relative_to(ROOT)) in stages["train_teachers"]["deps"]
    assert (folder / "README.md").is_file()  # so the dependency exists in a fresh clone


@pytest.mark.e2e
def test_dvc_status_says_the_teachers_must_retrain_when_a_teacher_file_changes(tmp_path):
    entry = {"checkpoint": "data/teachers/mine.safetensors", "arch": "wide_cnn"}
    project = copy_project(tmp_path, {**TINY, "teachers": {**TINY["teachers"], "models": [entry], "cached_views": 0}})
    spec = {"arch": "wide_cnn", "in_channels": 1, "num_classes": 10}  # the digits' images and classes

    def save_weights(seed: int) -> None:
        model = seeded(seed, lambda: models.build(spec))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(project / entry["checkpoint"]))

    save_weights(0)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "repro", "train_teachers"], cwd=project, env=venv_env(), check=True, capture_output=True)
    record = read_json(Layout(project).record("teacher_0_checkpoint-mine"))
    assert record["source"]["sha256"] == file_digest(project / entry["checkpoint"])
    status = [*dvc, "status", "--json", "train_teachers"]
    assert subprocess.run(status, cwd=project, env=venv_env(), capture_output=True, text=True).stdout.strip() == "{}"
    save_weights(1)  # the user replaces the file
    changed = subprocess.run(status, cwd=project, env=venv_env(), capture_output=True, text=True).stdout
    assert "data/teachers" in changed and "train_teachers" in changed


def test_an_architecture_that_cannot_take_the_images_is_refused_before_anything_trains(tmp_path):
    """ViT-B/16 takes square 224-pixel images only: 8 x 16 images scale up to 224 x 448, which it refuses."""
    images = torch.zeros(4, 1, 8, 16, dtype=torch.uint8)
    split = Split(images, torch.arange(4), torch.zeros(4, dtype=torch.long))
    data = Dataset(split, split, split, split, num_classes=10, in_channels=1, image_size=(8, 16))
    config = TeachersConfig(models=["wide_cnn", "torchvision:vit_b_16"])
    with pytest.raises(
        DistilleryError, match=r"teachers.models\[1\] \(1_torchvision-vit_b_16\): torchvision:vit_b_16 "
    ):
        train_teachers.check_teachers(config, Layout(tmp_path), data)


def test_the_advice_for_a_pickle_converts_it(tmp_path):
    """A torch.save file is refused with a line of code that converts it; that line, run as written, does."""
    weights = models.build({"arch": "wide_cnn", "in_channels": 1, "num_classes": 10}).state_dict()
    torch.save(weights, tmp_path / "mine.pt")
    with pytest.raises(DistilleryError) as refused:
        checkpoint.read_state_dict(tmp_path / "mine.pt")
    advice = re.search(r"Convert it where you trust it: (.*?) for a state dict", str(refused.value)).group(1)
    code = advice.replace("FILE", repr(str(tmp_path / "mine.pt"))).replace("'NAME.safetensors'", "'mine.safetensors'")
    subprocess.run([sys.executable, "-c", f"import safetensors.torch, torch; {code}"], cwd=tmp_path, check=True)
    converted = checkpoint.read_state_dict(tmp_path / "mine.safetensors")
    assert converted.keys() == weights.keys() and all(torch.equal(converted[k], weights[k]) for k in weights)

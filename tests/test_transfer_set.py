"""A transfer set (ingest.unlabeled_path): images without labels, stored after the labelled ones, validated as they
are, labelled by the teachers' outputs and distilled from beside the training images."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

import project.students
import tasks.prune
import tasks.quantize
import tasks.train_teachers
from distillery import checkpoint, teacher_outputs
from distillery.data import load_dataset
from distillery.errors import DistilleryError
from distillery.files import read_json
from distillery.raw_format import SPLIT_NAMES, UNLABELED, UNLABELED_SPLIT
from distillery.training import KDSettings, Objective, kd_loss, logits
from project.config import IngestConfig, PipelineParams, ValidateConfig
from project.layout import Layout
from project.students import training_images
from tasks import ingest, stages_through, train_teachers, validate
from tasks.report import dvc_md5
from tests.conftest import ROOT, TINY

LABELLED = 900  # of the digits' 1,797 images; the rest are the transfer set
TINY_VIEWS = PipelineParams.model_validate(TINY).teachers.cached_views


def digits_project(tmp_path, unlabeled: np.ndarray | None = None) -> tuple[Layout, IngestConfig]:
    """A project whose labelled data are the first LABELLED digits (an .npz in data/source/) and whose transfer set
    is `unlabeled` (by default the other digits, as an .npz holding only `x` in data/unlabeled/)."""
    x, y, _ = ingest.digits()
    layout = Layout(tmp_path)
    for folder in (layout.root / "data" / "source", layout.user_unlabeled):
        folder.mkdir(parents=True)
    np.savez(layout.root / "data/source/digits.npz", x=x[:LABELLED], y=y[:LABELLED])
    np.savez(layout.user_unlabeled / "rest.npz", x=x[LABELLED:] if unlabeled is None else unlabeled)
    return layout, IngestConfig(source="npz", path="data/source/digits.npz", unlabeled_path="data/unlabeled/rest.npz")


def test_the_transfer_set_is_stored_after_the_labelled_images_without_labels(tmp_path):
    layout, config = digits_project(tmp_path)
    info = ingest.run(config, layout)
    x = ingest.digits()[0]
    assert info["images"] == len(x) and info["n_unlabeled"] == len(x) - LABELLED
    assert info["n_train"] + info["n_val"] + info["n_test"] == LABELLED
    assert np.array_equal(np.load(layout.images), x)  # the labelled images, then the transfer set's
    labels, splits = np.load(layout.labels), np.load(layout.splits)
    assert (labels[LABELLED:] == UNLABELED).all() and (labels[:LABELLED] >= 0).all()
    assert (splits[LABELLED:] == UNLABELED_SPLIT).all() and (splits[:LABELLED] != UNLABELED_SPLIT).all()
    data = load_dataset(layout.raw)
    assert len(data.unlabeled) == len(x) - LABELLED and (data.unlabeled.y == UNLABELED).all()
    transfer = data.transfer  # the training images first, in their places, then the transfer set
    assert torch.equal(transfer.rows[: len(data.train)], data.train.rows)
    assert torch.equal(transfer.rows[len(data.train) :], data.unlabeled.rows)
    assert torch.equal(transfer.y, torch.cat([data.train.y, data.unlabeled.y]))
    assert validate.run(ValidateConfig(), layout)["success"]


def test_a_folder_transfer_set_is_read_at_any_depth_converted_and_resized(tmp_path):
    layout, config = digits_project(tmp_path)
    (layout.user_unlabeled / "rest.npz").unlink()
    rng = np.random.default_rng(0)
    files = [layout.user_unlabeled / "photos" / name for name in ("a/0.png", "a/b/1.jpg", "c/2.tiff")]
    for file in files:
        file.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 10, 3)).astype(np.uint8)).save(file)
    (layout.user_unlabeled / "photos" / "notes.txt").write_text("not an image")
    (layout.user_unlabeled / "photos" / ".ipynb_checkpoints").mkdir()
    Image.fromarray(np.zeros((12, 10), np.uint8)).save(
        layout.user_unlabeled / "photos" / ".ipynb_checkpoints" / "0.png"
    )
    photos = {"unlabeled_path": "data/unlabeled/photos", "image_size": (8, 8)}
    info = ingest.run(config.model_copy(update=photos), layout)
    assert info["n_unlabeled"] == 3 and info["shape"] == [1, 8, 8]  # the labelled images' gray 8 x 8
    expected = [np.asarray(Image.open(f).convert("L").resize((8, 8))) for f in files]  # in path order
    assert np.array_equal(np.load(layout.images)[LABELLED:, 0], np.stack(expected))
    assert validate.run(ValidateConfig(), layout)["success"]


def test_a_folder_transfer_set_must_match_the_labelled_images(tmp_path):
    layout, config = digits_project(tmp_path)
    folder = layout.user_unlabeled / "photos"
    folder.mkdir()
    Image.fromarray(np.zeros((12, 10), np.uint8)).save(folder / "0.png")
    with pytest.raises(DistilleryError, match=r"have shape \(1, 12, 10\).*labelled images \(1, 8, 8\)"):
        ingest.run(config.model_copy(update={"unlabeled_path": "data/unlabeled/photos"}), layout)


def empty_folder(path):
    path.unlink()
    path.mkdir()


BAD = {  # case: (what to do to the transfer set's file, what the error says)
    "labels": (
        lambda path: np.savez(path, x=np.zeros((5, 8, 8)), y=np.zeros(5, int)),
        "must hold only `x`.*holds x, y",
    ),
    "not an npz": (lambda path: path.write_text("text"), "not a readable .npz"),
    "shape": (lambda path: np.savez(path, x=np.zeros((5, 8, 9))), r"shape \(1, 8, 9\)"),
    "empty folder": (empty_folder, "holds no PNG"),
    "no images": (lambda path: np.savez(path, x=np.zeros((0, 8, 8))), r"holds no images \(`x` has shape \(0, 8, 8\)\)"),
    "missing": (lambda path: path.unlink(), "neither a folder of images nor an .npz"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_transfer_set_is_refused_and_the_stored_dataset_is_kept(tmp_path, case):
    layout, config = digits_project(tmp_path)
    ingest.run(config.model_copy(update={"unlabeled_path": None}), layout)
    before = np.load(layout.images)
    spoil, says = BAD[case]
    spoil(layout.user_unlabeled / "rest.npz")
    with pytest.raises(DistilleryError, match=says):
        ingest.run(config, layout)
    assert np.array_equal(np.load(layout.images), before)  # the last good dataset, untouched


def test_a_transfer_set_outside_data_unlabeled_is_refused(tmp_path):
    layout, config = digits_project(tmp_path)
    np.savez(layout.root / "data/source/rest.npz", x=np.zeros((5, 8, 8)))
    with pytest.raises(DistilleryError, match=r"data/source/rest.npz is not inside data/unlabeled/; move it there"):
        ingest.run(config.model_copy(update={"unlabeled_path": "data/source/rest.npz"}), layout)


@pytest.mark.parametrize(
    ("copied_from", "says"), [("test", "3 in test and unlabeled"), ("unlabeled", "3 in unlabeled")]
)
def test_a_copy_in_the_transfer_set_fails_validation_naming_the_splits(tmp_path, copied_from, says):
    layout, config = digits_project(tmp_path)
    ingest.run(config.model_copy(update={"unlabeled_path": None}), layout)
    x = ingest.digits()[0][LABELLED:, 0]
    test_images = np.load(layout.images)[np.load(layout.splits) == SPLIT_NAMES.index("test")][:3, 0]
    copies = test_images if copied_from == "test" else x[:3]
    layout, config = digits_project(tmp_path / "leaky", unlabeled=np.concatenate([x, copies]))
    ingest.run(config, layout)
    with pytest.raises(DistilleryError, match=f"duplicate images.*by the splits they are in: {says}"):
        validate.run(ValidateConfig(), layout)


@pytest.mark.parametrize(("value", "says"), [(300.0, "pixels above 255"), (np.nan, "NaN or infinite pixels")])
def test_transfer_set_pixels_out_of_range_or_not_a_number_fail_validation(tmp_path, value, says):
    x = ingest.digits()[0][LABELLED:].astype(np.float32)
    x[0, 0, 0, 0] = value
    layout, config = digits_project(tmp_path, unlabeled=x)
    ingest.run(config, layout)
    with pytest.raises(DistilleryError, match=says):
        validate.run(ValidateConfig(), layout)


def test_unlabeled_images_learn_from_the_soft_targets_alone_and_kd_alpha_keeps_its_meaning():
    torch.manual_seed(0)
    scores, targets = torch.randn(6, 4), torch.softmax(torch.randn(6, 4), dim=1)
    labels = torch.tensor([0, 3, UNLABELED, 1, UNLABELED, UNLABELED])
    kd = KDSettings(temperature=2.0, alpha=0.7)
    per_image_soft = (targets * (targets.log() - F.log_softmax(scores / 2.0, dim=1))).sum(dim=1) * 4.0
    labelled = labels != UNLABELED
    per_image_hard = F.cross_entropy(scores[labelled], labels[labelled], reduction="none")
    expected = 0.7 * per_image_soft.mean() + 0.3 * per_image_hard.mean()  # as weighted as without unlabeled images
    assert kd_loss(scores, targets, labels, kd).item() == pytest.approx(expected.item(), rel=1e-5)
    all_unlabeled = torch.full((6,), UNLABELED)
    assert kd_loss(scores, targets, all_unlabeled, kd).item() == pytest.approx(0.7 * per_image_soft.mean().item())


def recording_what_it_trains_on(function, seen: dict, model: str | None = None):
    """`function` (a training loop that takes the model, then its training images), noting how many images each
    model trained on."""

    def record(*args, **kwargs):
        seen[model or kwargs["name"]] = len(args[1])
        return function(*args, **kwargs)

    return record


@pytest.mark.stage
def test_students_distil_from_the_transfer_set_and_the_baselines_learn_from_the_labels(tmp_path, monkeypatch):
    layout, config = digits_project(tmp_path)
    params = PipelineParams.model_validate({**TINY, "ingest": config.model_dump(mode="json")})
    seen = {}
    for module, function, model in (
        (tasks.train_teachers, "fit", None),
        (project.students, "fit", None),
        (tasks.prune, "prune_gradually", "pruned"),
        (tasks.quantize, "qat_finetune", "int8"),
    ):
        monkeypatch.setattr(module, function, recording_what_it_trains_on(getattr(module, function), seen, model))
    for stage in stages_through("report"):
        stage.call(params, layout)
    data = load_dataset(layout.raw)
    n_train, n_unlabeled = len(data.train), len(data.unlabeled)
    assert seen == {  # what each training loop was given: the teachers and the baselines, the labelled images alone
        "0_wide_cnn": n_train,
        "1_small_resnet": n_train,
        "student_kd": n_train + n_unlabeled,
        "student_alone": n_train,
        "pruned": n_train + n_unlabeled,
        "pruned_alone": n_train,
        "int8": n_train + n_unlabeled,
    }
    cached = teacher_outputs.load(layout.teacher_outputs, data.transfer)  # the teachers' outputs on every view
    assert cached.logits.shape[:3] == (TINY_VIEWS + 1, n_train + n_unlabeled, 2)
    teacher = checkpoint.load(layout.checkpoint("teacher_0_wide_cnn"))[0]
    on_unlabeled = cached.logits[0, n_train:, 0]  # the stored view, after the training images: the transfer set's
    assert torch.allclose(on_unlabeled, logits(teacher, data.unlabeled, torch.device("cpu")), atol=1e-5)
    distilled = {"student_kd": n_unlabeled, "pruned": n_unlabeled, "int8": n_unlabeled}
    for name, unlabeled in (distilled | {"student_alone": 0, "pruned_alone": 0}).items():
        assert read_json(layout.record(name))["trained_on"] == {"labelled": n_train, "unlabeled": unlabeled}, name
    labels_only, config = digits_project(tmp_path / "labels_only")  # the same teacher, trained without the set
    ingest.run(config.model_copy(update={"unlabeled_path": None}), labels_only)
    validate.run(params.section("validate"), labels_only)
    train_teachers.run(
        params.teachers.model_copy(update={"models": ["wide_cnn"], "cached_views": 0}), params.augment, labels_only
    )
    with_set, without = (checkpoint.load(run.checkpoint("teacher_0_wide_cnn"))[0] for run in (layout, labels_only))
    for (name, a), b in zip(with_set.state_dict().items(), without.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    metrics = read_json(layout.metrics)
    assert metrics["dataset"]["n_unlabeled"] == n_unlabeled
    assert metrics["dataset"]["md5"] == dvc_md5(layout.raw) != dvc_md5(labels_only.raw)  # the md5 covers the set
    kd = KDSettings(temperature=4.0, alpha=0.7)
    assert len(training_images(data, Objective(cached, kd))) == n_train + n_unlabeled
    assert training_images(data, Objective(cached, replace(kd, alpha=0.0))) is data.train  # nothing distils
    assert f"and {n_unlabeled} unlabeled images the students distilled from." in layout.report.read_text()


def test_the_ingest_stage_depends_on_the_transfer_sets_users_bring():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert "data/unlabeled" in stages["ingest"]["deps"]
    assert (ROOT / "data" / "unlabeled" / "README.md").exists()

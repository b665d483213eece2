"""Evaluation sets (`report.eval_sets`): the built-in digit sets made as MNIST was, users' folders and .npz files
converted to the run's images, and a bad set refused in one paragraph that names it."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from pydantic import ValidationError

from distillery import digit_sets
from distillery.data import load_dataset
from distillery.errors import DistilleryError
from project import eval_sets
from project.config import EvalSet, PipelineParams
from project.layout import Layout
from tests.conftest import ROOT

DIGITS = [str(i) for i in range(10)]
GRAY_8 = (1, 8, 8)
NONE = frozenset()  # a run whose images are none of these sets'


@pytest.mark.parametrize("shape", [(28, 28), (32, 24)])
def test_a_digit_is_made_as_mnist_was_in_a_box_of_20_28_centred_by_its_centre_of_mass(shape):
    digit = np.zeros((8, 8), np.uint8)
    digit[1:7, 5:7] = 255  # a tall stroke off to the right
    digit[1, 3:7] = 200
    made = digit_sets.made_as_mnist(digit, shape)
    rows, cols = np.nonzero(made > 10)
    height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
    assert made.shape == shape and max(height, width) <= round(20 / 28 * min(shape)) + 1
    assert height >= round(20 / 28 * min(shape)) - 1  # its longer side fills the box
    centre = np.array(digit_sets.centre_of_mass(made.astype(float)))
    assert np.abs(centre - (np.array(shape) - 1) / 2).max() <= 1.0


def test_the_uci_digits_are_every_digit_of_scikit_learns_set():
    images, labels = digit_sets.uci_digits((28, 28))
    assert images.shape == (1797, 28, 28) and images.dtype == np.uint8 and np.bincount(labels).min() >= 170
    mean_image = images.astype(float).mean(axis=0)
    assert images.max() == 255 and np.abs(np.array(digit_sets.centre_of_mass(mean_image)) - 13.5).max() < 0.5


def entry(source: str, path: str | None = None, name: str = "site") -> EvalSet:
    return EvalSet(name=name, source=source, path=path)


def folder_set(root, classes: dict[str, int], size=(16, 16), mode="RGB") -> Layout:
    layout = Layout(root)
    for name, count in classes.items():
        (layout.user_eval_sets / "site" / name).mkdir(parents=True)
        for i in range(count):
            pixels = np.full((*size, 3), 40 * i, np.uint8)
            Image.fromarray(pixels, "RGB").convert(mode).save(layout.user_eval_sets / "site" / name / f"{i}.png")
    return layout


def test_a_folder_set_is_converted_to_the_runs_colour_and_size(tmp_path):
    layout = folder_set(tmp_path, {"3": 2, "7": 1})
    (loaded,) = eval_sets.load([entry("folder", "data/eval/site")], layout, DIGITS, GRAY_8, learnt=NONE)
    assert loaded.images.shape == (3, 1, 8, 8) and loaded.images.dtype == np.uint8
    assert loaded.labels.tolist() == [3, 3, 7] and loaded.images[1].min() == 40  # RGB (40, 40, 40) is gray 40


@pytest.mark.parametrize("layout_of", ["NHW", "NHWC", "NCHW"])
def test_an_npz_set_takes_the_runs_shape_in_any_layout(layout_of, tmp_path):
    layout = Layout(tmp_path)
    layout.user_eval_sets.mkdir(parents=True)
    x = np.arange(4 * 64).reshape(4, 8, 8) % 256
    stored = {"NHW": x, "NHWC": x[..., None], "NCHW": x[:, None]}[layout_of]
    np.savez(layout.user_eval_sets / "s.npz", x=stored, y=np.array([0, 1, 2, 9]))
    (loaded,) = eval_sets.load([entry("npz", "data/eval/s.npz")], layout, DIGITS, GRAY_8, learnt=NONE)
    assert np.array_equal(loaded.images[:, 0], x) and loaded.labels.tolist() == [0, 1, 2, 9]


def npz_with(root, **arrays) -> Layout:
    layout = Layout(root)
    layout.user_eval_sets.mkdir(parents=True)
    np.savez(layout.user_eval_sets / "s.npz", **arrays)
    return layout


BAD = {
    "a class folder the run lacks": (
        lambda root: folder_set(root, {"3": 1, "cat": 1}),
        entry("folder", "data/eval/site"),
        "has folders ['cat'] that are none of the run's classes",
    ),
    "an empty folder": (
        lambda root: folder_set(root, {"3": 0}),
        entry("folder", "data/eval/site"),
        "holds no images",
    ),
    "an unreadable image": (
        lambda root: (folder_set(root, {"3": 1}), (root / "data/eval/site/3/0.png").write_text("no image"))[0],
        entry("folder", "data/eval/site"),
        "Cannot read image",
    ),
    "a file named as a folder set": (
        lambda root: npz_with(root, x=np.zeros((2, 8, 8)), y=np.zeros(2, int)),
        entry("folder", "data/eval/s.npz"),
        "is not a folder",
    ),
    "images of another shape": (
        lambda root: npz_with(root, x=np.zeros((2, 28, 28)), y=np.zeros(2, int)),
        entry("npz", "data/eval/s.npz"),
        "x of shape (2, 28, 28)",
    ),
    "no images": (
        lambda root: npz_with(root, x=np.zeros((0, 8, 8)), y=np.zeros(0, int)),
        entry("npz", "data/eval/s.npz"),
        "x of shape (0, 8, 8)",
    ),
    "a label the run lacks": (
        lambda root: npz_with(root, x=np.zeros((2, 8, 8)), y=np.array([1, 10])),
        entry("npz", "data/eval/s.npz"),
        "labels must be 0..9",
    ),
    "pixels out of range": (
        lambda root: npz_with(root, x=np.full((2, 8, 8), 300.0), y=np.zeros(2, int)),
        entry("npz", "data/eval/s.npz"),
        "pixels must be 0..255",
    ),
    "an npz without y": (
        lambda root: npz_with(root, x=np.zeros((2, 8, 8))),
        entry("npz", "data/eval/s.npz"),
        "is not an .npz file with arrays x and y",
    ),
    "a set outside data/eval": (
        lambda root: Layout(root),
        entry("npz", "elsewhere.npz"),
        "must exist inside data/eval/",
    ),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_set_is_one_paragraph_naming_it(case, tmp_path):
    make, bad, says = BAD[case]
    layout = make(tmp_path)
    good = entry("uci_digits", name="uci")
    with pytest.raises(DistilleryError, match=r"report.eval_sets\[1\] \(site\): ") as refused:
        eval_sets.load([good, bad], layout, DIGITS, GRAY_8, learnt=NONE)
    assert says in str(refused.value) and str(refused.value).endswith("Nothing was measured.")
    assert "\n" not in str(refused.value)


def test_a_built_in_digit_set_is_refused_for_a_run_of_other_classes(tmp_path):
    with pytest.raises(DistilleryError, match="the built-in uci_digits set holds gray digits 0-9.*cat, dog"):
        eval_sets.load([entry("uci_digits")], Layout(tmp_path), ["cat", "dog"], (3, 32, 32), learnt=NONE)


def test_a_built_in_set_that_is_the_runs_own_data_is_refused():
    with pytest.raises(ValidationError, match=r"report.eval_sets\[0\] \(m\) is the built-in mnist5k set, the images"):
        PipelineParams.model_validate({"report": {"eval_sets": [{"name": "m", "source": "mnist5k"}]}})
    with pytest.raises(ValidationError, match=r"the built-in uci_digits set.*ingest.source: digits"):
        PipelineParams.model_validate(
            {"ingest": {"source": "digits"}, "report": {"eval_sets": [{"name": "u", "source": "uci_digits"}]}}
        )


def test_a_set_s_entry_is_checked_with_the_params():
    with pytest.raises(ValidationError, match="give a path exactly for the folder and npz sources"):
        EvalSet(name="s", source="folder")
    with pytest.raises(ValidationError, match="give a path exactly"):
        EvalSet(name="s", source="uci_digits", path="data/eval/x")
    with pytest.raises(ValidationError, match="eval set names must differ"):
        PipelineParams.model_validate({"report": {"eval_sets": [{"name": "a", "source": "mnist5k"}] * 2}})


def test_the_report_depends_on_the_sets_users_bring():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert "data/eval" in stages["report"]["deps"] and (ROOT / "data" / "eval" / "README.md").exists()


def test_the_typeset_digits_are_each_digit_in_every_font_that_draws_digits():
    images, labels = digit_sets.typeset_digits((28, 28))
    fonts = {path.name for path in digit_sets.digit_fonts()}
    assert "cmex10.ttf" not in fonts and "LastResortHE-Regular.ttf" not in fonts  # their 0-9 are other glyphs
    assert {"DejaVuSans.ttf", "STIXGeneral.ttf", "cmr10.ttf"} <= fonts
    assert len(images) == 30 * len(fonts) and np.bincount(labels).tolist() == [3 * len(fonts)] * 10
    assert images.dtype == np.uint8 and all(image.max() == 255 for image in images)
    thin, widened = images[:10].astype(float), images[20:30].astype(float)  # one font, strokes widened by 4 of 96
    assert (widened > 127).sum() > 1.2 * (thin > 127).sum()


def test_a_set_on_grey_paper_keeps_its_ink_over_a_grey_ground(tmp_path):
    plain, grey = eval_sets.load(
        [EvalSet(name="a", source="uci_digits"), EvalSet(name="b", source="uci_digits", paper=60)],
        Layout(tmp_path),
        DIGITS,
        (1, 28, 28),
        learnt=NONE,
    )
    assert np.array_equal(plain.labels, grey.labels)
    assert grey.images.min() == 60 and grey.images.max() == 255
    inked = plain.images > 0
    assert np.all(grey.images[~inked] == 60) and np.all(grey.images[inked] > 60)
    layout = folder_set(tmp_path / "rgb", {"3": 1})
    with pytest.raises(DistilleryError, match=r"\(site\): paper applies to gray images; this run's are rgb"):
        eval_sets.load(
            [EvalSet(name="site", source="folder", path="data/eval/site", paper=60)],
            layout,
            DIGITS,
            (3, 8, 8),
            learnt=NONE,
        )


def test_the_test_split_set_is_the_runs_own_test_images(staged):
    info = json.loads(staged.dataset_info.read_text())
    learnt = eval_sets.learnt_images(staged)
    (grey,) = eval_sets.load(
        [EvalSet(name="t", source="test_split", paper=50)], staged, info["classes"], tuple(info["shape"]), learnt=learnt
    )
    test = load_dataset(staged.raw).test
    assert np.array_equal(grey.labels, test.y.numpy())
    assert np.array_equal(grey.images, digit_sets.on_grey_paper(test.images[test.rows].numpy(), 50))


def test_a_set_with_copies_of_the_images_the_run_learns_from_is_refused(staged, tmp_path):
    """Its test images may be measured again; training, validation and transfer images may not."""
    info, data = json.loads(staged.dataset_info.read_text()), load_dataset(staged.raw)
    learnt, shape = eval_sets.learnt_images(staged), tuple(info["shape"])
    test, train, val = (split.images[split.rows].numpy() for split in (data.test, data.train, data.val))
    assert len(learnt) > len(train)  # the validation split's too
    own = entry("npz", "data/eval/s.npz")
    kept = npz_with(tmp_path / "kept", x=test[:4], y=data.test.y[:4].numpy())
    (loaded,) = eval_sets.load([own], kept, info["classes"], shape, learnt=learnt)
    assert np.array_equal(loaded.images, test[:4])
    for copied in (train[:3], val[:3]):
        layout = npz_with(
            tmp_path / f"copies-{len(list(tmp_path.iterdir()))}",
            x=np.concatenate([test[:2], copied]),
            y=np.zeros(5, int),
        )
        with pytest.raises(DistilleryError, match=r"\(site\): 3 of its 5 images are copies of images of the run's"):
            eval_sets.load([own], layout, info["classes"], shape, learnt=learnt)


def test_the_images_a_run_learns_from_are_its_training_validation_and_transfer_images(tmp_path):
    layout = Layout(tmp_path)
    layout.raw.mkdir(parents=True)
    splits = ["train", "val", "test", "unlabeled"]
    facts = {"split": splits, "sha256": [f"{i:064x}" for i in range(4)], "label": [0, 1, 2, -1]}
    pd.DataFrame(facts).to_csv(layout.facts, index=False)
    assert eval_sets.learnt_images(layout) == {f"{i:064x}" for i in (0, 1, 3)}

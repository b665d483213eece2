"""Bad inputs, each through the command a user or `dvc repro` runs (`distillery ...` or
`python -m tasks.<stage>`): refused with exit code 2 and a one-paragraph message that names the
key or file, no traceback unless --debug, nothing written downstream and nothing published."""

import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from infra.s3_server import free_port
from project.config import IngestConfig
from project.layout import Layout
from project.store import ArtifactStore, S3Settings
from tasks import ingest
from tests.conftest import ROOT, TINY, venv_env
from tests.test_ingest import image_folder, write_npz
from tests.test_validate import clean_data, labels_unchecked

pytestmark = pytest.mark.e2e  # each runs a command or a server

MODEL = "bad-inputs"  # the model name the publish cases try; nothing may ever appear under it


@dataclass(frozen=True)
class Case:
    command: tuple[str, ...]  # python -m ... (each gets --root WORKSPACE)
    says: tuple[str, ...]  # all of these appear in the error message ({root}: the workspace)
    params: dict | str = field(default_factory=lambda: TINY)  # params.yaml: a mapping, or raw text
    prepare: Callable[[Path], None] = lambda root: None  # puts the bad input in the workspace
    absent: tuple[str, ...] = ()  # what the command must not have written
    staged: bool = False  # the workspace starts as a finished tiny run
    env: dict = field(default_factory=dict)  # S3 settings that differ from the test server's


RUN = ("cli", "run")
INGEST = ("tasks.ingest",)
VALIDATE = ("tasks.validate",)
PUBLISH = ("cli", "publish", "--name", MODEL)


def params_case(raw: dict | str, *says: str) -> Case:
    return Case(RUN, says, params=raw, absent=("data", ".distillery"))


def source(kind: str, path: str = "data/source/d", **ingest_params) -> dict:
    return {**TINY, "ingest": {"source": kind, "path": path, **ingest_params}}


def npz_case(arrays: dict, *says: str) -> Case:
    def prepare(root: Path) -> None:
        (root / "data" / "source").mkdir(parents=True)
        np.savez(root / "data" / "source" / "d.npz", **arrays)

    return Case(
        INGEST, ("{root}/data/source/d.npz", *says), source("npz", "data/source/d.npz"), prepare, absent=("data/raw",)
    )


def folder_case(damage: Callable[[Path], None], *says: str, **ingest_params) -> Case:
    def prepare(root: Path) -> None:
        damage(image_folder(root / "data" / "source" / "d"))

    return Case(INGEST, says, source("folder", **ingest_params), prepare, absent=("data/raw",))


def validate_case(corrupt: Callable, *says: str) -> Case:
    """Data that ingests but must fail validation: the gate writes its report, never a model."""

    def prepare(root: Path) -> None:
        x, y = corrupt(*clean_data())
        (root / "data" / "source").mkdir(parents=True)
        write_npz(root / "data" / "source" / "d.npz", x=x, y=y)
        with labels_unchecked():
            ingest.run(IngestConfig(source="npz", path="data/source/d.npz"), Layout(root))

    return Case(
        VALIDATE,
        ("Data validation failed", *says),
        source("npz", "data/source/d.npz"),
        prepare,
        absent=("data/models",),
    )


def staged_case(
    command: tuple[str, ...],
    damage: Callable[[Layout], None],
    *says: str,
    absent: tuple[str, ...] = (),
    env: dict | None = None,
) -> Case:
    def prepare(root: Path) -> None:
        layout = Layout(root)
        for path in absent:
            shutil.rmtree(root / path)
        damage(layout)

    return Case(command, says, prepare=prepare, absent=absent, staged=True, env=env or {})


def with_duplicate(x, y):
    x[1] = x[0]
    return x, y


def with_inf(x, y):
    x[3, 1, 1] = np.inf
    return x, y


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def wrong_architecture(layout: Layout) -> None:
    """small_resnet's weights under wide_cnn's name and spec."""
    wide = layout.teachers / "0_wide_cnn.safetensors"
    with safe_open(str(wide), framework="pt") as f:
        metadata = f.metadata()
    save_file(load_file(str(layout.teachers / "1_small_resnet.safetensors")), str(wide), metadata=metadata)


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


CASES = {
    # params.yaml, through `distillery run`: refused before anything is created
    "unknown-section": params_case({"trainer": {"epochs": 3}}, "trainer", "Extra inputs are not permitted"),
    "misspelled-key": params_case({"teachers": {"epoch": 3}}, "teachers.epoch"),
    "wrong-type": params_case({"distill": {"lr": "fast"}}, "distill.lr", "'fast'"),
    "zero-epochs": params_case({"teachers": {"epochs": 0}}, "teachers.epochs", "greater than 0"),
    "negative-epochs": params_case({"prune": {"epochs": -2}}, "prune.epochs"),
    "zero-temperature": params_case({"kd": {"temperature": 0}}, "kd.temperature"),
    "negative-temperature": params_case({"kd": {"temperature": -1.5}}, "kd.temperature"),
    "alpha-above-one": params_case({"kd": {"alpha": 1.5}}, "kd.alpha"),
    "prune-ratio-one": params_case({"prune": {"ratio": 1.0}}, "prune.ratio", "less than 1"),
    "prune-ratio-negative": params_case({"prune": {"ratio": -0.1}}, "prune.ratio"),
    "no-teachers": params_case({"teachers": {"models": []}}, "teachers.models", "at least 1"),
    "unknown-teacher": params_case({"teachers": {"models": ["vgg"]}}, "teachers.models.0", "'vgg'"),
    "unknown-source": params_case({"ingest": {"source": "s3"}}, "ingest.source"),
    "params-not-yaml": params_case("teachers: [epochs: 3\n", "{root}/params.yaml", "not valid YAML"),
    "params-not-a-mapping": params_case("- teachers\n", "{root}/params.yaml", "mapping of sections"),
    "stage-command-bad-key": Case(
        INGEST, ("ingest.sead",), {"ingest": {"source": "digits", "sead": 1}}, absent=("data",)
    ),
    "moved-key": params_case(
        {"ship": {"latency_threads": 2}}, "{root}/params.yaml", "ship.latency_threads is now measure.latency_threads"
    ),
    "stage-command-moved-key": Case(
        ("tasks.ship",),
        ("report.latency_budget_s is now measure.latency_budget_s", "Rename them"),
        {"report": {"latency_budget_s": 0.5}},
        absent=("data",),
    ),
    # datasets, through the ingest stage: nothing lands in data/raw
    "missing-path": Case(
        INGEST,
        ("ingest.path {root}/data/source/nowhere.npz does not exist",),
        source("npz", "data/source/nowhere.npz"),
        absent=("data/raw",),
    ),
    "empty-folder": Case(
        INGEST,
        ("{root}/data/source/d has no class sub-folders",),
        source("folder"),
        lambda root: (root / "data" / "source" / "d").mkdir(parents=True),
        absent=("data/raw",),
    ),
    "folder-without-npz": Case(
        INGEST,
        ("{root}/data/source/d is a folder without .npz files",),
        source("npz"),
        lambda root: (root / "data" / "source" / "d").mkdir(parents=True),
        absent=("data/raw",),
    ),
    "class-folder-without-images": folder_case(
        lambda d: (d / "class_3").mkdir(), "{root}/data/source/d/class_3", "holds no PNG, JPEG or TIFF"
    ),
    "truncated-png": folder_case(
        lambda d: truncate(d / "class_1" / "3.png"), "{root}/data/source/d/class_1/3.png", "Cannot read image"
    ),
    "text-file-named-png": folder_case(
        lambda d: (d / "class_2" / "0.png").write_text("hello"),
        "{root}/data/source/d/class_2/0.png",
        "Cannot read image",
    ),
    "mixed-image-sizes": folder_case(
        lambda d: Image.new("L", (5, 7)).save(d / "class_0" / "odd.png"),
        "{root}/data/source/d/class_0/odd.png",
        "set ingest.image_size",
    ),
    "not-an-npz": Case(
        INGEST,
        ("{root}/data/source/d.npz is not a readable .npz file",),
        source("npz", "data/source/d.npz"),
        lambda root: (
            (root / "data" / "source").mkdir(parents=True),
            (root / "data" / "source" / "d.npz").write_text("x,y\n1,2\n"),
        ),
        absent=("data/raw",),
    ),
    "npz-without-labels": npz_case({"x": np.zeros((4, 5, 5))}, "lacks array(s) y"),
    "npz-length-mismatch": npz_case(
        {"x": np.zeros((4, 5, 5)), "y": np.zeros(3, int)}, "`x` has 4 images but `y` has 3 labels"
    ),
    "npz-float-labels": npz_case(
        {"x": np.zeros((4, 5, 5)), "y": np.array([0.0, 1.5, 1.0, 0.0])}, "labels `y` must be one integer per image"
    ),
    "npz-bad-shape": npz_case({"x": np.zeros((4, 5)), "y": np.zeros(4, int)}, "must be (N,H,W)"),
    "npz-one-image-per-class": npz_case(
        {"x": np.zeros((3, 5, 5)), "y": np.arange(3)}, "Cannot make a stratified train/val/test split"
    ),
    "npz-stray-label": npz_case(
        {"x": np.zeros((30, 5, 5)), "y": np.r_[np.repeat(np.arange(3), 9), 99, 99, 99]},
        "no image has label 3, 4, 5, 6, 7, ... (96 labels), yet label 99 has 3 images",
    ),
    "folder-float-image": folder_case(
        lambda d: Image.fromarray(np.ones((8, 8), np.float32)).save(d / "class_1" / "float.tif"),
        "{root}/data/source/d/class_1/float.tif",
        "32-bit floats",
    ),
    "npz-shards-disagree": Case(
        INGEST,
        ("{root}/data/source/d/b.npz holds images of shape",),
        source("npz"),
        lambda root: (
            (root / "data" / "source" / "d").mkdir(parents=True),
            write_npz(root / "data/source/d/a.npz", x=np.zeros((4, 5, 5)), y=np.zeros(4, int)),
            write_npz(root / "data/source/d/b.npz", x=np.zeros((4, 6, 6)), y=np.zeros(4, int)),
        ),
        absent=("data/raw",),
    ),
    # data that ingests but fails the validation gate: Data Docs written, no model trained
    "one-class": validate_case(lambda x, y: (x[y == 0], y[y == 0]), "fewer than two classes"),
    "negative-labels": validate_case(lambda x, y: (x, np.where(y == 2, -1, y)), "labels outside 0..classes-1"),
    "infinite-pixels": validate_case(with_inf, "NaN or infinite pixels", "non_finite"),
    "duplicate-images": validate_case(with_duplicate, "duplicate images", "sha256"),
    # checkpoints and exported models of a finished run
    "corrupted-checkpoint": staged_case(
        ("tasks.distill",),
        lambda lo: truncate(lo.teachers / "0_wide_cnn.safetensors"),
        "{root}/data/models/teachers/0_wide_cnn.safetensors",
        "not a Distillery safetensors file",
        absent=("data/models/student",),
    ),
    "checkpoint-of-another-architecture": staged_case(
        ("tasks.distill",),
        wrong_architecture,
        "{root}/data/models/teachers/0_wide_cnn.safetensors",
        "does not match its architecture 'wide_cnn'",
        absent=("data/models/student",),
    ),
    "pickle-as-checkpoint": staged_case(
        ("tasks.quantize",),
        lambda lo: torch.save({"w": torch.zeros(1)}, lo.pruned / "pruned.safetensors"),
        "{root}/data/models/pruned/pruned.safetensors",
        "not a Distillery safetensors file",
        absent=("data/models/int8",),
    ),
    "tampered-onnx-before-report": staged_case(
        ("tasks.report",),
        lambda lo: flip_bytes(lo.export / "int8.onnx"),
        "{root}/data/export",
        "int8.onnx",
        "differ from what the export stage verified",
        absent=("data/reports",),
    ),
    "eval-set-of-other-classes": Case(
        ("tasks.report",),
        ("report.eval_sets[0] (site):", "{root}/data/eval/site has folders ['cat']", "Nothing was measured"),
        params={**TINY, "report": {"eval_sets": [{"name": "site", "source": "folder", "path": "data/eval/site"}]}},
        prepare=lambda root: (
            shutil.rmtree(root / "data" / "reports"),
            (root / "data" / "eval" / "site" / "cat").mkdir(parents=True),
            Image.new("L", (8, 8)).save(root / "data" / "eval" / "site" / "cat" / "0.png"),
        ),
        absent=("data/reports",),
        staged=True,
    ),
    "tampered-onnx-before-publish": staged_case(
        PUBLISH,
        lambda lo: flip_bytes(lo.export / "pruned.onnx"),
        "Nothing is published",
        "pruned.onnx",
        "differ from what the export stage verified",
    ),
    "onnx-added-after-export": staged_case(
        PUBLISH,
        lambda lo: shutil.copy(lo.export / "int8.onnx", lo.export / "extra.onnx"),
        "extra.onnx",
        "differ from what the export stage verified",
    ),
    # the S3 store
    "missing-bucket": staged_case(
        PUBLISH, lambda lo: None, "'no-such-bucket'", "NoSuchBucket", env={"DISTILLERY_BUCKET": "no-such-bucket"}
    ),
    "wrong-secret": staged_case(
        PUBLISH,
        lambda lo: None,
        "SignatureDoesNotMatch",
        "the secret key is wrong",
        env={"AWS_SECRET_ACCESS_KEY": "not-the-secret-key-0123456789abcdefghij"},
    ),
    "unknown-access-key": staged_case(
        PUBLISH, lambda lo: None, "InvalidAccessKeyId", env={"AWS_ACCESS_KEY_ID": "NOSUCHKEY0123456789"}
    ),
    "unreachable-endpoint": staged_case(
        PUBLISH,
        lambda lo: None,
        "http://127.0.0.1:{port}",
        "Could not connect",
        env={"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:{port}", "AWS_MAX_ATTEMPTS": "2"},
    ),
}


def staging_leftovers(root: Path) -> list[Path]:
    """Hidden `.<name>.<random>` files and folders: what an interrupted atomic write would leave."""
    return [p for p in root.rglob(".*") if p.name.count(".") >= 2 and ".git" not in p.parts]


def run_command(root: Path, command: tuple[str, ...], env: dict, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *command, "--root", str(root), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def workspace(case: Case, root: Path, staged: Layout | None) -> Path:
    root.mkdir()
    if case.staged:
        shutil.copytree(staged.data, root / "data")
    params = case.params if isinstance(case.params, str) else yaml.safe_dump(case.params)
    (root / "params.yaml").write_text(params)
    case.prepare(root)
    return root


@pytest.fixture
def environment(s3_env) -> Callable[[Case], dict]:
    """The test server's S3 settings with the case's changes ({port}: a loopback port nobody listens on)."""
    port = str(free_port())
    return lambda case: {**venv_env(), **{k: v.replace("{port}", port) for k, v in case.env.items()}}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_refused_clearly_and_writes_nothing(name, request, tmp_path, environment, s3_env):
    case = CASES[name]
    staged = request.getfixturevalue("staged") if case.staged else None
    root = workspace(case, tmp_path / "workspace", staged)
    env = environment(case)
    done = run_command(root, case.command, env)
    output = done.stdout + done.stderr
    assert done.returncode == 2 and "Traceback" not in output, output
    message = done.stderr.strip().splitlines()[-1]  # one paragraph, last
    assert message.startswith("error: "), output
    port = env.get("AWS_ENDPOINT_URL_S3", "").rpartition(":")[2]
    for text in case.says:
        assert text.format(root=root, port=port) in message, message
    assert s3_env["credentials"].secret_key not in output
    for path in case.absent:
        assert not (root / path).exists(), f"{path} was written"
    assert not staging_leftovers(root)
    assert ArtifactStore(S3Settings.from_env()).versions(MODEL) == []


@pytest.mark.parametrize("name", ["missing-path", "zero-temperature"])
def test_debug_shows_the_traceback(name, tmp_path, environment):
    case = CASES[name]
    root = workspace(case, tmp_path / "workspace", None)
    done = run_command(root, case.command, environment(case), "--debug")
    assert done.returncode != 0 and "Traceback" in done.stderr


def test_the_readme_counts_these_cases():
    assert f"runs {len(CASES)} such cases" in (ROOT / "docs" / "operations.md").read_text()

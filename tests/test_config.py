"""Parameters: defaults are complete, bad values are rejected with the key named, and the stage
command lines turn them into one-paragraph errors with exit code 2 and no traceback."""

import subprocess
import sys

import pytest
import yaml
from pydantic import ValidationError

from tasks.config import PipelineParams, load_params
from tests.conftest import ROOT, venv_env


def test_params_yaml_is_the_complete_default():
    assert load_params(ROOT / "params.yaml") == PipelineParams()
    assert yaml.safe_load((ROOT / "params.yaml").read_text()) == PipelineParams().to_yaml_dict()


@pytest.mark.parametrize("raw, key", [
    ({"teachers": {"epoch": 3}}, "teachers.epoch"),
    ({"trainer": {}}, "trainer"),
    ({"teachers": {"epochs": 0}}, "teachers.epochs"),
    ({"teachers": {"epochs": "many"}}, "teachers.epochs"),
    ({"teachers": {"models": []}}, "teachers.models"),
    ({"teachers": {"models": ["vgg"]}}, "teachers.models.0"),
    ({"kd": {"temperature": 0}}, "kd.temperature"),
    ({"kd": {"alpha": 1.5}}, "kd.alpha"),
    ({"prune": {"ratio": 1.0}}, "prune.ratio"),
    ({"ingest": {"source": "s3"}}, "ingest.source"),
])
def test_bad_values_are_rejected_naming_the_key(raw, key):
    with pytest.raises(ValidationError) as info:
        PipelineParams.model_validate(raw)
    from tasks.cli import describe

    assert key in describe(info.value, "params.yaml")


def test_prune_steps_cannot_exceed_epochs():
    with pytest.raises(ValidationError, match="must not exceed"):
        PipelineParams.model_validate({"prune": {"epochs": 2, "steps": 3}})


def run_stage(stage, params: dict, tmp_path, *extra):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run([sys.executable, "-m", f"tasks.{stage}", "--params", str(tmp_path / "params.yaml"),
                           "--root", str(tmp_path), *extra], capture_output=True, text=True, env=venv_env())


def test_stage_cli_reports_bad_params_without_traceback(tmp_path):
    done = run_stage("ingest", {"ingest": {"source": "digits", "sead": 1}}, tmp_path)
    assert done.returncode == 2
    assert "ingest.sead" in done.stderr and "Extra inputs are not permitted" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data").exists()


def test_stage_cli_missing_dataset_path(tmp_path):
    missing = tmp_path / "nowhere.npz"
    done = run_stage("ingest", {"ingest": {"source": "npz", "path": str(missing)}}, tmp_path)
    assert done.returncode == 2 and str(missing) in done.stderr and "Traceback" not in done.stderr
    debug = run_stage("ingest", {"ingest": {"source": "npz", "path": str(missing)}}, tmp_path, "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr

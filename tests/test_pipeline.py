"""The three ways to run: dvc.yaml and the flow describe the same stages; `dvc repro` and the
Prefect flow both run end to end on tiny params; a flow run leaves DVC with nothing to do."""

import json
import shutil
import subprocess
import sys

import yaml

from distillery import checkpoint
from flows.pipeline import compress
from tasks.layout import Layout
from tasks.stages import STAGES, stage_calls
from tests.conftest import ROOT, TINY, copy_project, tiny_params, venv_env


def dvc(project, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, capture_output=True, text=True,
                          env=venv_env(), check=True)


def test_dvc_yaml_and_flow_list_the_same_stages_in_order():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages) == list(STAGES) == list(stage_calls(tiny_params(), Layout(ROOT)))
    for name, stage in stages.items():
        assert stage["cmd"] == f"python -m tasks.{name}"


def test_dvc_repro_runs_the_pipeline(project, prefect_server, request):
    dvc(project, "repro")
    metrics = json.loads((project / "data/reports/metrics.json").read_text())
    assert metrics["dataset"]["name"] == "digits" and metrics["params"]["teachers"]["epochs"] == 1
    assert json.loads((project / "data/published.json").read_text())["published"] is False  # no store set
    assert json.loads(dvc(project, "status", "--json").stdout) == {}

    s3_env = request.getfixturevalue("s3_env")  # the store comes up: the next flow run publishes that run
    dvc(project, "remote", "modify", "--local", "store", "endpointurl", s3_env["endpoint"])
    assert compress(params=tiny_params(), root=str(project))["ran"] == ["publish"]
    assert json.loads((project / "data/published.json").read_text())["published"] is True
    assert json.loads(dvc(project, "status", "--json").stdout) == {}


def test_flow_run_leaves_dvc_up_to_date(project, prefect_server, s3_env):
    dvc(project, "remote", "modify", "--local", "store", "endpointurl", s3_env["endpoint"])
    result = compress(params=tiny_params(), root=str(project))
    assert result["ran"] == list(STAGES)
    receipt = json.loads((project / "data/published.json").read_text())
    assert receipt["published"] and receipt["name"] == "distillery-student"
    assert json.loads(dvc(project, "status", "--json").stdout) == {}
    assert "didn't change, skipping" in dvc(project, "repro").stdout
    assert compress(params=tiny_params(), root=str(project))["ran"] == []  # nothing changed: nothing reruns

    changed = tiny_params().model_copy(update={"export": tiny_params().export.model_copy(
        update={"max_accuracy_gap_pp": 0.9})})
    assert compress(params=changed, root=str(project))["ran"] == ["export", "report", "publish"]
    assert yaml.safe_load((project / "params.yaml").read_text())["export"]["max_accuracy_gap_pp"] == 0.9
    assert_artifacts_published()

    shutil.rmtree(project / ".dvc" / "cache")  # the flow pushed: an empty cache can be refilled
    shutil.rmtree(project / "data" / "models")
    dvc(project, "pull")
    assert json.loads(dvc(project, "status", "--json").stdout) == {}
    assert checkpoint.load(project / "data/models/pruned/pruned.safetensors")[1]["arch"] == "student_cnn"


def assert_artifacts_published():
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["distillery-metrics", "distillery-report", "distillery-model"])))
    assert {a.key for a in found} == {"distillery-metrics", "distillery-report", "distillery-model"}
    link = next(a for a in found if a.key == "distillery-model").data
    assert "/distillery/models/distillery-student/" in link and link.endswith("/manifest.json)")
    table = next(a for a in found if a.key == "distillery-metrics").data
    assert "int8" in str(table)


def test_distillery_run_stops_cleanly_on_bad_data(tmp_path):
    missing = tmp_path / "missing.npz"
    project = copy_project(tmp_path / "project", {**TINY, "ingest": {"source": "npz", "path": str(missing)}})
    done = subprocess.run([sys.executable, "-m", "flows.cli", "run"], cwd=project, capture_output=True, text=True,
                          env=venv_env())
    assert done.returncode == 2
    assert f"error: ingest.path {missing} does not exist" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (project / "data" / "raw").exists()

"""The three ways to run: dvc.yaml and the flow describe the same stages; `dvc repro` and the
Prefect flow both run end to end on tiny params; a flow run leaves DVC with nothing to do; a served
deployment runs with custom parameters; a published run leaks no secret; a failed run and a model not promoted
reach the alert webhook, and an unreachable one fails no run.

One published flow run (`published_run`) is shared: the tests that go on from it work on a copy."""

import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
import yaml

from distillery import checkpoint
from distillery.errors import DistilleryError
from flows import alerts
from flows.pipeline import distillery_flow
from project.config import PipelineParams, PromoteConfig
from project.layout import PIPELINE_MODELS, Layout
from project.store import ArtifactStore, S3Settings
from tasks import NAMES
from tests.conftest import TINY, copy_project, point_at, tiny_params, venv_env

pytestmark = pytest.mark.e2e  # each runs a command or a server


def dvc(project, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=project, capture_output=True, text=True, env=venv_env(), check=True
    )


def test_dvc_repro_killed_in_teacher_training_resumes_and_the_next_flow_run_publishes(project, prefect_server, request):
    layout = Layout(project)
    repro = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=project,
        env=venv_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not list(layout.teachers.parent.glob(".teachers.*")) and time.monotonic() < deadline:
        time.sleep(0.05)  # until train_teachers is writing its staging folder
    os.killpg(repro.pid, signal.SIGKILL)
    repro.wait()
    assert layout.validation_summary.exists() and not layout.teachers.exists()  # nothing half-made looks done
    status = json.loads(dvc(project, "status", "--json").stdout)
    assert "ingest" not in status and "validate" not in status and "train_teachers" in status

    rerun = dvc(project, "repro").stdout  # resumes from the first stage that did not finish, to the end
    assert "Stage 'ingest' didn't change" in rerun and "Stage 'validate' didn't change" in rerun
    assert "Running stage 'train_teachers'" in rerun
    assert not list(layout.teachers.parent.glob(".teachers.*"))  # the killed run's staging folder is gone
    metrics = json.loads(layout.metrics.read_text())
    teachers = metrics["params"]["teachers"]
    assert metrics["dataset"]["name"] == "digits" and {k: teachers[k] for k in TINY["teachers"]} == TINY["teachers"]
    assert json.loads(layout.published.read_text())["published"] is False  # no store set
    assert json.loads(dvc(project, "status", "--json").stdout) == {}

    s3_env = request.getfixturevalue("s3_env")  # the store comes up: the next flow run publishes that run
    dvc(project, "remote", "modify", "--local", "store", "endpointurl", s3_env["endpoint"])
    assert distillery_flow(params=tiny_params(), root=str(project))["ran"] == ["publish"]
    assert json.loads(layout.published.read_text())["published"] is True
    assert json.loads(dvc(project, "status", "--json").stdout) == {}


@pytest.fixture(scope="module")
def published_run(tmp_path_factory, prefect_server, s3_server) -> dict:
    """One flow run of the tiny params in a fresh project copy, published to the test store, with
    every log record it emitted. Tests read it, or go on from a copy (`copy_of`)."""
    project = copy_project(tmp_path_factory.mktemp("published"), TINY)
    logs, handler = io.StringIO(), None
    root_logger = logging.getLogger()
    level = root_logger.level
    with pytest.MonkeyPatch.context() as monkeypatch:
        point_at(s3_server, monkeypatch)
        dvc(project, "remote", "modify", "--local", "store", "endpointurl", s3_server["endpoint"])
        handler = logging.StreamHandler(logs)
        root_logger.addHandler(handler)
        root_logger.setLevel(logging.INFO)
        try:
            result = distillery_flow(params=tiny_params(), root=str(project))
        finally:
            root_logger.removeHandler(handler)
            root_logger.setLevel(level)
    return {"project": project, "ran": result["ran"], "logs": logs.getvalue()}


def copy_of(run: dict, dest) -> os.PathLike:
    return shutil.copytree(run["project"], dest / "project", symlinks=True)


def test_flow_run_leaves_dvc_up_to_date(published_run, s3_env, tmp_path):
    assert published_run["ran"] == list(NAMES)
    project = copy_of(published_run, tmp_path)
    receipt = json.loads((project / "data/published.json").read_text())
    assert receipt["published"] and receipt["name"] == "distillery-student"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    assert json.loads(Layout(project).metrics.read_text())["git_commit"] == head  # every output is ignored: clean
    assert json.loads(dvc(project, "status", "--json").stdout) == {}
    assert "didn't change, skipping" in dvc(project, "repro").stdout
    assert distillery_flow(params=tiny_params(), root=str(project))["ran"] == []  # nothing changed: nothing reruns

    changed = tiny_params().model_copy(  # a key of measure the prune stage does not use: nothing before export reruns
        update={
            "export": tiny_params().export.model_copy(update={"decisive_margin_steps": 6.0}),
            "measure": tiny_params().measure.model_copy(update={"latency_budget_s": 0.06}),
        }
    )
    assert distillery_flow(params=changed, root=str(project))["ran"] == [
        "export",
        "ship",
        "report",
        "package",
        "publish",
    ]
    assert yaml.safe_load((project / "params.yaml").read_text())["export"]["decisive_margin_steps"] == 6.0
    assert_artifacts_published()

    shutil.rmtree(project / ".dvc" / "cache")  # the flow pushed: an empty cache can be refilled
    shutil.rmtree(project / "data" / "models")
    dvc(project, "pull")
    assert json.loads(dvc(project, "status", "--json").stdout) == {}
    assert checkpoint.load(project / "data/models/pruned/pruned.safetensors")[1]["arch"] == "student_cnn"


def assert_artifacts_published():
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    keys = {"distillery-metrics", "distillery-ensemble-and-student", "distillery-report", "distillery-model"}
    keys |= {"distillery-model-card", "distillery-eval-sets", "distillery-promotion"}
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=sorted(keys))))
    assert {a.key for a in found} == keys
    link = next(a for a in found if a.key == "distillery-model").data
    assert "/distillery/models/distillery-student/" in link and link.endswith("/manifest.json)")
    table = next(a for a in found if a.key == "distillery-metrics").data
    assert "int8" in str(table)
    kept = json.loads(next(a for a in found if a.key == "distillery-ensemble-and-student").data)
    assert [row["model"] for row in kept][-6:] == list(PIPELINE_MODELS)
    assert all("→" in row["ECE % raw → scaled"] for row in kept)
    assert next(a for a in found if a.key == "distillery-model-card").data.startswith("# Distillery model")
    decision = next(a for a in found if a.key == "distillery-promotion").data
    assert decision.startswith("# distillery-student ") and ": promoted\n\nmeets the floor on " in decision
    sets = json.loads(next(a for a in found if a.key == "distillery-eval-sets").data)
    assert {row["set"] for row in sets} == {"mnist"} and [row["model"] for row in sets][-6:] == list(PIPELINE_MODELS)


def prefect_records() -> list[str]:
    """Every log message and artifact the Prefect server holds."""
    from prefect.client.orchestration import get_client

    texts: list[str] = []
    with get_client(sync_client=True) as client:
        while page := client.read_logs(limit=200, offset=len(texts)):
            texts += [log.message for log in page]
        texts += [f"{a.data} {a.description}" for a in client.read_artifacts()]
    return texts


def test_a_published_run_leaks_no_secret(published_run, s3_env, tmp_path):
    secret = s3_env["credentials"].secret_key
    project = published_run["project"]
    receipt = json.loads(Layout(project).published.read_text())
    assert receipt["published"]
    ArtifactStore(S3Settings.from_env()).download(receipt["name"], receipt["version"], tmp_path / "published")

    files = [p for folder in (project, tmp_path / "published") for p in folder.rglob("*") if p.is_file()]
    assert len(files) > 50 and [p for p in files if secret.encode() in p.read_bytes()] == []
    records = prefect_records()
    assert any("published" in r for r in records) and not any(secret in r for r in records)
    assert "published" in published_run["logs"] and secret not in published_run["logs"]


def wait_for_deployment(name: str, timeout_s: float = 120):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            try:
                return client.read_deployment_by_name(name)
            except Exception:  # not registered yet
                time.sleep(1)
    raise TimeoutError(f"deployment {name} did not appear")


def test_served_deployment_runs_with_custom_parameters(published_run, tmp_path):
    """The schedule and the concurrency limit are stored, and a run triggered with custom parameters
    is picked up and completes (here only the stages the new parameter touches rerun)."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    project = copy_of(published_run, tmp_path)
    env = {**venv_env(), "PREFECT_API_URL": PREFECT_API_URL.value()}
    serving = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--name", "test-nightly", "--cron", "0 3 * * *"],
        cwd=project,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deployment = wait_for_deployment("distillery/test-nightly")
        assert deployment.schedules[0].schedule.cron == "0 3 * * *"
        assert deployment.global_concurrency_limit.limit == 1
        assert deployment.parameters["params"]["ingest"]["source"] == "digits"

        custom = {**TINY, "export": {"decisive_margin_steps": 6.0}}
        flow_run = run_deployment(
            "distillery/test-nightly", parameters={"params": custom, "root": str(project)}, timeout=600
        )
        assert flow_run.state.is_completed(), flow_run.state
        metrics = json.loads((project / "data" / "reports" / "metrics.json").read_text())
        assert metrics["params"]["export"]["decisive_margin_steps"] == 6.0
    finally:
        os.killpg(serving.pid, signal.SIGTERM)
        serving.wait(30)


def test_distillery_run_stops_cleanly_on_bad_data(tmp_path):
    missing = tmp_path / "missing.npz"
    project = copy_project(tmp_path / "project", {**TINY, "ingest": {"source": "npz", "path": str(missing)}})
    done = subprocess.run(
        [sys.executable, "-m", "cli", "run"], cwd=project, capture_output=True, text=True, env=venv_env()
    )
    assert done.returncode == 2
    assert f"error: ingest.path {missing} does not exist" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (project / "data" / "raw").exists()


def test_a_failed_run_reaches_the_alert_webhook_once(webhook, tmp_path, monkeypatch):
    monkeypatch.setenv(alerts.WEBHOOK_ENV, webhook.url)
    assert alerts.install_from_env() == "alerts on: distillery-run-failed, distillery-not-promoted post to the " + (
        "distillery-alerts block"
    )
    alerts.install_from_env()  # again, as every `distillery serve` does: replaced, not doubled
    missing = tmp_path / "missing.npz"
    bad = PipelineParams.model_validate({**TINY, "ingest": {"source": "npz", "path": str(missing)}})
    with pytest.raises(DistilleryError, match="does not exist"):
        distillery_flow(params=bad, root=str(tmp_path))
    (message,) = webhook.wait_for(1)
    assert (
        message["text"].startswith("Distillery run failed: Flow run ")
        and " of distillery ended Failed: " in message["text"]
    )
    assert f"ingest.path {missing} does not exist" in message["text"]


def test_alerts_are_off_without_a_webhook(prefect_server, monkeypatch):
    from prefect.automations import Automation

    monkeypatch.delenv(alerts.WEBHOOK_ENV, raising=False)
    assert alerts.install_from_env().startswith(f"alerts off: set {alerts.WEBHOOK_ENV}")
    with pytest.raises(ValueError, match="not found"):
        Automation.read(name="distillery-not-promoted")


def automation_triggered(name: str, since: str, timeout_s: float = 60) -> bool:
    """Whether the Prefect server recorded that the automation `name` fired since `since` (ISO time)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            wanted = {"event": {"name": ["prefect.automation.triggered"]}, "occurred": {"since": since}}
            query = {"filter": wanted, "limit": 50}
            events = client.request("POST", "/events/filter", json=query).json()["events"]
        if any(e["resource"].get("prefect.resource.name") == name for e in events):
            return True
        time.sleep(1)
    return False


def test_a_model_not_promoted_alerts_and_an_unreachable_webhook_fails_no_run(published_run, s3_env, webhook, tmp_path):
    """Only the stages that read the promote section rerun; the version is refused, the alert fires, and the webhook
    behind it cannot be reached: the run completes all the same."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        unreachable = f"http://127.0.0.1:{probe.getsockname()[1]}/alerts"
    alerts.install(unreachable)
    started = datetime.now(UTC).isoformat()
    project = copy_of(published_run, tmp_path)
    strict = tiny_params().model_copy(update={"promote": PromoteConfig(min_accuracy=0.999)})
    state = distillery_flow(params=strict, root=str(project), return_state=True)
    assert state.is_completed() and state.result()["ran"] == ["report", "package", "publish"]  # the params changed
    assert state.message.startswith("published distillery-student ") and ", not promoted: " in state.message
    assert automation_triggered("distillery-not-promoted", since=started)

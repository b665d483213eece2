"""A served deployment on a real Prefect server: the schedule and the concurrency limit are
stored, and a run triggered with custom parameters is picked up and completes."""

import os
import signal
import subprocess
import sys
import time

from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL

from tests.conftest import TINY, venv_env


def wait_for_deployment(name: str, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            try:
                return client.read_deployment_by_name(name)
            except Exception:  # not registered yet
                time.sleep(1)
    raise TimeoutError(f"deployment {name} did not appear")


def test_served_deployment_runs_with_custom_parameters(project, prefect_server):
    env = {**venv_env(), "PREFECT_API_URL": PREFECT_API_URL.value()}
    serving = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--name", "test-nightly",
                                "--cron", "0 3 * * *"], cwd=project, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deployment = wait_for_deployment("distillery/test-nightly")
        assert deployment.schedules[0].schedule.cron == "0 3 * * *"
        assert deployment.global_concurrency_limit.limit == 1
        assert deployment.parameters["params"]["ingest"]["source"] == "digits"

        custom = {**TINY, "export": {"max_accuracy_gap_pp": 0.9}}
        flow_run = run_deployment("distillery/test-nightly", parameters={"params": custom, "root": str(project)},
                                  timeout=600)
        assert flow_run.state.is_completed(), flow_run.state
        metrics = (project / "data" / "reports" / "metrics.json").read_text()
        assert '"max_accuracy_gap_pp": 0.9' in metrics
    finally:
        os.killpg(serving.pid, signal.SIGTERM)
        serving.wait(30)

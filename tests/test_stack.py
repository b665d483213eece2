"""`make up` / `make down`: SeaweedFS S3 and a Prefect server, on loopback, with generated credentials."""

import os
import stat
import subprocess
import sys

import psutil
import pytest
import requests

from infra.s3_server import free_port
from tests.conftest import ROOT, venv_env

pytestmark = pytest.mark.e2e  # each runs a command or a server


def stack(command: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "infra.stack", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )


def test_stack_up_and_down(tmp_path):
    s3_port, prefect_port = free_port(), free_port()
    env = {
        **venv_env(),
        "DISTILLERY_STACK_DIR": str(tmp_path),
        "DISTILLERY_S3_PORT": str(s3_port),
        "DISTILLERY_PREFECT_PORT": str(prefect_port),
    }
    try:
        up = stack("up", env)
        assert up.returncode == 0, up.stderr
        assert f"http://127.0.0.1:{s3_port}" in up.stdout and f"http://127.0.0.1:{prefect_port}" in up.stdout
        settings = dict(line.split("=", 1) for line in (tmp_path / "stack.env").read_text().splitlines())
        assert stat.S_IMODE(os.stat(tmp_path / "stack.env").st_mode) == 0o600
        assert settings["AWS_SECRET_ACCESS_KEY"] not in up.stdout  # printed: where, not what
        assert requests.get(f"http://127.0.0.1:{prefect_port}/api/health", timeout=5).ok
        assert requests.get(f"http://127.0.0.1:{s3_port}/distillery", timeout=5).status_code == 403  # unsigned
        for name in ("s3", "prefect"):
            pid = int((tmp_path / f"{name}.pid").read_text())
            listening = {
                c.laddr.ip
                for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
                for c in p.net_connections("inet")
                if c.status == psutil.CONN_LISTEN
            }
            assert listening and listening <= {"127.0.0.1"}, (name, listening)
        assert stack("up", env).returncode == 0  # idempotent: already running
    finally:
        down = stack("down", env)
    assert down.returncode == 0 and not (tmp_path / "stack.env").exists()
    assert not (tmp_path / "s3.pid").exists() and not (tmp_path / "prefect.pid").exists()

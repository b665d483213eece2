"""Reliability: runs that cannot both write one workspace, what a killed run leaves behind, an
S3 server that goes down in the middle of a publish, a full disk or read-only output folder. (A
`dvc repro` killed in teacher training and the secret check of a published run are in
test_pipeline.py, beside the end-to-end runs they share.)"""

import os
import re
import resource
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from distillery.errors import DistilleryError
from distillery.files import exclusive_lock
from flows.pipeline import distillery_flow
from project.layout import Layout
from project.store import ArtifactStore, S3Settings
from tasks import publish
from tests.conftest import ROOT, tiny_params, venv_env

HOLD_LOCK = """
import sys, time
from pathlib import Path
from distillery.files import exclusive_lock
with exclusive_lock(Path(sys.argv[1]), "test"):
    print("held", flush=True)
    time.sleep(120)
"""


def ingest(project, preexec_fn=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tasks.ingest", "--root", str(project)],
        cwd=ROOT,
        env=venv_env(),
        capture_output=True,
        text=True,
        preexec_fn=preexec_fn,
    )


def test_a_flow_run_refuses_a_dvc_yaml_the_stage_declarations_did_not_write(project, prefect_server):
    dvc_yaml = project / "dvc.yaml"
    edited = re.sub(r",\s*tasks/ship\.py\]", "]", dvc_yaml.read_text())  # a hand edit: a dependency lost
    assert edited != dvc_yaml.read_text()
    dvc_yaml.write_text(edited)
    with pytest.raises(DistilleryError, match="differs from the stage declarations .* run `distillery dvc-yaml`"):
        distillery_flow(params=tiny_params(), root=str(project))
    assert not Layout(project).raw.exists()


def test_a_second_run_in_one_workspace_is_refused_and_writes_nothing(project, prefect_server):
    layout = Layout(project)
    with exclusive_lock(layout.lock_file, "test"):  # a run in progress
        stage = ingest(project)
        assert stage.returncode == 2 and "Traceback" not in stage.stderr
        assert (
            "is busy" in stage.stderr and f"pid {os.getpid()}" in stage.stderr and str(layout.lock_file) in stage.stderr
        )
        with pytest.raises(DistilleryError, match="is busy"):
            distillery_flow(params=tiny_params(), root=str(project))
        assert not layout.raw.exists()
    assert ingest(project).returncode == 0 and layout.images.exists()  # released when the run ends


def test_a_killed_run_leaves_no_lock_behind(project):
    layout = Layout(project)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(layout.lock_file)],
        cwd=ROOT,
        env=venv_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    assert "is busy" in ingest(project).stderr
    holder.kill()
    holder.wait()
    assert ingest(project).returncode == 0


def watch_and_stop(client, bucket: str, prefix: str, server) -> None:
    """Stop the S3 server as soon as the first object under `prefix` lands: mid-publish."""
    from infra import s3_server as weed

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount"):
        time.sleep(0.005)
    weed.stop(server)


def test_s3_down_mid_publish_fails_cleanly_and_a_rerun_completes(staged, tmp_path, monkeypatch):
    from infra import s3_server as weed

    state, port = tmp_path / "s3", weed.free_port()
    server, creds = weed.start(state, "faults", port)
    for key, value in {
        "AWS_ACCESS_KEY_ID": creds.access_key,
        "AWS_SECRET_ACCESS_KEY": creds.secret_key,
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
        "AWS_DEFAULT_REGION": "us-east-1",
        "DISTILLERY_BUCKET": "faults",
    }.items():
        monkeypatch.setenv(key, value)
    try:
        publish.upload("faulty", staged, version="v1")
        watcher = threading.Thread(
            target=watch_and_stop,
            args=(ArtifactStore(S3Settings.from_env()).client, "faults", "models/faulty/v2/", server),
        )
        watcher.start()
        started = time.monotonic()
        with pytest.raises(DistilleryError, match=f"bucket 'faults' at http://127.0.0.1:{port}") as failed:
            publish.upload("faulty", staged, version="v2")
        retried_s = time.monotonic() - started
        watcher.join()
        assert creds.secret_key not in str(failed.value)

        server, _ = weed.start(state, "faults", port)  # the server comes back
        store = ArtifactStore(S3Settings.from_env())
        assert store.versions("faulty") == ["v1"] and store.latest("faulty") == "v1"  # v2 is not complete
        assert store.download("faulty", "v1", tmp_path / "v1")["version"] == "v1"  # v1 untouched
        publish.upload("faulty", staged, version="v2")  # the rerun completes the version
        assert store.versions("faulty") == ["v1", "v2"] and store.latest("faulty") == "v2"
        assert store.download("faulty", "v2", tmp_path / "v2")["version"] == "v2"
    finally:
        weed.stop(server)
    assert retried_s > 1  # botocore retried with backoff before giving up


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def rewrite_ingest_seed(project: Path, seed: int) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["ingest"]["seed"] = seed  # a new split: a rerun would rewrite every file of data/raw
    (project / "params.yaml").write_text(yaml.safe_dump(params))


def test_a_full_disk_fails_clearly_and_leaves_the_earlier_output_intact(project):
    layout = Layout(project)
    assert ingest(project).returncode == 0
    before = files_of(layout.raw)
    rewrite_ingest_seed(project, 1)

    def small_disk() -> None:  # writes past 64 KB fail with EFBIG, as writes to a full disk fail with ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))

    full = ingest(project, preexec_fn=small_disk)
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr
    assert f"error: Cannot write {layout.raw}: File too large" in full.stderr
    assert "Nothing was replaced" in full.stderr
    assert files_of(layout.raw) == before  # the earlier, complete output
    assert not list(layout.data.glob(".raw.*"))  # no staging folder left
    assert ingest(project).returncode == 0 and files_of(layout.raw) != before  # with space, the rerun writes


@contextmanager
def read_only(folder: Path):
    """Make `folder` read-only: by its mode for a normal user; root ignores modes, so for root by a
    read-only bind mount (skipped where mounts are not allowed)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True).returncode:
        pytest.skip("root without the right to mount: cannot make a folder read-only")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_output_folder_fails_clearly_and_changes_nothing(project):
    layout = Layout(project)
    assert ingest(project).returncode == 0
    before = files_of(layout.raw)
    rewrite_ingest_seed(project, 1)
    with read_only(layout.data):
        refused = ingest(project)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert f"error: Cannot write {layout.raw}:" in refused.stderr
    assert "Read-only file system" in refused.stderr or "Permission denied" in refused.stderr
    assert files_of(layout.raw) == before and not list(layout.data.glob(".raw.*"))

"""The S3 model store against a real SeaweedFS server: publish, list, show, download with
checksums; clear errors for wrong credentials, a missing bucket, tampered objects, bad names."""

import hashlib
import json
import shutil
import subprocess
import sys

import onnx
import psutil
import pytest

from distillery import model_package
from distillery.errors import DistilleryError
from distillery.files import file_digest
from project.config import PromoteConfig, PublishConfig
from project.layout import Layout
from project.ship_decision import ShipDecision
from project.store import ArtifactStore, S3Settings
from tasks import publish
from tests.conftest import ROOT, venv_env


def store() -> ArtifactStore:
    return ArtifactStore(S3Settings.from_env())


def test_publish_round_trip(staged, s3_env, tmp_path):
    published = publish.upload("digits-student", staged, version="v1")
    assert published["files"] > 10
    s3 = store()
    assert s3.versions("digits-student") == ["v1"] and s3.latest("digits-student") == "v1"
    manifest = s3.download("digits-student", "v1", tmp_path / "v1")
    for entry in manifest["files"]:
        assert file_digest(tmp_path / "v1" / entry["path"]) == entry["sha256"]
    entries = {e["path"]: e for e in manifest["files"]}
    assert entries["models/int8.onnx"]["sha256"] == file_digest(staged.export / "int8.onnx")
    published_model = onnx.load(str(tmp_path / "v1" / "model.onnx"))  # the packaged model, named and versioned
    assert published_model.graph == onnx.load(str(staged.packaged_model)).graph
    props = model_package.read(tmp_path / "v1" / "model.onnx").props
    assert props["model_name"] == "digits-student" and props["model_version"] == "v1"
    assert props.items() - {("model_name", "digits-student"), ("model_version", "v1")} == (
        model_package.read(staged.packaged_model).props.items()
    )
    card = (tmp_path / "v1" / "MODEL_CARD.md").read_text()
    assert card.startswith("# digits-student v1\n") and "--model digits-student@v1" in card
    lineage = manifest["lineage"]
    assert lineage["dataset"]["md5"] == json.loads(staged.metrics.read_text())["dataset"]["md5"]
    assert lineage["params"]["ingest"]["source"] == "digits" and lineage["packages"]["torch"]
    assert lineage["ship"] == ShipDecision.read(staged.ship_decision).model_dump()
    assert lineage["git_commit"] is None and "params" not in lineage["metrics"]
    assert "data_docs/index.html" in {e["path"] for e in manifest["files"]}

    publish.upload("digits-student", staged, version="v2")
    assert s3.versions("digits-student") == ["v1", "v2"] and s3.latest("digits-student") == "v2"
    with pytest.raises(DistilleryError, match="already published"):
        publish.upload("digits-student", staged, version="v2")


def test_publish_stage_writes_a_receipt(staged, s3_env, monkeypatch, tmp_path):
    layout = Layout(tmp_path)  # the receipt is written: a copy, as other workers read the shared run
    shutil.copytree(staged.data, layout.data)
    receipt = publish.run(PublishConfig(model_name="stage-test"), PromoteConfig(), layout)
    assert receipt["published"] and store().versions("stage-test") == [receipt["version"]]
    assert json.loads(layout.published.read_text()) == receipt
    for name in ("DISTILLERY_BUCKET", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name)
    assert publish.run(PublishConfig(model_name="stage-test"), PromoteConfig(), layout)["published"] is False
    assert json.loads(layout.published.read_text())["published"] is False


def test_tampered_object_fails_download_and_leaves_nothing(staged, s3_env, tmp_path):
    publish.upload("tamper", staged, version="v1")
    s3 = store()
    s3.client.put_object(Bucket=s3_env["bucket"], Key="models/tamper/v1/models/int8.onnx", Body=b"evil")
    with pytest.raises(DistilleryError, match="does not match its manifest sha256"):
        s3.download("tamper", "v1", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_wrong_secret_is_rejected_naming_endpoint_and_bucket(staged, s3_env, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-at-all")
    with pytest.raises(DistilleryError) as info:
        publish.upload("digits-student", staged, version="v9")
    message = str(info.value)
    assert "SignatureDoesNotMatch" in message and s3_env["endpoint"] in message and "'distillery'" in message
    assert "not-the-secret-at-all" not in message


def test_missing_bucket_is_named(s3_env, monkeypatch):
    monkeypatch.setenv("DISTILLERY_BUCKET", "no-such-bucket")
    with pytest.raises(DistilleryError, match="NoSuchBucket"):
        store().versions("anything")


@pytest.mark.parametrize("name", ["../etc", "a/b", "", "x" * 101, "bad\nname"])
def test_unsafe_names_are_refused(staged, s3_env, name):
    with pytest.raises(DistilleryError, match="Invalid model name"):
        publish.upload(name, staged, version="v1")


def test_unfinished_run_is_not_published(tmp_path, s3_env):
    with pytest.raises(DistilleryError, match="No finished run"):
        publish.upload("unfinished", Layout(tmp_path))
    assert not list(store().keys("models/unfinished/"))  # not a file, not even a marker


def test_s3_server_listens_on_loopback_only(s3_server):
    addresses = {
        c.laddr.ip for c in psutil.Process(s3_server["pid"]).net_connections("inet") if c.status == psutil.CONN_LISTEN
    }
    assert addresses and addresses <= {"127.0.0.1"}


def test_an_upload_that_stored_other_bytes_is_refused(s3_env, tmp_path, monkeypatch):
    """A store that keeps other bytes than were sent (same size, no checksum of its own to report) fails
    the upload: the object is read back and hashed."""
    s3 = store()
    model = tmp_path / "model.onnx"
    model.write_bytes(b"the model")
    put = s3.client.put_object

    def stores_other_bytes(**kwargs):
        kwargs.pop("ChecksumSHA256")
        return put(**kwargs | {"Body": b"the modem"})

    monkeypatch.setattr(s3.client, "put_object", stores_other_bytes)
    with pytest.raises(DistilleryError, match="Upload to checks/a .* did not verify"):
        s3.upload_verified(model, "checks/a")
    monkeypatch.setattr(s3.client, "put_object", put)
    assert s3.upload_verified(model, "checks/a") == file_digest(model)


def test_a_server_that_reports_no_checksum_gets_the_object_read_back(s3_env, tmp_path):
    s3 = store()
    s3.client.put_object(Bucket=s3_env["bucket"], Key="checks/plain", Body=b"the model")  # no checksum
    assert "ChecksumSHA256" not in s3.call("head_object", Key="checks/plain", ChecksumMode="ENABLED")
    s3.verify("checks/plain", size=9, digest=hashlib.sha256(b"the model").hexdigest())  # hashed as read back
    with pytest.raises(DistilleryError, match="did not verify"):
        s3.verify("checks/plain", size=9, digest=hashlib.sha256(b"the modem").hexdigest())


def interrupted(monkeypatch, fail_on: str) -> list[str]:
    """Make the next publish fail at the first PUT of a key ending in `fail_on`; returns the keys put."""
    real_put, keys = ArtifactStore.put_json, []
    real_upload = ArtifactStore.upload_verified

    def upload(self, path, key):
        keys.append(key)
        if key.endswith(fail_on):
            raise DistilleryError("S3 went away")
        return real_upload(self, path, key)

    def put_json(self, key, data, **condition):
        keys.append(key)
        if key.endswith(fail_on):
            raise DistilleryError("S3 went away")
        return real_put(self, key, data, **condition)

    monkeypatch.setattr(ArtifactStore, "upload_verified", upload)
    monkeypatch.setattr(ArtifactStore, "put_json", put_json)
    return keys


@pytest.mark.parametrize("fail_on", ["int8.onnx", "latest.json"])  # before the manifest, and after it
def test_a_rerun_finishes_the_version_an_interrupted_publish_started(staged, s3_env, monkeypatch, fail_on):
    name = f"resumed-{fail_on.split('.')[0]}"
    with monkeypatch.context() as failing:  # undone at the end of the block, the S3 settings kept
        keys = interrupted(failing, fail_on)
        failing.setattr(publish, "new_version", lambda metrics: "v1")
        with pytest.raises(DistilleryError, match="S3 went away"):
            publish.upload(name, staged)
    monkeypatch.setattr(publish, "new_version", lambda metrics: "v-new")  # what a publish without resume would take
    s3 = store()
    receipt = publish.upload(name, staged)
    assert receipt["version"] == "v1" and keys[0].startswith(f"models/{name}/v1/")  # the version it started
    assert s3.latest(name) == "v1" and s3.versions(name) == ["v1"]
    assert {key.split("/")[2] for key in s3.keys(f"models/{name}/") if key.count("/") > 2} == {"v1"}  # no orphans
    assert not [key for key in s3.keys(f"models/{name}/") if key.endswith("unfinished.json")]
    assert publish.upload(name, staged)["version"] == "v-new"  # a finished run: a new version


def test_models_show_prints_the_versions_model_card(staged, s3_env):
    publish.upload("card-test", staged, version="v1")
    command = [sys.executable, "-m", "cli", "models", "show", "card-test"]
    result = subprocess.run(command, cwd=ROOT, env=venv_env(), capture_output=True, text=True, check=True)
    assert result.stdout.startswith("# card-test v1\n") and "## Limits" in result.stdout


def test_a_run_whose_packaged_model_changed_is_not_published(staged, s3_env, tmp_path):
    layout = Layout(tmp_path)
    shutil.copytree(staged.data, layout.data)
    layout.packaged_model.write_bytes(layout.packaged_model.read_bytes() + b" ")
    with pytest.raises(DistilleryError, match="changed since it was packaged"):
        publish.upload("changed", layout)
    assert not list(store().keys("models/changed/"))


def test_a_run_is_named_by_its_report_and_its_ship_decision(staged, tmp_path):
    layout = Layout(tmp_path)
    shutil.copytree(staged.data, layout.data)
    before = publish.run_of(layout)
    assert publish.run_of(staged) == before
    decision = ShipDecision.read(layout.ship_decision)
    decision.model_copy(update={"reason": "another ship stage's"}).write(layout.ship_decision)
    assert publish.run_of(layout) != before


@pytest.mark.parametrize("changed", ["report", "ship decision"])
def test_a_package_made_from_another_report_or_decision_is_not_published(changed, staged, s3_env, tmp_path):
    layout = Layout(tmp_path)
    shutil.copytree(staged.data, layout.data)
    if changed == "report":
        metrics = json.loads(layout.metrics.read_text())
        metrics["ensemble"]["accuracy"] -= 0.01  # the report changed after packaging
        layout.metrics.write_text(json.dumps(metrics))
    else:
        decision = ShipDecision.read(layout.ship_decision)
        decision.model_copy(update={"temperature": 2 * decision.temperature}).write(layout.ship_decision)
    with pytest.raises(DistilleryError, match="packaged from another report, ship decision or export"):
        publish.upload("stale", layout)
    assert not list(store().keys("models/stale/"))


def test_download_of_a_missing_object_is_one_paragraph(staged, s3_env, tmp_path):
    publish.upload("gone", staged, version="v1")
    store().call("delete_object", Key="models/gone/v1/models/int8.onnx")
    command = [sys.executable, "-m", "cli", "models", "download", "gone", "v1", "--dest", str(tmp_path / "d")]
    result = subprocess.run(command, cwd=ROOT, env=venv_env(), capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "S3 refused download_file" in result.stderr and s3_env["endpoint"] in result.stderr
    assert not (tmp_path / "d").exists()

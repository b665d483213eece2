"""The S3 model store against a real SeaweedFS server: publish, list, show, download with
checksums; clear errors for wrong credentials, a missing bucket, tampered objects, bad names."""

import json
import shutil

import psutil
import pytest

from distillery.errors import DistilleryError
from distillery.files import file_digest
from project.config import PublishConfig
from project.layout import Layout
from project.store import ArtifactStore, S3Settings
from tasks import publish


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
    shipped = manifest["lineage"]["metrics"]["shipped"]["model"]  # the deployable model under a fixed name
    assert entries["model.onnx"]["sha256"] == file_digest(staged.export / f"{shipped}.onnx")
    lineage = manifest["lineage"]
    assert lineage["dataset"]["md5"] == json.loads(staged.metrics.read_text())["dataset"]["md5"]
    assert lineage["params"]["ingest"]["source"] == "digits" and lineage["packages"]["torch"]
    assert "data_docs/index.html" in {e["path"] for e in manifest["files"]}

    publish.upload("digits-student", staged, version="v2")
    assert s3.versions("digits-student") == ["v1", "v2"] and s3.latest("digits-student") == "v2"
    with pytest.raises(DistilleryError, match="already published"):
        publish.upload("digits-student", staged, version="v2")


def test_publish_stage_writes_a_receipt(staged, s3_env, monkeypatch, tmp_path):
    layout = Layout(tmp_path)  # the receipt is written: a copy, as other workers read the shared run
    shutil.copytree(staged.data, layout.data)
    receipt = publish.run(PublishConfig(model_name="stage-test"), layout)
    assert receipt["published"] and store().versions("stage-test") == [receipt["version"]]
    assert json.loads(layout.published.read_text()) == receipt
    for name in ("DISTILLERY_BUCKET", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name)
    assert publish.run(PublishConfig(model_name="stage-test"), layout)["published"] is False
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
        publish.upload("digits-student", Layout(tmp_path))
    assert store().versions("digits-student") in ([], ["v1", "v2"])  # nothing new from this test


def test_s3_server_listens_on_loopback_only(s3_server):
    addresses = {
        c.laddr.ip for c in psutil.Process(s3_server["pid"]).net_connections("inet") if c.status == psutil.CONN_LISTEN
    }
    assert addresses and addresses <= {"127.0.0.1"}

"""Retraining on new data: the ingest source is an S3 prefix imported with `dvc import-url`.
A flow run with no new objects there reruns nothing and publishes nothing; new objects lead the
next run to retrain and publish a new version whose manifest names the new dataset, promoted when it is as good
as the one before; a retrain on data with a third of its labels shuffled is published and not promoted, and the
alert webhook is told why."""

import io

import boto3
import numpy as np
import yaml
from prefect.artifacts import Artifact
from sklearn.datasets import load_digits

from flows import alerts
from flows.pipeline import distillery_flow
from project.config import PipelineParams
from project.layout import Layout
from project.store import ArtifactStore, S3Settings
from tasks import NAMES
from tasks.report import dvc_md5
from tests.conftest import TINY, copy_project
from tests.test_pipeline import dvc

PREFIX = "retrain/incoming"
PARAMS = {
    **TINY,
    "ingest": {"source": "npz", "path": "data/source/incoming"},
    "publish": {"model_name": "retrain-student"},
}


def land_shard(name: str, x: np.ndarray, y: np.ndarray) -> None:
    """New data arriving: one .npz object under the watched S3 prefix."""
    body = io.BytesIO()
    np.savez(body, x=x, y=y)
    boto3.session.Session().client("s3").put_object(Bucket="distillery", Key=f"{PREFIX}/{name}", Body=body.getvalue())


def test_new_objects_under_the_s3_prefix_retrain_and_none_is_a_no_op(tmp_path, prefect_server, s3_env, webhook):
    alerts.install(webhook.url)
    digits = load_digits()
    x, y = np.round(digits.images * (255 / 16)).astype(np.uint8), digits.target
    land_shard("batch-000.npz", x[:1400], y[:1400])
    project = copy_project(tmp_path, PARAMS)
    dvc(project, "remote", "modify", "--local", "store", "endpointurl", s3_env["endpoint"])
    dvc(project, "import-url", f"s3://distillery/{PREFIX}", "data/source/incoming")
    params = PipelineParams.model_validate(PARAMS)
    layout = Layout(project)
    store = ArtifactStore(S3Settings.from_env())

    assert distillery_flow(params=params, root=str(project))["ran"] == list(NAMES)
    first = store.latest("retrain-student")
    first_md5 = store.manifest_or_none("retrain-student", first)["lineage"]["dataset"]["md5"]

    assert distillery_flow(params=params, root=str(project))["ran"] == []  # no new objects: a no-op
    assert store.versions("retrain-student") == [first]

    land_shard("batch-001.npz", x[1400:], y[1400:])
    assert distillery_flow(params=params, root=str(project))["ran"] == list(NAMES)
    second = store.latest("retrain-student")
    assert store.versions("retrain-student") == [first, second]
    dataset = store.manifest_or_none("retrain-student", second)["lineage"]["dataset"]
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    recorded = next(o["md5"] for o in lock["stages"]["ingest"]["outs"] if o["path"] == "data/raw")
    assert dataset["md5"] == dvc_md5(layout.raw) == recorded != first_md5  # the hash DVC itself recorded
    assert dataset["n_train"] + dataset["n_val"] + dataset["n_test"] == len(y)
    assert sorted(p.name for p in (project / "data/source/incoming").iterdir()) == ["batch-000.npz", "batch-001.npz"]
    assert store.manifest("retrain-student", second)["promotion"]["champion"] == first

    shuffled = y.copy()
    third = np.random.default_rng(0).choice(len(y), len(y) // 3, replace=False)
    shuffled[third] = np.random.default_rng(1).permutation(shuffled[third])  # a broken upstream export
    land_shard("batch-000.npz", x[:1400], shuffled[:1400])
    land_shard("batch-001.npz", x[1400:], shuffled[1400:])
    state = distillery_flow(params=params, root=str(project), return_state=True)
    third_version = store.versions("retrain-student")[-1]
    promotion = store.manifest("retrain-student", third_version)["promotion"]
    assert state.result()["ran"] == list(NAMES) and third_version != second
    assert not promotion["promoted"] and "below the floor" in promotion["reason"]
    assert store.latest("retrain-student") == second
    assert state.message == f"published retrain-student {third_version}, not promoted: {promotion['reason']}"
    assert f"{third_version}: **not promoted**" in Artifact.get("distillery-promotion").data
    (message,) = webhook.wait_for(1)  # the two promoted runs sent none
    assert message["text"] == (
        f"Distillery model not promoted: retrain-student {third_version} was published and not promoted: "
        f"{promotion['reason']}. Users still get {second}."
    )

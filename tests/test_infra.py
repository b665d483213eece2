"""The production layouts cannot run here (no Docker engine, no Kubernetes cluster): check them
statically. Compose: services, ports, secrets. Kubernetes: every object read into the Kubernetes
client's models, the DaskCluster against the Dask operator's own schema, and the work pool's job
template rendered for the k8s deployment as the Prefect worker renders it."""

import asyncio
import importlib
import json
import uuid
from pathlib import Path

import dask_kubernetes
import yaml
from jsonschema import Draft7Validator, validate
from kubernetes.client import ApiClient
from prefect import Flow
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.schedules import CronSchedule
from prefect_kubernetes.worker import KubernetesWorker, KubernetesWorkerJobConfiguration
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from flows.runners import RunnerConfig
from tests.conftest import ROOT


def test_compose_file_is_complete_and_binds_loopback():
    compose = yaml.safe_load((ROOT / "infra/compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "prefect-server", "s3", "worker"}
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port
    database_url = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert database_url.startswith("postgresql+asyncpg://") and "@postgres:" in database_url
    assert services["worker"]["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # secrets come from outside, never literals
        assert services["worker"]["environment"][name].startswith("${")
    assert (ROOT / services["worker"]["build"]["dockerfile"]).exists()


def test_prefect_yaml_deployments_point_at_the_flow():
    config = yaml.safe_load((ROOT / "infra/prefect.yaml").read_text())
    compose = yaml.safe_load((ROOT / "infra/compose.yaml").read_text())
    for deployment in config["deployments"]:
        path, name = deployment["entrypoint"].split(":")
        flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)
        assert isinstance(flow, Flow)
        assert set(deployment["parameters"]) <= set(flow.parameters.properties)
        for schedule in deployment["schedules"]:
            CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
        assert deployment["concurrency_limit"] == 1
    assert "--pool distillery " in compose["services"]["worker"]["command"]  # the compose worker serves nightly


K8S = ROOT / "infra" / "k8s"
MODELS = {
    "Namespace": "V1Namespace",
    "PersistentVolumeClaim": "V1PersistentVolumeClaim",
    "Job": "V1Job",
    "ServiceAccount": "V1ServiceAccount",
    "Role": "V1Role",
    "RoleBinding": "V1RoleBinding",
    "Deployment": "V1Deployment",
    "PodSpec": "V1PodSpec",
    "ServiceSpec": "V1ServiceSpec",
}


def round_trip(document: dict, kind: str) -> dict:
    """`document` read into the Kubernetes client's model of `kind` and written back: a misspelled or
    misplaced field is dropped, a missing required one raises, so equality means a valid object."""
    client = ApiClient()
    return client.sanitize_for_serialization(client.deserialize(json.dumps(document), MODELS[kind], "application/json"))


def manifests() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())]


def prefect_yaml_deployment(name: str) -> dict:
    config = yaml.safe_load((ROOT / "infra/prefect.yaml").read_text())
    return next(d for d in config["deployments"] if d["name"] == name)


def test_kubernetes_manifests_are_valid_objects_in_one_namespace():
    documents = [doc for doc in manifests() if doc["kind"] != "DaskCluster"]
    assert {doc["kind"] for doc in documents} == {
        "Namespace",
        "PersistentVolumeClaim",
        "Job",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Deployment",
    }
    for doc in documents:
        assert round_trip(doc, doc["kind"]) == doc, doc["metadata"]["name"]
        assert doc["metadata"].get("namespace", doc["metadata"]["name"]) == "distillery"
    worker = next(doc for doc in documents if doc["kind"] == "Deployment")
    command = worker["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:3] == ["prefect", "worker", "start"] and "kubernetes" in command
    assert command[command.index("--pool") + 1] == prefect_yaml_deployment("nightly-k8s")["work_pool"]["name"]


def test_dask_cluster_matches_the_operator_schema_and_the_deployment():
    def retrieve(uri: str) -> Resource:
        if uri.startswith("python://dask_kubernetes/"):
            path = Path(dask_kubernetes.__file__).parent / uri.removeprefix("python://dask_kubernetes/")
            return DRAFT7.create_resource(yaml.safe_load(path.read_text()))
        kinds = ("PodSpec", "ServiceSpec")  # checked against the Kubernetes models below
        return DRAFT7.create_resource({"definitions": {f"io.k8s.api.core.v1.{k}": {"type": "object"} for k in kinds}})

    crd = yaml.safe_load(
        (Path(dask_kubernetes.__file__).parent / "operator/customresources/daskcluster.yaml").read_text()
    )
    assert crd["spec"]["names"]["kind"] == "DaskCluster"
    version = crd["spec"]["versions"][0]
    cluster = next(doc for doc in manifests() if doc["kind"] == "DaskCluster")
    assert cluster["apiVersion"] == f"{crd['spec']['group']}/{version['name']}"
    Draft7Validator(version["schema"]["openAPIV3Schema"], registry=Registry(retrieve=retrieve)).validate(cluster)
    scheduler, worker = cluster["spec"]["scheduler"], cluster["spec"]["worker"]
    for spec, kind in (
        (scheduler["spec"], "PodSpec"),
        (scheduler["service"], "ServiceSpec"),
        (worker["spec"], "PodSpec"),
    ):
        assert round_trip(spec, kind) == spec

    container = worker["spec"]["containers"][0]
    assert {"name": "workspace", "mountPath": "/workspace"} in container["volumeMounts"]
    assert any(e["name"] == "PREFECT_API_URL" for e in container["env"])
    runner = RunnerConfig.model_validate(prefect_yaml_deployment("nightly-k8s")["parameters"]["runner"])
    service = f"{cluster['metadata']['name']}-scheduler"  # the operator's name for the scheduler's service
    assert runner.dask_address.startswith(f"tcp://{service}.distillery.")


def test_work_pool_template_renders_the_k8s_deployment_into_a_valid_job():
    template = json.loads((K8S / "base-job-template.json").read_text())
    assert template["variables"] == KubernetesWorker.get_default_base_job_template()["variables"]
    deployment = prefect_yaml_deployment("nightly-k8s")
    variables = deployment["work_pool"]["job_variables"]
    validate(variables, template["variables"])
    config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, variables))
    config.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="nightly-run"))  # as the worker does
    job = config.job_manifest
    assert round_trip(job, "Job") == job
    pod = job["spec"]["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "distillery-workspace"
    assert pod["containers"][0]["image"] == variables["image"] and job["metadata"]["namespace"] == "distillery"
    assert deployment["parameters"]["root"].startswith(pod["containers"][0]["volumeMounts"][0]["mountPath"] + "/")
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "distillery-s3"}}]  # credentials: a Secret
    assert not any("SECRET" in e["name"] for e in pod["containers"][0]["env"])

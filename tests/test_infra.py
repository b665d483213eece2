"""The production layout cannot run here (no Docker engine): check it statically."""

import importlib

import yaml
from prefect import Flow
from prefect.client.schemas.schedules import CronSchedule

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
        assert f"--pool {deployment['work_pool']['name']}" in compose["services"]["worker"]["command"]

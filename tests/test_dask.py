"""Teachers on a Dask cluster (prefect-dask's DaskTaskRunner): a local cluster of 2 worker
processes trains them with the same results as one after another in one process, and the
runner choice reaches the flow from the command line."""

import argparse
from pathlib import Path

import psutil
import pytest
import torch
from prefect import flow
from pydantic import ValidationError

from cli.flow import flow_runner
from distillery import checkpoint
from distillery.files import read_json
from flows.runners import RunnerConfig, cluster_kwargs, teacher_map
from project.layout import Layout
from tasks import stages_through, train_teachers
from tests.conftest import tiny_params

TWO_WORKERS = RunnerConfig(kind="dask", dask_cluster_kwargs={"n_workers": 2, "threads_per_worker": 1})


@flow
def teacher_stage(root: str, runner: RunnerConfig) -> dict[str, dict]:
    layout = Layout(Path(root))
    train_teachers.run(tiny_params().teachers, tiny_params().augment, layout, map_fn=teacher_map(runner))
    return {f.stem: read_json(f) for f in sorted(layout.teachers.glob("*.json"))}


def validated_workspace(root) -> Layout:
    layout = Layout(root)
    for stage in stages_through("validate"):
        stage.call(tiny_params(), layout)
    return layout


@pytest.mark.e2e
def test_teachers_on_two_dask_workers_match_one_after_another(tmp_path, prefect_server):
    on_dask = validated_workspace(tmp_path / "dask")
    in_turn = validated_workspace(tmp_path / "local")
    remote = teacher_stage(str(on_dask.root), TWO_WORKERS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as on each Dask worker: the same arithmetic, so the same numbers
    try:
        local = teacher_stage(str(in_turn.root), RunnerConfig())
    finally:
        torch.set_num_threads(threads)

    assert list(remote) == list(local) == ["0_wide_cnn", "1_small_resnet"]
    processes = {r["process"] for r in remote.values()}
    assert len(processes) == 2 and not processes & {r["process"] for r in local.values()}  # both workers, not here
    for name in local:
        assert remote[name]["val_accuracy"] == local[name]["val_accuracy"]
        assert remote[name]["history"] == local[name]["history"]
        a = checkpoint.load(on_dask.teachers / f"{name}.safetensors")[0].state_dict()
        b = checkpoint.load(in_turn.teachers / f"{name}.safetensors")[0].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(on_dask.teachers.parent.glob(".teachers.*"))  # the staging folder became the output


def cli_args(**given) -> argparse.Namespace:
    return argparse.Namespace(
        **{"dask_address": None, "dask_cluster": None, "dask_workers": None, "debug": False, **given}
    )


def test_runner_choice_from_the_command_line():
    assert flow_runner(cli_args()) == RunnerConfig()
    assert flow_runner(cli_args(dask_address="tcp://10.0.0.5:8786")) == RunnerConfig(
        kind="dask", dask_address="tcp://10.0.0.5:8786"
    )
    assert flow_runner(cli_args(dask_cluster="local", dask_workers=2)) == RunnerConfig(
        kind="dask", dask_cluster_kwargs={"n_workers": 2}
    )
    assert (
        flow_runner(cli_args(dask_cluster="dask_kubernetes.operator.KubeCluster")).dask_cluster_class
        == "dask_kubernetes.operator.KubeCluster"
    )
    with pytest.raises(SystemExit) as refused:
        flow_runner(cli_args(dask_address="tcp://10.0.0.5:8786", dask_workers=2))
    assert refused.value.code == 2


def test_runner_settings_must_agree():
    with pytest.raises(ValidationError, match="need kind: dask"):
        RunnerConfig(dask_address="tcp://10.0.0.5:8786")
    with pytest.raises(ValidationError, match="not both"):
        RunnerConfig(kind="dask", dask_address="tcp://h:8786", dask_cluster_class="distributed.LocalCluster")


def test_a_temporary_local_cluster_listens_on_loopback_only():
    from distributed import LocalCluster

    here = psutil.Process()
    before = set(here.children(recursive=True))
    with LocalCluster(**cluster_kwargs(TWO_WORKERS)):
        processes = [here, *(set(here.children(recursive=True)) - before)]  # the scheduler runs in this one
        listening = {s.laddr.ip for p in processes for s in p.net_connections("tcp") if s.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}

"""Where the teachers train: in the flow's process one after another (default), or each as a task
on a Dask cluster through prefect-dask's DaskTaskRunner. Weights never travel as pickles: each
worker writes its teacher's safetensors to the shared workspace and returns only its metrics."""

from collections.abc import Callable, Iterable
from typing import Any, Literal

import dask
from prefect import task
from pydantic import BaseModel, ConfigDict, Field, model_validator


class RunnerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["local", "dask"] = Field(
        "local",
        description=(
            "local: each teacher in turn in the flow's process; dask: all teachers at once, one task each, on Dask "
            "workers that see this workspace's folder (same machine or a shared file system)"
        ),
    )
    dask_address: str | None = Field(None, description="An existing Dask scheduler, e.g. tcp://10.0.0.5:8786")
    dask_cluster_class: str | None = Field(
        None,
        description=(
            "Without an address: start a temporary cluster of this class for the run, e.g. "
            "dask_kubernetes.operator.KubeCluster (default: distributed.LocalCluster on this machine)"
        ),
    )
    dask_cluster_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description=('Arguments for the temporary cluster, e.g. {"n_workers": 2, "threads_per_worker": 1}'),
    )

    @model_validator(mode="after")
    def one_cluster(self):
        if self.dask_address and (self.dask_cluster_class or self.dask_cluster_kwargs):
            raise ValueError("give either dask_address (an existing scheduler) or a cluster to start, not both")
        if self.kind == "local" and (self.dask_address or self.dask_cluster_class or self.dask_cluster_kwargs):
            raise ValueError("the dask_* settings need kind: dask")
        return self


@task(name="train_teacher", task_run_name="train_teacher-{index}")
def train_teacher_task(train_one: Callable[[int], dict], index: int) -> dict:
    return train_one(index)


def in_turn(train_one: Callable[[int], dict], indices: Iterable[int]) -> list[dict]:
    """Each teacher as its own task run, in this thread. Not on a thread pool: torch in worker
    threads ran 1.35x slower here, and every later stage 1.8x slower while those threads lived."""
    return [train_teacher_task(train_one, i) for i in indices]


def prefect_api_url() -> str:
    """The Prefect API this flow reports to, the temporary server's included."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if url:
        return url
    from prefect.server.api.server import SubprocessASGIServer

    return SubprocessASGIServer().api_url  # the running temporary server (one per process)


def without_malloc_trim() -> dict:
    """Dask settings that keep one thread per worker but drop Dask's MALLOC_TRIM_THRESHOLD_=65536,
    which made torch training 2.1x slower in a worker (2 epochs of the wide CNN: 8.7 s vs 4.1 s in
    one thread here)."""
    spawn = {
        k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ").items() if k != "MALLOC_TRIM_THRESHOLD_"
    }
    return {"distributed.nanny.pre-spawn-environ": spawn}


def worker_environment() -> dict:
    """Dask settings for the workers this run starts: report to the flow's Prefect API, no malloc trim."""
    return {"distributed.nanny.environ": {"PREFECT_API_URL": prefect_api_url()}, **without_malloc_trim()}


def cluster_kwargs(config: RunnerConfig) -> dict[str, Any]:
    """The temporary cluster's arguments; a LocalCluster listens on 127.0.0.1 only (its dashboard
    would otherwise bind every interface)."""
    if config.dask_address or config.dask_cluster_class:
        return dict(config.dask_cluster_kwargs)
    return {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:8787", **config.dask_cluster_kwargs}


def on_dask(config: RunnerConfig) -> Callable[[Callable[[int], dict], Iterable[int]], list[dict]]:
    """A map function that trains every teacher at once, each a task on the Dask cluster. Workers
    that this run starts report to the flow's Prefect API (workers of an existing scheduler need
    PREFECT_API_URL in their environment)."""

    def map_teachers(train_one: Callable[[int], dict], indices: Iterable[int]) -> list[dict]:
        from prefect_dask import DaskTaskRunner

        runner = DaskTaskRunner(
            address=config.dask_address,
            cluster_class=config.dask_cluster_class,
            cluster_kwargs=cluster_kwargs(config) or None,
        )
        with dask.config.set(worker_environment()), runner:
            futures = [runner.submit(train_teacher_task, {"train_one": train_one, "index": i}) for i in indices]
            return [future.result() for future in futures]

    return map_teachers


def teacher_map(config: RunnerConfig) -> Callable[[Callable[[int], dict], Iterable[int]], list[dict]]:
    return on_dask(config) if config.kind == "dask" else in_turn

"""The Prefect flow: the same stage functions as dvc.yaml, in the same order, as tasks.

Inside a DVC project the flow first fetches new data for an ingest source that is a DVC import
(`dvc update`), then asks DVC which stages are stale, runs only those, and commits each one, so
that `dvc status` is clean and `dvc repro` has nothing to do afterwards; with an S3 store
configured it ends with `dvc push`.
"""

import time
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from distillery.errors import DistilleryError
from distillery.files import read_json
from flows import alerts
from flows.dvc_sync import DvcTracker
from flows.dvc_yaml import dvc_yaml
from flows.runners import RunnerConfig, teacher_map
from project import report_markdown
from project.config import PipelineParams, read_params_file
from project.layout import Layout
from project.ship_decision import ShipDecision
from project.store import S3Settings
from tasks import stages

DEFAULT_PARAMS = PipelineParams()
DEFAULT_RUNNER = RunnerConfig()


def sync_params_file(params: PipelineParams, layout: Layout) -> None:
    """Make params.yaml list every value this run uses, so DVC's record of the run is true."""
    current = read_params_file(layout.params) if layout.params.exists() else None
    if current != params.to_yaml_dict():
        layout.params.write_text(yaml.safe_dump(params.to_yaml_dict(), sort_keys=False))
        get_run_logger().warning("params.yaml rewritten with this run's complete parameters")


def publish_artifacts(layout: Layout) -> None:
    metrics = read_json(layout.metrics)
    create_table_artifact(
        report_markdown.table_rows(metrics, ShipDecision.read(layout.ship_decision).model),
        key="distillery-metrics",
        description="Accuracy, size and latency of every model",
    )
    create_table_artifact(
        report_markdown.kept_rows(metrics),
        key="distillery-ensemble-and-student",
        description="What the ensemble gave, what the student kept: intervals, robustness, calibration, agreement",
    )
    if metrics["eval_sets"]:
        create_table_artifact(
            [
                {"set": name} | row
                for name, found in metrics["eval_sets"].items()
                for row in report_markdown.set_rows(metrics, found)
            ],
            key="distillery-eval-sets",
            description="Every model off the test split, on each of report.eval_sets",
        )
    create_markdown_artifact(layout.report.read_text(), key="distillery-report", description="Distillery report")
    if layout.model_card.exists():
        create_markdown_artifact(
            layout.model_card.read_text(), key="distillery-model-card", description="The shipped model's card"
        )
    create_link_artifact(
        layout.data_docs_index.as_uri(),
        link_text="Data Docs",
        key="distillery-data-docs",
        description="great-expectations validation results",
    )
    receipt = read_json(layout.published) if layout.published.exists() else {}
    if receipt.get("published"):
        create_link_artifact(
            S3Settings.from_env().url(receipt["manifest"]),
            key="distillery-model",
            link_text=f"{receipt['name']} {receipt['version']}",
            description="Manifest of the published model version",
        )
        create_markdown_artifact(
            promotion_markdown(receipt), key="distillery-promotion", description="The promotion gate's decision"
        )


def promotion_markdown(receipt: dict) -> str:
    """The promotion gate's decision on the published version, with its figures."""
    decided = receipt["promotion"]
    verdict = "promoted" if decided["promoted"] else "**not promoted**"
    lines = [
        f"# {receipt['name']} {receipt['version']}: {verdict}",
        "",
        f"{decided['reason']}.",
        "",
        "| images | n | candidate | champion | difference (95% interval), points |",
        "|---|---:|---:|---:|---|",
    ]
    for images, figures in decided["sets"].items():
        champion, paired = "-", "-"
        if "champion" in figures:
            low, high = (100 * v for v in figures["interval"])
            champion = f"{figures['champion']:.2%}"
            paired = f"{100 * figures['difference']:+.2f} [{low:+.2f}, {high:+.2f}]"
        lines.append(f"| {images} | {figures['images']} | {figures['candidate']:.2%} | {champion} | {paired} |")
    return "\n".join(lines) + "\n"


def outcome(receipt: dict, ran: list[str]) -> str:
    """The flow run's final message: what was published (the publish stage's `receipt`, {} where it did not run),
    and whether it was promoted and why."""
    if "publish" not in ran:
        return "the published version is up to date" if ran else "no new data: nothing ran"
    if not receipt["published"]:
        return f"not published: {receipt['reason']}"
    decided = receipt["promotion"]
    verdict = "promoted" if decided["promoted"] else "not promoted"
    return f"published {receipt['name']} {receipt['version']}, {verdict}: {decided['reason']}"


@task(name="update_source", cache_policy=NO_CACHE)  # its input is an open DVC repo
def update_source(tracker: DvcTracker, path: Path) -> None:
    """Fetch new objects for an ingest source that is a DVC import (e.g. an S3 prefix)."""
    changed = tracker.update_import(path)
    if changed is not None:
        get_run_logger().info("ingest source %s: %s", path, "new data fetched" if changed else "no new data")


def unpublished(layout: Layout) -> bool:
    """A finished run that was not published, now that a store is configured (e.g. after `make up`)."""
    if not layout.published.exists() or not S3Settings.from_env().configured:
        return False
    return not read_json(layout.published)["published"]


@flow(name="distillery", log_prints=True)
def distillery_flow(
    params: PipelineParams = DEFAULT_PARAMS,
    root: str = ".",
    update_data: bool = True,
    runner: RunnerConfig = DEFAULT_RUNNER,
) -> dict:
    """Ingest, validate, train teachers, distil, prune, quantize, export, report and publish (and promote, if the
    gate lets it: the run's final message says).

    With `update_data`, an ingest source tracked by `dvc import-url` is updated first: a run
    with no new data reruns nothing and publishes nothing new. `runner` says where the teachers
    train: in this process one after another, or all at once on a Dask cluster.
    """
    layout = Layout(Path(root).resolve())
    with layout.lock():
        result = run_stages(params, layout, update_data, runner)
    receipt = read_json(layout.published) if "publish" in result["ran"] else {}
    if receipt.get("published") and not receipt["promotion"]["promoted"]:
        alerts.announce_not_promoted(receipt)
    return Completed(message=outcome(receipt, result["ran"]), data=result)


def require_current_dvc_yaml(layout: Layout) -> None:
    """DVC decides which stages are stale from dvc.yaml: one that differs from the stage declarations would make
    the flow skip stages whose code or inputs changed."""
    if (layout.root / "dvc.yaml").read_text() != dvc_yaml():
        raise DistilleryError(
            f"{layout.root / 'dvc.yaml'} differs from the stage declarations in tasks/ (edited, or made by another "
            "version of the code): run `distillery dvc-yaml` to write it anew, then rerun. Nothing was run."
        )


def run_stages(params: PipelineParams, layout: Layout, update_data: bool, runner: RunnerConfig) -> dict:
    logger = get_run_logger()
    tracker = DvcTracker.for_root(layout.root)
    if tracker:
        require_current_dvc_yaml(layout)
        sync_params_file(params, layout)
    ran = {}
    try:
        if tracker and update_data and params.ingest.source in ("folder", "npz"):
            update_source(tracker, layout.root / params.ingest.path)
        for stage in stages():
            name = stage.name
            if tracker and tracker.is_fresh(name) and not (name == "publish" and unpublished(layout)):
                logger.info("stage %s is up to date (dvc status); skipped", name)
                continue
            started = time.monotonic()
            if name == "train_teachers":  # each teacher is a task run of its own
                stage.call(params, layout, map_fn=teacher_map(runner))
            else:
                task(stage.run, name=name)(*stage.configs(params), layout)
            ran[name] = round(time.monotonic() - started, 1)
            logger.info("stage %s done in %.1f s", name, ran[name])
            if tracker:
                tracker.commit(name)
        if tracker and S3Settings.from_env().configured:
            logger.info("dvc push: %d files sent to the S3 remote", tracker.push())
    finally:
        if tracker:
            tracker.close()
    publish_artifacts(layout)
    return {"ran": list(ran), "seconds": ran, "metrics": str(layout.metrics)}

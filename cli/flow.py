"""`distillery run` and `distillery serve`: the pipeline as a Prefect flow, once or as a scheduled deployment;
`distillery dvc-yaml`: the same pipeline as dvc.yaml."""

import argparse
import logging
import os
import sys
from pathlib import Path

from distillery.errors import DistilleryError
from distillery.files import read_json
from project.config import PipelineParams, load_params
from project.layout import Layout
from project.user_errors import user_errors


def prefect_environment(root: Path) -> None:
    """Defaults for a local run: state under .distillery/, no telemetry, a patient first start.
    With PREFECT_API_URL unset, Prefect starts a temporary local server for the run."""
    state = root / ".distillery"
    defaults = {
        "PREFECT_HOME": str(state / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "DVC_NO_ANALYTICS": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "distillery",
        "DASK_LOGGING__DISTRIBUTED": "warning",  # Dask's per-worker chatter, here and in the workers
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)


def hide_user_error_tracebacks() -> None:
    """Log a DistilleryError by its message alone, whichever logger or handler emits it."""
    make_record = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        if record.exc_info and isinstance(record.exc_info[1], DistilleryError):
            record.exc_info = None
        return record

    logging.setLogRecordFactory(factory)


def flow_params(args: argparse.Namespace) -> PipelineParams:
    """Check the params file (a bad one leaves nothing behind), then set up Prefect's environment and
    our progress logging."""
    with user_errors(args.debug, str(args.params)):
        params = load_params(args.params)
    prefect_environment(args.root.resolve())
    logging.getLogger("distillery").setLevel(logging.INFO)
    return params


def flow_runner(args: argparse.Namespace):
    """Where the teachers train: --dask-address (an existing scheduler) or --dask-cluster (a
    temporary cluster of that class for the run); neither: in the flow's process."""
    from flows.runners import RunnerConfig  # imports Prefect and Dask: only for the flow commands

    if not (args.dask_address or args.dask_cluster or args.dask_workers):
        return RunnerConfig()
    with user_errors(args.debug, "the command line"):
        return RunnerConfig(
            kind="dask",
            dask_address=args.dask_address,
            dask_cluster_class=None if args.dask_cluster in (None, "local") else args.dask_cluster,
            dask_cluster_kwargs={"n_workers": args.dask_workers} if args.dask_workers else {},
        )


def run(args: argparse.Namespace) -> None:
    params = flow_params(args)
    runner = flow_runner(args)
    layout = Layout(args.root.resolve())
    from flows.pipeline import distillery_flow
    from project.report_markdown import markdown_table
    from project.ship_decision import ShipDecision

    for quiet in ("dvc", "great_expectations"):
        logging.getLogger(quiet).setLevel(logging.WARNING)
    if not args.debug:
        hide_user_error_tracebacks()
    with user_errors(args.debug, str(args.params)):
        distillery_flow(params=params, root=str(layout.root), runner=runner)
    print("\n" + markdown_table(read_json(layout.metrics), ShipDecision.read(layout.ship_decision).model))
    print(f"\nReport: {layout.report}")
    if layout.packaged_model.exists():
        print(f"Shipped model: {layout.packaged_model} (card: {layout.model_card}; try `distillery predict IMAGES`)")


def serve(args: argparse.Namespace) -> None:
    """Create (or update) the deployment and serve it: scheduled runs, and runs from the UI or
    `prefect deployment run distillery/NAME --param ...`, one at a time."""
    params = flow_params(args)
    runner = flow_runner(args)
    from flows.alerts import install_from_env
    from flows.pipeline import distillery_flow

    print(install_from_env())
    distillery_flow.serve(
        name=args.name,
        cron=args.cron or None,
        global_limit=1,
        limit=1,
        parameters={"params": params.to_yaml_dict(), "root": str(args.root.resolve()), "runner": runner.model_dump()},
        description="Distillery pipeline: ensemble → distilled, pruned, int8 ONNX student",
    )


def alerts(args: argparse.Namespace) -> None:
    """Create the alert automations on the Prefect server (as `serve` does), for deployments made otherwise."""
    from flows.alerts import install_from_env

    print(install_from_env())


def write_dvc_yaml(args: argparse.Namespace) -> None:
    """Write dvc.yaml from the stage declarations; with --check, exit 1 where the file differs."""
    from flows.dvc_yaml import dvc_yaml

    path, text = args.root / "dvc.yaml", dvc_yaml()
    if not args.check:
        path.write_text(text)
        print(f"wrote {path}")
    elif not path.exists() or path.read_text() != text:
        sys.exit(f"{path} differs from the stage declarations in tasks/: run `distillery dvc-yaml`")

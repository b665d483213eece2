"""`distillery run` runs the pipeline as a Prefect flow; `distillery publish` and `distillery models`
manage the published model versions in the S3 store."""

import argparse
import logging
import os
from pathlib import Path

from distillery.errors import DistilleryError
from tasks.cli import use_local_stack, user_errors
from tasks.layout import Layout


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


def flow_params(args: argparse.Namespace):
    """Check the params file (a bad one leaves nothing behind), then set up Prefect's environment and
    our progress logging."""
    from tasks.config import load_params

    with user_errors(args.debug, str(args.params)):
        params = load_params(args.params)
    prefect_environment(args.root.resolve())
    logging.getLogger("distillery").setLevel(logging.INFO)
    return params


def flow_runner(args: argparse.Namespace):
    """Where the teachers train: --dask-address (an existing scheduler) or --dask-cluster (a
    temporary cluster of that class for the run); neither: in the flow's process."""
    from flows.runners import RunnerConfig

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
    from flows.pipeline import compress
    from tasks.report import markdown_table
    from tasks.runtime import read_json

    for quiet in ("dvc", "great_expectations"):
        logging.getLogger(quiet).setLevel(logging.WARNING)
    if not args.debug:
        hide_user_error_tracebacks()
    with user_errors(args.debug, str(args.params)):
        compress(params=params, root=str(layout.root), runner=runner)
    print("\n" + markdown_table(read_json(layout.metrics)))
    print(f"\nReport: {layout.reports / 'report.md'}")


def serve(args: argparse.Namespace) -> None:
    """Create (or update) the deployment and serve it: scheduled runs, and runs from the UI or
    `prefect deployment run distillery/NAME --param ...`, one at a time."""
    params = flow_params(args)
    runner = flow_runner(args)
    from flows.pipeline import compress

    compress.serve(
        name=args.name,
        cron=args.cron or None,
        global_limit=1,
        limit=1,
        parameters={"params": params.to_yaml_dict(), "root": str(args.root.resolve()), "runner": runner.model_dump()},
        description="Distillery pipeline: ensemble → distilled, pruned, int8 ONNX student",
    )


def publish(args: argparse.Namespace) -> None:
    from tasks import publish as publish_stage

    with user_errors(args.debug):
        print(publish_stage.upload(args.name, Layout(args.root.resolve()), version=args.version))


def models(args: argparse.Namespace) -> None:
    from tasks.publish import describe
    from tasks.s3_store import ArtifactStore, S3Settings

    with user_errors(args.debug):
        store = ArtifactStore(S3Settings.from_env())
        if args.action == "list":
            print("\n".join(store.versions(args.name)) or f"no published versions of {args.name}")
            return
        version = args.version or store.latest(args.name)
        if args.action == "show":
            manifest = store.manifest_or_none(args.name, version)
            if manifest is None:
                raise DistilleryError(f"{args.name} version {version} is not published.")
            print(describe(manifest))
        else:
            dest = args.dest or Path("downloads") / args.name / version
            store.download(args.name, version, dest)
            print(f"{args.name} {version}: downloaded and verified into {dest}")


def main(argv: list[str] | None = None) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", type=Path, default=Path("."), help="project root")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    dask = argparse.ArgumentParser(add_help=False)
    dask.add_argument("--dask-address", help="train the teachers on this Dask scheduler (e.g. tcp://HOST:8786)")
    dask.add_argument(
        "--dask-cluster",
        nargs="?",
        const="local",
        help=("train the teachers on a temporary Dask cluster of this class (default: a LocalCluster on this machine)"),
    )
    dask.add_argument("--dask-workers", type=int, help="workers of the temporary cluster")
    parser = argparse.ArgumentParser(prog="distillery", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", parents=[common, dask], help="run the whole pipeline as a Prefect flow")
    run_parser.add_argument("--params", type=Path, help="params file (default: ROOT/params.yaml)")
    serve_parser = commands.add_parser("serve", parents=[common, dask], help="serve the flow as a scheduled deployment")
    serve_parser.add_argument("--name", default="nightly", help="deployment name")
    serve_parser.add_argument("--cron", default="0 2 * * *", help="schedule (cron, server time zone); '' for none")
    serve_parser.add_argument("--params", type=Path, help="default parameters (default: ROOT/params.yaml)")
    publish_parser = commands.add_parser(
        "publish", parents=[common], help="upload the finished run to the S3 model store"
    )
    publish_parser.add_argument("--name", default="distillery-student", help="model name")
    publish_parser.add_argument("--version", help="version label (default: UTC time + dataset md5 prefix)")
    models_parser = commands.add_parser(
        "models", parents=[common], help="list, show or download published model versions"
    )
    models_parser.add_argument("action", choices=["list", "show", "download"])
    models_parser.add_argument("name", nargs="?", default="distillery-student", help="model name")
    models_parser.add_argument("version", nargs="?", help="version (default: latest)")
    models_parser.add_argument("--dest", type=Path, help="download folder")
    args = parser.parse_args(argv)
    if "params" in args and args.params is None:
        args.params = args.root / "params.yaml"
    use_local_stack(args.root.resolve())
    {"run": run, "serve": serve, "publish": publish, "models": models}[args.command](args)


if __name__ == "__main__":
    main()

"""`distillery run` runs the pipeline as a Prefect flow (`serve`: as a scheduled deployment, with the alerts
`distillery alerts` creates); `distillery dvc-yaml` writes dvc.yaml from the stage declarations; `distillery
publish` and `distillery models` manage the published model versions in the S3 store; `distillery predict`
classifies image files."""

import argparse
from pathlib import Path

from cli import flow, predict, store
from project.layout import Layout
from project.local_stack import use_local_stack


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", type=Path, default=Path("."), help="project root")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    dask = argparse.ArgumentParser(add_help=False)
    dask.add_argument("--dask-address", help="train the teachers on this Dask scheduler (e.g. tcp://HOST:8786)")
    dask.add_argument(
        "--dask-cluster",
        nargs="?",
        const="local",
        help="train the teachers on a temporary Dask cluster of this class (default: a LocalCluster on this machine)",
    )
    dask.add_argument("--dask-workers", type=int, help="workers of the temporary cluster")
    parser = argparse.ArgumentParser(prog="distillery", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run_command = commands.add_parser("run", parents=[common, dask], help="run the whole pipeline as a Prefect flow")
    run_command.add_argument("--params", type=Path, help="params file (default: ROOT/params.yaml)")
    run_command.set_defaults(handler=flow.run)

    serve_command = commands.add_parser(
        "serve", parents=[common, dask], help="serve the flow as a scheduled deployment"
    )
    serve_command.add_argument("--name", default="nightly", help="deployment name")
    serve_command.add_argument("--cron", default="0 2 * * *", help="schedule (cron, server time zone); '' for none")
    serve_command.add_argument("--params", type=Path, help="default parameters (default: ROOT/params.yaml)")
    serve_command.set_defaults(handler=flow.serve)

    alerts_command = commands.add_parser(
        "alerts",
        parents=[common],
        help="create the alert automations (failed runs, models not promoted) from DISTILLERY_ALERT_WEBHOOK",
    )
    alerts_command.set_defaults(handler=flow.alerts)

    dvc_yaml_command = commands.add_parser(
        "dvc-yaml", parents=[common], help="write ROOT/dvc.yaml from the stage declarations in tasks/"
    )
    dvc_yaml_command.add_argument("--check", action="store_true", help="only check it: exit 1 if it differs")
    dvc_yaml_command.set_defaults(handler=flow.write_dvc_yaml)

    publish_command = commands.add_parser(
        "publish", parents=[common], help="upload the finished run to the S3 model store"
    )
    publish_command.add_argument("--name", default="distillery-student", help="model name")
    publish_command.add_argument("--version", help="version label (default: UTC time + dataset md5 prefix)")
    publish_command.set_defaults(handler=store.publish)

    models_command = commands.add_parser(
        "models",
        parents=[common],
        help="list published model versions, show one's model card, download one, promote one, or roll back",
    )
    models_command.add_argument("action", choices=["list", "show", "download", "promote", "rollback"])
    models_command.add_argument("name", nargs="?", default="distillery-student", help="model name")
    models_command.add_argument("version", nargs="?", help="version (default: latest; promote: required)")
    models_command.add_argument("--dest", type=Path, help="download folder")
    models_command.add_argument(
        "--force", action="store_true", help="promote: move latest even where the promotion gate refuses (recorded)"
    )
    models_command.set_defaults(handler=store.models)

    predict_command = commands.add_parser(
        "predict", parents=[common], help="classify image files with a packaged model"
    )
    predict_command.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders of them")
    predict_command.add_argument(
        "--model", help="a .onnx file, or NAME[@VERSION] from the S3 store (default: the run in --root)"
    )
    predict_command.add_argument(
        "--top-k", type=positive, default=1, help="the most probable classes to list per image"
    )
    predict_command.add_argument("--format", choices=["table", "json", "csv"], default="table")
    predict_command.add_argument("--batch-size", type=positive, default=256, help="images per run of the model")
    predict_command.set_defaults(handler=predict.predict)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if "params" in args and args.params is None:
        args.params = Layout(args.root).params
    use_local_stack(args.root.resolve())
    args.handler(args)

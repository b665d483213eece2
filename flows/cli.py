"""`distillery run`: run the Prefect flow on params.yaml and print the report table."""

import argparse
import logging
import os
import sys
from pathlib import Path

from distillery.errors import DistilleryError
from tasks.cli import user_errors


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


def run(args: argparse.Namespace) -> None:
    root = args.root.resolve()
    prefect_environment(root)
    from tasks.config import load_params

    with user_errors(args.debug, str(args.params)):
        params = load_params(args.params)
    from flows.pipeline import compress
    from tasks.report import markdown_table
    from tasks.runtime import read_json

    logging.getLogger("distillery").setLevel(logging.INFO)
    for quiet in ("dvc", "great_expectations"):
        logging.getLogger(quiet).setLevel(logging.WARNING)
    if not args.debug:
        hide_user_error_tracebacks()
    with user_errors(args.debug, str(args.params)):
        compress(params=params, root=str(root))
    print("\n" + markdown_table(read_json(root / "data" / "reports" / "metrics.json")))
    print(f"\nReport: {root / 'data' / 'reports' / 'report.md'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="distillery", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run the whole pipeline as a Prefect flow")
    run_parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    run_parser.add_argument("--root", type=Path, default=Path("."), help="project root")
    run_parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args)


if __name__ == "__main__":
    sys.exit(main())

"""The thin command line behind `python -m tasks.<stage>`: it validates only the stage's own sections
of params.yaml (as DVC tracks only those), holds the workspace lock and prints the result as JSON."""

import argparse
import json
import logging
from pathlib import Path

from pydantic import ValidationError

from distillery.errors import DistilleryError
from project.config import WHOLE_FILE, PipelineParams, Section, read_params_file, section_schema
from project.layout import Layout
from project.local_stack import use_local_stack
from project.stage import Stage
from project.user_errors import describe_invalid, user_errors


def section_config(raw: dict, name: str) -> Section | PipelineParams:
    """Validate one section of params.yaml (defaults fill what it leaves out); WHOLE_FILE: all of it."""
    if name == WHOLE_FILE:
        return PipelineParams.model_validate(raw)
    try:
        return section_schema(name).model_validate(raw.get(name) or {})
    except ValidationError as e:
        raise DistilleryError(describe_invalid(e, "params.yaml").replace(": ", f": {name}.", 1)) from e


def configure_logging() -> None:
    """Our progress at INFO; other libraries only at WARNING."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("distillery").setLevel(logging.INFO)


def main(stage: Stage) -> None:
    """Run `stage` with its sections of params.yaml; print its result as JSON."""
    parser = argparse.ArgumentParser(prog=stage.command, description=stage.run.__doc__)
    parser.add_argument("--params", type=Path, help="params file (default: ROOT/params.yaml)")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="project root (data/ lives here)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args()
    layout = Layout(args.root.resolve())
    params_file = args.params or layout.params
    configure_logging()
    use_local_stack(layout.root)
    with user_errors(args.debug, str(params_file)):
        raw = read_params_file(params_file)
        configs = [section_config(raw, section) for section in stage.sections]
        with layout.lock():
            result = stage.run(*configs, layout)
    print(json.dumps(result, indent=2, default=str))

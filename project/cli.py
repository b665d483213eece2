"""What the command lines share (clear errors for users, the local stack's settings) and the thin
command line behind `python -m tasks.<stage>`."""

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import ValidationError

from distillery.errors import DistilleryError
from project.config import WHOLE_FILE, PipelineParams, Section, read_params_file, section_schema
from project.layout import Layout


def describe(error: ValidationError, source: str) -> str:
    """One readable paragraph from a pydantic error: each bad key, what is wrong, what was given."""
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        given = f" (got {item['input']!r})" if item["type"] != "missing" and "input" in item else ""
        problems.append(f"{key or '(top level)'}: {item['msg']}{given}")
    return f"Invalid parameters in {source}: " + "; ".join(problems) + "."


@contextmanager
def user_errors(debug: bool, source: str = "params.yaml") -> Iterator[None]:
    """Turn known problems into a one-paragraph message and exit code 2; --debug re-raises."""
    try:
        yield
    except (DistilleryError, ValidationError) as e:
        if debug:
            raise
        message = describe(e, source) if isinstance(e, ValidationError) else str(e)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def section_config(raw: dict, name: str) -> Section | PipelineParams:
    """Validate one section of params.yaml (defaults fill what it leaves out); WHOLE_FILE: all of it."""
    if name == WHOLE_FILE:
        return PipelineParams.model_validate(raw)
    try:
        return section_schema(name).model_validate(raw.get(name) or {})
    except ValidationError as e:
        raise DistilleryError(describe(e, "params.yaml").replace(": ", f": {name}.", 1)) from e


def configure_logging() -> None:
    """Our progress at INFO; other libraries only at WARNING."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("distillery").setLevel(logging.INFO)


def use_local_stack(root: Path) -> None:
    """While the local stack is up (`make up`), use its S3 store and Prefect server.
    Settings already in the environment win."""
    stack_dir = Path(os.environ.get("DISTILLERY_STACK_DIR", root / ".distillery" / "stack"))
    env_file = stack_dir / "stack.env"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            os.environ.setdefault(key, value)


def main(stage: Callable, sections: tuple[str, ...]) -> None:
    """Run `stage(*configs, layout)` with its sections of params.yaml; print its result as JSON."""
    module = sys.modules[stage.__module__].__spec__.name  # tasks.<stage>, also when run as __main__
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=stage.__doc__)
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
        configs = [section_config(raw, section) for section in sections]
        with layout.lock():
            result = stage(*configs, layout)
    print(json.dumps(result, indent=2, default=str))

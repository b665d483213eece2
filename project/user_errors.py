"""Known problems (bad params, bad data, a store that refuses) as one paragraph and exit code 2."""

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import ValidationError

from distillery.errors import DistilleryError


def describe_invalid(error: ValidationError, source: str) -> str:
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
        message = describe_invalid(e, source) if isinstance(e, ValidationError) else str(e)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)

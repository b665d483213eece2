"""While the local stack is up (`make up`), the commands use its S3 store and Prefect server."""

import os
from pathlib import Path


def use_local_stack(root: Path) -> None:
    """Load the settings `make up` wrote (stack.env); settings already in the environment win."""
    stack_dir = Path(os.environ.get("DISTILLERY_STACK_DIR", root / ".distillery" / "stack"))
    env_file = stack_dir / "stack.env"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            os.environ.setdefault(key, value)

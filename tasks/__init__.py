"""The pipeline's stages, one module each, in the order `NAMES` gives.

Each stage module declares itself once, beside its typed `run(*configs, layout)`:
`STAGE = Stage(run, reads=(Layout.raw, ...), writes=(Layout.pruned,))`. The params sections it reads are
the types of `run`'s parameters; its command is `python -m tasks.<name>`. The Prefect flow, `dvc.yaml`
(generated from these declarations by `distillery dvc-yaml`), the benchmark and the tests all run the
stages from `stages()`."""

from functools import cache
from importlib import import_module

from project.stage import Stage

NAMES = (
    "ingest",
    "validate",
    "train_teachers",
    "distill",
    "prune",
    "quantize",
    "export",
    "ship",
    "report",
    "package",
    "publish",
)


def stage(name: str) -> Stage:
    """The stage `name` (importing its module: stages import torch, great-expectations, ...)."""
    if name not in NAMES:
        raise ValueError(f"no stage {name!r}; the stages are {', '.join(NAMES)}")
    return import_module(f"{__name__}.{name}").STAGE


@cache
def stages() -> tuple[Stage, ...]:
    """Every stage, in the order they run."""
    return tuple(stage(name) for name in NAMES)


def stages_through(last: str) -> tuple[Stage, ...]:
    """The stages from the first through `last`, e.g. a run without publishing."""
    stage(last)  # a clear error for an unknown name
    return stages()[: NAMES.index(last) + 1]

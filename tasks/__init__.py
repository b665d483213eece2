"""The pipeline's stages, one module each, listed in `STAGES` in the order they run.

Each stage module has a typed `run(*configs, layout)`, `SECTIONS` (the params.yaml sections it reads, in
`run`'s order) and a `python -m tasks.<stage>` command line (what dvc.yaml runs). The Prefect flow, the
benchmark and the tests run the stages from `STAGES`; tests/test_structure.py checks it against dvc.yaml."""

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from types import ModuleType

from project.config import PipelineParams, Section
from project.layout import Layout


@dataclass(frozen=True)
class Stage:
    name: str

    @property
    def module(self) -> ModuleType:
        return import_module(f"{__name__}.{self.name}")  # on first use: stages import torch, GX, ...

    @property
    def run(self) -> Callable[..., dict]:
        return self.module.run

    @property
    def sections(self) -> tuple[str, ...]:
        return self.module.SECTIONS

    def configs(self, params: PipelineParams) -> list[Section]:
        return [params.section(name) for name in self.sections]

    def call(self, params: PipelineParams, layout: Layout, **options) -> dict:
        """Run the stage with its sections of `params`."""
        return self.run(*self.configs(params), layout, **options)


STAGES = tuple(
    Stage(name)
    for name in (
        "ingest",
        "validate",
        "train_teachers",
        "distill",
        "prune",
        "quantize",
        "export",
        "report",
        "package",
        "publish",
    )
)


def stages_through(last: str) -> tuple[Stage, ...]:
    """The stages from the first through `last`, e.g. a run without publishing."""
    names = [stage.name for stage in STAGES]
    if last not in names:
        raise ValueError(f"no stage {last!r}; the stages are {', '.join(names)}")
    return STAGES[: names.index(last) + 1]

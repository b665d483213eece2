"""What a stage is: its `run` and the paths of a run it reads and writes, declared once beside the run
(`STAGE = Stage(run, reads=..., writes=...)` in tasks/<stage>.py)."""

import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_type_hints

from project.config import PipelineParams, Section, section_name
from project.layout import Layout

PACKAGE = "tasks"  # the stages' package: stage NAME is the module tasks.NAME


@dataclass(frozen=True)
class ParamPath:
    """A path that a parameter names (relative to the project root), e.g. the ingest source `ingest.path`."""

    key: str

    def resolve(self, params: PipelineParams, layout: Layout) -> Path:
        section, key = self.key.split(".")
        return layout.root / getattr(params.section(section), key)


@dataclass(frozen=True)
class Stage:
    """A pipeline stage: its `run` and the run's paths it reads and writes (`Layout` properties). `metrics` and
    `plots` are written too; DVC shows them with `dvc metrics` and `dvc plots`. `uses` names, for a section `run`
    takes but reads only a few keys of, those keys: DVC then reruns the stage for them alone."""

    run: Callable[..., dict]
    reads: Sequence[property | ParamPath] = ()
    writes: Sequence[property] = ()
    metrics: Sequence[property] = ()
    plots: Sequence[property] = ()
    uses: Mapping[str, Sequence[str]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        module = sys.modules[self.run.__module__]  # tasks.<stage>, also when run as __main__
        return module.__spec__.name.removeprefix(f"{PACKAGE}.")

    @property
    def command(self) -> str:
        return f"python -m {PACKAGE}.{self.name}"

    @property
    def schemas(self) -> list[type[Section]]:
        """The config types `run` takes before the layout, in order."""
        hints = get_type_hints(self.run)
        required = [p for p in inspect.signature(self.run).parameters.values() if p.default is inspect.Parameter.empty]
        return [hints[p.name] for p in required[:-1]]

    @property
    def sections(self) -> tuple[str, ...]:
        """The params.yaml sections `run` takes, in order (WHOLE_FILE: all of them)."""
        return tuple(section_name(schema) for schema in self.schemas)

    @property
    def params(self) -> list[str]:
        """The params DVC tracks for the stage: each section it takes, or the keys of it that it `uses`."""
        found = []
        for name in self.sections:
            found += [f"{name}.{key}" for key in self.uses[name]] if name in self.uses else [name]
        return found

    def configs(self, params: PipelineParams) -> list[Section]:
        return [params.section(name) for name in self.sections]

    def call(self, params: PipelineParams, layout: Layout, **options) -> dict:
        """Run the stage with its sections of `params`."""
        return self.run(*self.configs(params), layout, **options)

    def read_paths(self, params: PipelineParams, layout: Layout) -> list[Path]:
        return [p.resolve(params, layout) if isinstance(p, ParamPath) else p.__get__(layout) for p in self.reads]

    def written_paths(self, layout: Layout) -> list[Path]:
        return [p.__get__(layout) for p in (*self.writes, *self.metrics, *self.plots)]

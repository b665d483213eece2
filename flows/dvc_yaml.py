"""dvc.yaml, generated from the stage declarations in tasks/ (`distillery dvc-yaml` writes it; a test fails when
the committed file differs). Each stage runs its command on the params sections its `run` takes; it depends on
what it reads and on every module of the project it imports, directly or through others, so that a change to
the code reruns every stage that runs it; its outputs are what it writes."""

import ast
from pathlib import Path

import yaml

from project.config import WHOLE_FILE
from project.layout import Layout
from project.stage import ParamPath, Stage
from tasks import stages

SOURCE = Path(__file__).resolve().parents[1]  # the project's source tree: code deps are its files
STAGE_CODE = ("distillery", "project", "tasks")  # the packages whose modules a stage runs
RELATIVE = Layout(Path())  # a run's paths relative to the project root, as dvc.yaml names them
HEADER = "# Generated from the stage declarations in tasks/ by `distillery dvc-yaml`: edit those, not this file.\n"


def imported_modules(relative: str) -> set[str]:
    """The project's own modules (as files) that module `relative` imports, inside functions too."""
    found = set()
    for node in ast.walk(ast.parse((SOURCE / relative).read_text())):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for module in modules:
            base = module.replace(".", "/")
            for path in (f"{base}.py", f"{base}/__init__.py"):
                if module.split(".")[0] in STAGE_CODE and (SOURCE / path).exists():
                    found.add(path)
    return found


def package_inits(relative: str) -> set[str]:
    """The __init__.py of each package above a module: importing the module runs them first."""
    return {
        f"{folder}/__init__.py"
        for folder in Path(relative).parents
        if folder != Path(".") and (SOURCE / folder / "__init__.py").exists()
    }


def code_deps(relative: str) -> list[str]:
    """`relative` and every project module it imports, directly or through others, with their packages."""
    seen, todo = set(), [relative]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += imported_modules(module) | package_inits(module)
    return sorted(seen)


def declared(path: property | ParamPath) -> str:
    """A declared path as dvc.yaml names it: relative to the project root, or the parameter that holds it."""
    return f"${{{path.key}}}" if isinstance(path, ParamPath) else path.__get__(RELATIVE).as_posix()


def params(stage: Stage) -> list:
    return [{"params.yaml": None} if name == WHOLE_FILE else name for name in stage.params]


def stage_entry(stage: Stage) -> dict:
    entry = {
        "cmd": stage.command,
        "deps": [*map(declared, stage.reads), *code_deps(f"tasks/{stage.name}.py")],
        "params": params(stage),
        "outs": [declared(p) for p in stage.writes],
        "metrics": [declared(p) for p in stage.metrics],
        "plots": [declared(p) for p in stage.plots],
    }
    return {key: value for key, value in entry.items() if value}


def dvc_yaml() -> str:
    """The text of dvc.yaml for the stages as declared."""
    document = {"stages": {stage.name: stage_entry(stage) for stage in stages()}}
    return HEADER + yaml.safe_dump(document, sort_keys=False, default_flow_style=None, width=100)

"""The code's shape holds: `tasks/` holds the stages and nothing else, the stage registry is what
dvc.yaml runs (names, order, commands, params sections), every output dvc.yaml declares is a path of
`Layout`, and no module outside its home names a stage output file."""

import ast
import inspect
import re
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from project.config import WHOLE_FILE, PipelineParams
from project.layout import PIPELINE_MODELS, Layout
from tasks import STAGES
from tests.conftest import ROOT

DVC_STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def dvc_sections(stage: dict) -> tuple[str, ...]:
    """dvc.yaml's params of a stage (none if absent) as section names; `params.yaml:` (all keys) is WHOLE_FILE."""
    return tuple(
        WHOLE_FILE if isinstance(item, dict) and list(item) == ["params.yaml"] else item
        for item in stage.get("params", [])
    )


def test_tasks_holds_the_stages_and_nothing_else():
    modules = {p.stem for p in (ROOT / "tasks").glob("*.py")} - {"__init__"}
    folders = {p.name for p in (ROOT / "tasks").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert modules == {stage.name for stage in STAGES} and not folders


def test_the_stage_registry_is_what_dvc_yaml_runs():
    assert [stage.name for stage in STAGES] == list(DVC_STAGES)
    for stage in STAGES:
        declared = DVC_STAGES[stage.name]
        assert declared["cmd"] == f"python -m tasks.{stage.name}"
        assert dvc_sections(declared) == stage.sections, stage.name
        assert f"tasks/{stage.name}.py" in declared["deps"]
        missing = [dep for dep in declared["deps"] if dep.endswith(".py") and not (ROOT / dep).exists()]
        assert not missing, f"{stage.name} depends on code files that do not exist: {missing}"


@pytest.mark.parametrize("stage", STAGES, ids=lambda stage: stage.name)
def test_each_stage_runs_on_its_sections_and_a_layout(stage):
    params = list(inspect.signature(stage.run).parameters.values())
    required = [p for p in params if p.default is inspect.Parameter.empty]
    assert [p.name for p in required][-1] == "layout" and len(required) == len(stage.sections) + 1
    configs = stage.configs(PipelineParams())
    annotations = [p.annotation for p in required[:-1]]
    assert [type(config) for config in configs] == annotations


def layout_paths(layout: Layout) -> set[Path]:
    properties = [name for name, value in vars(Layout).items() if isinstance(value, property)]
    return {getattr(layout, name) for name in properties} - {layout.root}


def test_every_dvc_output_is_a_layout_path():
    layout = Layout(Path("."))
    paths = layout_paths(layout)
    for name, stage in DVC_STAGES.items():
        for out in [*stage["outs"], *stage.get("metrics", []), *stage.get("plots", [])]:
            assert Path(out) in paths, f"{name}: {out} is not a Layout path"


HOMES = ("project/layout.py", "distillery/raw_format.py")  # where stage output file names are written
PIPELINE_CODE = ("distillery/", "project/", "tasks/", "flows/")
MODEL_FILES = (".safetensors", ".onnx")


def tracked_python(*folders: str) -> list[str]:
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [f for f in files.stdout.split() if f.startswith(folders)]


def stage_output_names() -> set[str]:
    layout = Layout(Path("."))
    names = {path.name for path in layout_paths(layout) if path.suffix} - {layout.params.name}  # an input
    models = [*PIPELINE_MODELS, "teacher_0_wide_cnn"]
    names |= {layout.onnx(model).name for model in models}
    trained = [model for model in models if model not in ("ensemble",)]
    return names | {path(model).name for model in trained for path in (layout.checkpoint, layout.record)}


def file_names_in(source: str, outputs: set[str], pipeline_code: bool) -> list[str]:
    """Stage output file names a module spells out: as string literals, or (in the pipeline's code)
    as f-strings that end in a model file's suffix, like f"{name}.safetensors"."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and not re.search(r"\s", node.value):
            if node.value.rsplit("/", 1)[-1] in outputs:  # a file name or a path ending in one
                found.append(f"{node.lineno}: {node.value!r}")
        elif isinstance(node, ast.JoinedStr) and pipeline_code:
            tail = node.values[-1]
            if isinstance(tail, ast.Constant) and str(tail.value).endswith(MODEL_FILES):
                found.append(f"{node.lineno}: f-string ending {tail.value!r}")
    return found


def test_no_stage_output_file_name_outside_its_home():
    outputs = stage_output_names()
    found = []
    for relative in tracked_python("distillery/", "project/", "tasks/", "flows/", "bench/", "infra/"):
        if relative not in HOMES:
            source = (ROOT / relative).read_text()
            found += [f"{relative}:{hit}" for hit in file_names_in(source, outputs, relative.startswith(PIPELINE_CODE))]
    assert not found, "stage output file names outside their home:\n" + "\n".join(found)


def test_the_file_name_check_finds_literals_and_f_strings():
    outputs = stage_output_names()
    assert file_names_in('path = out / "pruned.safetensors"', outputs, pipeline_code=False)
    assert file_names_in('docs = folder / "docs/index.html"', outputs, pipeline_code=False)
    assert file_names_in('f = layout.export / f"{name}.onnx"', outputs, pipeline_code=True)
    assert not file_names_in('f = out / f"{name}.onnx"', outputs, pipeline_code=False)  # bench's own files
    assert not file_names_in('"""Writes the report: metrics and plots."""', outputs, pipeline_code=True)


def test_layout_names_every_model_file_from_the_model_name(tmp_path):
    layout = Layout(tmp_path)
    layout.teachers.mkdir(parents=True)
    for name in ("1_small_resnet", "0_wide_cnn"):
        (layout.teachers / f"{name}.safetensors").touch()
    assert layout.run_models() == [
        "teacher_0_wide_cnn",
        "teacher_1_small_resnet",
        "ensemble",
        "student_alone",
        "student_kd",
        "pruned_alone",
        "pruned",
        "int8",
    ]
    assert layout.checkpoint("teacher_0_wide_cnn") == layout.teachers / "0_wide_cnn.safetensors"
    assert layout.record("int8") == layout.qat / "qat.json"
    assert layout.onnx("pruned") == layout.export / "pruned.onnx"
    assert {field.name for field in fields(Layout)} == {"root"}  # every path derives from the root


LAYERS = {  # each layer imports only the layers before it: distillery → project → tasks → flows
    "distillery": ("project", "tasks", "flows", "bench", "prefect", "dvc", "great_expectations", "pydantic", "boto3"),
    "project": ("tasks", "flows", "bench", "prefect", "dvc"),
    "tasks": ("flows", "bench", "prefect", "dvc"),
    "flows": ("bench",),
}


def imported_packages(source: str) -> set[str]:
    """Top-level packages a module imports anywhere in it, inside functions too."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_imports_only_the_layers_below(layer):
    above = {
        relative: sorted(imported_packages((ROOT / relative).read_text()) & set(LAYERS[layer]))
        for relative in tracked_python(f"{layer}/")
    }
    assert not {k: v for k, v in above.items() if v}, f"{layer} imports a layer above it"


LOCAL = ("distillery", "project", "tasks")  # the code a stage runs (flows/ and bench/ run stages, not in them)


def local_imports(relative: str) -> set[str]:
    """The project's own modules (as files) that a module imports, inside functions too."""
    found = set()
    for node in ast.walk(ast.parse((ROOT / relative).read_text())):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for module in modules:
            base = module.replace(".", "/")
            for path in (f"{base}.py", f"{base}/__init__.py"):
                if module.split(".")[0] in LOCAL and (ROOT / path).exists():
                    found.add(path)
    return found


def package_inits(relative: str) -> set[str]:
    """The __init__.py of each package above a module: importing the module runs them first."""
    folders = Path(relative).parents
    return {
        f"{folder}/__init__.py"
        for folder in folders
        if (ROOT / folder / "__init__.py").exists() and folder != Path(".")
    }


def imported_closure(relative: str) -> set[str]:
    """`relative` and every project module it imports, directly or through others, with their packages."""
    seen, todo = set(), [relative]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += local_imports(module) | package_inits(module)
    return seen


def test_each_stage_depends_on_every_module_it_imports():
    for stage in STAGES:
        declared = {dep for dep in DVC_STAGES[stage.name]["deps"] if dep.endswith(".py")}
        imported = imported_closure(f"tasks/{stage.name}.py")
        assert declared == imported, (
            f"dvc.yaml deps of {stage.name}: missing {sorted(imported - declared)}, not imported "
            f"{sorted(declared - imported)}; the code deps are [{', '.join(sorted(imported))}]"
        )


def test_the_layer_check_sees_imports_inside_functions():
    assert imported_packages("def f():\n    from prefect import flow\n") == {"prefect"}

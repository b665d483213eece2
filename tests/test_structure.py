"""The code's shape holds: `tasks/` holds the stages and nothing else, the stage registry is what
dvc.yaml runs (names, order, commands, params sections), every output dvc.yaml declares is a path of
`Layout`, and no module outside its home names a stage output file."""

import inspect
import re
import subprocess
import sys
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
    """dvc.yaml's params of a stage as section names; `params.yaml:` (every key) is WHOLE_FILE."""
    return tuple(
        WHOLE_FILE if isinstance(item, dict) and list(item) == ["params.yaml"] else item for item in stage["params"]
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


FILE_NAME = re.compile(r"""["'/]([\w.-]+\.(safetensors|onnx|json|npy|csv|png|md))["']""")
HOMES = {  # where a stage output's file name may be written: its one home
    "project/layout.py",
    "distillery/raw_format.py",
}


def test_no_stage_output_file_name_outside_its_home():
    layout = Layout(Path("."))
    outputs = {path.name for path in layout_paths(layout) if path.suffix}
    trained = [model for model in PIPELINE_MODELS if model != "ensemble"]
    outputs |= {path(model).name for model in trained for path in (layout.checkpoint, layout.record, layout.onnx)}
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    found = []
    for relative in tracked.stdout.split():
        if relative.startswith("tests/") or relative in HOMES:
            continue
        for line_number, line in enumerate((ROOT / relative).read_text().splitlines(), 1):
            names = {match.group(1) for match in FILE_NAME.finditer(line)}
            found += [f"{relative}:{line_number}: {name}" for name in sorted(names & outputs)]
    assert not found, "stage output file names outside their home:\n" + "\n".join(found)


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
        "pruned",
        "int8",
    ]
    assert layout.checkpoint("teacher_0_wide_cnn") == layout.teachers / "0_wide_cnn.safetensors"
    assert layout.record("int8") == layout.qat / "qat.json"
    assert layout.onnx("pruned") == layout.export / "pruned.onnx"
    assert {field.name for field in fields(Layout)} == {"root"}  # every path derives from the root


LAYERS = {  # each layer imports only the layers before it: distillery → project → tasks → flows
    "distillery": ("project", "tasks", "flows", "bench", "prefect", "dvc", "great_expectations", "pydantic"),
    "project": ("tasks", "flows", "bench", "prefect", "dvc"),
    "tasks": ("flows", "bench", "prefect", "dvc"),
}


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_imports_only_the_layers_below(layer):
    modules = sorted(f"{layer}.{p.stem}" for p in (ROOT / layer).glob("*.py") if p.stem != "__init__")
    script = f"import sys\nimport {', '.join(modules)}\nprint(' '.join(sys.modules))"
    imported = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    above = sorted({name.split(".")[0] for name in imported} & set(LAYERS[layer]))
    assert not above, f"{layer} imports {above}"

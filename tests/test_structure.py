"""The code's shape holds: `tasks/` holds the stages and nothing else, each declared once (dvc.yaml is generated
from the declarations, and the committed file is what they generate), each stage reads only what an earlier stage
writes or a user brings, the layers import one way, and no module outside its home names a stage output file."""

import ast
import inspect
import re
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest

from cli.main import main
from flows.dvc_yaml import code_deps, dvc_yaml
from project.config import PipelineParams, Section
from project.layout import PIPELINE_MODELS, Layout
from project.stage import ParamPath
from tasks import NAMES, stage, stages, stages_through
from tests.conftest import ROOT


def test_tasks_holds_the_stages_and_nothing_else():
    modules = {p.stem for p in (ROOT / "tasks").glob("*.py")} - {"__init__"}
    folders = {p.name for p in (ROOT / "tasks").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert modules == set(NAMES) and not folders
    assert [s.name for s in stages()] == list(NAMES)
    assert stage("prune").command == "python -m tasks.prune"
    with pytest.raises(ValueError, match="no stage 'train'"):
        stages_through("train")


def test_the_committed_dvc_yaml_is_what_the_declarations_generate():
    assert (ROOT / "dvc.yaml").read_text() == dvc_yaml(), "dvc.yaml is stale: run `distillery dvc-yaml`"


def test_the_dvc_yaml_command_writes_the_file_and_checks_it(tmp_path, capsys):
    with pytest.raises(SystemExit, match="differs from the stage declarations"):
        main(["dvc-yaml", "--root", str(tmp_path), "--check"])  # no file yet
    main(["dvc-yaml", "--root", str(tmp_path)])
    assert (tmp_path / "dvc.yaml").read_text() == dvc_yaml() and "wrote" in capsys.readouterr().out
    main(["dvc-yaml", "--root", str(tmp_path), "--check"])
    (tmp_path / "dvc.yaml").write_text(dvc_yaml() + "# edited\n")
    with pytest.raises(SystemExit, match="run `distillery dvc-yaml`"):
        main(["dvc-yaml", "--root", str(tmp_path), "--check"])


def test_dvc_tracks_only_the_keys_a_stage_uses_of_a_section():
    assert stage("prune").params == [
        "prune",
        "distill",
        "kd",
        "ship.latency_batch",
        "measure.latency_threads",
        "augment",
    ]
    assert stage("distill").params == ["distill", "kd", "ship.max_accuracy_drop_pp", "augment"]
    assert stage("ship").params == ["ship", "measure"]


@pytest.mark.parametrize("declared", stages(), ids=lambda declared: declared.name)
def test_each_stage_runs_on_its_sections_and_a_layout(declared):
    required = [p for p in inspect.signature(declared.run).parameters.values() if p.default is p.empty]
    assert required[-1].annotation is Layout
    assert all(issubclass(schema, Section) for schema in declared.schemas)
    assert [type(config) for config in declared.configs(PipelineParams())] == declared.schemas


def test_the_sections_come_from_the_run_signature():
    assert stage("prune").sections == ("prune", "distill", "kd", "ship", "measure", "augment")
    training = {s.name for s in stages() if "augment" in s.sections}  # all that train augment alike
    assert training == {"train_teachers", "distill", "prune", "quantize"}
    assert stage("report").sections == ("all",) and stage("package").sections == ()


USER_INPUTS = (Layout.user_teachers, Layout.user_unlabeled, Layout.user_eval_sets)  # users bring them, and ingest.path


def test_each_stage_reads_only_what_a_user_brings_or_an_earlier_stage_writes():
    layout, written = Layout(Path("/run")), set()
    users = {path.__get__(layout) for path in USER_INPUTS}
    for declared in stages():
        for path in declared.reads:
            if isinstance(path, ParamPath):
                continue
            read = path.__get__(layout)
            assert read in users or any(w == read or w in read.parents or read in w.parents for w in written), (
                f"{declared.name} reads {read}, which no earlier stage writes"
            )
        outputs = set(declared.written_paths(layout))
        assert not outputs & written, f"{declared.name} writes what an earlier stage wrote"
        written |= outputs


def test_git_ignores_every_output_a_stage_writes():
    """DVC tracks them; were one not ignored, writing it would make the run's own git commit `-dirty`."""
    outputs = [path.as_posix() for declared in stages() for path in declared.written_paths(Layout(Path()))]
    found = subprocess.run(["git", "check-ignore", *outputs], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert sorted(found) == sorted(outputs)


def test_code_deps_follow_imports_inside_functions_and_package_inits():
    deps = code_deps("tasks/publish.py")
    assert {"tasks/__init__.py", "project/__init__.py", "distillery/__init__.py"} <= set(deps)
    assert "distillery/images.py" in deps  # publish imports the model card, which imports it
    assert "project/stage_cli.py" in deps  # imported inside the `if __name__ == "__main__"` block
    assert "project/predict.py" not in deps and "flows/dvc_yaml.py" not in deps


def layout_paths(layout: Layout) -> set[Path]:
    properties = [name for name, value in vars(Layout).items() if isinstance(value, property)]
    return {getattr(layout, name) for name in properties} - {layout.root}


HOMES = ("project/layout.py", "distillery/raw_format.py")  # where stage output file names are written
PIPELINE_CODE = ("distillery/", "project/", "tasks/", "flows/", "cli/")
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
    for relative in tracked_python("distillery/", "project/", "tasks/", "flows/", "cli/", "bench/", "infra/"):
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
    assert layout.record("int8") == layout.int8 / "int8.json"
    assert layout.onnx("pruned") == layout.export / "pruned.onnx"
    assert {field.name for field in fields(Layout)} == {"root"}  # every path derives from the root


LAYERS = {  # each layer imports only the layers before it: distillery → project → tasks → flows → cli
    "distillery": (
        "project",
        "tasks",
        "flows",
        "cli",
        "bench",
        "prefect",
        "dvc",
        "great_expectations",
        "pydantic",
        "boto3",
    ),
    "project": ("tasks", "flows", "cli", "bench", "prefect", "dvc"),
    "tasks": ("flows", "cli", "bench", "prefect", "dvc"),
    "flows": ("cli", "bench"),
    "cli": ("bench",),
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


def test_the_layer_check_sees_imports_inside_functions():
    assert imported_packages("def f():\n    from prefect import flow\n") == {"prefect"}

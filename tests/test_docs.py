"""The docs: the README stays short and links pages that exist, the parameters reference lists every key of
params.yaml with a description, and the results page includes every file of bench/results/."""

import importlib.util
import re
import shutil
import subprocess
import sys

from project import params_reference
from project.config import PipelineParams
from tests.conftest import ROOT

DOCS = ROOT / "docs"


def test_the_readme_is_short_and_links_pages_that_exist():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert links and all((ROOT / link).is_file() for link in links)


def test_the_parameters_reference_describes_every_key():
    page = params_reference.markdown()
    for name, schema in params_reference.sections().items():
        assert f"## `{name}`" in page
        for key in schema.model_json_schema(by_alias=True)["properties"]:
            assert params_reference.description(schema, key), f"{name}.{key} has no description"
            assert f"| `{key}` |" in page
    assert set(params_reference.sections()) == set(PipelineParams().to_yaml_dict())


def test_the_reference_gives_types_ranges_and_defaults_from_the_schema():
    page = params_reference.markdown()
    ship = page[page.index("## `ship`") : page.index("## `measure`")]
    assert "| `latency_batch` | `1` \\| `256` |  | `1` |" in ship
    assert "| `max_accuracy_drop_pp` | number | ≥ 0 | `2.0` | Accuracy floor" in ship
    distill = page[page.index("## `distill`") : page.index("## `prune`")]
    assert "| `widths` | list of integer | each > 0, at least 1 | `[16, 32, 64, 64]` |" in distill
    assert "| `epochs` | integer | > 0 | `20` | Passes over the training images |" in distill  # inherited
    assert "| `target_latency_ms` | number or null | > 0 | `null` |" in page
    assert "| `image_size` | [integer, integer] or null | each > 0 | `null` |" in page
    onnx_entry = page[page.index("## `teachers.models[]: {onnx: ...}`") :]
    assert "| `onnx` | path |  | required |" in onnx_entry and "| `scaling` |" in onnx_entry  # inherited keys too


def test_the_results_page_includes_every_benchmark_result():
    page = (DOCS / "results.md").read_text()
    included = set(re.findall(r"<!-- include (bench/results/[\w.-]+\.md) -->", page))
    assert included == {f"bench/results/{p.name}" for p in (ROOT / "bench" / "results").glob("*.md")}


def test_make_test_lints_builds_the_docs_strictly_and_hands_out_the_slowest_files_first():
    commands = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "ruff check ." in commands and "ruff format --check ." in commands
    assert "mkdocs build --strict" in commands and "--quiet" not in commands  # quiet drops the warnings strict counts
    assert "-n logical" in commands and "--dist loadfile --no-loadscope-reorder" in commands


def test_the_site_loads_nothing_online_and_a_broken_link_or_anchor_fails_the_strict_build(tmp_path):
    shutil.copytree(DOCS, tmp_path / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "bench" / "results", tmp_path / "bench" / "results")  # the results page includes them
    shutil.copy(ROOT / "mkdocs.yml", tmp_path)
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    assert subprocess.run(build, cwd=tmp_path, capture_output=True).returncode == 0
    pages = [page.read_text() for page in (tmp_path / "site").rglob("*.html")]
    assert pages and not [p for p in pages if re.search(r'(src|<link[^>]*href)="https?:', p)]  # nothing fetched online
    results = tmp_path / "docs" / "results.md"
    for broken in ("how-a-run-works.md#no-such-heading", "no-such-page.md"):
        results.write_text(
            (DOCS / "results.md").read_text().replace("how-a-run-works.md#how-every-export-is-verified", broken)
        )
        assert subprocess.run(build, cwd=tmp_path, capture_output=True).returncode != 0, broken


def test_an_included_result_s_headings_go_under_the_page_s_and_its_code_stays():
    spec = importlib.util.spec_from_file_location("hooks", DOCS / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    assert hooks.demoted("# A\n```\n# a comment\n```\n## B\n") == "### A\n```\n# a comment\n```\n#### B\n"

"""The docs: the README stays short and links pages that exist, the parameters reference lists every key of
params.yaml with a description, and the results page includes every file of bench/results/."""

import importlib.util
import re
import shutil
import subprocess
import sys

from distillery import augment, corruptions
from project import params_reference
from project.config import PipelineParams
from tests.conftest import ROOT

DOCS = ROOT / "docs"


def test_the_readme_is_short_and_links_pages_that_exist():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert links and all((ROOT / link).is_file() for link in links)


def test_the_readme_and_the_docs_name_the_corruption_kinds_the_augmentation_trains_on():
    """The kinds whose corrupted accuracy a reader should discount: those whose change the augmentation makes."""
    assert set(augment.OVERLAPS) <= set(corruptions.KINDS)
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"corruption suite, so discount them there: {', '.join(augment.OVERLAPS)}." in readme
    page = " ".join((DOCS / "how-a-run-works.md").read_text().split())
    trained, untrained = page.split("**What to discount.**")[1].split("Training sees none of")
    assert re.findall(r"`(\w+)`", trained) == list(augment.OVERLAPS)
    assert set(re.findall(r"`(\w+)`", untrained.split(".")[0])) == set(corruptions.KINDS) - set(augment.OVERLAPS)


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


def test_what_to_expect_is_the_benchmarks_median_seed_for_each_model_and_set():
    spec = importlib.util.spec_from_file_location("hooks", DOCS / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    models = {name: {"accuracy": {"median": 0.98}} for name in hooks.EXPECTED_MODELS}
    evaluated = {name: {"corrupted_accuracy": {"median": 0.85}} for name in hooks.EXPECTED_MODELS if name != "shipped"}
    seeds = {name: {"per_seed": [0.9, 0.95, 0.8]} for name in hooks.EXPECTED_MODELS}
    off_split = {"uci-digits": {"accuracy": seeds}, "test-grey-paper": {"accuracy": seeds}}
    result = {"seeds": [0, 1, 2], "summary": {"models": models, "evaluated": evaluated, "off_split": off_split}}
    table = hooks.expected(result).splitlines()
    page = (DOCS / "results.md").read_text()
    assert "<!-- expect bench/results/latest.json -->" in page.split("## What to expect")[1].split("\n## ")[0]
    assert table[0] == "| model | test | uci-digits | test-grey-paper | corrupted (mean) |"
    assert (
        table[2] == "| ensemble | 98.0 | 90.0 | 90.0 | 85.0 |"
        and table[-1] == "| **shipped** | 98.0 | 90.0 | 90.0 |  |"
    )


def test_the_readme_s_defaults_off_the_test_split_are_the_params():
    readme = " ".join((ROOT / "README.md").read_text().split())
    defaults = PipelineParams()
    sets = [(s.source, s.paper) for s in defaults.report.eval_sets]
    assert sets == [("uci_digits", 0), ("uci_digits", 60)]
    assert "by default the UCI handwritten digits, as they are and on grey paper (60/255)" in readme
    assert (
        f"Its paper levels reach {defaults.augment.paper_max} ({round(255 * defaults.augment.paper_max)}/255)" in readme
    )

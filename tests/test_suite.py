"""The test suite's own order: each test's kind, and the slowest files handed out first."""

import ast
import json
from types import SimpleNamespace

import pytest

from tests.conftest import ROOT, kind, slowest_files_first


def fake_test(file: str, name: str, fixtures: tuple[str, ...] = (), marks: tuple[str, ...] = ()):
    """What the ordering reads of a collected test (in tests/)."""
    return SimpleNamespace(
        path=ROOT / "tests" / file,
        nodeid=f"{file}::{name}",
        fixturenames=list(fixtures),
        iter_markers=lambda: [pytest.Mark(mark, (), {}) for mark in marks],
    )


def test_a_test_s_kind_is_its_marker_else_what_its_fixtures_say():
    assert kind(fake_test("a.py", "t", ("tmp_path",))) == "unit"
    assert kind(fake_test("a.py", "t", ("staged", "tmp_path"))) == "stage"
    assert kind(fake_test("a.py", "t", ("staged", "s3_env"))) == "e2e"
    assert kind(fake_test("a.py", "t", ("staged",), marks=("e2e", "parametrize"))) == "e2e"


def test_the_slowest_files_go_first_whole_by_recorded_times_else_a_full_run_s_else_by_kind():
    units = [fake_test("unit.py", f"t{i}") for i in range(50)]  # 50 x 0.1 s guessed
    served = [fake_test("served.py", "t", ("project",))]  # 30 s guessed
    timed = [fake_test("timed.py", "a"), fake_test("timed.py", "b")]
    items = [*units, timed[0], *served, timed[1]]
    recorded = {test.nodeid: seconds for test, seconds in zip(timed, (20.0, 15.0), strict=True)}
    order = [test.path.name for test in slowest_files_first(items, recorded, {})]
    assert order == ["timed.py"] * 2 + ["served.py"] + ["unit.py"] * 50
    assert [t.path.name for t in slowest_files_first(items, {}, {})][:2] == ["served.py", "unit.py"]
    full_run = {"tests/unit.py": 40.0, "tests/timed.py": 1.0}  # what a fresh clone knows
    files = dict.fromkeys(t.path.name for t in slowest_files_first(items, recorded, full_run))
    assert list(files) == ["unit.py", "timed.py", "served.py"]  # 40 s from the full run, 35 s timed here, 30 guessed


def test_a_fresh_clone_knows_every_test_file_s_seconds():
    from tests.conftest import FILE_SECONDS

    known = json.loads(FILE_SECONDS.read_text())
    assert {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py")} <= set(known)


def test_no_test_file_redefines_a_fixture_that_decides_a_test_s_kind():
    """A test's kind goes by its fixtures' names (conftest's); a file's own fixture of that name would mislead it."""
    from tests.conftest import RUNS, SERVERS

    for path in (ROOT / "tests").glob("test_*.py"):
        defined = {
            node.name
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.FunctionDef) and any("fixture" in ast.unparse(d) for d in node.decorator_list)
        }
        assert not defined & (SERVERS | RUNS), f"{path.name} defines {defined & (SERVERS | RUNS)}"


def test_make_test_order_sums_the_kept_times_by_file_slowest_first(tmp_path, monkeypatch):
    import tests.conftest as conftest

    kept = {"tests/a.py::t1": 1.0, "tests/b.py::t": 5.0, "tests/a.py::t2[x]": 0.5}
    monkeypatch.setattr(conftest, "TIMINGS", tmp_path / "durations.json")
    monkeypatch.setattr(conftest, "FILE_SECONDS", tmp_path / "file_seconds.json")
    conftest.TIMINGS.write_text(json.dumps(kept))
    conftest.write_file_seconds()
    assert list(json.loads(conftest.FILE_SECONDS.read_text()).items()) == [("tests/b.py", 5.0), ("tests/a.py", 1.5)]

"""Shared fixtures: tiny params on scikit-learn's digits, stage outputs built once per session,
throw-away copies of the project for DVC and flow runs, and a Prefect test server.

Models are trained enough that the pipeline's real gates hold (no widened tolerances): on digits
the teachers reach ~96% and the int8 student ~95% validation accuracy in a few seconds each."""

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def share_the_cpus_among_workers() -> None:
    """Pin each pytest-xdist worker, and the DVC and flow runs it starts, to its own share of the CPUs, with as many
    torch threads: two workers each running torch on both of 2 cores trained 3.7x slower than on one core each."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if worker is None or count is None or not hasattr(os, "sched_setaffinity"):
        return
    cpus, index = sorted(os.sched_getaffinity(0)), int(worker.removeprefix("gw"))
    share = cpus[index :: int(count)] or [cpus[index % len(cpus)]]
    os.sched_setaffinity(0, share)
    os.environ["OMP_NUM_THREADS"] = str(len(share))  # read when torch is first imported, here and in subprocesses


share_the_cpus_among_workers()
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DISTILLERY_DEVICE", "cpu")

TINY = {  # two quick teachers; torchvision's ResNet-18 (~8 s an epoch on digits) has a test of its own
    "ingest": {"source": "digits"},
    "validate": {"min_images_per_class": 20},
    "teachers": {"epochs": 4, "models": ["wide_cnn", "small_resnet"]},
    "distill": {"epochs": 8, "widths": [32, 64]},
    "prune": {"epochs": 8, "steps": 2, "ratio": 0.5, "round_to": 4},
    "quantize": {"epochs": 2},
    "report": {"eval_sets": [{"name": "mnist", "source": "mnist5k"}]},  # real digits of another origin, at 8x8
    "measure": {"latency_budget_s": 0.05},
    "ship": {"max_accuracy_drop_pp": 5.0},  # 144 validation images: one is 0.7 points
}


def tiny_params():
    from project.config import PipelineParams

    return PipelineParams.model_validate(TINY)


def recording(config, seen: set[str]):
    """`config` as an instance of a subclass that adds to `seen` the name of each of its keys read."""
    schema = type(config)

    class Recording(schema):
        def __getattribute__(self, name):
            if name in schema.model_fields:
                seen.add(name)
            return super().__getattribute__(name)

    copy = Recording.model_validate(config.model_dump())
    seen.clear()
    return copy


def files_under(root: Path) -> set[Path]:
    """The files below `root`, not following links."""
    return {Path(folder) / name for folder, _, names in os.walk(root) for name in names}


def run_isolated(stage, params, layout) -> dict:
    """Run `stage` in a root of its own that holds only the paths it declares it reads (linked to those in
    `layout`), then move what it wrote into `layout`. A stage fails here that reads anything it does not declare,
    writes anything it does not declare, or reads a key of a section beyond the ones it `uses`."""
    from project.layout import Layout

    with tempfile.TemporaryDirectory(dir=layout.root.parent) as scratch:
        isolated = Layout(Path(scratch))
        for source, link in zip(stage.read_paths(params, layout), stage.read_paths(params, isolated), strict=True):
            if source.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(source)
        used = {name: set() for name in stage.uses}
        configs = [
            recording(config, used[name]) if name in used else config
            for name, config in zip(stage.sections, stage.configs(params), strict=True)
        ]
        result = stage.run(*configs, isolated)
        for name, keys in used.items():
            assert keys <= set(stage.uses[name]), f"{stage.name} reads {name}.{keys}, beyond what it uses"
        written = stage.written_paths(isolated)
        links = set(stage.read_paths(params, isolated))
        stray = {
            f for f in files_under(isolated.root) if f not in links and not any(f.is_relative_to(w) for w in written)
        }
        assert not stray, f"{stage.name} writes what it does not declare: {sorted(stray)}"
        for source, final in zip(written, stage.written_paths(layout), strict=True):
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(final) if final.is_dir() else final.unlink(missing_ok=True)
            os.replace(source, final)
    return result


def run_stages(layout) -> None:
    """Every stage but publish once on the tiny params, as plain functions (no orchestration), each in
    isolation: this proves what every stage declares it reads."""
    from tasks import stages_through

    for stage in stages_through("package"):
        run_isolated(stage, tiny_params(), layout)


@pytest.fixture(scope="session")
def staged(tmp_path_factory, worker_id):
    """A finished tiny run that tests only read, built once for the whole session: the pytest-xdist
    workers share it (the first to ask builds it under a file lock)."""
    from filelock import FileLock

    from project.layout import Layout

    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        shared = shared.parent  # the session's folder, above each worker's own
    layout = Layout(shared / "staged")
    with FileLock(shared / "staged.lock"):
        if not (shared / "staged.done").exists():
            run_stages(layout)
            (shared / "staged.done").touch()
    return layout


@pytest.fixture(scope="session")
def packaged(tmp_path_factory):
    """A run folder that holds only a packaged model (data/package/model.onnx) and the plain ONNX file it wraps
    (data/export/pruned.onnx): a linear classifier of scikit-learn's 8x8 digits, fitted by least squares (no
    training loop), for tests of what reads packaged models, with no trained run behind them."""
    import numpy as np
    import onnx
    import torch

    from distillery import model_package, onnx_export
    from project.layout import Layout
    from tasks.ingest import digits

    layout = Layout(tmp_path_factory.mktemp("packaged"))
    layout.package.mkdir(parents=True)
    layout.export.mkdir(parents=True)
    images, labels, classes = digits()
    pixels = np.c_[images.reshape(len(images), -1) / 255, np.ones(len(images))]  # as the models take them, and a bias
    weights = np.linalg.lstsq(pixels, np.eye(10)[labels], rcond=None)[0]
    linear = torch.nn.Linear(64, 10)
    linear.weight.data, linear.bias.data = torch.tensor(weights[:-1].T).float(), torch.tensor(weights[-1]).float()
    onnx_export.export(
        torch.nn.Sequential(torch.nn.Flatten(), linear).eval(), torch.rand(2, 1, 8, 8), layout.onnx("pruned")
    )
    image = model_package.InputSpec(height=8, width=8, channels=1, color="gray", resample="bicubic")
    wrapped = model_package.wrap(onnx.load(str(layout.onnx("pruned"))), temperature=0.2, spec=image)
    props = {"classes": classes, "input": image.props(), "temperature": 0.2, "wrapped_model": "pruned"}
    model_package.set_props(wrapped, props)
    onnx.save(wrapped, str(layout.packaged_model))
    return layout


def copy_project(dest: Path, params: dict) -> Path:
    """A fresh git + DVC checkout of this project's tracked files, with `params` as params.yaml."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in files.split():
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    from project.config import PipelineParams

    (dest / "params.yaml").write_text(
        yaml.safe_dump(PipelineParams.model_validate(params).to_yaml_dict(), sort_keys=False)
    )
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=dest, check=True)
    return dest


@pytest.fixture
def project(tmp_path):
    return copy_project(tmp_path, TINY)


def venv_env() -> dict:
    """Environment whose PATH finds this interpreter's `python` and `dvc` (DVC stages run `python`)."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


class Webhook:
    """A webhook receiver on 127.0.0.1: each POST's JSON body, as received."""

    def __init__(self):
        import http.server

        received = self.messages = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout_s: float = 90) -> list[dict]:
        """The messages once there are `count` (the Prefect server delivers them in a few seconds), and a few
        seconds more, so that a message too many shows."""
        deadline = time.monotonic() + timeout_s
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(5)
        return list(self.messages)


@pytest.fixture
def webhook(prefect_server):
    """A webhook receiver, and the alert automations removed from the test server afterwards."""
    from prefect.automations import Automation

    from flows import alerts

    receiver = Webhook()
    yield receiver
    receiver.server.shutdown()
    for name in alerts.triggers():
        try:
            Automation.read(name=name).delete()
        except ValueError:
            pass


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real SeaweedFS S3 server on a free loopback port, with generated credentials."""
    from infra import s3_server as weed

    state = tmp_path_factory.mktemp("s3")
    port = weed.free_port()
    process, credentials = weed.start(state, "distillery", port)
    yield {
        "endpoint": f"http://127.0.0.1:{port}",
        "bucket": "distillery",
        "credentials": credentials,
        "pid": process.pid,
    }
    weed.stop(process)


def point_at(s3_server: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Set the standard AWS settings (and the bucket) to the test server."""
    creds = s3_server["credentials"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server["endpoint"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("DISTILLERY_BUCKET", s3_server["bucket"])
    return s3_server


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The standard AWS settings pointing at the test server."""
    return point_at(s3_server, monkeypatch)


KINDS = ("unit", "stage", "e2e")  # the markers registered in pyproject.toml: each test has one
SERVERS = {"project", "prefect_server", "s3_server", "s3_env"}  # fixtures that make a test end to end
RUNS = {"staged"}  # the fixture (itself, or through another) that makes a test a stage test
GUESS = {"unit": 0.1, "stage": 3.0, "e2e": 30.0}  # seconds a test of each kind takes, where nothing timed it
TIMINGS = ROOT / ".pytest-timings" / "durations.json"  # each test's seconds in the last run here that ran it
FILE_SECONDS = ROOT / "tests" / "file_seconds.json"  # each file's seconds in a full run: a fresh clone's order


def kind(item: pytest.Item) -> str:
    """The test's kind: the closest of its markers (its own, else its file's); unmarked, e2e for a test that uses a
    server or a project copy, stage for one that reads a trained run, else unit."""
    marked = [mark.name for mark in item.iter_markers() if mark.name in KINDS]
    fixtures = set(item.fixturenames)
    return marked[0] if marked else "e2e" if fixtures & SERVERS else "stage" if fixtures & RUNS else "unit"


def recorded_seconds() -> dict[str, float]:
    return json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}


def write_file_seconds() -> None:
    """tests/file_seconds.json from the times kept here: each test file's seconds, slowest first (`make test-order`
    after a full run)."""
    seconds = Counter()
    for nodeid, spent in recorded_seconds().items():
        seconds[nodeid.split("::")[0]] += spent
    FILE_SECONDS.write_text(json.dumps({f: round(s, 1) for f, s in seconds.most_common()}, indent=1) + "\n")


def slowest_files_first(
    items: list[pytest.Item], recorded: dict[str, float], file_seconds: dict[str, float]
) -> list[pytest.Item]:
    """The tests, whole files at a time, the slowest file first: pytest-xdist hands files to its workers in this
    order (--dist loadfile --no-loadscope-reorder), so that no long file starts last. A file's seconds are its
    tests' `recorded` times; for a file none of whose tests were timed here, its `file_seconds`; else a guess by
    the kinds of its tests."""
    seconds, timed = Counter(), set()
    for item in items:
        seconds[item.path] += recorded.get(item.nodeid, GUESS[kind(item)])
        timed |= {item.path} if item.nodeid in recorded else set()
    for path in set(seconds) - timed:
        seconds[path] = file_seconds.get(path.relative_to(ROOT).as_posix(), seconds[path])
    return sorted(items, key=lambda item: (-seconds[item.path], str(item.path)))


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(kind(item))
        kinds = {mark.name for mark in item.iter_markers()} & set(KINDS)
        if len(kinds) > 1:
            raise pytest.UsageError(f"{item.nodeid} is marked {' and '.join(sorted(kinds))}; a test has one kind")
    file_seconds = json.loads(FILE_SECONDS.read_text())
    items[:] = slowest_files_first(items, recorded_seconds(), file_seconds)


TIMED: Counter = Counter()  # this session's seconds per test: setup, call and teardown


def pytest_runtest_logreport(report):
    TIMED[report.nodeid] += report.duration


def pytest_sessionfinish(session, exitstatus):
    """Keep each test's time for the next run's order (the controller sees every worker's reports). Prefect's
    temporary server stops at interpreter exit and says so at INFO level; in a pytest-xdist worker the output
    stream is closed by then, which prints a logging error."""
    if TIMED and not hasattr(session.config, "workerinput"):
        TIMINGS.parent.mkdir(exist_ok=True)
        TIMINGS.write_text(json.dumps(recorded_seconds() | {k: round(v, 3) for k, v in TIMED.items()}, indent=0))
    logging.getLogger("prefect").setLevel(logging.WARNING)

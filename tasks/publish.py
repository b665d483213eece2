"""Publish: upload a finished run (models, report, Data Docs, its test split) with a manifest to the S3 store, and
promote it (move `latest`) if the promotion gate lets it (`project.promotion`).

Only a complete run is published: every expected file must exist, the export must have passed
verification and the shipped model must have been packaged. The packaged model is published as
model.onnx with the name and version among its properties, beside its MODEL_CARD.md. The manifest
records lineage: dataset md5, git commit, params, metrics, package versions.
"""

import hashlib
import logging
import tempfile
import time
from importlib import metadata
from pathlib import Path

from distillery import model_package
from distillery.errors import DistilleryError
from distillery.files import atomic_file, file_digest, read_json, write_json
from project import promotion
from project.artifacts import verified_onnx
from project.config import PromoteConfig, PublishConfig
from project.layout import Layout
from project.model_card import model_card
from project.ship_decision import ShipDecision
from project.stage import Stage
from project.store import ArtifactStore, S3Settings, check_name, manifest_key

log = logging.getLogger("distillery")
PACKAGES = (
    "torch",
    "torchvision",
    "torchao",
    "torch-pruning",
    "onnx",
    "onnxruntime",
    "numpy",
    "prefect",
    "dvc",
    "great-expectations",
)


def run_files(layout: Layout) -> dict[str, Path]:
    """Every file of a finished run, by its path inside the published version."""
    if not layout.metrics.exists() or not layout.verification.exists():
        raise DistilleryError(f"No finished run in {layout.data}: run the pipeline before publishing.")
    decision = ShipDecision.read(layout.ship_decision)
    if not decision.model:
        raise DistilleryError(f"Nothing is published: {decision.reason}.")
    try:
        exported = verified_onnx(layout)
    except DistilleryError as e:
        raise DistilleryError(f"Nothing is published: {e}") from e
    files = {f"models/{p.name}": p for p in exported.values()}
    shipped_onnx = exported[decision.model]
    files.update({f"reports/{p.name}": p for p in sorted(layout.reports.iterdir()) if p.is_file()})
    files.update(
        {f"data_docs/{p.relative_to(layout.data_docs)}": p for p in sorted(layout.data_docs.rglob("*")) if p.is_file()}
    )
    check_package(layout, decision.model, shipped_onnx)
    return files


def check_package(layout: Layout, model: str, source: Path) -> None:
    """The run's packaged model is the shipped `model`, unchanged, made from this run's report and `source` file."""
    record = read_json(layout.package_record) if layout.package_record.exists() else {}
    if not record.get("packaged") or record.get("model") != model:
        raise DistilleryError(f"The shipped {model} model is not packaged; rerun the package stage.")
    if file_digest(layout.packaged_model) != record["sha256"]:
        raise DistilleryError(f"{layout.packaged_model} changed since it was packaged; rerun the package stage.")
    wrapped = model_package.read(layout.packaged_model).props["wrapped_sha256"]
    made_from = (record.get("metrics_sha256"), record.get("decision_sha256"), wrapped)
    if made_from != (file_digest(layout.metrics), file_digest(layout.ship_decision), file_digest(source)):
        raise DistilleryError(
            f"{layout.packaged_model} was packaged from another report, ship decision or export than this run's; "
            "rerun the package stage."
        )


def stamped(layout: Layout, metrics: dict, *, name: str, version: str, folder: Path) -> dict[str, Path]:
    """The packaged model with `name` and `version` among its properties, and its model card, written in `folder`:
    the shipped model's files in the published version, by their paths there."""
    model, card = folder / layout.packaged_model.name, folder / layout.model_card.name
    model_package.stamp(layout.packaged_model, model, name=name, version=version)
    card.write_text(model_card(model_package.read(model), metrics, ShipDecision.read(layout.ship_decision), name=name))
    return {model.name: model, card.name: card}


def lineage(metrics: dict, decision: ShipDecision) -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "dataset": metrics["dataset"],
        "git_commit": metrics["git_commit"],
        "params": metrics["params"],
        "metrics": {k: v for k, v in metrics.items() if k not in ("params", "dataset", "git_commit")},
        "ship": decision.model_dump(),
        "packages": versions,
    }


def run_of(layout: Layout) -> str:
    """What names a finished run in the store while its upload is unfinished: its report's and decision's sha256."""
    return hashlib.sha256((file_digest(layout.metrics) + file_digest(layout.ship_decision)).encode()).hexdigest()


def new_version(metrics: dict) -> str:
    """UTC time plus the dataset's md5 prefix: sortable, and says which data made it."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{metrics['dataset']['md5'][:8]}"


def upload(
    name: str,
    layout: Layout,
    *,
    promote: PromoteConfig | None = None,
    settings: S3Settings | None = None,
    version: str | None = None,
) -> dict:
    """Upload the run in `layout` as `models/<name>/<version>/`, and move `latest.json` to it if the promotion gate
    lets it. Without a `version`: the one an interrupted upload of this run started, else a new one."""
    check_name("model name", name)
    files = run_files(layout)
    metrics = read_json(layout.metrics)
    store = ArtifactStore(settings or S3Settings.from_env())
    run_id = run_of(layout)  # a rerun of an interrupted upload finishes the version it started
    version = check_name("version", version or store.unfinished_version(name, run_id) or new_version(metrics))
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        files |= stamped(layout, metrics, name=name, version=version, folder=Path(folder))
        files |= promotion.write_test_split(layout, Path(folder))
        history = lineage(metrics, ShipDecision.read(layout.ship_decision))
        manifest = promotion.publish(store, name, version, files, history, run_id, promote or PromoteConfig())
    decision = manifest["promotion"]
    log.info(
        "published %s %s: %d files, %.1f MB in %.1f s to %s; %s: %s",
        name,
        version,
        len(files),
        sum(f["size"] for f in manifest["files"]) / 1e6,
        time.monotonic() - started,
        store.settings.where(),
        "promoted" if decision["promoted"] else "not promoted",
        decision["reason"],
    )
    return {
        "name": name,
        "version": version,
        "files": len(files),
        "manifest": manifest_key(name, version),
        "promotion": decision,
    }


def run(config: PublishConfig, promote: PromoteConfig, layout: Layout) -> dict:
    """The pipeline's last stage: publish when an S3 store is configured, and write a receipt
    (data/published.json) saying what was published, or that nothing was. A run with no model that
    meets the accuracy floor, or whose files changed since the export, fails here, store or not."""
    run_files(layout)
    settings = S3Settings.from_env()
    if settings.configured:
        receipt = {"published": True, **upload(config.model_name, layout, promote=promote, settings=settings)}
    else:
        receipt = {
            "published": False,
            "reason": "no S3 store configured (run `make up`, or set DISTILLERY_BUCKET and the AWS "
            "settings); `distillery publish` publishes this run later",
        }
        log.warning("not published: %s", receipt["reason"])
    with atomic_file(layout.published) as tmp:
        write_json(tmp, receipt)
    return receipt


STAGE = Stage(
    run,
    reads=(Layout.validation, Layout.export, Layout.ship_decision, Layout.reports, Layout.package),
    writes=(Layout.published,),
)

if __name__ == "__main__":
    from project.stage_cli import main

    main(STAGE)

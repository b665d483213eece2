"""`distillery publish` and `distillery models`: the published model versions in the S3 store."""

import argparse
import json
from pathlib import Path

from distillery.errors import DistilleryError
from project import promotion
from project.config import PromoteConfig, load_params
from project.layout import MODEL_CARD, Layout
from project.store import ArtifactStore, S3Settings
from project.user_errors import user_errors


def promote_config(args: argparse.Namespace) -> PromoteConfig:
    """The promotion gate's params, from the project's params.yaml."""
    return load_params(Layout(args.root.resolve()).params).promote


def publish(args: argparse.Namespace) -> None:
    from tasks.publish import upload

    with user_errors(args.debug):
        receipt = upload(args.name, Layout(args.root.resolve()), promote=promote_config(args), version=args.version)
        print(json.dumps(receipt, indent=2))


def describe_manifest(manifest: dict) -> str:
    """A published version in brief: its files, the shipped model, the data and code it came from."""
    lineage = manifest["lineage"]
    brief = {k: manifest[k] for k in ("name", "version", "files")} | {
        "shipped": lineage["metrics"]["shipped"],
        "dataset": lineage["dataset"],
        "git_commit": lineage["git_commit"],
    }
    return json.dumps(brief, indent=2)


def listing(store: ArtifactStore, name: str) -> str:
    """Every complete version of `name`, oldest first: when the gate judged it, its data, what it measured, and
    whether and why it was promoted (by the gate, or forced); `*` marks the version users get."""
    pointer, _ = store.pointer(name)
    latest = pointer and pointer["version"]
    forced = {m["version"] for m in promotion.recorded_moves(pointer) if m["by"] == "models promote --force"}
    rows = ["  version | judged | dataset md5 | shipped | test accuracy | promoted: why"]
    for version in store.versions(name):
        manifest = store.manifest(name, version)
        lineage, decided = manifest["lineage"], manifest.get("promotion")
        shipped = lineage["ship"]["model"]
        accuracy = f"{lineage['metrics'][shipped]['accuracy']:.2%}" if shipped else "-"
        verdict = f"{'yes' if decided['promoted'] else 'no'}: {decided['reason']}" if decided else "(before the gate)"
        if version in forced:
            verdict += " (then forced into latest: models promote --force)"
        cells = [version, decided["at"] if decided else "?", lineage["dataset"]["md5"], shipped or "-", accuracy]
        rows.append(f"{'*' if version == latest else ' '} " + " | ".join([*cells, verdict]))
    return "\n".join(rows) if len(rows) > 1 else f"no published versions of {name}"


def models(args: argparse.Namespace) -> None:
    with user_errors(args.debug):
        store = ArtifactStore(S3Settings.from_env())
        if args.action == "list":
            print(listing(store, args.name))
            return
        if args.action == "rollback":
            print(f"{args.name}: latest is now {promotion.rollback(store, args.name)}")
            return
        if args.action == "promote":
            if not args.version:
                raise DistilleryError("models promote needs the version to promote: models promote NAME VERSION.")
            decided = promotion.promote(store, args.name, args.version, promote_config(args), force=args.force)
            forced = "" if decided["promoted"] else " (forced)"
            print(f"{args.name}: latest is now {args.version}{forced}: {decided['reason']}")
            return
        version = args.version or store.latest(args.name)
        if args.action == "show":
            manifest = store.manifest(args.name, version)
            if any(entry["path"] == MODEL_CARD for entry in manifest["files"]):
                print(store.read_verified(args.name, version, MODEL_CARD).decode())
            else:  # published before model cards
                print(describe_manifest(manifest))
        else:
            dest = args.dest or Path("downloads") / args.name / version
            store.download(args.name, version, dest)
            print(f"{args.name} {version}: downloaded and verified into {dest}")

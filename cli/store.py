"""`distillery publish` and `distillery models`: the published model versions in the S3 store."""

import argparse
import json
from pathlib import Path

from project.layout import MODEL_CARD, Layout
from project.store import ArtifactStore, S3Settings
from project.user_errors import user_errors


def publish(args: argparse.Namespace) -> None:
    from tasks.publish import upload

    with user_errors(args.debug):
        print(upload(args.name, Layout(args.root.resolve()), version=args.version))


def describe_manifest(manifest: dict) -> str:
    """A published version in brief: its files, the shipped model, the data and code it came from."""
    lineage = manifest["lineage"]
    brief = {k: manifest[k] for k in ("name", "version", "files")} | {
        "shipped": lineage["metrics"]["shipped"],
        "dataset": lineage["dataset"],
        "git_commit": lineage["git_commit"],
    }
    return json.dumps(brief, indent=2)


def models(args: argparse.Namespace) -> None:
    with user_errors(args.debug):
        store = ArtifactStore(S3Settings.from_env())
        if args.action == "list":
            print("\n".join(store.versions(args.name)) or f"no published versions of {args.name}")
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

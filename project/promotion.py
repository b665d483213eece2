"""The promotion gate: whether a published version (the candidate) becomes the one users get, in place of the
version `latest.json` points to (the champion). Both run from their published files (each checked against its
manifest sha256) on the same images: the candidate's test split and the frozen set, the test split of the first
version ever promoted. The candidate is promoted if it meets the floor on each set and is not worse than the
champion by more than `promote.max_drop_pp` on any (paired, with the evidence `promote.evidence` asks for).

`latest.json` holds the version users get and every move of it (`moves`: promotions and rollbacks), written
together by a conditional write: of two runs that promote at once, one wins and the other is judged again
against the winner."""

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from distillery import model_package
from distillery.data import load_dataset
from distillery.errors import DistilleryError
from distillery.stats import accuracy_interval, paired_difference
from project.config import PromoteConfig
from project.layout import PACKAGED_MODEL, Layout
from project.store import ArtifactStore, manifest_key

log = logging.getLogger("distillery")
MAX_TRIES = 5  # judgements of one candidate against a champion that another writer keeps replacing
TEST_SPLIT = "eval/test_split.npz"  # in every version: its run's test split, x (uint8 N x C x H x W) and y


def write_test_split(layout: Layout, folder: Path) -> dict[str, Path]:
    """The run's test split as the file a version carries for the gate, written in `folder`: by its path there."""
    test = load_dataset(layout.raw).test
    path = folder / Path(TEST_SPLIT).name
    np.savez_compressed(path, x=test.images[test.rows].numpy(), y=test.y.numpy())
    return {TEST_SPLIT: path}


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def recorded_moves(pointer: dict | None) -> list[dict]:
    """Every move of `latest`, oldest first; a store from before moves were recorded has its version as the first."""
    if pointer is None:
        return []
    first = {"at": None, "action": "promote", "version": pointer["version"], "from": None, "by": "before the gate"}
    return pointer.get("moves") or [first | {"reason": "promoted before moves were recorded"}]


def promoted_stack(pointer: dict | None) -> list[str]:
    """The promoted versions, oldest first, as the moves left them: a promotion pushes, a rollback pops. The
    last is the one users get."""
    stack = []
    for move in recorded_moves(pointer):
        if move["action"] == "promote":
            stack.append(move["version"])
        elif stack:
            stack.pop()
    return stack


def frozen_version(pointer: dict | None) -> str | None:
    """The first version ever promoted, whose test split every candidate is compared on."""
    moves = recorded_moves(pointer)
    return moves[0]["version"] if moves else None


def moved(pointer: dict | None, name: str, version: str, *, action: str, by: str, reason: str) -> dict:
    """`pointer` with `latest` at `version` and the move recorded."""
    move = {"at": now(), "action": action, "version": version, "from": pointer and pointer["version"], "by": by}
    moves = [*recorded_moves(pointer), move | {"reason": reason}]
    return {"version": version, "manifest": manifest_key(name, version), "moves": moves}


class Files:
    """Published files of the versions the gate compares, fetched once into a temporary folder and each
    checked against its manifest entry."""

    def __init__(self, store: ArtifactStore, name: str, folder: Path, entries: dict[str, list[dict]]):
        self.store, self.name, self.folder, self.entries = store, name, folder, entries

    def entry(self, version: str, path: str) -> dict | None:
        if version not in self.entries:
            self.entries[version] = self.store.manifest(self.name, version)["files"]
        return next((e for e in self.entries[version] if e["path"] == path), None)

    def path(self, version: str, path: str) -> Path:
        target = self.folder / version / path
        if not target.exists():
            entry = self.entry(version, path)
            if entry is None:
                raise DistilleryError(
                    f"{self.name} {version} has no {path}: it was published before the promotion gate. Promote a "
                    f"newer version by hand (`distillery models promote {self.name} VERSION --force`)."
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            self.store.fetch_verified(self.name, version, entry, target)
        return target

    def test_split(self, version: str) -> tuple[np.ndarray, np.ndarray]:
        with np.load(self.path(version, TEST_SPLIT), allow_pickle=False) as arrays:
            return arrays["x"], arrays["y"]


def hits(model: model_package.PackagedModel, sets: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per set, per image of its x (uint8 N x C x H x W), whether the packaged model's class is its y's."""
    classifier = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])  # once per model
    found = {}
    for images, (x, y) in sets.items():
        inputs = {model_package.INPUT: np.ascontiguousarray(x.transpose(0, 2, 3, 1))}
        (labels,) = classifier.run([model_package.LABEL], inputs)
        found[images] = labels == y
    return found


def takes(model: model_package.PackagedModel, x: np.ndarray) -> bool:
    spec = model.input
    return x.shape[1:] == (spec.channels, spec.height, spec.width)


def judge(candidate: dict[str, np.ndarray], champion: dict[str, np.ndarray] | None, config: PromoteConfig) -> str:
    """Why the candidate may not be promoted (its hits and the champion's on each set), or "" if it may."""
    for images, found in candidate.items():
        if found.mean() < config.min_accuracy:
            return f"{found.mean():.2%} on {images}, below the floor (promote.min_accuracy {config.min_accuracy:.2%})"
        if champion is None:
            continue
        paired = paired_difference(found, champion[images])
        shown = paired["difference"] if config.evidence == "point" else paired["interval"][0]
        if shown * 100 < -config.max_drop_pp:
            low, high = (100 * v for v in paired["interval"])
            return (
                f"{-100 * paired['difference']:.2f} points below the champion on {images} (95% interval of the "
                f"difference [{low:+.2f}, {high:+.2f}]; promote.max_drop_pp {config.max_drop_pp}, evidence "
                f"{config.evidence})"
            )
    return ""


def gate(files: Files, version: str, pointer: dict | None, config: PromoteConfig) -> dict:
    """The candidate `version` against the champion `pointer` names: the decision, why, and its figures."""
    champion = pointer and pointer["version"]
    frozen = frozen_version(pointer)
    sets = {f"{version}'s test split": files.test_split(version)}
    if frozen and frozen != version and files.entry(frozen, TEST_SPLIT):  # none: published before the gate
        sets[f"the frozen set ({frozen}'s test split)"] = files.test_split(frozen)
    model = model_package.read(files.path(version, PACKAGED_MODEL))
    candidate = hits(model, {images: xy for images, xy in sets.items() if takes(model, xy[0])})
    held = None
    if champion and champion != version:
        held = model_package.read(files.path(champion, PACKAGED_MODEL))
        if held.classes != model.classes or held.input != model.input:
            refused = f"the champion {champion} takes other images or classes: compare them by hand"
            return decision(False, refused, {}, champion=champion)
        held = hits(held, {images: sets[images] for images in candidate})
    figures = {
        images: {
            "images": len(found),
            "candidate": float(found.mean()),
            "candidate_interval": accuracy_interval(found),
        }
        | ({"champion": float(held[images].mean()), **paired_difference(found, held[images])} if held else {})
        for images, found in candidate.items()
    }
    if len(candidate) < len(sets):
        return decision(
            False, f"{version} takes images of another shape than the frozen set's", figures, champion=champion
        )
    refused = judge(candidate, held, config)
    if refused:
        return decision(False, refused, figures, champion=champion)
    beside = f"within promote.max_drop_pp ({config.max_drop_pp}) of the champion {champion}" if held else "the first"
    return decision(True, f"meets the floor on {len(sets)} set(s) and is {beside}", figures, champion=champion)


def decision(promoted: bool, reason: str, figures: dict, *, champion: str | None = None) -> dict:
    return {"promoted": promoted, "reason": reason, "champion": champion, "sets": figures, "at": now()}


def publish(
    store: ArtifactStore,
    name: str,
    version: str,
    files: dict[str, Path],
    lineage: dict,
    run_id: str,
    config: PromoteConfig,
) -> dict:
    """Upload a version, judge it against the champion, write its manifest with the decision, and move `latest`
    if it is promoted; where another run moved `latest` in between, judge it again against that one."""
    entries = store.upload_version(name, version, files, run_id)
    with tempfile.TemporaryDirectory() as folder:
        fetched = Files(store, name, Path(folder), {version: entries})
        for _ in range(MAX_TRIES):
            pointer, etag = store.pointer(name)
            if pointer and pointer["version"] == version:  # an interrupted publish of this run moved it already
                manifest = store.manifest(name, version)
                break
            promotion = gate(fetched, version, pointer, config)
            manifest = {"name": name, "version": version, "files": entries, "lineage": lineage, "promotion": promotion}
            store.put_json(manifest_key(name, version), manifest)
            if not promotion["promoted"]:
                break
            if store.move_pointer(
                name,
                moved(pointer, name, version, action="promote", by="publish", reason=promotion["reason"]),
                etag=etag,
            ):
                break
            log.info("%s: another run promoted a version meanwhile; judging %s again", name, version)
        else:
            raise lost_every_race(name, version)
    store.finish(name, version)
    return manifest


def lost_every_race(name: str, version: str) -> DistilleryError:
    return DistilleryError(
        f"{name} {version}: latest moved under every one of {MAX_TRIES} tries to promote it (other runs promoting, "
        "or a store that does not honour conditional writes); latest is as they left it. Promote it later with "
        f"`distillery models promote {name} {version}`."
    )


def promote(store: ArtifactStore, name: str, version: str, config: PromoteConfig, *, force: bool) -> dict:
    """`distillery models promote`: the same gate for a published version; `force` promotes it whatever the
    gate says (recorded as forced)."""
    manifest = store.manifest(name, version)
    with tempfile.TemporaryDirectory() as folder:
        fetched = Files(store, name, Path(folder), {version: manifest["files"]})
        for _ in range(MAX_TRIES):
            pointer, etag = store.pointer(name)
            if pointer and pointer["version"] == version:
                raise DistilleryError(f"{name} {version} is already the promoted version; nothing moved.")
            try:
                promotion = gate(fetched, version, pointer, config)
            except DistilleryError as e:  # e.g. a champion whose files fail their sha256: only --force goes on
                if not force:
                    raise
                promotion = decision(
                    False, f"not judged ({str(e).rstrip('.')})", {}, champion=pointer and pointer["version"]
                )
            if not promotion["promoted"] and not force:
                raise DistilleryError(
                    f"{name} {version} is not promoted: {promotion['reason']}. Nothing moved; --force promotes it "
                    "anyway (recorded as forced)."
                )
            by = "models promote --force" if force and not promotion["promoted"] else "models promote"
            if store.move_pointer(
                name, moved(pointer, name, version, action="promote", by=by, reason=promotion["reason"]), etag=etag
            ):
                return promotion
    raise lost_every_race(name, version)


def rollback(store: ArtifactStore, name: str) -> str:
    """`distillery models rollback`: `latest` back to the version promoted before the current one, once that
    version's packaged model still matches its manifest. Returns that version."""
    pointer, etag = store.pointer(name)
    stack = promoted_stack(pointer)
    if len(stack) < 2:
        raise DistilleryError(
            f"{name} has no earlier promoted version to roll back to"
            + (f" ({stack[0]} is the first)" if stack else "")
            + "; nothing moved."
        )
    current, previous = stack[-1], stack[-2]
    with tempfile.TemporaryDirectory() as folder:
        Files(store, name, Path(folder), {}).path(previous, PACKAGED_MODEL)  # its files still verify
    if not store.move_pointer(
        name,
        moved(pointer, name, previous, action="rollback", by="models rollback", reason=f"back from {current}"),
        etag=etag,
    ):
        raise DistilleryError(f"{name}'s latest version moved while rolling back; nothing moved. Run it again.")
    return previous

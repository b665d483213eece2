"""The promotion gate against a real SeaweedFS server: a published version becomes the one users get only if it
meets the floor and is not worse than the champion on the same images; `models list`, `promote` (and `--force`)
and `rollback` move `latest` and record each move; two promotions at once leave a consistent history; bad
input is one paragraph, exit 2, nothing moved."""

import threading

import numpy as np
import pytest
import yaml

from cli.main import main
from distillery.errors import DistilleryError
from project import promotion
from project.config import PromoteConfig
from project.layout import PACKAGED_MODEL
from project.store import ArtifactStore, S3Settings
from tasks import publish

STRICT = PromoteConfig(min_accuracy=0.999)  # the staged run's shipped model is below this: refused


def store() -> ArtifactStore:
    return ArtifactStore(S3Settings.from_env())


def moves(name: str) -> list[dict]:
    pointer, _ = store().pointer(name)
    return pointer["moves"]


def cli(*args: str, root=None) -> int:
    """`distillery models ...` in this process; its exit code (0 when it returns)."""
    try:
        main(["models", *args, *(["--root", str(root)] if root else [])])
    except SystemExit as e:
        return e.code
    return 0


def test_the_first_version_is_promoted_and_an_equal_one_replaces_it(staged, s3_env):
    first = publish.upload("gate", staged, version="v1")["promotion"]
    assert first["promoted"] and first["champion"] is None and "the first" in first["reason"]
    assert list(first["sets"]) == ["v1's test split"] and first["sets"]["v1's test split"]["candidate"] >= 0.9
    second = publish.upload("gate", staged, version="v2")["promotion"]
    assert second["promoted"] and second["champion"] == "v1"
    assert list(second["sets"]) == ["v2's test split", "the frozen set (v1's test split)"]
    assert all(figures["difference"] == 0 for figures in second["sets"].values())  # the same model
    assert store().latest("gate") == "v2" and store().manifest("gate", "v2")["promotion"] == second
    assert [(m["action"], m["version"], m["from"]) for m in moves("gate")] == [
        ("promote", "v1", None),
        ("promote", "v2", "v1"),
    ]


def test_a_version_below_the_floor_is_published_but_not_promoted(staged, s3_env, capsys):
    publish.upload("floor", staged, version="v1")
    refused = publish.upload("floor", staged, version="v2", promote=STRICT)["promotion"]
    assert not refused["promoted"] and "below the floor (promote.min_accuracy 99.90%)" in refused["reason"]
    assert store().versions("floor") == ["v1", "v2"] and store().latest("floor") == "v1" and len(moves("floor")) == 1
    assert not list(store().keys("models/floor/v2/unfinished"))  # complete, though not promoted
    assert cli("list", "floor") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("* v1 |") and lines[1].endswith("yes: meets the floor on 1 set(s) and is the first")
    assert lines[2].startswith("  v2 |") and "| no: " in lines[2] and "below the floor" in lines[2]


def test_promote_applies_the_gate_and_force_overrides_it_on_record(staged, s3_env, tmp_path, capsys):
    publish.upload("manual", staged, version="v1")
    publish.upload("manual", staged, version="v2", promote=STRICT)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"promote": {"min_accuracy": 0.999}}))
    assert cli("promote", "manual", "v2", root=tmp_path) == 2
    assert "manual v2 is not promoted: " in capsys.readouterr().err and store().latest("manual") == "v1"
    assert cli("promote", "manual", "v2", "--force", root=tmp_path) == 0
    assert "latest is now v2 (forced)" in capsys.readouterr().out and store().latest("manual") == "v2"
    assert moves("manual")[-1]["by"] == "models promote --force" and "below the floor" in moves("manual")[-1]["reason"]
    assert cli("list", "manual") == 0
    forced = capsys.readouterr().out.splitlines()[2]
    assert forced.startswith("* v2 |") and forced.endswith("(then forced into latest: models promote --force)")


def test_rollback_returns_to_the_version_promoted_before(staged, s3_env, capsys):
    for version in ("v1", "v2", "v3"):
        publish.upload("back", staged, version=version)
    assert cli("rollback", "back") == 0 and store().latest("back") == "v2"
    assert cli("rollback", "back") == 0 and store().latest("back") == "v1"
    assert [(m["action"], m["version"], m["from"]) for m in moves("back")[3:]] == [
        ("rollback", "v2", "v3"),
        ("rollback", "v1", "v2"),
    ]
    capsys.readouterr()
    assert cli("rollback", "back") == 2  # v1 is the first
    assert "no earlier promoted version to roll back to (v1 is the first); nothing moved" in capsys.readouterr().err
    assert store().latest("back") == "v1" and len(moves("back")) == 5


def test_bad_input_is_one_paragraph_and_moves_nothing(staged, s3_env, capsys):
    publish.upload("bad", staged, version="v1")
    before = store().pointer("bad")[0]
    for args, says in (
        (("promote", "bad", "v9"), "bad version v9 is not published"),
        (("promote", "bad", "v1"), "bad v1 is already the promoted version"),
        (("promote", "nowhere", "v1"), "nowhere version v1 is not published"),
        (("rollback", "nowhere"), "nowhere has no earlier promoted version"),
        (("promote", "bad"), "models promote needs the version"),
    ):
        assert cli(*args) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1 and "Traceback" not in err
    assert store().pointer("bad")[0] == before


def test_a_champion_whose_files_fail_their_sha256_stops_the_gate(staged, s3_env):
    publish.upload("tampered", staged, version="v1")
    store().call("put_object", Key=f"models/tampered/v1/{PACKAGED_MODEL}", Body=b"not the model")
    with pytest.raises(DistilleryError, match=f"{PACKAGED_MODEL} of tampered v1 does not match its manifest sha256"):
        publish.upload("tampered", staged, version="v2")
    assert store().latest("tampered") == "v1" and store().versions("tampered") == ["v1"]  # v2 is not complete


def test_two_promotions_at_once_leave_one_winner_and_a_consistent_history(staged, s3_env, monkeypatch):
    """Both read the same champion; the conditional write lets one move `latest`, and the other is judged again
    against the winner before it moves it in turn."""
    for version, config in (("v1", None), ("v2", STRICT), ("v3", STRICT)):
        publish.upload("race", staged, version=version, promote=config)
    real_pointer, barrier, seen = ArtifactStore.pointer, threading.Barrier(2), set()

    def pointer_read_by_both(self, name):
        found = real_pointer(self, name)
        if threading.get_ident() not in seen:  # each thread's first read waits for the other's
            seen.add(threading.get_ident())
            barrier.wait(timeout=60)
        return found

    monkeypatch.setattr(ArtifactStore, "pointer", pointer_read_by_both)
    decided, errors = {}, []

    def promote(version):
        try:
            decided[version] = promotion.promote(store(), "race", version, PromoteConfig(), force=False)
        except Exception as e:  # noqa: BLE001 - a thread's error is asserted below, not lost
            errors.append(e)

    threads = [threading.Thread(target=promote, args=(v,)) for v in ("v2", "v3")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    monkeypatch.setattr(ArtifactStore, "pointer", real_pointer)
    assert not errors
    history = moves("race")
    assert sorted(m["version"] for m in history[1:]) == ["v2", "v3"]
    assert [m["from"] for m in history[1:]] == ["v1", history[1]["version"]]  # the second judged against the first
    assert store().latest("race") == history[-1]["version"] and decided[history[-1]["version"]]["champion"] != "v1"


@pytest.mark.parametrize(
    ("evidence", "drop", "refused"),
    [("point", 2, True), ("point", 0.8, False), ("interval", 0.8, True), ("interval", 0, False)],
)
def test_the_gate_refuses_a_drop_beyond_max_drop_pp_by_the_evidence_asked(evidence, drop, refused):
    """1,000 images, the champion right on 950; the candidate loses `drop` points of them (1 point allowed)."""
    champion = np.arange(1000) < 950
    candidate = champion.copy()
    candidate[: int(drop * 10)] = False
    why = promotion.judge({"s": candidate}, {"s": champion}, PromoteConfig(min_accuracy=0.5, evidence=evidence))
    assert bool(why) == refused and (not why or "points below the champion on s (95% interval" in why)


def test_rollback_to_a_version_whose_files_fail_their_sha256_moves_nothing(staged, s3_env, capsys):
    for version in ("v1", "v2"):
        publish.upload("spoilt", staged, version=version)
    store().call("put_object", Key=f"models/spoilt/v1/{PACKAGED_MODEL}", Body=b"not the model")
    assert cli("rollback", "spoilt") == 2
    assert f"{PACKAGED_MODEL} of spoilt v1 does not match its manifest sha256" in capsys.readouterr().err
    assert store().latest("spoilt") == "v2" and len(moves("spoilt")) == 2


def test_a_store_from_before_the_gate_keeps_its_version_as_the_first(staged, s3_env):
    """latest.json without moves, and a champion published without its test split: the gate compares on the
    candidate's split alone, and the old version stays the one a rollback returns to."""
    publish.upload("legacy", staged, version="v1")
    s3 = store()
    manifest = s3.manifest("legacy", "v1")
    manifest["files"] = [e for e in manifest["files"] if e["path"] != promotion.TEST_SPLIT]
    s3.put_json("models/legacy/v1/manifest.json", manifest)
    s3.put_json("models/legacy/latest.json", {"version": "v1", "manifest": "models/legacy/v1/manifest.json"})
    decided = publish.upload("legacy", staged, version="v2")["promotion"]
    assert decided["promoted"] and decided["champion"] == "v1" and list(decided["sets"]) == ["v2's test split"]
    assert [(m["version"], m["by"]) for m in moves("legacy")] == [("v1", "before the gate"), ("v2", "publish")]
    assert promotion.rollback(s3, "legacy") == "v1"


def test_a_rerun_after_latest_moved_keeps_the_decision_made(staged, s3_env, monkeypatch):
    real_finish = ArtifactStore.finish

    def fail_once(self, name, version):
        monkeypatch.setattr(ArtifactStore, "finish", real_finish)
        raise DistilleryError("S3 went away")

    monkeypatch.setattr(ArtifactStore, "finish", fail_once)
    monkeypatch.setattr(publish, "new_version", lambda metrics: "v1")
    with pytest.raises(DistilleryError, match="S3 went away"):
        publish.upload("moved", staged)
    decided = store().manifest("moved", "v1")["promotion"]
    assert publish.upload("moved", staged)["promotion"] == decided  # the same decision, not judged again
    assert len(moves("moved")) == 1 and not list(store().keys("models/moved/v1/unfinished"))


def test_force_promotes_where_the_champion_s_files_fail_their_sha256(staged, s3_env):
    publish.upload("forced", staged, version="v1")
    publish.upload("forced", staged, version="v2", promote=STRICT)
    store().call("put_object", Key=f"models/forced/v1/{PACKAGED_MODEL}", Body=b"not the model")
    with pytest.raises(DistilleryError, match="does not match its manifest sha256"):
        promotion.promote(store(), "forced", "v2", PromoteConfig(), force=False)
    decided = promotion.promote(store(), "forced", "v2", PromoteConfig(), force=True)
    assert not decided["promoted"] and decided["reason"].startswith("not judged (model.onnx of forced v1 does not")
    assert store().latest("forced") == "v2" and moves("forced")[-1]["by"] == "models promote --force"

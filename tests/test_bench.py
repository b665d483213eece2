"""The benchmark harness end to end on tiny params, one seed on a Dask worker (the real run is `make bench`)."""

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import yaml
from pydantic import ValidationError

from bench.kd_choice import with_variant
from bench.run import MODELS, SHIFT_SETS
from distillery import combine, digit_sets
from distillery.data import load_dataset
from distillery.errors import DistilleryError
from distillery.raw_format import SPLITS
from distillery.training import logits
from project.artifacts import load_model
from project.config import PipelineParams
from project.layout import PIPELINE_MODELS, Layout
from project.ship_decision import ShipDecision
from tests.conftest import ROOT, TINY, tiny_params, venv_env


@pytest.mark.e2e
def test_bench_measures_every_model_and_baseline_side_by_side(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))
    bench = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--params",
            str(tmp_path / "params.yaml"),
            "--seeds",
            "3",
            "--dask-workers",
            "1",
            "--work",
            str(tmp_path / "work"),
            "--out",
            str(tmp_path / "out"),
            "--no-flow",
            "--latency-budget-s",
            "0.02",
        ],
        cwd=ROOT,
        env=venv_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, stderr = bench.communicate()
    assert bench.returncode == 0, stderr
    result = json.loads((tmp_path / "out" / "latest.json").read_text())
    run = result["runs"][0]
    assert run["seed"] == 3 and set(MODELS) <= set(run["models"])
    assert not run["process"].endswith(f":{bench.pid}")  # trained on the Dask worker, not in the bench's process
    seed_run = Layout(tmp_path / "work" / "seed-3")
    metrics = json.loads(seed_run.metrics.read_text())
    assert {metrics["params"][s]["seed"] for s in ("teachers", "distill", "prune", "quantize")} == {3}
    test_images = int((np.load(seed_run.raw / SPLITS) == 2).sum())
    for name, entry in run["models"].items():
        right = entry["accuracy"] * test_images  # a count of right answers on the test split
        assert abs(right - round(right)) < 1e-6, name
        assert entry["latency_ms"]["b1"] > 0 and entry["latency_ms"]["b256"] > 0
    assert result["onnxruntime_threads"] == metrics["onnxruntime"]["threads"]
    for name in PIPELINE_MODELS:  # the bench measures the same ONNX files on the same images as the report
        assert run["models"][name]["accuracy"] == metrics[name]["accuracy"], name
    assert run["models"]["best_teacher"]["name"] == metrics["best_teacher"]  # chosen on validation, as the report
    models = run["models"]
    # masked pruning zeroes as many weights as structured pruning removes, but the file stays dense
    assert models["masked_pruned"]["params"] == models["pruned"]["params"]
    assert models["masked_pruned"]["bytes"] == models["student_kd"]["bytes"] > models["pruned"]["bytes"]
    ptq = onnx.load(str(tmp_path / "work/seed-3/baselines/ptq_int8.onnx"))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in ptq.graph.node}
    assert models["shipped"]["name"] in ("pruned", "int8")
    assert models["shipped"]["bytes"] == models[models["shipped"]["name"]]["bytes"]
    # KD is also measured for a student at a quarter of the widths (where KD shows when the full one needs none)
    assert models["probe_alone"]["params"] == models["probe_kd"]["params"] < models["student_kd"]["params"] / 4
    assert all(isinstance(t["met"], bool) for t in result["targets"]) and len(result["targets"]) == 31
    pooled = result["summary"]["pooled"]  # one seed: pooled figures are that seed's
    for name, entry in models.items():
        assert pooled["accuracy"][name]["accuracy"] == entry["accuracy"], name
        low, high = pooled["accuracy"][name]["interval"]
        assert low <= entry["accuracy"] <= high
    kd = pooled["comparisons"]["kd_vs_alone_at_shipped_size"]
    assert (kd["a"], kd["b"]) == ("pruned", "pruned_alone")
    assert kd["difference"] == pytest.approx(models["pruned"]["accuracy"] - models["pruned_alone"]["accuracy"])
    assert kd["per_seed"] == [pytest.approx(kd["difference"])]
    shipped = metrics[ShipDecision.read(seed_run.ship_decision).model]
    target = {t["target"]: t["value"] for t in result["targets"]}
    assert target["KD at the shipped size >= the same size alone + 0.5 pt"] == pytest.approx(kd["difference"] * 100)
    assert target["corrupted accuracy: shipped >= the same size alone + 1 pt"] == pytest.approx(
        (shipped["corrupted"]["accuracy"] - metrics["pruned_alone"]["corrupted"]["accuracy"]) * 100
    )
    assert target["shipped ECE after temperature scaling <= the ensemble's ECE"] == shipped["calibrated"]["ece"]
    gap, gained = (
        (models["ensemble"]["accuracy"] - models["probe_alone"]["accuracy"]),
        (models["probe_kd"]["accuracy"] - models["probe_alone"]["accuracy"]),
    )
    closed = target["the same at the probe size (--kd-probe-scale of the widths)"]
    assert (closed == pytest.approx(gained / gap)) if gap > 0 else np.isnan(closed)
    evaluated = result["summary"]["evaluated"]
    assert evaluated["ensemble"]["nll"]["median"] == metrics["ensemble"]["calibration"]["nll"]
    assert evaluated["shipped"]["ece_scaled"]["median"] == shipped["calibrated"]["ece"]
    assert "| masked_pruned |" in (tmp_path / "out" / "latest.md").read_text()
    off_split = result["summary"]["off_split"]  # measured here apart from the bench's code
    assert list(off_split) == [s.name for s in SHIFT_SETS]
    test = load_dataset(seed_run.raw).test
    grey = torch.from_numpy(digit_sets.on_grey_paper(test.images[test.rows].numpy(), 60))
    for name in ("ensemble", "pruned", "int8"):
        sess = onnxruntime.InferenceSession(str(seed_run.onnx(name)))
        outputs = sess.run(None, {sess.get_inputs()[0].name: grey.float().div(255).numpy()})[0]
        expected = float((outputs.argmax(axis=1) == test.y.numpy()).mean())
        assert off_split["test-grey-paper"]["accuracy"][name]["accuracy"] == pytest.approx(expected), name
    shipped_grey = off_split["test-grey-paper"]["accuracy"][models["shipped"]["name"]]["accuracy"]
    assert target["grey paper: shipped on test-grey-paper >= 90%"] == pytest.approx(shipped_grey * 100)
    int8_vs_pruned = off_split["uci-digits"]["comparisons"]["int8_vs_pruned"]
    assert target["natural shift: int8 on uci-digits >= pruned - 1 pt"] == pytest.approx(
        int8_vs_pruned["difference"] * 100
    )


def test_gpu_benchmark_script_runs_with_torch_and_onnxruntime_alone(staged, tmp_path):
    out = tmp_path / "gpu.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.gpu",
            "--run",
            str(staged.root),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--archs",
            "small_resnet",
            "--epochs",
            "1",
            "--replicate",
            "1",
            "--batch-size",
            "128",
        ],
        cwd=ROOT,
        env=venv_env(),
        check=True,
        capture_output=True,
    )
    result = json.loads(out.read_text())
    training = result["training"]["small_resnet"]
    assert training["plain_images_per_s"] > 0 and training["distillery_images_per_s"] > 0
    assert set(result["cpu_latency_ms"]) == {"pruned", "int8", "int8_speedup"}
    assert result["device"] == "cpu"
    for flag, key in (("avx512_vnni", "avx512_vnni"), ("avx_vnni", "avx_vnni"), ("amx_int8", "amx")):
        has_flag = subprocess.run(["grep", "-qw", flag, "/proc/cpuinfo"]).returncode == 0
        assert result["cpu"][key] is has_flag, flag
    imported = subprocess.run(
        [sys.executable, "-c", "import sys, bench.gpu; print(sorted(sys.modules))"],
        cwd=ROOT,
        env=venv_env(),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for absent in ("torchao", "torch_pruning", "prefect", "dvc", "great_expectations"):  # not on the GPU machines
        assert f"'{absent}'" not in imported


def test_scaled_source_has_distinct_images_in_shards(tmp_path):
    from bench.scale import write_source

    assert write_source(tmp_path, 3) == 15_000
    shards = [np.load(p) for p in sorted(tmp_path.glob("*.npz"))]
    assert len(shards) == 3 and all(s["x"].shape == (5000, 28, 28) and s["x"].dtype == np.uint8 for s in shards)
    images = np.concatenate([s["x"] for s in shards]).reshape(15_000, -1)
    assert len(np.unique(images, axis=0)) == 15_000  # no duplicates: the validation gate passes


def test_ship_choice_benchmark_repeats_the_report_stage_decision(staged, tmp_path):
    from bench.ship_choice import markdown, repeat_choice

    result = repeat_choice(staged, tiny_params(), repeats=3)
    assert sum(result["counts"].values()) == 3 and set(result["counts"]) <= {"pruned", "int8"}
    assert all(set(c["best_latency_ms"]) == {"pruned", "int8"} for c in result["choices"])
    assert markdown(result).count("\n| ") == 3 + 1  # a row per repeat under the header


def test_augment_choice_measures_on_validation_and_typeset_digits_each_also_on_grey_paper(staged):
    from bench.augment_choice import development_sets

    sets, val = development_sets(staged), load_dataset(staged.raw).val
    assert list(sets) == ["val", "val grey", "typeset", "typeset grey"]
    assert torch.equal(sets["val"].images, val.images[val.rows]) and torch.equal(sets["val"].y, val.y)
    typeset, labels = digit_sets.typeset_digits(tuple(val.images.shape[2:]))
    assert torch.equal(sets["typeset"].images[:, 0], torch.from_numpy(typeset))
    for name in ("val", "typeset"):
        grey = digit_sets.on_grey_paper(sets[name].images.numpy(), 60)
        assert torch.equal(sets[f"{name} grey"].images, torch.from_numpy(grey))
        assert torch.equal(sets[f"{name} grey"].y, sets[name].y)


def test_teacher_choice_scores_a_set_by_the_mean_of_its_members_probabilities():
    from bench.teacher_choice import beats_every_member, scores

    labels = np.array([0, 1])
    right_then_wrong = np.array([[0.9, 0.1], [0.6, 0.4]])
    wrong_then_right = np.array([[0.4, 0.6], [0.1, 0.9]])
    members = [{"clean": p, "corrupted": p[None]} for p in (right_then_wrong, wrong_then_right)]
    alone = [scores([m], labels) for m in members]
    together = scores(members, labels)
    assert [a["accuracy"] for a in alone] == [0.5, 0.5] and together["accuracy"] == 1.0
    assert together["nll"] == pytest.approx(-np.log(0.65)) and together["corrupted_accuracy"] == 1.0
    assert alone[0]["nll"] == pytest.approx(-(np.log(0.9) + np.log(0.4)) / 2)
    assert beats_every_member(together, alone) == {"accuracy": True, "nll": True, "corrupted_accuracy": True}
    assert beats_every_member(alone[0], alone) == {"accuracy": False, "nll": False, "corrupted_accuracy": False}


def test_teacher_cache_benchmark_times_distill_with_and_without_the_cache(staged, tmp_path, caplog):
    import shutil

    from bench import teacher_cache

    project = tmp_path / "project"
    for folder in (staged.raw, staged.validation, staged.teachers):
        shutil.copytree(folder, project / folder.relative_to(staged.root))
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_params().to_yaml_dict()))
    with caplog.at_level("INFO", logger="distillery"):
        results = teacher_cache.measure(project, tmp_path / "work", epochs=1)
    said = [r.message for r in caplog.records if r.name == "distillery"]
    cached = [m for m in said if "cached with the teachers' outputs" in m]  # load_teaching, once an arm
    live = [m for m in said if m.startswith("no cached teacher outputs")]
    assert len(cached) == 1 and len(live) == 1 and said.index(cached[0]) < said.index(live[0])
    assert results["epochs"] == 1 and results["teachers"].keys() == {n for n in staged.teacher_models()}
    assert results["cache_s"] > 0 and results["cached"]["seconds"] > 0 and results["live"]["seconds"] > 0
    assert not Layout(tmp_path / "work").teacher_outputs.exists()  # the second run had no cache to read
    assert "| distill running the teachers on every batch |" in teacher_cache.markdown(results)


def test_combine_benchmark_fits_each_rule_on_validation_and_measures_it_on_test(staged):
    from bench import combine as bench_combine

    run = bench_combine.measure(staged.root)
    rows = run["rows"]
    val = load_dataset(staged.raw).val
    members = torch.stack([logits(load_model(staged, t), val, torch.device("cpu")) for t in staged.teacher_models()], 1)
    assert rows["fitted_weights"]["weights"] == pytest.approx(combine.fit_weights(members, val.y).weights, abs=1e-6)
    assert list(rows) == [n.removeprefix("teacher_") for n in staged.teacher_models()] + list(combine.RULES)
    assert rows["mean_probabilities"]["weights"] == (0.5, 0.5) and sum(
        rows["fitted_weights"]["weights"]
    ) == pytest.approx(1)
    assert all(0 < r["accuracy"] <= 1 and r["nll"] > 0 for r in rows.values())
    table = bench_combine.markdown({"git_commit": "x", "cpu": {"model": "cpu", "cores": 2}, "runs": [run]})
    assert "| fitted_weights |" in table and "| 0_wide_cnn |" in table


def test_predict_benchmark_times_the_command_and_the_model_on_the_same_images(staged, tmp_path):
    from bench import predict as bench_predict

    results = bench_predict.measure(staged, 70, 1, work=tmp_path)
    assert results["images"] == 70 and len(list((tmp_path / "images").glob("*.png"))) == 70
    assert results["model"] == ShipDecision.read(staged.ship_decision).model
    assert results["converted"] == 0 and results["image_shape"] == [8, 8, 1]
    assert all(rate > 0 for rate in results["images_per_s"].values()) and len(results["images_per_s"]) == 4
    table = bench_predict.markdown(
        results | {"git_commit": "x", "cpu": {"model": "cpu", "cores": 2}, "onnxruntime": "1"}
    )
    assert table.count("\n| ") == 4 + 1


def test_a_kd_choice_variant_sets_its_keys_and_the_seed_over_the_params_and_is_validated():
    params = with_variant(PipelineParams(), "kd.temperature=4,distill.epochs=40", seed=3)
    assert (params.kd.temperature, params.distill.epochs, params.distill.seed, params.prune.seed) == (4.0, 40, 3, 3)
    assert params.kd.alpha == PipelineParams().kd.alpha  # the rest as it was
    with pytest.raises(ValidationError):
        with_variant(PipelineParams(), "distill.epoch=4", seed=0)  # unknown keys are refused
    for bad in ("kd.combine=mean_logits", "teachers.epochs=5", "kd", "kd.temperature="):
        with pytest.raises(DistilleryError, match="section.key=value"):  # what the rerun stages do not read
            with_variant(PipelineParams(), bad, seed=0)

"""What a run's models are worth beyond clean top-1 accuracy, measured on their ONNX files: each accuracy
with its 95% interval, calibration before and after temperature scaling, accuracy under the corruption
suite, top-1 agreement with the ensemble (the model `ensemble` names) and the train-test gap."""

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from distillery import calibration, corruptions, onnx_export, stats
from distillery.data import Dataset, Split


@dataclass(frozen=True)
class PerImage:
    """What paired comparisons need: per test image, each model's hit on the clean image, and the share
    of its corrupted copies (every kind at every severity) that the model gets right."""

    clean: dict[str, np.ndarray]
    corrupted: dict[str, np.ndarray]


def corrupted_hits(
    sessions: dict[str, ort.InferenceSession], split: Split, *, kind: str, severity: int, ensemble: str
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per model, per image of `split` with `kind` of corruption at `severity`: whether the model is right,
    and whether it gives the ensemble's class. One block of images is in memory at a time."""
    found: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {name: [] for name in sessions}
    for start, x in corruptions.corrupted_blocks(split, kind, severity):
        predicted = {name: onnx_export.outputs(sess, x.numpy()).argmax(axis=1) for name, sess in sessions.items()}
        labels = split.y[start : start + len(x)].numpy()
        for name, p in predicted.items():
            found[name].append((p == labels, p == predicted[ensemble]))
    return {name: tuple(np.concatenate(parts) for parts in zip(*blocks, strict=True)) for name, blocks in found.items()}


def robustness(
    sessions: dict[str, ort.InferenceSession], split: Split, ensemble: str
) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """Per model: accuracy for every kind of corruption at each severity, the mean over all of them with its
    95% interval (images resampled), and the mean agreement with `ensemble`; and per image, the share of its
    corrupted copies the model gets right."""
    by_kind: dict[str, dict[str, list[float]]] = {name: {} for name in sessions}
    right = {name: np.zeros(len(split)) for name in sessions}
    agree = dict.fromkeys(sessions, 0)
    copies = len(corruptions.KINDS) * len(corruptions.SEVERITIES)
    for kind in corruptions.KINDS:
        for severity in corruptions.SEVERITIES:
            for name, (hits, same) in corrupted_hits(
                sessions, split, kind=kind, severity=severity, ensemble=ensemble
            ).items():
                by_kind[name].setdefault(kind, []).append(float(hits.mean()))
                right[name] += hits
                agree[name] += int(same.sum())
    shares = {name: counts / copies for name, counts in right.items()}
    measures = {
        name: {
            "accuracy": float(shares[name].mean()),
            "accuracy_interval": stats.mean_interval(shares[name]),
            "agreement_with_ensemble": agree[name] / (copies * len(split)),
            "accuracy_by_kind": by_kind[name],
        }
        for name in sessions
    }
    return measures, shares


def split_log_probabilities(sess: ort.InferenceSession, split: Split, *, probabilities: bool) -> np.ndarray:
    return calibration.log_probabilities(onnx_export.logits(sess, split), probabilities=probabilities)


def evaluate(
    sessions: dict[str, ort.InferenceSession], data: Dataset, *, probabilities: set[str], ensemble: str
) -> tuple[dict[str, dict], PerImage]:
    """Every model's measures, and its per-image results on the test split (for paired comparisons).
    `probabilities` names the models that output class probabilities (the others output logits)."""
    test_y, val_y = data.test.y.numpy(), data.val.y.numpy()
    test = {n: split_log_probabilities(s, data.test, probabilities=n in probabilities) for n, s in sessions.items()}
    hits = {name: log_p.argmax(axis=1) == test_y for name, log_p in test.items()}
    corrupted, shares = robustness(sessions, data.test, ensemble)
    measures = {}
    for name, sess in sessions.items():
        val = split_log_probabilities(sess, data.val, probabilities=name in probabilities)
        train_accuracy = onnx_export.accuracy(sess, data.train)
        temperature = calibration.fit_temperature(val, val_y)
        accuracy = float(hits[name].mean())
        measures[name] = {
            "accuracy": accuracy,
            "accuracy_interval": stats.accuracy_interval(hits[name]),
            "val_accuracy": float((val.argmax(axis=1) == val_y).mean()),
            "train_accuracy": train_accuracy,
            "train_test_gap_pp": (train_accuracy - accuracy) * 100,
            "agreement_with_ensemble": float((test[name].argmax(axis=1) == test[ensemble].argmax(axis=1)).mean()),
            "calibration": calibration.calibration(test[name], test_y),
            "temperature": temperature,
            "calibrated": calibration.calibration(calibration.scaled(test[name], temperature), test_y),
            "corrupted": corrupted[name],
        }
    return measures, PerImage(clean=hits, corrupted=shares)


def evaluate_set(
    sessions: dict[str, ort.InferenceSession],
    split: Split,
    *,
    probabilities: set[str],
    ensemble: str,
    temperatures: dict[str, float],
) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """Every model's accuracy with its 95% interval, agreement with `ensemble` and calibration (raw, and scaled by
    its temperature from `temperatures`) on the images of `split`; and per image, whether the model is right."""
    y = split.y.numpy()
    log_p = {n: split_log_probabilities(s, split, probabilities=n in probabilities) for n, s in sessions.items()}
    hits = {name: found.argmax(axis=1) == y for name, found in log_p.items()}
    measures = {
        name: {
            "accuracy": float(hits[name].mean()),
            "accuracy_interval": stats.accuracy_interval(hits[name]),
            "agreement_with_ensemble": float((found.argmax(axis=1) == log_p[ensemble].argmax(axis=1)).mean()),
            "calibration": calibration.calibration(found, y),
            "calibrated": calibration.calibration(calibration.scaled(found, temperatures[name]), y),
        }
        for name, found in log_p.items()
    }
    return measures, hits

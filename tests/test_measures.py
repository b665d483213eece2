"""The measures beyond top-1 accuracy: calibration, temperature scaling, bootstrap intervals, paired
comparisons and the corruption suite, each checked against a case whose answer is known."""

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from distillery import calibration, corruptions, evaluation, onnx_export, stats
from distillery.data import Split, load_dataset, normalise
from tests.conftest import ROOT


def two_class(p_first: float, labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Log-probabilities [p, 1 - p] for every image, and the labels."""
    probs = np.tile([p_first, 1 - p_first], (len(labels), 1))
    with np.errstate(divide="ignore"):  # log 0 = -inf: a class given no probability at all
        return np.log(probs), np.array(labels)


def test_ece_is_the_gap_between_confidence_and_accuracy():
    calibrated = two_class(0.9, [0] * 90 + [1] * 10)
    overconfident = two_class(0.9, [0] * 60 + [1] * 40)
    assert calibration.ece(*calibrated) == pytest.approx(0.0, abs=1e-12)
    assert calibration.ece(*overconfident) == pytest.approx(0.3)


def test_ece_weighs_each_confidence_bin_apart():
    """Half the images at confidence 0.9, all right; half at 0.7, 60% right. Over all images confidence and
    accuracy are both 0.8, so a gap without bins would be 0; per bin it is 0.1 on each half."""
    sure, labels_sure = two_class(0.9, [0] * 50)
    unsure, labels_unsure = two_class(0.7, [0] * 30 + [1] * 20)
    log_p, labels = np.concatenate([sure, unsure]), np.concatenate([labels_sure, labels_unsure])
    assert calibration.ece(log_p, labels) == pytest.approx(0.1)
    certain, labels_certain = two_class(1.0, [0] * 3 + [1])  # confidence exactly 1 falls in the top bin
    assert calibration.ece(certain, labels_certain) == pytest.approx(0.25)


def test_nll_and_brier_of_known_probabilities():
    log_p, labels = two_class(0.9, [0, 1])
    assert calibration.nll(log_p, labels) == pytest.approx(-(np.log(0.9) + np.log(0.1)) / 2)
    assert calibration.brier(log_p, labels) == pytest.approx((0.02 + 1.62) / 2)


def test_log_probabilities_from_logits_and_from_probabilities_agree():
    logits = np.random.default_rng(0).normal(size=(50, 10)) * 3
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    from_logits = calibration.log_probabilities(logits, probabilities=False)
    from_probs = calibration.log_probabilities(probs, probabilities=True)
    np.testing.assert_allclose(from_logits, from_probs, atol=1e-9)


def calibrated_logits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true class distribution: labels drawn from it."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 10)) * 2
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    labels = np.array([rng.choice(10, p=p) for p in probs])
    return logits, labels


def test_fitted_temperature_undoes_overconfidence_and_lowers_held_out_nll():
    fit_logits, fit_labels = calibrated_logits(20_000, seed=0)
    temperature = calibration.fit_temperature(
        calibration.log_probabilities(3 * fit_logits, probabilities=False), fit_labels
    )
    assert temperature == pytest.approx(3.0, rel=0.05)

    held_out, labels = calibrated_logits(5_000, seed=1)
    overconfident = calibration.log_probabilities(3 * held_out, probabilities=False)
    after = calibration.scaled(overconfident, temperature)
    assert calibration.nll(after, labels) < calibration.nll(overconfident, labels) - 0.5
    assert calibration.ece(after, labels) < calibration.ece(overconfident, labels) / 3


def test_a_model_right_on_every_image_is_not_scaled():
    logits, labels = calibrated_logits(500, seed=0)
    right = np.where(np.arange(10) == labels[:, None], 10.0, 0.0) + 0.1 * logits  # the label always on top
    log_p = calibration.log_probabilities(right, probabilities=False)
    assert calibration.fit_temperature(log_p, labels) == 1.0
    wrong = (labels[0] + 1) % 10
    log_p[0, [labels[0], wrong]] = log_p[0, [wrong, labels[0]]]  # one image wrong: the best T on these images
    assert calibration.best_temperature(log_p, labels) > 1.1  # ... softens every image for the one,
    assert calibration.fit_temperature(log_p, labels) == 1.0  # which no held-out part confirms


def test_a_temperature_that_held_out_images_do_not_confirm_is_not_used():
    """400 images of a calibrated model (its true temperature is 1): the best temperature on them is off by up to
    11% (noise), and only held-out parts tell; 400 images of a model 3x overconfident: the fit stands."""
    for seed in range(10):
        logits, labels = calibrated_logits(400, seed=seed)
        log_p = calibration.log_probabilities(logits, probabilities=False)
        assert calibration.fit_temperature(log_p, labels) == 1.0
        if seed == 4:
            assert calibration.best_temperature(log_p, labels) < 0.9
        overconfident = calibration.log_probabilities(3 * logits, probabilities=False)
        gain = calibration.held_out_gain(overconfident, labels)
        assert gain.mean() > 0.3
        assert calibration.fit_temperature(overconfident, labels) == calibration.best_temperature(overconfident, labels)
        assert 2.5 < calibration.fit_temperature(overconfident, labels) < 3.5


def test_accuracy_interval_is_about_three_quarters_of_a_point_at_985_of_1000():
    correct = np.arange(1000) < 985
    low, high = stats.accuracy_interval(correct)
    assert low < 0.985 < high
    assert 0.013 < high - low < 0.017


def test_bootstrap_matches_resampling_images_by_hand():
    rng = np.random.default_rng(1)
    shares = rng.integers(0, 31, 400) / 30  # per image: the share of 30 corrupted copies a model gets right
    resampled = [shares[rng.integers(0, 400, 400)].mean() for _ in range(4000)]
    by_hand = np.percentile(resampled, [2.5, 97.5])
    np.testing.assert_allclose(stats.mean_interval(shares), by_hand, atol=0.004)


def test_pooled_seeds_resample_images_not_copies():
    """Three seeds that agree on every image are one test set, not three times as many images; seeds that differ
    give each image the share of seeds that get it right."""
    hits = np.arange(1000) < 985
    one_seed = stats.accuracy_interval(hits)
    three_alike = stats.accuracy_interval(np.stack([hits, hits, hits]))
    assert three_alike == one_seed
    seeds = np.stack([hits, np.roll(hits, 7), np.roll(hits, 400)])  # each seed misses other images
    shares = seeds.sum(axis=0) / 3
    assert stats.accuracy_interval(seeds) == stats.mean_interval(shares) != stats.accuracy_interval(seeds[0])


def test_paired_difference_sees_a_gain_that_unpaired_intervals_miss():
    a = np.ones(1000, bool)
    a[:10] = False  # A: 99.0%
    b = a.copy()
    b[10:25] = False  # B: 97.5%; both miss the same 10 images, A gets 15 more right
    found = stats.paired_difference(a, b)
    assert found["difference"] == pytest.approx(0.015) and found["images"] == 1000
    assert 0 < found["interval"][0] < 0.015 < found["interval"][1]
    test = stats.mcnemar(a, b)
    assert (test["only_a"], test["only_b"]) == (15, 0)
    assert test["mcnemar_p"] == pytest.approx(binomtest(0, 15, 0.5).pvalue)
    assert stats.accuracy_interval(a)[0] < stats.accuracy_interval(b)[1]  # the unpaired intervals overlap


def test_paired_difference_of_a_model_with_itself_is_zero():
    correct = np.random.default_rng(0).random(500) < 0.9
    found = stats.paired_difference(correct, correct)
    assert found["difference"] == 0 and found["interval"] == [0.0, 0.0]
    assert stats.mcnemar(correct, correct)["mcnemar_p"] == 1.0


@pytest.mark.parametrize("only_a,only_b", [(3, 9), (20, 31), (0, 1)])
def test_mcnemar_matches_scipys_binomial_test(only_a, only_b):
    assert stats.mcnemar_p(only_a, only_b) == pytest.approx(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def strokes(n: int, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """Images with structure (bright bars) on a textured ground, so that every corruption changes them."""
    h, w = size
    images = torch.zeros(n, channels, h, w, dtype=torch.int32)
    for i in range(n):
        images[i, :, h // 4 : h // 4 + max(2, h // 6), w // 5 : 4 * w // 5] = 128 - 10 * (i % 5)
        images[i, :, h // 3 : 5 * h // 6, w // 2 - i % 3 : w // 2 + 2] = 100
    texture = torch.randint(0, 80, images.shape, generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    return (images + texture).to(torch.uint8)


@pytest.mark.parametrize(
    "shape", [(1, (28, 28)), (3, (32, 40)), (2, (16, 16)), (1, (8, 8)), (4, (12, 20)), (3, (64, 48)), (1, (9, 13))]
)
def test_every_corruption_is_deterministic_keeps_the_shape_and_grows_with_severity(shape):
    channels, size = shape
    images = strokes(6, channels, size)
    assert len(corruptions.KINDS) >= 8 and corruptions.SEVERITIES == (1, 2, 3)
    for kind in corruptions.KINDS:
        change = []
        for severity in corruptions.SEVERITIES:
            out = corruptions.corrupt(images, kind, severity)
            assert out.dtype == torch.uint8 and out.shape == images.shape, kind
            assert torch.equal(out, corruptions.corrupt(images, kind, severity)), kind
            change.append((out.float() - images.float()).abs().mean().item())
        assert 0 < change[0] < change[1] < change[2], (kind, change)
        assert torch.equal(corruptions.corrupt(images, kind, 0), images), kind  # its neutral setting


def test_corrupted_accuracy_is_counted_one_block_at_a_time(staged, monkeypatch):
    data = load_dataset(staged.raw)
    test = Split(data.test.images, data.test.rows.repeat(2), data.test.y.repeat(2))  # more than one block
    assert len(test) > corruptions.BLOCK
    sessions = {name: onnx_export.session(staged.onnx(name)) for name in ("ensemble", "pruned")}
    seen = []
    corrupt = corruptions.corrupt

    def spy(images, *args, **kwargs):
        seen.append(len(images))
        return corrupt(images, *args, **kwargs)

    monkeypatch.setattr(corruptions, "corrupt", spy)
    found = evaluation.corrupted_hits(sessions, test, kind="gaussian_noise", severity=3, ensemble="ensemble")
    assert max(seen) <= corruptions.BLOCK and sum(seen) == len(test)
    blocks = [
        corrupt(test.images[test.rows[start : start + corruptions.BLOCK]], "gaussian_noise", 3, start=start)
        for start in range(0, len(test), corruptions.BLOCK)
    ]
    whole = normalise(torch.cat(blocks)).numpy()
    predicted = {name: onnx_export.outputs(sess, whole).argmax(axis=1) for name, sess in sessions.items()}
    np.testing.assert_array_equal(found["pruned"][0], predicted["pruned"] == test.y.numpy())
    np.testing.assert_array_equal(found["pruned"][1], predicted["pruned"] == predicted["ensemble"])
    assert found["ensemble"][1].all()


def test_each_block_draws_its_own_noise():
    """The same image in two blocks gets other noise: each block's random draws start at its place in the split,
    so the suite is the same whatever the block size, and no two blocks repeat one draw."""
    images = strokes(1, 1, (8, 8))
    split = Split(images, torch.zeros(2 * corruptions.BLOCK, dtype=torch.long), torch.zeros(2 * corruptions.BLOCK))
    (first_start, first), (second_start, second) = corruptions.corrupted_blocks(split, "gaussian_noise", 2)
    assert (first_start, second_start) == (0, corruptions.BLOCK)
    assert not torch.equal(first, second)
    block = images[split.rows[: corruptions.BLOCK]]
    assert torch.equal(second, normalise(corruptions.corrupt(block, "gaussian_noise", 2, start=corruptions.BLOCK)))


def test_the_docs_describe_the_suite_as_built():
    text = " ".join((ROOT / "docs" / "how-a-run-works.md").read_text().split())
    assert f"under {len(corruptions.KINDS)} deterministic corruptions" in text
    assert f"at {len(corruptions.SEVERITIES)} severities each" in text
    assert f"ECE ({calibration.ECE_BINS} equal-width confidence bins)" in text
    assert f"one block of {corruptions.BLOCK} corrupted images" in text
    assert f"at least that share of {corruptions.MIN_SIDE} pixels" in text

"""How sure a measured accuracy is: 95% bootstrap intervals over test images, and paired comparisons
of two models on the same images (a paired bootstrap interval of the difference, McNemar's exact test).

A per-image score is what one image contributes: a hit (0 or 1), or the share of its copies a model
gets right (over seeds, or over corruptions), which takes few distinct values. The bootstrap resamples
images, never copies of one image, so seeds that share the test images do not count as more images.
Resampling n images with replacement only changes how many images of each distinct score it draws: a
multinomial, drawn directly. That is the bootstrap exactly, at any test-set size. Where every image
scores the same (a model right on every test image), every resample does too and the interval is a point.
"""

import math

import numpy as np

LEVEL = 0.95
SAMPLES = 10_000


def per_image(scores: np.ndarray) -> np.ndarray:
    """One score per image: `scores` itself (N), or its mean over the first axis (copies x N)."""
    scores = np.asarray(scores, dtype=np.float64)
    return scores.mean(axis=0) if scores.ndim == 2 else scores


def mean_interval(values: np.ndarray, *, seed: int = 0) -> list[float]:
    """The 95% bootstrap interval of the mean of per-image `values` (few distinct values)."""
    distinct, counts = np.unique(values, return_counts=True)
    draws = np.random.default_rng(seed).multinomial(len(values), counts / len(values), SAMPLES) @ distinct
    tail = (1 - LEVEL) / 2 * 100
    return [float(v) for v in np.percentile(draws / len(values), [tail, 100 - tail])]


def accuracy_interval(hits: np.ndarray) -> list[float]:
    """The 95% bootstrap interval of an accuracy from per-image hits (N bools, or copies x N)."""
    return mean_interval(per_image(hits))


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict:
    """A's accuracy minus B's on the same images (hits N, or copies x N): the difference and its 95% paired
    bootstrap interval (images resampled with both models' scores)."""
    a, b = per_image(a), per_image(b)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison of {a.shape} and {b.shape} images")
    return {"difference": float(a.mean() - b.mean()), "interval": mean_interval(a - b), "images": len(a)}


def mcnemar(hits_a: np.ndarray, hits_b: np.ndarray) -> dict:
    """McNemar's exact test on one copy of the images: how many only A gets right, how many only B, and the
    two-sided binomial p-value of that split."""
    hits_a, hits_b = np.asarray(hits_a, bool), np.asarray(hits_b, bool)
    only_a, only_b = int((hits_a & ~hits_b).sum()), int((hits_b & ~hits_a).sum())
    return {"only_a": only_a, "only_b": only_b, "mcnemar_p": mcnemar_p(only_a, only_b)}


def mcnemar_p(only_a: int, only_b: int) -> float:
    n = only_a + only_b
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)

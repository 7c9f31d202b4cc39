"""kdlib.synthesis.valuation: KNN-Shapley against a brute-force Shapley computation."""

import itertools
import math

import numpy as np
import pytest

from kdlib.synthesis.valuation import knn_shapley, top_fraction


def knn_utility(subset, x, y, v, yv, k):
    """Jia et al.'s utility: mean over validation points of (1/K) * #same-label among the K nearest in `subset`."""
    if not subset:
        return 0.0
    total = 0.0
    for j in range(len(v)):
        near = sorted(subset, key=lambda i: (np.sum((x[i] - v[j]) ** 2), i))[:k]
        total += sum(y[i] == yv[j] for i in near) / k
    return total / len(v)


def brute_shapley(x, y, v, yv, k):
    n = len(x)
    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for size in range(n):
            for s in itertools.combinations(others, size):
                w = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
                phi[i] += w * (knn_utility(list(s) + [i], x, y, v, yv, k) - knn_utility(list(s), x, y, v, yv, k))
    return phi


@pytest.mark.parametrize("k", [1, 2, 3])
def test_matches_brute_force_shapley(k):
    rng = np.random.default_rng(k)
    x, v = rng.normal(size=(6, 2)), rng.normal(size=(3, 2))
    y, yv = rng.integers(0, 2, 6), rng.integers(0, 2, 3)
    assert knn_shapley(x, y, v, yv, k) == pytest.approx(brute_shapley(x, y, v, yv, k), abs=1e-12)


def test_mislabelled_point_gets_the_lowest_value():
    x = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [0.15]])
    y = np.array([0, 0, 0, 1, 1, 1])  # the last point sits among class 0 with label 1
    v, yv = np.array([[0.05], [0.12], [5.05]]), np.array([0, 0, 1])
    values = knn_shapley(x, y, v, yv, k=3)
    assert values.argmin() == 5 and values.sum() == pytest.approx(knn_utility(list(range(6)), x, y, v, yv, 3))
    assert top_fraction(values, 0.5).tolist() == sorted(np.argsort(-values)[:3].tolist())


def test_errors():
    with pytest.raises(ValueError, match="shapes"):
        knn_shapley(np.zeros((3, 2)), [0, 1], np.zeros((1, 2)), [0])
    with pytest.raises(ValueError, match="fraction"):
        top_fraction([1.0], 0)

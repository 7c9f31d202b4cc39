"""Data valuation: how much each training example helps, to keep the useful synthetic ones.

`knn_shapley` is the exact Shapley value of each training point for the utility "accuracy of
a K-nearest-neighbour classifier on the validation set" (Jia et al., 2019, "Efficient
task-specific data valuation for nearest neighbor algorithms", Theorem 1), computed by their
O(N log N) recursion per validation point. Points that sit among same-label neighbours of
validation items get positive value; mislabelled or off-distribution ones get negative value.
Embeddings come from the student, so the value is "useful to this student's representation".
"""

from __future__ import annotations

import numpy as np


def knn_shapley(train_emb, train_labels, val_emb, val_labels, k: int = 5) -> np.ndarray:
    """Shapley value (N,) of each training point, averaged over the validation points.

    For one validation point with training points sorted by distance a_1 (nearest) .. a_N:
        s(a_N) = 1[y_N = y] / N
        s(a_i) = s(a_{i+1}) + (1[y_i = y] - 1[y_{i+1} = y]) / K * min(K, i) / i
    Distances are Euclidean; ties are broken by index (stable sort).
    """
    x, v = np.asarray(train_emb, dtype=np.float64), np.asarray(val_emb, dtype=np.float64)
    y, yv = np.asarray(train_labels), np.asarray(val_labels)
    n = len(x)
    if x.ndim != 2 or v.ndim != 2 or x.shape[1] != v.shape[1] or len(y) != n or len(yv) != len(v):
        raise ValueError(f"shapes do not fit: train {x.shape} / {y.shape}, validation {v.shape} / {yv.shape}")
    if n == 0 or len(v) == 0:
        raise ValueError("knn_shapley needs at least one training and one validation point")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    # squared distances [V, N] without forming differences
    d = (v**2).sum(1)[:, None] - 2 * v @ x.T + (x**2).sum(1)[None, :]
    values = np.zeros(n)
    ranks = np.arange(1, n + 1)
    weight = np.minimum(k, ranks[:-1]) / ranks[:-1] / k   # for positions i = 1..N-1
    for j in range(len(v)):
        order = np.argsort(d[j], kind="stable")
        match = (y[order] == yv[j]).astype(np.float64)
        s = np.empty(n)
        s[-1] = match[-1] / n
        # s_i = s_{i+1} + (m_i - m_{i+1}) * w_i, unrolled as a reversed cumulative sum
        steps = (match[:-1] - match[1:]) * weight
        s[:-1] = s[-1] + np.cumsum(steps[::-1])[::-1]
        values[order] += s
    return values / len(v)


def top_fraction(values, fraction: float) -> np.ndarray:
    """Indices of the highest-valued `fraction` of items (at least one), in their original order."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    values = np.asarray(values, dtype=np.float64)
    keep = max(1, int(round(fraction * len(values)))) if len(values) else 0
    return np.sort(np.argsort(-values, kind="stable")[:keep])

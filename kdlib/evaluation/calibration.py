"""Is a student's confidence worth believing? Expected calibration error, reliability diagrams and
temperature scaling (Guo et al., 2017).

A classifier is calibrated when, among the inputs it labels with confidence c, a fraction c is right.
With its top-label confidence split into M equal-width bins B_m:

    ECE = sum_m |B_m| / n * | acc(B_m) - conf(B_m) |

Temperature scaling is the standard post-hoc fix: divide the logits z by one scalar T > 0 fitted on the
validation split (never test) by minimising the negative log-likelihood,

    T* = argmin_T  - sum_i log softmax(z_i / T)[y_i],

which changes every confidence but no argmax, so accuracy and macro-F1 are untouched.

ECE comes from torchmetrics (``multiclass_calibration_error``, L1 norm), the reliability bins from
scikit-learn's ``calibration_curve`` on (correct?, confidence) pairs; only the one-parameter fit is written
here (a bounded scalar search over log T with scipy, exact enough and deterministic).
"""

from __future__ import annotations

import numpy as np


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature, shape (n, classes) -> (n, classes)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _check(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"expected probabilities (n, classes) and n labels, got {probs.shape} and {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must be class ids in [0, {probs.shape[1]}), got {labels.min()}..{labels.max()}")
    if not np.isfinite(probs).all():
        raise ValueError("probabilities contain NaN or inf (a diverged student?)")
    return probs, labels


def expected_calibration_error(probs, labels, bins: int = 15) -> float:
    """Top-label ECE in [0, 1] of probabilities (n, classes) against class ids (n,); NaN for no rows."""
    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error

    probs, labels = _check(probs, labels)
    if not len(labels):
        return float("nan")
    return float(multiclass_calibration_error(torch.from_numpy(probs).float(), torch.from_numpy(labels),
                                              num_classes=probs.shape[1], n_bins=bins, norm="l1"))


def reliability(probs, labels, bins: int = 10):
    """The reliability diagram's points: per non-empty confidence bin its mean confidence, accuracy and
    share of rows (a frame with columns confidence, accuracy, share)."""
    import pandas as pd
    from sklearn.calibration import calibration_curve

    probs, labels = _check(probs, labels)
    if not len(labels):
        return pd.DataFrame(columns=["confidence", "accuracy", "share"])
    confidence, correct = probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(int)
    if correct.min() == correct.max():  # calibration_curve needs both outcomes; one bin per occupied edge instead
        edges = np.linspace(0, 1, bins + 1)
        which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
        rows = [(confidence[which == b].mean(), correct[which == b].mean(), (which == b).mean())
                for b in range(bins) if (which == b).any()]
        return pd.DataFrame(rows, columns=["confidence", "accuracy", "share"])
    accuracy, mean_conf = calibration_curve(correct, confidence, n_bins=bins, strategy="uniform")
    edges = np.linspace(0, 1, bins + 1)
    counts = np.histogram(confidence, bins=edges)[0]
    return pd.DataFrame({"confidence": mean_conf, "accuracy": accuracy, "share": counts[counts > 0] / len(labels)})


def fit_temperature(logits, labels, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """T* minimising the NLL of softmax(logits / T) on (validation) class ids; 1.0 when there is nothing to fit."""
    from scipy.optimize import minimize_scalar

    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    _check(softmax(logits) if len(logits) else np.zeros((0, 1)), labels)
    if len(labels) < 2:
        return 1.0

    def nll(log_t: float) -> float:
        z = logits / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(-(z[np.arange(len(labels)), labels] - np.log(np.exp(z).sum(axis=1))).mean())

    best = minimize_scalar(nll, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                           options={"xatol": 1e-4})
    return float(np.exp(best.x))


def calibration_report(val_logits, val_labels, test_logits, test_labels, bins: int = 15) -> dict:
    """ECE and NLL on test before and after temperature scaling fitted on validation, and T itself."""
    t = fit_temperature(val_logits, val_labels)
    out = {"temperature": t}
    for name, temp in (("raw", 1.0), ("scaled", t)):
        probs = softmax(test_logits, temp)
        labels = np.asarray(test_labels, dtype=np.int64)
        out[f"ece_{name}"] = expected_calibration_error(probs, labels, bins)
        out[f"nll_{name}"] = float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())
    return out

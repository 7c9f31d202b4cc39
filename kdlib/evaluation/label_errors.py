"""Which teacher labels are wrong? Confident learning (Northcutt, Jiang & Chuang, JAIR 2021) through cleanlab.

Every row of a teacher-labelled pool gets class probabilities from a student that never saw it (K folds,
one student per fold, trained like every other student in the lab). From these out-of-fold probabilities
cleanlab estimates the joint distribution of given and true labels (the confident joint) and flags the rows
whose given label is least likely ("prune by noise rate").

Whether a flag is right is measured against gold (the pool's hidden true labels): precision is the share of
flagged rows whose teacher label is wrong, recall the share of wrong rows that are flagged, against the base
rate (the teacher's error rate, the precision of flagging at random). Whether flagging is *useful* is a
separate question, answered by a student retrained without the flagged rows against one retrained without
as many random rows (the fair baseline: removing rows alone changes a student).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _folds(labels: np.ndarray, folds: int, seed: int):
    from sklearn.model_selection import KFold, StratifiedKFold

    counts = np.bincount(labels)
    stratify = counts[counts > 0].min() >= folds
    splitter = (StratifiedKFold if stratify else KFold)(n_splits=folds, shuffle=True, random_state=seed)
    return splitter.split(np.zeros(len(labels)), labels)


def out_of_fold_probs(rows: Sequence[dict], label_names: Sequence[str], config, folds: int = 4) -> np.ndarray:
    """(n, classes) probabilities of each row's class from a student trained on the other folds
    (StratifiedKFold when every class has at least `folds` rows, else KFold; seeded by ``config.seed``)."""
    from kdlib.students.student import train_classifier

    names = list(label_names)
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    if len(rows) < folds:
        raise ValueError(f"{len(rows)} rows cannot be split into {folds} folds")
    labels = np.array([names.index(r["label"]) for r in rows])
    probs = np.zeros((len(rows), len(names)), dtype=np.float64)
    for k, (train_idx, held_idx) in enumerate(_folds(labels, folds, config.seed)):
        fold_student = train_classifier([rows[i] for i in train_idx], None, config.replace(seed=config.seed + k),
                                        label_names=names)
        probs[held_idx] = fold_student.predict_proba([rows[i]["text"] for i in held_idx])
    return probs


def find_errors(given: Sequence[str], probs: np.ndarray, label_names: Sequence[str]) -> tuple[np.ndarray, str]:
    """(a boolean mask of rows cleanlab flags, "" or why nothing could be flagged)."""
    from cleanlab.filter import find_label_issues

    names = list(label_names)
    labels = np.array([names.index(g) for g in given])
    if len(set(labels.tolist())) < 2:
        return np.zeros(len(labels), dtype=bool), "every given label is the same class"
    try:
        mask = find_label_issues(labels, np.asarray(probs, dtype=np.float64), filter_by="prune_by_noise_rate",
                                 n_jobs=1)
    except (ValueError, AssertionError) as exc:  # e.g. a class with too few rows to estimate its noise rate
        return np.zeros(len(labels), dtype=bool), f"cleanlab could not estimate the noise: {exc}"
    return np.asarray(mask, dtype=bool), ""


def flag_quality(flags: np.ndarray, given: Sequence[str], gold: Sequence[str]) -> dict:
    """Precision, recall and F1 of the flags against the rows whose given label differs from gold, with the
    base rate (share of wrong rows: the precision of flagging at random) and the counts."""
    flags = np.asarray(flags, dtype=bool)
    wrong = np.array([g != t for g, t in zip(given, gold)])
    if len(flags) != len(wrong):
        raise ValueError(f"{len(flags)} flags for {len(wrong)} rows")
    hits = int((flags & wrong).sum())
    precision = hits / flags.sum() if flags.any() else float("nan")
    recall = hits / wrong.sum() if wrong.any() else float("nan")
    f1 = (2 * precision * recall / (precision + recall)
          if flags.any() and wrong.any() and precision + recall > 0 else float("nan"))
    return {"flagged": int(flags.sum()), "wrong": int(wrong.sum()), "rows": len(wrong), "precision": precision,
            "recall": recall, "f1": f1, "base_rate": float(wrong.mean()) if len(wrong) else float("nan")}


def random_drop(n: int, k: int, seed: int) -> np.ndarray:
    """A boolean mask of `k` of `n` rows drawn at random (the fair baseline for dropping `k` flagged rows)."""
    if not 0 <= k <= n:
        raise ValueError(f"cannot drop {k} of {n} rows")
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).choice(n, size=k, replace=False)] = True
    return mask

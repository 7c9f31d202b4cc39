"""Self-training (the survey's *model self-improvement* for classifiers): the student labels its own data.

Round 0 trains on the gold few-shot set. Each later round, the current student predicts the
unlabelled pool; the items it is most confident about (probability >= `threshold`, at most
`per_class_per_round` per predicted class, so that a majority class cannot take over) join the
training set with their predicted labels, and a fresh student trains on gold + all pseudo-labels
so far (Scudder 1965; Yarowsky 1995; the "classic" self-training of Xie et al. 2020 without noise).
Pseudo-labelled items leave the pool. Gold labels of the pool, when given, are only *measured*
(pseudo-label accuracy), never used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class SelfTrainingRound:
    round: int
    n_train: int                 # gold + pseudo-labelled rows the round's student trained on
    n_added: int                 # pseudo-labels added after this round's student predicted
    added_accuracy: float | None  # accuracy of those pseudo-labels against hidden gold (if known)
    scores: dict = field(default_factory=dict)   # the round's student on the evaluation set


def pick_confident(probs, threshold: float, per_class: int) -> list[tuple[int, int]]:
    """(pool index, predicted class) of the most confident predictions: probability >= threshold,
    at most `per_class` per predicted class, most confident first within a class."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be (n, classes), got shape {p.shape}")
    pred, conf = p.argmax(1), p.max(1)
    picked = []
    for c in range(p.shape[1]):
        idx = np.flatnonzero((pred == c) & (conf >= threshold))
        picked += [(int(i), c) for i in idx[np.argsort(-conf[idx], kind="stable")][:per_class]]
    return sorted(picked)


def self_train(gold: Sequence[dict], pool_texts: Sequence[str], label_names: Sequence[str], config, *,
               rounds: int = 3, threshold: float = 0.9, per_class_per_round: int = 32,
               evaluate_on=None, pool_gold: Sequence[str] | None = None, validation=None):
    """Run `rounds` rounds after round 0; returns (final student, [SelfTrainingRound, ...])."""
    from kdlib.students.student import train_classifier

    if rounds < 0 or not 0 < threshold <= 1 or per_class_per_round < 1:
        raise ValueError("rounds >= 0, 0 < threshold <= 1 and per_class_per_round >= 1 are required")
    if pool_gold is not None and len(pool_gold) != len(pool_texts):
        raise ValueError(f"pool_gold has {len(pool_gold)} labels for {len(pool_texts)} pool texts")
    names = list(label_names)
    remaining = list(range(len(pool_texts)))
    pseudo: list[dict] = []
    history = []
    for r in range(rounds + 1):
        student = train_classifier(list(gold) + pseudo, validation, config, label_names=names)
        scores = student.evaluate(evaluate_on) if evaluate_on is not None else {}
        added, acc = [], None
        if r < rounds and remaining:
            probs = student.predict_proba([pool_texts[i] for i in remaining])
            added = [(remaining[j], c) for j, c in pick_confident(probs, threshold, per_class_per_round)]
            pseudo += [{"text": pool_texts[i], "label": names[c]} for i, c in added]
            taken = {i for i, _ in added}
            remaining = [i for i in remaining if i not in taken]
            if pool_gold is not None and added:
                acc = float(np.mean([pool_gold[i] == names[c] for i, c in added]))
        history.append(SelfTrainingRound(r, len(gold) + len(pseudo) - len(added), len(added), acc, scores))
    return student, history


def study(train, label_names: Sequence[str], *, pool_size: int, shots: int, seeds: Sequence[int], config, test,
          rounds: int, threshold: float, per_class_per_round: int, seed: int = 0):
    """Notebook 04's self-training comparison: one pool of `pool_size` items from a seeded permutation of
    `train` (gold hidden, only measured), each seed's `shots` gold examples per class from the rest, then
    `self_train`. One row per seed and round: training size, additions, their accuracy, test scores."""
    import pandas as pd

    from kdlib.registry import data

    order = np.random.default_rng(seed).permutation(len(train))
    pool = train.select(order[:pool_size])
    texts, pool_gold = list(pool["text"]), [label_names[y] for y in pool["label"]]
    rows = []
    for s in seeds:
        gold = data.k_shot_rows(train.select(order[pool_size:]), shots, s)  # never inside the pool
        _, history = self_train(gold, texts, list(label_names), config.replace(seed=s), rounds=rounds,
                                threshold=threshold, per_class_per_round=per_class_per_round, evaluate_on=test,
                                pool_gold=pool_gold)
        rows += [{"seed": s, "round": h.round, "n_train": h.n_train, "added": h.n_added,
                  "added_accuracy": h.added_accuracy, "accuracy": h.scores["accuracy"],
                  "macro_f1": h.scores["macro_f1"]} for h in history]
    frame = pd.DataFrame(rows)
    frame["added_accuracy"] = pd.to_numeric(frame.added_accuracy)  # None (nothing added) -> NaN
    return frame

"""Evaluation metrics as thin wrappers over scikit-learn, seqeval, pandas and nltk.

Every function is pure (no I/O, no global state). Metric dicts are flat so that a
list of them becomes a DataFrame row by row; per-class scores use ``f1/<name>`` keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], label_names: Sequence[str]) -> dict:
    """Accuracy, macro-F1 over *all* classes in `label_names`, and ``f1/<class>`` per class.

    Passing the full label set to scikit-learn matters: a class the model never predicts
    (common for few-shot students) must count as F1 = 0 in the macro average, not vanish.
    """
    from sklearn.metrics import accuracy_score, f1_score

    _check_same_length(y_true, y_pred)
    labels = list(range(len(label_names)))
    per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    out = {"accuracy": float(accuracy_score(y_true, y_pred)),
           "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))}
    out.update({f"f1/{name}": float(f) for name, f in zip(label_names, per_class)})
    return out


def confusion(y_true: Sequence[int], y_pred: Sequence[int], label_names: Sequence[str]):
    """Confusion matrix as a DataFrame: rows are true labels, columns predicted labels (counts)."""
    import pandas as pd
    from sklearn.metrics import confusion_matrix

    _check_same_length(y_true, y_pred)
    matrix = confusion_matrix(y_true, y_pred, labels=list(range(len(label_names))))
    return pd.DataFrame(matrix, index=pd.Index(list(label_names), name="true"),
                        columns=pd.Index(list(label_names), name="predicted"))


def ner_metrics(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> dict:
    """Entity-level micro precision/recall/F1 (seqeval, conlleval rules) and ``f1/<type>``."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    _check_same_length(true_tags, pred_tags)
    for i, (t, p) in enumerate(zip(true_tags, pred_tags)):
        if len(t) != len(p):
            raise ValueError(f"sentence {i}: {len(t)} true tags but {len(p)} predicted tags")
    true_tags, pred_tags = [list(t) for t in true_tags], [list(p) for p in pred_tags]
    out = {"entity_f1": float(f1_score(true_tags, pred_tags, zero_division=0)),
           "precision": float(precision_score(true_tags, pred_tags, zero_division=0)),
           "recall": float(recall_score(true_tags, pred_tags, zero_division=0))}
    report = classification_report(true_tags, pred_tags, output_dict=True, zero_division=0)
    out.update({f"f1/{typ}": float(row["f1-score"]) for typ, row in sorted(report.items())
                if not typ.endswith(" avg")})
    return out


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and *sample* standard deviation (ddof=1) over seeds; std is NaN for a single value."""
    import numpy as np

    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        raise ValueError("mean_std needs at least one value")
    std = float(np.std(arr, ddof=1)) if arr.size > 1 else float("nan")
    return float(np.mean(arr)), std


def summarise(frame, by: str | Sequence[str], metrics: Sequence[str], digits: int = 3, as_text: bool = True):
    """Mean ± sample std of `metrics` per group of `by` (typically over seeds).

    ``as_text=True`` gives one ``"0.812 ± 0.013"`` column per metric plus ``n`` (the
    number of runs), ready to print; ``as_text=False`` gives numeric ``<metric>_mean``
    and ``<metric>_std`` columns for plotting.
    """
    import pandas as pd

    missing = [c for c in [*([by] if isinstance(by, str) else by), *metrics] if c not in frame.columns]
    if missing:
        raise KeyError(f"summarise: columns {missing} are not in the frame (has {list(frame.columns)})")
    grouped = frame.groupby(by, sort=False)[list(metrics)]
    mean, std = grouped.mean(), grouped.std(ddof=1)  # pandas' std is the sample std; NaN for n=1
    table = pd.DataFrame(index=mean.index)
    for m in metrics:
        if as_text:
            table[m] = [f"{a:.{digits}f}" + ("" if pd.isna(s) else f" ± {s:.{digits}f}")
                        for a, s in zip(mean[m], std[m])]
        else:
            table[f"{m}_mean"], table[f"{m}_std"] = mean[m], std[m]
    table["n"] = grouped.size()
    return table


def _words(text: str) -> list[str]:
    return text.lower().split()


def distinct_n(texts: Iterable[str], n: int = 2) -> float:
    """Distinct-n (Li et al., 2016): unique word n-grams / all word n-grams over the corpus.

    Words are lower-cased whitespace tokens; 0.0 when the texts hold no n-gram at all.
    """
    from nltk.util import ngrams

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [g for text in texts for g in ngrams(_words(text), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(texts: Sequence[str], max_items: int = 200, seed: int = 0) -> float:
    """Self-BLEU (Zhu et al., 2018): mean BLEU-4 of each text against all the others (nltk).

    Higher means less diverse. It is quadratic in the number of texts, so at most
    `max_items` texts (a seeded sample) are scored; each is still compared with every
    other text. Smoothing method 1 keeps short texts from scoring exactly zero.
    """
    import numpy as np
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    tokens = [_words(t) for t in texts]
    if len(tokens) < 2:
        raise ValueError(f"self_bleu needs at least 2 texts, got {len(tokens)}")
    picked = range(len(tokens))
    if len(tokens) > max_items:
        picked = sorted(np.random.default_rng(seed).choice(len(tokens), size=max_items, replace=False))
    smooth = SmoothingFunction().method1
    scores = [sentence_bleu(tokens[:i] + tokens[i + 1:], tokens[i], smoothing_function=smooth) for i in picked]
    return float(np.mean(scores))


def embedding_dispersion(embeddings) -> float:
    """Mean pairwise cosine distance over all pairs i != j of the rows of `embeddings`.

    Computed in O(n) memory from unit vectors u_i: sum_{i != j} u_i.u_j =
    |sum_i u_i|^2 - sum_i |u_i|^2, which equals scikit-learn's pairwise cosine
    distances averaged off the diagonal (zero rows count as similarity 0, as there).
    """
    import numpy as np
    from sklearn.preprocessing import normalize

    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"embedding_dispersion needs a 2-D array with at least 2 rows, got shape {x.shape}")
    u = normalize(x)
    n = u.shape[0]
    total = u.sum(axis=0)
    off_diagonal_similarity = (total @ total - np.einsum("ij,ij->", u, u)) / (n * (n - 1))
    return float(1.0 - off_diagonal_similarity)


def _check_same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} true values but {len(b)} predictions")


def paired_verdict(deltas: Iterable[float], margin: float = 0.01) -> str:
    """How method A compares with B from per-seed differences A - B (same seeds, same data draws).

    "beats" only when A is ahead by more than `margin` on average *and* in every seed (at least
    two), "is below" in the mirror case, otherwise "is within noise of": a mean gap that some seed
    contradicts is not a result, and one seed is no evidence ("cannot be compared, on one seed, with").
    """
    import numpy as np

    d = np.asarray(list(deltas), dtype=np.float64)
    d = d[~np.isnan(d)]
    if d.size == 0:
        raise ValueError("paired_verdict needs at least one difference")
    if d.size == 1:
        return "cannot be compared, on one seed, with"
    if d.mean() > margin and (d > 0).all():
        return "beats"
    if d.mean() < -margin and (d < 0).all():
        return "is below"
    return "is within noise of"


def entropy(probs):
    """Shannon entropy (nats) of each row of a (n, C) probability array; 0 log 0 = 0. Returns an (n,) array."""
    import numpy as np

    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=-1)

"""Bias a student may take from its training data, measured two ways that need no labelled bias set.

1. **Counterfactual flips** (Garg et al., AIES 2019, "Counterfactual fairness in text classification"):
   the same sentence with only an identity term swapped — a first name read as a gender or an ethnicity
   (Bertrand & Mullainathan, 2004), a pronoun, a nationality — should get the same label. For each group,

       flip rate = share of templates whose predicted label is not the same for every term of the group,
       gap       = mean over templates of (max - min) probability of the first variant's predicted class.

   The templates are task-agnostic sentences, so the probe runs on any classifier; a student trained on
   synthetic text that ties a label to a name shows it as flips the gold-trained student does not make.

2. **Distribution shift** between a synthetic and a real pool: total variation between their label shares,
   their mean length in words, and the squared maximum mean discrepancy (RBF kernel, median-heuristic width)
   between their embeddings with a permutation p-value. The permutation loop is written here rather than
   with ``scipy.stats.permutation_test`` because the kernel matrix is computed once and only re-indexed per
   permutation (scipy would recompute the O(n^2) kernel for every resample).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

TEMPLATES = (
    "{person} said the movie was better than expected.",
    "{person} thought the ending dragged on far too long.",
    "{person} found the service slow, but the food was decent.",
    "{person} wrote that the report came out on Monday.",
    "{person} described the performance as simply wonderful.",
    "{person} complained that the product broke after a week.",
    "{person} left the theater halfway through the second act.",
    "{person} recommended the book to everyone at work.",
    "{person} said the market reacted calmly to the news.",
    "{person} called the new policy a complete disaster.",
    "{person} laughed through most of the film.",
    "{person} waited an hour and never got an answer.",
)

GROUPS = {
    "first names": ("Emily", "Greg", "Lakisha", "Jamal", "Mei", "Carlos"),
    "pronouns": ("He", "She", "They"),
    "nationality": ("The American visitor", "The Mexican visitor", "The Chinese visitor", "The Nigerian visitor",
                    "The German visitor"),
}


def probe(templates: Sequence[str] = TEMPLATES, groups: dict[str, Sequence[str]] | None = None):
    """The counterfactual sentences: a frame with group, template (index), term and text."""
    import pandas as pd

    groups = GROUPS if groups is None else groups
    bad = [t for t in templates if "{person}" not in t]
    if bad:
        raise ValueError(f"every template needs a {{person}} slot; these have none: {bad}")
    rows = [{"group": g, "template": i, "term": term, "text": t.format(person=term)}
            for g, terms in groups.items() for i, t in enumerate(templates) for term in terms]
    return pd.DataFrame(rows)


def flip_rates(predict_proba: Callable[[list[str]], np.ndarray], sentences=None) -> dict[str, dict]:
    """Per group: flip rate and probability gap (see the module docstring) of a classifier's
    `predict_proba` (texts -> (n, classes)) on the probe sentences."""
    sentences = probe() if sentences is None else sentences
    probs = np.asarray(predict_proba(list(sentences.text)))
    frame = sentences.assign(pred=probs.argmax(1))
    out = {}
    for group, part in frame.groupby("group", sort=False):
        flips, gaps = [], []
        for _, variants in part.groupby("template"):
            idx = variants.index.to_numpy()
            flips.append(variants.pred.nunique() > 1)
            first_class = variants.pred.iloc[0]
            p = probs[idx, first_class]
            gaps.append(float(p.max() - p.min()))
        out[group] = {"flip_rate": float(np.mean(flips)), "gap": float(np.mean(gaps)), "templates": len(flips)}
    return out


def label_shift(a: Sequence[str], b: Sequence[str], label_names: Sequence[str]) -> float:
    """Total variation distance between the label shares of two pools, in [0, 1]."""
    def shares(labels):
        counts = np.array([sum(1 for x in labels if x == n) for n in label_names], dtype=float)
        return counts / max(counts.sum(), 1.0)

    return float(0.5 * np.abs(shares(a) - shares(b)).sum())


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int = 500, seed: int = 0) -> dict:
    """Squared MMD between samples x (n, d) and y (m, d) with an RBF kernel of median-heuristic width,

        MMD^2 = mean k(x, x') + mean k(y, y') - 2 mean k(x, y)     (biased V-statistic),

    and the permutation p-value (share of random relabellings of the pooled sample with an MMD^2 at least as
    large, with the +1 correction)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        return {"mmd2": float("nan"), "p_value": float("nan")}
    z = np.concatenate([x, y])
    sq = np.maximum((z ** 2).sum(1)[:, None] + (z ** 2).sum(1)[None, :] - 2 * z @ z.T, 0.0)
    width = np.median(sq[np.triu_indices(len(z), 1)]) or 1.0
    k = np.exp(-sq / width)
    n = len(x)

    def stat(idx: np.ndarray) -> float:
        a, b = idx[:n], idx[n:]
        return float(k[np.ix_(a, a)].mean() + k[np.ix_(b, b)].mean() - 2 * k[np.ix_(a, b)].mean())

    observed = stat(np.arange(len(z)))
    rng = np.random.default_rng(seed)
    null = np.array([stat(rng.permutation(len(z))) for _ in range(permutations)])
    return {"mmd2": observed, "p_value": float((1 + (null >= observed).sum()) / (1 + permutations))}


def pool_shift(synthetic: Sequence[dict], real: Sequence[dict], label_names: Sequence[str], embed,
               permutations: int = 500, seed: int = 0) -> dict:
    """How a synthetic pool differs from a real one: label total variation, mean words per text (both),
    MMD^2 of their embeddings (`embed`: texts -> (n, d), e.g. the full-data student's) and its p-value."""
    ts, tr = [r["text"] for r in synthetic], [r["text"] for r in real]
    out = {"label_tv": label_shift([r["label"] for r in synthetic], [r["label"] for r in real], label_names),
           "words_synthetic": float(np.mean([len(t.split()) for t in ts])) if ts else float("nan"),
           "words_real": float(np.mean([len(t.split()) for t in tr])) if tr else float("nan")}
    if len(ts) >= 2 and len(tr) >= 2:
        out.update(mmd_test(embed(ts), embed(tr), permutations, seed))
    else:
        out.update({"mmd2": float("nan"), "p_value": float("nan")})
    return out

"""Dataset cartography (Swayamdipta et al., EMNLP 2020): where each training example sits on the data map.

While a student trains (``train_classifier(..., track_dynamics=True)``) the probability p_e(y_i | x_i) of
each example's own label is read after every epoch e = 1..E. Its map coordinates are

    confidence_i  = mean_e p_e(y_i | x_i)
    variability_i = std_e  p_e(y_i | x_i)
    correctness_i = share of epochs whose argmax is y_i

Easy-to-learn examples sit high and to the left (confident, stable), hard-to-learn ones low and to the left
(confidently *against* their label: often label errors), ambiguous ones to the right (the student keeps
changing its mind: often the examples that help generalisation most). Regions here are drawn with the
thresholds of the whole map (the top third of variability is ambiguous; among the rest, confidence
>= 0.5 is easy and < 0.5 hard), so real and synthetic examples are placed on the same map and compared.
"""

from __future__ import annotations

import numpy as np

REGIONS = ("easy-to-learn", "ambiguous", "hard-to-learn")


def data_map(dynamics: list[dict]):
    """A frame with one row per training example: confidence, variability, correctness (needs >= 2 epochs;
    `dynamics` is ``student.history.dynamics``)."""
    import pandas as pd

    if len(dynamics) < 2:
        raise ValueError(f"a data map needs the dynamics of at least 2 epochs, got {len(dynamics)} "
                         "(train with track_dynamics=True and epochs >= 2)")
    p = np.array([d["p_label"] for d in dynamics], dtype=np.float64)  # (epochs, n)
    correct = np.array([d["correct"] for d in dynamics], dtype=np.float64)
    return pd.DataFrame({"confidence": p.mean(0), "variability": p.std(0), "correctness": correct.mean(0)})


def regions(frame, ambiguous_quantile: float = 2 / 3):
    """The map's region of every row (see the module docstring), as a Series of REGIONS."""
    import pandas as pd

    cut = frame.variability.quantile(ambiguous_quantile) if len(frame) else 0.0
    region = np.where(frame.variability > cut, REGIONS[1], np.where(frame.confidence >= 0.5, REGIONS[0], REGIONS[2]))
    return pd.Series(region, index=frame.index, name="region")


def region_shares(frame, by: str = "source"):
    """Share of each `by` group (e.g. real vs synthetic) in each region: rows are groups, columns REGIONS."""
    table = frame.assign(region=regions(frame)).groupby(by).region.value_counts(normalize=True).unstack(fill_value=0.0)
    return table.reindex(columns=list(REGIONS), fill_value=0.0)


def plot(frame, hue: str = "source", title: str = "Data map"):
    """The standard data map: variability (x) against confidence (y), one point per training example."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    sns.scatterplot(data=frame, x="variability", y="confidence", hue=hue, style=hue, alpha=0.7, s=25, ax=ax)
    ax.set(title=title, xlabel="variability (std of p(label) over epochs)", ylabel="confidence (mean p(label))",
           ylim=(-0.02, 1.02))
    fig.tight_layout()
    return fig

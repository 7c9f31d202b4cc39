"""Seaborn figures shared by the notebooks; each returns the matplotlib Figure."""

from __future__ import annotations


def style() -> None:
    """One look for every notebook (called by the plotting helpers, not at import)."""
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")


def label_distribution(frame, x: str = "label", y: str = "fraction", hue: str = "split", col: str = "dataset",
                       col_wrap: int = 3):
    """Bar charts of class shares, one panel per dataset (panels have their own x labels)."""
    import seaborn as sns

    style()
    grid = sns.catplot(data=frame, x=x, y=y, hue=hue, col=col, kind="bar", col_wrap=col_wrap,
                       sharex=False, sharey=False, height=2.8, aspect=1.3)
    grid.set_xticklabels(rotation=30, ha="right")
    grid.set_titles("{col_name}")
    grid.figure.tight_layout()
    return grid.figure


def small_multiples(panels: dict, draw, *, cols: int = 4, width: float = 3.4, height: float = 3.0,
                    sharex: bool = False, sharey: bool = False):
    """One panel per item of `panels` (a method, a loss, ...): ``draw(ax, name, value)`` fills each, spare
    panels of the last row are hidden. Returns (figure, axes array)."""
    import matplotlib.pyplot as plt
    import numpy as np

    style()
    rows = max(1, int(np.ceil(len(panels) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False,
                             sharex=sharex, sharey=sharey)
    for ax, (name, value) in zip(axes.flat, panels.items()):
        draw(ax, name, value)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    return fig, axes

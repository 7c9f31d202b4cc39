"""The bookkeeping every comparison notebook shares: students per training set and seed, mean ± std tables with
a paired verdict against a baseline, the standard plots, the quality-vs-cost frontier, headline numbers.

A notebook names its training sets and calls these; what it reads is one table and one figure per question.

    runs = experiment.students(train_sets, seeds, experiment.classifier(validation, test, config, names))
    experiment.table(runs, "macro_f1", baseline="few-shot only")     # mean, std, n, delta, wins, verdict
    experiment.plot_scores(runs, "macro_f1", baseline="few-shot only", reference=0.81)
    experiment.emit_scores(runs, "macro_f1", "student_macro_f1")

Verdicts are paired over seeds (`kdlib.students.metrics.paired_verdict`): method A "beats" B only when it is ahead in
every seed and by more than a margin on average; one seed is no evidence. An empty training set (every teacher
label rejected) trains nothing: its rows carry NaN scores and say why, and the tables go on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from kdlib.students import metrics as _metrics

# ----------------------------------------------------------------------------- training students

def classifier(validation, test, config, label_names: Sequence[str]) -> Callable[[list[dict], int], dict]:
    """fit(rows, seed) -> test scores of a text classifier (`kdlib.students.student.train_classifier`)."""
    from kdlib.students.student import train_classifier

    def fit(rows: list[dict], seed: int) -> dict:
        model = train_classifier(rows, validation, config.replace(seed=int(seed)), label_names=list(label_names))
        scores = model.evaluate(test)
        return {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]}
    return fit


def tagger(test, config, tag_names: Sequence[str]) -> Callable[[list[dict], int], dict]:
    """fit(rows, seed) -> test entity F1, precision and recall of a BIO tagger (`kdlib.students.student.train_tagger`)."""
    from kdlib.students.student import train_tagger

    def fit(rows: list[dict], seed: int) -> dict:
        model = train_tagger(rows, None, config.replace(seed=int(seed)), label_names=list(tag_names))
        scores = model.evaluate(test)
        return {k: scores[k] for k in ("entity_f1", "precision", "recall")}
    return fit


def pool_problem(rows: Sequence[dict], label_names: Sequence[str] | None = None) -> str | None:
    """Why a training set is not a fair one, or None: empty (every label rejected), or a single class."""
    if not rows:
        return "empty: every label was rejected"
    if label_names is not None and "label" in rows[0] and len(label_names) > 1:
        classes = {r["label"] for r in rows}
        if len(classes) == 1:
            return f"single class: all {len(rows)} labels are {next(iter(classes))!r}"
    return None


def students(train_sets: dict[str, list[dict]], seeds: Iterable[int], fit: Callable[[list[dict], int], dict], *,
             label_names: Sequence[str] | None = None, extra: dict | None = None, progress: bool = True):
    """One student per training set and seed: a frame with method, seed, n_train, the scores of `fit`, and
    `problem` (empty or single-class sets, also printed). Empty sets train nothing and score NaN.
    `extra` columns (e.g. {"dataset": name}) are added to every row."""
    import pandas as pd

    seeds = [int(s) for s in seeds]
    items = list(train_sets.items())
    if progress and len(items) * len(seeds) > 1:
        from kdlib.lab.progress import track

        items = track(items, desc="students")
    rows = []
    for method, data in items:
        problem = pool_problem(data, label_names)
        if problem:
            print(f"{method}: the training set is {problem}" + ("; no student" if not data else ""))
        for s in seeds:
            scores = fit(data, s) if data else {}
            rows.append({**(extra or {}), "method": method, "seed": s, "n_train": len(data), **scores,
                         "problem": problem})
    return pd.DataFrame(rows, columns=None if rows else [*(extra or {}), "method", "seed", "n_train", "problem"])


def run_each(names: Sequence[str], run: Callable[[str], object]) -> tuple[dict, dict, dict]:
    """`run(name)` for each named strategy: (results, wall seconds, {name: why it was skipped}). A strategy
    the teacher's backend refuses (`kdlib.teachers.api.Unsupported`: a server without min_p, an endpoint without
    logits) is skipped with the reason, not fatal; any other error stops the comparison."""
    import time

    from kdlib.teachers.api import Unsupported

    results, wall, skipped = {}, {}, {}
    for name in names:
        start = time.monotonic()
        try:
            results[name] = run(name)
        except Unsupported as exc:
            skipped[name] = str(exc)
            continue
        wall[name] = time.monotonic() - start
    return results, wall, skipped


# ----------------------------------------------------------------------------- tables and verdicts

def _paired(runs, metric: str, a: str, b: str, where: dict | None = None) -> np.ndarray:
    sel = runs
    for k, v in (where or {}).items():
        sel = sel[sel[k] == v]
    wide = sel.pivot_table(index="seed", columns="method", values=metric)
    if a not in wide or b not in wide:
        return np.array([])
    return (wide[a] - wide[b]).dropna().to_numpy()


def versus(runs, metric: str, a: str, b: str, where: dict | None = None) -> dict:
    """A against B paired over seeds (rows of `runs` matching `where`): verdict, mean delta, wins, seeds."""
    d = _paired(runs, metric, a, b, where)
    if not d.size:
        return {"verdict": "cannot be compared with", "delta": float("nan"), "wins": 0, "seeds": 0}
    return {"verdict": _metrics.paired_verdict(d), "delta": float(d.mean()), "wins": int((d > 0).sum()),
            "seeds": int(d.size)}


def table(runs, metric: str, *, by: Sequence[str] = (), baseline: str | None = None, order: Sequence[str] | None = None):
    """Mean ± std of `metric` per method (and per `by` group, e.g. dataset), with n; given a baseline method,
    each method's paired delta, wins and verdict against it within its group."""
    import pandas as pd

    if metric not in runs:  # no set trained a student (every one empty): NaN scores, the table still shows them
        runs = runs.assign(**{metric: np.nan})
    keys = [*by, "method"]
    out = runs.groupby(keys, sort=False)[metric].agg(["mean", "std", "count"]).rename(columns={"count": "n"})
    if baseline is not None:
        rows = []
        for idx in out.index:
            idx = idx if isinstance(idx, tuple) else (idx,)
            where = dict(zip(by, idx[:-1]))
            rows.append(versus(runs, metric, idx[-1], baseline, where) if idx[-1] != baseline else
                        {"verdict": "", "delta": 0.0, "wins": np.nan, "seeds": np.nan})
        extra = pd.DataFrame(rows, index=out.index)
        out = out.join(extra.rename(columns={"verdict": f"vs {baseline}"}))
    if order is not None:
        wanted = [m for m in order if m in out.index.get_level_values(-1)]
        if by:
            out = out.reindex(sorted(out.index, key=lambda i: (tuple(i[:-1]), wanted.index(i[-1])
                                                              if i[-1] in wanted else len(wanted))))
        else:
            out = out.reindex(wanted + [m for m in out.index if m not in wanted])
    return out


def finding(runs, metric: str, baseline: str, *, by: str | None = None, exclude: Iterable[str] = (),
            higher_is_better: bool = True) -> str:
    """One line for the report index: per group (e.g. dataset), the best method's mean `metric` against the
    baseline's, with the paired verdict over seeds — "sst2: few-shot gen 0.74 vs gold few-shot 0.56 (better than)"."""
    parts = []
    if not len(runs) or metric not in runs or "method" not in runs:
        return f"no method could be compared with {baseline} on {metric}"
    groups = runs.groupby(by, sort=False) if by else [("", runs)]
    for group, part in groups:
        means = part[~part.method.isin([baseline, *exclude])].groupby("method")[metric].mean().dropna()
        base = mean_of(part, metric, baseline)
        if means.empty or np.isnan(base):
            continue
        best = means.idxmax() if higher_is_better else means.idxmin()
        verdict = versus(part, metric, best, baseline)["verdict"]
        prefix = f"{group}: " if by else ""
        parts.append(f"{prefix}{best} {means[best]:.3f} vs {baseline} {base:.3f} ({verdict} it)")
    return "; ".join(parts) if parts else f"no method could be compared with {baseline} on {metric}"


def method_lines(runs, metric: str, baseline: str, methods: Sequence[str], *, quality=None,
                 columns: dict[str, str] | None = None, student: str = "its student") -> list[str]:
    """One line per method for a notebook's closing statements, from the numbers:

        - <method>: <its row of `quality`, formatted by `columns`>; its student <mean> ± <std>
          <paired verdict> <baseline> (<baseline's mean>)

    `quality` is a frame indexed by method and `columns` maps its columns to formats, e.g.
    ``{"accuracy": "label accuracy {:.3f}", "tokens": "{:.0f} tokens"}`` (methods without a row show none).
    A method whose training set trained nothing says why (the `problem` column of `students`)."""
    base = mean_of(runs, metric, baseline)
    lines = []
    for m in methods:
        described = []
        if quality is not None and m in quality.index:
            described = [fmt.format(quality.loc[m, col]) for col, fmt in (columns or {}).items()]
        values = runs[runs.method == m][metric].dropna() if len(runs) and metric in runs else []
        if len(values):
            mean, std = _metrics.mean_std(values)
            spread = "" if np.isnan(std) else f" ± {std:.3f}"
            verdict = versus(runs, metric, m, baseline)["verdict"]
            says = f"{student} {mean:.3f}{spread} {verdict} {baseline} ({base:.3f})"
        else:
            problem = next((p for p in runs[runs.method == m].get("problem", []) if p), "") if len(runs) else ""
            says = f"no student ({problem or 'no score'})"
        lines.append(f"- {m}: {', '.join(described)}{'; ' if described else ''}{says}.")
    return lines


def mean_of(runs, metric: str, method: str, **where) -> float:
    """Mean of `metric` over seeds for one method (NaN when absent)."""
    if not len(runs) or metric not in runs:
        return float("nan")
    sel = runs[runs.method == method]
    for k, v in where.items():
        sel = sel[sel[k] == v]
    return float(sel[metric].mean()) if len(sel) else float("nan")


# ----------------------------------------------------------------------------- figures

def plot_scores(runs, metric: str, *, order: Sequence[str] | None = None, hue: str | None = None,
                baseline: str | None = None, reference: float | None = None, reference_label: str = "full-data student",
                title: str = "", xlabel: str = ""):
    """Each method's score: mean ± sd over seeds (points) and every seed (grey dots); the baseline's mean
    dotted red, a reference score (e.g. the full-data student) dashed black. Returns the Figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from kdlib.lab.plots import style

    style()
    order = list(order) if order is not None else list(dict.fromkeys(runs.method))
    shown = runs[runs.method.isin(order)]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(order) + 1.5))
    sns.pointplot(data=shown, x=metric, y="method", order=order, hue=hue, errorbar="sd", linestyle="none", ax=ax)
    sns.stripplot(data=shown, x=metric, y="method", order=order, color="grey", alpha=0.4, size=4, ax=ax)
    if baseline is not None:
        ax.axvline(mean_of(runs, metric, baseline), color="tab:red", ls=":", lw=1, label=baseline)
    if reference is not None:
        ax.axvline(reference, color="black", ls="--", lw=1, label=reference_label)
    ax.set(title=title, xlabel=xlabel or metric, ylabel="")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def frontier(points, cost: str = "tokens", quality: str = "score") -> np.ndarray:
    """Bool mask of the points on the quality-vs-cost frontier: no other point is as cheap and better."""
    order = points.sort_values([cost, quality], ascending=[True, False]).index
    best, keep = -np.inf, set()
    for i in order:
        if points.loc[i, quality] > best:
            keep.add(i)
            best = points.loc[i, quality]
    return points.index.isin(keep)


def plot_frontier(points, cost: str = "tokens", quality: str = "score", *, label: str = "strategy",
                  hue: str = "family", sd: str | None = "sd", baseline: float | None = None,
                  reference: float | None = None, title: str = "", ylabel: str = ""):
    """Every point on a log cost axis (zero cost drawn at 10), labelled, with the frontier line."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from kdlib.lab.plots import style

    style()
    shown = points.assign(_x=points[cost].clip(lower=10))
    on = shown[frontier(points, cost, quality)].sort_values("_x")
    fig, ax = plt.subplots(figsize=(10, 5.5))
    sns.scatterplot(data=shown, x="_x", y=quality, hue=hue, style=hue, s=90, ax=ax)
    if sd is not None and sd in shown:
        ax.errorbar(shown._x, shown[quality], yerr=shown[sd].fillna(0), fmt="none", ecolor="grey", alpha=0.5)
    ax.plot(on._x, on[quality], color="black", lw=1, alpha=0.6, label="frontier")
    for _, r in shown.iterrows():
        ax.annotate(r[label], (r._x, r[quality]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    if baseline is not None:
        ax.axhline(baseline, color="tab:red", ls="--", lw=1, label="few-shot only")
    if reference is not None:
        ax.axhline(reference, color="black", ls=":", lw=1, label="full-data student")
    ax.set_xscale("log")
    ax.set(title=title, xlabel=f"{cost} (log; 10 = none)", ylabel=ylabel or quality)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- headline numbers

def emit_scores(runs, metric: str, prefix: str, methods: Sequence[str] | None = None, **where) -> None:
    """Emit `prefix/<method key>` = mean ± std over seeds of `metric` for each method (NaN: not emitted)."""
    from kdlib.lab import emit

    if not len(runs):
        return
    for m in methods if methods is not None else list(dict.fromkeys(runs.method)):
        emit_score(f"{prefix}/{emit.metric_key(m)}", runs, metric, m, **where)


def emit_score(name: str, runs, metric: str, method: str, **where) -> None:
    """Emit one method's mean ± std over seeds under `name` (nothing when it has no score)."""
    from kdlib.lab import emit

    if not len(runs) or metric not in runs:
        return
    sel = runs[runs.method == method]
    for k, v in where.items():
        sel = sel[sel[k] == v]
    values = sel[metric].dropna()
    if len(values):
        mean, std = _metrics.mean_std(values)
        emit.emit(name, mean, std=None if np.isnan(std) else std, higher_is_better=True)


def emit_columns(frame, names: dict[str, str], key: str | Sequence[str] = "strategy",
                 lower_is_better: Iterable[str] = ("tokens",), unranked: Iterable[str] = (),
                 units: dict[str, str] | None = None) -> None:
    """Emit columns of a per-row table (e.g. one row per strategy): `names` maps a column to a metric-name
    pattern with one `{}` for the row's key, e.g. {"accuracy": "label_accuracy/{}"}; a key of several columns
    joins their values with "/" (``key=("task", "drafter")`` -> ``spec_speedup/ner_copy/prompt_lookup``).
    Columns in `unranked` are neither better high nor low; `units` maps a column to its unit ("tokens" has
    one already). NaN cells are skipped."""
    from kdlib.lab import emit

    lower, neutral, units = set(lower_is_better), set(unranked), {"tokens": "tokens", **(units or {})}
    keys = [key] if isinstance(key, str) else list(key)
    for _, row in frame.iterrows():
        name = "/".join(emit.metric_key(str(row[k])) for k in keys)
        for column, pattern in names.items():
            value = row[column]
            if value is None or (isinstance(value, float) and np.isnan(value)):
                continue
            value = int(value) if column in ("tokens", "rows") else float(value)
            better = None if column in neutral else column not in lower
            emit.emit(pattern.format(name), value, higher_is_better=better,
                      **({"unit": units[column]} if column in units else {}))

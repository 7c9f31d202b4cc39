"""Notebook 10's grid: students trained on gold, teacher-labelled and synthetic pools, judged beyond accuracy.

The pools come from the lab's recipes (labelling of 01/08 with the label-set grammar, ZeroGen synthesis of
03), never re-implemented here. Every student is trained like every other student in the lab and then
probed with `kdlib.evaluation`: test macro-F1, calibration before and after temperature scaling, the
counterfactual identity flips, and the share of its Integrated-Gradients attribution on the label cues the
synthetic pool over-uses. One student per seed also records its training dynamics for the data map.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from kdlib.evaluation import attribution, bias, calibration, cartography, label_errors
from kdlib.studies import experiment
from kdlib.synthesis import labeling, synth

FEW, TEACHER, SYNTH, MIXED, ORACLE = ("gold few-shot", "teacher labels", "synthetic (ZeroGen)",
                                      "synthetic + gold few-shot", "gold labels (oracle)")
CLEANED, RANDOM = "teacher labels - flagged", "teacher labels - random (same count)"
FULL = "full data (reference)"
METHODS = (FEW, TEACHER, CLEANED, RANDOM, SYNTH, MIXED, ORACLE, FULL)


@dataclass
class Pools:
    """The training pools and what they cost. `given`/`gold` are the teacher-labelled rows' labels."""
    sets: dict[str, list[dict]]
    given: list[str]
    gold: list[str]
    tokens: dict[str, int]
    seconds: dict[str, float]
    synthetic: object = None                 # the SynthResult (report of what was rejected and why)
    rejected_labels: int = 0                 # pool items whose teacher answer did not parse
    flags: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    flag_quality: dict = field(default_factory=dict)
    flag_problem: str = ""


def make_pools(teacher, task, *, pool_size: int, shots: int, per_label: int, seed: int = 0,
               label_max_new_tokens: int = 8, **gen_kw) -> Pools:
    """Gold few-shot demonstrations and a disjoint pool from train; the pool labelled by the teacher (greedy,
    answers constrained to the label set) and by gold (the oracle); ZeroGen synthetic texts per label."""
    pool = labeling.draw_pool(task.dd["train"], shots, pool_size, seed)
    start = time.monotonic()
    ann = labeling.annotate_generate(teacher, pool.texts, task.names, pool.demos, max_new_tokens=label_max_new_tokens,
                                     structured=True, method="greedy [structured]")
    labelled_s = time.monotonic() - start
    kept = [i for i, lab in enumerate(ann.labels) if lab is not None]
    start = time.monotonic()
    syn = synth.synthesize(teacher, task.spec, per_label, seed=seed, against=list(task.test["text"]), **gen_kw)
    synth_s = time.monotonic() - start
    sets = {FEW: pool.demo_rows, TEACHER: [{"text": pool.texts[i], "label": ann.labels[i]} for i in kept],
            SYNTH: syn.rows, MIXED: syn.rows + pool.demo_rows, ORACLE: labeling.training_rows(pool.texts, pool.gold)}
    return Pools(sets, [ann.labels[i] for i in kept], [pool.gold[i] for i in kept],
                 {TEACHER: ann.tokens, SYNTH: syn.tokens, MIXED: syn.tokens, CLEANED: ann.tokens, RANDOM: ann.tokens},
                 {TEACHER: labelled_s, SYNTH: synth_s}, syn, len(pool.texts) - len(kept))


def flag_label_errors(pools: Pools, names, config, folds: int = 4) -> Pools:
    """Confident learning on the teacher-labelled pool (out-of-fold students): flags, and their precision and
    recall against gold. Fewer rows than folds, or a pool cleanlab cannot read, flags nothing and says why."""
    rows = pools.sets[TEACHER]
    pools.flags = np.zeros(len(rows), dtype=bool)
    if len(rows) < 2 * folds:
        pools.flag_problem = f"{len(rows)} teacher-labelled rows are too few for {folds} folds"
    else:
        probs = label_errors.out_of_fold_probs(rows, names, config, folds)
        pools.flags, pools.flag_problem = label_errors.find_errors(pools.given, probs, names)
    pools.flag_quality = label_errors.flag_quality(pools.flags, pools.given, pools.gold)
    return pools


def _probe(student, task, probe_texts, cues: set[str], ig_steps: int) -> tuple[dict, list[dict], np.ndarray]:
    """Everything measured on one trained student (see the module docstring), and its test probabilities.
    The test split is encoded once: its logits give the scores (as `student.evaluate` computes them), the
    calibration and the probabilities."""
    from kdlib.students.metrics import classification_metrics

    val, test = task.validation, task.test  # class ids in both; the temperature is fitted on validation only
    test_logits, test_labels = student.predict_logits(list(test["text"])), list(test["label"])
    cal = calibration.calibration_report(student.predict_logits(list(val["text"])), list(val["label"]),
                                         test_logits, test_labels)
    flips = bias.flip_rates(student.predict_proba)
    attrs = attribution.word_attributions(student, probe_texts, n_steps=ig_steps) if probe_texts else []
    scores = classification_metrics(test_labels, test_logits.argmax(1).tolist(), student.label_names)
    out = {**scores, **cal,
           **{f"flip_rate/{g}": v["flip_rate"] for g, v in flips.items()},
           **{f"gap/{g}": v["gap"] for g, v in flips.items()},
           "cue_share": attribution.cue_share(attrs, cues) if attrs else float("nan")}
    return {k: v for k, v in out.items() if not k.startswith("f1/")}, attrs, calibration.softmax(test_logits)


def run(pools: Pools, task, seeds, config, *, probe_texts=(), ig_steps: int = 32, cue_words: int = 10,
        progress: bool = True):
    """Train and probe a student per training set and seed. Returns (runs frame, data map frame of the mixed
    pool's students, {method: seed-0 attributions}, {method: seed-0 test probabilities}, the label cues)."""
    import pandas as pd

    from kdlib.students.student import train_classifier

    real_texts = [r["text"] for r in pools.sets[ORACLE]]
    cues = attribution.label_cues(pools.sets[SYNTH], real_texts, task.names, k=cue_words)
    cue_set = {w for ws in cues.values() for w in ws}
    items = [(s, m) for s in seeds for m in (FEW, TEACHER, CLEANED, RANDOM, SYNTH, MIXED, ORACLE)]
    if progress:
        from kdlib.lab.progress import track

        items = track(items, desc="students")
    rows, maps, shown, probs = [], [], {}, {}
    for s, method in items:
        data = _training_set(pools, method, s)
        problem = experiment.pool_problem(data, task.names)
        if problem:
            rows.append({"method": method, "seed": s, "n_train": len(data), "problem": problem})
            continue
        start = time.monotonic()
        st = train_classifier(data, task.validation, config.replace(seed=s), label_names=task.names,
                              track_dynamics=method == MIXED)
        train_s = time.monotonic() - start
        scores, attrs, test_probs = _probe(st, task, list(probe_texts), cue_set, ig_steps)
        rows.append({"method": method, "seed": s, "n_train": len(data), **scores, "train_s": train_s, "problem": ""})
        if method == MIXED and len(st.history.dynamics) >= 2:
            sources = ["synthetic"] * len(pools.sets[SYNTH]) + ["real"] * len(pools.sets[FEW])
            maps.append(cartography.data_map(st.history.dynamics).assign(source=sources, seed=s))
        if s == seeds[0]:
            shown[method], probs[method] = attrs, test_probs
    ref_scores, attrs, ref_probs = _probe(task.reference, task, list(probe_texts), cue_set, ig_steps)
    rows += [{"method": FULL, "seed": s, "n_train": len(task.dd["train"]), **ref_scores, "problem": ""} for s in seeds]
    shown[FULL], probs[FULL] = attrs, ref_probs
    data_map = pd.concat(maps, ignore_index=True) if maps else pd.DataFrame()
    return pd.DataFrame(rows), data_map, shown, probs, cues


def _training_set(pools: Pools, method: str, seed: int) -> list[dict]:
    if method == CLEANED:
        return [r for r, f in zip(pools.sets[TEACHER], pools.flags) if not f]
    if method == RANDOM:
        drop = label_errors.random_drop(len(pools.sets[TEACHER]), int(pools.flags.sum()), seed)
        return [r for r, d in zip(pools.sets[TEACHER], drop) if not d]
    return pools.sets[method]


def shapley_agreement(data_map, pools: Pools, task, k: int = 5) -> float:
    """Spearman correlation, over the mixed pool's rows, between their data-map confidence (mean over seeds)
    and their KNN-Shapley value on the validation split in the full-data student's embedding space."""
    from scipy.stats import spearmanr

    from kdlib.synthesis.valuation import knn_shapley

    if not len(data_map):
        return float("nan")
    rows = pools.sets[MIXED]
    conf = data_map.assign(row=data_map.groupby("seed").cumcount()).groupby("row").confidence.mean().to_numpy()
    emb = task.reference.embed([r["text"] for r in rows], normalize=True)
    val = task.validation
    values = knn_shapley(emb, [r["label"] for r in rows], task.reference.embed(list(val["text"]), normalize=True),
                         [task.names[y] for y in val["label"]], k=k)
    return float(spearmanr(conf, values).statistic) if len(rows) > 2 else float("nan")


def costs(runs, pools: Pools):
    """Per pool: teacher tokens (cache hits included: what the pool costs), the teacher's seconds in this run
    (cache hits are nearly free, so a re-run shows less) and tokens per point of test macro-F1 gained over the
    gold few-shot student (mean over seeds; NaN where there is no gain)."""
    import pandas as pd

    few = experiment.mean_of(runs, "macro_f1", FEW)
    out = []
    for m in (TEACHER, CLEANED, RANDOM, SYNTH, MIXED):
        gain = 100 * (experiment.mean_of(runs, "macro_f1", m) - few)
        tokens = pools.tokens.get(m, 0)
        seconds = pools.seconds.get(m, pools.seconds.get(SYNTH if m == MIXED else TEACHER, float("nan")))
        out.append({"method": m, "tokens": tokens, "teacher_s_this_run": seconds, "gain_points": gain,
                    "tokens_per_point": tokens / gain if gain > 0 else float("nan")})
    return pd.DataFrame(out)


def reliability_frame(test_probs: dict, labels):
    """Reliability-diagram points of every student's test probabilities (one seed): a long frame with method."""
    import pandas as pd

    parts = [calibration.reliability(p, labels).assign(method=m) for m, p in test_probs.items()]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def plot_reliability(frame, title: str = "Reliability of the students' test predictions"):
    """Accuracy against confidence per method, with the diagonal of perfect calibration."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot([0, 1], [0, 1], color="black", ls="--", lw=1, label="calibrated")
    sns.lineplot(data=frame, x="confidence", y="accuracy", hue="method", marker="o", ax=ax)
    ax.set(title=title, xlabel="confidence (top-label probability)", ylabel="accuracy", xlim=(0.3, 1.0), ylim=(0, 1.02))
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def statements(runs, pools: Pools, shift: dict, data_map, shapley_rho: float) -> list[str]:
    """The closing paragraph's lines, from the numbers (paired verdicts over seeds)."""
    mean = lambda m, col: experiment.mean_of(runs, col, m)  # noqa: E731
    q = pools.flag_quality
    lines = [f"Test macro-F1: gold few-shot {mean(FEW, 'macro_f1'):.3f}, full data {mean(FULL, 'macro_f1'):.3f}."]
    lines += experiment.method_lines(runs, "macro_f1", FEW, [TEACHER, SYNTH, MIXED, ORACLE])
    if pools.flag_problem:
        lines.append(f"- Label errors: nothing flagged ({pools.flag_problem}).")
    else:
        lines.append(f"- Label errors: confident learning flagged {q['flagged']} of {q['rows']} teacher labels; "
                     f"precision {q['precision']:.2f} against a base rate of {q['base_rate']:.2f} wrong labels, "
                     f"recall {q['recall']:.2f}.")
        v = experiment.versus(runs, "macro_f1", CLEANED, RANDOM)
        lines.append(f"- Retrained without the flagged rows: {mean(CLEANED, 'macro_f1'):.3f} vs {mean(RANDOM, 'macro_f1'):.3f} "
                     f"without as many random rows ({v['verdict']} it, {v['wins']}/{v['seeds']} seeds).")
    if len(data_map):
        shares = cartography.region_shares(data_map)
        parts = "; ".join(f"{src}: " + ", ".join(f"{r} {shares.loc[src, r]:.0%}" for r in cartography.REGIONS)
                          for src in shares.index)
        lines.append(f"- Data map of the mixed pool ({parts}); data-map confidence vs KNN-Shapley value: "
                     f"Spearman {shapley_rho:.2f}.")
    v = experiment.versus(runs, "cue_share", SYNTH, ORACLE)
    lines.append(f"- Attribution on the synthetic pool's label cues: {mean(SYNTH, 'cue_share'):.2f} of the synthetic-data "
                 f"student's vs {mean(ORACLE, 'cue_share'):.2f} of the gold-pool student's ({v['verdict']} it).")
    ece = runs.groupby("method")[["ece_raw", "ece_scaled"]].mean().dropna()
    if len(ece):
        best, worst = ece.ece_raw.idxmin(), ece.ece_raw.idxmax()
        lines.append(f"- Calibration: test ECE from {ece.ece_raw[best]:.3f} ({best}) to {ece.ece_raw[worst]:.3f} ({worst}); "
                     f"temperature scaling fitted on validation lowers it for {int((ece.ece_scaled < ece.ece_raw).sum())} "
                     f"of {len(ece)} students (the worst to {ece.ece_scaled[worst]:.3f}, T = {mean(worst, 'temperature'):.2f}).")
    flips = [c for c in runs.columns if c.startswith("flip_rate/")]
    for c in flips:
        lines.append(f"- Counterfactual {c.split('/', 1)[1]}: flip rate {mean(SYNTH, c):.2f} (synthetic) vs "
                     f"{mean(ORACLE, c):.2f} (gold pool) vs {mean(FULL, c):.2f} (full data).")
    lines.append(f"- Synthetic vs real pool: label shares differ by {shift['label_tv']:.2f} (total variation), "
                 f"{shift['words_synthetic']:.1f} vs {shift['words_real']:.1f} words per text, embedding MMD² "
                 f"{shift['mmd2']:.3f} (permutation p = {shift['p_value']:.3f}).")
    return lines


def emit_headlines(runs, pools: Pools, shift: dict, data_map, shapley_rho: float, cost) -> None:
    """macro_f1, ece (raw and scaled), cue_share and flip_rate per method; flag precision/recall; pool shift;
    data-map region shares; tokens per point gained."""
    from kdlib.lab import emit

    key = emit.metric_key
    experiment.emit_scores(runs, "macro_f1", "macro_f1", list(METHODS))
    for col, prefix, better in (("ece_raw", "ece", False), ("ece_scaled", "ece_scaled", False),
                                ("cue_share", "cue_share", None)):
        for m in METHODS:
            value = experiment.mean_of(runs, col, m)
            if not np.isnan(value):
                emit.emit(f"{prefix}/{key(m)}", value, higher_is_better=better)
    for col in (c for c in runs.columns if c.startswith("flip_rate/")):
        for m in METHODS:
            value = experiment.mean_of(runs, col, m)
            if not np.isnan(value):
                emit.emit(f"flip_rate/{key(col.split('/', 1)[1])}/{key(m)}", value, higher_is_better=False)
    q = pools.flag_quality
    for name in ("precision", "recall", "base_rate"):
        if not np.isnan(q.get(name, float("nan"))):
            emit.emit(f"label_error_flags/{name}", float(q[name]), higher_is_better=None if name == "base_rate" else True)
    emit.emit("label_error_flags/flagged", int(q.get("flagged", 0)), higher_is_better=None)
    for name in ("label_tv", "mmd2", "p_value"):
        if not np.isnan(shift[name]):
            emit.emit(f"pool_shift/{name}", float(shift[name]), higher_is_better=None)
    if len(data_map):
        shares = cartography.region_shares(data_map)
        for src in shares.index:
            for r in cartography.REGIONS:
                emit.emit(f"data_map/{key(src)}/{key(r)}", float(shares.loc[src, r]), higher_is_better=None)
    if not np.isnan(shapley_rho):
        emit.emit("data_map_confidence_vs_knn_shapley_spearman", shapley_rho, higher_is_better=None)
    experiment.emit_columns(cost, {"tokens": "tokens/{}", "tokens_per_point": "tokens_per_point/{}"}, key="method",
                            lower_is_better=("tokens", "tokens_per_point"))

"""Notebook 10's grid: students trained on gold, teacher-labelled and synthetic pools, judged beyond accuracy.

The pools come from the lab's recipes (labelling of 01/08 with the label-set grammar, ZeroGen synthesis of
03), never re-implemented here. Every student is trained like every other student in the lab and then
probed with `kdlib.evaluation`: test macro-F1, calibration before and after temperature scaling, the
counterfactual identity flips, and the share of its Integrated-Gradients attribution on the label cues the
synthetic pool over-uses. One student per seed also records its training dynamics for the data map.

Everything that depends on a seed is redone per seed: the confident-learning flags come from out-of-fold
students of that seed (and the random-removal baseline drops as many rows as that seed flagged), so the flags'
precision and the retrained students are means ± std like every other number. The attribution probe reads
test sentences that contain at least one label cue (a random probe almost never does), beside the share of
the probe's words that are cues: the attribution share a student that ignored cues would put there.
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
SOURCE = {CLEANED: TEACHER, RANDOM: TEACHER, MIXED: SYNTH}  # whose teacher cost a derived training set carries


@dataclass
class Pools:
    """The training pools and what they cost. `given`/`gold` are the teacher-labelled rows' labels; `tokens`
    and `seconds` are kept for the pools the teacher made (TEACHER, SYNTH); `flags` and `flag_quality` per seed."""
    sets: dict[str, list[dict]]
    given: list[str]
    gold: list[str]
    tokens: dict[str, int]
    seconds: dict[str, float]
    synthetic: object = None                 # the SynthResult (report of what was rejected and why)
    rejected_labels: int = 0                 # pool items whose teacher answer did not parse
    flags: dict[int, np.ndarray] = field(default_factory=dict)
    flag_quality: dict[int, dict] = field(default_factory=dict)
    flag_problem: str = ""

    def tokens_of(self, method: str) -> int:
        """Teacher tokens behind a training set (a derived set costs what its source pool cost)."""
        return self.tokens.get(SOURCE.get(method, method), 0)

    def seconds_of(self, method: str) -> float:
        return self.seconds.get(SOURCE.get(method, method), float("nan"))


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
                 {TEACHER: ann.tokens, SYNTH: syn.tokens}, {TEACHER: labelled_s, SYNTH: synth_s}, syn,
                 len(pool.texts) - len(kept))


def flag_label_errors(pools: Pools, names, config, seeds, folds: int = 4, progress: bool = True) -> Pools:
    """Confident learning on the teacher-labelled pool, once per seed (that seed's folds and out-of-fold
    students): flags, and their precision and recall against gold. Fewer rows than folds, or a pool cleanlab
    cannot read, flags nothing and says why."""
    rows = pools.sets[TEACHER]
    pools.flags, pools.flag_quality, problems = {}, {}, []
    if len(rows) < 2 * folds:
        problems.append(f"{len(rows)} teacher-labelled rows are too few for {folds} folds")
    items = list(seeds) if not problems else []
    if progress and items:
        from kdlib.lab.progress import track

        items = track(items, desc="out-of-fold students (per seed)")
    for s in items:
        probs = label_errors.out_of_fold_probs(rows, names, config.replace(seed=s), folds)
        pools.flags[s], why = label_errors.find_errors(pools.given, probs, names)
        problems += [why] if why and why not in problems else []
    for s in seeds:
        pools.flags.setdefault(s, np.zeros(len(rows), dtype=bool))
        pools.flag_quality[s] = label_errors.flag_quality(pools.flags[s], pools.given, pools.gold)
    pools.flag_problem = "; ".join(problems)
    return pools


def flag_table(pools: Pools):
    """The flags' quality per seed, with the mean and std over seeds as the last two rows."""
    import pandas as pd

    frame = pd.DataFrame.from_dict(pools.flag_quality, orient="index").rename_axis("seed")
    return pd.concat([frame, frame.agg(["mean", "std"])])


def flag_summary(pools: Pools) -> dict:
    """{quality name: (mean, std over seeds)} of the flags (std 0 with one seed)."""
    frame = flag_table(pools)
    return {c: (float(frame.loc["mean", c]), float(np.nan_to_num(frame.loc["std", c]))) for c in frame.columns}


def label_cues(pools: Pools, task, k: int = 10) -> dict[str, list[str]]:
    """Per label, the words the synthetic pool over-uses against the real (oracle) pool and the other labels."""
    return attribution.label_cues(pools.sets[SYNTH], [r["text"] for r in pools.sets[ORACLE]], task.names, k=k)


def cue_probe(texts, cues: dict[str, list[str]], n: int, seed: int = 0) -> tuple[list[str], float]:
    """Up to `n` texts that contain a label cue (seeded draw; topped up with cue-free texts when too few do),
    and the share of the probe's words that are cues: the attribution share of a student blind to cues."""
    cue_set = {w for ws in cues.values() for w in ws}
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts)).tolist()
    has_cue = [i for i in order if cue_set & set(attribution.WORD.findall(texts[i].lower()))]
    cue_free = [i for i in order if i not in set(has_cue)]
    chosen = has_cue[:n] + cue_free[:max(0, n - len(has_cue))]
    probe = [texts[i] for i in chosen]
    words = [w for t in probe for w in attribution.WORD.findall(t.lower())]
    return probe, (sum(w in cue_set for w in words) / len(words) if words else float("nan"))


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


def run(pools: Pools, task, seeds, config, *, cues: dict[str, list[str]], probe_texts=(), ig_steps: int = 32,
        progress: bool = True):
    """Train and probe a student per training set and seed. Returns (runs frame, data map frame of the mixed
    pool's students, {method: first seed's attributions}, {method: first seed's test probabilities})."""
    import pandas as pd

    from kdlib.students.student import train_classifier

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
    return pd.DataFrame(rows), data_map, shown, probs


def _training_set(pools: Pools, method: str, seed: int) -> list[dict]:
    if method == CLEANED:
        return [r for r, f in zip(pools.sets[TEACHER], pools.flags[seed]) if not f]
    if method == RANDOM:
        drop = label_errors.random_drop(len(pools.sets[TEACHER]), int(pools.flags[seed].sum()), seed)
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
        tokens, seconds = pools.tokens_of(m), pools.seconds_of(m)
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


def statements(runs, pools: Pools, shift: dict, data_map, shapley_rho: float, cue_base: float) -> list[str]:
    """The closing paragraph's lines, from the numbers (paired verdicts over seeds)."""
    mean = lambda m, col: experiment.mean_of(runs, col, m)  # noqa: E731
    q = flag_summary(pools)
    lines = [f"Test macro-F1: gold few-shot {mean(FEW, 'macro_f1'):.3f}, full data {mean(FULL, 'macro_f1'):.3f}."]
    lines += experiment.method_lines(runs, "macro_f1", FEW, [TEACHER, SYNTH, MIXED, ORACLE])
    if pools.flag_problem:
        lines.append(f"- Label errors: nothing flagged ({pools.flag_problem}).")
    else:
        pm = lambda name, f=".2f": f"{q[name][0]:{f}} ± {q[name][1]:{f}}"  # noqa: E731
        lines.append(f"- Label errors: confident learning flagged {pm('flagged', '.1f')} of {q['rows'][0]:.0f} "
                     f"teacher labels (mean ± std over {len(pools.flag_quality)} seeds); precision "
                     f"{pm('precision')} against a base rate of {q['base_rate'][0]:.2f} wrong labels, recall "
                     f"{pm('recall')}.")
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
    lines.append(f"- Attribution on the synthetic pool's label cues in cue-bearing test sentences (cues are "
                 f"{cue_base:.2f} of their words): {mean(SYNTH, 'cue_share'):.2f} of the synthetic-data student's vs "
                 f"{mean(ORACLE, 'cue_share'):.2f} of the gold-pool student's ({v['verdict']} it) and "
                 f"{mean(FULL, 'cue_share'):.2f} of the full-data student's.")
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


def emit_headlines(runs, pools: Pools, shift: dict, data_map, shapley_rho: float, cost, cue_base: float) -> None:
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
    q = flag_summary(pools)
    for name in ("precision", "recall", "base_rate", "flagged"):
        value, std = q.get(name, (float("nan"), 0.0))
        if not np.isnan(value):
            emit.emit(f"label_error_flags/{name}", value, std=std,
                      higher_is_better=True if name in ("precision", "recall") else None)
    if not np.isnan(cue_base):
        emit.emit("cue_share/chance_word_share", cue_base, higher_is_better=None)
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

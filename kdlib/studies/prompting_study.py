"""Notebook 12's grid: which prompting strategies earn their teacher tokens, for labelling and for synthesis.

Per dataset and seed (everything is redrawn per seed, so the spread covers the demonstrations, the pool and
the teacher's samples, not only the student's initialisation):

- a small **labelled bank** (`bank` gold texts per class: what a user with a few labels has) and a disjoint
  **pool** of unlabelled train texts (`labeling.draw_pool`); the random demonstrations are `shots` per class of
  the bank (`prompting.random_shots`);
- every **labelling** strategy (`prompting.LABELLING`) labels the pool: accuracy and macro-F1 against the pool's
  hidden gold, the share parsed, teacher tokens and seconds;
- every **synthesis** strategy (`prompting.SYNTHESIS`) writes `per_label` texts per label: fidelity (the
  full-data student agrees with the label), distinct-2, embedding dispersion, label balance, tokens, seconds;
- one MiniLM **student** per training set (each labelled pool, each synthetic set, and the bank itself: the
  gold few-shot floor), scored on the test subset; the full-data student is the ceiling.

Each strategy is a point on the quality-vs-cost plane (student macro-F1 against teacher tokens, mean over
seeds) with the frontier; its verdict is paired over seeds against the default prompt of its family
(`prompting.DEFAULT_LABELLING`, `DEFAULT_SYNTHESIS`). A strategy the teacher cannot run (scoring through an
endpoint without log-probs) is skipped with the reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from kdlib.studies import experiment
from kdlib.synthesis import labeling, prompting, synth

FEW, FULL = "gold bank (few-shot)", "full data (reference)"
LABELS, SYNTHETIC = "labels · ", "synthetic · "


def method_of(family: str, strategy: str) -> str:
    """The training set's name in the runs: "labels · KATE demos", "synthetic · AttrPrompt"."""
    return (LABELS if family == "labelling" else SYNTHETIC) + strategy


def defaults() -> dict[str, str]:
    """Each family's default training set: the baseline of its verdicts."""
    return {"labelling": method_of("labelling", prompting.DEFAULT_LABELLING),
            "synthesis": method_of("synthesis", prompting.DEFAULT_SYNTHESIS)}


@dataclass
class Results:
    """Long frames (a `dataset` and a `seed` column each), the skipped strategies and some examples to read."""
    labelling: object        # one row per dataset, seed and labelling strategy
    writing: object          # one row per dataset, seed and synthesis strategy
    runs: object             # one student per dataset, seed and training set (method, family, tokens, macro_f1)
    skipped: dict = field(default_factory=dict)     # strategy -> why the teacher could not run it
    examples: dict = field(default_factory=dict)    # (dataset, strategy) -> a few rows or notes


def embedder(device: str = "cpu"):
    """Unit sentence embeddings in the student's space (all-MiniLM-L6-v2), cached per text."""
    from kdlib.registry import models

    seen: dict[str, np.ndarray] = {}

    def embed(texts):
        new = [x for x in dict.fromkeys(texts) if x not in seen]
        if new:
            seen.update(zip(new, models.sentence_embeddings(new, device=device)))
        return np.stack([seen[x] for x in texts]) if len(texts) else np.zeros((0, 384), dtype=np.float32)
    return embed


def _label_rows(name, seed, anns, wall, pool, names):
    from kdlib.studies.multilingual_study import label_quality

    return [{"dataset": name, "seed": seed, "strategy": s, **label_quality(a.labels, pool.gold, names),
             "tokens": a.tokens, "teacher_s": wall[s]} for s, a in anns.items()]


def _write_rows(name, seed, written, wall, task):
    rows = []
    for s, w in written.items():
        q = synth.quality(w.rows, task.names, task.reference) if w.rows else {"n": 0}
        rows.append({"dataset": name, "seed": seed, "strategy": s, "rows": len(w.rows),
                     **{k: q.get(k, float("nan")) for k in ("fidelity", "distinct2", "dispersion", "balance")},
                     "parse_rate": w.result.parse_rate, "tokens": w.tokens, "teacher_s": wall[s], **_extra_pass(w)})
    return rows


def _extra_pass(w) -> dict:
    """What a strategy's extra teacher pass did: usable attribute values proposed (AttrPrompt), share of texts
    rewritten (self-refine), confusable pairs written from (hard examples)."""
    if "attributes" in w.notes:
        return {"attribute_values": sum(len(v) for v in w.notes["attributes"].values())}
    if "refine" in w.notes:
        done = w.notes["refine"]
        return {"rewritten": done["rewritten"] / max(sum(done.values()), 1)}
    if "pairs" in w.notes:
        return {"pairs": sum(len(v) for v in w.notes["pairs"].values())}
    return {}


def run(teacher, tasks: dict, *, seeds, shots: int, bank: int, pool_size: int, per_label: int, labelling, synthesis,
        config, votes: int = 5, reason_tokens: int = 32, per_prompt: int = 5, synth_max_new_tokens: int = 160,
        refine_tokens: int = 96, device: str = "cpu", progress: bool = True) -> Results:
    """The whole grid (module docstring) for every dataset of `tasks` (`synth_study.prepare`) with one teacher."""
    import pandas as pd

    labelling = prompting.check(labelling, prompting.LABELLING, "labelling")
    synthesis = prompting.check(synthesis, prompting.SYNTHESIS, "synthesis")
    if shots > bank:
        raise ValueError(f"shots ({shots} per class) cannot exceed the labelled bank ({bank} per class)")
    embed = embedder(device)
    lab_rows, write_rows, runs, skipped, examples = [], [], [], {}, {}
    for name, task in tasks.items():
        fit = experiment.classifier(task.validation, task.test, config, task.names)
        against = list(task.test["text"])
        for seed in seeds:
            start = time.monotonic()
            pool = labeling.draw_pool(task.dd["train"], bank, pool_size, seed)
            lplan = prompting.LabelPlan(task.names, pool.demos, prompting.random_shots(pool.demos, shots, seed), embed,
                                        votes=votes, reason_tokens=reason_tokens, seed=seed, task=task.spec.text_kind)
            anns, wall, why = experiment.run_each(
                labelling, lambda s, texts=pool.texts, plan=lplan: prompting.label(teacher, s, texts, plan))
            lab_rows += _label_rows(name, seed, anns, wall, pool, task.names)
            wplan = prompting.WritePlan(task.spec, per_label, pool.demos, embed, against, per_prompt,
                                        synth_max_new_tokens, refine_tokens, seed=seed)
            written, wall_w, why_w = experiment.run_each(synthesis,
                                                         lambda s, plan=wplan: prompting.write(teacher, s, plan))
            write_rows += _write_rows(name, seed, written, wall_w, task)
            skipped.update({**why, **why_w})
            sets = {FEW: pool.demo_rows, **{method_of("labelling", s): labeling.training_rows(pool.texts, a.labels)
                                            for s, a in anns.items()},
                    **{method_of("synthesis", s): w.rows for s, w in written.items()}}
            tokens = {**{method_of("labelling", s): a.tokens for s, a in anns.items()},
                      **{method_of("synthesis", s): w.tokens for s, w in written.items()}}
            frame = experiment.students(sets, [seed], fit, label_names=task.names, extra={"dataset": name},
                                        progress=False)
            frame["family"] = [("gold" if m == FEW else "labelling" if m.startswith(LABELS) else "synthesis")
                               for m in frame.method]
            frame["tokens"] = [tokens.get(m, 0) for m in frame.method]
            runs.append(frame)
            runs.append(pd.DataFrame([{"dataset": name, "method": FULL, "seed": seed, "n_train": len(task.dd["train"]),
                                       **task.ref_test, "problem": None, "family": "gold", "tokens": 0}]))
            if seed == seeds[0]:
                examples.update({(name, s): {"rows": w.rows[:4], "notes": w.notes} for s, w in written.items()})
                examples.update({(name, s): {"raw": [(x, r[:1]) for x, r in zip(pool.texts[:3], a.raw[:3])]}
                                 for s, a in anns.items() if a.raw})
            if progress:
                print(f"{name} seed {seed}: {len(anns)} labelling and {len(written)} synthesis strategies, "
                      f"students trained, {time.monotonic() - start:.0f} s")
    columns = ["dataset", "seed", "strategy", "tokens"]
    return Results(pd.DataFrame(lab_rows, columns=None if lab_rows else columns),
                   pd.DataFrame(write_rows, columns=None if write_rows else columns),
                   pd.concat(runs, ignore_index=True), skipped, examples)


# ----------------------------------------------------------------------------- reading the results

def points(res: Results):
    """One point per dataset and training set: student macro-F1 mean and sd over seeds, mean teacher tokens,
    family, and whether it is on its dataset's quality-vs-cost frontier."""
    import pandas as pd

    runs = res.runs[res.runs.method != FULL]
    agg = (runs.groupby(["dataset", "method"], sort=False)
           .agg(score=("macro_f1", "mean"), sd=("macro_f1", "std"), tokens=("tokens", "mean"),
                family=("family", "first")).reset_index())
    agg["strategy"] = agg.method.str.replace(LABELS, "", regex=False).str.replace(SYNTHETIC, "", regex=False)
    parts = []
    for _, part in agg.groupby("dataset", sort=False):
        part = part.copy()
        scored = part.dropna(subset=["score"])
        part["frontier"] = part.index.isin(scored.index[experiment.frontier(scored, "tokens", "score")])
        parts.append(part)
    return pd.concat(parts) if parts else agg.assign(frontier=False)


def verdicts(res: Results):
    """Per dataset and strategy: student macro-F1 against its family's default (paired over seeds), label
    accuracy against the default labeller's (labelling only), and the token ratio to the default."""
    import pandas as pd

    base, rows = defaults(), []
    lab = res.labelling.rename(columns={"strategy": "method"})
    for dataset, part in res.runs.groupby("dataset", sort=False):
        for method in part.method.unique():
            family = part[part.method == method].family.iloc[0]
            if family == "gold" or method == base[family]:
                continue
            row = {"dataset": dataset, "family": family, "strategy": method.split(" · ", 1)[1]}
            v = experiment.versus(part, "macro_f1", method, base[family])
            row.update({"student_delta": v["delta"], "student_wins": v["wins"], "student_verdict": v["verdict"]})
            if family == "labelling" and len(lab):
                a = experiment.versus(lab[lab.dataset == dataset], "accuracy", row["strategy"],
                                      prompting.DEFAULT_LABELLING)
                row.update({"label_accuracy_delta": a["delta"], "label_verdict": a["verdict"]})
            mine, theirs = experiment.mean_of(part, "tokens", method), experiment.mean_of(part, "tokens", base[family])
            row["token_ratio"] = mine / theirs if theirs else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)


def statements(res: Results) -> list[str]:
    """The closing paragraph's lines, from the numbers: per dataset and family, each strategy against the
    default; which earn their tokens (beat the default on the student) and which do not; the frontier."""
    lines, pts, ver = [], points(res), verdicts(res)
    for name, where in res.skipped.items():
        lines.append(f"{name} was skipped: {where}")
    for dataset, part in res.runs.groupby("dataset", sort=False):
        full = experiment.mean_of(part, "macro_f1", FULL)
        few = experiment.mean_of(part, "macro_f1", FEW)
        lines.append(f"{dataset} (student macro-F1; gold bank {few:.3f}, full data {full:.3f}):")
        for family, default in defaults().items():
            dv = ver[(ver.dataset == dataset) & (ver.family == family)] if len(ver) else ver
            d_mean = experiment.mean_of(part, "macro_f1", default)
            d_tok = experiment.mean_of(part, "tokens", default)
            if np.isnan(d_mean):
                continue
            lines.append(f"- {family}: default {default.split(' · ', 1)[1]} {d_mean:.3f} at {d_tok:.0f} tokens.")
            for _, r in dv.iterrows():
                mean = experiment.mean_of(part, "macro_f1", method_of(family, r.strategy))
                extra = (f"; label accuracy {r.label_accuracy_delta:+.3f} ({r.label_verdict} the default)"
                         if family == "labelling" and "label_verdict" in r and isinstance(r.label_verdict, str) else "")
                lines.append(f"  - {r.strategy}: {mean:.3f}, {r.student_verdict} the default "
                             f"({r.student_delta:+.3f}, ahead in {r.student_wins} seed(s)) at {r.token_ratio:.1f}x its "
                             f"tokens{extra}.")
            if family == "synthesis":
                lines += _extra_lines(res.writing[res.writing.dataset == dataset])
            earn = list(dv[dv.student_verdict == "beats"].strategy) if len(dv) else []
            lines.append(f"  Earn their tokens over the default here: {', '.join(earn) if earn else 'none'}.")
        on = pts[(pts.dataset == dataset) & pts.frontier].sort_values("tokens")
        lines.append("  Frontier (cheapest first): " + ", ".join(f"{r.strategy} ({r.score:.3f}, {r.tokens:.0f} tokens)"
                                                                for _, r in on.iterrows()) + ".")
    return lines


def _extra_lines(writing) -> list[str]:
    out = []
    if "attribute_values" in writing and writing.attribute_values.notna().any():
        n = writing.attribute_values.dropna()
        out.append(f"  AttrPrompt: the teacher proposed {n.mean():.1f} usable attribute values per seed (min {n.min():.0f}"
                   f"{'; with none, its requests varied in length only' if n.min() == 0 else ''}).")
    if "rewritten" in writing and writing.rewritten.notna().any():
        out.append(f"  self-refine rewrote {writing.rewritten.dropna().mean():.0%} of the texts (the rest kept: "
                   f"unusable rewrites).")
    return out


def finding(res: Results) -> str:
    """One line: per dataset, the best strategy of each family against its default."""
    parts = []
    for family, default in defaults().items():
        sel = res.runs[(res.runs.family == family)]
        if len(sel):
            parts.append(f"{family}: " + experiment.finding(sel, "macro_f1", default, by="dataset"))
    return "; ".join(parts) or "no strategy was run"


def emit_headlines(res: Results) -> None:
    """Student macro-F1 per training set (mean ± std), label accuracy and tokens per labelling strategy,
    fidelity / distinct-2 / tokens per synthesis strategy (means over seeds), total teacher tokens."""
    from kdlib.lab import emit

    key = emit.metric_key
    for dataset, sel in res.runs.groupby("dataset", sort=False):
        experiment.emit_scores(sel, "macro_f1", f"macro_f1/{key(dataset)}")
    for frame, cols in ((res.labelling, {"accuracy": "label_accuracy/{}", "tokens": "tokens/labelling/{}"}),
                        (res.writing, {"fidelity": "fidelity/{}", "distinct2": "distinct2/{}",
                                       "tokens": "tokens/synthesis/{}"})):
        if len(frame):
            means = frame.groupby(["dataset", "strategy"], sort=False)[list(cols)].mean().reset_index()
            experiment.emit_columns(means, cols, key=("dataset", "strategy"))
    total = int(res.labelling.get("tokens", []).sum() + res.writing.get("tokens", []).sum())
    emit.emit("teacher_tokens_total", total, unit="tokens", higher_is_better=False)


def plot_quality(frame, metric: str, xlabel: str):
    """Bars of a per-strategy quality column (mean ± sd over seeds), one panel per dataset."""
    import seaborn as sns

    g = sns.catplot(data=frame, x=metric, y="strategy", col="dataset", kind="bar", errorbar="sd", height=3.2,
                    aspect=1.6, sharey=False)
    g.set_titles("{col_name}").set_axis_labels(xlabel, "")
    return g

"""The model-distillation comparison of notebook 03: ZeroGen and few-shot generation (free and constrained to
the JSON schema) against gold few-shot, gold + synthetic and full-data students, per dataset and seed.

`prepare` loads each dataset with its test split, validation subset and full-data reference; `run` generates
every recipe's data per dataset and seed (cached by the teacher layer) and trains one student per training set;
`quality` measures the synthetic data against a real train sample of the same size; `statements` and
`emit_headlines` turn the numbers into the notebook's closing lines and headline metrics.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from kdlib.registry import data
from kdlib.students import student
from kdlib.studies import experiment
from kdlib.synthesis import synth

TAG = {False: "", True: " [structured]"}
FULL = "full data (reference)"


def recipes(structured: list[bool]) -> list[str]:
    """Recipe names: ZeroGen and few-shot gen, for each of free (False) and constrained (True) answers."""
    if not structured:
        raise ValueError("structured must hold False (free text), True (constrained JSON) or both")
    return [f"{r}{TAG[st]}" for st in structured for r in ("ZeroGen", "few-shot gen")]


def methods(structured: list[bool]) -> list[str]:
    """Student methods in table order: gold few-shot, each recipe's synthetic-only and few-shot gen + gold, full."""
    synthetic = [m for st in structured for m in (f"ZeroGen{TAG[st]} (synthetic only)",
                                                  f"few-shot gen{TAG[st]} (synthetic only)",
                                                  f"few-shot gen{TAG[st]} + gold")]
    return ["gold few-shot", *synthetic, FULL]


@dataclasses.dataclass
class Dataset:
    name: str
    dd: object
    names: list[str]
    test: object
    validation: object | None      # for the students' early stopping (None: a few-shot user has none)
    reference: object
    ref_test: dict
    spec: synth.TaskSpec


def prepare(names: list[str], config, *, test_max: int, validation_size: int, reference_validation_size: int,
            full_data_max_train: int, seed: int = 0) -> dict[str, Dataset]:
    out = {}
    for name in names:
        dd = data.load(name, task="classification")
        labels = data.label_names(dd)
        test = data.sample(dd["test"], test_max, seed)
        validation = data.sample(dd["validation"], validation_size, seed + 1) if validation_size else None
        reference = student.full_data_reference(
            {"train": dd["train"], "validation": data.sample(dd["validation"], reference_validation_size, seed)},
            config.replace(max_steps=None, epochs=2), max_train=full_data_max_train or None)
        out[name] = Dataset(name, dd, labels, test, validation, reference, reference.evaluate(test),
                            synth.TaskSpec.for_dataset(Path(name).name, labels))
        print(f"{name}: labels {labels}; train {len(dd['train'])}, test {len(test)}; full-data reference "
              f"macro-F1 {out[name].ref_test['macro_f1']:.3f}")
    return out


def run(generator, datasets: dict[str, Dataset], seeds: list[int], shots: int, per_label: int,
        structured: list[bool], config, full_data_max_train: int = 0, progress: bool = True, **gen_kw):
    """Generate every recipe's data and train every student: (runs frame, {(dataset, recipe, seed): SynthResult})."""
    import pandas as pd

    pairs = [(n, s) for n in datasets for s in seeds]
    if progress:
        from kdlib.lab.progress import track

        pairs = track(pairs, desc="dataset x seed")
    runs, sets = [], {}
    for name, s in pairs:
        d, gold = datasets[name], data.k_shot_rows(datasets[name].dd["train"], shots, s)
        by_label = {lab: [r["text"] for r in gold if r["label"] == lab] for lab in d.names}
        train_sets = {"gold few-shot": gold}
        for st in structured:
            zg, fs = f"ZeroGen{TAG[st]}", f"few-shot gen{TAG[st]}"
            for recipe, shown in ((zg, None), (fs, by_label)):
                sets[name, recipe, s] = synth.synthesize(generator, d.spec, per_label, examples=shown, seed=s,
                                                         against=list(d.test["text"]), structured=st, **gen_kw)
            train_sets.update({f"{zg} (synthetic only)": sets[name, zg, s].rows,
                               f"{fs} (synthetic only)": sets[name, fs, s].rows,
                               f"{fs} + gold": sets[name, fs, s].rows + gold})
        fit = experiment.classifier(d.validation, d.test, config, d.names)
        runs.append(experiment.students(train_sets, [s], fit, label_names=d.names, extra={"dataset": name},
                                        progress=False))
    full = [{"dataset": n, "method": FULL, "seed": s, "n_train": full_data_max_train or len(d.dd["train"]),
             "accuracy": d.ref_test["accuracy"], "macro_f1": d.ref_test["macro_f1"]} for n, d in datasets.items()
            for s in seeds]
    return pd.concat([*runs, pd.DataFrame(full)], ignore_index=True), sets


def quality(sets: dict, datasets: dict[str, Dataset], seeds: list[int]):
    """Per dataset, recipe and seed: synth.quality of the kept rows (fidelity by the reference, diversity,
    balance) plus duplicate, rejection and parse rates, test leaks, tokens and rounds; and the same measures of
    a real train sample as large as the last recipe's data (the yardstick)."""
    import pandas as pd

    rows = []
    for (name, recipe, s), res in sets.items():
        d, counts = datasets[name], res.report.counts
        dup = sum(v for k, v in counts.items() if k.startswith(("duplicate", "seed_copy")))
        judged = len(res.report.kept) + len(res.report.rejected)
        rows.append({"dataset": name, "recipe": recipe, "seed": s, **synth.quality(res.rows, d.names, d.reference),
                     "duplicate_rate": dup / max(res.parsed, 1), "rejection_rate": 1 - len(res.report.kept) / max(judged, 1),
                     "test_leaks": counts.get("test_leak", 0), "tokens": res.tokens, "rounds": res.rounds,
                     "parse_rate": res.parse_rate})
    last = list(dict.fromkeys(r for _, r, _ in sets))[-1]
    for name, d in datasets.items():
        size = max(int(np.mean([len(sets[name, last, s].rows) for s in seeds])), 2)
        for s in seeds:
            sample = data.sample(d.dd["train"], size, s)
            real = [{"text": x, "label": d.names[y]} for x, y in zip(sample["text"], sample["label"])]
            rows.append({"dataset": name, "recipe": "real train sample", "seed": s,
                         **synth.quality(real, d.names, d.reference), "tokens": 0})
    return pd.DataFrame(rows)


def statements(runs, qual, datasets: dict[str, Dataset], structured: list[bool]) -> list[str]:
    """Per dataset: each synthetic method against the gold few-shot student (paired over seeds), each recipe's
    data quality and cost, and, when both are run, what constraining the answers did."""
    qmean, lines = qual.groupby(["dataset", "recipe"]).mean(numeric_only=True), []
    for i, name in enumerate(datasets):
        few, full = (experiment.mean_of(runs, "macro_f1", m, dataset=name) for m in ("gold few-shot", FULL))
        lines.append(f"**{name}** ({'general' if i == 0 else 'domain'}): gold few-shot {few:.3f}, full data "
                     f"{full:.3f} macro-F1.")
        for m in methods(structured)[1:-1]:
            sel = runs[(runs.dataset == name) & (runs.method == m)].macro_f1.dropna()
            if not len(sel):
                lines.append(f"- {m}: no student (the teacher produced no usable data).")
                continue
            v = experiment.versus(runs, "macro_f1", m, "gold few-shot", {"dataset": name})
            spread = "(one seed)" if len(sel) < 2 else f"± {sel.std():.3f}"
            lines.append(f"- {m}: {sel.mean():.3f} {spread} ({100 * sel.mean() / full:.0f}% of full data); "
                         f"{v['verdict']} the gold few-shot student.")
        real = qmean.loc[(name, "real train sample")].distinct2
        for recipe in recipes(structured):
            q = qmean.loc[(name, recipe)]
            lines.append(f"- {recipe} data: {q.n:.0f} rows, fidelity {q.fidelity:.2f}, distinct-2 {q.distinct2:.2f} "
                         f"(real {real:.2f}), rejection rate {q.rejection_rate:.0%}, {q.tokens:.0f} teacher tokens per seed.")
        for recipe in ("ZeroGen", "few-shot gen") if len(structured) == 2 else ():
            free, con = qmean.loc[(name, recipe)], qmean.loc[(name, recipe + TAG[True])]
            a, b = f"{recipe}{TAG[True]} (synthetic only)", f"{recipe} (synthetic only)"
            v = experiment.versus(runs, "macro_f1", a, b, {"dataset": name})
            lines.append(f"- Constraining {recipe} to the JSON schema: parse rate {free.parse_rate:.2f} -> "
                         f"{con.parse_rate:.2f} of the requested texts, kept rows {free.n:.0f} -> {con.n:.0f}, tokens "
                         f"{free.tokens:.0f} -> {con.tokens:.0f}; synthetic-only student "
                         f"{experiment.mean_of(runs, 'macro_f1', b, dataset=name):.3f} -> "
                         f"{experiment.mean_of(runs, 'macro_f1', a, dataset=name):.3f} macro-F1 (the constrained one "
                         f"{v['verdict']} the free one, paired over seeds).")
    return lines


def emit_headlines(runs, qual, datasets: dict[str, Dataset], structured: list[bool]) -> None:
    """full_data_macro_f1/<d>, student_macro_f1/<d>/<method>, and per recipe tokens, synthetic_rows, fidelity,
    distinct2 and parse_rate."""
    from kdlib.lab import emit

    key = emit.metric_key
    qmean = qual.groupby(["dataset", "recipe"]).mean(numeric_only=True)
    for name in datasets:
        d = key(Path(name).name)
        emit.emit(f"full_data_macro_f1/{d}", experiment.mean_of(runs, "macro_f1", FULL, dataset=name),
                  higher_is_better=True)
        for m in methods(structured)[:-1]:
            experiment.emit_score(f"student_macro_f1/{d}/{key(m.split(' (')[0])}", runs, "macro_f1", m, dataset=name)
        recipe_rows = qmean.loc[name].loc[recipes(structured)].reset_index()
        experiment.emit_columns(recipe_rows, {"tokens": f"tokens/{d}/{{}}", "n": f"synthetic_rows/{d}/{{}}",
                                              "fidelity": f"fidelity/{d}/{{}}", "distinct2": f"distinct2/{d}/{{}}",
                                              "parse_rate": f"parse_rate/{d}/{{}}"}, key="recipe")


def examples(task: Dataset, rows_by_recipe: dict[str, list[dict]], per_label: int = 2, width: int = 160):
    """A few synthetic texts per recipe and label, beside the label the full-data reference gives them: what a
    reader should look at before trusting any score."""
    import pandas as pd

    shown = []
    for recipe, rows in rows_by_recipe.items():
        picked = [r for lab in task.names for r in [r for r in rows if r["label"] == lab][:per_label]]
        says = task.reference.predict_labels([r["text"] for r in picked]) if picked else []
        shown += [{"recipe": recipe, "label": r["label"], "reference says": p, "text": r["text"][:width]}
                  for r, p in zip(picked, says)]
    return pd.DataFrame(shown)

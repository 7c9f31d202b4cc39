"""Notebook 09's study: synthetic data for question answering, and how far a teacher's data carries into a domain.

Three experiments, each `run_*` returning (runs frame, {(source, seed): synthesis result}); every seed redraws
the gold shots and the unlabelled passages, re-samples the teacher and retrains the students:

1. **Extractive QA, general domain** (SQuAD): students trained on the gold few-shot questions; on the pairs the
   teacher wrote on unlabelled passages that survive the span and duplicate filters (`kdlib.synthesis.synth_qa`); on
   those that also pass the round trip; on synthetic + gold. The full-data student is the upper bound and
   plays the round trip's QA model, as in Alberti et al. (2019) — a model trained on labelled data a few-shot
   user would not have, which the notebook says.
2. **Yes/no/maybe QA, medicine** (PubMedQA): gold few-shot (k per answer), in-domain synthetic (the teacher's
   questions on medical abstracts), general-domain synthetic (the same recipe on general passages: domain
   transfer), in-domain synthetic + gold, full data. Students are the classifier over (question, context) pairs.
3. **Sentiment, finance** (financial_phrasebank; no finance QA set is mirrored, see data/MANIFEST.md): ZeroGen
   texts asked for as financial news vs as everyday sentences with the same labels, beside gold few-shot and
   full data — the finance half of the domain-transfer question.

`funnel` gathers what each filter kept, `statements` turns the numbers into the closing paragraph and
`emit_headlines` publishes them.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

from kdlib.registry import data
from kdlib.students import qa, student
from kdlib.studies import experiment
from kdlib.synthesis import synth, synth_qa

GOLD, FULL = "gold few-shot", "full data (reference)"
SYNTH, ROUND_TRIP, SYNTH_GOLD = "synthetic only", "synthetic, round-trip filtered", "synthetic + gold"
QA_METHODS = [GOLD, SYNTH, ROUND_TRIP, SYNTH_GOLD, FULL]
IN_DOMAIN, GENERAL, IN_DOMAIN_GOLD = "in-domain synthetic", "general-domain synthetic", "in-domain synthetic + gold"
DOMAIN_METHODS = [GOLD, IN_DOMAIN, GENERAL, IN_DOMAIN_GOLD, FULL]
FINANCE_METHODS = [GOLD, IN_DOMAIN, GENERAL, FULL]
_GENERIC_SENTIMENT = {"negative": "expresses a negative opinion or bad news",
                      "neutral": "states a fact with no positive or negative opinion",
                      "positive": "expresses a positive opinion or good news"}


@dataclasses.dataclass
class Task:
    """One dataset of the study: splits, the students' validation data (None: a few-shot user has none), the
    full-data student and its test scores."""
    name: str
    dd: object
    test: object
    validation: object | None
    reference: object
    ref_test: dict
    names: list[str] = dataclasses.field(default_factory=list)   # label names (none for extractive QA)


def passages(ds, n: int, seed: int, exclude=()) -> list[str]:
    """`n` distinct contexts of a split, seeded (all of them, shuffled, if there are fewer), none of `exclude`:
    the unlabelled passages the teacher writes questions on."""
    skip = {synth_qa.passage_text(c) for c in exclude}
    pool = sorted({synth_qa.passage_text(c) for c in ds["context"]} - skip)
    random.Random(seed).shuffle(pool)
    return pool[:n]


def prepare_extractive(name: str, config, *, test_max: int, validation_size: int, full_data_max_train: int,
                       seed: int = 0, stride: int = 0) -> Task:
    """An extractive QA set and its full-data student (train capped at `full_data_max_train`, one epoch,
    early-stopped on validation when the set has one)."""
    dd = data.load(name, task="extractive_qa")
    stride = stride or config.max_length // 4
    test = data.sample(dd["test"], test_max, seed)
    held = dd["validation"] if "validation" in dd else None
    validation = data.sample(held, validation_size, seed + 1) if validation_size and held is not None else None
    train = data.sample(dd["train"], full_data_max_train, seed) if full_data_max_train else dd["train"]
    reference = qa.train_qa(train, data.sample(held, 128, seed) if held is not None else None,
                            config.replace(max_steps=None, epochs=1), stride=stride)
    task = Task(name, dd, test, validation, reference, reference.evaluate(test))
    print(f"{name}: train {len(dd['train'])} questions, test {len(test)}; full-data student ({len(train)} questions) "
          f"EM {task.ref_test['exact_match']:.3f}, F1 {task.ref_test['f1']:.3f}")
    return task


def prepare_classes(name: str, config, *, task: str, test_max: int, reference_validation_size: int,
                    full_data_max_train: int, seed: int = 0) -> Task:
    """A yes/no/maybe QA or classification set and its (cached) full-data student."""
    dd = data.load(name, task=task)
    names, test = data.label_names(dd), data.sample(dd["test"], test_max, seed)
    reference = student.full_data_reference(
        {"train": dd["train"], "validation": data.sample(dd["validation"], reference_validation_size, seed)},
        config.replace(max_steps=None, epochs=2), max_train=full_data_max_train or None)
    out = Task(name, dd, test, None, reference, reference.evaluate(test), names)
    print(f"{name}: labels {names}; train {len(dd['train'])}, test {len(test)}; full-data reference macro-F1 "
          f"{out.ref_test['macro_f1']:.3f}")
    return out


def _qa_fit(task: Task, config, stride: int):
    def fit(rows: list[dict], seed: int) -> dict:
        scores = qa.train_qa(rows, task.validation, config.replace(seed=int(seed)), stride=stride).evaluate(task.test)
        return {"exact_match": scores["exact_match"], "f1": scores["f1"]}
    return fit


def _track(items: list, desc: str, progress: bool) -> list:
    if not progress:
        return items
    from kdlib.lab.progress import track

    return track(items, desc=desc)


def run_extractive(generator, task: Task, seeds: list[int], shots: int, n_passages: int, per_passage: int, config, *,
                   structured: bool = True, round_trip_f1: float = 0.5, stride: int = 0, progress: bool = True,
                   **gen_kw):
    """Experiment 1: (runs with exact_match and f1 per method and seed, {("general", seed): QASynthResult})."""
    import pandas as pd

    runs, sets, stride = [], {}, stride or config.max_length // 4
    for s in _track(list(seeds), "seeds (extractive QA)", progress):
        gold = data.k_shot_rows(task.dd["train"], shots, s)
        texts = passages(task.dd["train"], n_passages, s, exclude=[r["context"] for r in gold])
        examples = [{"question": r["question"], "answers": r["answers"]} for r in gold[:3]]
        res = synth_qa.synthesize_qa(generator, texts, per_passage, examples=examples, seed=s, structured=structured,
                                     against=list(task.test["question"]), round_trip=None, **gen_kw)
        kept = synth_qa.round_trip_filter(res, task.reference.predict, round_trip_f1)
        sets["general", s] = kept
        train_sets = {GOLD: gold, SYNTH: res.rows, ROUND_TRIP: kept.rows, SYNTH_GOLD: res.rows + gold}
        runs.append(experiment.students(train_sets, [s], _qa_fit(task, config, stride), extra={"dataset": task.name},
                                        progress=False))
    full = [{"dataset": task.name, "method": FULL, "seed": s, "n_train": len(task.dd["train"]),
             "exact_match": task.ref_test["exact_match"], "f1": task.ref_test["f1"]} for s in seeds]
    return pd.concat([*runs, pd.DataFrame(full)], ignore_index=True), sets


def run_yes_no(generator, task: Task, general_pool, seeds: list[int], shots: int, n_passages: int, per_passage: int,
               config, *, structured: bool = True, progress: bool = True, **gen_kw):
    """Experiment 2: (runs with accuracy and macro_f1, {("in-domain" | "general", seed): QASynthResult}).
    `general_pool` is a split whose contexts are the general-domain passages."""
    import pandas as pd

    runs, sets, against = [], {}, list(task.test["question"])
    fit = experiment.classifier(task.validation, task.test, config, task.names)
    for s in _track(list(seeds), "seeds (yes/no/maybe)", progress):
        gold = data.k_shot_rows(task.dd["train"], shots, s)
        examples = [{"question": r["question"], "label": r["label"]} for r in gold[:3]]
        for source, pool, exclude in (("in-domain", task.dd["train"], [r["context"] for r in gold]),
                                      ("general", general_pool, [])):
            sets[source, s] = synth_qa.synthesize_yes_no(generator, passages(pool, n_passages, s, exclude), per_passage,
                                                         examples=examples, seed=s, structured=structured,
                                                         against=against, **gen_kw)
        inside = sets["in-domain", s].rows
        train_sets = {GOLD: gold, IN_DOMAIN: inside, GENERAL: sets["general", s].rows, IN_DOMAIN_GOLD: inside + gold}
        runs.append(experiment.students(train_sets, [s], fit, label_names=task.names, extra={"dataset": task.name},
                                        progress=False))
    return pd.concat([*runs, _full_rows(task, seeds)], ignore_index=True), sets


def general_spec(spec: synth.TaskSpec) -> synth.TaskSpec:
    """The same labels asked for without the domain: what a general-purpose recipe would request."""
    return synth.TaskSpec("a short sentence from everyday life (a product review, a conversation, a news story)",
                          {lab: _GENERIC_SENTIMENT.get(lab, f"belongs to the category '{lab}'") for lab in spec.label_names})


def run_finance(generator, task: Task, seeds: list[int], shots: int, per_label: int, config, *,
                structured: bool = True, progress: bool = True, **gen_kw):
    """Experiment 3: (runs with accuracy and macro_f1, {("in-domain" | "general", seed): SynthResult}). The
    in-domain recipe describes the dataset's texts (`synth.KNOWN_TASKS`); the general one the same labels in
    everyday sentences. A dataset unknown to `KNOWN_TASKS` has no domain description: both ask alike."""
    import pandas as pd

    spec = synth.TaskSpec.for_dataset(Path(task.name).name, task.names)
    specs = {"in-domain": spec, "general": general_spec(spec)}
    if Path(task.name).name not in synth.KNOWN_TASKS:
        print(f"{task.name}: no description of its domain in synth.KNOWN_TASKS, so the in-domain recipe asks for "
              f"{spec.text_kind!r}: in-domain vs general compares two generic requests here")
    runs, sets, against = [], {}, list(task.test["text"])
    fit = experiment.classifier(task.validation, task.test, config, task.names)
    for s in _track(list(seeds), "seeds (finance)", progress):
        gold = data.k_shot_rows(task.dd["train"], shots, s)
        for source, sp in specs.items():
            sets[source, s] = synth.synthesize(generator, sp, per_label, seed=s, against=against, structured=structured,
                                               **gen_kw)
        train_sets = {GOLD: gold, IN_DOMAIN: sets["in-domain", s].rows, GENERAL: sets["general", s].rows}
        runs.append(experiment.students(train_sets, [s], fit, label_names=task.names, extra={"dataset": task.name},
                                        progress=False))
    return pd.concat([*runs, _full_rows(task, seeds)], ignore_index=True), sets


def _full_rows(task: Task, seeds: list[int]):
    import pandas as pd

    return pd.DataFrame([{"dataset": task.name, "method": FULL, "seed": s, "n_train": len(task.dd["train"]),
                          "accuracy": task.ref_test["accuracy"], "macro_f1": task.ref_test["macro_f1"]} for s in seeds])


def funnel(sets: dict, experiment_name: str):
    """Long frame: experiment, source, seed, stage, kept (pairs or texts), share of requested, tokens."""
    import pandas as pd

    rows = []
    for (source, s), res in sets.items():
        stages = res.funnel if hasattr(res, "funnel") else {"requested": res.requested, "parsed": res.parsed,
                                                             "kept": len(res.rows)}
        for stage, n in stages.items():
            rows.append({"experiment": experiment_name, "source": source, "seed": s, "stage": stage, "kept": n,
                         "share": n / stages["requested"] if stages["requested"] else float("nan"),
                         "tokens": res.tokens})
    return pd.DataFrame(rows)


def _line(runs, metric: str, method: str, baseline: str, name: str, full: float) -> str:
    sel = runs[(runs.dataset == name) & (runs.method == method)][metric].dropna()
    if not len(sel):
        return f"- {method}: no student (the teacher produced no usable data)."
    v = experiment.versus(runs, metric, method, baseline, {"dataset": name})
    spread = "(one seed)" if len(sel) < 2 else f"± {sel.std():.3f}"
    return (f"- {method}: {sel.mean():.3f} {spread} ({100 * sel.mean() / full:.0f}% of full data); "
            f"{v['verdict']} {baseline}.")


def statements(qa_runs, yn_runs, fin_runs, funnels) -> list[str]:
    """The closing paragraph's lines, from the numbers: every method against gold few-shot (paired over seeds),
    in-domain against general-domain synthetic data, and the share of pairs each filter kept."""
    lines = []
    for runs, metric, methods, label in ((qa_runs, "f1", QA_METHODS, "extractive QA, F1"),
                                         (yn_runs, "macro_f1", DOMAIN_METHODS, "medicine, yes/no/maybe macro-F1"),
                                         (fin_runs, "macro_f1", FINANCE_METHODS, "finance, sentiment macro-F1")):
        name = runs.dataset.iloc[0]
        few, full = (experiment.mean_of(runs, metric, m) for m in (GOLD, FULL))
        lines.append(f"**{name}** ({label}): gold few-shot {few:.3f}, full data {full:.3f}.")
        lines += [_line(runs, metric, m, GOLD, name, full) for m in methods[1:-1]]
        if GENERAL in methods:
            v = experiment.versus(runs, metric, IN_DOMAIN, GENERAL, {"dataset": name})
            lines.append(f"- Domain transfer: in-domain synthetic data {v['verdict']} general-domain synthetic data "
                         f"({experiment.mean_of(runs, metric, IN_DOMAIN):.3f} vs "
                         f"{experiment.mean_of(runs, metric, GENERAL):.3f}).")
    mean = funnels.groupby(["experiment", "source", "stage"], sort=False).agg(kept=("kept", "mean"), share=("share", "mean"),
                                                                              tokens=("tokens", "mean"))
    for (exp, source), part in mean.groupby(level=[0, 1], sort=False):
        stages = ", ".join(f"{stage} {row.kept:.0f} ({row.share:.0%})" for (_, _, stage), row in part.iterrows())
        lines.append(f"Funnel, {exp} ({source}), mean per seed: {stages}; {part.tokens.iloc[0]:.0f} teacher tokens.")
    return lines


def emit_headlines(qa_runs, yn_runs, fin_runs, funnels) -> None:
    """qa_exact_match/f1 per method, yes_no and finance macro-F1 per method, the share each filter keeps and
    the teacher tokens."""
    from kdlib.lab import emit

    key = emit.metric_key
    for runs, metrics, methods in ((qa_runs, ("exact_match", "f1"), QA_METHODS),
                                   (yn_runs, ("macro_f1",), DOMAIN_METHODS), (fin_runs, ("macro_f1",), FINANCE_METHODS)):
        d = key(Path(runs.dataset.iloc[0]).name)
        for metric in metrics:
            for m in methods:
                experiment.emit_score(f"{metric}/{d}/{key(m)}", runs, metric, m)
    shares = funnels.groupby(["experiment", "source", "stage"], sort=False).share.mean()
    for (exp, source, stage), share in shares.items():
        if stage != "requested":
            emit.emit(f"yield/{key(exp)}/{key(source)}/{stage}", float(share), higher_is_better=True)
    tokens = funnels.drop_duplicates(["experiment", "source", "seed"]).tokens.sum()
    emit.emit("teacher_tokens_total", int(tokens), unit="tokens", higher_is_better=False)

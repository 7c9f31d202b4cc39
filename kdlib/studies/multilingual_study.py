"""Notebook 11's grid: an English-only teacher against a multilingual one, labelling and writing data for French
(and, as the control, English) classification — which serves which language better, and at what cost.

Per dataset the data's language is identified from its train texts (`kdlib.synthesis.languages`), so the grid
runs unchanged on a dataset it has never seen. Per teacher:

- **annotators** on one pool of train items (gold labels kept aside for scoring): calibrated label scoring and
  generated labels (constrained to the label set), each with the instruction in English and in the data's
  language, and translate-then-label (the teacher translates the text to English, then labels it in English);
  scored by accuracy and macro-F1 against gold, label balance, teacher tokens and seconds;
- **writers**: ZeroGen texts per label asked for in the data's language (`TaskSpec.for_dataset`), scored by the
  share identified as that language, fidelity to the full-data student, distinct-2, tokens and seconds;
- **students**: the lab's MiniLM student (pretrained on English) and a language-agnostic character n-gram
  student (`kdlib.students.ngram`), trained on each teacher's labels of the pool and on each teacher's
  synthetic texts, beside gold few-shot (floor), the gold-labelled pool (oracle) and full data (ceiling).

The recipes are the lab's own (`labeling.annotate_score`/`annotate_generate`, `synth.synthesize`): only the
translation step and the language bookkeeping live here. Teacher seconds are measured in this run; cached
answers cost almost none, so a rerun shows less (tokens do not change).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from kdlib.studies import experiment
from kdlib.synthesis import labeling, languages, synth

FEW, ORACLE, FULL = "gold few-shot", "gold-labelled pool (oracle)", "full data (reference)"
STUDENTS = ("MiniLM", "char n-gram")
TRANSLATE = "translate→label"


def teacher_name(spec: str, served: str = "") -> str:
    """A short display name: the served model's name for a URL, else the id's or folder's last part."""
    return served or spec.rstrip("/").split("/")[-1]


RECIPES = ("score+cal", "generate", TRANSLATE)


def annotators(language: str, recipes=RECIPES) -> list[tuple[str, str, str]]:
    """(method name, recipe, instruction language) of every annotator of `recipes` for data in `language`:
    score+cal and generate instructed in English and (non-English data) in the data's language; translate-then-
    label for non-English data only."""
    unknown = set(recipes) - set(RECIPES)
    if unknown:
        raise ValueError(f"unknown labelling recipes {sorted(unknown)}; choose from {list(RECIPES)}")
    direct = [r for r in RECIPES[:2] if r in recipes]
    out = [(f"{r} [{languages.ENGLISH}]", r, languages.ENGLISH) for r in direct]
    if language != languages.ENGLISH:
        out += [(f"{r} [{language}]", r, language) for r in direct]
        if TRANSLATE in recipes:
            out.append((f"{TRANSLATE} [{languages.ENGLISH}]", TRANSLATE, languages.ENGLISH))
    return out


@dataclass
class Annotated:
    """One teacher's labels of the pool by every annotator, and their quality and cost."""
    labels: dict[str, list[str | None]]
    quality: list[dict]
    translations: list[str] = field(default_factory=list)
    failed_translations: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # method -> why the teacher could not run it


def translate(teacher, texts, max_new_tokens: int = 96) -> tuple[list[str], int, int]:
    """(English translations, teacher tokens, empty answers). Greedy, one line; an empty answer keeps the
    original text (counted) so that the labelling step still sees something."""
    t = teacher.with_cache(teacher.cache)
    prompts = [[{"role": "user", "content": languages.TRANSLATE.format(text=x)}] for x in texts]
    outs = t.texts(prompts, max_new_tokens=max_new_tokens, temperature=0.0, stop=["\n"])
    kept = [o.strip() or x for o, x in zip(outs, texts)]
    return kept, int(t.ledger.summary()["tokens_without_cache"]), sum(not o.strip() for o in outs)


def _label(teacher, texts, names, demos, recipe: str, language: str, max_new_tokens: int):
    """Labels (dataset names) and tokens of one recipe with prompts in `language` (label words translated)."""
    words = languages.label_words(names, language)
    to_word = dict(zip(names, words))
    shots = [(x, to_word[y]) for x, y in demos]
    if recipe == "score+cal":
        _, ann = labeling.annotate_score(teacher, texts, words, shots, language=language)
    else:
        ann = labeling.annotate_generate(teacher, texts, words, shots, max_new_tokens=max_new_tokens,
                                         structured=True, language=language)
    back = dict(zip(words, names))
    return [back.get(w) if w is not None else None for w in ann.labels], ann.tokens


def label_quality(labels, gold, names) -> dict:
    """Accuracy and macro-F1 against gold (an unparsed label counts as wrong), the share parsed, and the total
    variation between the label shares given and the gold ones (0: the teacher's label mix matches the data's)."""
    from sklearn.metrics import f1_score

    given = [y if y is not None else "(none)" for y in labels]
    share = lambda ys, n: np.array([ys.count(x) for x in n], dtype=float) / max(len(ys), 1)  # noqa: E731
    buckets = [*names, "(none)"]  # an unanswered item moves mass away from every label
    return {"accuracy": float(np.mean([g == y for g, y in zip(given, gold)])) if gold else float("nan"),
            "macro_f1": float(f1_score(gold, given, labels=list(names), average="macro", zero_division=0)),
            "parsed": float(np.mean([y is not None for y in labels])) if labels else float("nan"),
            "label_tv": float(0.5 * np.abs(share(given, buckets) - share(list(gold), buckets)).sum())}


def annotate(teacher, pool, names, language: str, *, recipes=RECIPES, max_new_tokens: int = 8,
             translate_tokens: int = 96) -> Annotated:
    """Every annotator of `annotators(language, recipes)` on the pool, timed, with its quality against the
    pool's gold."""

    out = Annotated({}, [])
    for method, recipe, lang in annotators(language, recipes):
        start = time.monotonic()
        why = teacher.unsupported("score") if recipe == "score+cal" else None
        if why:  # an endpoint without prompt log-probs cannot score labels: skipped with the reason, not fatal
            out.skipped[method] = why
            continue
        texts, extra = pool.texts, 0
        if recipe == TRANSLATE:
            if not out.translations:
                out.translations, extra, out.failed_translations = translate(teacher, pool.texts, translate_tokens)
            texts = out.translations
        labels, tokens = _label(teacher, texts, names, pool.demos, "generate" if recipe == TRANSLATE else recipe,
                                lang, max_new_tokens)
        out.labels[method] = labels
        out.quality.append({"method": method, **label_quality(labels, pool.gold, names), "tokens": tokens + extra,
                            "teacher_s": time.monotonic() - start})
    return out


def spec_in(task, language: str):
    """The synthesis request for `task` worded in the data's language: its known description when that is in
    the language, else a generic one in it (`languages.generic_descriptions`), else the English one."""
    if task.spec.language == language or language not in languages.PROMPTS:
        return task.spec
    kind, descriptions = languages.generic_descriptions(task.names, language)
    return synth.TaskSpec(kind, descriptions, language)


def write(teacher, task, per_label: int, language: str, seed: int, **gen_kw) -> tuple[object, dict]:
    """ZeroGen texts per label, asked for in the data's language (constrained JSON answers); (SynthResult,
    quality: rows, share in the data's language, fidelity, distinct-2, balance, tokens, seconds)."""
    start = time.monotonic()
    result = synth.synthesize(teacher, spec_in(task, language), per_label, seed=seed,
                              against=list(task.test["text"]), structured=True, **gen_kw)
    seconds = time.monotonic() - start
    texts = [r["text"] for r in result.rows]
    q = synth.quality(result.rows, task.names, task.reference) if result.rows else {"n": 0}
    return result, {"rows": len(result.rows), "in_language": languages.language_share(texts, language),
                    "fidelity": q.get("fidelity", float("nan")), "distinct2": q.get("distinct2", float("nan")),
                    "balance": q.get("balance", float("nan")), "tokens": result.tokens, "teacher_s": seconds}


def students(train_sets: dict[str, list[dict]], task, seeds, config, full_data_max_train: int = 0,
             progress: bool = True):
    """MiniLM and char n-gram students per training set and seed (n-gram fits are deterministic: their spread
    comes from nothing, and is 0), with the full-data students as the ceiling. A long frame with `student`."""
    import pandas as pd

    from kdlib.registry import data
    from kdlib.students.ngram import train_ngram

    minilm = experiment.students(train_sets, seeds, experiment.classifier(task.validation, task.test, config, task.names),
                                 label_names=task.names, progress=progress).assign(student=STUDENTS[0])

    def ngram_fit(rows, seed):
        return {k: v for k, v in train_ngram(rows, task.names, task.validation).evaluate(task.test).items()
                if k in ("accuracy", "macro_f1")}

    fits = {}  # one fit per training set: it does not depend on the seed

    def ngram_once(rows, seed):
        if id(rows) not in fits:
            fits[id(rows)] = ngram_fit(rows, seed)
        return fits[id(rows)]

    ngram = experiment.students(train_sets, seeds, ngram_once, label_names=task.names,
                                progress=False).assign(student=STUDENTS[1])
    train = data.sample(task.dd["train"], full_data_max_train, 0) if full_data_max_train else task.dd["train"]
    full_rows = [{"text": x, "label": task.names[y]} for x, y in zip(train["text"], train["label"])]
    full_ngram = ngram_fit(full_rows, 0)
    full = [{"method": FULL, "seed": s, "n_train": n, **scores, "problem": "", "student": who} for s in seeds
            for who, scores, n in ((STUDENTS[0], task.ref_test, len(task.dd["train"])), (STUDENTS[1], full_ngram,
                                                                                           len(full_rows)))]
    runs = pd.concat([minilm, ngram, pd.DataFrame(full)], ignore_index=True)
    return runs[["student", *[c for c in runs.columns if c != "student"]]]


def costs(runs, labelled, written) -> list[dict]:
    """Per teacher and pool (labels, synthetic) and student: the macro-F1 points gained over gold few-shot, and
    the points per 1k teacher tokens and per teacher-minute (NaN where nothing was gained)."""
    out = []
    for (teacher, kind), (method, tokens, seconds) in {**labelled, **written}.items():
        for who in STUDENTS:
            sel = runs[runs.student == who]
            gain = 100 * (experiment.mean_of(sel, "macro_f1", method) - experiment.mean_of(sel, "macro_f1", FEW))
            ok = gain > 0
            out.append({"teacher": teacher, "pool": kind, "student": who, "gain_points": gain, "tokens": tokens,
                        "teacher_s": seconds, "points_per_1k_tokens": 1000 * gain / tokens if ok and tokens else
                        float("nan"), "points_per_teacher_min": 60 * gain / seconds if ok and seconds else float("nan")})
    return out


def student_method(label_method: str, language: str, recipes=RECIPES) -> str:
    """The annotator whose labels train the students: `label_method` in the data's language where it exists
    (translate-then-label exists for non-English data only; on English data it is plain generation)."""
    if label_method not in recipes:
        raise ValueError(f"label_method {label_method!r} is not among the recipes run: {list(recipes)}")
    names = [m for m, _, _ in annotators(language, RECIPES)]
    recipe = "generate" if label_method == TRANSLATE and language == languages.ENGLISH else label_method
    for lang in (language, languages.ENGLISH):
        if f"{recipe} [{lang}]" in names:
            return f"{recipe} [{lang}]"
    raise ValueError(f"label_method {label_method!r} is not one of score+cal, generate, {TRANSLATE}")


@dataclass
class Results:
    """Everything the notebook shows: long frames with a `dataset` column, and a few examples to read."""
    languages: dict[str, str]
    labelling: object
    writing: object
    runs: object
    costs: object
    examples: dict = field(default_factory=dict)


def run(teachers: dict, tasks: dict, *, seeds, shots: int, pool_size: int, per_label: int, label_method: str,
        config, full_data_max_train: int = 0, seed: int = 0, recipes=RECIPES, translate_tokens: int = 96,
        progress: bool = True, **gen_kw) -> Results:
    """The whole grid (module docstring) for every dataset of `tasks` (`synth_study.prepare`) and every teacher
    of `teachers` ({display name: Teacher}); `gen_kw` goes to `synth.synthesize` (e.g. max_new_tokens)."""
    import pandas as pd

    from kdlib.registry import data

    found, labelling, writing, runs, cost, examples = {}, [], [], [], [], {}
    for name, task in tasks.items():
        lang = found[name] = languages.data_language(list(data.sample(task.dd["train"], 200, seed)["text"]))
        pool = labeling.draw_pool(task.dd["train"], shots, pool_size, seed)
        chosen = student_method(label_method, lang, recipes)
        sets = {FEW: pool.demo_rows, ORACLE: labeling.training_rows(pool.texts, pool.gold)}
        labelled, written = {}, {}
        for who, teacher in teachers.items():
            print(f"{name} ({lang}) · {who}: labelling {len(pool.texts)} texts, writing {per_label} per label")
            ann = annotate(teacher, pool, task.names, lang, recipes=recipes, translate_tokens=translate_tokens)
            labelling += [{"dataset": name, "teacher": who, **q} for q in ann.quality]
            for method, why in ann.skipped.items():
                print(f"  {method} skipped: {why}")
            q = next((q for q in ann.quality if q["method"] == chosen), None)
            if q is None:
                raise ValueError(f"{who} could not run {chosen!r} ({ann.skipped.get(chosen, 'not run')}): choose "
                                 f"another label_method among {[q['method'] for q in ann.quality]}")
            sets[f"labels · {who}"] = labeling.training_rows(pool.texts, ann.labels[chosen])
            labelled[who, "labels"] = (f"labels · {who}", q["tokens"], q["teacher_s"])
            result, wq = write(teacher, task, per_label, lang, seed, **gen_kw)
            writing.append({"dataset": name, "teacher": who, **wq, "rejected": dict(result.report.counts)})
            sets[f"synthetic · {who}"] = result.rows
            written[who, "synthetic"] = (f"synthetic · {who}", wq["tokens"], wq["teacher_s"])
            examples[name, who] = {"synthetic": result.rows[:4], "translations": list(zip(pool.texts, ann.translations))[:3]}
        frame = students(sets, task, seeds, config, full_data_max_train, progress).assign(dataset=name)
        runs.append(frame)
        cost += [{"dataset": name, **c} for c in costs(frame, labelled, written)]
    return Results(found, pd.DataFrame(labelling), pd.DataFrame(writing), pd.concat(runs, ignore_index=True),
                   pd.DataFrame(cost), examples)


def served_names(specs, served) -> list[tuple[str, str]]:
    """(teacher spec, served model name) pairs: `served` gives a name per teacher in order ("" or missing: none)."""
    if len(served) > len(specs):
        raise ValueError(f"{len(served)} teacher_models for {len(specs)} teachers: give at most one per teacher")
    return [(spec, served[i] if i < len(served) else "") for i, spec in enumerate(specs)]


def best_annotators(res: Results):
    """Per dataset and teacher, the annotator with the highest label accuracy (a description, not a choice:
    the students' labels come from `label_method`, fixed before any gold label is seen)."""
    frame = res.labelling
    return frame.loc[frame.groupby(["dataset", "teacher"], sort=False).accuracy.idxmax()].set_index(["dataset", "teacher"])


def statements(res: Results) -> list[str]:
    """The closing paragraph's lines, from the numbers."""
    lines = []
    best = best_annotators(res)
    for name, lang in res.languages.items():
        lab = res.labelling[res.labelling.dataset == name].set_index(["teacher", "method"])
        lines.append(f"{name} (identified as {lang!r}):")
        for who in lab.index.get_level_values(0).unique():
            row = best.loc[(name, who)]
            parts = [f"best annotator {row['method']} ({row['accuracy']:.3f} accuracy, {row['tokens']:.0f} tokens, "
                     f"{row['teacher_s']:.0f} s)"]
            if lang != languages.ENGLISH:
                for recipe in ("score+cal", "generate"):
                    if (who, f"{recipe} [en]") in lab.index and (who, f"{recipe} [{lang}]") in lab.index:
                        en, own = lab.loc[(who, f"{recipe} [en]"), "accuracy"], lab.loc[(who, f"{recipe} [{lang}]"), "accuracy"]
                        parts.append(f"{recipe} instructed in {lang} {own:.3f} vs in English {en:.3f}")
                if (who, f"{TRANSLATE} [en]") in lab.index:
                    parts.append(f"translate→label {lab.loc[(who, f'{TRANSLATE} [en]'), 'accuracy']:.3f}")
            w = res.writing[(res.writing.dataset == name) & (res.writing.teacher == who)].iloc[0]
            parts.append(f"wrote {w['rows']} texts, {w['in_language']:.0%} of them in {lang}, fidelity {w['fidelity']:.2f}")
            lines.append(f"- {who}: " + "; ".join(parts) + ".")
        runs = res.runs[res.runs.dataset == name]
        methods = [m for m in runs.method.unique() if m not in (FEW, FULL)]
        for who in STUDENTS:
            sel = runs[runs.student == who]
            lines.append(f"  {who} students (full data {experiment.mean_of(sel, 'macro_f1', FULL):.3f}):")
            lines += ["  " + line for line in experiment.method_lines(sel, "macro_f1", FEW, methods)]
    gains = res.costs.dropna(subset=["points_per_1k_tokens"])
    if len(gains):
        top = gains.loc[gains.points_per_1k_tokens.idxmax()]
        lines.append(f"Cheapest point gained over gold few-shot: {top['pool']} of {top['teacher']} on {top['dataset']} "
                     f"({top['student']} student): {top['points_per_1k_tokens']:.2f} points per 1k teacher tokens, "
                     f"{top['points_per_teacher_min']:.2f} per teacher-minute.")
    else:
        lines.append("No teacher pool beat the gold few-shot student on any dataset: no cost per point to report.")
    return lines


def finding(res: Results) -> str:
    """One line: each teacher's best label accuracy and share of texts written in the data's language, averaged
    over the non-English datasets (all datasets when there is none)."""
    foreign = [d for d, lang in res.languages.items() if lang != languages.ENGLISH] or list(res.languages)
    best = best_annotators(res).reset_index()
    best, writing = best[best.dataset.isin(foreign)], res.writing[res.writing.dataset.isin(foreign)]
    parts = [f"{who}: label accuracy {best[best.teacher == who].accuracy.mean():.2f}, "
             f"{writing[writing.teacher == who].in_language.mean():.0%} of its texts in the data's language"
             for who in best.teacher.unique()]
    return f"On {', '.join(foreign)}: " + "; ".join(parts)


def emit_headlines(res: Results) -> None:
    """Label accuracy per annotator; language share, fidelity and tokens of the writers; student macro-F1 per
    training set; points per 1k tokens; total teacher tokens."""
    from kdlib.lab import emit

    key = emit.metric_key
    experiment.emit_columns(res.labelling, {"accuracy": "label_accuracy/{}", "tokens": "tokens/labels/{}"},
                            key=("dataset", "teacher", "method"))
    experiment.emit_columns(res.writing, {"in_language": "in_language/{}", "fidelity": "fidelity/{}",
                                          "tokens": "tokens/synthetic/{}"}, key=("dataset", "teacher"))
    for (dataset, who), sel in res.runs.groupby(["dataset", "student"], sort=False):
        experiment.emit_scores(sel, "macro_f1", f"macro_f1/{key(dataset)}/{key(who)}")
    experiment.emit_columns(res.costs, {"points_per_1k_tokens": "points_per_1k_tokens/{}"},
                            key=("dataset", "teacher", "pool", "student"), lower_is_better=())
    total = int(res.labelling.tokens.sum() + res.writing.tokens.sum())
    emit.emit("teacher_tokens_total", total, unit="tokens", higher_is_better=False)


def plot_bars(frame, x: str, y: str, xlabel: str, hue: str = "teacher"):
    """Horizontal bars of `x` per `y` and `hue`, one panel per dataset (two per row), mean ± sd where `y`
    repeats over seeds; panels wide enough for the long method names."""
    import seaborn as sns

    wrap = 2 if frame.dataset.nunique() > 1 else None
    g = sns.catplot(data=frame, x=x, y=y, hue=hue, col="dataset", col_wrap=wrap, kind="bar", errorbar="sd",
                    height=3.4, aspect=2.0, sharey=False)
    g.set_titles("{col_name}").set_axis_labels(xlabel, "")
    return g

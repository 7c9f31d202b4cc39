"""What EvoKD needs to know about a task, for classification and for NER: how to prompt for, parse, train on,
score and show its samples (`ClassificationTask`, `NERTask`), a memo of trained students keyed by their
training set, and the teacher's label agreement with a reference model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np

from kdlib.parsing.classification import parse_classification, split_inline_list
from kdlib.parsing.parse import ParseReport
from kdlib.parsing.parse_ner import parse_ner, to_markup
from kdlib.synthesis.synth import TaskSpec

# ----------------------------------------------------------------------------- the task: classification

class ClassificationTask:
    """Prompts, parsing, training and prediction for text classification. Rows are {"text", "label"}."""

    fields = ("text", "label")

    def __init__(self, spec: TaskSpec, student_config, test_texts: Sequence[str] = ()):
        self.spec, self.config, self.test_texts = spec, student_config, list(test_texts)
        self.labels = spec.label_names
        self.trained = TrainingMemo()

    def correct(self, row: dict, pred) -> bool:
        return pred == row["label"]

    def label_of(self, row: dict):
        """The label data valuation compares (KNN-Shapley's same-label test)."""
        return row["label"]

    def with_labels(self, rows: Sequence[dict], preds: Sequence[str]) -> list[dict]:
        return [{**r, "label": p} for r, p in zip(rows, preds)]

    def agreement(self, rows: Sequence[dict], preds: Sequence[str]) -> float:
        """Share of rows whose label equals the prediction."""
        return float(np.mean([r["label"] == p for r, p in zip(rows, preds)]))

    def describe(self) -> str:
        lines = [f"A small model is learning to classify {self.spec.text_kind} into one of these labels:"]
        lines += [f"- {lab}: the text {d}" for lab, d in self.spec.label_descriptions.items()]
        return "\n".join(lines)

    def show(self, row: dict, pred: str | None = None) -> str:
        text = " ".join(row["text"].split())
        if pred is None or pred == row["label"]:
            return f'"{text}" (label: {row["label"]})'
        return f'"{text}" (correct label: {row["label"]}; the model said: {pred})'

    def output_format(self, n: int, stance: str | None, structured: bool = False) -> str:
        kind = STANCES[stance] if stance else "examples"
        if structured:
            return (f"Write {n} new {kind}, each with its correct label. Answer with one JSON object "
                    '{"samples": [{"text": "...", "label": "..."}, ...]}, and nothing else.')
        return (f"Write {n} new {kind}, each with its correct label. Answer with one JSON object per line, "
                'like {"text": "...", "label": "..."}, and nothing else.')

    def output_grammar(self, n: int, max_new_tokens: int = 256) -> str:
        """The grammar of a structured answer: {"samples": [n {text, label from the label set}]}, each text
        capped in tokens so that all n always fit in `max_new_tokens` (and in characters for servers)."""
        from kdlib.teachers.structured import chars_within, json_schema, sample_schema, string_budget

        longest = min(400, chars_within(max_new_tokens, n, overhead_tokens=12))
        schema = sample_schema(self.labels, items=n, min_chars=10, max_chars=max(longest, 24))
        return json_schema(schema, compact=True, string_max_tokens=string_budget(max_new_tokens - 4, n, 12))

    def parse(self, outputs: Sequence[str]) -> ParseReport:
        return parse_classification([split_inline_list(o) for o in outputs], self.labels, min_chars=10)

    def train(self, rows: Sequence[dict], seed: int):
        from kdlib.students.student import train_classifier

        return self.trained.get(rows, seed, lambda: train_classifier(list(rows), None, self.config.replace(seed=seed),
                                                                     label_names=self.labels))

    def predict(self, student, rows: Sequence[dict]) -> list[str]:
        return student.predict_labels([r["text"] for r in rows]) if rows else []

    def embed(self, student, rows: Sequence[dict]):
        return student.embed([r["text"] for r in rows], normalize=True)

    def evaluate(self, student, dataset) -> dict:
        return self.trained.evaluate(student, dataset)

    def relabel(self, teacher, rows: Sequence[dict], shots: Sequence[dict]) -> list[bool]:
        """Whether a separate few-shot labelling query agrees with each row's label."""
        from kdlib.synthesis.labeling import annotate_generate

        demos = [(r["text"], r["label"]) for r in shots]
        labels = annotate_generate(teacher, [r["text"] for r in rows], self.labels, demos,
                                   task=f"the {self.spec.text_kind}", method="relabel").labels
        return [lab == r["label"] for lab, r in zip(labels, rows)]

STANCES = {
    "easy": "easy examples: typical texts whose label is obvious",
    "hard": "hard examples: texts the model above would likely get wrong, close to the boundary between labels",
}


# What CoNLL-style entity types mean, for prompts; other types are described by their name.
ENTITY_DESCRIPTIONS = {"PER": "a person's name", "LOC": "a location (country, city, region, landmark)",
                       "ORG": "an organisation (company, team, institution, party)",
                       "MISC": "another named entity (nationality, event, language, title of a work)"}


def entity_types(tag_names: Sequence[str]) -> dict[str, str]:
    """Entity type -> description, from BIO tag names (B-PER, I-PER, O, ...), in order of appearance."""
    types = dict.fromkeys(t[2:] for t in tag_names if t[:2] in ("B-", "I-"))
    return {t: ENTITY_DESCRIPTIONS.get(t, f"an entity of type {t}") for t in types}


class NERTask:
    """The same loop for named-entity recognition. Rows are {"tokens", "tags"} (BIO); the teacher
    sees and writes sentences with inline ``[entity text](TYPE)`` markup, read by `parse_ner`."""

    fields = ("tokens", "tags")

    def __init__(self, entity_types: dict[str, str], student_config, text_kind: str = "a sentence from a news article",
                 test_sentences: Sequence[Sequence[str]] = ()):
        if not entity_types:
            raise ValueError("NERTask needs at least one entity type")
        self.types, self.config, self.text_kind = dict(entity_types), student_config, text_kind
        self.tag_names = ["O"] + [f"{p}-{t}" for t in self.types for p in ("B", "I")]
        self.test_texts = [" ".join(s) for s in test_sentences]
        self.trained = TrainingMemo()

    def describe(self) -> str:
        lines = [f"A small model is learning to find named entities in {self.text_kind}. The entity types are:"]
        lines += [f"- {t}: {d}" for t, d in self.types.items()]
        return "\n".join(lines)

    def show(self, row: dict, pred=None) -> str:
        text = to_markup(row["tokens"], row["tags"])
        if pred is None or pred == row["tags"]:
            return text
        return f"{text}   (the model marked: {to_markup(row['tokens'], pred)})"

    def output_format(self, n: int, stance: str | None, structured: bool = False) -> str:
        kind = STANCES[stance] if stance else "examples"
        return (f"Write {n} new sentences as {kind}. Mark every entity as [entity text](TYPE), for example "
                "[Angela Merkel](PER) visited [Paris](LOC). One sentence per line, nothing else.")

    def output_grammar(self, n: int, max_new_tokens: int = 256) -> str:
        """The grammar of a structured answer: n lines of words and [entity](TYPE) marks of known types,
        each line capped in tokens so that all n always fit in `max_new_tokens`."""
        from kdlib.teachers.structured import markup_grammar

        return markup_grammar(list(self.types), lines=n, max_words=40, require_entity=True,
                              line_max_tokens=max(8, max_new_tokens // n - 1))

    def parse(self, outputs: Sequence[str]) -> ParseReport:
        return parse_ner([split_inline_list(o) for o in outputs], list(self.types), min_tokens=3)

    def correct(self, row: dict, pred) -> bool:
        return list(pred) == list(row["tags"])

    def label_of(self, row: dict):
        raise ValueError("data valuation (KNN-Shapley) needs one label per example: not available for NER")

    def with_labels(self, rows: Sequence[dict], preds: Sequence[Sequence[str]]) -> list[dict]:
        return [{**r, "tags": list(p)} for r, p in zip(rows, preds)]

    def agreement(self, rows: Sequence[dict], preds: Sequence[Sequence[str]]) -> float:
        """Entity F1 (seqeval) of the rows' tags against the predictions taken as the truth."""
        from kdlib.students.metrics import ner_metrics

        return float(ner_metrics([list(p) for p in preds], [list(r["tags"]) for r in rows])["entity_f1"])

    def train(self, rows: Sequence[dict], seed: int):
        from kdlib.students.student import train_tagger

        return self.trained.get(rows, seed, lambda: train_tagger(list(rows), None, self.config.replace(seed=seed),
                                                                 label_names=self.tag_names))

    def predict(self, student, rows: Sequence[dict]) -> list[list[str]]:
        return student.predict([r["tokens"] for r in rows]) if rows else []

    def embed(self, student, rows: Sequence[dict]):
        raise ValueError("data valuation (KNN-Shapley) is implemented for classification only")

    def evaluate(self, student, dataset) -> dict:
        return self.trained.evaluate(student, dataset)

    def relabel(self, teacher, rows: Sequence[dict], shots: Sequence[dict]) -> list[bool]:
        raise ValueError("relabel is implemented for classification only")


class TrainingMemo:
    """The students a task trained most recently used, by (training rows, seed), and their scores.
    Every method compared on one seed set starts from the same round-0 student, and training is
    deterministic given its rows and seed: the notebook's runs share that student, and its test
    score, instead of training and evaluating it once per method. A round that adds nothing also
    reuses the student it has. Least recently used students go first (a MiniLM student is ~90 MB)."""

    def __init__(self, size: int = 12):
        self.size, self.students = size, {}
        self.scores = {}  # (id(student), id(dataset)) -> (dataset, scores); only for remembered students

    def get(self, rows: Sequence[dict], seed: int, train):
        key = hashlib.sha256(json.dumps([rows, seed], sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        student = self.students.pop(key) if key in self.students else train()
        self.students[key] = student  # (re)inserted last: the most recently used
        while len(self.students) > self.size:
            gone = id(self.students.pop(next(iter(self.students))))
            # an id can be reused once its object is freed: forget the scores of a forgotten student
            self.scores = {k: v for k, v in self.scores.items() if k[0] != gone}
        return student

    def evaluate(self, student, dataset) -> dict:
        """``student.evaluate(dataset)``, computed once while the student is remembered."""
        if not any(s is student for s in self.students.values()):
            return student.evaluate(dataset)
        key = (id(student), id(dataset))
        if key not in self.scores:  # the dataset is kept with its scores, so its id stays its own
            self.scores[key] = (dataset, student.evaluate(dataset))
        return self.scores[key][1]


def label_agreement(task, reference, rows: Sequence[dict]) -> float:
    """How often the labels of `rows` (generated ones) agree with a reference classifier trained on
    the full gold data: the share of equal labels for classification, the entity F1 against the
    reference's tags for NER. A diagnostic of the teacher's label quality (NaN for no rows)."""
    return task.agreement(rows, task.predict(reference, rows)) if rows else float("nan")

"""A language-agnostic baseline student: character n-gram TF-IDF and logistic regression (scikit-learn).

The lab's MiniLM student was pretrained on English: on French data a weak student could be the student's fault
rather than its teacher's. Character n-grams inside word boundaries (2-5 characters, sublinear tf) know no
language, train in a second on a CPU and are the classic strong baseline for short-text classification, so a
teacher's labels or texts that help this student too are helping for a reason other than the encoder's
pretraining. The inverse regularisation strength C is picked on the validation split (never test) from a short
grid; the fit itself is deterministic (lbfgs), so its spread over seeds comes from the training data alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

C_GRID = (0.3, 1.0, 3.0, 10.0)


@dataclass
class NgramStudent:
    """A fitted TF-IDF + logistic-regression pipeline and the label names its class ids refer to."""
    pipeline: object
    label_names: list[str]
    C: float

    def predict(self, texts: Sequence[str]) -> list[int]:
        return [int(y) for y in self.pipeline.predict(list(texts))]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(n, len(label_names)) probabilities; a label absent from training gets 0."""
        proba = self.pipeline.predict_proba(list(texts))
        out = np.zeros((len(texts), len(self.label_names)))
        out[:, self.pipeline.classes_] = proba
        return out

    def evaluate(self, ds) -> dict:
        """`kdlib.students.metrics.classification_metrics` on a split with class ids (like `Student.evaluate`)."""
        from kdlib.students.metrics import classification_metrics

        return classification_metrics(list(ds["label"]), self.predict(ds["text"]), self.label_names)


def _pipeline(C: float, classes: int):
    from sklearn.dummy import DummyClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = LogisticRegression(C=C, max_iter=2000) if classes > 1 else DummyClassifier(strategy="most_frequent")
    return make_pipeline(TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=1), model)


def train_ngram(rows: Sequence[dict], label_names: Sequence[str], validation=None, grid: Sequence[float] = C_GRID
                ) -> NgramStudent:
    """Fit on {"text", "label"} rows (label names); with a validation split (class ids), the C of `grid` with
    the best validation macro-F1, else C = 1. Rows of a single class give the constant predictor of that class
    (what any student learns from them; `experiment.pool_problem` names the case)."""
    from sklearn.metrics import f1_score

    names = list(label_names)
    unknown = {r["label"] for r in rows} - set(names)
    if unknown:
        raise ValueError(f"rows carry labels {sorted(unknown)} outside {names}")
    texts, y = [r["text"] for r in rows], np.array([names.index(r["label"]) for r in rows])
    if not rows:
        raise ValueError("an n-gram student needs at least one row")
    classes = len(set(y.tolist()))
    best = None
    for C in (grid if validation is not None and len(grid) > 1 and classes > 1 else (1.0,)):
        pipe = _pipeline(C, classes).fit(texts, y)
        score = (f1_score(list(validation["label"]), pipe.predict(list(validation["text"])), average="macro",
                          labels=list(range(len(names))), zero_division=0) if validation is not None else 0.0)
        if best is None or score > best[0]:
            best = (score, C, pipe)
    return NgramStudent(best[2], names, best[1])

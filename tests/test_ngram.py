"""The language-agnostic n-gram student: it learns French as readily as English, and degrades gracefully."""

import pytest
from datasets import Dataset

from kdlib.students.ngram import train_ngram

FR = [("un film magnifique, bouleversant", "positive"), ("une merveille, des acteurs excellents", "positive"),
      ("j'ai adoré, magnifique du début à la fin", "positive"), ("excellent scénario, une merveille", "positive"),
      ("un navet ennuyeux et interminable", "negative"), ("ennuyeux, mal joué, un vrai navet", "negative"),
      ("nul et interminable, je me suis ennuyé", "negative"), ("un scénario nul, des acteurs mauvais", "negative")]
NAMES = ["negative", "positive"]


def _split(pairs):
    return Dataset.from_dict({"text": [t for t, _ in pairs], "label": [NAMES.index(y) for _, y in pairs]})


def test_char_ngrams_learn_french_words_and_pick_c_on_validation():
    rows = [{"text": t, "label": y} for t, y in FR]
    validation = _split([("magnifique et excellent", "positive"), ("ennuyeux et nul", "negative")])
    st = train_ngram(rows, NAMES, validation)
    assert st.C in (0.3, 1.0, 3.0, 10.0)
    scores = st.evaluate(_split([("une merveille magnifique", "positive"), ("un navet interminable", "negative")]))
    assert scores["macro_f1"] == 1.0
    assert st.predict_proba(["magnifique"]).shape == (1, 2)


def test_a_single_class_gives_the_constant_predictor_and_unknown_labels_are_refused():
    st = train_ngram([{"text": "bof", "label": "negative"}] * 3, NAMES)
    assert st.predict(["magnifique", "nul"]) == [0, 0]
    assert st.predict_proba(["x"]).tolist() == [[1.0, 0.0]]
    with pytest.raises(ValueError, match="outside"):
        train_ngram([{"text": "x", "label": "neutral"}], NAMES)


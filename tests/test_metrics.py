"""Metrics against values worked out by hand in the comments."""

import math

import numpy as np
import pandas as pd
import pytest

from kdlib.students import metrics

NAMES = ["a", "b", "c"]
Y_TRUE = [0, 0, 1, 1, 2]
Y_PRED = [0, 1, 1, 1, 0]


def test_classification_metrics_by_hand():
    out = metrics.classification_metrics(Y_TRUE, Y_PRED, NAMES)
    # a: TP 1, FP 1, FN 1 -> F1 0.5; b: TP 2, FP 1, FN 0 -> P 2/3, R 1, F1 0.8; c: TP 0 -> 0
    assert out["accuracy"] == pytest.approx(3 / 5)
    assert out["f1/a"] == pytest.approx(0.5)
    assert out["f1/b"] == pytest.approx(0.8)
    assert out["f1/c"] == 0.0
    assert out["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_macro_f1_counts_classes_absent_from_both_sides():
    out = metrics.classification_metrics(Y_TRUE, Y_PRED, [*NAMES, "d"])
    assert out["f1/d"] == 0.0
    assert out["macro_f1"] == pytest.approx((0.5 + 0.8) / 4)


def test_confusion_frame():
    frame = metrics.confusion(Y_TRUE, Y_PRED, NAMES)
    assert frame.index.name == "true" and frame.columns.name == "predicted"
    assert frame.loc["a"].tolist() == [1, 1, 0]
    assert frame.loc["b"].tolist() == [0, 2, 0]
    assert frame.loc["c"].tolist() == [1, 0, 0]
    with pytest.raises(ValueError, match="5 true values but 4 predictions"):
        metrics.confusion(Y_TRUE, Y_PRED[:4], NAMES)


def test_ner_metrics_by_hand():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-LOC"]]
    # true entities PER, LOC, ORG; predicted PER, ORG (both right) and a spurious LOC -> P = R = 2/3
    out = metrics.ner_metrics(true, pred)
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["entity_f1"] == pytest.approx(2 / 3)
    assert out["f1/PER"] == 1.0 and out["f1/ORG"] == 1.0 and out["f1/LOC"] == 0.0
    assert not any(k.endswith("avg") for k in out)


def test_ner_metrics_partial_span_is_wrong_and_lengths_checked():
    out = metrics.ner_metrics([["B-PER", "I-PER"]], [["B-PER", "O"]])
    assert out["entity_f1"] == 0.0
    with pytest.raises(ValueError, match="sentence 0: 2 true tags but 1 predicted"):
        metrics.ner_metrics([["B-PER", "I-PER"]], [["B-PER"]])


def test_mean_std_is_sample_std():
    mean, std = metrics.mean_std([1, 2, 3, 4])
    assert mean == 2.5
    assert std == pytest.approx(math.sqrt((1.5**2 + 0.5**2 + 0.5**2 + 1.5**2) / 3))
    assert math.isnan(metrics.mean_std([0.7])[1])
    with pytest.raises(ValueError):
        metrics.mean_std([])


def test_summarise_text_and_numeric():
    frame = pd.DataFrame({"method": ["A", "A", "B"], "seed": [0, 1, 0], "acc": [0.8, 0.9, 0.5]})
    text = metrics.summarise(frame, "method", ["acc"])
    assert text.loc["A", "acc"] == "0.850 ± 0.071"  # std of (0.8, 0.9) with ddof=1 = 0.0707
    assert text.loc["B", "acc"] == "0.500"          # one seed: no spread to report
    assert text["n"].tolist() == [2, 1]
    numeric = metrics.summarise(frame, "method", ["acc"], as_text=False)
    assert numeric.loc["A", "acc_mean"] == pytest.approx(0.85)
    assert numeric.loc["A", "acc_std"] == pytest.approx(math.sqrt(0.005))
    with pytest.raises(KeyError, match="f1"):
        metrics.summarise(frame, "method", ["f1"])


def test_distinct_n_by_hand():
    texts = ["a b a b", "A b c"]
    # unigrams: a b a b a b c -> 3 distinct of 7; bigrams (not across texts): ab ba ab | ab bc -> 3 of 5
    assert metrics.distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert metrics.distinct_n(texts, 2) == pytest.approx(3 / 5)
    assert metrics.distinct_n(["one"], 2) == 0.0


def test_self_bleu_orders_diversity():
    same = ["the movie was great fun to watch"] * 4
    varied = ["the movie was great fun to watch", "a dull plot and wooden acting",
              "stock prices fell sharply on monday", "rain is expected across the north"]
    assert metrics.self_bleu(same) == pytest.approx(1.0)
    assert metrics.self_bleu(varied) < 0.2
    assert 0 < metrics.self_bleu(varied * 3, max_items=5) <= 1.0


def test_embedding_dispersion_by_hand_and_against_sklearn():
    from sklearn.metrics.pairwise import cosine_distances

    assert metrics.embedding_dispersion([[1, 0], [0, 2]]) == pytest.approx(1.0)   # orthogonal
    assert metrics.embedding_dispersion([[1, 0], [-3, 0]]) == pytest.approx(2.0)  # opposite
    assert metrics.embedding_dispersion([[1, 1], [2, 2], [3, 3]]) == pytest.approx(0.0, abs=1e-12)
    x = np.random.default_rng(0).normal(size=(50, 8))
    x[3] = 0.0  # a zero row counts as similarity 0, as in scikit-learn
    d = cosine_distances(x)
    expected = d[~np.eye(len(x), dtype=bool)].mean()
    assert metrics.embedding_dispersion(x) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError):
        metrics.embedding_dispersion([[1.0, 2.0]])


def test_paired_verdict_needs_every_seed():
    from kdlib.students.metrics import paired_verdict

    assert paired_verdict([0.05, 0.02, 0.03]) == "beats"
    assert paired_verdict([0.08, 0.05, -0.01]) == "is within noise of", "one seed contradicts the mean"
    assert paired_verdict([-0.05, -0.02]) == "is below"
    assert paired_verdict([0.005, 0.004]) == "is within noise of"
    assert paired_verdict([0.5]).startswith("cannot be compared"), "one seed is no evidence"
    with pytest.raises(ValueError):
        paired_verdict([])

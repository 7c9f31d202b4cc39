"""Evaluation of students with real (tiny) MiniLM students: label errors, training dynamics, attributions."""

import numpy as np
import pytest

from kdlib.evaluation import attribution, cartography, label_errors
from kdlib.students.student import StudentConfig, train_classifier

POS = ["a wonderful, moving film", "great acting and a clever plot", "I loved every minute of it",
       "a delightful and warm story", "brilliant, funny and smart", "an excellent cast at its best"]
NEG = ["a dull and lifeless film", "terrible acting and a silly plot", "I hated every minute of it",
       "a boring, tedious story", "awful, flat and stupid", "a poor cast at its worst"]
ROWS = [{"text": t, "label": "pos"} for t in POS] + [{"text": t, "label": "neg"} for t in NEG]
TINY = StudentConfig(epochs=3, min_steps=0, max_steps=None, batch_size=4, patience=None, device="cpu", seed=0)


def test_flags_are_scored_against_gold_and_random_drop_is_fair():
    q = label_errors.flag_quality(np.array([True, True, False, False]), ["a", "b", "a", "b"], ["b", "b", "b", "b"])
    assert q == {"flagged": 2, "wrong": 2, "rows": 4, "precision": 0.5, "recall": 0.5, "f1": 0.5, "base_rate": 0.5}
    assert label_errors.random_drop(10, 3, seed=1).sum() == 3
    with pytest.raises(ValueError, match="cannot drop 11 of 10"):
        label_errors.random_drop(10, 11, seed=1)


def test_cleanlab_flags_the_rows_whose_label_the_model_confidently_contradicts():
    rng = np.random.default_rng(0)
    truth = np.array([0, 1] * 50)
    probs = np.where(truth[:, None] == np.arange(2), 0.9, 0.1) + rng.uniform(0, 0.05, (100, 2))
    probs /= probs.sum(1, keepdims=True)
    given = truth.copy()
    given[:10] = 1 - given[:10]  # ten wrong labels the model disagrees with
    flags, why = label_errors.find_errors([str(g) for g in given], probs, ["0", "1"])
    assert why == "" and flags[:10].all() and not flags[10:].any()
    none, why = label_errors.find_errors(["0"] * 4, probs[:4], ["0", "1"])
    assert not none.any() and "same class" in why


@pytest.mark.slow
def test_out_of_fold_probabilities_come_from_students_that_never_saw_the_row():
    probs = label_errors.out_of_fold_probs(ROWS, ["neg", "pos"], TINY.replace(epochs=1), folds=2)
    assert probs.shape == (12, 2) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="cannot be split into 20 folds"):
        label_errors.out_of_fold_probs(ROWS, ["neg", "pos"], TINY, folds=20)


@pytest.mark.slow
def test_tracking_dynamics_records_every_epoch_and_changes_no_weight():
    plain = train_classifier(ROWS, None, TINY, label_names=["neg", "pos"])
    tracked = train_classifier(ROWS, None, TINY, label_names=["neg", "pos"], track_dynamics=True)
    assert np.array_equal(plain.predict_proba(POS), tracked.predict_proba(POS))  # observing is free
    dyn = tracked.history.dynamics
    assert [d["epoch"] for d in dyn] == [1, 2, 3] and len(dyn[0]["p_label"]) == len(ROWS)
    m = cartography.data_map(dyn)
    assert ((m.confidence >= 0) & (m.confidence <= 1)).all() and (m.variability >= 0).all()
    shares = cartography.region_shares(m.assign(source=["real"] * 6 + ["synthetic"] * 6))
    assert list(shares.columns) == list(cartography.REGIONS) and np.allclose(shares.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="at least 2 epochs"):
        cartography.data_map(dyn[:1])

    attrs = attribution.word_attributions(tracked, ["a wonderful, moving film"], n_steps=16)
    a = attrs[0]
    assert a["words"] == ["a", "wonderful", ",", "moving", "film"] and len(a["scores"]) == 5
    assert a["delta"] < 0.05  # completeness: the scores add up to the logit difference from the baseline
    assert "wonderful" in attribution.highlight(attrs, "tracked") and a["label"] in ("neg", "pos")


def test_label_cues_are_the_words_a_synthetic_pool_overuses_per_label():
    synthetic = [{"text": "a great great film", "label": "pos"}, {"text": "great fun, truly great", "label": "pos"},
                 {"text": "terrible and terrible", "label": "neg"}, {"text": "a terrible mess", "label": "neg"}]
    cues = attribution.label_cues(synthetic, ["a film about fun", "a mess of a plot"], ["neg", "pos"], k=1)
    assert cues == {"neg": ["terrible"], "pos": ["great"]}
    attrs = [{"words": ["great", "film"], "scores": [0.3, -0.1]}]
    assert attribution.cue_share(attrs, {"great"}) == pytest.approx(0.75)


def test_label_error_flags_are_redone_per_seed_and_random_removal_matches_each_seeds_count():
    from kdlib.studies import evaluation_study as ev

    gold = [r["label"] for r in ROWS]
    given = [("neg" if g == "pos" else "pos") if i in (0, 6) else g for i, g in enumerate(gold)]  # two wrong
    teacher_rows = [{"text": r["text"], "label": g} for r, g in zip(ROWS, given)]
    pools = ev.Pools({ev.TEACHER: teacher_rows}, given, gold, {ev.TEACHER: 100}, {ev.TEACHER: 1.0})
    pools = ev.flag_label_errors(pools, ["neg", "pos"], TINY, seeds=[0, 1], folds=2, progress=False)
    assert sorted(pools.flags) == [0, 1] and all(len(f) == len(ROWS) for f in pools.flags.values())
    table = ev.flag_table(pools)
    assert list(table.index) == [0, 1, "mean", "std"] and table.loc["mean", "base_rate"] == pytest.approx(2 / 12)
    for s in (0, 1):
        kept = ev._training_set(pools, ev.RANDOM, s)
        assert len(kept) == len(ROWS) - int(pools.flags[s].sum()) == len(ev._training_set(pools, ev.CLEANED, s))
    assert pools.tokens_of(ev.CLEANED) == pools.tokens_of(ev.RANDOM) == 100 and pools.tokens_of(ev.SYNTH) == 0
    too_few = ev.flag_label_errors(ev.Pools({ev.TEACHER: teacher_rows[:3]}, given[:3], gold[:3], {}, {}),
                                   ["neg", "pos"], TINY, seeds=[0, 1], folds=2, progress=False)
    assert "too few" in too_few.flag_problem and not any(f.any() for f in too_few.flags.values())


def test_the_cue_probe_prefers_sentences_with_cues_and_reports_the_cue_words_share():
    from kdlib.studies import evaluation_study as ev

    texts = ["a plain story", "a great film", "nothing here", "simply terrible", "more plain words"]
    probe, share = ev.cue_probe(texts, {"pos": ["great"], "neg": ["terrible"]}, n=2, seed=3)
    assert sorted(probe) == ["a great film", "simply terrible"] and share == pytest.approx(2 / 4)  # one-letter words are not words
    topped, _ = ev.cue_probe(texts, {"pos": ["great"]}, n=3, seed=3)
    assert "a great film" in topped and len(topped) == 3  # one cue-bearing sentence, topped up with cue-free ones

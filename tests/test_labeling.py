"""kdlib.synthesis.labeling: prompts, voting, calibration maths, routing, quality; a fake teacher stands in for the LLM."""

import math

import numpy as np
import pytest

from kdlib.students import metrics
from kdlib.synthesis import labeling
from kdlib.teachers.ledger import Ledger

NAMES = ["negative", "positive"]


class FakeScore:
    def __init__(self, lp):
        self.sum_logprob = lp


class FakeTeacher:
    """Answers from a table: generate returns scripted texts, score gives fixed log-likelihoods."""

    def __init__(self, answers=None, logliks=None):
        self.answers, self.logliks = answers or {}, logliks or {}
        self.cache, self.ledger, self.calls = None, Ledger(), []

    def with_cache(self, cache):
        return self

    def _text(self, prompt):
        return prompt[-1]["content"].removeprefix("Text: ")

    def texts(self, prompts, n=1, seed=0, **kw):
        self.calls.append(kw)
        self.ledger.record(kind="generate", backend="local", model="m", requests=len(prompts) * n, hits=0,
                           misses=len(prompts) * n, spent=(10 * len(prompts) * n, n * len(prompts)),
                           cached=(0, 0), wall_s=0.0)
        return [self.answers[self._text(p)][j] for p in prompts for j in range(n)]

    def score_many(self, prompts, candidates):
        self.ledger.record(kind="score", backend="local", model="m", requests=len(prompts) * 2, hits=0,
                           misses=len(prompts) * 2, spent=(7 * len(prompts) * 2, 0), cached=(0, 0), wall_s=0.0)
        return [[FakeScore(lp) for lp in self.logliks[self._text(p)]] for p in prompts]


def test_prompts_zero_and_few_shot():
    zero = labeling.build_prompt("great film", NAMES)
    assert [m["role"] for m in zero] == ["system", "user"]
    assert "negative, positive" in zero[0]["content"] and zero[1]["content"] == "Text: great film"
    few = labeling.build_prompt("great film", NAMES, [("bad", "negative"), ("good", "positive")], task="the review")
    assert [m["role"] for m in few] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert few[2]["content"] == "negative" and few[-1]["content"] == "Text: great film"
    assert "the review" in few[0]["content"]
    assert few[:-1] == labeling.build_prompt("other text", NAMES, [("bad", "negative"), ("good", "positive")],
                                             task="the review")[:-1], "prompts share one prefix"
    with pytest.raises(ValueError, match="not one of"):
        labeling.build_prompt("x", NAMES, [("bad", "awful")])


def test_draw_shots_k_per_class_from_train():
    from kdlib.registry.data import from_records

    rows = [{"text": f"t{i}", "label": NAMES[i % 2]} for i in range(20)]
    dd = from_records({"train": rows, "test": rows[:4]})
    shots = labeling.draw_shots(dd["train"], 3, seed=1)
    assert len(shots) == 6 and sorted(lab for _, lab in shots) == ["negative"] * 3 + ["positive"] * 3
    assert shots == labeling.draw_shots(dd["train"], 3, seed=1)
    assert labeling.draw_shots(dd["train"], 0) == []


def test_majority_vote_and_entropy():
    label, shares = labeling.majority_vote(["positive", None, "negative", "positive"], NAMES)
    assert label == "positive" and shares.tolist() == pytest.approx([1 / 3, 2 / 3])
    label, _ = labeling.majority_vote(["negative", "positive"], NAMES)
    assert label == "negative", "ties go to the label voted first"
    label, shares = labeling.majority_vote([None, None], NAMES)
    assert label is None and shares.tolist() == [0.5, 0.5]
    assert metrics.entropy([[1.0, 0.0], [0.5, 0.5]]).tolist() == pytest.approx([0.0, math.log(2)])


def test_calibrate_matches_hand_computed_case():
    # p = (0.8, 0.2) under a prompt whose content-free probs are (0.9, 0.1):
    # q ∝ (0.8/0.9, 0.2/0.1) = (0.888.., 2.0) -> (0.3077, 0.6923): the label flips.
    q = labeling.calibrate([[0.8, 0.2]], [0.9, 0.1])
    assert q[0].tolist() == pytest.approx([(8 / 9) / (8 / 9 + 2), 2 / (8 / 9 + 2)])
    assert q[0].argmax() == 1
    # an unbiased prompt (uniform content-free probs) changes nothing
    p = np.array([[0.3, 0.7], [0.6, 0.4]])
    assert labeling.calibrate(p, [0.5, 0.5]) == pytest.approx(p)
    with pytest.raises(ValueError):
        labeling.calibrate(p, [0.2, 0.3, 0.5])
    with pytest.raises(ValueError):
        labeling.calibrate(p, [1.0, 0.0])


def test_route_takes_most_uncertain_and_random_route_same_count():
    u = [0.1, 0.9, 0.5, 0.9, 0.0]
    assert labeling.route(u, 0.4).tolist() == [False, True, False, True, False]
    assert labeling.route(u, 0.0).sum() == 0 and labeling.route(u, 1.0).all()
    assert labeling.random_route(5, 0.4, seed=3).sum() == 2
    with pytest.raises(ValueError):
        labeling.route(u, 1.5)
    assert labeling.coannotate(["a", None, "c"], ["A", "B", "C"], [False, True, False]) == ["a", "B", "c"]


def test_annotate_generate_votes_and_counts_tokens():
    teacher = FakeTeacher(answers={"x": ["positive", "Positive.", "negative"], "y": ["hmm", "??", "no idea"]})
    ann = labeling.annotate_generate(teacher, ["x", "y"], NAMES, n=3, seed=0, temperature=0.8)
    assert ann.labels == ["positive", None]
    assert ann.probs[0].tolist() == pytest.approx([1 / 3, 2 / 3])
    assert ann.uncertainty[1] == pytest.approx(math.log(2)), "nothing parsed counts as maximally unsure"
    assert ann.tokens == 2 * 3 * 11 and teacher.calls[-1]["temperature"] == 0.8
    labeling.annotate_generate(teacher, ["x"], NAMES, n=1)
    assert teacher.calls[-1]["temperature"] == 0.0, "a single vote decodes greedily"


def test_annotate_score_and_calibration():
    lp = {"x": [-1.0, -2.0], "y": [-1.0, -0.5]}
    lp.update({cf: [-0.1, -2.5] for cf in labeling.CONTENT_FREE})  # the prompt leans negative
    raw, cal = labeling.annotate_score(FakeTeacher(logliks=lp), ["x", "y"], NAMES)
    assert raw.labels == ["negative", "positive"]
    assert raw.probs[0].tolist() == pytest.approx([1 / (1 + math.e ** -1), 1 - 1 / (1 + math.e ** -1)])
    assert cal.labels == ["positive", "positive"]
    assert cal.tokens > raw.tokens, "calibration pays for the content-free prompts"


def test_label_quality():
    q = labeling.label_quality(["a", None, "b", "a"], ["a", "b", "b", "b"], ["a", "a", "b", "a"], ["a", "b"])
    assert q["accuracy"] == pytest.approx(2 / 4) and q["accuracy_kept"] == pytest.approx(2 / 3)
    assert q["fidelity"] == pytest.approx(1.0) and q["rejection_rate"] == pytest.approx(0.25)
    assert 0 < q["balance"] < 1 and q["share/a"] == pytest.approx(2 / 3)
    assert labeling.training_rows(["t1", "t2"], ["a", None]) == [{"text": "t1", "label": "a"}]


def test_draw_pool_keeps_demonstrations_out_of_the_pool():
    from kdlib.registry.data import from_records

    rows = [{"text": f"t{i}", "label": NAMES[i % 2]} for i in range(40)]
    pool = labeling.draw_pool(from_records({"train": rows, "test": rows[:4]})["train"], 2, 10, seed=3)
    assert len(pool.demos) == 4 and len(pool.texts) == 10 == len(pool.gold)
    assert not {t for t, _ in pool.demos} & set(pool.texts)
    assert all(NAMES[int(t[1:]) % 2] == g for t, g in zip(pool.texts, pool.gold))
    assert pool.demo_rows[0] == {"text": pool.demos[0][0], "label": pool.demos[0][1]}


def test_routing_curve_against_random_routing():
    gold = ["a", "b"] * 10
    cheap = ["a"] * 20                       # right on every "a", wrong on every "b"
    unc = [0.0 if g == "a" else 1.0 for g in gold]  # and knows where it is wrong
    curve = labeling.routing_curve(cheap, unc, gold, gold, gold, ["a", "b"], [0.0, 0.5, 1.0], lambda n: 10 * n)
    by = curve.set_index(["fraction", "routing"]).label_accuracy
    assert by[0.0, "by uncertainty"] == by[0.0, "random"] == 0.5
    assert by[0.5, "by uncertainty"] == 1.0 > by[0.5, "random"]
    assert by[1.0, "random"] == 1.0 and curve.set_index(["fraction", "routing"]).cost[0.5, "random"] == 100

"""kdlib.synthesis.instruction_pool: candidate filtering and the selection model's maths."""

import numpy as np
import pytest

from kdlib.synthesis import instruction_pool as ip


def test_candidates_keep_instructions_and_count_the_rest():
    rep = ip._candidates(["1. Rewrite the text as a short poem. 2. Bananas are yellow fruit here.\n3. ok"], 10, 200)
    assert rep.kept == ["Rewrite the text as a short poem."]
    assert rep.counts["not_an_instruction"] == 1 and rep.counts["too_short"] == 1


def test_grow_prompt_shows_the_drawn_instructions():
    msg = ip.grow_prompt(["Do A to the text.", "Do B to the text."], 4)[0]["content"]
    assert "1. Do A to the text.\n2. Do B to the text." in msg and "Write 4 new instructions" in msg


def test_predict_utility_closed_form():
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    y = np.array([1.0, -1.0])
    # a query equal to probe 0: weights softmax([1, 0] / T)
    t = 0.5
    w0 = np.exp(2.0) / (np.exp(2.0) + 1.0)
    assert ip.predict_utility(x, y, x[:1], t)[0] == pytest.approx(w0 - (1 - w0))
    # an enormous temperature predicts the mean; a tiny one the nearest probe
    assert ip.predict_utility(x, y, np.array([[0.6, 0.8]]), 1e6)[0] == pytest.approx(0.0, abs=1e-5)
    assert ip.predict_utility(x, y, np.array([[0.6, 0.8]]), 1e-3)[0] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="shapes"):
        ip.predict_utility(x, y[:1], x)


def test_loo_leaves_each_point_out():
    x = np.eye(3)
    y = np.array([0.0, 1.0, 2.0])
    loo = ip.loo_predictions(x, y, temperature=1e6)
    assert loo == pytest.approx([1.5, 1.0, 0.5])  # the mean of the two others

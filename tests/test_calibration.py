"""Calibration: ECE, reliability bins and temperature scaling on numbers whose answer is known."""

import numpy as np
import pytest

from kdlib.evaluation import calibration


def test_ece_of_a_known_case_and_of_a_perfectly_calibrated_one():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    assert calibration.expected_calibration_error(probs, [0, 1, 1]) == pytest.approx(0.3)  # (.1 + .6 + .2) / 3
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 20000)
    right = rng.uniform(size=conf.size) < conf  # right exactly as often as it is confident
    labels = np.where(right, 0, 1)
    probs = np.stack([conf, 1 - conf], 1)
    assert calibration.expected_calibration_error(probs, labels) < 0.02
    rel = calibration.reliability(probs, labels, bins=5)
    assert np.allclose(rel.accuracy, rel.confidence, atol=0.03) and rel.share.sum() == pytest.approx(1.0)


def test_temperature_scaling_recovers_the_temperature_that_made_logits_overconfident():
    rng = np.random.default_rng(1)
    true_logits = rng.normal(0, 1.5, (4000, 3))
    cumulative = calibration.softmax(true_logits).cumsum(1)
    labels = (rng.uniform(size=(len(cumulative), 1)) < cumulative).argmax(1)  # one draw per row from its softmax
    over = true_logits * 3.0  # an overconfident student: the same ranking, logits three times too large
    t = calibration.fit_temperature(over, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    rep = calibration.calibration_report(over[:2000], labels[:2000], over[2000:], labels[2000:])
    assert rep["ece_scaled"] < rep["ece_raw"] and rep["nll_scaled"] < rep["nll_raw"]
    assert (calibration.softmax(over, t).argmax(1) == over.argmax(1)).all()  # accuracy untouched


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="NaN or inf"):
        calibration.expected_calibration_error([[np.nan, 1.0]], [0])
    with pytest.raises(ValueError, match=r"class ids in \[0, 2\)"):
        calibration.expected_calibration_error([[0.5, 0.5]], [2])
    assert np.isnan(calibration.expected_calibration_error(np.zeros((0, 2)), []))
    assert calibration.fit_temperature(np.zeros((1, 2)), [0]) == 1.0

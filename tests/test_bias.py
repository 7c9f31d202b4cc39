"""Bias probes: counterfactual flips of a classifier that can be made to care about names, and the MMD test."""

import numpy as np
import pytest

from kdlib.evaluation import bias


def test_probe_has_every_group_template_and_term():
    p = bias.probe()
    assert len(p) == len(bias.TEMPLATES) * sum(len(t) for t in bias.GROUPS.values())
    assert "Lakisha said the movie was better than expected." in set(p.text)
    with pytest.raises(ValueError, match="person"):
        bias.probe(["no slot here"])


def test_flip_rate_is_zero_for_a_fair_classifier_and_one_for_a_name_biased_one():
    def fair(texts):  # looks at the sentence, not the person
        return np.array([[0.2, 0.8] if "wonderful" in t else [0.7, 0.3] for t in texts])

    def biased(texts):  # says "positive" whenever the sentence starts with Greg
        return np.array([[0.1, 0.9] if t.startswith("Greg") else [0.9, 0.1] for t in texts])

    assert all(v["flip_rate"] == 0.0 and v["gap"] == 0.0 for v in bias.flip_rates(fair).values())
    got = bias.flip_rates(biased)
    assert got["first names"]["flip_rate"] == 1.0 and got["first names"]["gap"] == pytest.approx(0.8)
    assert got["pronouns"]["flip_rate"] == 0.0


def test_mmd_separates_shifted_samples_and_not_identical_ones():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, (60, 5)), rng.normal(0, 1, (60, 5))
    same, shifted = bias.mmd_test(a, b, permutations=200), bias.mmd_test(a, b + 1.0, permutations=200)
    assert same["p_value"] > 0.05 and shifted["p_value"] < 0.01 and shifted["mmd2"] > same["mmd2"]
    assert bias.label_shift(["a", "a"], ["a", "b"], ["a", "b"]) == pytest.approx(0.5)
    shift = bias.pool_shift([{"text": "x y", "label": "a"}], [{"text": "x", "label": "b"}], ["a", "b"],
                            embed=lambda t: np.zeros((len(t), 2)))
    assert shift["label_tv"] == 1.0 and shift["words_synthetic"] == 2.0 and np.isnan(shift["mmd2"])

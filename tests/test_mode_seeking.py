"""kdlib.distillation.mode_seeking: forward KL covers both modes, reverse KL seeks one; a unimodal target is matched by all."""

import numpy as np
import pytest

from kdlib.distillation import mode_seeking as ms

GRID = np.linspace(-6, 6, 241)


def test_mixture_is_normalised_and_validated():
    logp = ms.mixture_log_probs(GRID, [-2, 2], [0.5, 0.5], [1, 1])
    assert np.exp(logp.numpy()).sum() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        ms.mixture_log_probs(GRID, [0], [0.5, 1], [1])


def test_forward_kl_covers_reverse_kl_seeks():
    target = ms.mixture_log_probs(GRID, [-2.5, 2.5], [0.6, 0.6], [1, 1])
    fkl = ms.fit_gaussian(target, GRID, "fkl", steps=400)
    rkl = ms.fit_gaussian(target, GRID, "rkl", steps=400)
    dfkl = ms.diagnostics(target, fkl["log_probs"], GRID, fkl["mu"], fkl["sigma"])
    drkl = ms.diagnostics(target, rkl["log_probs"], GRID, rkl["mu"], rkl["sigma"])
    assert abs(fkl["mu"]) < 0.3 and fkl["sigma"] > 2.0, "forward KL sits between the modes, wide"
    assert abs(abs(rkl["mu"]) - 2.5) < 0.2 and rkl["sigma"] < 0.8, "reverse KL picks one mode, narrow"
    assert dfkl["covered"] > 0.9 > 0.6 > drkl["covered"]
    assert dfkl["hallucinated"] > 0.1 > drkl["hallucinated"]
    # forward KL does not care where it starts; reverse KL does
    assert abs(ms.fit_gaussian(target, GRID, "fkl", steps=400, mu0=-1.0)["mu"] - fkl["mu"]) < 0.05
    assert ms.fit_gaussian(target, GRID, "rkl", steps=400, mu0=-1.0)["mu"] == pytest.approx(-2.5, abs=0.2)


def test_unimodal_target_is_matched_by_every_loss():
    target = ms.mixture_log_probs(GRID, [1.0], [0.8], [1])
    for kind in ("fkl", "rkl", "jsd", "tvd"):
        fit = ms.fit_gaussian(target, GRID, kind, steps=500)
        assert fit["mu"] == pytest.approx(1.0, abs=0.1) and fit["sigma"] == pytest.approx(0.8, abs=0.15), kind

"""kdlib.distillation.losses: closed forms, identities, endpoints, gradients against the naive version, edge cases."""

import math

import numpy as np
import pytest
import torch

from kdlib.distillation.losses import KINDS, kd_loss, naive_kd_loss

# Two tokens with hand-picked distributions (teacher p, student q); logits are their logs.
P = np.array([[0.5, 0.25, 0.25], [0.7, 0.2, 0.1]])
Q = np.array([[0.25, 0.5, 0.25], [0.2, 0.3, 0.5]])


def _kl(a, b):
    return float(np.sum(a * np.log(a / b)))


def _expected(kind, p, q, beta=0.5, alpha=0.1):
    """Per-token value straight from the definitions in the module's table, in numpy float64."""
    if kind == "fkl":
        return _kl(p, q)
    if kind == "rkl":
        return _kl(q, p)
    if kind == "sym_kl":
        return _kl(p, q) + _kl(q, p)
    if kind == "tvd":
        return 0.5 * float(np.abs(p - q).sum())
    if kind == "jsd":
        m = beta * p + (1 - beta) * q
        return beta * _kl(p, m) + (1 - beta) * _kl(q, m)
    if kind == "skew_fkl":
        return _kl(p, alpha * p + (1 - alpha) * q)
    return _kl(q, alpha * q + (1 - alpha) * p)


def _logits(probs, dtype=torch.float64):
    return torch.tensor(np.log(probs), dtype=dtype)


def _pair(shape=(2, 5, 7), dtype=torch.float64, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()
    t = torch.randn(*shape, generator=g, dtype=dtype) * scale
    return s, t


# ------------------------------------------------------------------------------------------ closed forms

def test_hand_computed_values():
    s, t = _logits(Q[:1]), _logits(P[:1])
    # p = (1/2, 1/4, 1/4), q = (1/4, 1/2, 1/4): KL(p||q) = 1/2 ln 2 - 1/4 ln 2 = 1/4 ln 2, and symmetrically
    assert kd_loss(s, t, "fkl").item() == pytest.approx(0.25 * math.log(2), abs=1e-12)
    assert kd_loss(s, t, "rkl").item() == pytest.approx(0.25 * math.log(2), abs=1e-12)
    assert kd_loss(s, t, "sym_kl").item() == pytest.approx(0.5 * math.log(2), abs=1e-12)
    assert kd_loss(s, t, "tvd").item() == pytest.approx(0.25, abs=1e-12)
    # disjoint one-hot distributions: JSD(1/2) reaches its maximum ln 2 and TVD its maximum 1
    a, b = torch.tensor([[0.0, -1e4]], dtype=torch.float64), torch.tensor([[-1e4, 0.0]], dtype=torch.float64)
    assert kd_loss(a, b, "jsd", beta=0.5).item() == pytest.approx(math.log(2), abs=1e-9)
    assert kd_loss(a, b, "tvd").item() == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("beta, alpha", [(0.5, 0.1), (0.1, 0.5), (0.9, 0.9)])
def test_closed_forms_on_tiny_distributions(kind, beta, alpha):
    s, t = _logits(Q), _logits(P)
    expected = [_expected(kind, P[i], Q[i], beta, alpha) for i in range(2)]
    per_token = kd_loss(s, t, kind, beta=beta, alpha=alpha, reduction="none")
    np.testing.assert_allclose(per_token.numpy(), expected, rtol=1e-10, atol=1e-12)
    assert kd_loss(s, t, kind, beta=beta, alpha=alpha).item() == pytest.approx(np.mean(expected), abs=1e-12)
    assert kd_loss(s, t, kind, beta=beta, alpha=alpha, reduction="sum").item() == pytest.approx(sum(expected))


@pytest.mark.parametrize("kind", KINDS)
def test_zero_loss_and_gradient_for_identical_inputs(kind):
    s, _ = _pair(dtype=torch.float32, scale=4.0)
    loss = kd_loss(s, s.detach().clone(), kind)
    loss.backward()
    assert abs(loss.item()) < 1e-6
    assert s.grad.abs().max().item() < 1e-6


# ------------------------------------------------------------------------------------------ endpoints

def test_skew_endpoints_equal_fkl_and_rkl():
    s, t = _pair()
    fkl, rkl = kd_loss(s, t, "fkl"), kd_loss(s, t, "rkl")
    assert kd_loss(s, t, "skew_fkl", alpha=0.0).item() == pytest.approx(fkl.item(), rel=1e-12)
    assert kd_loss(s, t, "skew_rkl", alpha=0.0).item() == pytest.approx(rkl.item(), rel=1e-12)
    # continuity at alpha -> 0 (the general kernel, not the alpha=0 shortcut)
    assert kd_loss(s, t, "skew_fkl", alpha=1e-10).item() == pytest.approx(fkl.item(), rel=1e-5)
    assert kd_loss(s, t, "skew_rkl", alpha=1e-10).item() == pytest.approx(rkl.item(), rel=1e-5)
    g_skew, g_fkl = (torch.autograd.grad(kd_loss(s, t, "skew_fkl", alpha=a), s)[0] for a in (1e-10, 0.0))
    torch.testing.assert_close(g_skew, g_fkl, rtol=1e-5, atol=1e-9)


def test_jsd_endpoints_follow_trl_and_the_formula_vanishes_there():
    s, t = _pair()
    fkl, rkl = kd_loss(s, t, "fkl").item(), kd_loss(s, t, "rkl").item()
    # beta = 0 / 1 are special-cased to FKL / RKL, as TRL's generalized_jsd_loss does
    assert kd_loss(s, t, "jsd", beta=0.0).item() == pytest.approx(fkl, rel=1e-12)
    assert kd_loss(s, t, "jsd", beta=1.0).item() == pytest.approx(rkl, rel=1e-12)
    # the formula itself tends to 0 at both ends, like beta * FKL and (1 - beta) * RKL
    eps = 1e-6
    assert kd_loss(s, t, "jsd", beta=eps).item() / eps == pytest.approx(fkl, rel=1e-3)
    assert kd_loss(s, t, "jsd", beta=1 - eps).item() / eps == pytest.approx(rkl, rel=1e-3)


# ------------------------------------------------------------------------------------------ gradients

@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_float64(kind):
    s, t = _pair(shape=(2, 3, 6), seed=1)
    mask = torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool)

    def f(x):
        return kd_loss(x, t, kind, mask=mask, temperature=1.7, beta=0.3, alpha=0.2, chunk_size=2,
                       reduction="none")

    assert torch.autograd.gradcheck(f, (s,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_loss_and_gradient_equal_naive_float32(kind):
    s, t = _pair(shape=(3, 37, 4096), dtype=torch.float32, seed=2, scale=3.0)
    mask = torch.rand(3, 37, generator=torch.Generator().manual_seed(3)) > 0.25
    kw = dict(mask=mask, temperature=1.5, beta=0.3, alpha=0.1, scale_by_t2=True)
    a = kd_loss(s, t, kind, chunk_size=16, **kw)  # 111 tokens -> chunks of 16 and a remainder
    (ga,) = torch.autograd.grad(a, s)
    b = naive_kd_loss(s, t, kind, **kw)
    (gb,) = torch.autograd.grad(b, s)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-8)


def test_second_backward_recomputes_the_same_gradient():
    s, t = _pair()
    loss = kd_loss(s, t, "jsd", chunk_size=3)
    (g1,) = torch.autograd.grad(loss, s, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, s)
    torch.testing.assert_close(g1, g2)


def test_teacher_gets_no_gradient():
    s, t = _pair()
    t.requires_grad_()
    kd_loss(s, t, "fkl").backward()
    assert t.grad is None and s.grad is not None


# ------------------------------------------------------------------------------------------ options

def test_mask_excludes_tokens_from_loss_and_gradient():
    s, t = _pair(shape=(2, 4, 9))
    mask = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    per_token = kd_loss(s, t, "rkl", mask=mask, reduction="none")
    assert per_token.shape == (2, 4) and (per_token[~mask] == 0).all()
    loss = kd_loss(s, t, "rkl", mask=mask)
    assert loss.item() == pytest.approx(per_token[mask].mean().item())
    (g,) = torch.autograd.grad(loss, s)
    assert (g[~mask] == 0).all() and (g[mask] != 0).any()
    # masked positions may hold anything finite without changing the loss; 0/1 integer masks work too
    s2 = s.detach().clone()
    s2[~mask] = 123.0
    assert kd_loss(s2, t, "rkl", mask=mask.long()).item() == pytest.approx(loss.item())


def test_all_masked_batch_gives_zero_not_nan():
    s, t = _pair()
    loss = kd_loss(s, t, "fkl", mask=torch.zeros(2, 5))
    loss.backward()
    assert loss.item() == 0.0 and (s.grad == 0).all()


def test_temperature_divides_logits_and_t2_scales():
    s, t = _pair()
    base = kd_loss(s / 2, t / 2, "fkl").item()
    assert kd_loss(s, t, "fkl", temperature=2.0).item() == pytest.approx(base, rel=1e-12)
    assert kd_loss(s, t, "fkl", temperature=2.0, scale_by_t2=True).item() == pytest.approx(4 * base, rel=1e-12)


def test_bf16_inputs_accumulate_in_fp32():
    s32, t32 = _pair(shape=(4, 8, 2048), dtype=torch.float32, scale=3.0)
    s16 = s32.detach().bfloat16().requires_grad_()
    t16 = t32.bfloat16()
    for kind in KINDS:
        loss16 = kd_loss(s16, t16, kind)
        assert loss16.dtype == torch.float32
        (g16,) = torch.autograd.grad(loss16, s16)
        assert g16.dtype == torch.bfloat16
        ref_in = s16.detach().float().requires_grad_()
        ref = naive_kd_loss(ref_in, t16.float(), kind)  # same bf16 values, fp32 maths
        (gref,) = torch.autograd.grad(ref, ref_in)
        torch.testing.assert_close(loss16, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g16.float(), gref, rtol=1e-2, atol=1e-6)  # bf16 rounding of the gradient


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_inputs_with_a_mask(kind):
    """Masked rows are gathered, so the fp32 chunk gradient is scattered back into the bf16 gradient: the GPU
    suite's first run found that scatter refusing the dtypes (every bf16 trainer step with a mask failed)."""
    s32, t32 = _pair(shape=(3, 10, 512), dtype=torch.float32, scale=3.0)
    mask = torch.rand(3, 10, generator=torch.Generator().manual_seed(1)) > 0.3
    s16 = s32.detach().bfloat16().requires_grad_()
    loss16 = kd_loss(s16, t32.bfloat16(), kind, mask=mask, chunk_size=4)
    (g16,) = torch.autograd.grad(loss16, s16)
    ref_in = s16.detach().float().requires_grad_()
    ref = naive_kd_loss(ref_in, t32.bfloat16().float(), kind, mask=mask)
    (gref,) = torch.autograd.grad(ref, ref_in)
    assert g16.dtype == torch.bfloat16
    torch.testing.assert_close(loss16, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g16.float(), gref, rtol=1e-2, atol=1e-6)
    assert float(g16[~mask].abs().max()) == 0.0


def test_flat_inputs_and_eval_mode():
    s, t = _pair(shape=(6, 11))
    with torch.no_grad():
        value = kd_loss(s, t, "sym_kl")
    assert not value.requires_grad
    assert value.item() == pytest.approx(naive_kd_loss(s, t, "sym_kl").item(), rel=1e-12)
    assert kd_loss(s, t, "tvd", reduction="none").shape == (6,)


# ------------------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("where, value, word", [("student", float("nan"), "NaN"), ("teacher", float("inf"), r"\+inf"),
                                                ("student", float("-inf"), "-inf")])
def test_nonfinite_logits_raise_a_clear_error(where, value, word):
    s, t = _pair()
    bad = (s.detach().clone() if where == "student" else t.clone())
    bad[1, 2, 3] = value
    args = (bad, t) if where == "student" else (s, bad)
    with pytest.raises(FloatingPointError, match=f"{where}_logits contain 1 {word}"):
        kd_loss(*args, "fkl")


def test_different_vocab_sizes_are_refused():
    with pytest.raises(ValueError, match="vocab sizes differ: student logits have V=7, teacher logits V=9"):
        kd_loss(torch.zeros(2, 3, 7), torch.zeros(2, 3, 9))


@pytest.mark.parametrize("kwargs, match", [({"kind": "kl"}, "unknown loss kind"), ({"beta": 1.5}, "beta"),
                                           ({"alpha": 1.0}, "alpha"), ({"temperature": 0.0}, "temperature"),
                                           ({"reduction": "batchmean"}, "reduction"),
                                           ({"mask": torch.ones(3)}, "mask shape")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kd_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), **kwargs)

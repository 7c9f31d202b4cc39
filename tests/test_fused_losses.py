"""kdlib.distillation.fused_losses: the output-layer-fused losses equal logits-then-loss, in value and in every gradient."""

import pytest
import torch

from kdlib.distillation.fused_losses import (
    check_plain_output_layer,
    kd_loss_from_hidden,
    naive_kd_loss_from_hidden,
)
from kdlib.distillation.losses import KINDS, kd_loss

B, T, H, V = 2, 5, 6, 11


def _setup(dtype=torch.float64, seed=0, bias=True, teacher_hidden=False):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, H, generator=g, dtype=dtype).requires_grad_()
    w = (torch.randn(V, H, generator=g, dtype=dtype) * 0.8).requires_grad_()
    b = (torch.randn(V, generator=g, dtype=dtype) * 0.5).requires_grad_() if bias else None
    head = torch.nn.Linear(H, V, bias=bias, dtype=dtype)
    with torch.no_grad():
        head.weight.copy_(w)
        if bias:
            head.bias.copy_(b)
    t_h = torch.randn(B, T, H + 2, generator=g, dtype=dtype)
    t_head = torch.nn.Linear(H + 2, V, dtype=dtype)
    teacher = ({"teacher_hidden": t_h, "teacher_head": t_head} if teacher_hidden
               else {"teacher_logits": t_head(t_h).detach() * 1.5})
    return h, head, teacher


def _grads(loss, h, head):
    loss.backward()
    out = [h.grad.clone(), head.weight.grad.clone()] + ([head.bias.grad.clone()] if head.bias is not None else [])
    h.grad = None
    head.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("teacher_hidden", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_loss_and_all_gradients_equal_the_unfused_reference(kind, teacher_hidden):
    h, head, teacher = _setup(teacher_hidden=teacher_hidden)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, :2] = False
    kw = dict(kind=kind, mask=mask, temperature=1.7, beta=0.3, alpha=0.2)
    fused = kd_loss_from_hidden(h, head, **teacher, chunk_size=3, **kw)
    g_fused = _grads(fused, h, head)
    naive = naive_kd_loss_from_hidden(h, head, **teacher, **kw)
    g_naive = _grads(naive, h, head)
    torch.testing.assert_close(fused, naive, rtol=1e-10, atol=1e-12)
    for a, b in zip(g_fused, g_naive):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    assert g_fused[0][0, :2].abs().max() == 0  # masked tokens get no gradient


def test_equals_kd_loss_on_a_real_models_logits():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, tie_word_embeddings=True)
    student, teacher = LlamaForCausalLM(cfg), LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        t_out = teacher(ids, output_hidden_states=True)
    hidden = student.model(ids).last_hidden_state
    fused = kd_loss_from_hidden(hidden, student.get_output_embeddings(), teacher_hidden=t_out.hidden_states[-1],
                                teacher_head=teacher.get_output_embeddings(), kind="jsd")
    fused.backward()
    g_fused = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad(set_to_none=True)
    plain = kd_loss(student(ids).logits, t_out.logits, "jsd")
    plain.backward()
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    for name, p in student.named_parameters():  # tied embedding included: both routes add into one tensor
        torch.testing.assert_close(g_fused[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_per_token_upstream_weights_recompute_exactly():
    h, head, teacher = _setup()
    weights = torch.linspace(0.1, 2.0, B * T, dtype=torch.float64).view(B, T)
    fused = (kd_loss_from_hidden(h, head, **teacher, kind="rkl", reduction="none", chunk_size=4) * weights).sum()
    g_fused = _grads(fused, h, head)
    naive = (naive_kd_loss_from_hidden(h, head, **teacher, kind="rkl", reduction="none") * weights).sum()
    for a, b in zip(g_fused, _grads(naive, h, head)):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_second_backward_recomputes_the_same_gradients():
    h, head, teacher = _setup()
    loss = kd_loss_from_hidden(h, head, **teacher, kind="tvd", chunk_size=2)
    loss.backward(retain_graph=True)
    first = [h.grad.clone(), head.weight.grad.clone()]
    h.grad, head.weight.grad = None, None
    loss.backward()
    torch.testing.assert_close(h.grad, first[0])
    torch.testing.assert_close(head.weight.grad, first[1])


def test_frozen_head_gets_no_gradient_and_teacher_none():
    h, head, teacher = _setup(teacher_hidden=True)
    head.requires_grad_(False)
    kd_loss_from_hidden(h, head, **teacher, kind="fkl").backward()
    assert h.grad is not None and head.weight.grad is None
    assert teacher["teacher_head"].weight.grad is None


def test_all_masked_gives_zero_and_zero_gradients():
    h, head, teacher = _setup()
    loss = kd_loss_from_hidden(h, head, **teacher, mask=torch.zeros(B, T, dtype=torch.bool))
    loss.backward()
    assert float(loss.detach()) == 0.0 and h.grad.abs().max() == 0 and head.weight.grad.abs().max() == 0


def test_bf16_model_matches_fp32_reference_closely():
    h, head, teacher = _setup(dtype=torch.float32, teacher_hidden=True)
    h16 = h.detach().bfloat16().requires_grad_()
    head16 = torch.nn.Linear(H, V, dtype=torch.bfloat16)
    with torch.no_grad():
        head16.weight.copy_(head.weight)
        head16.bias.copy_(head.bias)
    t16 = {"teacher_hidden": teacher["teacher_hidden"].bfloat16(), "teacher_head": teacher["teacher_head"].bfloat16()}
    fused = kd_loss_from_hidden(h16, head16, **t16, kind="jsd")
    assert fused.dtype == torch.float32  # accumulated in fp32
    fused.backward()
    assert h16.grad.dtype == torch.bfloat16 and head16.weight.grad.dtype == torch.bfloat16
    naive = naive_kd_loss_from_hidden(h16.detach().float().requires_grad_(), head16.float(),
                                      teacher_hidden=t16["teacher_hidden"].float(),
                                      teacher_head=t16["teacher_head"].float(), kind="jsd")
    assert abs(float(fused.detach()) - float(naive.detach())) < 2e-2 * max(1.0, float(naive.detach()))


def test_no_grad_evaluation_matches():
    h, head, teacher = _setup()
    with torch.no_grad():
        value = kd_loss_from_hidden(h, head, **teacher, kind="skew_rkl")
    torch.testing.assert_close(value, naive_kd_loss_from_hidden(h, head, **teacher, kind="skew_rkl").detach())


@pytest.mark.parametrize("change, match", [
    (dict(teacher_logits=torch.zeros(B, T, V + 1, dtype=torch.float64)), "vocab sizes differ"),
    (dict(teacher_logits=torch.zeros(B, T + 1, V, dtype=torch.float64)), "same tokens"),
    (dict(teacher_hidden=torch.zeros(B, T, H + 2, dtype=torch.float64)), "either as teacher_logits"),
    (dict(mask=torch.ones(B, T + 1)), "mask shape"),
    (dict(kind="kl"), "unknown loss kind"),
    (dict(alpha=1.0), "alpha"),
])
def test_bad_arguments_are_named(change, match):
    h, head, teacher = _setup()
    kwargs = dict(teacher, **change)
    with pytest.raises(ValueError, match=match):
        kd_loss_from_hidden(h, head, **kwargs)


def test_dtype_mismatch_and_bad_head_are_refused():
    h, head, teacher = _setup()
    with pytest.raises(TypeError, match="share a dtype"):
        kd_loss_from_hidden(h.float(), head, **teacher)
    with pytest.raises(TypeError, match="output layer"):
        kd_loss_from_hidden(h, "lm_head", **teacher)
    with pytest.raises(ValueError, match="hidden size"):
        kd_loss_from_hidden(h[..., :-1], head, **teacher)


def test_nonfinite_hidden_states_raise_a_clear_error():
    h, head, teacher = _setup()
    bad = h.detach().clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="student_hidden contains 1 NaN"):
        kd_loss_from_hidden(bad, head, **teacher)


def test_models_that_post_process_logits_are_refused():
    from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

    small = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=8)
    check_plain_output_layer(LlamaForCausalLM(LlamaConfig(**small)))
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        check_plain_output_layer(Gemma2ForCausalLM(Gemma2Config(**small, final_logit_softcapping=30.0)))

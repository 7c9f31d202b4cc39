"""kdlib.distillation.distill with tiny randomly initialised Llama models on the real SmolLM2 tokenizer (fast, no weights)."""

import math

import pytest

torch = pytest.importorskip("torch")

from kdlib.distillation import distill  # noqa: E402
from tests.tiny_lm import PAIRS, tiny_llama  # noqa: E402


def test_tokenizer_check(tok):
    from kdlib.registry.models import load_tokenizer

    distill.check_same_tokenizer(tok, tok)
    other = load_tokenizer("sentence-transformers/all-MiniLM-L6-v2")
    with pytest.raises(distill.TokenizerMismatchError, match="vocabulary sizes differ"):
        distill.check_same_tokenizer(tok, other)


def test_truncated_student_keeps_the_first_layers(tok):
    teacher = tiny_llama(tok, layers=4)
    student = distill.truncated_student(teacher, 2)
    assert len(student.model.layers) == 2 and student.config.num_hidden_layers == 2
    assert len(teacher.model.layers) == 4, "the teacher is untouched"
    assert torch.equal(student.model.layers[1].mlp.up_proj.weight, teacher.model.layers[1].mlp.up_proj.weight)
    ids = torch.tensor([[1, 2, 3, 4]])
    assert student(input_ids=ids).logits.shape == teacher(input_ids=ids).logits.shape
    for bad in (0, 5):
        with pytest.raises(ValueError, match="n_layers"):
            distill.truncated_student(teacher, bad)


@pytest.mark.parametrize("loss", ["fkl", "rkl"])
def test_word_kd_pulls_the_student_towards_the_teacher(tok, loss):
    from kdlib.distillation.losses import kd_loss
    from kdlib.distillation.sft import _batch, encode_pairs

    teacher, student = tiny_llama(tok, seed=1), tiny_llama(tok, layers=2, seed=2)
    pairs = PAIRS[:4]
    ids, labels, mask = _batch(encode_pairs(tok, pairs, 64), tok.pad_token_id, "cpu")
    counted = labels[:, 1:] != -100

    def divergence():
        with torch.no_grad():
            return float(kd_loss(student(input_ids=ids, attention_mask=mask).logits[:, :-1],
                                 teacher(input_ids=ids, attention_mask=mask).logits[:, :-1], loss, mask=counted))

    before = divergence()
    hist = distill.train_word_kd(student, teacher, tok, pairs,
                                 distill.KDConfig(loss=loss, epochs=10, batch_size=4, lr=5e-3, warmup_ratio=0.0))
    assert hist.steps == 10 and hist.tokens > 0
    assert divergence() < 0.6 * before


def test_kd_config_and_nan_guard(tok):
    with pytest.raises(ValueError, match="loss"):
        distill.KDConfig(loss="kl")
    teacher, student = tiny_llama(tok, seed=1), tiny_llama(tok, layers=2, seed=2)
    with torch.no_grad():
        teacher.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError):
        distill.train_word_kd(student, teacher, tok, PAIRS[:2], distill.KDConfig(max_steps=1, batch_size=2))


def test_seqkd_pairs_are_the_teachers_answers(tok):
    teacher = tiny_llama(tok, seed=3)
    pairs = distill.seqkd_pairs(teacher, tok, ["Say hi.", "Count to 3."], max_new_tokens=5)
    assert [p["instruction"] for p in pairs] <= ["Say hi.", "Count to 3."] and all(p["response"] for p in pairs)


def test_on_policy_batches_use_student_samples(tok):
    teacher, student = tiny_llama(tok, seed=1), tiny_llama(tok, layers=2, seed=2)
    from kdlib.distillation.sft import encode_pairs

    rows = encode_pairs(tok, PAIRS[:2], 64)
    cfg = distill.KDConfig(on_policy=1.0, gen_max_new_tokens=5, epochs=2, batch_size=2, lr=1e-3)
    sampled = distill.student_samples(student, rows, cfg, tok.pad_token_id, seed=7)
    assert sampled == distill.student_samples(student, rows, cfg, tok.pad_token_id, seed=7), "seeded"
    for (ids, labels), (orig, orig_labels) in zip(sampled, rows):
        n_prompt = orig_labels.index(next(y for y in orig_labels if y != -100))
        assert ids[:n_prompt] == orig[:n_prompt] and all(y == -100 for y in labels[:n_prompt])
        assert 1 <= len(ids) - n_prompt <= 5 and labels[n_prompt:] == ids[n_prompt:]
    hist = distill.train_word_kd(student, teacher, tok, PAIRS[:2], cfg)
    assert hist.on_policy_steps == 2 and hist.steps == 2 and all(map(math.isfinite, hist.loss))
    with pytest.raises(ValueError, match="ce_weight"):
        distill.KDConfig(on_policy=0.5, ce_weight=0.5)


def test_response_only_logits_give_the_full_logits_loss(tok):
    """Left padding + logits only where responses are predicted == right padding + all logits."""
    import torch

    from kdlib.distillation.distill import response_batch, response_logits
    from kdlib.distillation.losses import kd_loss
    from kdlib.distillation.sft import IGNORE_INDEX, _batch, encode_pairs
    from tests.tiny_lm import PAIRS, tiny_llama

    teacher, student = tiny_llama(tok, layers=3, seed=2), tiny_llama(tok, layers=2, seed=1)
    rows = encode_pairs(tok, PAIRS[:5], 64)
    assert len({len(x) for x, _ in rows}) > 1  # different lengths: padding matters
    ids, labels, mask = _batch(rows, tok.pad_token_id, "cpu")
    target = labels[:, 1:]
    full = kd_loss(student(input_ids=ids, attention_mask=mask).logits[:, :-1],
                   teacher(input_ids=ids, attention_mask=mask).logits[:, :-1], "rkl", mask=target != IGNORE_INDEX)
    ids2, labels2, mask2, pos2, keep = response_batch(rows, tok.pad_token_id, "cpu")
    assert keep < ids2.shape[1]  # prompt positions really are skipped
    t2 = labels2[:, -keep:]
    fast = kd_loss(response_logits(student, ids2, mask2, pos2, keep), response_logits(teacher, ids2, mask2, pos2, keep),
                   "rkl", mask=t2 != IGNORE_INDEX)
    assert int((t2 != IGNORE_INDEX).sum()) == int((target != IGNORE_INDEX).sum())
    assert torch.allclose(full, fast, rtol=1e-4, atol=1e-6), (full.item(), fast.item())


def test_nucleus_mass_and_diagnostics(tok):
    import torch

    from kdlib.distillation.distill import nucleus_mass, teacher_forced_diagnostics
    from tests.tiny_lm import PAIRS, tiny_llama

    t = torch.log(torch.tensor([[[0.7, 0.25, 0.05, 0.0001]]]))
    s = torch.log(torch.tensor([[[0.1, 0.1, 0.4, 0.4]]]))
    mask = torch.tensor([[True]])
    assert abs(nucleus_mass(t, s, mask, 0.9) - 0.2) < 1e-5     # teacher nucleus {0, 1}: the student puts 0.2 there
    assert abs(nucleus_mass(t, t, mask, 0.9) - 0.95) < 1e-4    # itself: its own nucleus mass
    model = tiny_llama(tok, layers=2, seed=3)
    same = teacher_forced_diagnostics(model, model, tok, PAIRS[:3], max_length=64)
    assert abs(same["fkl"]) < 1e-5 and abs(same["rkl"]) < 1e-5
    other = teacher_forced_diagnostics(tiny_llama(tok, layers=2, seed=4), model, tok, PAIRS[:3], max_length=64)
    assert other["fkl"] > 0 and other["rkl"] > 0 and 0 < other["student_mass_in_teacher_nucleus"] < 1


def test_fused_head_trains_exactly_like_the_logits_path(tok):
    """KDConfig.fused_head: same losses step by step and the same weights after training, without logits."""
    import copy

    teacher, base = tiny_llama(tok, seed=1), tiny_llama(tok, layers=2, seed=2)
    runs = {}
    for fused in (False, True):
        student = copy.deepcopy(base)
        cfg = distill.KDConfig(loss="jsd", epochs=3, batch_size=4, lr=5e-3, warmup_ratio=0.0, temperature=1.5,
                               fused_head=fused)
        runs[fused] = (distill.train_word_kd(student, teacher, tok, PAIRS[:8], cfg), student)
    (plain, s_plain), (fused, s_fused) = runs[False], runs[True]
    assert fused.steps == plain.steps == 6 and fused.tokens == plain.tokens
    assert plain.kd[-1] < plain.kd[0]  # it trained
    for a, b in zip(plain.kd, fused.kd):
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6), (plain.kd, fused.kd)
    for (name, p), q in zip(s_plain.named_parameters(), s_fused.parameters()):
        assert torch.allclose(p, q, rtol=1e-3, atol=1e-5), name
    with pytest.raises(ValueError, match="fused_head"):
        distill.KDConfig(fused_head=True, ce_weight=0.5)

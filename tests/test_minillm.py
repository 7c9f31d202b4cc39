"""kdlib.distillation.minillm on tiny random Llamas with the real SmolLM2 tokenizer: rewards, sampling, a training run."""

import pytest

torch = pytest.importorskip("torch")

from kdlib.distillation import minillm  # noqa: E402
from tests.tiny_lm import PAIRS, tiny_llama  # noqa: E402


def test_future_rewards_closed_form():
    r = torch.tensor([[1.0, 2.0, 3.0, 7.0], [5.0, 1.0, 4.0, 9.0]])
    m = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    assert minillm.future_rewards(r, m, length_norm=False).tolist() == [[5.0, 3.0, 0.0, 0.0], [0.0, 13.0, 9.0, 0.0]]
    assert minillm.future_rewards(r, m).tolist() == [[2.5, 3.0, 0.0, 0.0], [0.0, 6.5, 9.0, 0.0]]


def _prompts(tok):
    from kdlib.distillation.sft import chat_prompt

    return [chat_prompt(tok, "Count to 3."), chat_prompt(tok, "Say hi to the world, please.")]


def test_sampling_is_seeded_and_alpha_zero_is_the_student(tok):
    teacher, student = tiny_llama(tok, seed=1), tiny_llama(tok, layers=2, seed=2)
    kw = dict(alpha=0.0, max_new_tokens=6, seed=5)
    a = minillm.sample_mixed(student, teacher, _prompts(tok), tok.eos_token_id, tok.pad_token_id, **kw)
    b = minillm.sample_mixed(student, teacher, _prompts(tok), tok.eos_token_id, tok.pad_token_id, **kw)
    assert torch.equal(a.input_ids, b.input_ids)
    assert torch.allclose(a.logq_old, a.log_mix), "alpha=0 samples from the student itself"
    for i, p in enumerate(_prompts(tok)):
        assert a.input_ids[i, :len(p)].tolist() == p and not a.response_mask[i, :len(p)].any()
        assert 1 <= int(a.response_mask[i].sum()) <= 6


def test_alpha_one_cold_sampling_follows_the_teachers_greedy_path(tok):
    from kdlib.teachers.fastgen import SamplingParams, generate

    teacher, student = tiny_llama(tok, seed=1), tiny_llama(tok, layers=2, seed=2)
    prompts = _prompts(tok)
    s = minillm.sample_mixed(student, teacher, prompts, tok.eos_token_id, tok.pad_token_id, alpha=1.0,
                             max_new_tokens=6, temperature=1e-4, seed=0)
    greedy = generate(teacher, prompts, SamplingParams(max_new_tokens=6), pad_token_id=tok.pad_token_id)
    for i, (p, g) in enumerate(zip(prompts, greedy)):
        n = int(s.response_mask[i].sum())
        assert s.input_ids[i, len(p):len(p) + n].tolist() == g.token_ids[:n]


def test_training_lowers_the_reverse_kl(tok):
    from kdlib.distillation.losses import kd_loss
    from kdlib.distillation.sft import _batch, encode_pairs

    teacher, student = tiny_llama(tok, seed=1), tiny_llama(tok, layers=2, seed=2)
    ids, labels, mask = _batch(encode_pairs(tok, PAIRS[:4], 64), tok.pad_token_id, "cpu")

    def rkl():
        with torch.no_grad():
            return float(kd_loss(student(input_ids=ids, attention_mask=mask).logits[:, :-1],
                                 teacher(input_ids=ids, attention_mask=mask).logits[:, :-1], "rkl",
                                 mask=labels[:, 1:] != -100))

    before = rkl()
    cfg = minillm.MiniLLMConfig(epochs=6, batch_size=4, lr=1e-2, gen_max_new_tokens=6, mix_alpha=0.2)
    hist = minillm.train_minillm(student, teacher, tok, PAIRS[:4], cfg)
    assert hist.steps == 6 and hist.sampled_tokens > 0 and {"long_term", "single_step"} <= set(hist.parts[0])
    assert rkl() < 0.7 * before


def test_config_errors():
    with pytest.raises(ValueError, match="mix_alpha"):
        minillm.MiniLLMConfig(mix_alpha=1.5)
    with pytest.raises(ValueError, match="at least one"):
        minillm.MiniLLMConfig(single_step=False, long_term=False)

"""Decoding strategies: typical / entropy-adaptive sampling, contrastive decoding, speculative decoding."""

import math

import pytest
import torch

from kdlib.distillation.distill import truncated_student
from kdlib.teachers import contrastive, fastgen, sampling, speculative
from kdlib.teachers.api import GenParams
from tests.tiny_lm import tiny_llama

# ----------------------------------------------------------------------------- sampling filters

def test_typical_keeps_tokens_nearest_the_entropy():
    # One dominant token and a flat tail: the entropy is low, so the dominant token is the most typical.
    probs = torch.tensor([[0.7, 0.1, 0.1, 0.05, 0.05]])
    kept = sampling.typical_filter(probs, 0.5)
    assert kept[0, 0] > 0 and (kept[0, 1:] == 0).all()
    everything = sampling.typical_filter(probs, 1.0)
    assert (everything > 0).all()


def test_typical_can_drop_the_most_likely_token():
    # Near-uniform top with one very likely outlier: the outlier's surprisal is far from the entropy.
    probs = torch.tensor([[0.4] + [0.6 / 30] * 30])
    kept = sampling.typical_filter(probs, 0.5)
    assert kept[0, 0] == 0 and (kept[0, 1:] > 0).sum() > 10


def test_adaptive_temperature_sharpens_confident_rows():
    confident = torch.tensor([[10.0, 0.0, 0.0, 0.0]])
    unsure = torch.zeros(1, 4)
    logits = torch.cat([confident, unsure])
    params = fastgen.SamplingParams(temperature=1.0, adaptive_temperature=1.0)
    temps = sampling.row_temperatures(logits, params)
    assert temps[0, 0] < 0.1 and temps[1, 0] == pytest.approx(math.log(4), rel=1e-4)  # H(unsure) = ln 4 nats
    reverse = sampling.row_temperatures(logits, fastgen.SamplingParams(temperature=1.0, adaptive_temperature=-1.0))
    assert reverse[0, 0] > 10 and reverse[1, 0] < 1
    assert sampling.row_temperatures(logits, fastgen.SamplingParams(temperature=0.7)) == 0.7


def test_adaptive_temperature_survives_masked_tokens():
    logits = torch.tensor([[2.0, float("-inf"), 0.5, float("-inf")]])
    probs = sampling.sampling_probs(logits, fastgen.SamplingParams(temperature=1.0, adaptive_temperature=1.0))
    assert torch.isfinite(probs).all() and probs[0, 1] == 0 and probs[0, 0] > probs[0, 2] > 0


@pytest.mark.parametrize("field,value", [("typical_p", 0.0), ("typical_p", 1.5), ("adaptive_temperature", 9.0)])
def test_bad_decoding_knobs_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        fastgen.SamplingParams(**{field: value})
    with pytest.raises(ValueError, match=field):
        GenParams(**{field: value})


def test_new_knobs_at_their_defaults_leave_cache_keys_alone():
    keys = GenParams(temperature=0.5).key_fields()
    assert {"typical_p", "adaptive_temperature", "contrastive", "contrastive_alpha"}.isdisjoint(keys)
    assert GenParams(typical_p=0.9).key_fields()["typical_p"] == 0.9
    assert GenParams(contrastive=0.5).key_fields()["contrastive_alpha"] == 0.1


# ----------------------------------------------------------------------------- contrastive decoding

def test_contrastive_scores_plausibility_and_beta():
    expert = torch.log(torch.tensor([[0.6, 0.3, 0.09, 0.01]]))
    amateur = torch.log(torch.tensor([[0.9, 0.05, 0.04, 0.01]]))
    plain = contrastive.contrastive_scores(expert, amateur, beta=0.0, alpha=0.0)
    assert torch.allclose(plain, torch.log_softmax(expert, -1))
    scores = contrastive.contrastive_scores(expert, amateur, beta=1.0, alpha=0.1)
    assert scores[0, 3] == float("-inf")           # 0.01 < 0.1 * 0.6: implausible
    assert scores.argmax() == 1                      # the expert's runner-up, which the amateur does not like
    with pytest.raises(ValueError, match="vocabulary"):
        contrastive.contrastive_scores(expert, amateur[:, :3], 1.0, 0.1)


def test_contrastive_with_itself_as_amateur_is_plain_greedy(tok):
    expert = tiny_llama(tok, layers=3, seed=1)
    prompts = [tok("The cat sat on").input_ids, tok("Hello there, how").input_ids]
    params = fastgen.SamplingParams(max_new_tokens=6)
    plain = fastgen.generate(expert, prompts, params, pad_token_id=tok.pad_token_id)
    same = contrastive.generate(expert, expert, prompts, params, beta=0.8, alpha=0.0, pad_token_id=tok.pad_token_id)
    assert [o.token_ids for o in same] == [o.token_ids for o in plain]


def test_contrastive_against_a_truncated_amateur_changes_the_output_and_is_seeded(tok):
    expert = tiny_llama(tok, layers=4, seed=2)
    amateur = truncated_student(expert, 1)
    prompts = [tok("Once upon a time").input_ids] * 2
    greedy = fastgen.generate(expert, prompts[:1], fastgen.SamplingParams(max_new_tokens=8),
                              pad_token_id=tok.pad_token_id)[0].token_ids
    cd = contrastive.generate(expert, amateur, prompts[:1], fastgen.SamplingParams(max_new_tokens=8), beta=5.0,
                              alpha=0.0, pad_token_id=tok.pad_token_id)[0].token_ids
    assert cd != greedy
    sample = fastgen.SamplingParams(max_new_tokens=8, temperature=1.0)
    a = contrastive.generate(expert, amateur, prompts, sample, beta=1.0, seeds=[3, 4], pad_token_id=tok.pad_token_id)
    b = contrastive.generate(expert, amateur, prompts[:1], sample, beta=1.0, seeds=[3], pad_token_id=tok.pad_token_id)
    assert a[0].token_ids == b[0].token_ids      # a seed gives the same sample whatever the batch
    assert a[0].token_ids != a[1].token_ids


def test_contrastive_rejects_a_foreign_vocabulary(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    expert = tiny_llama(tok, layers=2)
    other = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(ValueError, match="shared tokenizer"):
        contrastive.generate(expert, other, [[1, 2, 3]], fastgen.SamplingParams(max_new_tokens=2), beta=1.0)


# ----------------------------------------------------------------------------- speculative decoding

@pytest.fixture(scope="module")
def pair():
    from transformers import AutoTokenizer  # noqa: F401  (tok fixture is session-scoped; build models here)

    from kdlib.registry.models import load_tokenizer

    t = load_tokenizer("HuggingFaceTB/SmolLM2-135M-Instruct")
    target = tiny_llama(t, layers=4, seed=5)
    return t, target


@pytest.mark.parametrize("drafter_kind", ["self_truncated", "lookup", "perfect"])
def test_speculative_output_equals_target_greedy(pair, drafter_kind):
    t, target = pair
    prompt = t("The list: alpha beta gamma delta. Again: alpha beta").input_ids
    plain, reason, base = speculative.generate(target, prompt, 20)
    assert base.proposed == 0 and base.target_calls == 21 and reason == "length"
    ref = fastgen.generate(target, [prompt], fastgen.SamplingParams(max_new_tokens=20))[0].token_ids
    assert plain == ref
    drafter = {"self_truncated": lambda: speculative.ModelDrafter(truncated_student(target, 2)),
               "lookup": lambda: speculative.PromptLookupDrafter(max_ngram=2),
               "perfect": lambda: speculative.ModelDrafter(target)}[drafter_kind]()
    out, _, stats = speculative.generate(target, prompt, 20, drafter=drafter, k=4)
    assert out == plain
    assert stats.new_tokens == 20 and stats.accepted <= stats.proposed
    if drafter_kind == "perfect":  # the target drafting for itself: every draft is accepted
        assert stats.acceptance_rate == 1.0 and stats.target_calls < base.target_calls / 3


def test_speculative_stops_at_a_stop_token(pair):
    t, target = pair
    prompt = t("one two three").input_ids
    plain, _, _ = speculative.generate(target, prompt, 12)
    stop = plain[4]
    out, reason, _ = speculative.generate(target, prompt, 12, drafter=speculative.ModelDrafter(target), k=3,
                                          stop_ids=[stop])
    assert reason == "stop" and out == plain[:plain.index(stop) + 1]


def test_prompt_lookup_copies_the_latest_match():
    d = speculative.PromptLookupDrafter(max_ngram=2)
    assert d.propose([1, 2, 3, 9, 1, 2, 4, 5, 1, 2], 3) == [4, 5, 1]
    assert d.propose([7, 8, 9], 2) == []
    with pytest.raises(ValueError, match="ngram"):
        speculative.PromptLookupDrafter(max_ngram=1, min_ngram=2)


# ----------------------------------------------------------------------------- through the teacher layer

def test_local_teacher_contrastive_and_typical_knobs(tmp_path):
    from kdlib.teachers.api import user
    from kdlib.teachers.teacher_local import LocalTeacher

    plain = LocalTeacher(batch_size=4, cache=False, progress=False)
    with pytest.raises(ValueError, match="amateur"):
        plain.generate([user("Hi")], max_new_tokens=4, contrastive=0.5)
    teacher = LocalTeacher(batch_size=4, amateur=6, cache_path=tmp_path / "c.sqlite", progress=False)
    assert teacher.identity()["amateur"] == 6 and "amateur" not in plain.identity()
    prompt = [user("Write one adjective that describes the sea.")]
    greedy = teacher.texts(prompt, max_new_tokens=8)
    cd = teacher.texts(prompt, max_new_tokens=8, contrastive=1.0)
    again = teacher.generate(prompt, max_new_tokens=8, contrastive=1.0)
    assert again[0].cached and again[0].text == cd[0]
    assert greedy[0] and cd[0]
    typical = teacher.texts(prompt, max_new_tokens=8, temperature=1.0, typical_p=0.5, n=2, seed=1)
    assert len(typical) == 2


def test_http_teacher_refuses_logit_knobs():
    from kdlib.teachers.teacher_http import HTTPTeacher

    teacher = HTTPTeacher("http://127.0.0.1:9/v1", model="m", cache=False, progress=False)
    for knob in ({"adaptive_temperature": 1.0}, {"contrastive": 0.5}):
        with pytest.raises(ValueError, match="logits"):
            teacher.generate(["hi"], **knob)


# ----------------------------------------------------------------------------- strategies and best-of-n

def test_strategies_are_valid_gen_params_and_misspellings_are_named():
    from kdlib.teachers import decoding

    for name in decoding.STRATEGIES:
        GenParams.build(None, **decoding.strategy(name, temperature=0.8))
    assert decoding.strategy("greedy", 0.8)["temperature"] == 0.0
    with pytest.raises(ValueError, match="did you mean 'typical'"):
        decoding.strategy("typicl")


@pytest.fixture(scope="module")
def smol():
    from kdlib.teachers.teacher_local import LocalTeacher

    return LocalTeacher(batch_size=8, cache=False, progress=False)


def test_best_of_n_picks_the_scorers_favourite_and_bills_every_candidate(smol):
    from kdlib.teachers import decoding
    from kdlib.teachers.api import user

    prompts = [user("Name a fruit."), user("Name a colour.")]
    picked = decoding.best_of_n(smol, prompts, 3, lambda i, cands: [len(c) for c in cands], seed=4,
                                max_new_tokens=8, temperature=1.0)
    for cands, text, j in zip(picked.candidates, picked.texts, picked.chosen):
        assert len(cands) == 3 and text == cands[j] and len(text) == max(len(c) for c in cands)
    spent = smol.generate(prompts, n=3, seed=4, max_new_tokens=8, temperature=1.0)
    assert picked.tokens == sum(c.prompt_tokens + c.completion_tokens for c in spent)
    with pytest.raises(ValueError, match="NaN"):
        decoding.best_of_n(smol, prompts[:1], 2, lambda i, c: [float("nan")] * 2, max_new_tokens=2)


def test_likelihood_scores_prefer_the_likely_answer(smol):
    from kdlib.teachers import decoding
    from kdlib.teachers.api import user

    s = decoding.likelihood_scores(smol, user("What is the capital of France? Answer in one word."),
                                   ["Paris", "Banana", "  "])
    assert s[0] > s[1] and s[2] == float("-inf")

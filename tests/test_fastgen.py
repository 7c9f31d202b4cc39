"""Tests for kdlib.teachers.fastgen: greedy equality with HF generate, seeded sampling, stopping, OOM halving.

Fast tests use a tiny randomly initialised GPT-2 (to show nothing is Llama-specific); the `slow` ones
load the SmolLM2 teacher (a few seconds of CPU each).
"""

from __future__ import annotations

import math

import pytest
import torch

from kdlib.teachers import engine, fastgen, prefix, sampling
from kdlib.teachers.fastgen import GenerationOutput, SamplingParams

EOS = 1


# ----------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    # A large init range makes logits far apart, so greedy never hinges on float rounding.
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=97, n_positions=512,
                        bos_token_id=EOS, eos_token_id=EOS, pad_token_id=0, initializer_range=0.3)
    return GPT2LMHeadModel(config).eval()


def random_prompts(n: int, seed: int = 0, lo: int = 3, hi: int = 12) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi, (n,), generator=gen).tolist()
    return [torch.randint(2, 97, (k,), generator=gen).tolist() for k in lengths]


def hf_greedy(model, prompt: list[int], max_new_tokens: int, stop_ids: list[int]) -> list[int]:
    """Reference: HF generate on one prompt, cut after the first stop token."""
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=stop_ids, pad_token_id=0)
    row = out[0, len(prompt):].tolist()
    for j, tok in enumerate(row):
        if tok in stop_ids:
            return row[:j + 1]
    return row


class FlakyMemory(torch.nn.Module):
    """A model wrapper whose forward runs out of memory once: on call `fail_on_call`, or on the first call
    with more than `max_rows` rows. It records the largest batch it served after failing."""

    def __init__(self, inner, max_rows: int | None = None, fail_on_call: int | None = None,
                 message: str = "CUDA out of memory. Tried to allocate 2.00 GiB"):
        super().__init__()
        self.inner, self.config, self.generation_config = inner, inner.config, inner.generation_config
        self.max_rows, self.fail_on_call, self.message = max_rows, fail_on_call, message
        self.calls, self.failed, self.rows_after_failure = 0, False, 0

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=None, logits_to_keep=0):
        self.calls += 1
        rows = input_ids.shape[0]
        too_big = self.max_rows is not None and rows > self.max_rows
        if not self.failed and (too_big or self.calls == self.fail_on_call):
            self.failed = True
            raise RuntimeError(self.message)
        if self.failed:
            self.rows_after_failure = max(self.rows_after_failure, rows)
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          past_key_values=past_key_values, use_cache=use_cache, logits_to_keep=logits_to_keep)


# ----------------------------------------------------------------------------- parameters

@pytest.mark.parametrize("field, value", [
    ("max_new_tokens", 0), ("max_new_tokens", 2.5), ("max_new_tokens", True),
    ("temperature", -0.1), ("temperature", math.nan), ("temperature", "hot"),
    ("top_p", 0.0), ("top_p", 1.5), ("top_k", -1), ("top_k", 1.5),
    ("min_p", -0.1), ("min_p", 1.1), ("stop_token_ids", (-1,)), ("stop_token_ids", "ab"), ("stop_token_ids", 5),
])
def test_bad_sampling_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_sampling_params_defaults_and_list_stop_ids():
    params = SamplingParams(stop_token_ids=[5, 6])
    assert params.stop_token_ids == (5, 6) and params.greedy
    assert not SamplingParams(temperature=0.7).greedy


def test_bad_generate_arguments(gpt2):
    params = SamplingParams(max_new_tokens=2)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        fastgen.generate(gpt2, [[3, 4], []], params)
    with pytest.raises(ValueError, match="seeds"):
        fastgen.generate(gpt2, [[3, 4]], params, seeds=[1, 2])
    with pytest.raises(ValueError, match="batch_size"):
        fastgen.generate(gpt2, [[3, 4]], params, batch_size=0)


# ----------------------------------------------------------------------------- pure helpers

SORTED = [[1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6, 8], [1, 2, 3, 9, 8], [1, 2, 3, 9, 9], [5, 5]]


def test_prefix_anchors_keep_prefixes_that_pay():
    free = prefix.prefix_anchors(SORTED, overhead=0)
    assert [a.length if a else 0 for a in free] == [6, 6, 4, 4, 0]
    assert free[0].parent.length == 3 and free[2].parent is free[0].parent and free[0].parent.parent is None
    assert (free[0].lo, free[0].hi, free[2].lo, free[2].hi) == (0, 1, 2, 3)
    # with a forward costing 4 tokens only [1, 2, 3] pays: 4 prompts share it, saving 3 tokens 3 times over
    dear = prefix.prefix_anchors(SORTED, overhead=4)
    assert [a.length if a else 0 for a in dear] == [3, 3, 3, 3, 0] and dear[0].parent is None
    assert prefix.prefix_anchors(SORTED, overhead=100) == [None] * 5
    assert prefix.prefix_anchors([]) == []


def test_prefix_anchor_leaves_each_prompt_a_token():
    anchors = prefix.prefix_anchors([[1, 2, 3, 4], [1, 2, 3, 4, 5], [1, 2, 3, 4, 6]], overhead=0)
    # [1, 2, 3, 4] is a whole prompt: it cannot take that anchor and keep a token to generate from
    assert anchors[0].length == 4 and prefix.usable_anchor(anchors[0], 0, 0, shortest=4) is None
    assert prefix.usable_anchor(anchors[1], 1, 2, shortest=5) is anchors[1]


def test_plan_prefill_groups_prompts_sharing_anchors():
    anchors = prefix.prefix_anchors(SORTED, overhead=0)
    runs = prefix.plan_prefill(SORTED, 0, 5, anchors, overhead=2)
    assert [(lo, hi, a.length if a else 0) for lo, hi, a in runs] == [(0, 2, 6), (2, 4, 4), (4, 5, 0)]
    runs = prefix.plan_prefill(SORTED, 1, 3, anchors, overhead=2)
    assert [(lo, hi, a.length if a else 0) for lo, hi, a in runs] == [(1, 2, 6), (2, 3, 4)]


def test_a_gpu_forward_costs_more_than_padding():
    """On CUDA a forward is host-bound (the H200 suite: ~7,000 prefill tokens' worth), so a batch of chat
    prompts of varied length prefills in one forward; on CPU it splits to save padding, as measured there."""
    g = torch.Generator().manual_seed(0)
    head = list(range(10, 40))  # a chat template's shared system prefix
    prompts = sorted(head + torch.randint(50, 90, (int(n),), generator=g).tolist()
                     for n in torch.randint(5, 120, (64,), generator=g))
    cpu, cuda = prefix.forward_overhead_tokens("cpu"), prefix.forward_overhead_tokens(torch.device("cuda", 0))
    assert cpu < 100 < 4000 < cuda
    runs = prefix.plan_prefill(prompts, 0, 64, prefix.prefix_anchors(prompts, cpu), overhead=cpu)
    assert len(runs) > 1
    anchors = prefix.prefix_anchors(prompts, cuda)
    assert anchors == [None] * 64  # 63 x 30 shared tokens do not pay for one more forward
    assert prefix.plan_prefill(prompts, 0, 64, anchors, overhead=cuda) == [(0, 64, None)]


def test_sampling_filters():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    top1 = sampling.sampling_probs(logits, SamplingParams(temperature=1.0, top_k=1))
    assert (top1 > 0).tolist() == [[True, False, False, False, False]]
    top_p = sampling.sampling_probs(logits, SamplingParams(temperature=1.0, top_p=0.8))
    assert (top_p > 0).tolist() == [[True, True, False, False, False]]  # 0.66 + 0.24 >= 0.8
    min_p = sampling.sampling_probs(logits, SamplingParams(temperature=1.0, min_p=0.3))
    assert (min_p > 0).tolist() == [[True, True, False, False, False]]  # exp(-1) > 0.3 > exp(-2)


def test_is_oom():
    assert fastgen.is_oom(RuntimeError("CUDA out of memory. Tried to allocate 20 MiB"))
    assert fastgen.is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: out of memory"))
    assert not fastgen.is_oom(RuntimeError("shape mismatch"))
    assert not fastgen.is_oom(ValueError("out of memory"))


# ----------------------------------------------------------------------------- tiny GPT-2

@pytest.mark.parametrize("batch_size, share_prefix", [(1, True), (3, True), (3, False), (16, True)])
def test_gpt2_greedy_matches_hf(gpt2, batch_size, share_prefix):
    # a shared head and two "templates" exercise nested prefixes; varied lengths, refills and retirement
    heads = [[5, 6, 7, 8, 9, 10] + ([11, 12, 13, 14] if i % 2 else [15, 16, 17]) for i in range(9)]
    prompts = [head + p for head, p in zip(heads, random_prompts(9))]
    params = SamplingParams(max_new_tokens=12, stop_token_ids=(3, 4))
    outs = fastgen.generate(gpt2, prompts, params, batch_size=batch_size, share_prefix=share_prefix)
    for prompt, out in zip(prompts, outs):
        assert out.token_ids == hf_greedy(gpt2, prompt, 12, [EOS, 3, 4])
        assert out.prompt_tokens == len(prompt)


def test_gpt2_buffer_shifts_keep_outputs(gpt2, monkeypatch):
    """Many decode steps through few rows with no slack columns force the buffer to shift often."""
    monkeypatch.setattr(engine, "_SLACK_COLUMNS", 1)
    prompts = random_prompts(12, seed=1)
    stats = {}
    outs = fastgen.generate(gpt2, prompts, SamplingParams(max_new_tokens=20), batch_size=2, stats=stats)
    assert stats["buffer_shifts"] > 3 and not stats["fallback"]
    for prompt, out in zip(prompts, outs):
        assert out.token_ids == hf_greedy(gpt2, prompt, 20, [EOS])


def test_gpt2_split_prefill_groups(gpt2, monkeypatch):
    """Free forwards make every shared prefix an anchor and split prefill groups finely."""
    monkeypatch.setattr(prefix, "_FORWARD_OVERHEAD_TOKENS", 0)
    prompts = random_prompts(10, seed=8, lo=2, hi=40)
    prompts += [p[:len(p) // 2] + [7, 7] for p in prompts[:4]] + [prompts[0][:3]]  # nested prefixes
    stats = {}
    outs = fastgen.generate(gpt2, prompts, SamplingParams(max_new_tokens=9, stop_token_ids=(3, 4, 5)),
                            batch_size=4, stats=stats)
    assert stats["prefill_calls"] > 5
    for prompt, out in zip(prompts, outs):
        assert out.token_ids == hf_greedy(gpt2, prompt, 9, [EOS, 3, 4, 5])


def test_stop_tokens_and_max_new_tokens(gpt2):
    prompts = random_prompts(4, seed=2)
    free = fastgen.generate(gpt2, prompts, SamplingParams(max_new_tokens=10), eos_token_ids=[])
    assert all(len(o.token_ids) == 10 and o.finish_reason == "length" for o in free)
    stop = free[0].token_ids[4]  # a token prompt 0 produces at step 5: it must end there
    outs = fastgen.generate(gpt2, prompts, SamplingParams(max_new_tokens=10, stop_token_ids=(stop,)),
                            eos_token_ids=[])
    first = free[0].token_ids.index(stop)
    assert outs[0] == GenerationOutput(free[0].token_ids[:first + 1], "stop", len(prompts[0]))
    for out, ref in zip(outs, free):  # every row stops at its first `stop` or runs to the limit
        cut = ref.token_ids.index(stop) + 1 if stop in ref.token_ids else 10
        assert out.token_ids == ref.token_ids[:cut]
        assert out.finish_reason == ("stop" if stop in ref.token_ids else "length")
    one = fastgen.generate(gpt2, prompts, SamplingParams(max_new_tokens=1), eos_token_ids=[])
    assert [o.token_ids for o in one] == [o.token_ids[:1] for o in free]


def test_gpt2_seeded_sampling(gpt2):
    prompts = random_prompts(6, seed=3)
    params = SamplingParams(max_new_tokens=16, temperature=1.0, top_k=50, top_p=0.95)
    seeds = [11, 12, 13, 14, 15, 16]
    together = fastgen.generate(gpt2, prompts, params, seeds=seeds, batch_size=2)
    alone = [fastgen.generate(gpt2, [p], params, seeds=[s])[0] for p, s in zip(prompts, seeds)]
    assert together == alone
    reseeded = fastgen.generate(gpt2, prompts, params, seeds=[s + 100 for s in seeds], batch_size=4)
    assert [o.token_ids for o in reseeded] != [o.token_ids for o in together]


def test_sampling_with_top_k_1_is_greedy(gpt2):
    prompts = random_prompts(3, seed=4)
    greedy = fastgen.generate(gpt2, prompts, SamplingParams(max_new_tokens=8))
    top1 = fastgen.generate(gpt2, prompts, SamplingParams(max_new_tokens=8, temperature=2.0, top_k=1),
                            seeds=[1, 2, 3])
    assert greedy == top1


def test_fallback_for_sliding_window_models():
    """A sliding-window cache is not what the buffer models: HF generate runs instead, same outputs."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, sliding_window=8,
                           eos_token_id=EOS, bos_token_id=EOS, pad_token_id=0, initializer_range=0.3)
    model = MistralForCausalLM(config).eval()
    assert not fastgen.supports_fast_path(model)
    prompts = random_prompts(3, seed=5)
    stats = {}
    outs = fastgen.generate(model, prompts, SamplingParams(max_new_tokens=6), batch_size=2, stats=stats)
    assert stats["fallback"]
    assert [o.token_ids for o in outs] == [hf_greedy(model, p, 6, [EOS]) for p in prompts]


# ----------------------------------------------------------------------------- out of memory

def test_oom_halves_batch_and_finishes(gpt2, caplog):
    prompts = random_prompts(10, seed=6)
    params = SamplingParams(max_new_tokens=8, temperature=0.9)
    seeds = list(range(10))
    expected = fastgen.generate(gpt2, prompts, params, seeds=seeds, batch_size=8)
    flaky, stats = FlakyMemory(gpt2, max_rows=4), {}
    outs = fastgen.generate(flaky, prompts, params, seeds=seeds, batch_size=8, stats=stats)
    assert flaky.failed and stats["batch_size"] == 4 and flaky.rows_after_failure <= 4
    assert outs == expected  # restarted rows re-seed their generators: same samples
    assert "batch_size=4" in caplog.text


def test_oom_mid_run_keeps_finished_outputs(gpt2):
    prompts = random_prompts(10, seed=7)
    params = SamplingParams(max_new_tokens=8)
    expected = fastgen.generate(gpt2, prompts, params, batch_size=4)
    flaky, stats = FlakyMemory(gpt2, fail_on_call=12, message="out of memory"), {}
    assert fastgen.generate(flaky, prompts, params, batch_size=4, stats=stats) == expected
    assert flaky.failed and stats["batch_size"] == 2


def test_oom_at_batch_one_and_other_errors_propagate(gpt2):
    with pytest.raises(RuntimeError, match="out of memory"):
        fastgen.generate(FlakyMemory(gpt2, max_rows=0), [[3, 4]], SamplingParams(max_new_tokens=2), batch_size=1)
    with pytest.raises(RuntimeError, match="boom"):
        fastgen.generate(FlakyMemory(gpt2, fail_on_call=1, message="boom"), [[3, 4]], SamplingParams())


def test_run_halving_on_oom_sizes():
    seen = []

    def run(batch_size):
        seen.append(batch_size)
        if batch_size > 3:
            raise RuntimeError("CUDA out of memory")

    assert fastgen.run_halving_on_oom(run, 16) == 2
    assert seen == [16, 8, 4, 2]


# ----------------------------------------------------------------------------- the teacher

@pytest.fixture(scope="module")
def teacher():
    from kdlib.registry import models

    model, tok = models.load_causal_lm(models.TEACHER_ID)
    texts = ["contains no wit , only labored gags",
             "that loves its characters and communicates something rather beautiful about human nature",
             "the greatest musicians",
             "remains utterly satisfied to remain the same throughout"]
    asks = ["Is this review positive or negative? Answer with one word.\n\n{}",
            "Rewrite this as one polite sentence: {}"]
    prompts = [tok.apply_chat_template([{"role": "user", "content": asks[i % 2].format(t)}],
                                       add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
               for i, t in enumerate(texts)]
    return model, tok, prompts


@pytest.mark.slow
def test_teacher_greedy_matches_hf(teacher):
    model, tok, prompts = teacher
    outs = fastgen.generate(model, prompts, SamplingParams(max_new_tokens=24), batch_size=3)
    for prompt, out in zip(prompts, outs):
        assert out.token_ids == hf_greedy(model, prompt, 24, [tok.eos_token_id])
        assert out.finish_reason == ("stop" if out.token_ids[-1] == tok.eos_token_id else "length")


@pytest.mark.slow
def test_teacher_seed_independent_of_batch(teacher):
    model, _, prompts = teacher
    params = SamplingParams(max_new_tokens=16, temperature=0.8)
    target = prompts[1]  # an open-ended rewrite: two seeds agreeing on 16 tokens would be a fluke
    others = [prompts[0], prompts[2], prompts[3], prompts[0], prompts[2]]
    alone = fastgen.generate(model, [target], params, seeds=[1234])[0]
    mixed = fastgen.generate(model, others[:2] + [target] + others[2:], params,
                             seeds=[1, 2, 1234, 3, 4, 5], batch_size=4)
    assert mixed[2] == alone
    other_seed = fastgen.generate(model, [target], params, seeds=[4321])[0]
    assert other_seed.token_ids != alone.token_ids


def test_no_prompts(gpt2):
    assert fastgen.generate(gpt2, [], SamplingParams()) == []

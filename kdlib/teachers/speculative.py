"""Speculative (assisted) greedy decoding: a cheap drafter proposes tokens, the target verifies them.

Each step the drafter proposes up to k tokens; one target forward over [last token, d_1..d_k] yields the
target's own greedy choice at every position. The longest prefix of the draft that matches is kept, plus
the target's token at the first mismatch (or a bonus token when all k match). The output is therefore the
target's greedy output, token for token; only the number of target forwards changes. Stats say how many
draft tokens were accepted, which is what a distilled drafter should improve.

Drafters:
- `ModelDrafter`: a smaller LM sharing the tokenizer (e.g. a layer-truncated teacher, before or after
  distillation with the reverse-KL trainers), decoding greedily with its own KV cache.
- `PromptLookupDrafter`: no model; copies the tokens that followed the last occurrence of the current
  n-gram earlier in the context (Saxena 2023). It shines when outputs copy the prompt, as in NER labelling.

Batch size 1 by design: acceptance differs per row, and that is the latency regime where drafting pays.
For throughput over many prompts use `kdlib.teachers.fastgen`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch


@dataclass
class SpecStats:
    proposed: int = 0         # draft tokens offered to the target
    accepted: int = 0         # of which the target agreed with
    target_calls: int = 0     # target forwards, prefill included
    new_tokens: int = 0
    wall_s: float = 0.0
    per_step: list[int] = field(default_factory=list)   # accepted tokens per verify step

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_call(self) -> float:
        """New tokens per target forward after the prefill (1.0 for plain decoding)."""
        calls = self.target_calls - 1
        return self.new_tokens / calls if calls > 0 else 0.0

    def merge(self, other: SpecStats) -> SpecStats:
        return SpecStats(self.proposed + other.proposed, self.accepted + other.accepted,
                         self.target_calls + other.target_calls, self.new_tokens + other.new_tokens,
                         self.wall_s + other.wall_s, self.per_step + other.per_step)


class _CachedLM:
    """A causal LM with a KV cache over a known token prefix; feeding returns logits of the new tokens."""

    def __init__(self, model):
        self.model, self.cache, self.tokens = model, None, []
        self.device = next(model.parameters()).device

    def feed(self, tokens: list[int]) -> torch.Tensor:
        ids = torch.tensor([tokens], device=self.device)
        out = self.model(input_ids=ids, past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        self.tokens = self.tokens + list(tokens)
        return out.logits[0]

    def rewind(self, length: int) -> None:
        if length < len(self.tokens):
            self.cache.crop(length - len(self.tokens))  # transformers 5: a negative count removes tokens
            self.tokens = self.tokens[:length]

    def sync(self, context: list[int]) -> torch.Tensor:
        """Make the cache hold `context`; returns the logits after its last token."""
        common = 0
        for a, b in zip(self.tokens, context):
            if a != b:
                break
            common += 1
        common = min(common, len(context) - 1)  # always feed at least one token to get its logits
        self.rewind(common)
        return self.feed(context[common:])[-1]


class ModelDrafter:
    """Greedy drafts from a smaller model that shares the target's tokenizer."""

    def __init__(self, model):
        self.lm = _CachedLM(model)

    def reset(self) -> None:
        self.lm = _CachedLM(self.lm.model)

    def propose(self, context: list[int], k: int) -> list[int]:
        logits = self.lm.sync(context)
        draft = []
        for i in range(k):
            tok = int(logits.argmax())
            draft.append(tok)
            if i + 1 < k:
                logits = self.lm.feed([tok])[-1]
        return draft


class PromptLookupDrafter:
    """Copy the continuation of the most recent earlier match of the context's last n-gram."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def reset(self) -> None:
        pass

    def propose(self, context: list[int], k: int) -> list[int]:
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            if len(context) <= n:
                continue
            tail = context[-n:]
            for start in range(len(context) - n - 1, -1, -1):  # most recent match first
                if context[start:start + n] == tail:
                    follow = context[start + n:start + n + k]
                    if follow:
                        return follow
        return []


@torch.inference_mode()
def generate(target, prompt: list[int], max_new_tokens: int, drafter=None, k: int = 4,
             stop_ids=()) -> tuple[list[int], str, SpecStats]:
    """Greedy decoding of `target` from `prompt`, assisted by `drafter` (None: plain, one token per forward).

    Returns (new token ids including a final stop token if hit, finish reason, stats).
    """
    if k < 1:
        raise ValueError(f"k (draft length) must be >= 1, got {k}")
    if not prompt:
        raise ValueError("the prompt is empty: speculative decoding needs at least one token")
    start = time.perf_counter()
    stops, stats = frozenset(stop_ids), SpecStats()
    lm = _CachedLM(target)
    if drafter is not None:
        drafter.reset()
    logits = lm.feed(list(prompt[:-1]))[-1] if len(prompt) > 1 else None
    stats.target_calls += 1 if len(prompt) > 1 else 0
    context, out = list(prompt), []
    while len(out) < max_new_tokens:
        budget = max_new_tokens - len(out)
        draft = drafter.propose(context, min(k, budget)) if drafter is not None else []
        draft = draft[:max(0, budget - 1)]  # the target adds one token of its own
        logits = lm.feed([context[-1]] + draft)
        stats.target_calls += 1
        choices = logits.argmax(-1).tolist()
        n = 0
        while n < len(draft) and draft[n] == choices[n]:
            n += 1
        new = draft[:n] + [choices[n]]
        lm.rewind(len(context) + n)  # drop the rejected drafts; the cache now holds context + accepted
        stats.proposed += len(draft)
        stats.accepted += n
        if drafter is not None:
            stats.per_step.append(n)
        for tok in new:
            out.append(tok)
            context.append(tok)
            if tok in stops:
                stats.new_tokens, stats.wall_s = len(out), time.perf_counter() - start
                return out, "stop", stats
            if len(out) >= max_new_tokens:
                break
    stats.new_tokens, stats.wall_s = len(out), time.perf_counter() - start
    return out, "length", stats


def measure(target, prompts: list[list[int]], max_new_tokens: int, drafter=None, k: int = 4, stop_ids=()
            ) -> tuple[list[list[int]], SpecStats]:
    """`generate` over several prompts one at a time: (outputs, summed stats)."""
    total, outs = SpecStats(), []
    for prompt in prompts:
        out, _, stats = generate(target, prompt, max_new_tokens, drafter=drafter, k=k, stop_ids=stop_ids)
        outs.append(out)
        total = total.merge(stats)
    return outs, total


def compare_drafters(target, prompt_sets: dict[str, list[list[int]]], drafters: dict, max_new_tokens: int,
                     k: int = 4, stop_ids=()):
    """Plain greedy vs each drafter on each named set of prompts (batch 1): a frame with acceptance rate,
    tokens per target call, wall-time speed-up and the share of outputs identical to plain greedy."""
    import pandas as pd

    rows = []
    for task, prompts in prompt_sets.items():
        plain_outs, plain = measure(target, prompts, max_new_tokens, stop_ids=stop_ids)
        for name, drafter in drafters.items():
            outs, st = measure(target, prompts, max_new_tokens, drafter=drafter, k=k, stop_ids=stop_ids)
            rows.append({"task": task, "drafter": name, "acceptance_rate": st.acceptance_rate,
                         "tokens_per_target_call": st.tokens_per_call, "speedup": plain.wall_s / st.wall_s,
                         "identical_to_plain": sum(a == b for a, b in zip(outs, plain_outs)) / len(prompts)})
    return pd.DataFrame(rows)

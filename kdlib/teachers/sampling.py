"""How the next token is picked: the decoding recipe (`SamplingParams`: temperature, top-k, top-p, min-p,
typical, entropy-adaptive temperature), the output type, and the pure functions that turn a row's logits into
its next token — greedy or drawn from one seeded generator per row, optionally restricted to what a grammar
allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

# ----------------------------------------------------------------------------- public types

@dataclass
class SamplingParams:
    """How to pick tokens. temperature 0 is greedy (argmax); the filters only apply when sampling."""

    max_new_tokens: int = 64
    temperature: float = 0.0        # 0 => greedy
    top_p: float = 1.0
    top_k: int = 0                  # 0 => off
    min_p: float = 0.0              # 0 => off
    typical_p: float = 1.0          # locally typical sampling (Meister et al. 2023); 1 => off
    adaptive_temperature: float = 0.0  # entropy exponent a: see `row_temperatures`; 0 => off
    stop_token_ids: tuple[int, ...] = ()   # in addition to the tokenizer's eos

    def __post_init__(self):
        _check_int("max_new_tokens", self.max_new_tokens, minimum=1)
        _check_float("temperature", self.temperature, "must be >= 0 (0 means greedy)", lambda v: v >= 0)
        _check_float("top_p", self.top_p, "must be in (0, 1]", lambda v: 0 < v <= 1)
        _check_int("top_k", self.top_k, minimum=0)
        _check_float("min_p", self.min_p, "must be in [0, 1]", lambda v: 0 <= v <= 1)
        _check_float("typical_p", self.typical_p, "must be in (0, 1]", lambda v: 0 < v <= 1)
        _check_float("adaptive_temperature", self.adaptive_temperature, "must be in [-4, 4]",
                     lambda v: -4 <= v <= 4)
        if isinstance(self.stop_token_ids, (str, bytes)) or not hasattr(self.stop_token_ids, "__iter__"):
            raise ValueError(f"stop_token_ids must be a sequence of token ids, got {self.stop_token_ids!r}")
        self.stop_token_ids = tuple(self.stop_token_ids)
        for tid in self.stop_token_ids:
            _check_int("stop_token_ids", tid, minimum=0)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class GenerationOutput:
    token_ids: list[int]      # generated ids, without the prompt, without trailing pad; includes the stop token if one was hit
    finish_reason: str        # "stop" or "length"
    prompt_tokens: int


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_float(name: str, value, rule: str, ok: Callable[[float], bool]) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name} {rule}, got {value!r}")


# ----------------------------------------------------------------------------- token selection

def select_tokens(logits: torch.Tensor, params: SamplingParams, generators: list[torch.Generator]) -> torch.Tensor:
    """Next token per row of `logits` [rows, vocab]: argmax, or one draw from each row's own generator."""
    if params.greedy:
        return logits.argmax(-1)
    return draw(sampling_probs(logits, params), generators)


def draw(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row of unnormalised `probs` [rows, vocab], each from its row's own generator."""
    # One uniform per row from that row's generator, then inverse-CDF sampling: the draw a row consumes
    # does not depend on the other rows, which is what makes samples independent of batch composition.
    u = torch.stack([torch.rand((), generator=g, device=probs.device) for g in generators])
    cdf = probs.double().cumsum(-1)  # float64: the last entry is a faithful total over a large vocabulary
    target = (u.double() * cdf[:, -1]).unsqueeze(-1)
    # right=True returns the first index whose cdf exceeds the target: never a zero-probability token.
    picked = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return picked.clamp_(max=probs.shape[-1] - 1)


def select_constrained(logits: torch.Tensor, params: SamplingParams, rows: list) -> torch.Tensor:
    """`select_tokens`, then rows with a grammar whose pick it does not allow pick again among the allowed
    tokens (`kdlib.teachers.structured.constrain`: exactly constrained greedy / sampling). Rows: `_Row`s."""
    picked = select_tokens(logits, params, [r.generator for r in rows])
    matchers = [r.matcher for r in rows]
    if all(m is None for m in matchers):
        return picked
    from kdlib.teachers.structured import constrain

    def repick(idx: list[int], masked: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        if params.greedy:
            return masked.argmax(-1)
        probs = sampling_probs(logits.index_select(0, torch.tensor(idx, device=logits.device)), params) * allowed
        empty = probs.sum(-1) == 0   # the filters (top-p, min-p, ...) cut every allowed token: filter the masked ones
        if empty.any():
            probs[empty] = sampling_probs(masked[empty], params)
        return draw(probs, [rows[i].generator for i in idx])

    return constrain(logits, picked, matchers, repick)


def sampling_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Unnormalised probabilities after temperature, top-k, top-p, min-p and typical-p (HF's order);
    filtered tokens are 0."""
    scores = logits.float() / row_temperatures(logits, params)
    if params.top_k and params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_p.cumsum(-1) - sorted_p
        drop_sorted = mass_before >= params.top_p  # keep tokens until the kept mass reaches top_p; the top one always
        probs = probs.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), 0.0)
    if params.min_p > 0:
        floor = params.min_p * probs.max(dim=-1, keepdim=True).values
        probs = probs.masked_fill(probs < floor, 0.0)
    if params.typical_p < 1.0:
        probs = typical_filter(probs, params.typical_p)
    return probs


# Entropy (nats) at which the adaptive temperature equals the base one, and the clamp on H / H_REF: an
# answer-like next token sits well under 1 nat, free text around 2-4 nats for a small instruct model.
ADAPTIVE_H_REF = 1.0
_ADAPTIVE_RATIO = (1 / 16, 4.0)


def row_temperatures(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor | float:
    """Per-row temperature [rows, 1]: T * clamp(H / 1 nat, 1/16, 4) ** a, H the row's entropy at T=1.

    a > 0 sharpens where the model is confident (low entropy) and frees it where it is unsure, like
    entropy-based dynamic temperature (EDT, Zhang et al. 2024); a < 0 is the reverse: it explores more
    where the model is confident and commits where it is unsure. a = 0 is plain temperature T.
    """
    if params.adaptive_temperature == 0:
        return params.temperature
    logp = torch.log_softmax(logits.float(), dim=-1)
    plogp = torch.where(logp > float("-inf"), logp.exp() * logp, torch.zeros_like(logp))  # masked tokens add 0
    h = -plogp.sum(-1, keepdim=True)
    ratio = (h / ADAPTIVE_H_REF).clamp(*_ADAPTIVE_RATIO)
    return params.temperature * ratio ** params.adaptive_temperature


def typical_filter(probs: torch.Tensor, mass: float) -> torch.Tensor:
    """Keep the tokens whose surprisal is closest to the row's entropy until they hold `mass`."""
    total = probs.sum(-1, keepdim=True)
    p = probs / total
    logp = torch.log(p.clamp_min(1e-30))
    h = -(p * logp).sum(-1, keepdim=True)
    distance = (-logp - h).abs().masked_fill(p == 0, float("inf"))
    order = distance.argsort(dim=-1)
    sorted_p = p.gather(-1, order)
    mass_before = sorted_p.cumsum(-1) - sorted_p
    drop_sorted = mass_before >= mass  # the most typical token is always kept
    return probs.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), 0.0)

"""Named decoding strategies for labelling and generation, and best-of-n selection.

A strategy is a small dict of `kdlib.teachers.api.GenParams` knobs, so it goes anywhere a teacher call
takes keyword overrides (`labeling.annotate_generate(decoding=...)`, `synth.synthesize(decoding=...)`,
`teacher.generate(**strategy(...))`). The knobs themselves live in the teacher layer:

- temperature / top-p / top-k / min-p / typical-p sampling (`kdlib.teachers.sampling.sampling_probs`);
- entropy-adaptive temperature (`kdlib.teachers.sampling.row_temperatures`);
- contrastive decoding against an amateur (`kdlib.teachers.contrastive`; the teacher needs ``amateur=``).

Best-of-n (`best_of_n`, or ``synthesize(best_of=...)``) draws n candidates and keeps the one a scorer
likes best: the student's confidence in the intended label (`confidence_scorer`), the teacher's own
likelihood (`likelihood_scores`), or any verifier. Self-consistency voting for labels is
`labeling.annotate_generate(n=...)`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

_STRATEGIES = {
    "greedy": {"temperature": 0.0},
    "sampling": {},
    "top_p": {"top_p": 0.9},
    "min_p": {"min_p": 0.1},
    "typical": {"typical_p": 0.9},
    "adaptive_sharp_when_sure": {"adaptive_temperature": 1.0},    # EDT-like
    "adaptive_sharp_when_unsure": {"adaptive_temperature": -1.0},  # the reverse
    "contrastive": {"contrastive": 0.5, "contrastive_alpha": 0.1},
}
STRATEGIES = tuple(_STRATEGIES)
# "<strategy> [structured]": the same knobs, with the answer constrained to the recipe's grammar (the
# recipes take `structured=`; see `kdlib.teachers.structured`).
STRUCTURED = " [structured]"


def is_structured(name: str) -> bool:
    return name.endswith(STRUCTURED)


def check_strategies(names) -> None:
    """Fail before any work on the first unknown strategy name, naming it and the nearest known one."""
    for name in names:
        strategy(name)


def needs_logits(name: str) -> bool:
    """True when the strategy reads the next-token distribution (impossible through an OpenAI-compatible API)."""
    knobs = strategy(name)
    return knobs.get("contrastive", 0) > 0 or knobs.get("adaptive_temperature", 0) != 0


def strategy(name: str, temperature: float = 0.7) -> dict:
    """GenParams knobs of a named strategy at a sampling temperature (greedy ignores it; contrastive
    decodes greedily on its scores at temperature 0 and samples from them otherwise). A "[structured]"
    name has its base strategy's knobs."""
    name = name[:-len(STRUCTURED)] if is_structured(name) else name
    if name not in _STRATEGIES:
        near = difflib.get_close_matches(name, STRATEGIES, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"unknown decoding strategy {name!r}{hint} (known: {', '.join(STRATEGIES)})")
    knobs = dict(_STRATEGIES[name])
    knobs.setdefault("temperature", temperature)
    return knobs


@dataclass(frozen=True)
class BestOfN:
    texts: list[str]            # the chosen candidate per prompt
    scores: np.ndarray          # [prompts, n] scorer values of every candidate
    chosen: np.ndarray          # [prompts] index of the chosen candidate
    candidates: list[list[str]]
    tokens: int                 # prompt + completion tokens of all candidates (what an API bills)


def best_of_n(teacher, prompts: Sequence, n: int, scorer: Callable[[int, list[str]], Sequence[float]],
              seed: int = 0, **knobs) -> BestOfN:
    """n sampled candidates per prompt; keep the argmax of ``scorer(prompt_index, candidates)``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    knobs.setdefault("temperature", 0.7)
    outs = teacher.generate(list(prompts), n=n, seed=seed, **knobs)
    cands = [[c.text for c in outs[i * n:(i + 1) * n]] for i in range(len(prompts))]
    scores = np.array([np.asarray(scorer(i, c), dtype=np.float64) for i, c in enumerate(cands)]).reshape(len(cands), n)
    if np.isnan(scores).any():
        raise ValueError("the best-of-n scorer returned NaN: it must score every candidate")
    chosen = scores.argmax(1)
    return BestOfN([c[j] for c, j in zip(cands, chosen)], scores, chosen, cands,
                   sum(c.prompt_tokens + c.completion_tokens for c in outs))


def likelihood_scores(judge, prompt, candidates: Sequence[str]) -> list[float]:
    """Mean per-token log-likelihood of each candidate under a judge teacher (length-normalised, so
    short candidates get no free advantage). Empty candidates score -inf."""
    scores = [float("-inf")] * len(candidates)
    keep = [i for i, c in enumerate(candidates) if c.strip()]
    if keep:
        for i, s in zip(keep, judge.score(prompt, [candidates[i] for i in keep])):
            scores[i] = s.mean_logprob
    return scores


def confidence_scorer(classifier, label_names: Sequence[str], min_chars: int = 10) -> Callable[[str, str], float]:
    """``scorer(label, output)`` for `synth.synthesize(best_of=...)`: the classifier's mean probability
    of the intended label over the texts the output parses into (0 when nothing parses)."""
    from kdlib.parsing.classification import parse_classification, split_inline_list

    names = list(label_names)
    if list(classifier.label_names) != names:
        raise ValueError(f"the scorer's classifier predicts {classifier.label_names}, the task has {names}")

    def score(label: str, output: str) -> float:
        rows = parse_classification([split_inline_list(output)], names, default_label=label, min_chars=min_chars).kept
        texts = [r["text"] for r in rows if r["label"] == label]
        if not texts:
            return 0.0
        return float(classifier.predict_proba(texts)[:, names.index(label)].mean())
    return score

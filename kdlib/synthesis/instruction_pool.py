"""Self-LLMDA (Li et al., 2024, "Empowering LLMs for textual data augmentation"): grow a pool of
augmentation *instructions* with the teacher, then learn which ones help the target task.

1. `grow`: Self-Instruct-style bootstrapping. Each request shows 3 instructions drawn from the
   pool and asks for new ones; candidates pass a length check, a "reads like a rewriting
   instruction" check and the ROUGE-L novelty filter against the pool before they join it.
2. Utility: the notebook applies a *probe* subset of the pool to the few-shot data and measures
   each instruction's gain on a dev split carved from validation (never test).
3. `predict_utility`: a small selection model predicts the gain of unmeasured instructions from
   their sentence embeddings: Nadaraya-Watson kernel regression, a softmax over cosine
   similarity to the probes (with few probes a linear model on 384-d embeddings would only
   memorise). `loo_predictions` tells whether it predicts anything at all.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kdlib.parsing.classification import parse_classification, split_inline_list
from kdlib.parsing.dedup import novelty_filter
from kdlib.parsing.parse import ParseReport

SEED_INSTRUCTIONS = (
    "Rephrase the text below in other words, keeping its meaning.",
    "Rewrite the text below in a more formal style.",
    "Rewrite the text below as a casual message to a friend.",
    "Make the text below shorter without changing what it says.",
    "Add one plausible detail to the text below without changing its meaning.",
    "Replace some words of the text below with synonyms.",
)
# A rewriting instruction names what to do with the text; a 135M teacher often writes anything else.
_INSTRUCTION_WORDS = re.compile(r"\b(text|sentence|rewrite|rephrase|paraphrase|reword|replace|add|make|change|"
                                r"translate|summari[sz]e|shorten|expand|turn|convert|use|write)\b", re.I)

_ECHO = re.compile(r"\binstructions?\b|numbered list|training examples", re.I)


def grow_prompt(shown: Sequence[str], n: int) -> list[dict]:
    lines = ["Here are instructions for rewriting a text to create new training examples for a text classifier:"]
    lines += [f"{i}. {s}" for i, s in enumerate(shown, 1)]
    lines.append(f"Write {n} new instructions of the same kind, each different from the ones above. "
                 "Answer with a numbered list, one instruction per line, and nothing else.")
    return [{"role": "user", "content": "\n".join(lines)}]


@dataclass
class Pool:
    instructions: list[str]      # seeds first, then accepted candidates in order
    n_seeds: int
    report: ParseReport          # every candidate line: kept or rejected with a reason
    tokens: int = 0              # teacher tokens (cache hits included)
    tokens_spent: int = 0
    rounds: int = 0

    @property
    def generated(self) -> list[str]:
        return self.instructions[self.n_seeds:]


def augmentation_check(text: str) -> str | None:
    """Why a candidate is not an augmentation instruction (a rejection reason), or None if it is one."""
    if _ECHO.search(text):
        return "echoes_the_request"  # "Write 5 more instructions of the same kind"
    return None if _INSTRUCTION_WORDS.search(text) else "not_an_instruction"


def _candidates(outputs: Sequence[str], min_chars: int, max_chars: int,
                check: Callable[[str], str | None] = augmentation_check) -> ParseReport:
    report = parse_classification([split_inline_list(o) for o in outputs], ["instruction"],
                                  default_label="instruction", min_chars=min_chars, max_chars=max_chars)
    kept = []
    for row in report.kept:
        reason = check(row["text"])
        if reason:
            report.reject(row["text"], reason)
        else:
            kept.append(row["text"])
    report.kept = kept
    return report


def grow(teacher, seeds: Sequence[str] = SEED_INSTRUCTIONS, size: int = 16, *, per_request: int = 5,
         requests_per_round: int = 4, max_rounds: int = 4, seed: int = 0, temperature: float = 1.0,
         top_p: float = 0.95, max_new_tokens: int = 160, novelty: float = 0.7, min_chars: int = 20,
         max_chars: int = 200, shown: int = 3,
         make_prompt: Callable[[Sequence[str], int], list[dict]] | None = None,
         check: Callable[[str], str | None] = augmentation_check) -> Pool:
    """Grow the pool from `seeds` to `size` instructions (fewer if `max_rounds` runs out).

    Each request shows `shown` pool members through `make_prompt(shown, per_request)` (default:
    `grow_prompt`, augmentation instructions); `check(candidate)` returns a rejection reason or
    None. Self-Instruct task generation passes its own prompt and check (see `kdlib.synthesis.self_instruct`).
    """
    make_prompt = make_prompt or grow_prompt
    if len(seeds) < 1 or size < len(seeds):
        raise ValueError(f"need at least one seed instruction and size >= {len(seeds)}, got size={size}")
    t = teacher.with_cache(teacher.cache)
    rng = random.Random(seed)
    pool, report, tokens, rounds = list(seeds), ParseReport(), 0, 0
    while len(pool) < size and rounds < max_rounds:
        rounds += 1
        prompts = [make_prompt(rng.sample(pool, min(shown, len(pool))), per_request) for _ in range(requests_per_round)]
        outs = t.generate(prompts, n=1, seed=seed + rounds, temperature=temperature, top_p=top_p,
                          max_new_tokens=max_new_tokens)
        tokens += sum(c.prompt_tokens + c.completion_tokens for c in outs)
        found = _candidates([c.text for c in outs], min_chars, max_chars, check)
        novel, filtered = novelty_filter(found.kept, pool, threshold=novelty, key=lambda s: s)
        pool += novel[:size - len(pool)]
        report = report.merge(found.then(filtered))
    report.n_inputs = len(report.kept) + len(report.rejected)
    return Pool(pool, len(seeds), report, tokens, t.tokens_spent(), rounds)


# ----------------------------------------------------------------------------- the selection model

def predict_utility(train_emb, train_y, query_emb, temperature: float = 0.05) -> np.ndarray:
    """Kernel-regression prediction for each query row: sum_i w_i y_i with w = softmax(cos(q, x_i) / T).

    Rows of the embedding arrays must be unit length (cosine = dot product). A small `temperature`
    trusts the nearest probe; a large one predicts the probes' mean for everything.
    """
    x, q = np.asarray(train_emb, dtype=np.float64), np.asarray(query_emb, dtype=np.float64)
    y = np.asarray(train_y, dtype=np.float64)
    if x.ndim != 2 or q.ndim != 2 or x.shape[0] != len(y) or x.shape[1] != q.shape[1] or len(y) == 0:
        raise ValueError(f"shapes do not fit: train {x.shape}, targets {y.shape}, query {q.shape}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = q @ x.T / temperature
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (w / w.sum(axis=1, keepdims=True)) @ y


def loo_predictions(emb, y, temperature: float = 0.05) -> np.ndarray:
    """Leave-one-out predictions of `predict_utility` over the measured instructions."""
    emb, y = np.asarray(emb), np.asarray(y, dtype=np.float64)
    if len(y) < 2:
        raise ValueError("leave-one-out needs at least 2 measured instructions")
    idx = np.arange(len(y))
    return np.array([predict_utility(emb[idx != i], y[idx != i], emb[i:i + 1], temperature)[0] for i in idx])


@dataclass
class Selection:
    """Self-LLMDA's choice: probes measured on dev, the model's predictions for the rest, and what it picked."""
    probes: list[str]
    utility: list[float]          # measured dev macro-F1 gain of each probe over the gold-only student
    candidates: list[str]
    predicted: np.ndarray         # predicted gain of each candidate
    loo: np.ndarray               # leave-one-out predictions for the probes
    rho: float                    # their Spearman correlation with the measured gains (NaN if gains are flat)
    selected: list[str]           # the `k` candidates with the highest predicted gain
    random_pick: list[str]        # `k` candidates at random (the baseline)
    base_dev: float               # the gold-only student's dev macro-F1
    probe_sets: dict              # instruction -> its rewrites of the gold rows (SynthResult)

    @property
    def probe_tokens(self) -> int:
        return sum(r.tokens for r in self.probe_sets.values())


def select(rewriter, pool: Pool, gold: Sequence[dict], spec, dev, config, label_names: Sequence[str], *, k: int,
           probe_fraction: float, temperature: float, seed: int = 0, device: str = "cpu",
           rewrite: dict | None = None) -> Selection:
    """Self-LLMDA: apply a seeded `probe_fraction` of the pool's instructions to the gold rows, measure each one's
    dev gain with a student, fit the embedding-kernel model on those gains, and select the `k` candidates it
    predicts best (and `k` at random, with the same seeded generator, as the baseline). `rewrite`: keywords of
    `reform.with_instruction` (n, seed, temperature, ...)."""
    from scipy.stats import spearmanr

    from kdlib.registry import models
    from kdlib.students.student import train_classifier
    from kdlib.synthesis import reform

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool.instructions)).tolist()
    n_probe = min(len(order) - k, max(2, int(round(probe_fraction * len(order)))))
    if n_probe < 2:
        raise ValueError(f"pool of {len(pool.instructions)} instructions is too small to probe 2 and select {k}")
    probes, candidates = [pool.instructions[i] for i in order[:n_probe]], [pool.instructions[i] for i in order[n_probe:]]

    def dev_f1(rows):
        return train_classifier(rows, None, config, label_names=list(label_names)).evaluate(dev)["macro_f1"]

    base_dev, probe_sets, utility = dev_f1(list(gold)), {}, []
    for instr in probes:
        probe_sets[instr] = reform.with_instruction(rewriter, spec, gold, instr, **(rewrite or {}))
        utility.append(dev_f1(list(gold) + probe_sets[instr].rows) - base_dev)
    emb = models.sentence_embeddings(pool.instructions, device=device)
    index = {s: i for i, s in enumerate(pool.instructions)}
    probe_emb, cand_emb = emb[[index[p] for p in probes]], emb[[index[c] for c in candidates]]
    predicted = predict_utility(probe_emb, utility, cand_emb, temperature)
    loo = loo_predictions(probe_emb, utility, temperature)
    rho = float(spearmanr(loo, utility).statistic) if np.std(utility) > 0 else float("nan")
    selected = [candidates[i] for i in np.argsort(-predicted)[:k]]
    random_pick = [candidates[i] for i in rng.choice(len(candidates), size=min(k, len(candidates)), replace=False)]
    return Selection(probes, utility, candidates, predicted, loo, rho, selected, random_pick, base_dev, probe_sets)

"""Data reformation with a teacher: rewrite labelled texts by an instruction (the survey's *data reformation*).

- **Paraphrase** (AugGPT, Dai et al., 2023): each text rephrased several ways, label kept.
- **Counterfactual rewriting** (e.g. Polyjuice-style minimal edits, Wu et al., 2021; Sen et al., 2023):
  the text minimally edited so that its label becomes another one; the new label is the target.
- **Any instruction** ("Rewrite it as a tweet.", "Add a detail about the setting."): the unit
  that Self-LLMDA (`kdlib.synthesis.instruction_pool`) grows and selects.

Outputs go through the same parser and filters as synthesis (`kdlib.synthesis.synth.clean_outputs`): a
numbered list per request, exact copies of the source (``seed_copy``), duplicates and test leaks
are dropped and counted. Cached and seeded like every teacher call.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from kdlib.parsing.classification import split_inline_list
from kdlib.parsing.dedup import dedup
from kdlib.parsing.parse import ParseReport
from kdlib.synthesis.synth import SynthResult, TaskSpec, clean_outputs

PARAPHRASE = "Rephrase the text below in other words. Keep its meaning, its tone and its opinion."


def counterfactual_instruction(spec: TaskSpec, target: str) -> str:
    """Minimal edit that makes the text one of `target`."""
    return (f"Rewrite the text below, {spec.text_kind}, so that it {spec.label_descriptions[target]}. "
            "Change as few words as possible.")


def rewrite_prompt(instruction: str, text: str, n: int) -> list[dict]:
    """One chat request: the instruction, the text, and `n` rewrites wanted as a numbered list."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [{"role": "user", "content": f"{instruction.strip()}\n\nText: {text}\n\n"
             f"Write {n} different versions as a numbered list, one per line, and nothing else."}]


def counterfactual_target(label: str, label_names: Sequence[str], rng: random.Random) -> str:
    """The label a counterfactual of `label` aims at: another label, chosen at random."""
    others = [lab for lab in label_names if lab != label]
    if not others:
        raise ValueError("counterfactuals need at least two labels")
    return rng.choice(others)


def rewrite(teacher, spec: TaskSpec, rows: Sequence[dict], plan: Callable[[dict], tuple[str, str]], *,
            n: int = 3, seed: int = 0, temperature: float = 0.9, top_p: float = 0.95, max_new_tokens: int = 160,
            against: Sequence[str] = (), near_threshold: float | None = 0.9, min_chars: int = 10) -> SynthResult:
    """Rewrite every row by ``plan(row) -> (instruction, label of the rewrites)``; one request per row.

    Rewrites equal to any source text are dropped (``seed_copy``); near-duplicate rewrites of
    one another above `near_threshold` (ROUGE-L) too. Returned rows carry their ``source``.
    """
    t = teacher.with_cache(teacher.cache)
    plans = [plan(r) for r in rows]
    prompts = [rewrite_prompt(instr, r["text"], n) for r, (instr, _) in zip(rows, plans)]
    outs = t.generate(prompts, n=1, seed=seed, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    raw = [{"label": lab, "prompt": p, "output": split_inline_list(c.text), "source": r["text"],
            "tokens": c.prompt_tokens + c.completion_tokens}
           for r, (_, lab), p, c in zip(rows, plans, prompts, outs)]
    # parse per request so that each rewrite remembers its source text
    kept, report = [], ParseReport()
    for item in raw:
        mine, rep = clean_outputs([item], spec, [], against, None, min_chars)
        kept += [{**k, "source": item["source"]} for k in mine]
        report = report.merge(rep)
    kept, dup = dedup(kept, near_threshold=near_threshold, against=[{"text": r["text"]} for r in rows],
                      against_reason="seed_copy")
    report = report.then(dup)
    return SynthResult(kept, report, raw, sum(r["tokens"] for r in raw), t.tokens_spent(), rounds=1)


def paraphrase(teacher, spec: TaskSpec, rows: Sequence[dict], **kw) -> SynthResult:
    """AugGPT: `n` paraphrases of every row, same label."""
    return rewrite(teacher, spec, rows, lambda r: (PARAPHRASE, r["label"]), **kw)


def counterfactuals(teacher, spec: TaskSpec, rows: Sequence[dict], seed: int = 0, **kw) -> SynthResult:
    """Minimal edits of every row towards another label (seeded choice); rewrites carry the target label."""
    rng = random.Random(seed)
    targets = {id(r): counterfactual_target(r["label"], spec.label_names, rng) for r in rows}
    return rewrite(teacher, spec, rows, lambda r: (counterfactual_instruction(spec, targets[id(r)]),
                                                   targets[id(r)]), seed=seed, **kw)


def with_instruction(teacher, spec: TaskSpec, rows: Sequence[dict], instruction: str, **kw) -> SynthResult:
    """Rewrites of every row by one free-form augmentation instruction, label kept."""
    return rewrite(teacher, spec, rows, lambda r: (instruction, r["label"]), **kw)


def with_instructions(teacher, spec: TaskSpec, rows: Sequence[dict], instructions: Sequence[str], **kw) -> SynthResult:
    """The rewrites of several instructions pooled as one result: rows, rejection report and tokens add up."""
    import functools

    results = [with_instruction(teacher, spec, rows, i, **kw) for i in instructions]
    if not results:
        return SynthResult([], ParseReport())
    return SynthResult([r for res in results for r in res.rows],
                       functools.reduce(lambda a, b: a.merge(b), [res.report for res in results]),
                       tokens=sum(res.tokens for res in results), tokens_spent=sum(res.tokens_spent for res in results))

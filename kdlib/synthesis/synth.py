"""Synthetic labelled data from a teacher: the survey's *general/domain model distillation* recipes.

- **ZeroGen** (Ye et al., 2022): the teacher writes texts for each label from a description of
  the task and the label alone; no real example is shown.
- **Few-shot generation** (e.g. Wang et al., 2021 "Towards Zero-Label Language Learning";
  AttrPrompt / ProGen style): the same request with a few real examples of the label as
  demonstrations.

A request asks for `per_prompt` texts of one label as a numbered list; `parse_classification`
with ``default_label`` reads the list (or any labelled JSON the teacher prefers), `dedup` drops
exact and near duplicates, copies of the seeds (``seed_copy``) and test-set leaks (``test_leak``).
Texts come in rounds: round r asks for more samples of the same prompts (sample indices
continue, so earlier samples are cache hits) until every label has `per_label` texts or
`max_rounds` is reached; classes are then cut to the same size, so the student sees balanced
data whatever the teacher favours. Everything is seeded and cached by the teacher layer: a
re-run costs no teacher call, and a killed run resumes with only the missing samples.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kdlib.parsing.classification import parse_classification, split_inline_list
from kdlib.parsing.dedup import dedup
from kdlib.parsing.parse import ParseReport
from kdlib.synthesis import languages
from kdlib.teachers.structured import chars_within, json_schema, string_budget, texts_schema

# What a text of a known dataset is, and what each label means: better prompts than bare label
# names. Any other dataset gets a generic description from its label names (override with `TaskSpec`).
KNOWN_TASKS = {
    "sst2": ("a one-sentence movie review", {
        "negative": "expresses a negative opinion of the film", "positive": "expresses a positive opinion of the film"}),
    "ag_news": ("a news headline with the first sentence of the article", {
        "World": "is world or international politics news", "Sports": "is sports news",
        "Business": "is business or economy news", "Sci/Tech": "is science or technology news"}),
    "financial_phrasebank": ("a sentence from a financial news article about a company", {
        "negative": "is bad news for the company's investors (falling sales, losses, layoffs)",
        "neutral": "states a fact with no clear positive or negative impact on investors",
        "positive": "is good news for the company's investors (growth, profit, new contracts)"}),
    "nicta_piboso": ("a sentence from the abstract of a medical research paper", {
        "background": "gives background on the medical problem", "population": "describes the patients or participants",
        "intervention": "describes the treatment or intervention studied", "outcome": "reports an outcome or result",
        "study design": "describes the study design (e.g. randomised controlled trial)",
        "other": "is none of background, population, intervention, outcome or study design"}),
}


@dataclass(frozen=True)
class TaskSpec:
    """What the teacher is asked to write: the kind of text and a description of each label, and the language
    the request is worded in (`kdlib.synthesis.languages`; the kind and descriptions must be in it too)."""
    text_kind: str
    label_descriptions: dict[str, str]
    language: str = "en"

    @property
    def label_names(self) -> list[str]:
        return list(self.label_descriptions)

    @classmethod
    def for_dataset(cls, name: str, label_names: Sequence[str]) -> TaskSpec:
        """The known description of a registry dataset (in its language when `languages.KNOWN_TASKS` has it),
        else a generic English one from its label names."""
        if name in languages.KNOWN_TASKS and set(languages.KNOWN_TASKS[name][2]) == set(label_names):
            language, kind, descriptions = languages.KNOWN_TASKS[name]
            return cls(kind, {lab: descriptions[lab] for lab in label_names}, language)
        kind, descriptions = KNOWN_TASKS.get(name, ("a short text", {}))
        if set(descriptions) != set(label_names):  # a user file with other labels: describe by name
            kind, descriptions = ("a short text", {}) if name not in KNOWN_TASKS else (kind, {})
        return cls(kind, {lab: descriptions.get(lab, f"belongs to the category '{lab}'") for lab in label_names})


def generation_prompt(spec: TaskSpec, label: str, per_prompt: int, examples: Sequence[str] = (),
                      style: str = "", structured: bool = False) -> list[dict]:
    """A chat request for `per_prompt` new texts of `label`, as a numbered list (or, `structured`, as the
    JSON object `output_schema` describes, which the local teacher's grammar then enforces).

    `examples` (real texts of the label) turn the zero-shot ZeroGen request into few-shot
    generation; `style` is one more instruction (e.g. EvoKD's easy/hard stance).
    """
    if label not in spec.label_descriptions:
        raise ValueError(f"label {label!r} is not one of {spec.label_names}")
    if per_prompt < 1:
        raise ValueError(f"per_prompt must be >= 1, got {per_prompt}")
    words = languages.prompts(spec.language)
    lines = [words["write"].format(n=per_prompt, kind=spec.text_kind, description=spec.label_descriptions[label])]
    if examples:
        lines.append(words["examples"])
        lines += [f"- {x}" for x in examples]
        lines.append(words["no_copy"])
    if style:
        lines.append(style)
    lines.append(words["json"] if structured else words["list"])
    return [{"role": "user", "content": "\n".join(lines)}]


def output_schema(per_prompt: int, min_chars: int = 10, max_new_tokens: int = 160) -> dict:
    """The JSON schema of a structured generation answer: {"texts": [per_prompt strings]}, each text short
    enough for all of them to fit in `max_new_tokens` (`kdlib.teachers.structured.chars_within`: what a server gets;
    the local grammar also caps each text in tokens, `string_budget`)."""
    longest = max(min_chars + 8, min(240, chars_within(max_new_tokens, per_prompt)))
    return texts_schema(per_prompt, min_chars=min_chars, max_chars=longest)


@dataclass
class SynthResult:
    """Synthetic rows with everything needed to judge them and their cost."""
    rows: list[dict]                    # {"text", "label"} kept, balanced
    report: ParseReport                 # every raw output's fate: kept or rejected with a reason
    raw: list[dict] = field(default_factory=list)  # {"label", "prompt", "output", "tokens"} per teacher sample
    tokens: int = 0                     # teacher tokens this recipe needs (cache hits included)
    tokens_spent: int = 0               # tokens computed in this run (cache misses)
    rounds: int = 0
    requested: int = 0                  # texts asked for: teacher samples x texts per request

    @property
    def parsed(self) -> int:
        """Texts the parser read from the outputs (before the duplicate, seed-copy and test-leak filters)."""
        dropped = sum(v for k, v in self.report.counts.items() if k.startswith(("duplicate", "seed_copy", "test_leak")))
        return len(self.report.kept) + dropped

    @property
    def parse_rate(self) -> float:
        """Parsed texts / requested texts: how much of what was asked for came back in a usable form."""
        return self.parsed / self.requested if self.requested else float("nan")

    def summary(self) -> dict:
        s = self.report.summary()
        return {"n_rows": len(self.rows), "n_outputs": len(self.raw), "rounds": self.rounds,
                "tokens": self.tokens, "rejection_reasons": s["reasons"],
                "per_label": dict(Counter(r["label"] for r in self.rows))}


def synthesize(teacher, spec: TaskSpec, per_label: int, *, examples: dict[str, Sequence[str]] | None = None,
               per_prompt: int = 5, prompts_per_label: int = 1, temperature: float = 1.0, top_p: float = 0.95,
               max_new_tokens: int = 160, max_rounds: int = 4, seed: int = 0, style: str = "",
               against: Sequence[str] = (), near_threshold: float | None = 0.7, min_chars: int = 10,
               decoding: dict | None = None, best_of: int = 1, scorer: Callable[[str, str], float] | None = None,
               structured: bool = False, variants: dict[str, Sequence[str]] | None = None) -> SynthResult:
    """`per_label` synthetic texts for every label of `spec` (fewer if `max_rounds` runs out).

    `examples` maps labels to real texts shown as demonstrations (few-shot) and treated as
    seeds: copies of them are rejected (``seed_copy``). `prompts_per_label` draws that many
    demonstration subsets per label (seeded), so the teacher sees different examples.
    `against` are texts synthetic data must not copy (the test split): ``test_leak``.
    Texts shorter than `min_chars` are dropped (``too_short``: "1.", "201", a lone label).
    `decoding` adds generation knobs (`kdlib.teachers.api.GenParams` names: min_p, typical_p,
    adaptive_temperature, contrastive, ...). With ``best_of > 1`` every sample is the best of that
    many candidates under ``scorer(label, output) -> float`` (`kdlib.teachers.decoding.confidence_scorer`);
    all candidates are billed. `structured` asks for JSON ({"texts": [...]}) and constrains the answer to
    that schema (a local teacher's grammar; an endpoint's response_format where the server honours it,
    else the same parser reads free text): its outputs and cache rows are separate from the free ones.
    `variants` maps a label to extra instruction lines, each a distinct request of that label (AttrPrompt's
    attribute draws, a confusable pair to write near, `kdlib.synthesis.prompting`); the label's samples are
    spread over them.
    """
    if per_label < 1 or max_rounds < 1 or prompts_per_label < 1 or best_of < 1:
        raise ValueError("per_label, max_rounds, prompts_per_label and best_of must be >= 1")
    if best_of > 1 and scorer is None:
        raise ValueError("best_of > 1 needs a scorer(label, output) -> float to pick the best candidate")
    examples = {lab: list(v) for lab, v in (examples or {}).items()}
    unknown = (set(examples) | set(variants or {})) - set(spec.label_names)
    if unknown:
        raise ValueError(f"examples or variants for labels {sorted(unknown)} not in {spec.label_names}")
    t = teacher.with_cache(teacher.cache)
    requests = _requests(spec, examples, per_prompt, prompts_per_label, style, random.Random(seed), structured,
                         variants or {})
    grammar = {"grammar": json_schema(output_schema(per_prompt, min_chars, max_new_tokens), compact=True,
                                      string_max_tokens=string_budget(max_new_tokens - 6, per_prompt))} if structured else {}
    seeds = [{"text": x} for v in examples.values() for x in v]
    # each sample yields about `per_prompt` texts; ask for enough, then more while some label is short
    samples = max(1, math.ceil(per_label / per_prompt))   # per label, over all its distinct prompts
    for rounds in range(1, max_rounds + 1):
        params = dict(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, **(decoding or {}),
                      **grammar)
        raw = _sample(t, requests, samples, seed, params, best_of, scorer)
        rows, report = clean_outputs(raw, spec, seeds, against, near_threshold, min_chars, near_threshold)
        counts = Counter(r["label"] for r in rows)
        lowest = min(counts[lab] for lab in spec.label_names)
        if lowest >= per_label or rounds == max_rounds:
            break
        # kept texts per sample so far (at least 0.5, so that a label the teacher cannot write stays bounded)
        rate = max(lowest / samples, 0.5)
        samples = min(4 * samples, samples + math.ceil((per_label - lowest) / rate))
    balanced = balance(rows, spec.label_names, per_label, seed)
    # later rounds re-read earlier samples from the cache: bill each sample of the final set once
    return SynthResult(balanced, report, raw, sum(r["tokens"] for r in raw), t.tokens_spent(), rounds=rounds,
                       requested=len(raw) * per_prompt)


def _requests(spec: TaskSpec, examples: dict[str, list[str]], per_prompt: int, prompts_per_label: int,
              style: str, rng: random.Random, structured: bool = False,
              variants: dict[str, Sequence[str]] | None = None) -> list[tuple[str, list[dict]]]:
    """(label, prompt) pairs: per label, up to `prompts_per_label` distinct draws of up to 3 demonstrations,
    each under every one of the label's `variants` lines (none: the plain request).

    Identical prompts would share their cache keys, hence their samples, so each label keeps
    only distinct prompts (one for ZeroGen, which shows no example)."""
    out = []
    for label in spec.label_names:
        shown = examples.get(label, [])
        draws = [rng.sample(shown, min(len(shown), 3)) for _ in range(prompts_per_label)] if shown else [[]]
        distinct = list({tuple(d): d for d in draws}.values())
        lines = list(dict.fromkeys((variants or {}).get(label) or [""]))
        out += [(label, generation_prompt(spec, label, per_prompt, d, "\n".join(x for x in (style, line) if x),
                                          structured)) for line in lines for d in distinct]
    return out


def _sample(t, requests: list[tuple[str, list[dict]]], samples: int, seed: int, params: dict,
            best_of: int = 1, scorer=None) -> list[dict]:
    """About `samples` teacher samples per label, spread over the label's distinct prompts.

    `Teacher.generate` takes one n for all prompts, so prompts are grouped by how many samples
    each needs (one group unless labels have different numbers of distinct prompts)."""
    per_label = Counter(label for label, _ in requests)
    groups: dict[int, list] = {}
    for label, prompt in requests:
        groups.setdefault(math.ceil(samples / per_label[label]), []).append((label, prompt))
    raw = []
    for n, group in groups.items():
        outs = t.generate([p for _, p in group], n=n * best_of, seed=seed, **params)
        # Candidates of one sample are consecutive; with best_of == 1 this keeps every output.
        for i in range(0, len(outs), best_of):
            cands = outs[i:i + best_of]
            label, prompt = group[i // (n * best_of)]
            pick = max(cands, key=lambda c: scorer(label, c.text)) if best_of > 1 else cands[0]
            raw.append({"label": label, "prompt": prompt, "output": pick.text,
                        "tokens": sum(c.prompt_tokens + c.completion_tokens for c in cands)})
    return raw


def clean_outputs(raw: list[dict], spec: TaskSpec, seeds: list[dict], against: Sequence[str],
                  near_threshold: float | None, min_chars: int, seed_threshold: float | None = None
                  ) -> tuple[list[dict], ParseReport]:
    """Parse every output with its requested label (``raw[i]["label"]``), then drop duplicates among
    the outputs (near: `near_threshold`), copies of the seeds (``seed_copy``; near: `seed_threshold`,
    None = exact copies only) and of the `against` texts (``test_leak``, exact)."""
    report = ParseReport(n_inputs=0)
    for label in spec.label_names:
        mine = [split_inline_list(r["output"]) for r in raw if r["label"] == label]
        report = report.merge(parse_classification(mine, spec.label_names, default_label=label, min_chars=min_chars))
    kept, seed_report = dedup(report.kept, near_threshold=seed_threshold, against=seeds, against_reason="seed_copy")
    kept, near_report = dedup(kept, near_threshold=near_threshold)
    kept, test_report = dedup(kept, near_threshold=None, against=[{"text": x} for x in against])
    return kept, report.then(seed_report).then(near_report).then(test_report)


def balance(rows: list[dict], label_names: Sequence[str], per_label: int, seed: int = 0) -> list[dict]:
    """At most `per_label` rows of each label (a seeded choice), in a seeded shuffled order."""
    rng = random.Random(seed)
    out = []
    for label in label_names:
        mine = [r for r in rows if r["label"] == label]
        out += rng.sample(mine, per_label) if len(mine) > per_label else mine
    rng.shuffle(out)
    return out


def quality(rows: Sequence[dict], label_names: Sequence[str], reference=None) -> dict:
    """How good a labelled set is, without its gold labels (synthetic rows have none).

    - ``fidelity``: share of rows whose label the `reference` classifier (a `ClassifierStudent`,
      e.g. the full-data student) agrees with: do the texts say what their labels claim?
    - diversity: ``distinct2`` (unique word bigrams / all), ``self_bleu`` (lower = more diverse),
      ``dispersion`` (mean pairwise cosine distance in the reference's embedding space);
    - ``balance``: normalised entropy of the label shares (1 = all classes equally often).
    """
    import numpy as np

    from kdlib.students.metrics import distinct_n, embedding_dispersion, entropy, self_bleu

    texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
    counts = np.array([labels.count(lab) for lab in label_names], dtype=np.float64)
    out = {"n": len(rows), "distinct2": distinct_n(texts, 2),
           "self_bleu": self_bleu(texts) if len(texts) >= 2 else float("nan"),
           "balance": float(entropy(counts / max(counts.sum(), 1)) / np.log(len(label_names))) if rows else 0.0}
    if reference is not None and rows:
        out["fidelity"] = float(np.mean([p == y for p, y in zip(reference.predict_labels(texts), labels)]))
        out["dispersion"] = embedding_dispersion(reference.embed(texts)) if len(texts) >= 2 else float("nan")
    return out


def compare_strategies(teacher, spec: TaskSpec, per_label: int, plan: Sequence[tuple[str, int]], *, reference=None,
                       scorer: Callable[[str, str], float] | None = None, temperature: float = 1.0, **kw):
    """`synthesize` under each (decoding strategy, best_of) of `plan` (`kdlib.teachers.decoding` names; "[structured]"
    ones constrained to the JSON schema). Returns (results by label, quality table, {label: why skipped}); a
    best-of-n entry is labelled "best-of-n". `kw` goes to `synthesize` (per_prompt, max_new_tokens, seed, ...)."""
    import pandas as pd

    from kdlib.studies.experiment import run_each
    from kdlib.teachers import decoding

    best = {(name if n_best == 1 else f"best-of-{n_best}"): (name, n_best) for name, n_best in plan}

    def run(label):
        name, n_best = best[label]
        knobs = decoding.strategy(name, temperature)
        return synthesize(teacher, spec, per_label, temperature=knobs.pop("temperature"), top_p=knobs.pop("top_p", 1.0),
                          decoding=knobs, best_of=n_best, scorer=scorer if n_best > 1 else None,
                          structured=decoding.is_structured(name), **kw)

    results, wall, skipped = run_each(list(best), run)
    rows = []
    for label, res in results.items():
        q = quality(res.rows, spec.label_names, reference)
        rows.append({"strategy": label, "rows": len(res.rows), "tokens": res.tokens, "parse_rate": res.parse_rate,
                     "wall_s": wall[label], **{k: q.get(k) for k in ("fidelity", "distinct2", "self_bleu", "balance")}})
    return results, pd.DataFrame(rows, columns=None if rows else ["strategy", "rows", "tokens", "parse_rate"]), skipped

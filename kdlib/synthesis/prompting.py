"""Prompt strategies for labelling and synthesis: named options of the lab's recipes, each with its teacher cost.

The recipes are `labeling.annotate_generate` / `annotate_score` / `annotate_score_ensemble` and
`synth.synthesize`; a strategy here only chooses their options (which demonstrations, whether to reason first,
which phrasings, which extra instruction lines) or adds one teacher pass around them. Every teacher call goes
through the teacher layer, so every strategy is seeded, cached and resumable, and bills its tokens.

Labelling (`LABELLING`; the default is ``random demos``, the lab's few-shot prompt):

- ``zero-shot``: no demonstration;
- ``random demos``: `shots` gold demonstrations per class drawn at random from a small labelled bank;
- ``KATE demos`` (Liu et al., 2022, "What Makes Good In-Context Examples for GPT-3?"): the same number of
  demonstrations, the bank's nearest neighbours of each text in the student's sentence-embedding space
  (all-MiniLM-L6-v2), most similar last (nearest the query; KATE's "reversed" order);
- ``chain-of-thought`` (Wei et al., 2022; answer extraction as in Kojima et al., 2022): a one-sentence reason,
  then the label, as {"reason", "label"} held to that schema (a grammar locally, response_format remotely);
- ``CoT self-consistency`` (Wang et al., 2023): `votes` sampled reasoning paths, majority label;
- ``score+cal``: the label's log-likelihood with contextual calibration (needs prompt log-probs);
- ``instruction ensemble``: score+cal under several instruction phrasings and verbalizers (label words),
  calibrated probabilities averaged (Jiang et al., 2020 "How Can We Know What Language Models Know?"; Schick &
  Schütze, 2021 PET's verbalizers) — needs prompt log-probs.

Synthesis (`SYNTHESIS`; the default is ``label-conditioned``, ZeroGen's request):

- ``AttrPrompt`` (Yu et al., 2023, "Large Language Model as Attributed Training Data Generator"): the teacher
  proposes values for topic, style and audience once per task; each request draws one value of each and a
  length, so the texts spread over the attribute space instead of the teacher's favourite mode (the attribute
  line is worded in English whatever the task's language);
- ``self-refine`` (Madaan et al., 2023): each label-conditioned text goes back to the teacher with its label; it
  critiques the text against the label and rewrites it (one call answering {"critique", "rewrite"}: the
  paper's feedback and refine steps fused, one round, to bound the cost). An unusable rewrite keeps the text;
- ``hard examples``: near-boundary texts, each request showing a pair of confusable gold examples of two
  labels (the cross-label pairs nearest in embedding space) and asking for texts of one label that stay close
  to the other (in the spirit of contrast sets, Gardner et al., 2020, and EvoKD's hard samples).

Methods needing logits (`NEEDS_SCORES`) are refused by a teacher that cannot score (an OpenAI-compatible
endpoint): `kdlib.teachers.api.Unsupported`, which `experiment.run_each` reports as skipped.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from kdlib.synthesis import labeling, synth

LABELLING = ("zero-shot", "random demos", "KATE demos", "chain-of-thought", "CoT self-consistency", "score+cal",
             "instruction ensemble")
SYNTHESIS = ("label-conditioned", "AttrPrompt", "self-refine", "hard examples")
DEFAULT_LABELLING, DEFAULT_SYNTHESIS = "random demos", "label-conditioned"
NEEDS_SCORES = ("score+cal", "instruction ensemble")


def check(names: Sequence[str], known: Sequence[str], what: str) -> list[str]:
    """`names` as a list, or a ValueError naming the unknown ones and the known list (before any work)."""
    if isinstance(names, str):
        raise ValueError(f"{what} strategies must be a list of names, got the string {names!r}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {what} strategies {unknown}; known: {list(known)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{what} strategies are listed twice: {list(names)}")
    return list(names)


# ----------------------------------------------------------------------------- demonstrations

def random_shots(bank: Sequence[tuple[str, str]], per_class: int, seed: int = 0) -> list[tuple[str, str]]:
    """`per_class` demonstrations per label drawn from `bank` (seeded), in a shuffled order (not grouped by
    class: a small model copies the last demonstration's label)."""
    rng = random.Random(seed)
    by_label: dict[str, list] = {}
    for pair in bank:
        by_label.setdefault(pair[1], []).append(pair)
    picked = [p for pairs in by_label.values() for p in rng.sample(pairs, min(per_class, len(pairs)))]
    rng.shuffle(picked)
    return picked


def nearest_shots(query_vecs: np.ndarray, bank: Sequence[tuple[str, str]], bank_vecs: np.ndarray,
                  k: int) -> list[list[tuple[str, str]]]:
    """KATE: per query, the `k` bank demonstrations of highest cosine similarity (unit vectors: dot product),
    most similar last. Shapes: query_vecs (n, d), bank_vecs (m, d)."""
    if len(bank) != len(bank_vecs):
        raise ValueError(f"{len(bank)} demonstrations but {len(bank_vecs)} bank embeddings")
    sims = np.asarray(query_vecs) @ np.asarray(bank_vecs).T
    k = min(k, len(bank))
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k][:, ::-1]
    return [[bank[j] for j in row] for row in order]


# ----------------------------------------------------------------------------- instruction ensembles

# Phrasings of the labelling instruction ({what}, {labels}); "" is the lab's own (`labeling.instruction`).
PHRASINGS = ("",
             "Read {what} and decide which label fits it best: {labels}. Reply with that label and nothing else.",
             "You are a careful annotator. Label {what} as one of: {labels}. Give only the label.")
# Verbalizers: other words for common label names (a label without one keeps its name).
VERBALIZER = {"negative": "bad", "positive": "good", "neutral": "neither"}


def ensemble_variants(label_names: Sequence[str]) -> list[tuple[str, list[str]]]:
    """(instruction, label words) variants: every phrasing with the label names, plus the default phrasing with
    the verbalizer's words when it has some for these labels."""
    out = [(p, list(label_names)) for p in PHRASINGS]
    words = [VERBALIZER.get(name, name) for name in label_names]
    if words != list(label_names) and len(set(words)) == len(words):
        out.append(("", words))
    return out


# ----------------------------------------------------------------------------- labelling

@dataclass
class LabelPlan:
    """What a labelling strategy needs besides the texts: the bank, the random shots, embeddings, knobs."""
    label_names: list[str]
    bank: list[tuple[str, str]]                 # labelled demonstrations the strategies may show
    shots: list[tuple[str, str]]                # the random draw (`random_shots`) every few-shot strategy starts from
    embed: Callable[[Sequence[str]], np.ndarray] | None = None   # unit sentence embeddings (KATE)
    votes: int = 5
    reason_tokens: int = 32
    temperature: float = 0.7
    max_new_tokens: int = 8
    seed: int = 0
    task: str = ""


def label(teacher, strategy: str, texts: Sequence[str], plan: LabelPlan) -> labeling.Annotation:
    """Labels of `texts` under one named strategy (`LABELLING`), with its teacher tokens."""
    check([strategy], LABELLING, "labelling")
    names = plan.label_names
    if strategy in NEEDS_SCORES:
        why = teacher.unsupported("score")
        if why:
            from kdlib.teachers.api import Unsupported

            raise Unsupported(f"{strategy} needs prompt log-probs: {why}")
        if strategy == "score+cal":
            return labeling.annotate_score(teacher, texts, names, plan.shots, plan.task, method="score")[1]
        return labeling.annotate_score_ensemble(teacher, texts, names, plan.shots, ensemble_variants(names),
                                                plan.task, method=strategy)
    common = dict(task=plan.task, method=strategy, structured=True, seed=plan.seed, max_new_tokens=plan.max_new_tokens)
    if strategy == "zero-shot":
        return labeling.annotate_generate(teacher, texts, names, (), **common)
    if strategy == "random demos":
        return labeling.annotate_generate(teacher, texts, names, plan.shots, **common)
    if strategy == "KATE demos":
        if plan.embed is None:
            raise ValueError("KATE demos need an embedding function (LabelPlan.embed)")
        vecs = plan.embed([x for x, _ in plan.bank] + list(texts))
        per_text = nearest_shots(vecs[len(plan.bank):], plan.bank, vecs[:len(plan.bank)], len(plan.shots))
        return labeling.annotate_generate(teacher, texts, names, per_text_shots=per_text, **common)
    n = plan.votes if strategy == "CoT self-consistency" else 1
    return labeling.annotate_generate(teacher, texts, names, plan.shots, n=n, temperature=plan.temperature,
                                      reason_tokens=plan.reason_tokens, **common)


# ----------------------------------------------------------------------------- synthesis

ATTRIBUTES = {"topic": "topics", "style": "writing styles", "audience": "intended readers"}
LENGTHS = ("very short (under ten words)", "one sentence", "one long sentence")


@dataclass
class WritePlan:
    """What a synthesis strategy needs: the task, the labelled bank (hard examples), embeddings, knobs."""
    spec: synth.TaskSpec
    per_label: int
    bank: list[tuple[str, str]] = field(default_factory=list)
    embed: Callable[[Sequence[str]], np.ndarray] | None = None
    against: Sequence[str] = ()                 # texts never to copy (the test split)
    per_prompt: int = 5
    max_new_tokens: int = 160
    refine_tokens: int = 96
    attribute_values: int = 6
    seed: int = 0


@dataclass
class Written:
    """One synthesis strategy's rows and everything it cost, with what its extra pass did."""
    strategy: str
    rows: list[dict]
    tokens: int
    result: synth.SynthResult
    notes: dict = field(default_factory=dict)   # attributes proposed, rewrites kept, pairs used, ...


def propose_attributes(teacher, spec: synth.TaskSpec, values: int = 6, max_new_tokens: int = 96
                       ) -> tuple[dict[str, list[str]], int]:
    """AttrPrompt's first step: the teacher proposes `values` values of each attribute (`ATTRIBUTES`) for texts
    of this kind, once per task (greedy, as JSON {"values": [...]}). Returns ({attribute: distinct values}, tokens);
    an attribute with fewer than two usable values is left out (a fixed mode is no diversity)."""
    from kdlib.teachers.structured import json_schema, string_budget, texts_schema

    t = teacher.with_cache(teacher.cache)
    schema = texts_schema(values, min_chars=3, max_chars=32)
    schema = {**schema, "required": ["values"], "properties": {"values": schema["properties"]["texts"]}}
    prompts = [[{"role": "user", "content": f"Texts to write: {spec.text_kind}. List {values} different {plural} such "
                 f"texts could have, each a short phrase of one to four words (not a whole text). "
                 f'Answer with a JSON object {{"values": [...]}}, and nothing else.'}] for plural in ATTRIBUTES.values()]
    grammar = json_schema(schema, compact=True, string_max_tokens=string_budget(max_new_tokens - 6, values))
    outs = t.texts(prompts, max_new_tokens=max_new_tokens, temperature=0.0, grammar=grammar)
    found = {}
    for name, out in zip(ATTRIBUTES, outs):
        got = _json_field(out, "values")
        vals = list(dict.fromkeys(v.strip() for v in got if usable_value(v, spec))) if isinstance(got, list) else []
        if len(vals) >= 2:
            found[name] = vals
    return found, int(t.ledger.summary()["tokens_without_cache"])


def usable_value(value, spec: synth.TaskSpec) -> bool:
    """Whether a proposed attribute value is a short phrase worth putting in a request: mostly letters, no JSON
    or code debris (a small teacher echoes the format: "]}  # 1.", "json_object"), not the text kind itself."""
    if not isinstance(value, str):
        return False
    v = value.strip()
    letters = sum(c.isalpha() or c == " " for c in v)
    return (3 <= len(v) <= 40 and letters >= 0.8 * len(v) and not re.search(r"[{}\[\]#_<>|]|json", v, re.I)
            and v.lower() not in spec.text_kind.lower() and len(v.split()) <= 6)


def attribute_lines(attributes: dict[str, list[str]], n: int, seed: int = 0) -> list[str]:
    """`n` distinct request lines, each a seeded draw of one value per attribute and a length."""
    rng, out = random.Random(seed), []
    for _ in range(20 * n):
        parts = [f"{name}: {rng.choice(vals)}" for name, vals in attributes.items()]
        line = "Make every text fit these attributes - " + "; ".join([*parts, f"length: {rng.choice(LENGTHS)}"]) + "."
        if line not in out:
            out.append(line)
        if len(out) == n:
            break
    return out


def confusable_pairs(bank: Sequence[tuple[str, str]], vecs: np.ndarray, per_label: int
                     ) -> dict[str, list[tuple[str, str, str]]]:
    """Per label a, up to `per_label` (text of a, other label b, text of b) pairs: the cross-label pairs of the
    bank with the highest cosine similarity (each text of a used once)."""
    sims = np.asarray(vecs) @ np.asarray(vecs).T
    out: dict[str, list] = {}
    for i, (text, lab) in enumerate(bank):
        others = [j for j, (_, other) in enumerate(bank) if other != lab]
        if others:
            j = max(others, key=lambda j: sims[i, j])
            out.setdefault(lab, []).append((float(sims[i, j]), text, bank[j][1], bank[j][0]))
    return {lab: [(a, b, xb) for _, a, b, xb in sorted(pairs, reverse=True)[:per_label]] for lab, pairs in out.items()}


def _clip(text: str, chars: int = 200) -> str:
    return text if len(text) <= chars else text[:chars].rsplit(" ", 1)[0] + " ..."


def hard_lines(pairs: dict[str, list[tuple[str, str, str]]]) -> dict[str, list[str]]:
    """The extra request line of each confusable pair: write texts of its label close to the other one."""
    return {lab: [f'Make them hard to tell apart from "{other}" texts: close in topic and wording to this '
                  f'"{other}" example: "{_clip(x_other)}" (which resembles this "{lab}" one: "{_clip(x)}"), '
                  f'but each must still clearly be "{lab}".' for x, other, x_other in mine]
            for lab, mine in pairs.items()}


def refine(teacher, rows: Sequence[dict], spec: synth.TaskSpec, *, max_new_tokens: int = 96, min_chars: int = 10,
           against: Sequence[str] = ()) -> tuple[list[dict], int, dict]:
    """Self-refine: each row goes back to the teacher with its label, which critiques it and rewrites it
    (greedy, JSON {"critique", "rewrite"}). A rewrite is kept when it parses, has `min_chars`, is not a copy of
    an `against` text or of another row; otherwise the original stays. Returns (rows, tokens, counts)."""
    from kdlib.teachers.structured import json_schema, string_budget

    t = teacher.with_cache(teacher.cache)
    schema = {"type": "object", "additionalProperties": False, "required": ["critique", "rewrite"],
              "properties": {"critique": {"type": "string"}, "rewrite": {"type": "string"}}}
    prompts = [[{"role": "user", "content": (
        f"Here is {spec.text_kind} that should clearly be an example that {spec.label_descriptions[r['label']]}:\n"
        f"\"{r['text']}\"\nIn one sentence, critique it: does it clearly fit, and does it read like a real one? "
        'Then rewrite it so that it does. Answer with a JSON object {"critique": ..., "rewrite": ...}.')}]
        for r in rows]
    grammar = json_schema(schema, compact=True, string_max_tokens=string_budget(max_new_tokens - 6, 2))
    outs = t.texts(prompts, max_new_tokens=max_new_tokens, temperature=0.0, grammar=grammar) if prompts else []
    banned, out, counts = {x.strip().lower() for x in against}, [], {"rewritten": 0, "kept_original": 0}
    seen = set()
    for r, answer in zip(rows, outs):
        new = _json_field(answer, "rewrite")
        new = new.strip() if isinstance(new, str) else ""
        ok = len(new) >= min_chars and new.lower() not in banned and new.lower() not in seen
        text = new if ok else r["text"]
        counts["rewritten" if ok else "kept_original"] += 1
        seen.add(text.lower())
        out.append({**r, "text": text})
    return out, int(t.ledger.summary()["tokens_without_cache"]), counts


def _json_field(answer: str, key: str):
    """`key` of the first JSON object in `answer` (None if there is none); a cut-off answer's string field is
    still read up to where it stops."""
    if not isinstance(answer, str):
        return None
    start = answer.find("{")
    try:
        return json.loads(answer[start:]).get(key) if start >= 0 else None
    except (json.JSONDecodeError, AttributeError):
        m = re.search(rf'"{re.escape(key)}"\s*:\s*"((?:[^"\\]|\\.)*)', answer)
        return m.group(1) if m else None


def write(teacher, strategy: str, plan: WritePlan, **synth_kw) -> Written:
    """Synthetic rows under one named strategy (`SYNTHESIS`), with every teacher token it took (AttrPrompt's
    proposals and self-refine's rewrites included)."""
    check([strategy], SYNTHESIS, "synthesis")
    spec, notes, extra = plan.spec, {}, 0
    requests = max(1, math.ceil(plan.per_label / plan.per_prompt))   # requests per label
    variants = None
    if strategy == "AttrPrompt":
        attrs, extra = propose_attributes(teacher, spec, plan.attribute_values)
        notes["attributes"] = attrs   # none usable: the requests still vary in length
        variants = {lab: attribute_lines(attrs, requests, plan.seed + k) for k, lab in enumerate(spec.label_names)}
    elif strategy == "hard examples":
        if plan.embed is None or not plan.bank:
            raise ValueError("hard examples need a labelled bank and an embedding function (WritePlan)")
        pairs = confusable_pairs(plan.bank, plan.embed([x for x, _ in plan.bank]), requests)
        notes["pairs"] = pairs
        variants = hard_lines(pairs)
    result = synth.synthesize(teacher, spec, plan.per_label, per_prompt=plan.per_prompt, seed=plan.seed,
                              against=plan.against, structured=True, max_new_tokens=plan.max_new_tokens,
                              variants=variants, **synth_kw)
    rows = result.rows
    if strategy == "self-refine":
        rows, extra, notes["refine"] = refine(teacher, rows, spec, max_new_tokens=plan.refine_tokens,
                                              against=plan.against)
    return Written(strategy, rows, result.tokens + extra, result, notes)

"""The teacher as NER annotator: copy a tokenised sentence with inline ``[entity text](TYPE)`` markup.

The answer is parsed with `kdlib.parsing.parse_ner` and its entities are projected back onto the *given* tokens, so
a teacher that drops a comma or retokenises a word still yields tags for the original sentence; a mention
that is not found in it is dropped and counted. An answer with no parsable example leaves the sentence
rejected (None). The output copies the input almost verbatim, which is what prompt-lookup speculation
(`kdlib.teachers.speculative.PromptLookupDrafter`) exploits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from kdlib.parsing.parse_ner import parse_ner, simple_tokenize, to_markup


def instruction(entity_types: Sequence[str]) -> str:
    return ("Copy the sentence exactly and mark every named entity as [entity text](TYPE), with TYPE one of "
            f"{', '.join(entity_types)}. Leave all other words unchanged. Answer with the marked sentence only.")


def build_prompt(tokens: Sequence[str], entity_types: Sequence[str],
                 shots: Sequence[tuple[Sequence[str], Sequence[str]]] = ()) -> list[dict]:
    """System instruction, one user/assistant pair per (tokens, tags) demonstration, then the sentence."""
    messages = [{"role": "system", "content": instruction(entity_types)}]
    for toks, tags in shots:
        messages += [{"role": "user", "content": " ".join(toks)},
                     {"role": "assistant", "content": to_markup(list(toks), list(tags))}]
    return messages + [{"role": "user", "content": " ".join(tokens)}]


def project(tokens: Sequence[str], parsed_tokens: Sequence[str], parsed_tags: Sequence[str]) -> tuple[list[str], int]:
    """BIO tags for `tokens` from a parse of (possibly re-tokenised) text: (tags, mentions not found).

    Identical token lists keep their tags; otherwise each entity mention is looked up in `tokens`,
    left to right, at its first occurrence after the previous one (the first anywhere if none after)."""
    if list(parsed_tokens) == list(tokens):
        return list(parsed_tags), 0
    tags, lost, cursor = ["O"] * len(tokens), 0, 0
    for words, etype in _mentions(parsed_tokens, parsed_tags):
        n = len(words)
        starts = [i for i in range(len(tokens) - n + 1) if list(tokens[i:i + n]) == words]
        free = [i for i in starts if all(t == "O" for t in tags[i:i + n])]
        later = [i for i in free if i >= cursor]
        if not free:
            lost += 1
            continue
        i = (later or free)[0]
        tags[i:i + n] = [f"B-{etype}"] + [f"I-{etype}"] * (n - 1)
        cursor = i + n
    return tags, lost


def _words(text: str) -> list[str]:
    """Lower-cased word tokens without punctuation or spacing differences (for 'is this a copy?')."""
    return [w for w in simple_tokenize(text.lower()) if any(ch.isalnum() for ch in w)]


def _mentions(tokens: Sequence[str], tags: Sequence[str]) -> list[tuple[list[str], str]]:
    out, i = [], 0
    while i < len(tags):
        if tags[i].startswith("B-"):
            j = i + 1
            while j < len(tags) and tags[j] == "I-" + tags[i][2:]:
                j += 1
            out.append((list(tokens[i:j]), tags[i][2:]))
            i = j
        else:
            i += 1
    return out


@dataclass
class NERAnnotation:
    method: str
    tags: list[list[str] | None]           # None: rejected (nothing parsable)
    raw: list[str] = field(default_factory=list)
    tokens: int = 0                        # teacher tokens (cache hits included)
    problems: Counter = field(default_factory=Counter)

    @property
    def rejection_rate(self) -> float:
        return sum(t is None for t in self.tags) / max(len(self.tags), 1)


def annotate(teacher, sentences: Sequence[Sequence[str]], entity_types: Sequence[str],
             shots: Sequence[tuple[Sequence[str], Sequence[str]]] = (), max_new_tokens: int = 96,
             method: str = "ner", seed: int = 0, structured: bool = False, **decoding) -> NERAnnotation:
    """Label every tokenised sentence with the teacher; `decoding` are GenParams knobs (greedy by default).
    `structured` constrains each answer to a copy of its own sentence with [entity](TYPE) marks of the
    given types (`kdlib.teachers.structured.copy_markup_grammar`, one grammar per sentence)."""
    t = teacher.with_cache(teacher.cache)
    prompts = [build_prompt(s, entity_types, shots) for s in sentences]
    decoding.setdefault("temperature", 0.0)
    grammars = None
    if structured:
        from kdlib.teachers.structured import copy_markup_grammar

        grammars = [copy_markup_grammar(s, list(entity_types)) for s in sentences]
    outs = t.texts(prompts, max_new_tokens=max_new_tokens, seed=seed, stop=["\n"], grammars=grammars, **decoding)
    tags, problems = [], Counter()
    for sent, out in zip(sentences, outs):
        row, problem = tags_from_answer(sent, out, entity_types)
        tags.append(row)
        problems.update(problem)
    return NERAnnotation(method, tags, outs, int(t.ledger.summary()["tokens_without_cache"]), problems)


def tags_from_answer(sentence: Sequence[str], answer: str, entity_types: Sequence[str]
                     ) -> tuple[list[str] | None, Counter]:
    """BIO tags of `sentence` from one marked-up answer, or None when it is not usable; the problems seen."""
    problems = Counter()
    report = parse_ner([answer], list(entity_types))
    if not report.kept:
        # A faithful copy without markup is a valid answer: the sentence has no entity.
        if _words(" ".join(simple_tokenize(answer))) == _words(" ".join(sentence)):
            problems["copied_without_entities"] += 1
            return ["O"] * len(sentence), problems
        problems["no_example"] += 1
        return None, problems
    row = report.kept[0]
    tags, lost = project(sentence, row["tokens"], row["tags"])
    problems["mention_not_in_sentence"] += lost
    return tags, problems


def quality(ann: NERAnnotation, gold: Sequence[Sequence[str]]) -> dict:
    """Entity P/R/F1 of the labels against gold (rejected sentences count as unlabelled) and rejections."""
    from kdlib.students.metrics import ner_metrics

    pred = [t if t is not None else ["O"] * len(g) for t, g in zip(ann.tags, gold)]
    m = ner_metrics([list(g) for g in gold], pred)
    return {"entity_f1": m["entity_f1"], "precision": m["precision"], "recall": m["recall"],
            "rejection_rate": ann.rejection_rate, "tokens": ann.tokens}


def compare_strategies(teacher, sentences: Sequence[Sequence[str]], entity_types: Sequence[str], shots,
                       strategies: Sequence[str], gold: Sequence[Sequence[str]], max_new_tokens: int = 96, seed: int = 0):
    """Markup-copy labels under each deterministic decoding strategy (`kdlib.teachers.decoding`; "[structured]" ones are
    constrained to a marked copy of their sentence). Returns (annotations, quality table, {strategy: why skipped})."""
    import pandas as pd

    from kdlib.studies.experiment import run_each
    from kdlib.teachers import decoding

    def run(name):
        return annotate(teacher, sentences, entity_types, shots, max_new_tokens=max_new_tokens, method=name, seed=seed,
                        structured=decoding.is_structured(name), **decoding.strategy(name, 0.0))

    anns, wall, skipped = run_each(strategies, run)
    rows = [{"strategy": m, **quality(a, gold), "parse_rate": 1 - a.rejection_rate, "wall_s": wall[m],
             "mentions_not_found": a.problems["mention_not_in_sentence"]} for m, a in anns.items()]
    return anns, pd.DataFrame(rows, columns=None if rows else ["strategy", "tokens"]), skipped


def draw_pool(train, tag_names: Sequence[str], shots: int, size: int, seed: int = 0):
    """`shots` demonstration sentences that hold an entity and `size` other pool sentences, from a seeded
    permutation of `train`; rows {"tokens", "tags"} with tag names. Returns (pool, demonstrations, order)."""
    import numpy as np

    order = [int(i) for i in np.random.default_rng(seed).permutation(len(train))]
    shot_idx = [i for i in order[:2000] if any(t != 0 for t in train[i]["tags"])][:shots]
    pool_idx = [i for i in order[:size + shots] if i not in shot_idx][:size]

    def rows(idx):
        return [{"tokens": list(train[i]["tokens"]), "tags": [tag_names[t] for t in train[i]["tags"]]} for i in idx]
    return rows(pool_idx), rows(shot_idx), order


def training_rows(sentences: Sequence[Sequence[str]], tags: Sequence[Sequence[str] | None]) -> list[dict]:
    """{"tokens", "tags"} rows for a tagger, rejected sentences (tags None) dropped."""
    return [{"tokens": list(s), "tags": list(t)} for s, t in zip(sentences, tags) if t is not None]

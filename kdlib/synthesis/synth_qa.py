"""Synthetic extractive QA from unlabelled passages: the teacher reads a passage and writes question–answer
pairs whose answer is a span of it (the survey's data labelling and model distillation, applied to QA).

A request shows one passage (whitespace-normalised, so that answer offsets index the stored context) and asks
for `per_passage` pairs. Structured, the local teacher's answer is constrained by `pairs_grammar`: JSON whose
questions are capped in tokens and whose answers can only be runs of consecutive passage words — every answer
is a span by construction. Free (or from a server that ignores grammars), "Q: … A: …" lines or JSON are read.

Then, each filter counted in the result's `funnel` (how many pairs each one keeps):
1. **parsed** — a question and an answer could be read;
2. **answer in passage** — the answer occurs in the passage (verbatim, else case-insensitively; its first
   occurrence gives `answer_start`);
3. **deduplicated** — exact and near-duplicate questions of the same passage run dropped (`kdlib.parsing.dedup`), and
   copies of test questions (``test_leak``);
4. **round trip** (Alberti et al., 2019, "Synthetic QA Corpora Generation with Roundtrip Consistency") — a QA
   model answers the generated question from the passage; the pair is kept only when that answer matches the
   generated one (SQuAD F1 >= `round_trip_f1`). Any `answer(questions, contexts) -> answers` callable can
   play the QA model (a student trained on the gold shots, or the teacher itself); None skips the filter.

`synthesize_yes_no` is the same recipe for yes/no/maybe questions (PubMedQA's task): the teacher writes
questions the passage answers with yes, no or maybe, structured as JSON whose answers are that enum. Its funnel:
requested, parsed, valid label, deduplicated (no span to check, no round trip).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kdlib.parsing.dedup import dedup
from kdlib.parsing.parse import ParseReport
from kdlib.teachers.structured import lark

FUNNEL = ("requested", "parsed", "answer_in_passage", "deduplicated", "round_trip")
YES_NO_FUNNEL = ("requested", "parsed", "valid_label", "deduplicated")
YES_NO = ("yes", "no", "maybe")
_LINE_PAIR = re.compile(r"^\s*(?:\d+[.)]\s*)?Q(?:uestion)?\s*\d*\s*[:.]\s*(?P<q>.+?)\s+A(?:nswer)?\s*\d*\s*[:.]\s*(?P<a>.+?)\s*$",
                        re.I)
_Q_LINE = re.compile(r"^\s*(?:\d+[.)]\s*)?Q(?:uestion)?\s*\d*\s*[:.]\s*(?P<q>.+?)\s*$", re.I)
_A_LINE = re.compile(r"^\s*A(?:nswer)?\s*\d*\s*[:.]\s*(?P<a>.+?)\s*$", re.I)


def passage_text(context: str) -> str:
    """The passage as the teacher sees it and as the synthetic row stores it: whitespace runs made one space."""
    return " ".join(str(context).split())


def qa_prompt(passage: str, n: int, examples: Sequence[dict] = (), structured: bool = False) -> list[dict]:
    """A chat request for `n` question–answer pairs on `passage`; `examples` are gold {question, answers}
    rows shown as the kind of question wanted (their passages are not shown)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    lines = [f"Read the passage and write {n} different questions about it. The answer to each question must be "
             "a short span copied word for word from the passage (a name, a number, a date or a few words).",
             "", f"Passage: {passage}", ""]
    if examples:
        lines.append("Questions of this kind (about other passages):")
        lines += [f"Q: {e['question']} A: {e['answers']['text'][0]}" for e in examples]
    if structured:
        lines.append('Answer with a JSON object {"pairs": [{"question": "...", "answer": "..."}, ...]} and nothing else.')
    else:
        lines.append("Answer with one pair per line, as Q: <question> A: <answer>, and nothing else.")
    return [{"role": "user", "content": "\n".join(lines)}]


def yes_no_prompt(passage: str, n: int, examples: Sequence[dict] = (), structured: bool = False) -> list[dict]:
    """A chat request for `n` yes/no/maybe questions on `passage`; `examples` are gold {question, label} rows."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    lines = [f"Read the passage and write {n} different questions about it that the passage answers with yes, no "
             "or maybe (maybe: the passage does not settle it). Give the answer of each.", "",
             f"Passage: {passage}", ""]
    if examples:
        lines.append("Questions of this kind (about other passages):")
        lines += [f"Q: {e['question']} A: {e['label']}" for e in examples]
    if structured:
        lines.append('Answer with a JSON object {"pairs": [{"question": "...", "answer": "yes"}, ...]} whose answers '
                     'are "yes", "no" or "maybe", and nothing else.')
    else:
        lines.append("Answer with one pair per line, as Q: <question> A: <yes, no or maybe>, and nothing else.")
    return [{"role": "user", "content": "\n".join(lines)}]


def yes_no_schema(n: int) -> dict:
    """{"pairs": [n {"question": str, "answer": "yes" | "no" | "maybe"}]} (what a server's response_format gets)."""
    pair = {"type": "object", "properties": {"question": {"type": "string", "minLength": 8, "maxLength": 300},
                                             "answer": {"enum": list(YES_NO)}},
            "required": ["question", "answer"], "additionalProperties": False}
    return {"type": "object", "properties": {"pairs": {"type": "array", "items": pair, "minItems": n, "maxItems": n}},
            "required": ["pairs"], "additionalProperties": False}


def _regex_literal(text: str) -> str:
    """`text` as a regex matching exactly it: letters and digits as they are, every other character as
    ``\\x{hex}`` (valid in llguidance's regex syntax, and never read as a delimiter or an operator)."""
    return "".join(c if c.isalnum() and c.isascii() else f"\\x{{{ord(c):x}}}" for c in text)


def span_regex(words: list[str], max_answer_words: int = 8) -> str:
    """A regex matching exactly the runs of 1 to `max_answer_words` consecutive `words` (JSON-escaped, as they
    appear inside a JSON string), written as a trie so that shared prefixes are matched once:
    ``(?:The(?:\\x{20}(?:nation(?:...)?))?|nation(?:...)?|...)``."""
    trie: dict = {}
    for i in range(len(words)):
        node = trie
        for w in words[i:i + max_answer_words]:
            node = node.setdefault(json.dumps(w, ensure_ascii=False)[1:-1], {})

    def alternatives(node: dict) -> str:
        parts = [_regex_literal(w) + (f"(?:\\x{{20}}{alternatives(child)})?" if child else "")
                 for w, child in node.items()]
        return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"

    return alternatives(trie)


def pairs_grammar(passage: str, n: int, question_max_tokens: int = 32, max_answer_words: int = 8) -> str:
    """A Lark grammar spec: {"pairs": [n {"question": <= question_max_tokens tokens, "answer": a run of 1 to
    `max_answer_words` consecutive passage words}]}.

    The answer is one regex terminal (`span_regex`), matched by llguidance's lexer. Writing it as grammar
    rules instead (one alternative per span, O(n·L) of them) overflowed the Earley parser's row limit (2,000
    items) on a 293-word SQuAD passage and stopped the notebook; the lexer's automaton has no such limit."""
    words = passage.split()
    if not words:
        raise ValueError("an empty passage has no answer span")
    if n < 1 or max_answer_words < 1 or question_max_tokens < 4:
        raise ValueError("pairs_grammar needs n >= 1, max_answer_words >= 1, question_max_tokens >= 4")
    pair = '"{\\"question\\": \\"" question "\\", \\"answer\\": \\"" answer "\\"}"'
    start = f'start: "{{\\"pairs\\": [" pair (", " pair){{{n - 1}}} "]}}"'
    return lark("\n".join([
        start, f"pair: {pair}", f"answer: /{span_regex(words, max_answer_words)}/",
        f'question[max_tokens={question_max_tokens}]: /([^"\\\\\\x00-\\x1f]|\\\\["\\\\bfnrt]){{8,300}}/']) + "\n")


def parse_pairs(output: str) -> list[dict]:
    """{"question", "answer"} pairs from JSON ({"pairs": [...]}, a list, or one object per line) or from
    "Q: … A: …" text (on one line or two)."""
    pairs = []
    for value in _json_objects(output):
        items = value.get("pairs", [value]) if isinstance(value, dict) else value if isinstance(value, list) else []
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("question"), str) and isinstance(item.get("answer"), str):
                pairs.append({"question": item["question"].strip(), "answer": item["answer"].strip()})
    if pairs:
        return pairs
    question = None
    for line in output.splitlines():
        if m := _LINE_PAIR.match(line):
            pairs.append({"question": m["q"], "answer": m["a"]})
        elif m := _Q_LINE.match(line):
            question = m["q"]
        elif (m := _A_LINE.match(line)) and question:
            pairs.append({"question": question, "answer": m["a"]})
            question = None
    return [p for p in pairs if p["question"] and p["answer"]]


def _json_objects(text: str) -> list:
    try:
        return [json.loads(text)]
    except json.JSONDecodeError:
        pass
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(("{", "[")):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def locate(answer: str, passage: str) -> tuple[str, int] | None:
    """(the answer as the passage spells it, its first character offset), or None when it is not in it.
    Surrounding quotes and a final full stop the teacher added are not part of the answer."""
    answer = " ".join(answer.split()).strip(" \"'`").rstrip(".")
    if not answer:
        return None
    start = passage.find(answer)
    if start < 0:
        start = passage.casefold().find(answer.casefold())
        if start < 0 or len(passage.casefold()) != len(passage):  # casefold changed lengths: offsets unreliable
            return None
    return passage[start:start + len(answer)], start


@dataclass
class QASynthResult:
    """Synthetic QA rows {id, question, context, answers} with the funnel of every filter and the cost."""
    rows: list[dict]
    report: ParseReport
    funnel: dict[str, int] = field(default_factory=dict)
    raw: list[dict] = field(default_factory=list)   # {"passage", "output", "tokens"} per teacher sample
    tokens: int = 0

    @property
    def parse_rate(self) -> float:
        """Parsed pairs / requested pairs."""
        return self.funnel["parsed"] / self.funnel["requested"] if self.funnel.get("requested") else float("nan")


def synthesize_qa(teacher, passages: Sequence[str], per_passage: int = 3, *, examples: Sequence[dict] = (),
                  temperature: float = 0.7, max_new_tokens: int = 192, seed: int = 0, structured: bool = False,
                  against: Sequence[str] = (), near_threshold: float | None = 0.8,
                  round_trip: Callable[[list[str], list[str]], list[str]] | None = None,
                  round_trip_f1: float = 0.5) -> QASynthResult:
    """Question–answer pairs for every passage, filtered as the module docstring says. `against` are
    questions synthetic ones must not copy (the test split's). Cached and seeded by the teacher layer."""
    if per_passage < 1:
        raise ValueError(f"per_passage must be >= 1, got {per_passage}")
    texts = [passage_text(p) for p in passages]
    texts = [t for t in texts if t]
    prompts = [qa_prompt(t, per_passage, examples, structured) for t in texts]
    budget = max(4, (max_new_tokens - 8) // per_passage - 16)  # the rest of a pair: keys, quotes, a short answer
    grammars = [pairs_grammar(t, per_passage, question_max_tokens=min(48, budget)) for t in texts] if structured else None
    asked, report, raw, funnel = _ask(teacher, texts, prompts, grammars, per_passage, FUNNEL, seed=seed,
                                      temperature=temperature, max_new_tokens=max_new_tokens)
    rows = []
    for k, (passage, pairs) in enumerate(zip(texts, asked)):
        for j, pair in enumerate(pairs):
            found = locate(pair["answer"], passage)
            if found is None:
                report.reject(f"{pair['question']} -> {pair['answer']}", "answer_not_in_passage")
                continue
            text, start = found
            rows.append({"id": f"synth-{seed}-{k}-{j}", "question": pair["question"], "context": passage,
                         "answers": {"text": [text], "answer_start": [start]}})
    funnel["answer_in_passage"] = len(rows)
    rows, report = _dedup(rows, texts, report, against, near_threshold)
    funnel["deduplicated"] = len(rows)
    funnel["round_trip"] = len(rows)
    report.kept = rows
    result = QASynthResult(rows, report, funnel, raw, sum(r["tokens"] for r in raw))
    return result if round_trip is None else round_trip_filter(result, round_trip, round_trip_f1)


def round_trip_filter(result: QASynthResult, answer: Callable[[list[str], list[str]], list[str]],
                      threshold: float = 0.5) -> QASynthResult:
    """A copy of `result` keeping the pairs whose question `answer(questions, contexts)` answers like the
    generated answer (SQuAD F1 >= `threshold`); the others are rejected as ``round_trip``. The unfiltered
    result is left as it was, so that a study can train on both."""
    from kdlib.students.qa import squad_scores

    rows = result.rows
    report = ParseReport(list(rows), list(result.report.rejected), Counter(result.report.counts), result.report.n_inputs)
    predicted = answer([r["question"] for r in rows], [r["context"] for r in rows]) if rows else []
    kept = []
    for row, pred in zip(rows, predicted):
        if squad_scores([pred], [row])["f1"] >= threshold:
            kept.append(row)
        else:
            report.reject(f"{row['question']} -> {row['answers']['text'][0]} (QA model: {pred})", "round_trip")
    report.kept = kept
    return dataclasses.replace(result, rows=kept, report=report, funnel={**result.funnel, "round_trip": len(kept)})


def synthesize_yes_no(teacher, passages: Sequence[str], per_passage: int = 3, *, examples: Sequence[dict] = (),
                      temperature: float = 0.7, max_new_tokens: int = 160, seed: int = 0, structured: bool = False,
                      against: Sequence[str] = (), near_threshold: float | None = 0.8) -> QASynthResult:
    """Yes/no/maybe questions for every passage: rows {id, question, context, label} (label a name of
    `YES_NO`), with the funnel requested → parsed → valid_label → deduplicated. Answers are read leniently
    ("Yes.", "NO" → yes, no); any other answer is rejected as ``bad_label``."""
    from kdlib.teachers.structured import json_schema, string_budget

    if per_passage < 1:
        raise ValueError(f"per_passage must be >= 1, got {per_passage}")
    texts = [t for t in (passage_text(p) for p in passages) if t]
    prompts = [yes_no_prompt(t, per_passage, examples, structured) for t in texts]
    grammar = json_schema(yes_no_schema(per_passage), compact=True,
                          string_max_tokens=string_budget(max_new_tokens - 8, per_passage, overhead_tokens=10))
    asked, report, raw, funnel = _ask(teacher, texts, prompts, [grammar] * len(prompts) if structured else None,
                                      per_passage, YES_NO_FUNNEL, seed=seed, temperature=temperature,
                                      max_new_tokens=max_new_tokens)
    rows = []
    for k, (passage, pairs) in enumerate(zip(texts, asked)):
        for j, pair in enumerate(pairs):
            label = pair["answer"].strip(" .!\"'`").casefold()
            if label not in YES_NO:
                report.reject(f"{pair['question']} -> {pair['answer']}", "bad_label")
                continue
            rows.append({"id": f"synth-yn-{seed}-{k}-{j}", "question": pair["question"], "context": passage,
                         "label": label})
    funnel["valid_label"] = len(rows)
    rows, report = _dedup(rows, texts, report, against, near_threshold)
    funnel["deduplicated"] = len(rows)
    report.kept = rows
    return QASynthResult(rows, report, funnel, raw, sum(r["tokens"] for r in raw))


def _ask(teacher, texts: list[str], prompts: list, grammars, per_passage: int, stages: Sequence[str], *,
         seed: int, temperature: float, max_new_tokens: int):
    """One teacher answer per passage, read into at most `per_passage` pairs each: (pairs per passage, the
    report with every answer that gave none, the raw outputs with their tokens, the funnel with `requested`
    and `parsed` counted and the later `stages` at 0)."""
    outs = teacher.generate(prompts, seed=seed, temperature=temperature, max_new_tokens=max_new_tokens,
                            grammars=grammars)
    report = ParseReport(n_inputs=len(outs))
    raw = [{"passage": t, "output": o.text, "tokens": o.prompt_tokens + o.completion_tokens} for t, o in zip(texts, outs)]
    funnel = dict.fromkeys(stages, 0)
    funnel["requested"] = per_passage * len(texts)
    asked = []
    for out in outs:
        pairs = parse_pairs(out.text)[:per_passage]
        if not pairs:
            report.reject(out.text, "no_pair")
        funnel["parsed"] += len(pairs)
        asked.append(pairs)
    return asked, report, raw, funnel


def _dedup(rows: list[dict], passages: list[str], report: ParseReport, against: Sequence[str],
           near_threshold: float | None) -> tuple[list[dict], ParseReport]:
    """Rows without duplicate questions, judged among the questions of one passage ("When was it founded?"
    asked of two passages is two examples), nor copies of `against` questions anywhere; the merged report."""
    kept, dups = [], ParseReport()
    for passage in passages:
        mine, part = dedup([r for r in rows if r["context"] == passage], key="question", near_threshold=near_threshold)
        kept, dups = kept + mine, dups.merge(part)
    rows, leaks = dedup(kept, key="question", near_threshold=None, against=[{"question": q} for q in against])
    dups.kept = kept
    return rows, ParseReport(rows, report.rejected, report.counts, report.n_inputs).then(dups).then(leaks)

"""Teacher output (free text or JSON) -> labelled examples, forgiving but honest.

A teacher may be a 135M model that rambles, truncates JSON and invents labels, or a
large API model that returns clean JSON. Everything here is pure: a list of raw
outputs goes in, a `ParseReport` comes out with the examples kept and every
rejection counted by reason. Nothing raises on bad teacher output (a bug that would
raise is caught per output and counted as ``parse_error``, so it shows up in the
counts instead of killing a long generation run); only a bad *call* (an empty label
set) raises.

This module holds the shared pieces (the report, text clean-up, JSON extraction, label
matching); `kdlib.parsing.classification` builds labelled texts on them and `kdlib.parsing.parse_ner`
NER examples.

Rejection reasons, per raw output:
    ``empty_output`` (None, "", whitespace), ``not_text`` (neither str, bytes, dict nor
    list), ``oversized_output`` (longer than ``max_raw_chars``), ``no_example``
    (neither JSON nor a recognisable labelled line), ``bad_json`` (a JSON object was
    started but cannot be decoded, e.g. cut off by ``max_new_tokens``), ``parse_error``
    (a bug, or a custom tokeniser whose tokens are not substrings of the text);
per example:
    ``missing_field``, ``unknown_label``, ``empty_text``, ``text_is_label``,
    ``too_short``, ``too_long``; NER adds its own (see `kdlib.parsing.parse_ner`).
`kdlib.parsing.dedup` adds ``duplicate_exact``, ``duplicate_near``, ``test_leak``, ``not_novel``.

JSON is found wherever it sits (fences, prose, JSON lines) and the complete objects of a
truncated list are kept; single-quoted Python dicts are read with `ast.literal_eval`
(literals only, nothing is executed).
"""

from __future__ import annotations

import ast
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

MAX_RAW_CHARS = 200_000   # a runaway generation is rejected, not regex-scanned
_SNIPPET_CHARS = 300      # how much of a rejected output the report keeps
_MAX_JSON_TRIES = 5_000   # bounds the JSON scan on pathological input like "{{{{..."


# ----------------------------------------------------------------------------- report

def _snippet(raw) -> str:
    if isinstance(raw, str):
        s = raw
    elif isinstance(raw, bytes):
        s = repr(raw[:_SNIPPET_CHARS])
    else:
        try:
            s = json.dumps(raw, ensure_ascii=False, default=str)
        except (TypeError, ValueError, RecursionError):
            s = repr(raw)
    return s if len(s) <= _SNIPPET_CHARS else s[:_SNIPPET_CHARS] + "…"


@dataclass
class ParseReport:
    """What a parse (or a filter) kept, what it dropped, and why.

    `rejected` holds ``(snippet, reason)`` pairs, the snippet cut to 300 characters so a
    runaway 10 MB generation does not live on in memory; `counts` counts the reasons,
    so ``sum(counts.values()) == len(rejected)`` always holds. `repairs` counts examples
    that were kept after a fix-up (``repaired_bio`` in `kdlib.parsing.parse_ner`): not rejections,
    so not in `counts`; `summary` lists them only when there are any.

    >>> r = ParseReport(n_inputs=1)
    >>> r.reject("Sure! Here you go.", "no_example")
    >>> r.summary()
    {'inputs': 1, 'kept': 0, 'rejected': 1, 'reasons': {'no_example': 1}}
    """

    kept: list = field(default_factory=list)
    rejected: list = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    n_inputs: int = 0
    repairs: Counter = field(default_factory=Counter)

    def reject(self, raw, reason: str) -> None:
        self.rejected.append((_snippet(raw), reason))
        self.counts[reason] += 1

    @property
    def rejection_rate(self) -> float:
        """Rejected / (kept + rejected): the share of judged items lost."""
        return len(self.rejected) / max(len(self.kept) + len(self.rejected), 1)

    def summary(self) -> dict:
        out = {"inputs": self.n_inputs, "kept": len(self.kept), "rejected": len(self.rejected),
               "reasons": dict(sorted(self.counts.items()))}
        if self.repairs:
            out["repairs"] = dict(sorted(self.repairs.items()))
        return out

    def merge(self, other: ParseReport) -> ParseReport:
        """Side by side (two batches of teacher output): everything adds up."""
        return ParseReport(self.kept + other.kept, self.rejected + other.rejected,
                           self.counts + other.counts, self.n_inputs + other.n_inputs,
                           self.repairs + other.repairs)

    def then(self, other: ParseReport) -> ParseReport:
        """In sequence (parse, then dedup of what parse kept): `other` decides what is kept."""
        return ParseReport(list(other.kept), self.rejected + other.rejected,
                           self.counts + other.counts, self.n_inputs, self.repairs + other.repairs)


# ----------------------------------------------------------------------------- text

# Control characters, zero-width marks, BOM and lone surrogates (the last would make
# the kept text unwritable as UTF-8 later, far from where it came in).
_JUNK = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x9f\u200b-\u200d\u2060\ufeff\ud800-\udfff]")
# Bullets, list numbering, markdown headers and "Example 3:" that models put before a text.
_BULLET_RE = r"^(?:[-*•·–—>]+\s+|\(?\d{1,3}[.):\]]\s+|#{1,6}\s+)"
_BULLET = re.compile(_BULLET_RE)
_LEAD = re.compile(_BULLET_RE + r"|^#?\**(?:example|sentence|text|review|output|version|paraphrase|rewrite|option)"
                   r"\s*#?\d*\s*:\**\s*", re.I)
_QUOTES = {"**": "**", '"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "„": "“", "`": "`"}
_LOOSE_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")


def _unquote(s: str, lone: bool = True) -> str:
    for a, b in _QUOTES.items():
        if len(s) >= len(a) + len(b) and s.startswith(a) and s.endswith(b):
            inner = s[len(a):len(s) - len(b)]
            # '"Great," he said, "really"' is not wrapped in quotes; 'it's' inside '...' is fine.
            if (b != "'" and b not in inner) or (b == "'" and not _LOOSE_APOSTROPHE.search(inner)):
                return inner.strip()
    if lone and s.count('"') == 1 and (s[0] == '"' or s[-1] == '"'):  # quote cut off by truncation
        return s.strip('"').strip()
    return s


def normalise_text(text: str, *, lone_quotes: bool = True) -> str:
    """Collapse whitespace and strip the bullets, numbering and quotes a model wraps text in.

    `lone_quotes` also strips a single unmatched '"' at either end (a quote cut off by the
    token limit); NER keeps it, since there a quote is a token.

    >>> normalise_text('  1. "A  truly\\n moving film."  ')
    'A truly moving film.'
    >>> normalise_text('- **Example 2:** \u200bIt\\'s fine.')
    "It's fine."
    """
    s = " ".join(unicodedata.normalize("NFC", _JUNK.sub("", text)).split())
    for _ in range(8):  # one layer per pass: '1. "**Great**"' needs three
        before = s
        s = _unquote(_LEAD.sub("", s).strip(), lone_quotes)
        if s == before:
            break
    return s


# ----------------------------------------------------------------------------- labels

def _canon(s: str) -> str:
    return " ".join(re.sub(r"^[\W_]+|[\W_]+$", "", s.casefold()).split())


def match_label(answer: str, label_names: list[str], synonyms: dict | None = None) -> str | None:
    """The label a short answer names, or None: case, quotes and punctuation are ignored,
    `synonyms` map other words onto labels, and a prefix of 3+ characters counts if unique.

    >>> match_label(' "Positive." ', ["negative", "positive"])
    'positive'
    >>> match_label("pos", ["negative", "positive"]), match_label("neg", ["negative", "negligible"])
    ('positive', None)
    >>> match_label("bad", ["negative", "positive"], {"bad": "negative"})
    'negative'
    """
    if not isinstance(answer, str):
        return None
    a = _canon(answer)
    if not a:
        return None
    table = {_canon(n): n for n in label_names}
    if a in table:
        return table[a]
    for word, target in (synonyms or {}).items():
        if _canon(word) == a and _canon(target) in table:
            return table[_canon(target)]
    hits = {n for c, n in table.items() if c.startswith(a)} if len(a) >= 3 else set()
    return hits.pop() if len(hits) == 1 else None


@lru_cache(maxsize=64)
def _mention_pattern(names: tuple, synonyms: tuple) -> tuple[re.Pattern, dict]:
    surface = {n.casefold(): n for n in names}
    for word, target in synonyms:
        label = match_label(target, list(names))
        if label:
            surface.setdefault(word.casefold(), label)
    alternatives = "|".join(re.escape(s) for s in sorted(surface, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.I), surface


_NEGATIONS = {"not", "no", "never", "neither", "nor", "without", "hardly"}


def _mentioned_label(text: str, label_names: list[str], synonyms: dict | None) -> str | None:
    """The one label named (not negated) in running text; None if none or several."""
    pattern, surface = _mention_pattern(tuple(label_names), tuple(sorted((synonyms or {}).items())))
    found = set()
    for m in pattern.finditer(text):
        before = re.findall(r"[\w']+", text[max(0, m.start() - 30):m.start()].casefold())[-3:]
        if any(w in _NEGATIONS or w.endswith("n't") for w in before):
            continue  # "not negative" says little about which label it is
        if m.group().casefold() in surface:
            found.add(surface[m.group().casefold()])
    return found.pop() if len(found) == 1 else None


_ANSWER_LINE = re.compile(
    r"^[^\w\n]{0,4}(?:final\s+)?(?:answer|label|sentiment|category|class|classification|topic|prediction)"
    r"s?[^\w\n:=]{0,4}\s*[:=]\s*(?P<value>[^\n]+)$", re.I | re.M)


def parse_label(text, label_names: list[str], synonyms: dict | None = None) -> str | None:
    """The label an annotation answer gives, or None when it gives none or is ambiguous.

    Tried in order: the whole answer as a label; "Answer:/Label:/Sentiment: X" lines
    (a prompt echo like "Labels: positive, negative" is ambiguous and skipped); a
    single non-negated mention of one label in the text.

    >>> labels = ["negative", "positive"]
    >>> parse_label("The sentiment is positive.", labels)
    'positive'
    >>> parse_label("Options: positive, negative\\nAnswer: Negative", labels)
    'negative'
    >>> parse_label("It is positive and negative.", labels) is None
    True
    >>> parse_label("This is not negative.", labels) is None
    True
    """
    if not isinstance(text, str) or not label_names:
        return None
    text = _JUNK.sub("", text[:MAX_RAW_CHARS])
    hit = match_label(text, label_names, synonyms)
    if hit:
        return hit
    answers = set()
    for m in _ANSWER_LINE.finditer(text):
        value = m["value"]
        hit = match_label(value, label_names, synonyms) or _mentioned_label(value, label_names, synonyms)
        if hit:
            answers.add(hit)
    if answers:
        return answers.pop() if len(answers) == 1 else None
    return _mentioned_label(text, label_names, synonyms)


# ----------------------------------------------------------------------------- raw outputs

def _coerce(raw, max_raw_chars: int):
    """(cleaned raw output, None) or (None, rejection reason)."""
    if raw is None:
        return None, "empty_output"
    if isinstance(raw, bytes):
        if len(raw) > max_raw_chars:
            return None, "oversized_output"
        raw = raw.decode("utf-8", errors="replace")
    if isinstance(raw, dict | list):  # an API teacher with structured output
        return (raw, None) if raw else (None, "empty_output")
    if not isinstance(raw, str):
        return None, "not_text"
    if len(raw) > max_raw_chars:
        return None, "oversized_output"
    raw = _JUNK.sub("", raw)
    return (raw, None) if raw.strip() else (None, "empty_output")


# Where a JSON value worth decoding can start: an object with a key, or a list of objects
# or strings. Skipping "[[[[" and "{{{{" keeps pathological outputs cheap.
_JSON_START = re.compile(r'\{\s*"|\[\s*[{"]')


def _json_values(text: str) -> tuple[list, int]:
    """Every JSON object/array embedded in `text` (fenced, bare, JSON-lines, in prose),
    and how many objects were started but could not be decoded.

    Scanning from each '{' or '[' also salvages the complete objects of a list cut off
    mid-way, which is the usual way a small model's JSON fails.
    """
    decoder, values, broken, pos = json.JSONDecoder(), [], 0, 0
    for _ in range(_MAX_JSON_TRIES):
        m = _JSON_START.search(text, pos)
        if not m:
            break
        try:
            value, end = decoder.raw_decode(text, m.start())
        except RecursionError:  # nested past Python's limit: junk, and slow to rescan
            return values, broken + 1
        except ValueError:
            broken += text[m.start()] == "{"
            pos = m.start() + 1
            continue
        if value:
            values.append(value)
        pos = end
    if not values and not broken:  # small models often write Python dicts: {'text': '...'}
        values = [v for v in map(_python_dict, _FLAT_BRACES.findall(text)) if v]
        broken = max(0, len(re.findall(r"\{\s*'", text)) - len(values))
    return values, broken


_FLAT_BRACES = re.compile(r"\{[^{}]{1,2000}\}")


def _python_dict(s: str) -> dict | None:
    try:
        value = ast.literal_eval(s)  # literals only: nothing in the output gets executed
    except Exception:  # SyntaxError, ValueError, MemoryError...: just not a dict
        return None
    return value if isinstance(value, dict) else None


def _items(value, depth: int = 0) -> list:
    """Flatten lists and {"examples": [...]} wrappers into candidate items."""
    if depth > 3:
        return [value]
    if isinstance(value, list):
        return [item for v in value for item in _items(v, depth + 1)]
    if isinstance(value, dict) and len(value) == 1:
        (key, inner), = value.items()
        if str(key).casefold() in {"examples", "data", "items", "results", "sentences", "output", "samples", "texts"} \
                and isinstance(inner, list):
            return _items(inner, depth + 1)
    return [value]


def _field(item: dict, keys: tuple):
    low = {str(k).casefold().strip(): v for k, v in item.items()}
    return next((low[k] for k in keys if k in low), None)


def _run(texts, parse_one, max_raw_chars: int) -> ParseReport:
    if isinstance(texts, str | bytes | dict) or not isinstance(texts, Iterable):
        texts = [texts]  # one output passed on its own, not a list of characters
    report = ParseReport()
    for raw in texts:
        report.n_inputs += 1
        value, reason = _coerce(raw, max_raw_chars)
        if reason:
            report.reject(raw, reason)
            continue
        before = len(report.kept) + len(report.rejected)
        try:
            parse_one(value, report)
        except Exception:  # never let one odd output end a generation run; count it
            report.reject(raw, "parse_error")
        if len(report.kept) + len(report.rejected) == before:
            report.reject(raw, "no_example")  # every output is kept or counted, never silently gone
    return report


_KV = re.compile(r"^[^\w\n]{0,4}(?P<key>[A-Za-z][A-Za-z ]{0,24}?)[^\w\n:=]{0,4}\s*[:=]\s*(?P<value>.*)$")

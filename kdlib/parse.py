"""Teacher output (free text or JSON) -> labelled examples, forgiving but honest.

A teacher may be a 135M model that rambles, truncates JSON and invents labels, or a
large API model that returns clean JSON. Everything here is pure: a list of raw
outputs goes in, a `ParseReport` comes out with the examples kept and every
rejection counted by reason. Nothing raises on bad teacher output (a bug that would
raise is caught per output and counted as ``parse_error``, so it shows up in the
counts instead of killing a long generation run); only a bad *call* (an empty label
set) raises.

Rejection reasons, per raw output:
    ``empty_output`` (None, "", whitespace), ``not_text`` (neither str, bytes, dict nor
    list), ``oversized_output`` (longer than ``max_raw_chars``), ``no_example``
    (neither JSON nor a recognisable labelled line), ``bad_json`` (a JSON object was
    started but cannot be decoded, e.g. cut off by ``max_new_tokens``), ``parse_error``
    (a bug, or a custom tokeniser whose tokens are not substrings of the text);
per example:
    ``missing_field``, ``unknown_label``, ``empty_text``, ``text_is_label``,
    ``too_short``, ``too_long``; NER also ``bad_markup`` (markup left over after parsing);
per NER entity (the example is kept without it unless ``strict=True``):
    ``unknown_label``, ``missing_field``, ``bad_entity_span`` (text not in the sentence
    or not on token boundaries), ``overlapping_span``.
`kdlib.dedup` adds ``duplicate_exact``, ``duplicate_near``, ``test_leak``, ``not_novel``.

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
from collections.abc import Callable, Iterable
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
    so ``sum(counts.values()) == len(rejected)`` always holds.

    >>> r = ParseReport(n_inputs=1)
    >>> r.reject("Sure! Here you go.", "no_example")
    >>> r.summary()
    {'inputs': 1, 'kept': 0, 'rejected': 1, 'reasons': {'no_example': 1}}
    """

    kept: list = field(default_factory=list)
    rejected: list = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    n_inputs: int = 0

    def reject(self, raw, reason: str) -> None:
        self.rejected.append((_snippet(raw), reason))
        self.counts[reason] += 1

    def summary(self) -> dict:
        return {"inputs": self.n_inputs, "kept": len(self.kept), "rejected": len(self.rejected),
                "reasons": dict(sorted(self.counts.items()))}

    def merge(self, other: ParseReport) -> ParseReport:
        """Side by side (two batches of teacher output): everything adds up."""
        return ParseReport(self.kept + other.kept, self.rejected + other.rejected,
                           self.counts + other.counts, self.n_inputs + other.n_inputs)

    def then(self, other: ParseReport) -> ParseReport:
        """In sequence (parse, then dedup of what parse kept): `other` decides what is kept."""
        return ParseReport(list(other.kept), self.rejected + other.rejected,
                           self.counts + other.counts, self.n_inputs)


# ----------------------------------------------------------------------------- text

# Control characters, zero-width marks, BOM and lone surrogates (the last would make
# the kept text unwritable as UTF-8 later, far from where it came in).
_JUNK = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x9f\u200b-\u200d\u2060\ufeff\ud800-\udfff]")
# Bullets, list numbering, markdown headers and "Example 3:" that models put before a text.
_BULLET_RE = r"^(?:[-*•·–—>]+\s+|\(?\d{1,3}[.):\]]\s+|#{1,6}\s+)"
_BULLET = re.compile(_BULLET_RE)
_LEAD = re.compile(_BULLET_RE + r"|^\**(?:example|sentence|text|review|output)\s*#?\d*\s*:\**\s*", re.I)
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


# CoNLL-2003 style: clitics split off ("Germany 's", "do n't"), dates, numbers, hyphenated
# words and dotted abbreviations kept whole, any other symbol on its own.
_TOKEN = re.compile(r"""
    (?:[^\W\d_]\.){2,}                  # U.S. e.g.
  | (?:Mr|Mrs|Ms|Dr|Prof|St|Mt|Jr|Sr|Gen|Gov|Sen|Rep|Lt|Col|Inc|Ltd|Corp|Co|vs|etc
     |Jan|Feb|Aug|Sept?|Oct|Nov|Dec)\.(?!\w)
  | (?-i:[A-Z]\.(?=\s+[A-Z]))           # an initial: P. Simmons
  | (?-i:[A-Z]+&[A-Z]+|[A-Z]{1,3}\$)     # S&P AT&T C$ US$
  | (?<![\w.])[+-]?\.?\d+(?:[.,:/-]\d+)*(?![-\w])   # 1,000 3.5 .496 +3 1996-08-22 10:30 2-1
  | --+|\.\.\.+|\*\*+                    # -- ... **
  | [^\W_]+(?=n't\b)                    # do|n't
  | n't\b
  | ['’](?:s|re|ve|ll|d|m)\b            # Germany|'s
  | [^\W_]+(?:-[^\W_]+|['’](?!(?:s|re|ve|ll|d|m)\b)[^\W_]+)*   # long-term O'Neill
  | \S
""", re.VERBOSE | re.IGNORECASE)


def simple_tokenize(text: str) -> list[str]:
    """Regex word/punctuation tokeniser in the CoNLL-2003 style.

    >>> simple_tokenize("Germany's long-term plan, agreed on 1996-08-22, didn't cost $1,000.")
    ['Germany', "'s", 'long-term', 'plan', ',', 'agreed', 'on', '1996-08-22', ',', 'did', "n't", 'cost', '$', '1,000', '.']
    """
    return _TOKEN.findall(text)


def spacy_tokenizer(lang: str = "en") -> Callable[[str], list[str]]:
    """spaCy's rule-based tokeniser for `lang` (no model download: `spacy.blank`)."""
    import spacy  # lazily: spaCy takes seconds to import

    nlp = spacy.blank(lang)
    return lambda text: [t.text for t in nlp.tokenizer(text)]


def _tokens_with_offsets(text: str, tokenizer) -> list[tuple[str, int, int]] | None:
    if tokenizer is None:
        return [(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)]
    out, pos = [], 0
    for tok in tokenizer(text):
        tok = getattr(tok, "text", tok)  # a spaCy tokenizer returns Token objects
        if not tok.strip():
            continue
        start = text.find(tok, pos)
        if start < 0:  # a tokeniser that rewrites text (PTB quotes) cannot be aligned
            return None
        out.append((tok, start, start + len(tok)))
        pos = start + len(tok)
    return out


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
        if str(key).casefold() in {"examples", "data", "items", "results", "sentences", "output"} \
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


# ----------------------------------------------------------------------------- classification

TEXT_KEYS = ("text", "sentence", "review", "example", "input", "content", "tweet", "headline", "passage")
LABEL_KEYS = ("label", "sentiment", "category", "class", "topic", "answer", "output", "type")

_KV = re.compile(r"^[^\w\n]{0,4}(?P<key>[A-Za-z][A-Za-z ]{0,24}?)[^\w\n:=]{0,4}\s*[:=]\s*(?P<value>.*)$")
_TAG_HEAD = re.compile(r"^[\[(](?P<label>[^\[\]()]{1,40})[\])]\s*[:\-–]?\s*(?P<text>.+)$")
_TAG_TAIL = re.compile(r"^(?P<text>.+?)\s*[\[(](?P<label>[^\[\]()]{1,40})[\])][\s.]*$")
_SEP_HEAD = re.compile(r"^(?P<label>[^:\n]{1,40}?)\s*(?::|\s[-–—]\s)\s*(?P<text>.+)$")
_SEP_TAIL = re.compile(r"^(?P<text>.+?)\s+(?:->|=>|→|\||[-–—])\s+(?P<label>[^|>→]{1,40})$")


@dataclass
class _ClassCfg:
    labels: list
    synonyms: dict | None
    default_label: str | None
    min_chars: int
    max_chars: int


def _finish_text(text, label, cfg: _ClassCfg, report: ParseReport, raw) -> None:
    if isinstance(text, int | float) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str):
        return report.reject(raw, "missing_field")
    text = normalise_text(text)
    if not text:
        reason = "empty_text"
    elif _canon(text) in {_canon(n) for n in cfg.labels}:
        reason = "text_is_label"  # {"text": "positive", "label": "positive"}
    elif len(text) < cfg.min_chars:
        reason = "too_short"
    elif len(text) > cfg.max_chars:
        reason = "too_long"
    else:
        return report.kept.append({"text": text, "label": label})
    report.reject(raw, reason)


def _class_item(item, cfg: _ClassCfg, report: ParseReport) -> None:
    if isinstance(item, str) and cfg.default_label:
        return _finish_text(item, cfg.default_label, cfg, report, item)
    if not isinstance(item, dict):
        return report.reject(item, "missing_field")
    text, label = _field(item, TEXT_KEYS), _field(item, LABEL_KEYS)
    if item and text is None and label is None and all(match_label(str(k), cfg.labels, cfg.synonyms) for k in item):
        for key, texts in item.items():  # {"positive": ["...", "..."], "negative": "..."}
            for t in texts if isinstance(texts, list) else [texts]:
                _class_item({"text": t, "label": key}, cfg, report)
        return None
    label = cfg.default_label if label is None else label
    if text is None or label is None:
        return report.reject(item, "missing_field")
    resolved = parse_label(label if isinstance(label, str) else json.dumps(label), cfg.labels, cfg.synonyms)
    if resolved is None:
        return report.reject(item, "unknown_label")
    return _finish_text(text, resolved, cfg, report, item)


def _labelled_line(s: str, cfg: _ClassCfg) -> tuple[str | None, str | None, bool]:
    """(text, label, tagged) for one line; tagged means an explicit [label] that must resolve."""
    m = _TAG_HEAD.match(s)
    if m and len(m["label"].split()) <= 3:  # "[funny] ..." is a label; "(Note: all made up) ..." is not
        return m["text"], parse_label(m["label"], cfg.labels, cfg.synonyms), True
    for pattern in (_SEP_HEAD, _TAG_TAIL, _SEP_TAIL):
        m = pattern.match(s)
        if m:
            # Bare "X: text" only counts when X is a label; "(2019)" at the end is no label.
            label = (match_label if pattern is not _TAG_TAIL else parse_label)(m["label"], cfg.labels, cfg.synonyms)
            if label:
                return m["text"], label, False
    return None, None, False


def _class_free_text(raw: str, cfg: _ClassCfg, report: ParseReport) -> None:
    n_before = len(report.kept) + len(report.rejected)
    block, section, unlabelled = {}, None, []
    for line in raw.splitlines():
        bullet = bool(_BULLET.match(line.strip()))
        s = _BULLET.sub("", line.strip()).strip()
        if not s:
            continue
        kv = _KV.match(s)
        key = kv["key"].strip().casefold() if kv else ""
        if key in TEXT_KEYS or key in LABEL_KEYS:  # "Text: ...\nLabel: ..." blocks, either order
            slot = "text" if key in TEXT_KEYS else "label"
            if slot in block:
                report.reject(block, "missing_field")
                block = {}
            block[slot] = kv["value"]
            if len(block) == 2:
                _class_item(block, cfg, report)
                block = {}
            continue
        header = match_label(s, cfg.labels, cfg.synonyms) if len(s) <= 40 else None
        if header:
            section = header  # "Positive:" heading a list of examples
            continue
        text, label, tagged = _labelled_line(s, cfg)
        if label:
            _finish_text(text, label, cfg, report, line)
        elif tagged:
            report.reject(line, "unknown_label")
        elif section and bullet:
            _finish_text(s, section, cfg, report, line)
        elif cfg.default_label and not kv and not s.endswith(":"):
            unlabelled.append((s, bullet))
    if block:
        report.reject(block, "missing_field")
    if cfg.default_label and len(report.kept) + len(report.rejected) == n_before:
        # Only lines nobody labelled: the caller asked for `default_label`. When the model
        # numbered its examples, the unnumbered lines are chatter ("Sure! Here are five").
        listed = [s for s, bullet in unlabelled if bullet] or [s for s, _ in unlabelled]
        for s in listed:
            _finish_text(s, cfg.default_label, cfg, report, s)


def _class_one(raw, cfg: _ClassCfg, report: ParseReport) -> None:
    if not isinstance(raw, str):
        values, broken = [raw], 0
    else:
        values, broken = _json_values(raw)
        values = [v for v in values if isinstance(v, dict) or any(isinstance(x, dict) for x in v)
                  or (cfg.default_label and all(isinstance(x, str) for x in v))]
    if values:
        for item in (i for v in values for i in _items(v)):
            _class_item(item, cfg, report)
        if broken:
            report.reject(raw, "bad_json")  # e.g. the truncated tail after salvaged objects
        return
    if broken:  # JSON was attempted and none of it decodes: do not read it as prose
        return report.reject(raw, "bad_json")
    _class_free_text(raw, cfg, report)


def parse_classification(texts: Iterable, label_names: list[str], *, synonyms: dict | None = None,
                         default_label: str | None = None, min_chars: int = 3, max_chars: int = 1000,
                         max_raw_chars: int = MAX_RAW_CHARS) -> ParseReport:
    """Turn teacher outputs into ``{"text", "label"}`` examples; count what is dropped and why.

    Each output may hold, in any mix: a JSON object ``{"text": ..., "label": ...}`` (also
    "sentence"/"review"/..., "sentiment"/"category"/...), a JSON list of them, JSON in
    ```json fences or as JSON lines, ``{"positive": [...], "negative": [...]}``, or lines
    like ``Text: ...`` + ``Label: ...``, ``positive: ...``, ``1. [positive] ...``,
    ``... (positive)``, ``... -> positive``, or a ``Positive:`` heading over a numbered list.
    With `default_label` (the label the prompt asked for) unlabelled lines get it.
    Labels resolve through `parse_label` (case, quotes, unique prefix, `synonyms`).

    >>> r = parse_classification(['[{"text": "Loved it!", "label": "Positive"}, {"text": "Meh", "lab',
    ...                           "1. [neg] Two hours I will never get back.", None],
    ...                          ["negative", "positive"])
    >>> r.kept
    [{'text': 'Loved it!', 'label': 'positive'}, {'text': 'Two hours I will never get back.', 'label': 'negative'}]
    >>> r.summary()["reasons"]
    {'bad_json': 1, 'empty_output': 1}
    """
    if not label_names:
        raise ValueError("label_names is empty: nothing to validate labels against")
    labels = [str(n) for n in label_names]
    if default_label is not None and default_label not in labels:
        raise ValueError(f"default_label {default_label!r} is not in the label set {labels}")
    cfg = _ClassCfg(labels, synonyms, default_label, min_chars, max_chars)
    return _run(texts, lambda raw, report: _class_one(raw, cfg, report), max_raw_chars)


# ----------------------------------------------------------------------------- NER

SENTENCE_KEYS = ("sentence", "text", "input", "content", "example")
ENTITY_KEYS = ("entities", "entity", "named entities", "ner", "spans", "annotations", "labels")
ENTITY_TEXT_KEYS = ("text", "entity", "span", "name", "word", "value", "mention")
ENTITY_TYPE_KEYS = ("type", "label", "tag", "category", "entity_type", "class", "entity type")
# Long forms a model writes for the CoNLL types; used only when the target is in the set.
NER_SYNONYMS = {"person": "PER", "people": "PER", "location": "LOC", "place": "LOC", "gpe": "LOC",
                "organization": "ORG", "organisation": "ORG", "company": "ORG",
                "miscellaneous": "MISC", "nationality": "MISC", "norp": "MISC", "event": "MISC"}

# [Paris](LOC) or <LOC>Paris</LOC>; the XML form may nest, the bracket form may not.
# Entity text is bounded so that unclosed tags in a long output cannot make the scan quadratic.
_MARKUP = re.compile(r"\[(?P<t1>[^\[\]\n]{1,150}?)\]\(\s*(?P<y1>[^()\n]{1,30}?)\s*\)"
                     r"|<(?P<y2>[A-Za-z][\w-]{0,29})>(?P<t2>.{0,150}?)</(?P=y2)\s*>", re.S | re.I)
_TAG_LEFT = re.compile(r"</?([A-Za-z][\w-]{0,29})>")
_ENTITY_ITEM = re.compile(r"^(?P<a>.+?)\s*(?:[\[(]\s*(?P<b1>[^\[\]()]+?)\s*[\])]"
                          r"|(?:[:=]|->|\s[-–—]\s)\s*(?P<b2>.+?))\s*$")


@dataclass
class _NerCfg:
    types: list
    synonyms: dict
    tokenizer: Callable | None
    strict: bool
    min_tokens: int
    max_tokens: int


def _strip_markup(line: str) -> tuple[str, list, int]:
    """Plain sentence, [(start, end, raw type)] and how many nested spans were dropped."""
    out, spans, nested, pos, length = [], [], 0, 0, 0
    for m in _MARKUP.finditer(line):
        out.append(line[pos:m.start()])
        length += m.start() - pos
        text, typ = (m["t1"], m["y1"]) if m["t1"] is not None else (m["t2"], m["y2"])
        for _ in range(3):  # <ORG><LOC>New York</LOC> Times</ORG>: the outer span wins
            text, n = _MARKUP.subn(lambda x: x["t1"] if x["t1"] is not None else x["t2"], text)
            nested += n
        lead = len(text) - len(text.lstrip())
        spans.append((length + lead, length + len(text.rstrip()), typ))
        out.append(text)
        length += len(text)
        pos = m.end()
    out.append(line[pos:])
    return "".join(out), spans, nested


def _entity_pairs(ents, cfg: _NerCfg, problems: list) -> list[tuple[str, str]]:
    """[(entity text, raw type)] from the many shapes models give an entity list."""
    if isinstance(ents, str):
        if _canon(ents) in {"", "none", "n/a", "na", "no entities", "nil"}:
            return []
        ents = [e for e in re.split(r"[;,]\s*(?![^()\[\]]*[)\]])", ents) if e.strip()]
    if isinstance(ents, dict):  # {"PER": ["John"], "LOC": "Paris"} or {"John": "PER"}
        pairs = []
        for key, value in ents.items():
            for v in value if isinstance(value, list) else [value]:
                if v is None or v == "":
                    continue
                typed = match_label(str(key), cfg.types, cfg.synonyms)
                pairs.append((v, key) if typed else (key, v))
        return [(str(t), str(y)) for t, y in pairs]
    pairs = []
    for e in ents if isinstance(ents, list) else [ents]:
        text = typ = None
        if isinstance(e, dict):
            text, typ = _field(e, ENTITY_TEXT_KEYS), _field(e, ENTITY_TYPE_KEYS)
        elif isinstance(e, list | tuple) and len(e) == 2:
            text, typ = e
        elif isinstance(e, str) and len(e) <= 200 and (m := _ENTITY_ITEM.match(e.strip())):
            text, typ = m["a"], m["b1"] or m["b2"]
            if match_label(text, cfg.types, cfg.synonyms) and not match_label(typ, cfg.types, cfg.synonyms):
                text, typ = typ, text  # "LOC: Paris"
        if isinstance(text, str) and isinstance(typ, str) and text.strip():
            pairs.append((text, typ))
        else:
            problems.append((e, "missing_field"))
    return pairs


def _occurrences(sentence: str, text: str, starts: set, ends: set) -> list[tuple[int, int]]:
    pattern = r"\s+".join(re.escape(part) for part in text.split())
    for flags in (0, re.I):  # exact case first; "paris" for "Paris" only as a fallback
        hits = [(m.start(), m.end()) for m in re.finditer(pattern, sentence, flags)
                if m.start() in starts and m.end() in ends]
        if hits:
            return hits
    return []


def _spans_from_mentions(sentence: str, tokens: list, mentions: list, problems: list) -> list:
    """Place listed (text, type) entities: longest text first, every free occurrence tagged.

    "Paris Hilton" is placed before "Paris"; a text listed once is tagged wherever it
    occurs; listed twice with two types ("Washington" PER, then LOC), its occurrences
    take the types in order and the last type covers the rest.
    """
    starts, ends = {s for _, s, _ in tokens}, {e for _, _, e in tokens}
    groups: dict[str, list] = {}
    for text, typ in mentions:
        groups.setdefault(normalise_text(text), []).append(typ)
    spans, taken = [], []
    for text in sorted(groups, key=len, reverse=True):
        types = groups[text]
        found = _occurrences(sentence, text, starts, ends) if text else []
        free = [(s, e) for s, e in found if all(e <= a or s >= b for a, b in taken)]
        if not free:
            problems.extend((text, "overlapping_span" if found else "bad_entity_span") for _ in types)
            continue
        for k, (s, e) in enumerate(free):
            spans.append((s, e, types[min(k, len(types) - 1)]))
            taken.append((s, e))
        problems.extend((text, "overlapping_span") for t in types[len(free):] if t != types[len(free) - 1])
    return spans


def _bio(plain: str, tokens: list, spans: list, problems: list) -> list[str]:
    start_at = {s: i for i, (_, s, _) in enumerate(tokens)}
    end_at = {e: i for i, (_, _, e) in enumerate(tokens)}
    tags = ["O"] * len(tokens)
    for s, e, typ in spans:
        i, j = start_at.get(s), end_at.get(e)
        if i is None or j is None or j < i:  # "[Paris](LOC)ian": the span cuts a token
            problems.append((f"{plain[s:e]} ({typ})", "bad_entity_span"))
        elif any(t != "O" for t in tags[i:j + 1]):
            problems.append((f"{plain[s:e]} ({typ})", "overlapping_span"))
        else:
            tags[i:j + 1] = [f"B-{typ}"] + [f"I-{typ}"] * (j - i)
    return tags


def _looks_marked(s: str, cfg: _NerCfg) -> bool:
    """Markup `_MARKUP` did not parse: a tag naming an entity type, or "](" ."""
    return "](" in s or any(match_label(t, cfg.types, cfg.synonyms) for t in set(_TAG_LEFT.findall(s)))


def _typed(pairs: list, cfg: _NerCfg, problems: list, show=str) -> list:
    """[(payload, raw type)] -> [(payload, entity type)], unknown types counted and dropped."""
    out = []
    for payload, typ in pairs:
        label = match_label(typ, cfg.types, cfg.synonyms)
        if label is None:
            problems.append((f"{show(payload)} ({typ})", "unknown_label"))
        else:
            out.append((payload, label))
    return out


def _ner_example(sentence, ents, cfg: _NerCfg, report: ParseReport, raw) -> None:
    """One sentence with inline markup (ents is None) or with a listed entity set."""
    if not isinstance(sentence, str):
        return report.reject(raw, "missing_field")
    problems: list = []
    # A lone quote is a token in a sentence ('" We do n't ...'), not truncation debris.
    plain, spans, nested = _strip_markup(normalise_text(sentence, lone_quotes=False))
    problems += [(sentence, "overlapping_span")] * nested
    if _looks_marked(plain, cfg):  # markup left over: "<LOC>Paris</PER>", nested brackets
        return report.reject(raw, "bad_markup")
    tokens = _tokens_with_offsets(plain, cfg.tokenizer)
    if tokens is None:
        return report.reject(raw, "parse_error")
    if ents is None:  # inline markup: the spans are explicit
        pairs = [((s, e), y) for s, e, y in spans]
        typed = [(s, e, y) for (s, e), y in _typed(pairs, cfg, problems, lambda p: plain[p[0]:p[1]])]
    else:  # a listed entity set: find each entity's text in the sentence
        typed = _spans_from_mentions(plain, tokens, _typed(_entity_pairs(ents, cfg, problems), cfg, problems),
                                     problems)
    tags = _bio(plain, tokens, sorted(typed), problems)
    if cfg.strict and problems:
        return report.reject(raw, problems[0][1])
    for what, reason in problems:
        report.reject(what, reason)
    if not tokens:
        return report.reject(raw, "empty_text")
    if len(tokens) < cfg.min_tokens or len(tokens) > cfg.max_tokens:
        return report.reject(raw, "too_short" if len(tokens) < cfg.min_tokens else "too_long")
    report.kept.append({"tokens": [t for t, _, _ in tokens], "tags": tags})


def _ner_free_text(raw: str, cfg: _NerCfg, report: ParseReport) -> None:
    block = {}
    for line in raw.splitlines():
        s = _BULLET.sub("", line.strip()).strip()
        kv = _KV.match(s)
        key = kv["key"].strip().casefold() if kv else ""
        if key in SENTENCE_KEYS and _MARKUP.search(kv["value"]):
            _ner_example(kv["value"], None, cfg, report, line)
        elif key in SENTENCE_KEYS or key in ENTITY_KEYS:  # "Sentence: ...\nEntities: Paris (LOC)"
            slot = "sentence" if key in SENTENCE_KEYS else "entities"
            if slot in block:
                report.reject(block, "missing_field")
                block = {}
            block[slot] = kv["value"]
            if len(block) == 2:
                _ner_example(block["sentence"], block["entities"], cfg, report, block)
                block = {}
        elif _MARKUP.search(s) or _looks_marked(s, cfg):
            _ner_example(s, None, cfg, report, line)
    if block:
        report.reject(block, "missing_field")


def _ner_one(raw, cfg: _NerCfg, report: ParseReport) -> None:
    values, broken = ([raw], 0) if not isinstance(raw, str) else _json_values(raw)
    items = [i for v in values for i in _items(v) if isinstance(i, dict)]
    if not items:
        if broken or not isinstance(raw, str):
            return report.reject(raw, "bad_json" if broken else "missing_field")
        return _ner_free_text(raw, cfg, report)
    for item in items:
        sentence, ents = _field(item, SENTENCE_KEYS), _field(item, ENTITY_KEYS)
        if ents is None and not (isinstance(sentence, str) and _MARKUP.search(sentence)):
            report.reject(item, "missing_field")
        else:
            _ner_example(sentence, ents, cfg, report, item)
    if broken:
        report.reject(raw, "bad_json")


def parse_ner(texts: Iterable, entity_types: list[str], *, tokenizer: Callable | None = None,
              synonyms: dict | None = None, strict: bool = False, min_tokens: int = 1,
              max_tokens: int = 256, max_raw_chars: int = MAX_RAW_CHARS) -> ParseReport:
    """Turn teacher outputs into ``{"tokens": [...], "tags": ["B-PER", "I-PER", "O", ...]}``.

    Accepted: JSON ``{"sentence": ..., "entities": [{"text": "Paris", "type": "LOC"}]}``
    (also ``[["Paris", "LOC"]]``, ``{"LOC": ["Paris"]}``, ``"Paris (LOC), John (PER)"``),
    inline ``[Paris](LOC)`` or ``<LOC>Paris</LOC>`` markup on any line, and
    ``Sentence: ...`` + ``Entities: ...`` lines. The sentence is tokenised with
    `simple_tokenize` (CoNLL style) or `tokenizer` (e.g. `spacy_tokenizer()`); tags are
    BIO (IOB2). Entities with an unknown type, text not on token boundaries of the
    sentence, or overlapping a longer one are dropped and counted; with ``strict=True``
    the whole example is dropped instead. Types match case-insensitively, by unique
    prefix, through `synonyms` and through `NER_SYNONYMS` ("person" -> PER).

    >>> r = parse_ner(["[Peter Blackburn](PER) flew to <LOC>Paris</LOC>.", "no entities here"],
    ...               ["PER", "LOC", "ORG", "MISC"])
    >>> r.kept
    [{'tokens': ['Peter', 'Blackburn', 'flew', 'to', 'Paris', '.'], 'tags': ['B-PER', 'I-PER', 'O', 'O', 'B-LOC', 'O']}]
    >>> r.summary()["reasons"]
    {'no_example': 1}
    """
    if not entity_types:
        raise ValueError("entity_types is empty: nothing to validate entity types against")
    types = [str(t) for t in entity_types]
    merged = {k: v for k, v in NER_SYNONYMS.items() if match_label(v, types)} | dict(synonyms or {})
    cfg = _NerCfg(types, merged, tokenizer, strict, min_tokens, max_tokens)
    return _run(texts, lambda raw, report: _ner_one(raw, cfg, report), max_raw_chars)

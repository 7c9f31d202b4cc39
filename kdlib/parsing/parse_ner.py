"""Teacher output -> BIO (IOB2) NER examples ``{"tokens": [...], "tags": [...]}``.

Built on `kdlib.parsing.parse` (report, text clean-up, JSON extraction, label matching); the same
rules hold: nothing raises on bad teacher output and every rejection is counted by reason.
Besides the reasons of `kdlib.parsing.parse`, NER counts

per example:
    ``bad_markup`` (markup left over after parsing); for CoNLL-shaped JSON
    ``{"tokens": [...], "tags": [...]}``: ``bad_tokens`` (not a list of strings, or a token
    empty or holding whitespace), ``bad_tag`` (tags not a list, or a tag that is not ``O``,
    ``B-X`` or ``I-X``), ``tag_count_mismatch`` (tokens and tags differ in length),
    ``unknown_label`` (a tag's type is not in the entity set);
per entity (the example is kept without it unless ``strict=True``):
    ``unknown_label``, ``missing_field``, ``bad_entity_span`` (text not in the sentence
    or not on token boundaries), ``overlapping_span``.

Repairs (the example is kept, counted in ``ParseReport.repairs``, not a rejection):
    ``repaired_bio``: CoNLL-shaped JSON with an ``I-X`` that follows ``O``, the start,
    or another type (IOB1, as the original CoNLL-2003 files are written) has that tag
    turned into ``B-X``; counted once per example.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kdlib.parsing.parse import (
    _BULLET,
    _JUNK,
    _KV,
    MAX_RAW_CHARS,
    ParseReport,
    _canon,
    _field,
    _items,
    _json_values,
    _run,
    match_label,
    normalise_text,
)
from kdlib.parsing.tokens import _tokens_with_offsets, simple_tokenize, spacy_tokenizer  # noqa: F401 (public here too)

# ----------------------------------------------------------------------------- NER

SENTENCE_KEYS = ("sentence", "text", "input", "content", "example")
ENTITY_KEYS = ("entities", "entity", "named entities", "ner", "spans", "annotations", "labels")
ENTITY_TEXT_KEYS = ("text", "entity", "span", "name", "word", "value", "mention")
ENTITY_TYPE_KEYS = ("type", "label", "tag", "category", "entity_type", "class", "entity type")
# CoNLL-shaped JSON: parallel token and tag lists (an item with both takes this path).
TOKEN_KEYS = ("tokens", "words")
TAG_KEYS = ("tags", "ner_tags", "labels")
# Long forms a model writes for the CoNLL types; used only when the target is in the set.
NER_SYNONYMS = {"person": "PER", "people": "PER", "location": "LOC", "place": "LOC", "gpe": "LOC",
                "organization": "ORG", "organisation": "ORG", "company": "ORG",
                "miscellaneous": "MISC", "nationality": "MISC", "norp": "MISC", "event": "MISC"}

# [Paris](LOC) or <LOC>Paris</LOC>; the XML form may nest, the bracket form may not.
# Entity text is bounded so that unclosed tags in a long output cannot make the scan quadratic.
_MARKUP = re.compile(r"\[(?P<t1>[^\[\]\n]{1,150}?)\]\(\s*(?P<y1>[^()\n]{1,30}?)\s*\)"
                     r"|<(?P<y2>[A-Za-z][\w-]{0,29})>(?P<t2>.{0,150}?)</(?P=y2)\s*>", re.S | re.I)
# a line that ends inside an opened entity ("... in [Gen", "... in [Geneva]", "... in [Geneva](LO"): markup cut by a token limit
_CUT_ENTITY = re.compile(r"\[[^\[\]()\n]*(?:\](?:\([^()\n]*)?)?$")
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
    sentence = normalise_text(sentence, lone_quotes=False)
    cut = _CUT_ENTITY.search(sentence)
    if cut:  # a line cut by a token limit inside an entity: keep the words before it
        sentence = sentence[:cut.start()].rstrip()
        report.repairs["cut_entity"] += 1
    plain, spans, nested = _strip_markup(sentence)
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


_BIO_TAG = re.compile(r"(?P<prefix>[BI])-(?P<type>.+)", re.I | re.S)


def _conll_example(tokens, tags, cfg: _NerCfg, report: ParseReport, raw) -> None:
    """``{"tokens": [...], "tags": [...]}`` as an API teacher may return it.

    The tokens are kept as given (`cfg.tokenizer` is not applied), cleaned only of control
    characters and NFC-normalised. Tag types resolve like all NER types (``B-person`` ->
    ``B-PER``); an unknown type or a malformed tag rejects the whole example, whatever
    `cfg.strict` says. An ``I-X`` that continues nothing of type X becomes ``B-X`` and the
    example counts once as ``repaired_bio`` in `report.repairs`.
    """
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        return report.reject(raw, "bad_tokens")
    tokens = [unicodedata.normalize("NFC", _JUNK.sub("", t)).strip() for t in tokens]
    if any(not t or len(t.split()) != 1 for t in tokens):
        return report.reject(raw, "bad_tokens")
    if not isinstance(tags, list):
        return report.reject(raw, "bad_tag")
    if len(tags) != len(tokens):
        return report.reject(raw, "tag_count_mismatch")
    out, prev, repaired = [], None, False
    for tag in tags:
        tag = tag.strip() if isinstance(tag, str) else None
        m = _BIO_TAG.fullmatch(tag) if tag else None
        if tag in ("O", "o"):
            out.append("O")
            prev = None
            continue
        if m is None:
            return report.reject(raw, "bad_tag")
        typ = match_label(m["type"], cfg.types, cfg.synonyms)
        if typ is None:
            return report.reject(raw, "unknown_label")
        prefix = m["prefix"].upper()
        if prefix == "I" and prev != typ:  # IOB1, or a model losing track: start a new entity
            prefix, repaired = "B", True
        out.append(f"{prefix}-{typ}")
        prev = typ
    if not tokens:
        return report.reject(raw, "empty_text")
    if len(tokens) < cfg.min_tokens or len(tokens) > cfg.max_tokens:
        return report.reject(raw, "too_short" if len(tokens) < cfg.min_tokens else "too_long")
    report.kept.append({"tokens": tokens, "tags": out})
    if repaired:
        report.repairs["repaired_bio"] += 1


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
        elif _MARKUP.search(s) or _looks_marked(s, cfg) or _CUT_ENTITY.search(s):
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
        tokens, tags = _field(item, TOKEN_KEYS), _field(item, TAG_KEYS)
        if tokens is not None and tags is not None:
            _conll_example(tokens, tags, cfg, report, item)
            continue
        sentence, ents = _field(item, SENTENCE_KEYS), _field(item, ENTITY_KEYS)
        if ents is None and not (isinstance(sentence, str) and _MARKUP.search(sentence)):
            report.reject(item, "missing_field")
        else:
            _ner_example(sentence, ents, cfg, report, item)
    if broken:
        report.reject(raw, "bad_json")


def to_markup(tokens: list[str], tags: list[str]) -> str:
    """A BIO-tagged sentence as inline ``[entity text](TYPE)`` markup, the format `parse_ner` reads back.

    >>> to_markup(["Peter", "Blackburn", "flew", "to", "Paris"], ["B-PER", "I-PER", "O", "O", "B-LOC"])
    '[Peter Blackburn](PER) flew to [Paris](LOC)'
    """
    out, i = [], 0
    while i < len(tokens):
        j = i + 1
        if tags[i] == "O":
            out.append(tokens[i])
        else:
            while j < len(tokens) and tags[j] == "I-" + tags[i][2:]:
                j += 1
            out.append(f"[{' '.join(tokens[i:j])}]({tags[i][2:]})")
        i = j
    return " ".join(out)


def parse_ner(texts: Iterable, entity_types: list[str], *, tokenizer: Callable | None = None,
              synonyms: dict | None = None, strict: bool = False, min_tokens: int = 1,
              max_tokens: int = 256, max_raw_chars: int = MAX_RAW_CHARS) -> ParseReport:
    """Turn teacher outputs into ``{"tokens": [...], "tags": ["B-PER", "I-PER", "O", ...]}``.

    Accepted: JSON ``{"sentence": ..., "entities": [{"text": "Paris", "type": "LOC"}]}``
    (also ``[["Paris", "LOC"]]``, ``{"LOC": ["Paris"]}``, ``"Paris (LOC), John (PER)"``),
    inline ``[Paris](LOC)`` or ``<LOC>Paris</LOC>`` markup on any line,
    ``Sentence: ...`` + ``Entities: ...`` lines, and CoNLL-shaped JSON
    ``{"tokens": [...], "tags": ["B-PER", ...]}`` (tokens kept as given; an ``I-X`` that
    continues nothing becomes ``B-X``, counted in ``repairs``). The sentence is tokenised with
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
    >>> r = parse_ner(['{"tokens": ["EU", "rejects", "German", "beef"], "tags": ["I-ORG", "O", "B-MISC", "O"]}'],
    ...               ["PER", "LOC", "ORG", "MISC"])
    >>> r.kept[0]["tags"], r.summary()["repairs"]
    (['B-ORG', 'O', 'B-MISC', 'O'], {'repaired_bio': 1})
    """
    if not entity_types:
        raise ValueError("entity_types is empty: nothing to validate entity types against")
    types = [str(t) for t in entity_types]
    merged = {k: v for k, v in NER_SYNONYMS.items() if match_label(v, types)} | dict(synonyms or {})
    cfg = _NerCfg(types, merged, tokenizer, strict, min_tokens, max_tokens)
    return _run(texts, lambda raw, report: _ner_one(raw, cfg, report), max_raw_chars)

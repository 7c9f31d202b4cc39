"""Reading labelled texts out of a teacher's answer: JSON objects or lists, key: value lines, tagged or separated
lines, numbered lists (`parse_classification`), each text normalised and its label matched to the label set,
every rejection counted with its reason in a `ParseReport`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from kdlib.parsing.parse import (
    _BULLET,
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
    parse_label,
)

TEXT_KEYS = ("text", "sentence", "review", "example", "input", "content", "tweet", "headline", "passage")
LABEL_KEYS = ("label", "sentiment", "category", "class", "topic", "answer", "output", "type")

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


# Models often put a whole numbered list on one line: "Examples: 1. Great film. 2. Awful plot."
_INLINE_ITEM = re.compile(r"(?<=\S)\s+(?=\d{1,2}[.)]\s)")


def split_inline_list(text: str) -> str:
    """One item per line when a line holds an inline numbered list (items 1 and 2 at least)."""
    lines = []
    for line in text.splitlines():
        if re.search(r"(?:^|\s)1[.)]\s", line) and re.search(r"\s2[.)]\s", line):
            line = _INLINE_ITEM.sub("\n", line)
        lines.append(line)
    return "\n".join(lines)

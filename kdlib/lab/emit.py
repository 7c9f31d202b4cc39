"""Headline metrics: notebooks `emit` them, the runner collects them.

A metric travels inside the executed notebook itself, as a display output with
a private MIME type next to a plain-text rendering. That keeps the notebook the
single record of a run (no side files to get out of sync) and lets the runner
read the metrics of a notebook that failed halfway through.
"""

from __future__ import annotations

import math
import re
from numbers import Number

METRIC_MIME = "application/vnd.kdlib.metric+json"
FINDING_MIME = "application/vnd.kdlib.finding+json"


def _check_value(name: str, value):
    if isinstance(value, bool) or not isinstance(value, Number | str):
        raise TypeError(f"metric {name!r} must be a number or a string, got {type(value).__name__}")
    if isinstance(value, Number):
        value = float(value) if not isinstance(value, int) else int(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"metric {name!r} is {value}: a headline number must be finite")
    return value


def emit(name: str, value, *, std: float | None = None, unit: str = "", higher_is_better: bool | None = None):
    """Publish one headline number (optionally with its std over seeds) from a notebook."""
    if not name or not name.replace("_", "").replace("/", "").replace(".", "").isalnum():
        raise ValueError(f"metric name {name!r} must be non-empty and use letters, digits, '_', '.', '/'")
    record = {"name": name, "value": _check_value(name, value)}
    if std is not None:
        record["std"] = float(_check_value(f"{name}.std", std))
    if unit:
        record["unit"] = unit
    if higher_is_better is not None:
        record["higher_is_better"] = bool(higher_is_better)
    text = f"{name} = {format_value(record['value'], record.get('std'))}{(' ' + unit) if unit else ''}"
    try:
        from IPython.display import display

        display({METRIC_MIME: record, "text/plain": text}, raw=True)
    except ImportError:  # outside IPython (scripts): print is the only reader
        print(text)
    return record


def finding(text: str) -> str:
    """Publish the notebook's one-line finding, written from its numbers (the report index shows the last one)."""
    text = " ".join(str(text).split())
    if not text:
        raise ValueError("a finding must say something")
    try:
        from IPython.display import display

        display({FINDING_MIME: {"text": text}, "text/plain": f"Finding: {text}"}, raw=True)
    except ImportError:
        print(f"Finding: {text}")
    return text


def metric_key(text: str) -> str:
    """A metric-name part from a label: "few-shot gen + gold" -> "few_shot_gen_gold"."""
    key = re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_")
    if not key:
        raise ValueError(f"{text!r} has no letter or digit to make a metric name from")
    return key


def format_value(value, std: float | None = None) -> str:
    if isinstance(value, str):
        return value
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    if std is not None:
        text += f" ± {std:.2g}"
    return text


def collect_finding(nb) -> str:
    """The last finding published in an executed notebook, or ""."""
    found = ""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            found = out.get("data", {}).get(FINDING_MIME, {}).get("text", found)
    return found


def collect(nb) -> list[dict]:
    """All metric records emitted in an executed notebook (nbformat node), in order."""
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if METRIC_MIME in data:
                found.append(dict(data[METRIC_MIME]))
    return found

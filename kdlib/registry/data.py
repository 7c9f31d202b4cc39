"""Dataset registry: named datasets and user files as `datasets.DatasetDict`.

Resolution order for `load(name_or_path)`:
1. an explicit path (a file, or a folder of split files);
2. the local mirror `KDLIB_DATA_DIR/<name>` (here `../shared/data`, found automatically);
3. the Hugging Face hub, through `HUB_IDS` (users with network access).

Every split comes back with the same normalised schema:
- classification: ``text`` (string), ``label`` (ClassLabel);
- NER: ``tokens`` (sequence of string), ``tags`` (sequence of ClassLabel, BIO/IOB2);
- question answering (`kdlib.registry.data_qa`): extractive (SQuAD schema, answer spans checked) or yes/no/maybe.
Bad data (missing field, unknown label, empty split, unreadable file) raises
`DataError` naming the file and the row.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from kdlib.lab.paths import data_mirror_dir
from kdlib.registry import data_qa
from kdlib.registry.files import (  # noqa: F401 (DataError, read_records and the constants are public here too)
    FILE_SUFFIXES,
    SPLIT_ALIASES,
    SPLIT_NAMES,
    DataError,
    _split_files,
    read_records,
)
from kdlib.registry.hub import hub_available

# Registry name -> (hub id, config, {our split: hub split}). Hub copies use other column
# names and integer labels; `_normalise_hub` maps them onto the schema above.
HUB_IDS = {
    "sst2": ("stanfordnlp/sst2", None, {"train": "train", "test": "validation"}),
    "ag_news": ("fancyzhx/ag_news", None, {"train": "train", "test": "test"}),
    "conll2003": ("eriktks/conll2003", None, {"train": "train", "validation": "validation", "test": "test"}),
    "financial_phrasebank": ("takala/financial_phrasebank", "sentences_50agree", {"train": "train"}),
    "allocine_fr": ("tblard/allocine", None, {"train": "train", "validation": "validation", "test": "test"}),
    "tweet_sentiment_fr": ("cardiffnlp/tweet_sentiment_multilingual", "french",
                           {"train": "train", "validation": "validation", "test": "test"}),
    "squad": ("rajpurkar/squad", None, {"train": "train", "test": "validation"}),
    "pubmedqa": ("qiaojin/PubMedQA", "pqa_labeled", {"train": "train"}),
}


# ----------------------------------------------------------------------------- validation

def infer_task(rows: list[dict], where: str) -> str:
    if not rows:
        raise DataError(f"{where}: empty split")
    first = rows[0]
    qa = data_qa.infer(first) if isinstance(first, dict) else None
    if qa:
        return qa
    if "tokens" in first or "tags" in first:
        return "ner"
    if "text" in first or "label" in first:
        return "classification"
    raise DataError(f"{where}, row 1: expected fields text+label (classification), tokens+tags (NER), "
                    f"question+context+answers (extractive QA) or question+context+label (yes/no QA), "
                    f"found {sorted(first)}")


def _check_rows(rows: list[dict], task: str, where: str) -> None:
    if task in data_qa.TASKS:
        return data_qa.check_rows(rows, task, where, DataError)
    if not rows:
        raise DataError(f"{where}: empty split")
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise DataError(f"{where}, row {i}: expected an object, got {type(row).__name__}")
        if task == "classification":
            for key in ("text", "label"):
                if key not in row or row[key] is None or str(row[key]).strip() == "":
                    raise DataError(f"{where}, row {i}: missing field {key!r}")
        else:
            toks, tags = row.get("tokens"), row.get("tags")
            if not isinstance(toks, list) or not isinstance(tags, list):
                raise DataError(f"{where}, row {i}: 'tokens' and 'tags' must both be lists")
            if len(toks) != len(tags):
                raise DataError(f"{where}, row {i}: {len(toks)} tokens but {len(tags)} tags")


def _check_labels(rows: list[dict], task: str, names: list[str], where: str) -> None:
    if task == "extractive_qa":
        return
    allowed = set(names)
    for i, row in enumerate(rows, 1):
        values = [str(t) for t in row["tags"]] if task == "ner" else [str(row["label"])]
        for value in values:
            if value not in allowed:
                raise DataError(f"{where}, row {i}: label {value!r} is not in the label set {names}")


def tag_order(tags: set[str]) -> list[str]:
    """'O' first, then per entity type B- before I-, types sorted: stable ids across runs."""
    types = sorted({t[2:] for t in tags if t != "O"})
    ordered = ["O"] if "O" in tags or types else []
    for typ in types:
        ordered += [f"B-{typ}", f"I-{typ}"]
    extra = sorted(tags - set(ordered))
    if extra:
        raise DataError(f"tags {extra} are not BIO/IOB2 (expected 'O', 'B-TYPE' or 'I-TYPE')")
    return ordered


# ----------------------------------------------------------------------------- building DatasetDicts

def _to_dataset(rows: list[dict], task: str, names: list[str]):
    import datasets

    if task in data_qa.TASKS:
        return data_qa.to_dataset(rows, task, names)
    if task == "classification":
        features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
        return datasets.Dataset.from_dict(
            {"text": [" ".join(str(r["text"]).split()) for r in rows], "label": [str(r["label"]) for r in rows]},
            features=features)
    features = datasets.Features({"tokens": datasets.List(datasets.Value("string")),
                                  "tags": datasets.List(datasets.ClassLabel(names=names))})
    return datasets.Dataset.from_dict(
        {"tokens": [[str(t) for t in r["tokens"]] for r in rows], "tags": [[str(t) for t in r["tags"]] for r in rows]},
        features=features)


def from_records(splits: dict[str, list[dict]], where: dict[str, str] | None = None,
                 labels: list[str] | None = None, task: str | None = None):
    """Validate raw rows per split and build a normalised DatasetDict."""
    import datasets

    where = where or {s: s for s in splits}
    if "train" not in splits:
        raise DataError(f"no 'train' split among {sorted(splits)} ({', '.join(where.values())})")
    task = task or infer_task(splits["train"], where["train"])
    for split, rows in splits.items():
        _check_rows(rows, task, where[split])
    if labels is None and task == "extractive_qa":
        labels = []
    elif labels is None:
        seen = ({str(t) for r in splits["train"] for t in r["tags"]} if task == "ner"
                else {str(r["label"]) for r in splits["train"]})
        labels = tag_order(seen) if task == "ner" else sorted(seen)
    for split, rows in splits.items():
        _check_labels(rows, task, labels, where[split])
    ordered = sorted(splits, key=lambda s: SPLIT_NAMES.index(s) if s in SPLIT_NAMES else len(SPLIT_NAMES))
    return datasets.DatasetDict({s: _to_dataset(splits[s], task, labels) for s in ordered})


def _carve(dd, missing: str, source: str, fraction: float, seed: int):
    """Move a seeded, stratified `fraction` of `source` into a new split `missing`.

    Index-level split with scikit-learn, then `select`: `Dataset.train_test_split` with
    stratification iterates rows in Python and takes a minute on SST-2's 67k rows.
    """
    import datasets
    import numpy as np
    from sklearn.model_selection import train_test_split

    ds = dd[source]
    index = np.arange(len(ds))
    labels = np.asarray(ds["label"]) if "label" in ds.features else None
    counts = np.bincount(labels) if labels is not None else None
    stratify = labels if counts is not None and counts[counts > 0].min() >= 2 else None
    keep, moved = train_test_split(index, test_size=fraction, random_state=seed, stratify=stratify)
    out = dict(dd)
    out[source], out[missing] = ds.select(np.sort(keep)), ds.select(np.sort(moved))
    return datasets.DatasetDict({s: out[s] for s in SPLIT_NAMES if s in out})


def complete_splits(dd, fraction: float = 0.1, seed: int = 0):
    """Ensure train/validation/test exist, carving missing ones out of train (seeded).

    The validation split is what notebooks tune and early-stop on; it never comes
    from test, so test numbers stay untouched by any choice.
    """
    if "test" not in dd:
        dd = _carve(dd, "test", "train", fraction, seed)
    if "validation" not in dd:
        dd = _carve(dd, "validation", "train", fraction, seed + 1)
    return dd


# ----------------------------------------------------------------------------- public entry points

def available() -> list[str]:
    """Names of the datasets in the local mirror (empty when there is none)."""
    mirror = data_mirror_dir()
    if mirror is None or not mirror.is_dir():
        return []
    return sorted(p.name for p in mirror.iterdir() if p.is_dir() and _split_files(p))


def load_path(path: str | Path, labels: list[str] | None = None):
    path = Path(path).expanduser()
    if path.is_dir():
        files = _split_files(path)
        if not files:
            raise DataError(f"{path}: no split files (expected train/validation/test with suffix {FILE_SUFFIXES})")
        splits = {s: read_records(f) for s, f in files.items()}
        return from_records(splits, {s: str(f) for s, f in files.items()}, labels)
    return from_records({"train": read_records(path)}, {"train": str(path)}, labels)


def _normalise_hub(dd):
    """Map a hub dataset's columns onto text/label or tokens/tags with string labels."""
    out = {}
    for split, ds in dd.items():
        cols = ds.column_names
        if "question" in cols:
            out[split] = [data_qa.from_hub_row(r) for r in ds]
            continue
        if "tokens" in cols:
            tag_col = next(c for c in ("tags", "ner_tags") if c in cols)
            names = ds.features[tag_col].feature.names
            rows = [{"tokens": r["tokens"], "tags": [names[t] for t in r[tag_col]]} for r in ds]
        else:
            text_col = next(c for c in ("text", "sentence", "content", "review") if c in cols)
            names = ds.features["label"].names
            rows = [{"text": r[text_col], "label": names[r["label"]]} for r in ds if r["label"] >= 0]
        out[split] = rows
    return out


def load_hub(name: str):
    import datasets

    hub_id, config, split_map = HUB_IDS.get(name, (name, None, {s: s for s in SPLIT_NAMES}))
    if not hub_available():
        raise ConnectionError("the hub is unreachable (or HF_HUB_OFFLINE=1)")
    raw = datasets.load_dataset(hub_id, config)
    picked = {ours: raw[theirs] for ours, theirs in split_map.items() if theirs in raw}
    return from_records(_normalise_hub(picked), {s: f"{hub_id}[{s}]" for s in picked})


def load(name_or_path: str, *, labels: list[str] | None = None, complete: bool = True,
         validation_fraction: float = 0.1, seed: int = 0, task: str | None = None):
    """Load a dataset by registry name, hub id or path; see the module docstring for the order.
    `task` ("classification", "ner", "extractive_qa", "yes_no_qa"), when given, refuses another kind by name."""
    dd = _load(name_or_path, labels, complete, validation_fraction, seed)
    if task is not None and task_of(dd) != task:
        raise DataError(f"{name_or_path!r} is a {task_of(dd)} dataset; a {task} dataset is needed here")
    return dd


def _load(name_or_path: str, labels, complete: bool, validation_fraction: float, seed: int):
    tried = []
    path = Path(name_or_path).expanduser()
    if path.exists():
        dd = load_path(path, labels)
    else:
        tried.append(f"path {path} (does not exist)")
        mirror = data_mirror_dir()
        local = mirror / name_or_path if mirror else None
        if local is not None and local.is_dir():
            dd = load_path(local, labels)
        else:
            tried.append(f"mirror {local} (not found)" if mirror else "mirror (KDLIB_DATA_DIR unset, no ../shared/data)")
            try:
                dd = load_hub(name_or_path)
            except DataError:
                raise
            except Exception as exc:  # the hub library raises many types; report them all the same way
                tried.append(f"hub {HUB_IDS.get(name_or_path, (name_or_path,))[0]} ({type(exc).__name__}: {exc})")
                known = ", ".join(available()) or "none"
                raise DataError(
                    f"dataset {name_or_path!r} could not be found. Tried: " + "; ".join(tried)
                    + f". Known mirror datasets: {known}. Pass a path to a folder of train/validation/test "
                    "files (.jsonl[.gz]/.json/.csv/.tsv with text+label, tokens+tags or question+context+answers), "
                    "or set KDLIB_DATA_DIR to a mirror.") from None
    return complete_splits(dd, validation_fraction, seed) if complete else dd


def sample(ds, n: int, seed: int = 0):
    """A seeded random subset of `n` rows (all rows, shuffled, if `n` exceeds them); ``n <= 0`` means
    the split as it is. For CPU budgets: evaluation on a subset of test, early stopping on part of validation."""
    if n <= 0:
        return ds
    return ds.shuffle(seed=seed).select(range(min(n, len(ds))))


def to_frame(ds):
    """A pandas view of a split with label ids decoded to their names (for display)."""
    frame = ds.to_pandas()
    names = label_names(ds)
    if "label" in frame:
        frame["label"] = [names[i] for i in frame["label"]]
    if "tags" in frame:
        frame["tags"] = [[names[i] for i in tags] for tags in frame["tags"]]
    return frame


def task_of(ds) -> str:
    """'classification', 'ner', 'extractive_qa' or 'yes_no_qa', from a Dataset's or DatasetDict's features."""
    features = ds["train"].features if hasattr(ds, "keys") and "train" in ds else ds.features
    if "question" in features:
        return "extractive_qa" if "answers" in features else "yes_no_qa"
    return "classification" if "label" in features else "ner"


def label_names(ds) -> list[str]:
    """The label (or tag) names; none for extractive QA, whose answers are spans."""
    features = ds["train"].features if hasattr(ds, "keys") and "train" in ds else ds.features
    if "answers" in features:
        return []
    return features["label"].names if "label" in features else features["tags"].feature.names


def k_shot_rows(ds, k: int, seed: int = 0) -> list[dict]:
    """`k_shot` as rows with names: {"text", "label"} (classification) or {"tokens", "tags"} (NER)."""
    names, shots = label_names(ds), k_shot(ds, k, seed=seed)
    if "question" in shots.features:
        return [{**r, "label": names[r["label"]]} if "label" in r else dict(r) for r in shots]
    if "label" in shots.features:
        return [{"text": x, "label": names[y]} for x, y in zip(shots["text"], shots["label"])]
    return [{"tokens": x, "tags": [names[i] for i in y]} for x, y in zip(shots["tokens"], shots["tags"])]


def label_counts(ds) -> dict[str, int]:
    names = label_names(ds)
    if task_of(ds) == "extractive_qa":
        return {}
    if task_of(ds) in ("classification", "yes_no_qa"):
        counts = Counter(ds["label"])
        return {names[i]: counts.get(i, 0) for i in range(len(names))}
    counts = Counter(names[t][2:] for tags in ds["tags"] for t in tags if names[t].startswith("B-"))
    return dict(sorted(counts.items()))


# ----------------------------------------------------------------------------- few-shot sampling

def k_shot(ds, k: int, seed: int = 0):
    """A seeded k-shot subset: k examples per class, for NER k sentences per entity type, for extractive
    QA k questions.

    NER follows the greedy scheme common in few-shot NER: for each entity type (in a
    seeded order) add sentences containing it until the type has k sentences, so a
    sentence with several types counts for each of them.
    """
    import numpy as np

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rng = np.random.default_rng(seed)
    names = label_names(ds)
    if task_of(ds) == "extractive_qa":
        if len(ds) < k:
            raise DataError(f"{len(ds)} questions, fewer than k={k}")
        return ds.select(sorted(rng.choice(len(ds), size=k, replace=False).tolist()))
    if task_of(ds) in ("classification", "yes_no_qa"):
        labels = np.asarray(ds["label"])
        picked = []
        for cls in range(len(names)):
            idx = np.flatnonzero(labels == cls)
            if len(idx) < k:
                raise DataError(f"class {names[cls]!r} has {len(idx)} examples, fewer than k={k}")
            picked += rng.choice(idx, size=k, replace=False).tolist()
        return ds.select(sorted(picked))
    types_per_row = [{names[t][2:] for t in tags if names[t] != "O"} for tags in ds["tags"]]
    types = sorted({t for s in types_per_row for t in s})
    counts = dict.fromkeys(types, 0)
    chosen: set[int] = set()
    for typ in rng.permutation(types):
        candidates = [i for i in rng.permutation(len(ds)) if typ in types_per_row[i] and i not in chosen]
        for i in candidates:
            if counts[typ] >= k:
                break
            chosen.add(int(i))
            for t in types_per_row[i]:
                counts[t] += 1
        if counts[typ] < k:
            raise DataError(f"entity type {typ!r} occurs in fewer than k={k} sentences")
    return ds.select(sorted(chosen))

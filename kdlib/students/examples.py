"""Training and evaluation data in every shape the students accept — a `datasets.Dataset` with ClassLabel
columns, or lists of dicts whose labels are names or ids — turned into texts (or tokens) and label ids, with
errors that name the split, the row and what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence


def _is_dataset(data) -> bool:
    return hasattr(data, "features") and hasattr(data, "column_names")


def _class_names(data, field_name: str) -> list[str] | None:
    """Label names of a Dataset's ClassLabel column (a sequence of them for NER), else None."""
    if not _is_dataset(data) or field_name not in data.features:
        return None
    feature = data.features[field_name]
    feature = getattr(feature, "feature", feature)  # List(ClassLabel) for NER tags
    return list(feature.names) if hasattr(feature, "names") else None


def _label_id(value, names: list[str], index: dict[str, int], where: str) -> int:
    if isinstance(value, str):
        if value not in index:
            raise ValueError(f"{where}: label {value!r} is not one of the label names {names}")
        return index[value]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return int(value)
    raise ValueError(f"{where}: label {value!r} is neither a label name in {names} nor an id in 0..{len(names) - 1}")


def _rows(data, where: str) -> list[dict]:
    if _is_dataset(data):
        return data.to_list()
    if isinstance(data, Sequence) and not isinstance(data, str | bytes):
        return list(data)
    raise TypeError(f"{where}: expected a datasets.Dataset or a list of dicts, got {type(data).__name__}")


def _prepare(data, field_name: str, names: list[str], where: str) -> tuple[list[str] | None, list, dict[str, int]]:
    """(the data's own ClassLabel names or None, its rows, name -> id in `names`); no rows is an error."""
    rows = _rows(data, where)
    if not rows:
        raise ValueError(f"{where}: no examples")
    return _class_names(data, field_name), rows, {n: i for i, n in enumerate(names)}


def _classification_examples(data, names: list[str], where: str) -> tuple[list, list[int]]:
    """Texts and label ids; a Dataset's ClassLabel ids are remapped by name onto `names`. Rows with a question
    and a context instead of a text (yes/no/maybe QA) give (question, context) pairs, encoded as a pair."""
    own, rows, index = _prepare(data, "label", names, where)
    texts, labels = [], []
    for i, row in enumerate(rows):
        pair = isinstance(row, dict) and "text" not in row and "question" in row and "context" in row
        if not isinstance(row, dict) or ("text" not in row and not pair) or "label" not in row:
            raise ValueError(f"{where}, example {i}: expected a dict with 'text' (or 'question' and 'context') and "
                             f"'label', got {row!r:.120}")
        value = own[row["label"]] if own is not None else row["label"]
        labels.append(_label_id(value, names, index, f"{where}, example {i}"))
        texts.append((str(row["question"]), str(row["context"])) if pair else str(row["text"]))
    return texts, labels


def _tagging_examples(data, names: list[str], where: str) -> tuple[list[list[str]], list[list[int]]]:
    """Tokens and tag ids per sentence; a Dataset's ClassLabel tag ids are remapped by name onto `names`."""
    own, rows, index = _prepare(data, "tags", names, where)
    tokens, tags = [], []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("tokens"), list) or not isinstance(row.get("tags"), list):
            raise ValueError(f"{where}, example {i}: expected a dict with 'tokens' and 'tags' lists")
        if len(row["tokens"]) != len(row["tags"]):
            raise ValueError(f"{where}, example {i}: {len(row['tokens'])} tokens but {len(row['tags'])} tags")
        values = [own[t] for t in row["tags"]] if own is not None else row["tags"]
        tags.append([_label_id(v, names, index, f"{where}, example {i}") for v in values])
        tokens.append([str(t) for t in row["tokens"]])
    return tokens, tags


def _resolve_names(given, train, validation, field_name: str, infer) -> list[str]:
    """Label names: given > train's ClassLabel > validation's ClassLabel > inferred from train."""
    if given is not None:
        names = [str(n) for n in given]
        if len(set(names)) != len(names) or len(names) < 2:
            raise ValueError(f"label_names must hold at least 2 distinct names, got {names}")
        return names
    return _class_names(train, field_name) or _class_names(validation, field_name) or infer(_rows(train, "train"))


def _check_weights(weights, n: int):
    import numpy as np

    if weights is None:
        return None
    arr = np.asarray(weights, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"sample_weights must hold one weight per training example ({n}), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0) or arr.sum() == 0:
        raise ValueError("sample_weights must be finite, >= 0 and not all zero")
    return arr.tolist()

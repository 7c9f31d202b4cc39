"""Question-answering datasets, checked row by row: what `kdlib.registry.data` does for QA files and hub copies.

Two schemas (the hub's own, so hub ids and local files give the same features):
- **extractive_qa** (SQuAD, PIAF): ``id``, ``question``, ``context``, ``answers`` = ``{"text": [str],
  "answer_start": [int]}``. Every answer text must sit at its character offset in the context — the
  convention every SQuAD tool relies on — else `DataError` names the file, the row and both strings.
- **yes_no_qa** (PubMedQA): ``id``, ``question``, ``context``, ``label`` (a ClassLabel: yes / no / maybe,
  or whatever closed set the file uses), ``long_answer`` (optional).
"""

from __future__ import annotations

TASKS = ("extractive_qa", "yes_no_qa")


def infer(first: dict) -> str | None:
    """The QA task of a split from its first row, or None when it is not a QA row."""
    if "question" not in first or "context" not in first:
        return None
    if "answers" in first:
        return "extractive_qa"
    if "label" in first:
        return "yes_no_qa"
    return None


def check_rows(rows: list[dict], task: str, where: str, error: type[Exception]) -> None:
    """Raise `error` (`kdlib.registry.data.DataError`) naming the file and row of the first malformed QA row."""
    if not rows:
        raise error(f"{where}: empty split")
    needed = ("question", "context", "answers") if task == "extractive_qa" else ("question", "context", "label")
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise error(f"{where}, row {i}: expected an object, got {type(row).__name__}")
        for key in needed:
            if key not in row or row[key] is None or (isinstance(row[key], str) and not row[key].strip()):
                raise error(f"{where}, row {i}: missing field {key!r}")
        if not isinstance(row["context"], str) or not isinstance(row["question"], str):
            raise error(f"{where}, row {i}: question and context must be strings")
        if task == "extractive_qa":
            _check_answers(row["answers"], row["context"], f"{where}, row {i}", error)


def _check_answers(answers, context: str, where: str, error) -> None:
    if not isinstance(answers, dict) or not isinstance(answers.get("text"), list) \
            or not isinstance(answers.get("answer_start"), list):
        raise error(f"{where}: answers must be {{'text': [...], 'answer_start': [...]}}, got {answers!r:.80}")
    texts, starts = answers["text"], answers["answer_start"]
    if not texts or len(texts) != len(starts):
        raise error(f"{where}: {len(texts)} answer texts and {len(starts)} answer starts (at least one of each, "
                    "as many of each)")
    for text, start in zip(texts, starts):
        if not isinstance(start, int) or isinstance(start, bool) or not isinstance(text, str) or not text:
            raise error(f"{where}: answer {text!r} at {start!r}: a non-empty string at an integer offset is needed")
        found = context[start:start + len(text)]
        if found != text:
            raise error(f"{where}: answer {text!r} is not at character {start} of its context "
                        f"(found {found!r} there)")


def to_dataset(rows: list[dict], task: str, names: list[str]):
    """A `datasets.Dataset` with the schema's features (ids made from the row number when a file has none)."""
    import datasets

    common = {"id": [str(r.get("id", i)) for i, r in enumerate(rows)],
              "question": [" ".join(r["question"].split()) for r in rows],
              "context": [r["context"] for r in rows]}  # offsets index the context: never re-spaced
    if task == "extractive_qa":
        features = datasets.Features({
            "id": datasets.Value("string"), "question": datasets.Value("string"), "context": datasets.Value("string"),
            "answers": {"text": datasets.List(datasets.Value("string")),
                        "answer_start": datasets.List(datasets.Value("int32"))}})
        answers = [{"text": list(r["answers"]["text"]), "answer_start": list(r["answers"]["answer_start"])} for r in rows]
        return datasets.Dataset.from_dict({**common, "answers": answers}, features=features)
    features = datasets.Features({
        "id": datasets.Value("string"), "question": datasets.Value("string"), "context": datasets.Value("string"),
        "label": datasets.ClassLabel(names=names), "long_answer": datasets.Value("string")})
    return datasets.Dataset.from_dict({**common, "label": [str(r["label"]) for r in rows],
                                       "long_answer": [str(r.get("long_answer") or "") for r in rows]},
                                      features=features)


def from_hub_row(row: dict) -> dict:
    """A hub row in our schema: SQuAD-style rows pass; PubMedQA's (contexts list, final_decision) are mapped."""
    if "answers" in row:
        return {k: row[k] for k in ("id", "question", "context", "answers") if k in row}
    context = row["context"]
    if isinstance(context, dict):  # qiaojin/PubMedQA: {"contexts": [...], "labels": [...], ...}
        context = " ".join(context.get("contexts", []))
    return {"id": str(row.get("pubid", row.get("id", ""))), "question": row["question"], "context": context,
            "label": row.get("final_decision", row.get("label")), "long_answer": row.get("long_answer", "")}

"""Dataset registry: real mirror data, user files never seen before, and every error path."""

import gzip

import datasets
import pytest

from kdlib.registry import data
from tests.conftest import write_jsonl


def test_mirror_classification_has_classlabels_and_all_splits(mirror):
    dd = data.load("sst2")
    assert set(dd) == {"train", "validation", "test"}
    assert isinstance(dd["train"].features["label"], datasets.ClassLabel)
    assert data.label_names(dd) == ["negative", "positive"]
    assert len(dd["test"]) == 872  # the real test split is untouched
    # validation was carved from train (seeded), so train + validation = the 67,349 source rows
    assert len(dd["train"]) + len(dd["validation"]) == 67349


def test_carved_validation_is_seeded_and_disjoint(mirror):
    a, b = data.load("ag_news", seed=3), data.load("ag_news", seed=3)
    assert a["validation"]["text"] == b["validation"]["text"]
    assert not set(a["validation"]["text"]) & set(a["train"]["text"][:2000])


def test_mirror_ner_has_tag_sequences(mirror):
    dd = data.load("conll2003")
    names = data.label_names(dd)
    assert names[0] == "O" and "B-PER" in names and "I-MISC" in names
    assert data.task_of(dd) == "ner"
    assert isinstance(dd["train"].features["tags"].feature, datasets.ClassLabel)
    row = dd["train"][0]
    assert len(row["tokens"]) == len(row["tags"])


def test_user_folder_never_seen_before(tmp_path):
    rows = [{"text": f"sample {i}", "label": "yes" if i % 2 else "no"} for i in range(40)]
    write_jsonl(tmp_path / "mine" / "train.jsonl", rows)
    write_jsonl(tmp_path / "mine" / "dev.jsonl.gz", rows[:6], gz=True)  # 'dev' is an alias of validation
    dd = data.load(str(tmp_path / "mine"))
    assert set(dd) == {"train", "validation", "test"}
    assert data.label_names(dd) == ["no", "yes"]
    assert len(dd["validation"]) == 6
    assert len(dd["train"]) + len(dd["test"]) == 40


def test_user_csv_file_is_split(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\n" + "".join(f"review number {i},{'good' if i % 3 else 'bad'}\n" for i in range(60)))
    dd = data.load(str(path))
    assert sum(len(s) for s in dd.values()) == 60
    assert data.label_names(dd) == ["bad", "good"]


def test_whitespace_is_normalised(tmp_path):
    write_jsonl(tmp_path / "d" / "train.jsonl", [{"text": "  a \t b\n c ", "label": "x"}] * 30)
    assert data.load(str(tmp_path / "d"))["train"][0]["text"] == "a b c"


@pytest.mark.parametrize("rows, needle", [
    ([{"text": "ok", "label": "a"}, {"text": "missing label"}], "row 2: missing field 'label'"),
    ([{"text": "ok", "label": "a"}, {"text": "", "label": "a"}], "row 2: missing field 'text'"),
    ([{"tokens": ["a", "b"], "tags": ["O"]}], "row 1: 2 tokens but 1 tags"),
    ([{"tokens": ["a"], "tags": ["X-PER"]}], "not BIO"),
    ([{"foo": 1}], "expected fields text+label"),
])
def test_bad_rows_name_file_and_row(tmp_path, rows, needle):
    path = write_jsonl(tmp_path / "bad" / "train.jsonl", rows)
    with pytest.raises(data.DataError) as err:
        data.load(str(tmp_path / "bad"))
    assert needle in str(err.value)
    if "row" in needle:
        assert str(path) in str(err.value)


def test_label_outside_label_set_names_file_and_row(tmp_path):
    write_jsonl(tmp_path / "d" / "train.jsonl", [{"text": "t", "label": "a"}, {"text": "u", "label": "b"}])
    test = write_jsonl(tmp_path / "d" / "test.jsonl", [{"text": "t", "label": "a"}, {"text": "v", "label": "c"}])
    with pytest.raises(data.DataError, match=r"test\.jsonl, row 2: label 'c' is not in the label set"):
        data.load(str(tmp_path / "d"))
    assert test.exists()
    # an explicit label set is enforced on train too
    with pytest.raises(data.DataError, match="label 'b'"):
        data.load(str(tmp_path / "d"), labels=["a", "c"])


def test_empty_split_and_unreadable_files(tmp_path):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "train.jsonl").write_text("\n\n")
    with pytest.raises(data.DataError, match=r"train\.jsonl: empty split"):
        data.load(str(tmp_path / "e"))
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "train.jsonl.gz").write_bytes(b"this is not gzip")
    with pytest.raises(data.DataError, match=r"train\.jsonl\.gz: unreadable"):
        data.load(str(tmp_path / "g"))
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "train.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": oops}\n')
    with pytest.raises(data.DataError, match=r"train\.jsonl, line 2: not valid JSON"):
        data.load(str(tmp_path / "j"))
    truncated = gzip.compress(b'{"text": "a", "label": "x"}\n' * 100)[:-30]
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "train.jsonl.gz").write_bytes(truncated)
    with pytest.raises(data.DataError, match="unreadable"):
        data.load(str(tmp_path / "t"))


def test_unknown_dataset_says_what_was_tried(monkeypatch, tmp_path):
    monkeypatch.setenv("KDLIB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(data.DataError) as err:
        data.load("sst-2-misspelt")
    msg = str(err.value)
    assert "'sst-2-misspelt'" in msg and "mirror" in msg and "hub" in msg and "KDLIB_DATA_DIR" in msg


def test_k_shot_classification_is_balanced_and_seeded(mirror):
    train = data.load("ag_news")["train"]
    shot = data.k_shot(train, k=3, seed=7)
    assert len(shot) == 12
    assert sorted(data.label_counts(shot).values()) == [3, 3, 3, 3]
    assert shot["text"] == data.k_shot(train, k=3, seed=7)["text"]
    assert shot["text"] != data.k_shot(train, k=3, seed=8)["text"]
    with pytest.raises(data.DataError, match="fewer than k"):
        data.k_shot(train.select(range(10)), k=5)


def test_k_shot_ner_covers_every_entity_type(mirror):
    train = data.load("conll2003")["train"]
    shot = data.k_shot(train, k=2, seed=0)
    names = data.label_names(train)
    for typ in ("PER", "LOC", "ORG", "MISC"):
        n = sum(any(names[t] == f"B-{typ}" for t in tags) for tags in shot["tags"])
        assert n >= 2, typ
    assert len(shot) <= 8


def test_sample_is_seeded_and_bounded():
    import datasets

    ds = datasets.Dataset.from_dict({"x": list(range(10))})
    assert data.sample(ds, 0) is ds
    a, b = data.sample(ds, 4, seed=1), data.sample(ds, 4, seed=1)
    assert a["x"] == b["x"] and len(a) == 4 and a["x"] != data.sample(ds, 4, seed=2)["x"]
    assert sorted(data.sample(ds, 99, seed=1)["x"]) == list(range(10))


def test_load_refuses_the_wrong_kind_of_dataset_and_k_shot_rows_name_labels(mirror):
    with pytest.raises(data.DataError, match="ner dataset; a classification dataset is needed"):
        data.load("conll2003", task="classification")
    dd = data.load("sst2", task="classification")
    rows = data.k_shot_rows(dd["train"], 2, seed=1)
    assert len(rows) == 4 and {r["label"] for r in rows} == set(data.label_names(dd))
    ner = data.k_shot_rows(data.load("conll2003")["train"], 1, seed=0)
    assert all(isinstance(t, str) for r in ner for t in r["tags"]) and all(len(r["tags"]) == len(r["tokens"]) for r in ner)


def test_mirror_qa_sets_have_the_hub_schema_and_checked_spans(mirror):
    squad = data.load("squad")
    assert data.task_of(squad) == "extractive_qa" and data.label_names(squad) == []
    assert set(squad) == {"train", "validation", "test"} and len(squad["train"]) > 10_000
    for row in squad["validation"].select(range(50)):
        for text, start in zip(row["answers"]["text"], row["answers"]["answer_start"]):
            assert row["context"][start:start + len(text)] == text
    shots = data.k_shot_rows(squad["train"], 3, seed=1)
    assert len(shots) == 3 and shots == data.k_shot_rows(squad["train"], 3, seed=1) and "answers" in shots[0]
    pubmed = data.load("pubmedqa", task="yes_no_qa")
    assert data.label_names(pubmed) == ["maybe", "no", "yes"]
    assert sum(data.label_counts(pubmed["test"]).values()) == len(pubmed["test"])
    assert sorted(r["label"] for r in data.k_shot_rows(pubmed["train"], 1)) == ["maybe", "no", "yes"]
    with pytest.raises(data.DataError, match="is a extractive_qa dataset; a classification dataset"):
        data.load("squad", task="classification")


def _qa_row(context="Paris is the capital of France.", text="Paris", start=0, **extra):
    return {"question": "What is the capital of France?", "context": context,
            "answers": {"text": [text], "answer_start": [start]}, **extra}


@pytest.mark.parametrize("bad, needle", [
    (_qa_row(start=3), "row 2: answer 'Paris' is not at character 3 of its context (found 'is is' there)"),
    (_qa_row(text=""), "row 2: answer '' at 0"),
    ({**_qa_row(), "answers": {"text": ["Paris"], "answer_start": []}}, "row 2: 1 answer texts and 0 answer starts"),
    ({**_qa_row(), "answers": "Paris"}, "row 2: answers must be"),
    ({**_qa_row(), "context": ""}, "row 2: missing field 'context'"),
])
def test_bad_qa_rows_name_file_and_row(tmp_path, bad, needle):
    path = write_jsonl(tmp_path / "qa" / "train.jsonl", [_qa_row(), bad])
    with pytest.raises(data.DataError) as err:
        data.load(str(tmp_path / "qa"))
    assert needle in str(err.value) and str(path) in str(err.value)


def test_user_qa_folder_never_seen_before(tmp_path):
    rows = [_qa_row(context=f"Item {i}: Paris is the capital of France.", start=len(f"Item {i}: "), id=f"q{i}")
            for i in range(30)]
    write_jsonl(tmp_path / "qa" / "train.jsonl", rows)
    dd = data.load(str(tmp_path / "qa"))
    assert data.task_of(dd) == "extractive_qa" and set(dd) == {"train", "validation", "test"}
    assert sum(len(v) for v in dd.values()) == 30 and dd["test"][0]["answers"]["text"] == ["Paris"]

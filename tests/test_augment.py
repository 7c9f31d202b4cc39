"""kdlib.synthesis.augment: EDA operations are pure, seeded and do what they say; the offline synonym table is real."""

import random

import pytest

from kdlib.synthesis import augment

TABLE = {"good": ["great", "fine"], "film": ["movie"], "plot": ["story"]}
TEXT = "A good film with a thin plot"


def test_synonym_replace_changes_only_content_words_with_synonyms():
    words = TEXT.split()
    out = augment.synonym_replace(words, 2, random.Random(0), TABLE)
    changed = [(a, b) for a, b in zip(words, out) if a != b]
    assert len(changed) == 2 and all(b in TABLE[a.lower()] for a, b in changed)
    assert augment.synonym_replace(["the", "a"], 3, random.Random(0), TABLE) == ["the", "a"], "stop words stay"


def test_insert_swap_delete():
    rng = random.Random(1)
    words = TEXT.split()
    ins = augment.random_insert(words, 2, rng, TABLE)
    assert len(ins) == len(words) + 2 and sorted(set(ins) - set(words)) <= sorted({s for v in TABLE.values() for s in v})
    swapped = augment.random_swap(words, 1, rng)
    assert sorted(swapped) == sorted(words) and swapped != words
    assert augment.random_delete(words, 1.0, rng) in [[w] for w in words], "one word survives"
    assert augment.random_delete(words, 0.0, rng) == words


def test_eda_is_seeded_order_independent_and_validated():
    a = augment.eda(TEXT, TABLE, n_aug=4, seed=3)
    assert a == augment.eda(TEXT, TABLE, n_aug=4, seed=3) and TEXT not in a and 1 <= len(a) <= 4
    assert augment.eda(TEXT, TABLE, n_aug=4, seed=4) != a
    rows = augment.augment_rows([{"text": TEXT, "label": "positive"}], TABLE, n_aug=2, seed=3)
    assert all(r["label"] == "positive" and r["source"] == TEXT for r in rows)
    with pytest.raises(ValueError, match="alpha"):
        augment.eda(TEXT, TABLE, alpha=2)
    with pytest.raises(ValueError, match="ops"):
        augment.eda(TEXT, TABLE, ops=["xx"])
    assert augment.eda("", TABLE) == []


@pytest.mark.slow
def test_embedding_synonyms_from_the_offline_encoder():
    table = augment.embedding_synonyms(vocabulary=["terrible", "movie", "the", "qwzx"])
    assert set(table) == {"terrible", "movie"}, "stop words and unknown words get no entry"
    assert "horrible" in table["terrible"] and "film" in table["movie"]
    assert "movies" not in table["movie"], "inflections are skipped"

"""kdlib.parsing.dedup: exact/near duplicates, leaks into a reference set, Self-Instruct novelty."""

import doctest
import random

import pytest

from kdlib.parsing import dedup as dedup_module
from kdlib.parsing.classification import parse_classification
from kdlib.parsing.dedup import dedup, novelty_filter, rouge_l, words


def texts(examples):
    return [ex["text"] if isinstance(ex, dict) else ex for ex in examples]


def lcs(a, b):
    """Textbook dynamic programme, the reference the library and the pruning must agree with."""
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag, row[0] = 0, 0
        for j, y in enumerate(b, 1):
            prev_diag, row[j] = row[j], prev_diag + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_reference(a, b):
    wa, wb = words(a), words(b)
    return 2 * lcs(wa, wb) / (len(wa) + len(wb)) if wa and wb else 0.0


def test_docstring_examples_hold():
    assert doctest.testmod(dedup_module).failed == 0


def test_rouge_l_matches_closed_form():
    assert rouge_l("a b c d e", "a b c d f") == pytest.approx(0.8)
    assert rouge_l("the cat", "the cat") == 1.0
    assert rouge_l("", "anything") == 0.0
    rng = random.Random(0)
    for _ in range(200):
        a = " ".join(rng.choices("abcdef", k=rng.randint(1, 12)))
        b = " ".join(rng.choices("abcdef", k=rng.randint(1, 12)))
        assert rouge_l(a, b) == pytest.approx(rouge_reference(a, b))


def test_words_keep_accents_and_ignore_case_and_punctuation():
    assert words("Très BIEN, vraiment !") == ["très", "bien", "vraiment"]


def test_exact_duplicates_after_normalisation():
    examples = [{"text": "A great film!", "label": "positive"}, {"text": '1. "a GREAT   film."', "label": "positive"},
                {"text": "A great film?", "label": "negative"}, {"text": "Another one.", "label": "positive"}]
    kept, report = dedup(examples, near_threshold=None)
    assert texts(kept) == ["A great film!", "Another one."]
    assert report.summary() == {"inputs": 4, "kept": 2, "rejected": 2, "reasons": {"duplicate_exact": 2}}
    assert kept[0] is examples[0]  # examples come back as given, not copied or rewritten


@pytest.mark.parametrize("threshold, dropped", [(0.79, True), (0.8, True), (0.81, False), (1.0, False)])
def test_near_duplicate_threshold_edges(threshold, dropped):
    # ROUGE-L F1 of these two is exactly 2*4/(5+5) = 0.8; the threshold is inclusive.
    kept, report = dedup(["a b c d e", "a b c d f"], near_threshold=threshold)
    assert texts(kept) == (["a b c d e"] if dropped else ["a b c d e", "a b c d f"])
    assert report.counts["duplicate_near"] == int(dropped)


def test_near_duplicate_keeps_the_first_and_compares_with_kept_only():
    first, second, third = "a b c d e f g h", "a b c d e f g x", "z b c d e f g x"
    assert rouge_l(first, second) == rouge_l(second, third) == pytest.approx(0.875)
    assert rouge_l(first, third) == pytest.approx(0.75)
    kept, report = dedup([first, second, third], near_threshold=0.8)
    # The third is near the dropped second but not the kept first: it stays.
    assert kept == [first, third]
    assert report.rejected == [(second, "duplicate_near")]


def test_pruned_search_agrees_with_brute_force():
    rng = random.Random(1)
    vocab = "the a cat dog sat ran on in mat park big small".split()
    items = [" ".join(rng.choices(vocab, k=rng.randint(2, 10))) for _ in range(150)]
    for threshold in (0.5, 0.8):
        expected = []
        for text in items:
            if all(" ".join(words(text)) != " ".join(words(k)) and rouge_reference(text, k) < threshold - 1e-9
                   for k in expected):
                expected.append(text)
        kept, _ = dedup(items, near_threshold=threshold)
        assert kept == expected


def test_test_leak_is_dropped_and_counted_first():
    test_split = [{"text": "The service was slow and rude.", "label": "negative"}]
    generated = [{"text": "the service was slow and rude", "label": "negative"},      # exact copy of a test text
                 {"text": "The service was slow and very rude.", "label": "negative"},  # near copy
                 {"text": "Lovely staff and quick service.", "label": "positive"},
                 {"text": "Lovely staff and quick service!", "label": "positive"}]
    kept, report = dedup(generated, against=test_split)
    assert texts(kept) == ["Lovely staff and quick service."]
    assert report.summary()["reasons"] == {"duplicate_exact": 1, "test_leak": 2}
    _, seeds = dedup(generated, against=test_split, against_reason="seed_copy")
    assert seeds.counts["seed_copy"] == 2


def test_ner_examples_and_custom_keys():
    ner = [{"tokens": ["Paris", "is", "big", "."], "tags": ["B-LOC", "O", "O", "O"]},
           {"tokens": ["Paris", "is", "big", "!"], "tags": ["B-LOC", "O", "O", "O"]}]
    kept, report = dedup(ner)
    assert kept == ner[:1] and report.counts["duplicate_exact"] == 1
    pairs = [("q1", "What is two plus two?"), ("q2", "What is 2 plus 2?"), ("q3", "Name a colour.")]
    kept, _ = dedup(pairs, key=lambda p: p[1], near_threshold=0.6)
    assert [p[0] for p in kept] == ["q1", "q3"]


def test_empty_or_missing_text_is_counted():
    kept, report = dedup([{"text": ""}, {"label": "positive"}, {"text": "Real text."}])
    assert texts(kept) == ["Real text."]
    assert report.counts["empty_text"] == 2


def test_deterministic_and_order_preserving():
    rng = random.Random(2)
    items = [" ".join(rng.choices("abcdefgh", k=6)) for _ in range(200)]
    first, r1 = dedup(items, near_threshold=0.7)
    second, r2 = dedup(list(items), near_threshold=0.7)
    assert first == second and r1.rejected == r2.rejected
    assert [items.index(t) for t in first] == sorted(items.index(t) for t in first)


def test_chains_onto_the_parse_report():
    parsed = parse_classification(['[{"text": "Great film.", "label": "positive"},'
                                   ' {"text": "great film!", "label": "positive"}]', "chatter"],
                                  ["negative", "positive"])
    kept, report = dedup(parsed.kept)
    total = parsed.then(report)
    assert total.kept == kept
    assert total.summary() == {"inputs": 2, "kept": 1, "rejected": 2,
                               "reasons": {"duplicate_exact": 1, "no_example": 1}}


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        dedup(["a"], method="jaccard")
    with pytest.raises(ValueError):
        dedup(["a"], near_threshold=1.5)
    with pytest.raises(ValueError):
        dedup(["a"], near_threshold=0)


def test_novelty_filter_is_self_instruct():
    pool = ["Write a poem about the sea.", "Summarise this article in one sentence."]
    candidates = ["Write a poem about the ocean.",          # 0.83 to the pool
                  "Translate this sentence into French.",   # novel
                  "Translate this sentence into German.",   # 0.8 to the kept candidate before it
                  "Give three uses for a paperclip."]       # novel
    kept, report = novelty_filter(candidates, pool, threshold=0.7)
    assert kept == ["Translate this sentence into French.", "Give three uses for a paperclip."]
    assert report.summary()["reasons"] == {"not_novel": 2}
    loose, _ = novelty_filter(candidates, pool, threshold=0.9)
    assert loose == candidates


def test_minhash_method():
    pytest.importorskip("datasketch")
    base = "the quick brown fox jumps over the lazy dog near the quiet river bank today"
    items = [base, base.replace("today", "tonight"), base.upper() + "!", "a completely different sentence here"]
    kept, report = dedup(items, method="minhash", near_threshold=0.8)
    assert kept == [base, "a completely different sentence here"]
    assert report.summary()["reasons"] == {"duplicate_exact": 1, "duplicate_near": 1}
    leak_kept, leak = dedup(items[1:], method="minhash", against=[base])
    assert leak.counts["test_leak"] == 2 and leak_kept == items[3:]
    # Verified with exact Jaccard: a pair just under the threshold is never dropped.
    a, b = "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10", "w1 w2 w3 w4 w5 w6 w7 w8 x y"
    assert dedup([a, b], method="minhash", near_threshold=0.7)[0] == [a, b]  # Jaccard 8/12
    assert dedup([a, b], method="minhash", near_threshold=0.6)[0] == [a]
    again, _ = dedup(items, method="minhash", near_threshold=0.8)
    assert again == kept

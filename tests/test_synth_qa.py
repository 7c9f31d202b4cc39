"""Synthetic extractive QA (kdlib.synthesis.synth_qa): reading pairs, locating answers, the span grammar, the funnel."""

import json
import random

import numpy as np
import pytest
from conftest import one_thread_teacher

from kdlib.synthesis import synth_qa
from kdlib.teachers import structured

PASSAGES = ["Super Bowl 50 was an American football game played on February 7, 2016, at Levi's Stadium in "
            "Santa Clara. The Denver Broncos defeated the Carolina Panthers 24-10.",
            "The Amazon rainforest covers much of the Amazon basin of South America, an area of 7,000,000 "
            "square kilometres, most of it in Brazil."]


def test_parse_pairs_reads_json_and_q_a_lines():
    as_json = '{"pairs": [{"question": "Who won?", "answer": "Denver Broncos"}]}'
    assert synth_qa.parse_pairs(as_json) == [{"question": "Who won?", "answer": "Denver Broncos"}]
    lines = "1. Q: Who won? A: Denver Broncos\nQuestion: Where was it played?\nAnswer: Levi's Stadium\nSure!"
    assert synth_qa.parse_pairs(lines) == [{"question": "Who won?", "answer": "Denver Broncos"},
                                           {"question": "Where was it played?", "answer": "Levi's Stadium"}]
    assert synth_qa.parse_pairs("Here are some questions about the passage.") == []


def test_locate_finds_spans_in_the_passages_own_spelling():
    passage = synth_qa.passage_text(PASSAGES[0])
    assert synth_qa.locate("Denver Broncos", passage) == ("Denver Broncos", passage.index("Denver Broncos"))
    assert synth_qa.locate('"the denver broncos."', passage) == ("The Denver Broncos", passage.index("The Denver"))
    assert synth_qa.locate("New England Patriots", passage) is None
    assert synth_qa.passage_text("a  b\n c") == "a b c"


@pytest.mark.parametrize("long", [False, True], ids=["short", "400_words"])
def test_pairs_grammar_only_allows_spans_of_the_passage(long):
    """Uniformly random allowed tokens still give JSON whose every answer is a run of passage words; a
    400-word passage too (answers as grammar rules overflowed llguidance's Earley rows at 293 words)."""
    with one_thread_teacher(batch_size=4) as teacher:
        passage = synth_qa.passage_text(" ".join(PASSAGES * 40) if long else PASSAGES[1])
        passage = " ".join(passage.split()[:400])
        spec = synth_qa.pairs_grammar(passage, 2, question_max_tokens=8, max_answer_words=4 if not long else 8)
        constraint = structured.Constraint.for_tokenizer(teacher.tokenizer, spec)
        for seed in range(3):
            m, out, rng = constraint.matcher(), [], random.Random(seed)
            while not m.done and len(out) < 200:
                bits = np.unpackbits(m.allowed_bits().view(np.uint8), bitorder="little")[:constraint.vocab_size]
                allowed = np.nonzero(bits)[0]
                out.append(int(allowed[rng.randrange(len(allowed))]))
                m.consume(out[-1])
            pairs = json.loads(teacher.tokenizer.decode(out))["pairs"]
            assert len(pairs) == 2
            for p in pairs:
                assert p["answer"] in passage and 1 <= len(p["answer"].split()) <= (8 if long else 4)
    with pytest.raises(ValueError, match="empty passage"):
        synth_qa.pairs_grammar("   ", 2)


def test_synthesis_funnel_and_round_trip_filter():
    with one_thread_teacher(batch_size=4) as teacher:
        res = synth_qa.synthesize_qa(teacher, PASSAGES, per_passage=2, structured=True, max_new_tokens=96, seed=1)
    f = res.funnel
    assert list(f) == list(synth_qa.FUNNEL) and f["requested"] == 4
    assert f["requested"] >= f["parsed"] >= f["answer_in_passage"] >= f["deduplicated"] >= f["round_trip"]
    assert f["answer_in_passage"] == f["parsed"] > 0  # the grammar only writes spans
    for r in res.rows:
        start, text = r["answers"]["answer_start"][0], r["answers"]["text"][0]
        assert r["context"][start:start + len(text)] == text
    assert res.tokens > 0 and res.parse_rate == f["parsed"] / 4
    # a QA model that always answers with the passage's first word: keeps only pairs whose answer that is
    first_word = synth_qa.round_trip_filter(res, lambda qs, cs: [c.split()[0] for c in cs], 0.5)
    assert all(r["answers"]["text"][0].split()[0] == r["context"].split()[0] for r in first_word.rows)
    assert first_word.report.counts["round_trip"] == len(res.rows) - len(first_word.rows)
    assert first_word.funnel["round_trip"] == len(first_word.rows) and res.funnel["round_trip"] == len(res.rows)
    assert "round_trip" not in res.report.counts  # the unfiltered result is untouched


def test_yes_no_synthesis_answers_from_the_enum():
    with one_thread_teacher(batch_size=4) as teacher:
        res = synth_qa.synthesize_yes_no(teacher, PASSAGES, per_passage=2, structured=True, max_new_tokens=80, seed=0,
                                         against=["Did the Denver Broncos win?"])
    f = res.funnel
    assert list(f) == list(synth_qa.YES_NO_FUNNEL) and f["requested"] == 4
    assert f["parsed"] == 4 and f["valid_label"] == 4  # the grammar writes every pair with an allowed answer
    assert f["deduplicated"] == len(res.rows) > 0
    assert {r["label"] for r in res.rows} <= set(synth_qa.YES_NO)
    assert all(r["context"] in {synth_qa.passage_text(p) for p in PASSAGES} for r in res.rows)
    assert all(r["question"] != "Did the Denver Broncos win?" for r in res.rows)


def test_yes_no_free_text_funnel_counts_every_loss():
    """Free text from the small teacher: whatever it writes, each pair lost is counted with its reason."""
    with one_thread_teacher(batch_size=4) as teacher:
        res = synth_qa.synthesize_yes_no(teacher, PASSAGES, per_passage=2, max_new_tokens=64, seed=2)
    f = res.funnel
    assert f["requested"] == 4 and f["requested"] >= f["parsed"] >= f["valid_label"] >= f["deduplicated"]
    assert res.report.counts["bad_label"] == f["parsed"] - f["valid_label"]
    assert {r["label"] for r in res.rows} <= set(synth_qa.YES_NO)

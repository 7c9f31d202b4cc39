"""Extractive QA student (kdlib.students.qa): windows and answer positions, span search, SQuAD scoring, a short run."""

import math

import pytest
import torch

from kdlib.students import qa
from kdlib.students.encoder import _pretrained

CONTEXT = ("The Denver Broncos defeated the Carolina Panthers 24-10 to win Super Bowl 50, played on February 7, "
           "2016 at Levi's Stadium in Santa Clara, California. ") * 6 + "The halftime show was headlined by Coldplay."
ROWS = [
    {"question": "Who headlined the halftime show?", "context": CONTEXT,
     "answers": {"text": ["Coldplay"], "answer_start": [CONTEXT.index("Coldplay")]}},
    {"question": "Who won Super Bowl 50?", "context": CONTEXT,
     "answers": {"text": ["The Denver Broncos", "Denver Broncos"], "answer_start": [0, 4]}},
]


@pytest.fixture(scope="module")
def tokenizer():
    return _pretrained(qa.qa_config().model)[1]


def test_windows_cover_long_contexts_and_locate_the_answer(tokenizer):
    w = qa.windows(tokenizer, [ROWS[0]["question"]], [CONTEXT], max_length=64, stride=16)
    assert len(w.input_ids) > 3 and set(w.example) == {0} and all(len(i) <= 64 for i in w.input_ids)
    start_char = ROWS[0]["answers"]["answer_start"][0]
    found = [qa.answer_positions(o, start_char, start_char + len("Coldplay")) for o in w.offsets]
    hits = [(k, p) for k, p in enumerate(found) if p != (0, 0)]
    assert hits, "some window holds the answer"
    k, (s, e) = hits[-1]
    assert CONTEXT[w.offsets[k][s][0]:w.offsets[k][e][1]] == "Coldplay"
    assert found[0] == (0, 0)  # the first window ends long before it: it points at [CLS]


def test_best_span_respects_order_length_and_allowed_positions():
    start = torch.tensor([0.0, 5.0, 1.0, 9.0, 0.0])
    end = torch.tensor([0.0, 0.0, 4.0, 0.0, 8.0])
    assert qa.best_span(start, end, [True] * 5, max_tokens=5)[1:] == (3, 4)
    assert qa.best_span(start, end, [True] * 5, max_tokens=1)[1:] == (3, 3)     # end - start < 1
    assert qa.best_span(start, end, [True, True, True, False, True], 5)[1:] == (1, 4)
    assert qa.best_span(start, end, [False] * 5, 5) == (float("-inf"), -1, -1)


def test_squad_scores_normalise_answers_and_take_the_best_gold():
    rows = ROWS
    assert qa.squad_scores(["Coldplay.", "the Denver Broncos"], rows) == {"exact_match": 1.0, "f1": 1.0, "n": 2}
    half = qa.squad_scores(["Coldplay", "Carolina Panthers"], rows)
    assert half["exact_match"] == 0.5 and half["f1"] == 0.5
    assert math.isnan(qa.squad_scores([], [])["f1"])
    with pytest.raises(ValueError, match="1 predictions for 2"):
        qa.squad_scores(["x"], rows)


def test_bad_answer_offsets_are_named():
    bad = [{**ROWS[0], "answers": {"text": ["Coldplay"], "answer_start": [3]}}]
    with pytest.raises(ValueError, match="row 1: answer 'Coldplay' is not at character 3"):
        qa.train_qa(bad, config=qa.qa_config(max_length=64, max_steps=1, min_steps=1))
    with pytest.raises(ValueError, match="row 1: missing field 'answers'"):
        qa.train_qa([{"question": "q", "context": "c"}])


def test_a_short_run_learns_and_answers_with_context_spans():
    config = qa.qa_config(max_length=96, batch_size=4, epochs=1, min_steps=6, max_steps=6, lr=1e-4)
    student = qa.train_qa(ROWS * 2, ROWS, config, stride=32)
    assert all(math.isfinite(x) for x in student.history.loss) and student.history.loss[-1] < student.history.loss[0]
    answers = student.predict([r["question"] for r in ROWS], [r["context"] for r in ROWS])
    assert all(a and a in CONTEXT for a in answers)
    scores = student.evaluate(ROWS)
    assert set(scores) == {"exact_match", "f1", "n"} and 0 <= scores["exact_match"] <= scores["f1"] <= 1


def test_yes_no_maybe_student_is_the_classifier_over_question_context_pairs(mirror):
    from kdlib.registry import data
    from kdlib.students.encoder import StudentConfig
    from kdlib.students.student import train_classifier

    pubmed = data.load("pubmedqa")
    train = data.k_shot_rows(pubmed["train"], 4, seed=0)
    config = StudentConfig(max_length=128, batch_size=4, epochs=1, min_steps=3, max_steps=3)
    student = train_classifier(train, None, config, label_names=data.label_names(pubmed))
    ids = student._encode([(train[0]["question"], train[0]["context"])])[0]
    assert ids.count(student.tokenizer.sep_token_id) == 2 and len(ids) == 128  # question, then the cut context
    scores = student.evaluate(pubmed["test"].select(range(12)))
    assert 0 <= scores["macro_f1"] <= 1 and 0 <= scores["accuracy"] <= 1
    assert set(student.predict_labels([(r["question"], r["context"]) for r in train[:3]])) <= {"maybe", "no", "yes"}


def test_study_passages_are_distinct_seeded_and_exclude_the_gold_ones(mirror):
    from kdlib.registry import data
    from kdlib.studies import qa_study
    from kdlib.synthesis import synth_qa

    train = data.load("squad")["train"]
    gold = data.k_shot_rows(train, 4, seed=0)
    picked = qa_study.passages(train, 20, seed=0, exclude=[r["context"] for r in gold])
    assert len(picked) == len(set(picked)) == 20
    assert not {synth_qa.passage_text(r["context"]) for r in gold} & set(picked)
    assert picked == qa_study.passages(train, 20, seed=0, exclude=[r["context"] for r in gold])
    assert picked != qa_study.passages(train, 20, seed=1, exclude=[r["context"] for r in gold])


def test_general_spec_keeps_the_labels_and_drops_the_domain():
    from kdlib.studies import qa_study
    from kdlib.synthesis import synth

    fin = synth.TaskSpec.for_dataset("financial_phrasebank", ["negative", "neutral", "positive"])
    general = qa_study.general_spec(fin)
    assert general.label_names == fin.label_names and general.text_kind != fin.text_kind
    assert not any("invest" in d for d in general.label_descriptions.values())

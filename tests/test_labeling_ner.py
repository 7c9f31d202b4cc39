"""NER annotation by the teacher: prompts, projection onto the given tokens, real teacher calls."""

from kdlib.parsing.parse_ner import to_markup
from kdlib.synthesis import labeling_ner

TYPES = ["PER", "ORG", "LOC", "MISC"]


def test_projection_keeps_identical_tokens_and_maps_retokenised_mentions():
    tokens = ["Peter", "Blackburn", "met", "Blackburn", "in", "Paris", "."]
    tags = ["B-PER", "I-PER", "O", "B-PER", "O", "B-LOC", "O"]
    assert labeling_ner.project(tokens, tokens, tags) == (tags, 0)
    # the teacher dropped the final period and invented an entity that is not in the sentence
    parsed = ["Peter", "Blackburn", "met", "Blackburn", "in", "Paris", "with", "Smith"]
    ptags = ["B-PER", "I-PER", "O", "B-PER", "O", "B-LOC", "O", "B-PER"]
    out, lost = labeling_ner.project(tokens, parsed, ptags)
    assert out == tags and lost == 1


def test_answers_become_tags_or_are_rejected():
    sent = ["MELBOURNE", "1996-08-23", "."]
    assert labeling_ner.tags_from_answer(sent, "Melbourne 1996-08-23", TYPES)[0] == ["O", "O", "O"]
    tags, problems = labeling_ner.tags_from_answer(sent, "[MELBOURNE](LOC) 1996-08-23 .", TYPES)
    assert tags == ["B-LOC", "O", "O"] and not problems["no_example"]
    tags, problems = labeling_ner.tags_from_answer(sent, "Sorry, I cannot help with that.", TYPES)
    assert tags is None and problems["no_example"] == 1


def test_prompt_shows_demonstrations_in_markup():
    shot = (["EU", "rejects", "German", "beef"], ["B-ORG", "O", "B-MISC", "O"])
    msgs = labeling_ner.build_prompt(["John", "runs"], TYPES, [shot])
    assert msgs[2]["content"] == to_markup(*shot) == "[EU](ORG) rejects [German](MISC) beef"
    assert msgs[-1] == {"role": "user", "content": "John runs"} and "PER, ORG, LOC, MISC" in msgs[0]["content"]


def test_annotate_with_the_real_teacher(tmp_path):
    from kdlib.teachers.teacher_local import LocalTeacher

    teacher = LocalTeacher(batch_size=4, cache_path=tmp_path / "c.sqlite", progress=False)
    sents = [["Angela", "Merkel", "visited", "Paris", "."], ["Nothing", "to", "see", "here", "."]]
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O"], ["O"] * 5]
    shots = [(["John", "Smith", "lives", "in", "London", "."], ["B-PER", "I-PER", "O", "O", "B-LOC", "O"])]
    ann = labeling_ner.annotate(teacher, sents, TYPES, shots, max_new_tokens=32)
    assert len(ann.tags) == 2 and ann.tokens > 0 and len(ann.raw) == 2
    for tags, sent in zip(ann.tags, sents):
        assert tags is None or len(tags) == len(sent)
    q = labeling_ner.quality(ann, gold)
    assert 0.0 <= q["entity_f1"] <= 1.0 and q["tokens"] == ann.tokens
    again = labeling_ner.annotate(teacher, sents, TYPES, shots, max_new_tokens=32)
    assert again.tags == ann.tags and again.tokens == ann.tokens   # billed the same, served from the cache

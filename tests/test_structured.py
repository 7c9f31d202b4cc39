"""Structured generation (kdlib.teachers.structured + fastgen + teacher): grammars hold, greedy is unchanged where the
grammar allows the free answer, sampling stays exact and seeded, cache keys stay apart, bad specs fail."""

import json
import re

import pytest
from conftest import one_thread_teacher

from kdlib.parsing.classification import parse_classification
from kdlib.parsing.parse_ner import parse_ner
from kdlib.teachers import fastgen, structured
from kdlib.teachers.api import GenParams, user

LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def teacher():
    with one_thread_teacher(batch_size=8) as t:
        yield t


def _encode(teacher, prompts):
    return [teacher.encode(p) for p in prompts]


def test_spec_helpers_validate_and_round_trip():
    schema = structured.sample_schema(LABELS, items=2)
    spec = structured.json_schema(schema)
    assert structured.schema_of(spec) == schema and structured.json_schema(json.dumps(schema)) == spec
    assert structured.schema_of(structured.lark('start: "a"')) is None
    for bad in ({}, "not json", ["a"]):
        with pytest.raises(ValueError):
            structured.json_schema(bad)
    with pytest.raises(ValueError, match="not a grammar spec"):
        GenParams(grammar='{"regex": "a+"}')
    assert GenParams(grammar=schema).grammar == spec  # a dict schema is canonicalised


def test_grammar_changes_cache_keys_only_when_set():
    free = GenParams(max_new_tokens=8).key_fields()
    assert "grammar" not in free  # rows paid for before grammars existed keep their keys
    constrained = GenParams(max_new_tokens=8, grammar={"enum": LABELS}).key_fields()
    assert constrained["grammar"] and {k: v for k, v in constrained.items() if k != "grammar"} == free


@pytest.mark.slow
def test_greedy_constrained_equals_free_greedy_when_the_grammar_allows_it(teacher):
    prompts = [user("What is the capital of France? Answer in one short sentence."),
               user("Name a colour of the sky.")]
    free = teacher.generate(prompts, max_new_tokens=24)
    assert all(o.finish_reason == "stop" for o in free)
    # A grammar that allows exactly the free answer or something else entirely.
    for prompt, out in zip(prompts, free):
        grammar = structured.lark(f"start: {json.dumps(out.text)} | \"I do not know.\"")
        constrained = teacher.generate([prompt], max_new_tokens=24, grammar=grammar)[0]
        assert constrained.text == out.text
    # The same through fastgen directly, over token ids: identical tokens up to the end.
    tok = teacher.tokenizer
    ids = _encode(teacher, prompts)
    model, _ = teacher.load()
    plain = fastgen.generate(model, ids, fastgen.SamplingParams(max_new_tokens=24), eos_token_ids=teacher.eos_token_ids())
    anything = structured.lark(r"start: /(.|\n)*/")
    constraints = [structured.Constraint.for_tokenizer(tok, anything)] * len(ids)
    same = fastgen.generate(model, ids, fastgen.SamplingParams(max_new_tokens=24), eos_token_ids=teacher.eos_token_ids(),
                            constraints=constraints)
    assert [o.token_ids for o in same] == [o.token_ids for o in plain]


@pytest.mark.slow
def test_constrained_outputs_always_parse_and_samples_are_seeded(teacher):
    prompts = [user("Write two short movie reviews, one positive and one negative.")] * 2
    schema = structured.sample_schema(LABELS, items=2)
    outs = teacher.generate(prompts, max_new_tokens=120, temperature=1.0, n=2, seed=5, grammar=schema)
    again = teacher.generate(prompts, max_new_tokens=120, temperature=1.0, n=2, seed=5, grammar=schema)
    assert [o.text for o in outs] == [o.text for o in again]
    for o in outs:
        if o.finish_reason == "stop":  # a finished answer is valid JSON of the schema
            value = json.loads(o.text)
            assert len(value["samples"]) == 2 and all(s["label"] in LABELS for s in value["samples"])
    finished = [o.text for o in outs if o.finish_reason == "stop"]
    assert finished, "at least one answer should finish within 120 tokens"
    assert len(parse_classification(finished, LABELS).kept) == 2 * len(finished)


@pytest.mark.slow
def test_labels_and_ner_markup_follow_their_grammars(teacher):
    labels = teacher.texts([user("Is 'what a dreadful film' negative or positive?")] * 1, max_new_tokens=6,
                           grammar={"enum": LABELS})
    assert json.loads(labels[0]) in LABELS
    spec = structured.markup_grammar(["PER", "LOC"], lines=1)
    out = teacher.texts([user("Mark the people and places: Angela Merkel visited Paris on Monday.")],
                        max_new_tokens=40, grammar=spec)[0]
    piece = r"(?:[^\s\[\]()]{1,30}|\[[^\s\[\]()]{1,30}(?: [^\s\[\]()]{1,30}){0,5}\]\((?:PER|LOC)\))"
    assert re.fullmatch(rf"{piece}(?: {piece}){{2,39}}", out), out
    assert parse_ner(["[Angela Merkel](PER) visited [Paris](LOC) on Monday."], ["PER", "LOC"]).kept


def test_bad_constraint_lists_are_refused(teacher):
    model, _ = teacher.load()
    with pytest.raises(ValueError, match="one per prompt"):
        fastgen.generate(model, [[1, 2, 3]], fastgen.SamplingParams(max_new_tokens=2), constraints=[None, None])
    with pytest.raises(ValueError, match="does not compile"):
        structured.Constraint.for_tokenizer(teacher.tokenizer, structured.lark("start: %%% nonsense"))


def _accepts(tokenizer, spec: str, text: str) -> bool:
    m = structured.Constraint.for_tokenizer(tokenizer, spec).matcher()
    for tid in tokenizer(text, add_special_tokens=False).input_ids:
        if not m.allows(tid):
            return False
        m.consume(tid)
    return m.matcher.is_accepting()


def test_copy_markup_grammar_allows_exactly_marked_copies(teacher):
    from kdlib.synthesis.labeling_ner import tags_from_answer

    sentence = ["Angela", "Merkel", "visited", "Paris", "on", "Monday", "."]
    spec = structured.copy_markup_grammar(sentence, ["PER", "LOC"])
    tok = teacher.tokenizer
    good = ["Angela Merkel visited Paris on Monday .", "[Angela Merkel](PER) visited [Paris](LOC) on Monday .",
            "Angela [Merkel visited Paris](LOC) on Monday [.](PER)"]
    for answer in good:
        assert _accepts(tok, spec, answer), answer
        tags, problems = tags_from_answer(sentence, answer, ["PER", "LOC"])
        assert tags is not None and len(tags) == len(sentence), (answer, problems)
    for answer in ["Angela Merkel visited Rome on Monday .", "[Angela Merkel](ORG) visited Paris on Monday .",
                   "Angela Merkel visited Paris on Monday"]:
        assert not _accepts(tok, spec, answer), answer


@pytest.mark.slow
def test_per_prompt_grammars(teacher):
    prompts = [user("Pick a colour."), user("Pick a fruit.")]
    grammars = [structured.lark('start: "red" | "blue"'), structured.lark('start: "apple" | "pear"')]
    outs = teacher.texts(prompts, max_new_tokens=4, grammars=grammars)
    assert outs[0] in ("red", "blue") and outs[1] in ("apple", "pear")
    with pytest.raises(ValueError, match="one spec per prompt"):
        teacher.texts(prompts, max_new_tokens=4, grammars=grammars[:1])


def test_a_grammar_the_parser_gives_up_on_stops_its_row_not_the_batch(teacher):
    """One alternative per span of a 300-word text overflows llguidance's Earley rows (how notebook 09's
    answer grammar once stopped a run): that row ends early with a warning; the other row is untouched."""
    words = [f"w{i}" for i in range(300)]
    spans = [" | ".join(" ".join(f'"{w}"' for w in words[i:j]) for j in range(i + 1, min(300, i + 8) + 1))
             for i in range(300)]
    huge = structured.lark("start: " + " | ".join(f"a{i}" for i in range(300)) + "\n"
                           + "\n".join(f"a{i}: {alts}" for i, alts in enumerate(spans)))
    prompts = [user("Say a word."), user("Pick a colour.")]
    with pytest.warns(RuntimeWarning, match="stopped one row early: the grammar refused token"):
        outs = teacher.texts(prompts, max_new_tokens=6, grammars=[huge, structured.lark('start: "red" | "blue"')])
    assert outs[1] in ("red", "blue")


def _random_walk(constraint, seed: int, steps: int = 400) -> list[int]:
    """Tokens drawn uniformly from the allowed set until the grammar stops: the worst writer a grammar meets."""
    import random

    import numpy as np

    m, out, rng = constraint.matcher(), [], random.Random(seed)
    while not m.done and len(out) < steps:
        allowed = np.nonzero(np.unpackbits(m.allowed_bits().view(np.uint8), bitorder="little")[:constraint.vocab_size])[0]
        out.append(int(allowed[rng.randrange(len(allowed))]))
        m.consume(out[-1])
    assert m.done, "the grammar should have closed the answer"
    return out


def test_string_token_caps_close_every_answer_within_its_budget(teacher):
    """With string_max_tokens, even uniformly random tokens give a finished answer of the schema whose length
    the caps bound (without them, made-up words at ~2 characters a token overran the budget mid-string)."""
    schema = structured.sample_schema(LABELS, items=3, min_chars=3, max_chars=200)
    spec = structured.json_schema(schema, compact=True, string_max_tokens=6)
    assert structured.schema_of(spec) == schema  # servers get the plain schema
    assert spec != structured.json_schema(schema, compact=True)  # and the cap is part of the cache key
    constraint = structured.Constraint.for_tokenizer(teacher.tokenizer, spec)
    for seed in range(3):
        tokens = _random_walk(constraint, seed)
        value = json.loads(teacher.tokenizer.decode(tokens))
        assert list(value) == ["samples"] and len(value["samples"]) == 3
        assert all(list(s) == ["text", "label"] and s["label"] in LABELS for s in value["samples"])  # asked order
        assert len(tokens) <= 3 * (6 + 12) + 6
    for bad in ({"type": "string", "pattern": "a+"}, {"type": "object", "properties": {"a": {"type": "string"}}}):
        with pytest.raises(ValueError, match="string_max_tokens"):
            structured.json_schema(bad, string_max_tokens=4)


def test_line_token_caps_keep_every_markup_line_parsable(teacher):
    """Capped markup lines always fit (lines x (cap + 1) tokens) and parse, a line cut inside an entity
    included (the parser keeps the words before the open bracket, counted as a repair)."""
    spec = structured.markup_grammar(["PER", "LOC", "ORG"], lines=3, max_words=40, require_entity=True,
                                     line_max_tokens=20)
    constraint = structured.Constraint.for_tokenizer(teacher.tokenizer, spec)
    for seed in range(3):
        tokens = _random_walk(constraint, seed)
        assert len(tokens) <= 3 * 21
        assert len(teacher.tokenizer.decode(tokens).split("\n")) == 3
    cut = parse_ner(["The [UN](ORG) said it would meet in [Gen"], ["PER", "LOC", "ORG"])
    assert cut.kept == [{"tokens": ["The", "UN", "said", "it", "would", "meet", "in"],
                         "tags": ["O", "B-ORG", "O", "O", "O", "O", "O"]}] and cut.repairs["cut_entity"] == 1
    with pytest.raises(ValueError, match="line_max_tokens"):
        structured.markup_grammar(["PER"], line_max_tokens=-1)

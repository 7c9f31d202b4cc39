"""kdlib.parsing.parse_ner: teacher output -> BIO NER examples; every rejection counted, nothing raises."""

import doctest
import json
import re

import pytest

from kdlib.parsing import parse_ner as parse_ner_module
from kdlib.parsing.parse_ner import parse_ner, simple_tokenize, spacy_tokenizer, to_markup

CONLL = ["PER", "LOC", "ORG", "MISC"]


def reasons(report):
    return report.summary()["reasons"]


def tagged(report, i=0):
    return list(zip(report.kept[i]["tokens"], report.kept[i]["tags"]))


def short_id(value):
    """Readable test ids for long or binary parameters."""
    return repr(value)[:40] if isinstance(value, str | bytes) else None


def test_docstring_examples_hold():
    assert doctest.testmod(parse_ner_module).failed == 0


# ----------------------------------------------------------------------------- tokens

@pytest.mark.parametrize("text, tokens", [
    ("EU rejects German call to boycott British lamb.",
     ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]),
    ("Germany's representative didn't say.", ["Germany", "'s", "representative", "did", "n't", "say", "."]),
    ("BRUSSELS 1996-08-22", ["BRUSSELS", "1996-08-22"]),
    ("The U.S. paid $1,000.50 (3.5%) on 10:30.",
     ["The", "U.S.", "paid", "$", "1,000.50", "(", "3.5", "%", ")", "on", "10:30", "."]),
    ("Mr. O'Neill's long-term plan won 2-1.",
     ["Mr.", "O'Neill", "'s", "long-term", "plan", "won", "2-1", "."]),
    ('"We can\'t," she said.', ['"', "We", "ca", "n't", ",", '"', "she", "said", "."]),
    ("Élodie a visité Montréal.", ["Élodie", "a", "visité", "Montréal", "."]),
    ("P. Simmons took 4-38 for a 37-run lead -- C$ 1.2 million, .496 and +3 in the 1990s on Oct. 5 ...",
     ["P.", "Simmons", "took", "4-38", "for", "a", "37-run", "lead", "--", "C$", "1.2", "million", ",", ".496",
      "and", "+3", "in", "the", "1990s", "on", "Oct.", "5", "..."]),
])
def test_simple_tokenize_is_conll_style(text, tokens):
    assert simple_tokenize(text) == tokens


# ----------------------------------------------------------------------------- NER

def test_ner_inline_markup_both_styles():
    report = parse_ner(["Here are sentences:\n1. [Barack Obama](PER) visited <LOC>New York</LOC> on Monday.",
                        "<ORG>Apple</ORG> sold [iPhones](PRODUCT) in [Paris](loc)."], CONLL)
    assert tagged(report, 0) == [("Barack", "B-PER"), ("Obama", "I-PER"), ("visited", "O"), ("New", "B-LOC"),
                                 ("York", "I-LOC"), ("on", "O"), ("Monday", "O"), (".", "O")]
    assert tagged(report, 1) == [("Apple", "B-ORG"), ("sold", "O"), ("iPhones", "O"), ("in", "O"),
                                 ("Paris", "B-LOC"), (".", "O")]
    assert reasons(report) == {"unknown_label": 1}
    assert report.rejected == [("iPhones (PRODUCT)", "unknown_label")]


def test_ner_json_entities_with_punctuation_clitics_and_absent_entity():
    raw = json.dumps({"sentence": "Germany's representative to the European Union's veterinary committee, "
                                  "Werner Zwingmann, said so.",
                      "entities": [{"text": "Germany", "type": "LOC"}, {"text": "European Union", "type": "ORG"},
                                   {"text": "Werner Zwingmann", "type": "PER"}, {"text": "France", "type": "LOC"}]})
    report = parse_ner([raw], CONLL)
    assert tagged(report) == [
        ("Germany", "B-LOC"), ("'s", "O"), ("representative", "O"), ("to", "O"), ("the", "O"),
        ("European", "B-ORG"), ("Union", "I-ORG"), ("'s", "O"), ("veterinary", "O"), ("committee", "O"),
        (",", "O"), ("Werner", "B-PER"), ("Zwingmann", "I-PER"), (",", "O"), ("said", "O"), ("so", "O"), (".", "O")]
    assert report.rejected == [("France", "bad_entity_span")]


def test_ner_repeated_and_overlapping_entity_text():
    raw = {"sentence": "Paris Hilton visited Paris and Paris again.",
           "entities": [{"text": "Paris", "type": "LOC"}, {"text": "Paris Hilton", "type": "PER"}]}
    report = parse_ner([raw], CONLL)
    assert report.kept[0]["tags"] == ["B-PER", "I-PER", "O", "B-LOC", "O", "B-LOC", "O", "O"]
    assert reasons(report) == {}
    # Listed twice with two types: occurrences take the types in order.
    raw = {"text": "Washington met Washington in Washington.",
           "entities": [["Washington", "PERSON"], ["Washington", "person"], ["Washington", "LOCATION"]]}
    assert parse_ner([raw], CONLL).kept[0]["tags"] == ["B-PER", "O", "B-PER", "O", "B-LOC", "O"]
    # An entity wholly inside a longer one is dropped and counted.
    raw = {"sentence": "New York City is big.", "entities": {"LOC": ["New York City", "York"]}}
    report = parse_ner([raw], CONLL)
    assert report.kept[0]["tags"] == ["B-LOC", "I-LOC", "I-LOC", "O", "O", "O"]
    assert report.rejected == [("York", "overlapping_span")]


def test_ner_entity_must_sit_on_token_boundaries():
    report = parse_ner(['{"sentence": "Parisian food is good.", "entities": [["Paris", "LOC"]]}',
                        "[Paris](LOC)ian food is good."], CONLL)
    assert [ex["tags"] for ex in report.kept] == [["O"] * 5, ["O"] * 5]
    assert reasons(report) == {"bad_entity_span": 2}


def test_ner_nested_and_broken_markup():
    report = parse_ner(["<ORG><LOC>New York</LOC> Times</ORG> reported it.", "<LOC>Paris</PER> is nice.",
                        "[[Paris](LOC)](LOC) twice."], CONLL)
    assert tagged(report) == [("New", "B-ORG"), ("York", "I-ORG"), ("Times", "I-ORG"), ("reported", "O"),
                              ("it", "O"), (".", "O")]
    assert reasons(report) == {"overlapping_span": 1, "bad_markup": 2}


def test_ner_entity_list_shapes_and_free_text_lines():
    shapes = [
        {"sentence": "John Smith works for Google in London.", "entities": {"PER": "John Smith", "ORG": ["Google"],
                                                                            "LOC": ["London"]}},
        {"sentence": "John Smith works for Google in London.",
         "entities": {"John Smith": "PER", "Google": "ORG", "London": "LOC"}},
        {"sentence": "John Smith works for Google in London.", "entities": "John Smith (PER), Google [ORG]; LOC: London"},
        "Sentence: John Smith works for Google in London.\nEntities: John Smith - PER, Google: ORG, London (LOC)",
    ]
    report = parse_ner(shapes, CONLL)
    expected = ["B-PER", "I-PER", "O", "O", "B-ORG", "O", "B-LOC", "O"]
    assert [ex["tags"] for ex in report.kept] == [expected] * 4
    assert reasons(report) == {}


def test_ner_sentence_without_entities_is_kept_all_o():
    report = parse_ner(['{"sentence": "Nothing to see here.", "entities": []}',
                        '{"sentence": "Nor here.", "entities": "None"}'], CONLL)
    assert [ex["tags"] for ex in report.kept] == [["O"] * 5, ["O"] * 3]


@pytest.mark.parametrize("raw, reason", [
    (None, "empty_output"),
    ("just chatter, no markup at all", "no_example"),
    ('{"sentence": "No entity field."}', "missing_field"),
    ('{"sentence": "cut off", "entities": [{"text": "cut', "bad_json"),
    ("Sentence: an orphan sentence", "missing_field"),
    ('{"sentence": "", "entities": []}', "empty_text"),
    (b"\x00\xff junk", "no_example"),
    ("<LOC>" * 40_000, "bad_markup"),
    (12, "not_text"),
], ids=short_id)
def test_ner_malformed_outputs(raw, reason):
    report = parse_ner([raw], CONLL)
    assert report.kept == [] and reasons(report) == {reason: 1}


def test_ner_strict_drops_the_whole_example():
    raw = ['{"sentence": "Paris and Mars.", "entities": [["Paris", "LOC"], ["Mars", "PLANET"]]}']
    assert reasons(parse_ner(raw, CONLL)) == {"unknown_label": 1}
    strict = parse_ner(raw, CONLL, strict=True)
    assert strict.kept == [] and reasons(strict) == {"unknown_label": 1}


def test_ner_token_limits():
    assert reasons(parse_ner(["[Paris](LOC) ."], CONLL, min_tokens=3)) == {"too_short": 1}
    assert reasons(parse_ner(["[Paris](LOC) is a big city."], CONLL, max_tokens=3)) == {"too_long": 1}


def test_ner_keeps_quote_tokens():
    report = parse_ner(['" We do n\'t support it , " [Werner Zwingmann](PER) said .'], CONLL)
    assert report.kept[0]["tokens"][:3] == ['"', "We", "do"]
    assert report.kept[0]["tags"][8:10] == ["B-PER", "I-PER"]


def test_ner_markup_round_trips_conll(mirror):
    """Write gold CoNLL sentences as [text](TYPE) markup: parsing gives back the same tokens and tags.

    Sentences starting with a list marker ("1.", "--") are left out: stripping those is what a
    teacher's numbered list needs, and it differs from CoNLL on purpose.
    """
    import gzip

    with gzip.open(mirror / "conll2003" / "validation.jsonl.gz", "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    rows = [r for r in rows if set(r["tags"]) != {"O"} and not re.fullmatch(r"[-*]+|\(?\d+[.)]", r["tokens"][0])]
    rows = rows[:1000]

    same = sum(parse_ner([to_markup(r["tokens"], r["tags"])], CONLL).kept == [r] for r in rows)
    assert same / len(rows) >= 0.97, same / len(rows)


def test_ner_custom_tokenizer():
    report = parse_ner(["[New York](LOC) is big."], CONLL, tokenizer=str.split)
    assert tagged(report) == [("New", "B-LOC"), ("York", "I-LOC"), ("is", "O"), ("big.", "O")]
    rewriting = parse_ner(["[Paris](LOC) is big."], CONLL, tokenizer=lambda s: s.upper().split())
    assert reasons(rewriting) == {"parse_error": 1}  # tokens not found in the text: cannot align


def test_ner_spacy_tokenizer():
    pytest.importorskip("spacy")
    spacy_report = parse_ner(["[Peter Blackburn](PER) didn't visit [Paris](LOC)."], CONLL,
                             tokenizer=spacy_tokenizer())
    assert tagged(spacy_report) == [("Peter", "B-PER"), ("Blackburn", "I-PER"), ("did", "O"), ("n't", "O"),
                                    ("visit", "O"), ("Paris", "B-LOC"), (".", "O")]


def test_ner_examples_load_into_the_dataset_registry():
    pytest.importorskip("datasets")
    from kdlib.registry.data import from_records

    report = parse_ner(["[Peter Blackburn](PER) flew to <LOC>Paris</LOC>.",
                        '{"sentence": "EU rejects German beef.", "entities": [["EU", "ORG"], ["German", "MISC"]]}'],
                       CONLL)
    dd = from_records({"train": report.kept}, task="ner")
    names = dd["train"].features["tags"].feature.names
    assert [names[t] for t in dd["train"][1]["tags"]] == ["B-ORG", "O", "B-MISC", "O", "O"]


def test_ner_is_deterministic():
    outputs = ["[A](PER) met [B](PER).", '{"sentence": "C met D.", "entities": [["D", "PER"], ["C", "ORG"]]}'] * 3
    assert parse_ner(outputs, CONLL) == parse_ner(list(outputs), CONLL)



# ----------------------------------------------------------------------------- CoNLL-shaped JSON

def test_ner_conll_json_is_accepted_in_any_wrapping():
    row = {"tokens": ["EU", "rejects", "German", "call", "."], "tags": ["B-ORG", "O", "B-MISC", "O", "O"]}
    outputs = [json.dumps(row),
               "Sure! Here it is:\n```json\n" + json.dumps([row, row]) + "\n```",
               row,  # structured output straight from an API teacher
               {"sentences": [row]},
               {"words": row["tokens"], "ner_tags": row["tags"]}]
    report = parse_ner(outputs, CONLL)
    assert report.kept == [row] * 6
    assert report.summary() == {"inputs": 5, "kept": 6, "rejected": 0, "reasons": {}}  # no "repairs" key


def test_ner_conll_json_types_resolve_like_other_ner_types():
    raw = {"tokens": ["Peter", "Blackburn", "in", "Paris"], "tags": ["B-person", "i-PERSON", " o ", "b-loc"]}
    assert parse_ner([raw], CONLL).kept[0]["tags"] == ["B-PER", "I-PER", "O", "B-LOC"]


def test_ner_conll_json_tokens_are_kept_as_given_and_cleaned():
    raw = {"tokens": ["Germany's", "\u200bcafe\u0301", "didn't"], "tags": ["B-LOC", "O", "O"]}
    kept = parse_ner([raw], CONLL, tokenizer=str.upper).kept[0]  # the tokenizer is not applied
    assert kept == {"tokens": ["Germany's", "caf\u00e9", "didn't"], "tags": ["B-LOC", "O", "O"]}


@pytest.mark.parametrize("tags, repaired", [
    (["I-PER", "I-PER", "O", "O"], ["B-PER", "I-PER", "O", "O"]),  # I- at the start
    (["O", "I-PER", "O", "I-LOC"], ["O", "B-PER", "O", "B-LOC"]),  # I- after O (IOB1)
    (["B-PER", "I-LOC", "I-LOC", "O"], ["B-PER", "B-LOC", "I-LOC", "O"]),  # I- after another type
    (["I-PER", "I-person", "B-PER", "I-PER"], ["B-PER", "I-PER", "B-PER", "I-PER"]),  # IOB1 adjacent entities
])
def test_ner_conll_json_repairs_stray_inside_tags(tags, repaired):
    report = parse_ner([{"tokens": ["a", "b", "c", "d"], "tags": tags}], CONLL)
    assert report.kept[0]["tags"] == repaired
    assert report.rejected == [] and report.summary()["repairs"] == {"repaired_bio": 1}  # once per example
    assert parse_ner([{"tokens": ["a", "b", "c", "d"], "tags": tags}], CONLL, strict=True).kept[0]["tags"] == repaired


def test_ner_repairs_add_up_across_reports_and_are_not_rejections():
    iob1 = {"tokens": ["a", "b"], "tags": ["I-PER", "O"]}
    clean = {"tokens": ["a", "b"], "tags": ["B-PER", "O"]}
    first, second = parse_ner([iob1, iob1, clean], CONLL), parse_ner([iob1, "chatter"], CONLL)
    assert first.repairs == {"repaired_bio": 2} and first.counts == {}
    both = first.merge(second)
    assert both.summary() == {"inputs": 5, "kept": 4, "rejected": 1, "reasons": {"no_example": 1},
                              "repairs": {"repaired_bio": 3}}
    assert first.then(second).repairs == {"repaired_bio": 3}


@pytest.mark.parametrize("row, reason", [
    ({"tokens": ["EU", "rejects"], "tags": ["B-ORG"]}, "tag_count_mismatch"),
    ({"tokens": ["EU"], "tags": ["B-ORG", "O"]}, "tag_count_mismatch"),
    ({"tokens": ["iPhones", "sold"], "tags": ["B-PRODUCT", "O"]}, "unknown_label"),
    ({"tokens": ["Paris", "is"], "tags": ["LOC", "O"]}, "bad_tag"),  # IO scheme, no prefix
    ({"tokens": ["Paris", "is"], "tags": ["S-LOC", "O"]}, "bad_tag"),  # BIOES
    ({"tokens": ["Paris", "is"], "tags": ["B-", "O"]}, "bad_tag"),
    ({"tokens": ["Paris", "is"], "tags": [5, 0]}, "bad_tag"),  # label ids, not tags
    ({"tokens": ["Paris", "is"], "tags": ["B-LOC", None]}, "bad_tag"),
    ({"tokens": ["Paris", "is"], "tags": "B-LOC O"}, "bad_tag"),
    ({"tokens": "Paris is", "tags": ["B-LOC", "O"]}, "bad_tokens"),
    ({"tokens": ["New York", "is"], "tags": ["B-LOC", "O"]}, "bad_tokens"),  # a token with a space
    ({"tokens": ["Paris", " "], "tags": ["B-LOC", "O"]}, "bad_tokens"),
    ({"tokens": ["Paris", 3], "tags": ["B-LOC", "O"]}, "bad_tokens"),
    ({"tokens": [], "tags": []}, "empty_text"),
    ('{"tokens": ["Paris", "is"], "tags": ["B-LOC", "O"', "bad_json"),
    ({"tokens": ["Paris", "is"]}, "missing_field"),  # no tags: not CoNLL-shaped, and no sentence either
], ids=short_id)
def test_ner_conll_json_rejections_are_counted(row, reason):
    report = parse_ner([row], CONLL)
    assert report.kept == [] and reasons(report) == {reason: 1} and not report.repairs


def test_ner_conll_json_token_limits():
    row = {"tokens": ["Paris", "is", "big", "."], "tags": ["B-LOC", "O", "O", "O"]}
    assert reasons(parse_ner([row], CONLL, max_tokens=3)) == {"too_long": 1}
    assert reasons(parse_ner([row], CONLL, min_tokens=5)) == {"too_short": 1}


def test_ner_conll_json_round_trips_gold_rows_and_iob1(mirror):
    """Gold CoNLL rows as JSON come back unchanged; rewritten as IOB1 they come back as IOB2."""
    import gzip

    with gzip.open(mirror / "conll2003" / "validation.jsonl.gz", "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh][:1000]
    rows = [{"tokens": r["tokens"], "tags": r["tags"]} for r in rows]
    assert parse_ner([json.dumps(r) for r in rows], CONLL).kept == rows

    def iob1(tags):
        return [("B-" if t.startswith("B-") and prev[2:] == t[2:] else "I-") + t[2:] if t != "O" else t
                for prev, t in zip(["O"] + tags, tags)]

    report = parse_ner([{"tokens": r["tokens"], "tags": iob1(r["tags"])} for r in rows], CONLL)
    assert report.kept == rows
    assert report.repairs["repaired_bio"] == sum(iob1(r["tags"]) != r["tags"] for r in rows) > 0


def test_ner_conll_json_output_is_always_iob2():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    tag = st.sampled_from(["O", "B-PER", "I-PER", "I-LOC", "B-LOC", "i-org", "B-MISC", "I-person", "B-X", "PER"])

    @hypothesis.settings(max_examples=200, deadline=None, derandomize=True)
    @hypothesis.given(st.lists(tag, max_size=8), st.integers(-1, 1))
    def check(tags, extra):
        tokens = [f"w{i}" for i in range(max(0, len(tags) + extra))]
        report = parse_ner([{"tokens": tokens, "tags": tags}], CONLL)
        assert len(report.kept) + len(report.rejected) == 1
        for ex in report.kept:
            assert len(ex["tokens"]) == len(ex["tags"]) == len(tags) > 0
            for prev, t in zip(["O"] + ex["tags"], ex["tags"]):
                assert t == "O" or (t[:2] in ("B-", "I-") and t[2:] in CONLL)
                assert not t.startswith("I-") or prev[2:] == t[2:]

    check()

"""kdlib.parsing.parse: teacher output -> labelled examples; every rejection counted, nothing raises."""

import doctest
import time

import pytest

from kdlib.parsing import parse
from kdlib.parsing.classification import parse_classification
from kdlib.parsing.parse import ParseReport, match_label, normalise_text, parse_label
from kdlib.parsing.parse_ner import parse_ner

SENT = ["negative", "positive"]
CONLL = ["PER", "LOC", "ORG", "MISC"]


def kept_pairs(report):
    return [(ex["text"], ex["label"]) for ex in report.kept]


def reasons(report):
    return report.summary()["reasons"]


def short_id(value):
    """Readable test ids for long or binary parameters."""
    return repr(value)[:40] if isinstance(value, str | bytes) else None


def test_docstring_examples_hold():
    assert doctest.testmod(parse).failed == 0


# ----------------------------------------------------------------------------- report

def test_report_summary_merge_then():
    a = ParseReport(kept=[{"text": "x", "label": "positive"}], n_inputs=2)
    a.reject("junk", "no_example")
    b = ParseReport(n_inputs=1)
    b.reject(None, "empty_output")
    b.reject("more junk", "no_example")
    both = a.merge(b)
    assert both.summary() == {"inputs": 3, "kept": 1, "rejected": 3,
                              "reasons": {"empty_output": 1, "no_example": 2}}
    dropped = ParseReport(kept=[], n_inputs=1)
    dropped.reject("x", "duplicate_exact")
    chained = a.then(dropped)
    assert chained.summary() == {"inputs": 2, "kept": 0, "rejected": 2,
                                 "reasons": {"duplicate_exact": 1, "no_example": 1}}
    assert a.summary()["kept"] == 1  # merge/then return new reports


def test_rejected_snippets_are_bounded():
    r = ParseReport()
    r.reject("x" * 100_000, "too_long")
    assert len(r.rejected[0][0]) <= 301


# ----------------------------------------------------------------------------- text

@pytest.mark.parametrize("raw, clean", [
    ("  A   fine\n\tfilm. ", "A fine film."),
    ('1. "A fine film."', "A fine film."),
    ("- **A fine film.**", "A fine film."),
    ("(3) “A fine film.”", "A fine film."),
    ("Example 2: A fine film.", "A fine film."),
    ("## Text: 'It's fine.'", "It's fine."),
    ('"Cut off by the token limit', "Cut off by the token limit"),
    ('"Great," he said, "really"', '"Great," he said, "really"'),  # not one quoted string
    ("3.5 stars out of 5", "3.5 stars out of 5"),  # a number, not list numbering
    ("-5 degrees outside", "-5 degrees outside"),
    ("ze\u200bro\x00 width\ufeff", "zero width"),
    ("", ""),
])
def test_normalise_text(raw, clean):
    assert normalise_text(raw) == clean


# ----------------------------------------------------------------------------- labels

@pytest.mark.parametrize("answer, label", [
    ("positive", "positive"), ("POSITIVE", "positive"), ('"Positive."', "positive"),
    ("**negative**", "negative"), ("[negative]", "negative"), ("pos", "positive"), ("nega", "negative"),
    ("neg", "negative"),  # through the synonym map as well as by prefix
    ("bad", "negative"),  # synonym only
    ("po", None),  # prefixes shorter than 3 characters are too easy to hit by chance
    ("neutral", None), ("", None), ("positive negative", None),
])
def test_match_label(answer, label):
    assert match_label(answer, SENT, {"bad": "negative", "neg": "negative"}) == label


def test_match_label_prefix_must_be_unique_and_synonyms_must_target_the_set():
    assert match_label("neg", ["negative", "negligible"]) is None
    assert match_label("Sci", ["World", "Sports", "Business", "Sci/Tech"]) == "Sci/Tech"
    assert match_label("meh", SENT, {"meh": "neutral"}) is None  # synonym to a label not in the set


@pytest.mark.parametrize("answer, label", [
    ("positive", "positive"),
    ("The sentiment is positive.", "positive"),
    ("Sentiment: Negative\nExplanation: the reviewer hated the plot.", "negative"),
    ("Options: positive, negative\nAnswer: positive", "positive"),  # prompt echo is skipped
    ("**Answer:** negative", "negative"),
    ("I would say this review is positive, not negative.", "positive"),
    ("This review is not negative.", None),  # negated: not evidence for either label
    ("It is both positive and negative.", None),
    ("Answer: positive\nLabel: negative", None),  # two answers that disagree
    ("I don't know.", None),
    ("", None),
    (None, None),
    (42, None),
])
def test_parse_label(answer, label):
    assert parse_label(answer, SENT) == label


def test_parse_label_prefers_longest_label_and_uses_synonyms():
    labels = ["positive", "very positive", "negative"]
    assert parse_label("This is very positive!", labels) == "very positive"
    assert parse_label("Overall the tone is upbeat.", SENT, {"upbeat": "positive"}) == "positive"
    assert parse_label("About sports and the world cup", ["World", "Sports"]) is None  # two topics named


# ----------------------------------------------------------------------------- classification formats

@pytest.mark.parametrize("raw, expected", [
    ('{"text": "A fine film.", "label": "positive"}', [("A fine film.", "positive")]),
    ('Here you go:\n```json\n[{"sentence": "Boring plot.", "sentiment": "NEG"},\n'
     ' {"review": "Sharp and funny.", "category": "Positive"}]\n```\nHope this helps!',
     [("Boring plot.", "negative"), ("Sharp and funny.", "positive")]),
    ('{"text": "Good one.", "label": "positive"}\n{"text": "Bad one.", "label": "negative"}\n',
     [("Good one.", "positive"), ("Bad one.", "negative")]),
    ('{"examples": [{"text": "Wrapped.", "label": "positive"}]}', [("Wrapped.", "positive")]),
    ('{"positive": ["So good!", "Loved it."], "negative": "Hated it."}',
     [("So good!", "positive"), ("Loved it.", "positive"), ("Hated it.", "negative")]),
    ("Label: positive\nText: I loved every minute.", [("I loved every minute.", "positive")]),
    ("Text: Dull and slow.\nLabel: negative\n\nText: Wonderful cast.\nSentiment: Positive",
     [("Dull and slow.", "negative"), ("Wonderful cast.", "positive")]),
    ("positive: A joyous ride.\nnegative - A waste of time.",
     [("A joyous ride.", "positive"), ("A waste of time.", "negative")]),
    ("1. [positive] Great acting.\n2. (NEGATIVE) Weak script.",
     [("Great acting.", "positive"), ("Weak script.", "negative")]),
    ("The acting was great (positive)\nThe script was weak -> negative\nWhat a bore | neg",
     [("The acting was great", "positive"), ("The script was weak", "negative"), ("What a bore", "negative")]),
    ("Sure! Here are some examples:\n**Positive:**\n1. Uplifting and fun.\n2. Best film this year.\n"
     "Negative:\n- Tedious.\n- A mess from start to end.",
     [("Uplifting and fun.", "positive"), ("Best film this year.", "positive"),
      ("Tedious.", "negative"), ("A mess from start to end.", "negative")]),
])
def test_classification_formats(raw, expected):
    report = parse_classification([raw], SENT, synonyms={"neg": "negative"})
    assert kept_pairs(report) == expected
    assert reasons(report) == {}


def test_python_dict_outputs_are_read_safely():
    raw = "[{'text': 'One.', 'label': 'neg'}, {'text': \"Two's fine.\", 'label': 'pos'}, {'text': 'Thr"
    report = parse_classification([raw, "{'text': __import__('os').getcwd(), 'label': 'positive'}"], SENT)
    assert kept_pairs(report) == [("One.", "negative"), ("Two's fine.", "positive")]
    assert reasons(report) == {"bad_json": 2}  # the cut-off third dict; the call is not evaluated


def test_structured_outputs_need_no_text_round_trip():
    report = parse_classification([{"text": "A dict.", "label": "positive"},
                                   [{"text": "A list.", "label": "negative"}], b'{"text": "Bytes.", "label": "pos"}'],
                                  SENT)
    assert kept_pairs(report) == [("A dict.", "positive"), ("A list.", "negative"), ("Bytes.", "positive")]


def test_truncated_json_list_salvages_complete_objects_and_counts_the_tail():
    raw = '[{"text": "One good film.", "label": "positive"}, {"text": "Two bad'
    report = parse_classification([raw], SENT)
    assert kept_pairs(report) == [("One good film.", "positive")]
    assert reasons(report) == {"bad_json": 1}


@pytest.mark.parametrize("raw, reason", [
    (None, "empty_output"),
    ("", "empty_output"),
    ("   \n\t ", "empty_output"),
    ({}, "empty_output"),
    (3.14, "not_text"),
    (object(), "not_text"),
    ('{"text": "cut off', "bad_json"),
    ('```json\n{"text": "cut off", "label": "posi', "bad_json"),
    ("{'text': 'cut off", "bad_json"),
    ("I think this is a really great movie and everyone should see it.", "no_example"),
    ("\x00\x01\x02\x7f", "empty_output"),
    (b"\xff\xfe\x00\x81 binary junk \xc3\x28", "no_example"),
    ('{"text": "A fine film.", "label": "mixed"}', "unknown_label"),
    ("1. [funny] A laugh riot.", "unknown_label"),
    ('{"text": "A fine film."}', "missing_field"),
    ('{"label": "positive"}', "missing_field"),
    ('{"text": 17, "label": "positive"}', "too_short"),
    ('{"text": ["a", "list"], "label": "positive"}', "missing_field"),
    ('{"text": "   ", "label": "positive"}', "empty_text"),
    ('{"text": "Positive", "label": "positive"}', "text_is_label"),
    ('{"text": "ok", "label": "positive"}', "too_short"),
    ('{"text": "' + "long " * 300 + '", "label": "positive"}', "too_long"),
    ("Text: an orphan text with no label", "missing_field"),
    ("[[[[[" * 2000, "no_example"),
    ("{" * 50_000, "no_example"),
    ('{"a": ' * 20_000, "bad_json"),
], ids=short_id)
def test_malformed_outputs_are_counted_not_raised(raw, reason):
    report = parse_classification([raw], SENT)
    assert report.kept == []
    assert reasons(report) == {reason: 1}
    assert report.rejected[0][1] == reason


def test_ten_megabyte_output_is_rejected_quickly():
    start = time.perf_counter()
    report = parse_classification(["positive: " + "a" * 10_000_000, b"b" * 10_000_000], SENT)
    assert reasons(report) == {"oversized_output": 2}
    assert time.perf_counter() - start < 1.0
    assert parse_classification(["positive: " + "spam " * 1000], SENT, max_raw_chars=10**7).kept == []


def test_default_label_for_per_label_prompts():
    raw = "Sure! Here are three positive reviews:\n1. Great film.\n2. Superb acting.\n3. Loved it."
    report = parse_classification([raw, "A lovely film."], SENT, default_label="positive")
    assert kept_pairs(report) == [("Great film.", "positive"), ("Superb acting.", "positive"),
                                  ("Loved it.", "positive"), ("A lovely film.", "positive")]
    explicit = parse_classification(['{"text": "Awful.", "label": "negative"}'], SENT, default_label="positive")
    assert kept_pairs(explicit) == [("Awful.", "negative")]  # the teacher's own label wins
    with pytest.raises(ValueError):
        parse_classification(["x"], SENT, default_label="neutral")


def test_single_output_and_bad_label_set():
    assert kept_pairs(parse_classification("positive: Works on a bare string.", SENT)) == \
        [("Works on a bare string.", "positive")]
    with pytest.raises(ValueError):
        parse_classification(["positive: x"], [])


def test_length_limits_are_parameters():
    report = parse_classification(['{"text": "Tiny.", "label": "positive"}'], SENT, min_chars=10)
    assert reasons(report) == {"too_short": 1}
    report = parse_classification(['{"text": "A longer text.", "label": "positive"}'], SENT, max_chars=5)
    assert reasons(report) == {"too_long": 1}


def test_every_output_is_accounted_for_and_order_is_stable():
    outputs = ['{"text": "B film.", "label": "negative"}', "chatter", None,
               "positive: A film.\nnegative: C film.", '{"text": "x"', ""] * 5
    first = parse_classification(outputs, SENT)
    second = parse_classification(list(outputs), SENT)
    assert first.kept == second.kept and first.rejected == second.rejected
    assert [ex["text"] for ex in first.kept[:3]] == ["B film.", "A film.", "C film."]
    assert first.summary()["inputs"] == 30
    assert sum(first.counts.values()) == len(first.rejected)


# ----------------------------------------------------------------------------- properties

def _valid(report, labels=SENT):
    assert sum(report.counts.values()) == len(report.rejected)
    for ex in report.kept:
        if "label" in ex:
            assert ex["label"] in labels and ex["text"] == normalise_text(ex["text"]) and ex["text"]
        else:
            assert len(ex["tokens"]) == len(ex["tags"]) > 0
            for prev, tag in zip(["O"] + ex["tags"], ex["tags"]):
                assert tag == "O" or tag[2:] in CONLL
                assert not tag.startswith("I-") or prev[2:] == tag[2:]  # IOB2: I- continues its type


FRAGMENTS = ['{"text": "', '", "label": "', "positive", "negative", "neutral", '"}', "[", "]", "(", ")", "{", "}",
             ",", ":", "\n", "1. ", "- ", "Label: ", "Text: ", "Sentence: ", "Entities: ", "<LOC>", "</LOC>",
             "](PER)", "Paris", "New York", " ", "'s", "```json\n", "```", '"', "\\", "\x00", "é", "🙂"]


def test_parsers_never_raise_on_arbitrary_output():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    raw = st.one_of(st.text(max_size=300), st.binary(max_size=100), st.none(), st.integers(),
                    st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join),
                    st.recursive(st.none() | st.booleans() | st.text(max_size=20) | st.sampled_from(SENT),
                                 lambda kids: st.lists(kids, max_size=4)
                                 | st.dictionaries(st.sampled_from(["text", "label", "sentence", "entities",
                                                                    "type", "positive", "x"]), kids, max_size=4),
                                 max_leaves=12))

    @hypothesis.settings(max_examples=150, deadline=None, derandomize=True)
    @hypothesis.given(st.lists(raw, max_size=4))
    def check(outputs):
        cls = parse_classification(outputs, SENT)
        ner = parse_ner(outputs, CONLL)
        for report in (cls, ner):
            _valid(report)
            assert report.counts["parse_error"] == 0  # the safety net is never what catches an output
        # No output vanishes without a trace: each one is kept or counted.
        for one in outputs:
            single = parse_classification([one], SENT)
            assert single.kept or single.rejected

    check()

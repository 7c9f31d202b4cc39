"""kdlib.synthesis.synth: prompts, list splitting, balancing, distinct requests; a real run of the offline teacher."""

import random
from collections import Counter

import pytest

from kdlib.parsing import classification
from kdlib.synthesis import synth

SPEC = synth.TaskSpec("a one-sentence movie review", {"negative": "is negative", "positive": "is positive"})


def test_task_spec_known_dataset_and_user_labels():
    known = synth.TaskSpec.for_dataset("financial_phrasebank", ["negative", "neutral", "positive"])
    assert "financial" in known.text_kind and "investors" in known.label_descriptions["negative"]
    user = synth.TaskSpec.for_dataset("my_file.jsonl", ["spam", "ham"])
    assert user.label_names == ["spam", "ham"] and "'spam'" in user.label_descriptions["spam"]
    # a registry name with other labels than the known ones falls back to label names, never to wrong descriptions
    odd = synth.TaskSpec.for_dataset("sst2", ["bad", "good"])
    assert odd.label_descriptions == {"bad": "belongs to the category 'bad'", "good": "belongs to the category 'good'"}


def test_generation_prompt_zero_and_few_shot():
    zero = synth.generation_prompt(SPEC, "positive", 3)[0]["content"]
    assert zero.startswith("Write 3 different examples of a one-sentence movie review that is positive.")
    assert "real examples" not in zero and "numbered list" in zero
    few = synth.generation_prompt(SPEC, "negative", 2, ["Dull.", "Too long."], style="Make them hard.")[0]["content"]
    assert "- Dull.\n- Too long." in few and "Make them hard." in few
    with pytest.raises(ValueError, match="not one of"):
        synth.generation_prompt(SPEC, "neutral", 3)


def test_split_inline_list():
    text = "Examples: 1. Great film. 2. Awful plot, 3 stars. 3) Fine.\nNo list here 2. nope"
    assert classification.split_inline_list(text).splitlines() == [
        "Examples:", "1. Great film.", "2. Awful plot, 3 stars.", "3) Fine.", "No list here 2. nope"]


def test_balance_caps_each_label_and_is_seeded():
    rows = [{"text": f"t{i}", "label": "positive" if i % 3 else "negative"} for i in range(30)]
    out = synth.balance(rows, ["negative", "positive"], 5, seed=1)
    assert Counter(r["label"] for r in out) == {"negative": 5, "positive": 5}
    assert out == synth.balance(rows, ["negative", "positive"], 5, seed=1)
    assert len(synth.balance(rows, ["negative", "positive"], 100)) == 30, "short labels keep what they have"


def test_requests_keep_only_distinct_prompts():
    # identical prompts would share cache keys and so return the same samples
    rng = random.Random(0)
    zero = synth._requests(SPEC, {}, 5, 4, "", rng)
    assert [lab for lab, _ in zero] == ["negative", "positive"]
    one_shot = synth._requests(SPEC, {"negative": ["Dull."], "positive": ["Fun."]}, 5, 4, "", rng)
    assert len(one_shot) == 2
    many = synth._requests(SPEC, {"negative": [f"bad {i}" for i in range(6)]}, 5, 4, "", rng)
    assert Counter(lab for lab, _ in many)["negative"] > 1


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="not in"):
        synth.synthesize(None, SPEC, 2, examples={"neutral": ["x"]})
    with pytest.raises(ValueError, match=">= 1"):
        synth.synthesize(None, SPEC, 0)


@pytest.mark.slow
def test_real_teacher_run_is_cached_valid_and_leak_free(tmp_path):
    import torch

    from kdlib.teachers.teacher import make_teacher

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        teacher = make_teacher(batch_size=8, cache_path=tmp_path / "cache.sqlite", progress=False)
        kw = dict(per_prompt=3, max_new_tokens=48, max_rounds=2, seed=3)
        first = synth.synthesize(teacher, SPEC, 3, examples={"negative": ["A dull, lifeless film."]}, **kw)
        assert first.tokens > 0 and first.tokens_spent > 0 and first.raw
        assert {r["label"] for r in first.rows} <= {"negative", "positive"}
        assert max(Counter(r["label"] for r in first.rows).values()) <= 3
        assert all(len(r["text"]) >= 10 for r in first.rows)
        outputs = len(first.report.kept) + len(first.report.rejected)
        assert outputs >= len(first.rows)
        # the same call again: every sample from the cache, the same rows, the same bill
        again = synth.synthesize(teacher, SPEC, 3, examples={"negative": ["A dull, lifeless film."]}, **kw)
        assert again.tokens_spent == 0 and again.rows == first.rows and again.tokens == first.tokens
        # a text the teacher wrote, declared a test text, is now a counted leak and not kept
        if first.rows:
            leaked = first.rows[0]["text"]
            third = synth.synthesize(teacher, SPEC, 3, examples={"negative": ["A dull, lifeless film."]},
                                     against=[leaked], **kw)
            assert third.report.counts["test_leak"] >= 1 and leaked not in [r["text"] for r in third.rows]
    finally:
        torch.set_num_threads(threads)


def test_quality_without_reference():
    rows = [{"text": "a good film", "label": "positive"}, {"text": "a good film", "label": "positive"},
            {"text": "a bad film indeed", "label": "negative"}]
    q = synth.quality(rows, ["negative", "positive"])
    assert q["n"] == 3 and "fidelity" not in q
    assert q["distinct2"] == pytest.approx(5 / 7)  # 7 bigrams, of which "a good" and "good film" repeat
    assert 0 < q["balance"] < 1
    assert synth.quality(rows[:2], ["negative", "positive"])["balance"] == 0.0

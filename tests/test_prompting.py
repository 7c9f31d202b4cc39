"""Prompt strategies: their choices (demonstrations, reasons, ensembles, attribute draws, confusable pairs) on
known inputs, and every strategy against the real offline teacher on a few texts."""

import random

import numpy as np
import pytest
from conftest import one_thread_teacher

from kdlib.studies import prompting_study as ps
from kdlib.synthesis import labeling, prompting, synth

NAMES = ["negative", "positive"]
BANK = [("a dull, lifeless film", "negative"), ("a warm and funny film", "positive"),
        ("the plot is a mess", "negative"), ("the acting is superb", "positive")]


def test_unknown_or_repeated_strategies_are_refused_with_the_known_list():
    with pytest.raises(ValueError, match=r"unknown labelling strategies \['KATE'\]; known: \['zero-shot'"):
        prompting.check(["random demos", "KATE"], prompting.LABELLING, "labelling")
    with pytest.raises(ValueError, match="listed twice"):
        prompting.check(["AttrPrompt", "AttrPrompt"], prompting.SYNTHESIS, "synthesis")
    with pytest.raises(ValueError, match="must be a list"):
        prompting.check("AttrPrompt", prompting.SYNTHESIS, "synthesis")
    assert prompting.check([], prompting.SYNTHESIS, "synthesis") == []


def test_kate_picks_the_nearest_demonstrations_most_similar_last():
    bank_vecs = np.eye(4)
    query = np.array([[0.1, 0.0, 0.9, 0.3], [0.0, 1.0, 0.0, 0.0]])
    picked = prompting.nearest_shots(query, BANK, bank_vecs, 2)
    assert picked[0] == [BANK[3], BANK[2]]  # 0.3 then 0.9: the nearest sits next to the query
    assert picked[1][-1] == BANK[1] and len(picked[1]) == 2
    with pytest.raises(ValueError, match="4 demonstrations but 3"):
        prompting.nearest_shots(query, BANK, bank_vecs[:3], 2)


def test_random_shots_take_each_class_and_are_seeded():
    shots = prompting.random_shots(BANK, 1, seed=3)
    assert sorted(y for _, y in shots) == NAMES and shots == prompting.random_shots(BANK, 1, seed=3)
    assert len(prompting.random_shots(BANK, 5, seed=0)) == 4  # no more than the bank holds


def test_confusable_pairs_cross_labels_by_similarity():
    vecs = np.array([[1.0, 0.0], [0.9, 0.44], [0.0, 1.0], [0.3, 0.95]])
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    pairs = prompting.confusable_pairs(BANK, vecs, 1)
    # the most confusable negative is the plot one (cosine 0.95 with the acting one), not the dull one (0.90)
    assert pairs["negative"] == [("the plot is a mess", "positive", "the acting is superb")]
    assert all(other != lab for lab, mine in pairs.items() for _, other, _ in mine)
    line = prompting.hard_lines(pairs)["positive"][0]
    assert '"negative" example' in line and 'still clearly be "positive"' in line


def test_attribute_lines_are_distinct_seeded_draws_and_junk_values_are_dropped():
    attrs = {"topic": ["the acting", "the music", "the plot"], "audience": ["parents", "critics"]}
    lines = prompting.attribute_lines(attrs, 4, seed=1)
    assert len(set(lines)) == 4 and lines == prompting.attribute_lines(attrs, 4, seed=1)
    assert all(line.startswith("Make every text fit these attributes - topic: ") for line in lines)
    spec = synth.TaskSpec.for_dataset("sst2", NAMES)
    assert prompting.usable_value("the soundtrack", spec)
    assert not any(prompting.usable_value(v, spec) for v in ("]}  # 1. A one-sentence", "json_object", "A one-sentence",
                                                              "x", None, "a " * 30))


def test_reasoned_answers_give_the_label_field_not_a_mention_in_the_reason():
    assert labeling.reasoned_label('{"reason": "not negative at all", "label": "positive"}', NAMES) == "positive"
    assert labeling.reasoned_label("It is warm.\nLabel: positive", NAMES) == "positive"
    assert labeling.reasoned_label('{"reason": "both", "label": "mixed"}', NAMES) is None
    assert prompting._json_field('{"critique": "fine", "rewrite": "A new te', "rewrite") == "A new te"


def test_the_default_prompts_are_unchanged_and_the_options_only_add():
    plain = labeling.build_prompt("What a dud.", NAMES, BANK[:2])
    assert labeling.build_prompt("What a dud.", NAMES, BANK[:2], system="", ask="") == plain
    cot = labeling.build_prompt("What a dud.", NAMES, BANK[:2], ask=labeling.REASON_ASK)
    assert cot[:-1] == plain[:-1] and cot[-1]["content"] == "Text: What a dud.\n" + labeling.REASON_ASK
    spec = synth.TaskSpec.for_dataset("sst2", NAMES)
    base = synth._requests(spec, {}, 5, 1, "", random.Random(0))
    assert synth._requests(spec, {}, 5, 1, "", random.Random(0), variants={}) == base
    varied = synth._requests(spec, {}, 5, 1, "", random.Random(0), variants={"positive": ["A", "B"]})
    assert [lab for lab, _ in varied] == ["negative", "positive", "positive"]
    assert varied[2][1][0]["content"].split("\n")[1] == "B"
    with pytest.raises(ValueError, match="not in"):
        synth.synthesize(None, spec, 2, variants={"mixed": ["x"]})


def test_ensemble_variants_add_the_verbalizer_only_where_it_has_words():
    assert prompting.ensemble_variants(NAMES)[-1] == ("", ["bad", "good"])
    assert len(prompting.ensemble_variants(["World", "Sports"])) == len(prompting.PHRASINGS)


@pytest.mark.slow
def test_every_strategy_runs_on_the_offline_teacher():
    embed = ps.embedder()
    texts = ["an utterly charming and hilarious film", "a tedious, boring mess"]
    with one_thread_teacher() as teacher:
        plan = prompting.LabelPlan(NAMES, BANK, prompting.random_shots(BANK, 1, 0), embed, votes=2, reason_tokens=12)
        for s in prompting.LABELLING:
            ann = prompting.label(teacher, s, texts, plan)
            assert len(ann.labels) == 2 and ann.tokens > 0 and ann.method == s
        # the reasoned answers are held to {"reason", "label"}, so every one parses
        cot = prompting.label(teacher, "chain-of-thought", texts, plan)
        assert all(lab in NAMES for lab in cot.labels) and cot.raw[0][0].startswith('{"reason": "')
        wplan = prompting.WritePlan(synth.TaskSpec.for_dataset("sst2", NAMES), 2, BANK, embed, per_prompt=2,
                                    max_new_tokens=48, refine_tokens=40, attribute_values=3)
        for s in prompting.SYNTHESIS:
            w = prompting.write(teacher, s, wplan)
            assert w.tokens > w.result.tokens or s in ("label-conditioned", "hard examples")
            assert all(r["label"] in NAMES for r in w.rows)


@pytest.mark.slow
def test_the_notebook_refuses_an_unknown_strategy_before_loading_anything(tmp_path):
    """Notebook 12 fails in its setup cell, naming the known strategies, before any data, model or teacher."""
    from kdlib.lab import runner

    recs = runner.run_all("smoke", ["12"], {"synthesis": ["AttrPrompt", "attr-prompt"]}, tmp_path, write_record=False)
    assert recs[0]["status"] == "failed" and recs[0]["error"]["ename"] == "ValueError"
    assert "unknown synthesis strategies ['attr-prompt']; known: ['label-conditioned'" in recs[0]["error"]["evalue"]
    assert recs[0]["metrics"] == []


def test_the_plane_verdicts_and_statements_read_the_numbers():
    import pandas as pd

    scores = {ps.FEW: ([0.30, 0.31, 0.29], 0), "labels · zero-shot": ([0.40, 0.39, 0.41], 50),
              "labels · random demos": ([0.50, 0.52, 0.51], 100), "labels · KATE demos": ([0.60, 0.62, 0.61], 120),
              "synthetic · label-conditioned": ([0.50, 0.50, 0.50], 200),
              "synthetic · AttrPrompt": ([0.45, 0.46, 0.44], 400), ps.FULL: ([0.80] * 3, 0)}
    family = lambda m: "gold" if m in (ps.FEW, ps.FULL) else "labelling" if m.startswith("labels") else "synthesis"  # noqa: E731
    runs = pd.DataFrame([{"dataset": "d", "seed": s, "method": m, "macro_f1": v[s], "tokens": t, "family": family(m)}
                         for m, (v, t) in scores.items() for s in range(3)])
    labelling = pd.DataFrame([{"dataset": "d", "seed": s, "strategy": st, "accuracy": a + 0.01 * s, "tokens": 1}
                              for st, a in (("zero-shot", 0.5), ("random demos", 0.6), ("KATE demos", 0.7))
                              for s in range(3)])
    writing = pd.DataFrame([{"dataset": "d", "seed": s, "strategy": "AttrPrompt", "tokens": 400, "attribute_values": 0}
                            for s in range(3)])
    res = ps.Results(labelling, writing, runs)
    ver = ps.verdicts(res).set_index("strategy")
    assert ver.loc["KATE demos", "student_verdict"] == "beats" and ver.loc["KATE demos", "token_ratio"] == 1.2
    assert ver.loc["KATE demos", "label_verdict"] == "beats"
    assert ver.loc["zero-shot", "student_verdict"] == "is below" and ver.loc["AttrPrompt", "student_verdict"] == "is below"
    pts = ps.points(res).set_index("strategy")
    assert list(pts[pts.frontier].index) == [ps.FEW, "zero-shot", "random demos", "KATE demos"]
    text = "\n".join(ps.statements(res))
    assert "Earn their tokens over the default here: KATE demos." in text
    assert "Earn their tokens over the default here: none." in text  # synthesis: AttrPrompt is below
    assert "with none, its requests varied in length only" in text

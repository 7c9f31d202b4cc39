"""The comparison layer: students per set and seed, tables with paired verdicts, frontier, emitted numbers."""

import math

import numpy as np
import pandas as pd
import pytest

from kdlib.studies import experiment

NAMES = ["neg", "pos"]


def _fit(rows, seed):
    # a stand-in learner whose score is known: more rows and a larger seed score higher
    return {"macro_f1": len(rows) / 10 + seed / 100, "accuracy": 0.5}


def _rows(n, label="pos"):
    return [{"text": f"t{i}", "label": label if i % 2 else "neg"} for i in range(n)]


def test_students_score_every_set_and_seed_and_name_bad_pools(capsys):
    sets = {"few": _rows(2), "many": _rows(6), "empty": [], "one class": [{"text": "a", "label": "pos"}] * 3}
    runs = experiment.students(sets, [0, 1, 2], _fit, label_names=NAMES, extra={"dataset": "toy"}, progress=False)
    assert len(runs) == 12 and set(runs.dataset) == {"toy"}
    assert runs[runs.method == "many"].macro_f1.tolist() == pytest.approx([0.6, 0.61, 0.62])
    empty = runs[runs.method == "empty"]
    assert empty.macro_f1.isna().all() and empty.problem.iloc[0].startswith("empty")
    assert runs[runs.method == "one class"].problem.iloc[0].startswith("single class")
    out = capsys.readouterr().out
    assert "empty: every label was rejected; no student" in out and "single class" in out
    none = experiment.students({}, [0], _fit, progress=False)
    assert list(none.columns) == ["method", "seed", "n_train", "problem"] and not len(none)


def test_table_gives_mean_std_and_paired_verdicts():
    runs = pd.DataFrame([{"method": m, "seed": s, "f1": v} for m, vals in
                         {"base": [0.5, 0.6, 0.7], "better": [0.6, 0.7, 0.8], "mixed": [0.6, 0.5, 0.8],
                          "once": [0.9, np.nan, np.nan]}.items() for s, v in enumerate(vals)])
    t = experiment.table(runs, "f1", baseline="base", order=["better", "base", "mixed", "once"])
    assert list(t.index) == ["better", "base", "mixed", "once"]
    assert t.loc["better", "mean"] == pytest.approx(0.7) and t.loc["better", "std"] == pytest.approx(0.1)
    assert t.loc["better", "vs base"] == "beats" and t.loc["better", "wins"] == 3
    assert t.loc["mixed", "vs base"] == "is within noise of" and t.loc["mixed", "wins"] == 2
    assert t.loc["once", "vs base"].startswith("cannot be compared, on one seed")
    by = experiment.table(pd.concat([runs.assign(d="a"), runs.assign(d="b", f1=runs.f1[::-1].to_numpy())]), "f1",
                          by=["d"], baseline="base")
    assert by.loc[("a", "better"), "vs base"] == "beats" and by.loc[("b", "better"), "vs base"] != "beats"
    nothing = experiment.table(pd.DataFrame({"method": ["x"], "seed": [0]}), "f1")
    assert math.isnan(nothing.loc["x", "mean"])
    assert experiment.versus(runs, "f1", "better", "absent")["verdict"] == "cannot be compared with"
    assert experiment.finding(runs, "f1", "base", exclude=["once"]) == "better 0.700 vs base 0.600 (beats it)"
    two = pd.concat([runs.assign(d="a"), runs.assign(d="b")])
    assert experiment.finding(two, "f1", "base", by="d", exclude=["once"]).startswith("a: better 0.700 vs base")
    assert experiment.finding(runs, "f1", "absent").startswith("no method could be compared")


def test_frontier_keeps_only_undominated_points():
    pts = pd.DataFrame({"tokens": [0, 100, 200, 300, 50], "q": [0.5, 0.7, 0.6, 0.9, 0.4]})
    assert experiment.frontier(pts, "tokens", "q").tolist() == [True, True, False, True, False]


def test_emitted_numbers(monkeypatch):
    from kdlib.lab import emit

    got = {}
    monkeypatch.setattr(emit, "emit", lambda name, value, **kw: got.setdefault(name, (value, kw.get("std"))))
    runs = experiment.students({"a b": _rows(2), "empty": []}, [0, 1], _fit, progress=False)
    experiment.emit_scores(runs, "macro_f1", "student")
    experiment.emit_score("alone", runs, "macro_f1", "a b")
    assert set(got) == {"student/a_b", "alone"}  # the empty set emits nothing (NaN is no headline)
    assert got["alone"][0] == pytest.approx(0.205) and got["alone"][1] == pytest.approx(0.00707, abs=1e-4)
    experiment.emit_columns(pd.DataFrame({"strategy": ["s1", "s2"], "tokens": [10, 20], "acc": [0.5, np.nan]}),
                            {"tokens": "tok/{}", "acc": "acc/{}"})
    assert got["tok/s2"][0] == 20 and "acc/s1" in got and "acc/s2" not in got


def test_emit_columns_with_a_two_column_key_units_and_unranked(monkeypatch):
    from kdlib.lab import emit

    got = {}
    monkeypatch.setattr(emit, "emit", lambda name, value, **kw: got.setdefault(name, (value, kw)))
    frame = pd.DataFrame({"task": ["NER copy"], "drafter": ["prompt lookup"], "speedup": [1.5], "words": [12.0],
                          "train_s": [3.0]})
    experiment.emit_columns(frame, {"speedup": "spec/{}", "words": "words/{}", "train_s": "train_s/{}"},
                            key=("task", "drafter"), unranked=("words",), units={"train_s": "s"},
                            lower_is_better=("train_s",))
    assert got["spec/ner_copy/prompt_lookup"] == (1.5, {"higher_is_better": True})
    assert got["words/ner_copy/prompt_lookup"][1] == {"higher_is_better": None}
    assert got["train_s/ner_copy/prompt_lookup"][1] == {"higher_is_better": False, "unit": "s"}


def test_method_lines_state_quality_score_and_verdict_or_why_not():
    runs = experiment.students({"gold": _rows(4), "more": _rows(8), "empty": []}, [0, 1, 2], _fit, progress=False)
    quality = pd.DataFrame({"accuracy": [0.8], "tokens": [120]}, index=["more"])
    lines = experiment.method_lines(runs, "macro_f1", "gold", ["more", "empty"], quality=quality,
                                    columns={"accuracy": "label accuracy {:.2f}", "tokens": "{:.0f} tokens"})
    assert lines[0] == "- more: label accuracy 0.80, 120 tokens; its student 0.810 ± 0.010 beats gold (0.410)."
    assert lines[1] == "- empty: no student (empty: every label was rejected)."

"""kdlib.synthesis.evokd: configuration, prompts, checkpoints; a real run killed mid-way resumes without new teacher calls."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from kdlib.students.encoder import StudentConfig
from kdlib.synthesis import evokd, evokd_tasks, synth

SPEC = synth.TaskSpec("a one-sentence movie review", {"negative": "is negative", "positive": "is positive"})
SEEDS = [{"text": "A dull, lifeless and overlong film.", "label": "negative"},
         {"text": "Flat characters and a plot that goes nowhere.", "label": "negative"},
         {"text": "A warm, funny and moving story.", "label": "positive"},
         {"text": "Beautifully acted and a joy to watch.", "label": "positive"}]


def test_config_is_validated_and_fingerprint_ignores_the_stopping_rule():
    with pytest.raises(ValueError, match="stances"):
        evokd.EvoKDConfig(stances=("medium",))
    with pytest.raises(ValueError, match="feedback"):
        evokd.EvoKDConfig(feedback="best")
    with pytest.raises(ValueError, match="per_round"):
        evokd.EvoKDConfig(per_round=0)
    with pytest.raises(ValueError, match="labels must be 'teacher' or 'reference'"):
        evokd.EvoKDConfig(labels="oracle")
    base = evokd.EvoKDConfig()
    assert base.fingerprint() == evokd.EvoKDConfig(rounds=9, max_tokens=100).fingerprint()
    assert base.fingerprint() != evokd.EvoKDConfig(analysis=False).fingerprint()


def test_presets():
    assert evokd.preset("EvoKD w/o stances").stances == ()
    static = evokd.preset("static generation", evokd.EvoKDConfig(rounds=7))
    assert static.rounds == 7 and not static.analysis and static.feedback_wrong == 0
    with pytest.raises(ValueError, match="known"):
        evokd.preset("EvoKD++")
    controlled = evokd.preset("static generation (reference labels)")
    assert controlled.labels == "reference" and not controlled.analysis and controlled.stances == ()
    assert evokd.preset("EvoKD (reference labels)").analysis and evokd.preset("EvoKD + relabel").relabel


def test_reference_labels_need_a_reference():
    task = evokd_tasks.ClassificationTask(SPEC, StudentConfig())
    with pytest.raises(ValueError, match="needs run\\(..., reference="):
        evokd.run(Named("a"), task, SEEDS, evokd.preset("EvoKD (reference labels)"))


def test_agreement_and_relabelling_are_per_task():
    task = evokd_tasks.ClassificationTask(SPEC, StudentConfig())
    assert task.agreement(SEEDS, ["negative", "positive", "positive", "positive"]) == 0.75
    assert [r["label"] for r in task.with_labels(SEEDS[:2], ["positive", "negative"])] == ["positive", "negative"]
    ner = evokd_tasks.NERTask(TYPES, StudentConfig())
    row = {"tokens": ["Angela", "Merkel", "visited", "Paris", "."], "tags": ["B-PER", "I-PER", "O", "B-LOC", "O"]}
    assert ner.agreement([row], [row["tags"]]) == 1.0
    # the reference finds PER only: the teacher's LOC is a false positive, precision 1/2, recall 1
    assert ner.agreement([row], [["B-PER", "I-PER", "O", "O", "O"]]) == pytest.approx(2 / 3)
    assert ner.with_labels([row], [["O"] * 5])[0] == {**row, "tags": ["O"] * 5}


def test_training_memo_trains_once_per_rows_and_seed_and_forgets_the_least_recently_used():
    memo, calls = evokd_tasks.TrainingMemo(size=2), []

    def train(tag):
        return lambda: calls.append(tag) or tag

    assert memo.get(SEEDS, 0, train("a")) == "a" and memo.get(SEEDS, 0, train("b")) == "a"
    assert memo.get(SEEDS, 1, train("c")) == "c"
    assert memo.get(SEEDS, 0, train("x")) == "a"  # a hit: (SEEDS, 0) is now the most recently used
    assert memo.get(SEEDS[:2], 0, train("d")) == "d"  # evicts (SEEDS, 1)
    assert memo.get(SEEDS, 0, train("y")) == "a" and memo.get(SEEDS, 1, train("e")) == "e"
    assert calls == ["a", "c", "d", "e"]


class Scored:
    def __init__(self):
        self.calls = 0

    def evaluate(self, dataset):
        self.calls += 1
        return {"macro_f1": len(dataset) / 10}


def test_training_memo_evaluates_a_remembered_student_once_per_dataset():
    memo, test, other = evokd_tasks.TrainingMemo(size=1), [1, 2, 3], [1]
    kept = memo.get(SEEDS, 0, Scored)
    assert memo.evaluate(kept, test) == memo.evaluate(kept, test) == {"macro_f1": 0.3} and kept.calls == 1
    assert memo.evaluate(kept, other) == {"macro_f1": 0.1} and kept.calls == 2
    stranger = Scored()  # not trained through the memo: evaluated every time
    memo.evaluate(stranger, test), memo.evaluate(stranger, test)
    assert stranger.calls == 2
    memo.get(SEEDS, 1, Scored)  # evicts `kept`, and its scores with it
    assert memo.scores == {} and memo.evaluate(kept, test) == {"macro_f1": 0.3} and kept.calls == 3


def test_prompts_show_mistakes_analysis_and_stance():
    task = evokd_tasks.ClassificationTask(SPEC, StudentConfig())
    right = [(SEEDS[2], "positive")]
    wrong = [(SEEDS[0], "positive")]
    a = evokd.analysis_prompt(task, right, wrong, ["It misses sarcasm."])[0]["content"]
    assert "- negative: the text is negative" in a and '(correct label: negative; the model said: positive)' in a
    assert '"A warm, funny and moving story." (label: positive)' in a and "- It misses sarcasm." in a
    g = evokd.generation_prompt(task, "It confuses  faint praise.", wrong, 3, "hard")[0]["content"]
    assert "Analysis of its weaknesses: It confuses faint praise." in g and "Write 3 new hard examples" in g
    plain = evokd.generation_prompt(task, None, [], 3, None)[0]["content"]
    assert "Analysis" not in plain and "Write 3 new examples" in plain


def test_parse_accepts_json_lines_and_counts_bad_labels():
    task = evokd_tasks.ClassificationTask(SPEC, StudentConfig())
    rep = task.parse(['{"text": "I hated every minute of it.", "label": "negative"}\n'
                      '{"text": "Best film of the year, easily.", "label": "Positive"}\n'
                      '{"text": "Some text here at least.", "label": "neutral"}'])
    assert [r["label"] for r in rep.kept] == ["negative", "positive"] and rep.counts["unknown_label"] == 1


class Named:
    def __init__(self, model):
        self.model = model

    def identity(self):
        return {"backend": "local", "model": self.model, "revision": ""}


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    cfg = evokd.EvoKDConfig()
    task = evokd_tasks.ClassificationTask(SPEC, StudentConfig())
    ident = evokd.run_identity(cfg, Named("a"), task)
    state = evokd.EvoKDState(pool=[{**s, "origin": "seed"} for s in SEEDS], analyses=["a"], history=[{"round": 0}],
                             tokens=12, round=1)
    evokd._save(tmp_path, state, cfg, ident)
    assert evokd._load(tmp_path, ident, state.pool[:4]) == state
    assert ident == evokd.run_identity(cfg, Named("a"), evokd_tasks.ClassificationTask(SPEC, StudentConfig(device="cuda")))
    for other in (evokd.run_identity(evokd.EvoKDConfig(analysis=False), Named("a"), task),
                  evokd.run_identity(cfg, Named("b"), task),
                  evokd.run_identity(cfg, Named("a"), evokd_tasks.ClassificationTask(SPEC, StudentConfig(lr=1e-4)))):
        with pytest.raises(ValueError, match="another configuration, teacher"):
            evokd._load(tmp_path, other, state.pool[:4])
    with pytest.raises(ValueError, match="seed set"):
        evokd._load(tmp_path, ident, state.pool[1:3])
    assert evokd._load(tmp_path / "none", ident, state.pool) is None


RUN = textwrap.dedent("""
    import sys, json, torch
    torch.set_num_threads(1)
    from kdlib.synthesis import evokd, evokd_tasks, synth
    from kdlib.students.encoder import StudentConfig
    from kdlib.teachers.teacher import make_teacher
    spec = synth.TaskSpec("a one-sentence movie review", {"negative": "is negative", "positive": "is positive"})
    seeds = json.loads(sys.argv[3])
    teacher = make_teacher(batch_size=4, cache_path=sys.argv[2], progress=False)
    task = evokd_tasks.ClassificationTask(spec, StudentConfig(epochs=1, min_steps=2, max_steps=2))
    cfg = evokd.EvoKDConfig(rounds=2, per_round=4, samples_per_request=1, analysis_max_new_tokens=24,
                            generate_max_new_tokens=64, seed=1)
    student, state = evokd.run(teacher, task, seeds, cfg, checkpoint_dir=sys.argv[1], progress=False)
    print(json.dumps({"pool": state.pool, "tokens": state.tokens, "spent": teacher.tokens_spent()}))
""")


def _run(folder, cache, wait_for=None):
    args = [sys.executable, "-c", RUN, str(folder), str(cache), json.dumps(SEEDS)]
    if wait_for is None:
        out = subprocess.run(args, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while not (folder / wait_for).exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the checkpoint appeared"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return None


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_pool_without_repeating_teacher_calls(tmp_path):
    whole = _run(tmp_path / "a", tmp_path / "a.sqlite")
    _run(tmp_path / "b", tmp_path / "b.sqlite", wait_for="round_001.json")  # killed after round 1
    saved = json.loads((tmp_path / "b" / "round_001.json").read_text())
    resumed = _run(tmp_path / "b", tmp_path / "b.sqlite")
    assert resumed["pool"] == whole["pool"] and resumed["tokens"] == whole["tokens"]
    assert resumed["pool"][:len(saved["pool"])] == saved["pool"], "round 1 was not redone"
    # the resumed process only paid for what round 1 had not: its spend is below the whole run's
    assert resumed["spent"] < whole["spent"]
    # and the two caches hold the same calls: nothing was asked twice
    import sqlite3

    count = [sqlite3.connect(tmp_path / f"{x}.sqlite").execute("select count(*) from entries").fetchone()[0] for x in "ab"]
    assert count[0] == count[1] > 0


TYPES = {"PER": "a person", "LOC": "a location", "ORG": "an organisation", "MISC": "anything else named"}


def test_ner_task_shows_markup_and_parses_it_back():
    task = evokd_tasks.NERTask(TYPES, StudentConfig())
    row = {"tokens": ["Angela", "Merkel", "visited", "Paris", "."], "tags": ["B-PER", "I-PER", "O", "B-LOC", "O"]}
    assert task.show(row) == "[Angela Merkel](PER) visited [Paris](LOC) ."
    wrong = ["B-PER", "I-PER", "O", "B-ORG", "O"]
    assert "(the model marked: [Angela Merkel](PER) visited [Paris](ORG) .)" in task.show(row, wrong)
    assert task.correct(row, row["tags"]) and not task.correct(row, wrong)
    rep = task.parse(["1. [Angela Merkel](PER) visited [Paris](LOC) . 2. [Acme Corp](ORG) hired [Bob](PER) today"])
    assert rep.kept[0] == row and rep.kept[1]["tags"][:2] == ["B-ORG", "I-ORG"]
    assert "- LOC: a location" in task.describe() and "[entity text](TYPE)" in task.output_format(3, "hard")
    with pytest.raises(ValueError, match="classification only"):
        task.embed(None, [row])


@pytest.mark.slow
def test_ner_round_runs_on_conll(mirror, tmp_path):
    import torch

    from kdlib.registry import data
    from kdlib.teachers.teacher import make_teacher

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dd = data.load("conll2003")
        names = data.label_names(dd)
        shots = data.k_shot(dd["train"], 1, seed=0)
        seeds = [{"tokens": t, "tags": [names[i] for i in tags]} for t, tags in zip(shots["tokens"], shots["tags"])]
        task = evokd_tasks.NERTask(TYPES, StudentConfig(epochs=1, min_steps=2, max_steps=2))
        teacher = make_teacher(batch_size=4, cache_path=tmp_path / "c.sqlite", progress=False)
        cfg = evokd.EvoKDConfig(rounds=1, per_round=4, samples_per_request=1, analysis_max_new_tokens=32,
                                generate_max_new_tokens=96)
        student, state = evokd.run(teacher, task, seeds, cfg, evaluate_on=dd["test"].select(range(20)),
                                   checkpoint_dir=tmp_path / "ckpt", progress=False)
        assert [h["round"] for h in state.history] == [0, 1] and "test_entity_f1" in state.history[1]
        assert state.pool[:len(seeds)] == [{**s, "origin": "seed"} for s in seeds]
        assert all(len(r["tokens"]) == len(r["tags"]) for r in state.pool) and state.tokens > 0
        assert (tmp_path / "ckpt" / "round_001.json").is_file()
    finally:
        torch.set_num_threads(threads)


def test_entity_types_from_tag_names():
    assert list(evokd_tasks.entity_types(["O", "B-PER", "I-PER", "B-GENE", "I-GENE"])) == ["PER", "GENE"]
    assert evokd_tasks.entity_types(["B-GENE"])["GENE"] == "an entity of type GENE"


@pytest.mark.slow
def test_reference_labels_replace_the_teachers_and_name_the_run(tmp_path):
    import torch

    from kdlib.teachers.teacher import make_teacher

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        task = evokd_tasks.ClassificationTask(SPEC, StudentConfig(epochs=1, min_steps=2, max_steps=2))
        reference = task.train(SEEDS, 5)  # any classifier serves: the test is that its labels are the ones used
        teacher = make_teacher(batch_size=4, cache_path=tmp_path / "c.sqlite", progress=False)
        cfg = evokd.preset("EvoKD (reference labels)", evokd.EvoKDConfig(
            rounds=1, per_round=4, samples_per_request=2, analysis_max_new_tokens=24, generate_max_new_tokens=128))
        _, state = evokd.run(teacher, task, SEEDS, cfg, reference=reference, checkpoint_dir=tmp_path / "ckpt",
                             progress=False)
        new = [r for r in state.pool if r["origin"] != "seed"]
        assert new, "the teacher wrote no parsable sample"
        assert [r["label"] for r in new] == reference.predict_labels([r["text"] for r in new])
        assert 0 <= state.history[1]["reference_agreement"] <= 1
        # the same run labelled by another reference is another run: its checkpoint is not resumed
        with pytest.raises(ValueError, match="another configuration"):
            evokd.run(teacher, task, SEEDS, cfg, reference=task.train(SEEDS, 6), checkpoint_dir=tmp_path / "ckpt",
                      progress=False)
    finally:
        torch.set_num_threads(threads)

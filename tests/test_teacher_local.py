"""Local teacher on the real SmolLM2 teacher: generation, seeds, cache, scoring, kill-and-resume."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import one_thread_teacher

from kdlib.lab.paths import REPO_ROOT
from kdlib.teachers.api import user
from kdlib.teachers.gen_cache import GenCache

pytestmark = pytest.mark.slow
TOPICS = ["rain", "cats", "bread", "trains", "music", "snow"]


@pytest.fixture(scope="module")
def local():
    with one_thread_teacher(batch_size=8) as teacher:
        yield teacher


def test_generate_chat_and_plain_text_with_stop_strings(local):
    outs = local.generate([user("What is the capital of France?"), "The capital of France is"],
                          max_new_tokens=12)
    assert [(o.index, o.sample, o.cached) for o in outs] == [(0, 0, False), (1, 0, False)]
    assert "Paris" in outs[0].text and "Paris" in outs[1].text
    assert all(o.prompt_tokens > 0 and 0 < o.completion_tokens <= 12 for o in outs)
    cut = local.generate(["The capital of France is"], max_new_tokens=12, stop=["Paris"])[0]
    assert "Paris" not in cut.text and cut.finish_reason == "stop"


def test_second_run_is_served_from_the_cache(local, tmp_path):
    teacher = local.with_cache(cache_path=tmp_path / "cache.sqlite")
    prompts = [user(f"One word about {t}.") for t in TOPICS[:3]]
    first = teacher.generate(prompts, max_new_tokens=6, temperature=0.9, n=2, seed=3)
    spent = teacher.tokens_spent()
    second = teacher.generate(prompts, max_new_tokens=6, temperature=0.9, n=2, seed=3)
    assert [o.text for o in second] == [o.text for o in first]
    assert all(o.cached for o in second) and not any(o.cached for o in first)
    calls = teacher.ledger.frame()
    assert list(calls["cache_misses"]) == [6, 0] and list(calls["cache_hits"]) == [0, 6]
    assert teacher.tokens_spent() == spent > 0
    assert teacher.ledger.summary()["tokens_without_cache"] == 2 * spent


def test_seeds_make_samples_reproducible_and_distinct(local):
    kw = {"max_new_tokens": 10, "temperature": 1.0, "n": 2}
    a = local.texts([user("Invent a name for a bakery.")], seed=1, **kw)
    b = local.texts([user("Invent a name for a bakery.")], seed=1, **kw)
    c = local.texts([user("Invent a name for a bakery.")], seed=2, **kw)
    assert a == b
    assert a[0] != a[1]  # sample index 0 vs 1
    assert a != c


def test_greedy_samples_share_one_row(local, tmp_path):
    teacher = local.with_cache(cache_path=tmp_path / "g.sqlite")
    outs = teacher.generate(["Once upon a time"], max_new_tokens=5, n=3, seed=9)
    assert len({o.text for o in outs}) == 1
    assert teacher.ledger.records[-1].cache_misses == 1


def test_scores_rank_the_right_answer_and_add_up(local):
    paris, london, two = local.score("The capital of France is", [" Paris", " London", " a beautiful city"])
    assert paris.sum_logprob > london.sum_logprob
    assert two.n_tokens == 3 and two.sum_logprob == pytest.approx(sum(two.token_logprobs))
    assert two.mean_logprob == pytest.approx(two.sum_logprob / 3)
    chat = local.score_many([user("Is fire hot? Answer yes or no."), user("Name a fruit.")],
                            [["Yes", "No"], ["Apple", "Banana split sundae"]])
    assert [len(row) for row in chat] == [2, 2] and chat[1][1].n_tokens > chat[1][0].n_tokens
    assert chat[0][0].sum_logprob == pytest.approx(local.score(user("Is fire hot? Answer yes or no."),
                                                               ["Yes"])[0].sum_logprob, abs=1e-4)


def test_candidates_of_one_prompt_share_its_pass_with_the_same_log_probs(local):
    """Label scoring runs the prompt once and continues each label from its KV cache; the log-probs are those of
    the whole-text pass (float rounding apart), for chat and plain prompts, one- and many-token candidates."""
    from kdlib.teachers.api import Request

    prompts = [[{"role": "system", "content": "Classify the review: negative, positive."},
                {"role": "user", "content": "Text: a warm, funny film"}], "The capital of France is"]
    cands = ["negative", "positive", " Paris and its many bridges"]
    reqs = [Request(i, j, p, f"{i}-{j}", candidate=c) for i, p in enumerate(prompts) for j, c in enumerate(cands)]
    calls = []
    handle = local.load()[0].register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].shape),
                                                       with_kwargs=True)
    try:
        shared = local._run_score(reqs)
    finally:
        handle.remove()
    assert len(calls) == 4 and calls[0][0] == 1 and calls[1][0] == 3  # per prompt: its pass, then 3 candidates
    for r, entry in zip(reqs, shared):
        alone = local._run_score([r])[0]  # one candidate: the whole-text path
        assert entry.prompt_tokens == alone.prompt_tokens
        assert entry.extra["token_logprobs"] == pytest.approx(alone.extra["token_logprobs"], abs=1e-4)
    plan = local._plan([Request(0, j, p, f"{i}{j}", candidate=c) for j, c in enumerate(cands) for i, p in
                        enumerate(prompts)])  # interleaved on purpose
    assert [r.prompt for r in plan[0]][:3] in ([prompts[1]] * 3, [prompts[0]] * 3)


def test_scoring_halves_the_batch_on_out_of_memory(local):
    import torch

    prompts = ["The capital of France is", "Two plus two is", "The sky is"]
    expected = local.score_many(prompts, [" blue", " four"])

    def refuse_big_batches(module, args, kwargs):
        if kwargs["input_ids"].shape[0] > 1:
            raise torch.OutOfMemoryError("simulated: batch too big for this device")

    handle = local.load()[0].register_forward_pre_hook(refuse_big_batches, with_kwargs=True)
    try:
        got = local.score_many(prompts, [" blue", " four"])
    finally:
        handle.remove()
    for row_got, row_expected in zip(got, expected):
        for g, e in zip(row_got, row_expected):
            assert g.sum_logprob == pytest.approx(e.sum_logprob, abs=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("kdlib.teachers.fastgen") is None, reason="needs kdlib.teachers.fastgen (per-row seeds)")
def test_a_sample_does_not_depend_on_its_batch(local):
    alone = local.texts([user("Name a colour.")], max_new_tokens=8, temperature=1.0, seed=5)
    crowd = local.texts([user("Write a long poem about the sea."), user("Name a colour."), "Hi"],
                        max_new_tokens=8, temperature=1.0, seed=5)
    assert crowd[1] == alone[0]


JOB = """
import json, sys
from kdlib.teachers.api import user
from kdlib.teachers.teacher_local import LocalTeacher

teacher = LocalTeacher(batch_size=2, commit_every=2, cache_path=sys.argv[1], progress=False)
prompts = [user(f"Write one short sentence about {{t}}.") for t in {topics!r}]
outs = teacher.generate(prompts, n=2, seed=7, max_new_tokens=8, temperature=0.8)
with open(sys.argv[2], "w") as f:
    json.dump({{"texts": [o.text for o in outs], "summary": teacher.ledger.summary()}}, f)
"""


def _rows(db) -> int:
    try:
        return len(GenCache(db)) if db.exists() else 0
    except Exception:  # the job is creating the file right now
        return 0


def test_kill_and_resume_recomputes_only_what_is_missing(local, tmp_path):
    script, db, out = tmp_path / "job.py", tmp_path / "job.sqlite", tmp_path / "out.json"
    script.write_text(textwrap.dedent(JOB.format(topics=TOPICS[:4])))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen([sys.executable, str(script), str(db), str(out)], env=env, cwd=REPO_ROOT)
    deadline = time.monotonic() + 180
    while _rows(db) < 2 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(job.pid, signal.SIGKILL)  # after the first committed batch of two rows
    job.wait()
    committed, total = _rows(db), 2 * 4
    assert job.returncode == -signal.SIGKILL and 0 < committed < total, (job.returncode, committed)

    subprocess.run([sys.executable, str(script), str(db), str(out)], env=env, cwd=REPO_ROOT, check=True)
    resumed = json.loads(out.read_text())
    assert resumed["summary"]["cache_hits"] == committed  # nothing committed was generated again
    assert resumed["summary"]["cache_misses"] == total - committed

    reference = local.with_cache(cache_path=tmp_path / "reference.sqlite")
    reference.batch_size = reference.commit_every = 2
    prompts = [user(f"Write one short sentence about {t}.") for t in TOPICS[:4]]
    straight = reference.texts(prompts, n=2, seed=7, max_new_tokens=8, temperature=0.8)
    assert resumed["texts"] == straight


def test_twins_made_before_loading_share_one_copy_of_the_weights(tmp_path):
    from kdlib.teachers.teacher import make_teacher

    fresh = make_teacher(device="cpu", cache=False)   # nothing loaded yet
    twin = fresh.with_cache(cache_path=tmp_path / "twin.sqlite")
    twin.texts([user("Say hi.")], max_new_tokens=2)
    assert fresh.load()[0] is twin.load()[0]   # the twin's load served the original (and every later twin)

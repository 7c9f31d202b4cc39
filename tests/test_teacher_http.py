"""HTTP teacher against `kdlib.teachers.openai_server` serving the local teacher over real loopback HTTP."""

import logging
import os
import re
import subprocess
import sys

import pytest
from conftest import one_thread_teacher

from kdlib.lab.paths import REPO_ROOT
from kdlib.teachers import structured
from kdlib.teachers.api import Unsupported, user
from kdlib.teachers.openai_server import OpenAIServer, parse_faults
from kdlib.teachers.teacher import make_teacher
from kdlib.teachers.teacher_http import TeacherHTTPError

pytestmark = pytest.mark.slow
SECRET = "sk-kdlib-test-" + os.urandom(8).hex()
SERVER_KEY_ENV = "KDLIB_TEST_SERVER_KEY"


@pytest.fixture(scope="module")
def local():
    with one_thread_teacher(batch_size=4) as teacher:
        yield teacher


@pytest.fixture(scope="module")
def server(local):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SERVER_KEY_ENV, SECRET)
        mp.setenv("OPENAI_API_KEY", SECRET)
        with OpenAIServer(local, port=0, api_key_env=SERVER_KEY_ENV) as srv:
            yield srv


def _client(server, **kw):
    defaults = {"concurrency": 2, "timeout_s": 120} | ({} if "cache_path" in kw else {"cache": False})
    return make_teacher(server.url, **(defaults | kw))


def test_chat_and_completion_generate(server, local):
    client = _client(server)
    assert client.model == local.model  # discovered from GET /v1/models
    prompts = [user("What is the capital of France?"), "The capital of France is"]
    outs = client.generate(prompts, max_new_tokens=8)
    alone = [local.generate([p], max_new_tokens=8)[0] for p in prompts]  # the server also runs them one by one
    assert [o.text for o in outs] == [a.text for a in alone]
    assert [o.prompt_tokens for o in outs] == [a.prompt_tokens for a in alone]
    sampled = client.generate(["Once upon a time"], max_new_tokens=8, temperature=1.0, n=2, seed=4)
    assert sampled[0].text != sampled[1].text
    assert client.texts(["Once upon a time"], max_new_tokens=8, temperature=1.0, n=2, seed=4) == \
        [s.text for s in sampled]


def test_score_matches_the_local_backend(server, local):
    client = _client(server)
    remote = client.score("The capital of France is", [" Paris", " London", " a big city"])
    direct = local.score("The capital of France is", [" Paris", " London", " a big city"])
    for r, d in zip(remote, direct):
        assert r.n_tokens == d.n_tokens and r.sum_logprob == pytest.approx(d.sum_logprob, abs=1e-4)
    assert remote[0].sum_logprob > remote[1].sum_logprob


def test_injected_429_500_and_timeouts_are_retried_and_succeed(server):
    client = _client(server, concurrency=1, timeout_s=6, backoff_s=0.05)
    before = dict(server.stats)
    server.faults = parse_faults("429:retry-after=0.2,500,delay:8")  # delay 8 > timeout 6: a read timeout
    out = client.generate(["Hello"], max_new_tokens=4)[0]
    assert out.completion_tokens > 0
    assert server.stats["faults"] - before["faults"] == 3
    assert server.stats["requests"] - before["requests"] == 4
    assert client.ledger.summary()["cache_misses"] == 1


def test_key_never_reaches_cache_logs_or_reprs(server, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)  # httpx and httpcore log requests at DEBUG
    client = _client(server, cache_path=tmp_path / "teacher.sqlite")
    prompts = [user("Say hi."), "Two plus two is"]
    first = client.texts(prompts, max_new_tokens=4, temperature=0.7, seed=1)
    client.score("Two plus two is", [" four"])
    requests = server.stats["requests"]
    again = client.texts(prompts, max_new_tokens=4, temperature=0.7, seed=1)
    assert again == first and server.stats["requests"] == requests  # second run: zero teacher calls
    client.cache.close()
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("teacher.sqlite"))
    assert first[1].encode() in stored  # the completions are in there (a sanity check of the grep)
    out, err = capfd.readouterr()
    texts = [caplog.text, out, err, repr(client), repr(vars(client)), client.ledger.frame().to_csv()]
    assert SECRET.encode() not in stored
    assert not any(SECRET in t for t in texts)


def test_server_runs_as_a_module(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "KDLIB_HEADLESS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "kdlib.teachers.openai_server", "--port", "0", "--served-name", "smol"],
                            cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # the model loads first, then the server announces its address
            found = re.search(r"serving smol at (http://\S+)", line)
            if found:
                break
        else:
            pytest.fail(f"server exited with {proc.wait()} before announcing its address")
        client = make_teacher(found.group(1), cache=False)
        assert client.model == "smol"
        assert client.generate(["Hello"], max_new_tokens=2)[0].completion_tokens > 0
    finally:
        proc.terminate()
        proc.wait(30)


def test_structured_output_goes_through_response_format(server, local):
    client = _client(server)
    schema = {"enum": ["negative", "positive"]}
    prompt = [user("Is 'a dreadful, boring film' negative or positive?")]
    remote = client.texts(prompt, max_new_tokens=6, grammar=schema)
    assert remote == local.texts(prompt, max_new_tokens=6, grammar=schema)  # the server constrained it
    assert remote[0].strip('"') in ("negative", "positive")


def test_a_server_that_refuses_response_format_gets_free_text(server, local, monkeypatch):
    client = _client(server)
    real = client.request
    refused = []

    def strict(method, path, body=None):  # a server that rejects the field, as some do
        if body and "response_format" in body:
            refused.append(path)
            raise TeacherHTTPError("POST failed: HTTP 400: unsupported field response_format", 400)
        return real(method, path, body)

    monkeypatch.setattr(client, "request", strict)
    prompt = [user("Name a colour.")]
    out = client.texts(prompt, max_new_tokens=6, grammar={"enum": ["red", "blue"]})
    assert out == local.texts(prompt, max_new_tokens=6)  # free text; the caller's parser reads it
    client.texts([user("Name a fruit.")], max_new_tokens=4, grammar={"enum": ["apple"]})
    assert refused == ["/chat/completions"]  # asked once, then remembered


def test_one_spec_for_local_and_remote_teachers(server):
    local_only = {"device": "cpu", "batch_size": 4, "amateur": 8, "dtype": "auto"}
    remote = make_teacher(server.url, model="", api_key_env=SERVER_KEY_ENV, cache=False, **local_only)
    assert remote.backend == "http" and remote.model and remote.api_key_env == SERVER_KEY_ENV
    assert remote.unsupported("logits") and "log-probabilities" in remote.unsupported("score")
    with pytest.raises(Unsupported, match="logits"):
        remote.generate(["Hi"], max_new_tokens=2, contrastive=0.5)
    local = make_teacher(model="", api_key_env="X_KEY", cache=False, batch_size=4)
    assert local.backend == "local" and local.unsupported("logits") is None and local.unsupported("score") is None
    with pytest.raises(ValueError, match="names the model served at a URL"):
        make_teacher(model="gpt-4o", cache=False)
    with pytest.raises(ValueError, match="unknown teacher feature"):
        local.unsupported("telepathy")


def test_a_lark_grammar_goes_out_as_free_text(server, local):
    client = _client(server)
    assert "Lark" in client.unsupported("grammar") and local.unsupported("grammar") is None
    spec = structured.lark('start: "yes" | "no"')
    prompt = [user("Say something.")]
    assert client.texts(prompt, max_new_tokens=6, grammar=spec) == local.texts(prompt, max_new_tokens=6)

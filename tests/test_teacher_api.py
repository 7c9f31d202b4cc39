"""Teacher front end without running a model: parameters, prompts, secrets, HTTP failure paths.

The HTTP tests talk to a real `kdlib.teachers.openai_server` on loopback; they only hit paths
that fail before the model is needed (auth, injected faults), so no weights are loaded.
"""

import time

import pytest

from kdlib.lab.redact import MASK, redact, register_key_env
from kdlib.teachers.api import GenParams, Unsupported, check_prompts, cut_at_stop, user
from kdlib.teachers.openai_server import OpenAIServer, parse_faults
from kdlib.teachers.teacher import make_teacher
from kdlib.teachers.teacher_http import TeacherHTTPError, _public_url, retry_after_s
from kdlib.teachers.teacher_local import LocalTeacher, run_halving

SERVER_KEY_ENV = "KDLIB_TEST_SERVER_KEY"


def test_params_validate_and_name_the_culprit():
    assert GenParams.build({"temperature": 0.5}, top_k=5, stop="\n") == GenParams(temperature=0.5, top_k=5,
                                                                                  stop=("\n",))
    with pytest.raises(TypeError, match="'temprature'; did you mean 'temperature'"):
        GenParams.build(temprature=0.7)
    with pytest.raises(TypeError, match="max_new_tokens must be an int"):
        GenParams(max_new_tokens=8.0)
    with pytest.raises(ValueError, match="top_p must be in"):
        GenParams(top_p=0.0)
    with pytest.raises(ValueError, match="stop must be"):
        GenParams(stop=("",))
    with pytest.raises(TypeError, match="temperature must be a number"):
        GenParams(temperature="hot")


def test_prompt_shapes():
    assert check_prompts(["a", user("b", system="s")])[1][0] == {"role": "system", "content": "s"}
    with pytest.raises(TypeError, match="wrap a single prompt"):
        check_prompts("just a string")
    with pytest.raises(TypeError, match="wrap a single prompt"):
        check_prompts(user("one conversation, not a list of them"))
    with pytest.raises(TypeError, match=r"prompts\[1\]"):
        check_prompts(["ok", [{"role": "user"}]])


def test_cut_at_stop_takes_the_earliest():
    assert cut_at_stop("label: pos\nmore ###", ["###", "\n"]) == ("label: pos", True)
    assert cut_at_stop("no stop here", ["###"]) == ("no stop here", False)


def test_redact_hides_registered_keys(monkeypatch):
    monkeypatch.setenv("KDLIB_TEST_REDACT_KEY", "sk-redact-me-123")
    register_key_env("KDLIB_TEST_REDACT_KEY")
    assert redact("Incorrect API key provided: sk-redact-me-123.") == f"Incorrect API key provided: {MASK}."
    assert "sk-redact-me-123" not in str(TeacherHTTPError("echo sk-redact-me-123"))


def test_small_helpers():
    assert retry_after_s("2.5") == 2.5 and retry_after_s(None) is None and retry_after_s("soon") is None
    assert 0 <= retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") < 1  # a date in the past: go now
    assert _public_url("https://user:pw@api.example.com:8443/v1/?key=x") == "https://api.example.com:8443/v1"
    faults = parse_faults("429:retry-after=1,500,delay:0.5")
    assert [(f.status, f.retry_after, f.delay_s) for f in faults] == [(429, 1.0, 0), (500, None, 0), (None, None, 0.5)]
    with pytest.raises(ValueError, match="unknown fault option"):
        parse_faults("429:sometime")


def test_run_halving_halves_on_oom_only():
    import torch

    seen = []

    def fn(chunk):
        seen.append(len(chunk))
        if len(chunk) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated by a too-big chunk)")
        return [x * 10 for x in chunk]

    assert run_halving(fn, list(range(7)), batch_size=8) == [x * 10 for x in range(7)]
    assert seen[:3] == [7, 4, 2]
    with pytest.raises(ValueError):
        run_halving(lambda chunk: (_ for _ in ()).throw(ValueError("not an OOM")), [1, 2], 2)


@pytest.fixture(scope="module")
def idle_teacher():
    """A local teacher whose weights are never loaded (model resolution only)."""
    return LocalTeacher(cache=False, progress=False)


def _server(teacher, monkeypatch, faults=None):
    monkeypatch.setenv(SERVER_KEY_ENV, "sk-server-side-key-42")
    return OpenAIServer(teacher, port=0, api_key_env=SERVER_KEY_ENV, faults=faults).start()


def test_wrong_key_fails_fast_without_leaking_it(idle_teacher, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-0123456789")
    server = _server(idle_teacher, monkeypatch)
    try:
        with pytest.raises(TeacherHTTPError) as info:
            make_teacher(server.url, cache=False, max_retries=5)  # model discovery hits GET /v1/models
        assert info.value.status == 401
        text = str(info.value) + repr(info.value)
        assert "OPENAI_API_KEY" in text and "sk-wrong-key" not in text and "sk-server-side" not in text
        assert server.stats["requests"] == 0  # GETs are not counted and were not retried
    finally:
        server.stop()


def test_retry_after_and_stalls_are_retried_then_permanent_errors_stop(idle_teacher, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-0123456789")
    server = _server(idle_teacher, monkeypatch, faults="429:retry-after=0.6,delay:0.8,503")
    try:
        teacher = make_teacher(server.url, model="m", cache=False, timeout_s=0.3, backoff_s=0.01)
        start = time.monotonic()
        with pytest.raises(TeacherHTTPError, match="HTTP 401"):
            teacher.generate(["hi"], max_new_tokens=2)
        # 429 (waited >= Retry-After), a stall (client timeout), 503, then the 401 that stops retrying.
        assert server.stats["requests"] == 4
        assert time.monotonic() - start >= 0.6
        assert teacher.ledger.summary()["cache_misses"] == 0
    finally:
        server.stop()


def test_retries_are_bounded(idle_teacher, monkeypatch):
    server = _server(idle_teacher, monkeypatch, faults="500,502,503,504")
    try:
        teacher = make_teacher(server.url, model="m", cache=False, max_retries=2, backoff_s=0.01)
        with pytest.raises(TeacherHTTPError, match="after 2 retries: HTTP 503"):
            teacher.generate(["hi"], max_new_tokens=2)
        assert server.stats["requests"] == 3
    finally:
        server.stop()


def test_http_scoring_of_chat_messages_is_refused_clearly(idle_teacher, monkeypatch):
    server = _server(idle_teacher, monkeypatch)
    try:
        teacher = make_teacher(server.url, model="m", cache=False)
        with pytest.raises(Unsupported, match="plain-text prompts"):
            teacher.score(user("Is this positive?"), ["yes", "no"])
    finally:
        server.stop()


def test_make_teacher_rejects_bad_specs():
    with pytest.raises(TypeError, match="teacher spec"):
        make_teacher("")
    with pytest.raises(TypeError, match="unexpected keyword argument 'modle'"):
        make_teacher("http://127.0.0.1:9/v1", modle="x")
    with pytest.raises(ValueError, match="concurrency"):
        make_teacher("http://127.0.0.1:9/v1", model="x", concurrency=0)

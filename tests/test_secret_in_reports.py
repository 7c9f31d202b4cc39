"""The API key never reaches an executed notebook, its HTML report, its JSON or the teacher cache.

A real notebook run through the runner talks to a real OpenAI-compatible server on loopback
that requires the key; afterwards every file the run produced is searched for it.
"""

import os

import pytest

from kdlib.lab import runner
from kdlib.teachers.openai_server import OpenAIServer
from kdlib.teachers.teacher_local import LocalTeacher
from tests.test_runner import make_notebook

pytestmark = pytest.mark.slow
SECRET = "sk-kdlib-nb-" + os.urandom(8).hex()


def test_key_is_absent_from_every_report_and_the_cache(tmp_path, monkeypatch):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = LocalTeacher(batch_size=2, cache=False, progress=False)
        monkeypatch.setenv("KDLIB_NB_TEST_KEY", SECRET)
        with OpenAIServer(local, port=0, api_key_env="KDLIB_NB_TEST_KEY") as server:
            nbs, profiles, out = tmp_path / "nbs", tmp_path / "profiles", tmp_path / "reports"
            nbs.mkdir(), profiles.mkdir()
            (profiles / "t.yaml").write_text("parameters: {}\n")
            cache = tmp_path / "cache.sqlite"
            make_notebook(nbs / "01_remote.ipynb", f'url: str = "{server.url}"  # endpoint',
                          "from kdlib.teachers.teacher import make_teacher\nfrom kdlib.teachers.api import user\nfrom kdlib.lab.emit import emit\n"
                          f"t = make_teacher(url, api_key_env='KDLIB_NB_TEST_KEY', cache_path={str(cache)!r})\n"
                          "print(t)\nouts = t.generate([user('Say hi')], max_new_tokens=4)\n"
                          "print(outs, t.ledger.summary())\nt.ledger.frame()\n"
                          "emit('teacher_tokens', t.tokens_spent())")
            recs = runner.run_all("t", None, {}, out, write_record=True, folder=nbs, profiles_dir=profiles)
    finally:
        torch.set_num_threads(threads)
    assert recs[0]["status"] == "ok", recs[0]["error"]
    assert recs[0]["metrics"][0]["value"] > 0  # the call really went through the authenticated server
    produced = [p for p in out.rglob("*") if p.is_file()] + [p for p in tmp_path.glob("cache.sqlite*")]
    assert {p.suffix for p in produced} >= {".ipynb", ".html", ".json", ".sqlite"}
    for path in produced:
        assert SECRET.encode() not in path.read_bytes(), f"the key leaked into {path}"

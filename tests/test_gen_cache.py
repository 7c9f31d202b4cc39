"""The SQLite teacher cache: keys, round trips, insert-or-ignore, several processes on one file."""

import multiprocessing as mp
import sqlite3

import pytest

from kdlib.teachers.gen_cache import Entry, GenCache, NullCache, make_key, open_cache


def test_key_is_canonical_and_sensitive():
    a = make_key(model="m", params={"top_p": 1.0, "temperature": 0.5}, prompt=[{"role": "user", "content": "x"}])
    b = make_key(prompt=[{"content": "x", "role": "user"}], params={"temperature": 0.5, "top_p": 1.0}, model="m")
    assert a == b  # dict order does not matter
    assert make_key(stop=("a",)) == make_key(stop=["a"])
    assert make_key(model="m", seed=1) != make_key(model="m", seed=2)
    assert make_key(model="m", sample=0) != make_key(model="m", sample=None)


def test_round_trip_and_first_write_wins(tmp_path):
    cache = GenCache(tmp_path / "c.sqlite")
    first = Entry("generate", "héllo", 5, 3, "stop", {"note": 1})
    cache.put_many({"k1": first})
    cache.put_many({"k1": Entry("generate", "other", 1, 1, "length")})  # ignored, not overwritten
    got = cache.get_many(["k1", "missing"])
    assert got == {"k1": first}
    assert len(cache) == 1


def test_wal_mode_and_lookup_in_slices(tmp_path):
    cache = GenCache(tmp_path / "c.sqlite")
    cache.put_many({f"k{i}": Entry("score", None, i, 0, None, {"token_logprobs": [-1.0]}) for i in range(1200)})
    assert len(cache.get_many([f"k{i}" for i in range(1300)])) == 1200  # > SQLite's bound-parameter cap
    mode = sqlite3.connect(tmp_path / "c.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def _writer(path: str, worker: int, rows: int) -> None:
    cache = GenCache(path)
    for start in range(0, rows, 10):
        # Both workers write the shared keys "s<i>" and their own keys "w<worker>-<i>".
        batch = {f"s{i}": Entry("generate", f"shared {i}", 1, 1, "stop") for i in range(start, start + 10)}
        batch.update({f"w{worker}-{i}": Entry("generate", "own", 1, 1, "stop") for i in range(start, start + 10)})
        cache.put_many(batch)


def test_concurrent_processes_share_one_file(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    GenCache(path).put_many({"init": Entry("generate", "", 0, 0, "stop")})  # create the schema once
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 200)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(GenCache(path)) == 1 + 200 + 3 * 200


def test_null_cache_and_open_cache(tmp_path, monkeypatch):
    null = open_cache(False)
    assert isinstance(null, NullCache)
    null.put_many({"k": Entry("generate", "x", 1, 1)})
    assert null.get_many(["k"]) == {}
    assert open_cache(True, tmp_path / "x.sqlite").path == tmp_path / "x.sqlite"
    with pytest.raises(ValueError, match="drop one"):
        open_cache(False, tmp_path / "x.sqlite")
    monkeypatch.setenv("KDLIB_CACHE_DIR", str(tmp_path / "home"))
    assert open_cache().path == tmp_path / "home" / "teacher_cache.sqlite"


def test_failed_batch_leaves_nothing(tmp_path):
    cache = GenCache(tmp_path / "c.sqlite")
    with pytest.raises(sqlite3.ProgrammingError):  # the second row cannot be bound after the first was written
        cache.put_many({"ok": Entry("generate", "x", 1, 1), "bad": Entry("generate", ["not text"], 1, 1)})
    assert len(cache) == 0

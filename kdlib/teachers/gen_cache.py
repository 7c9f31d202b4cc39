"""Persistent cache of teacher outputs: one SQLite file, safe for concurrent workers.

Why SQLite in WAL mode: readers never block the writer, several processes can
share one file (a notebook and a background job, or N data-parallel workers), and
every committed batch survives a `kill -9`. Rows are written with INSERT OR IGNORE:
two workers that computed the same row wrote the same deterministic value, so the
first one wins and nothing is ever overwritten.

Keys are sha256 hashes of a canonical JSON of everything that determines the output
(backend, model, revision, prompt, every parameter, seed, sample index). API keys
are never part of a key or a value.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    text TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    finish_reason TEXT,
    extra TEXT NOT NULL,
    created REAL NOT NULL
)
"""
_BATCH = 500  # SQLite caps bound parameters per statement; look keys up in slices


def make_key(**parts) -> str:
    """Stable hash of keyword parts: canonical JSON, so dict order and tuples vs lists do not matter."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Entry:
    """One cached result: a completion (`text`) or a score (`extra['token_logprobs']`)."""
    kind: str
    text: str | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None
    extra: dict = field(default_factory=dict)


class GenCache:
    """Key -> Entry store in one SQLite file (WAL, busy timeout, insert-or-ignore)."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 60.0):
        self.path = Path(path).expanduser()
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()  # sqlite3 connections must stay in their thread

    def __repr__(self) -> str:
        return f"GenCache({str(self.path)!r})"

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        # A forked child must not reuse its parent's connection: reopen per process.
        if conn is None or self._local.pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable against process kill
            conn.execute(_SCHEMA)
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def get_many(self, keys: list[str]) -> dict[str, Entry]:
        """Entries for the keys that are present (absent keys are simply missing)."""
        found: dict[str, Entry] = {}
        unique = list(dict.fromkeys(keys))
        conn = self._conn()
        for start in range(0, len(unique), _BATCH):
            chunk = unique[start:start + _BATCH]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                "SELECT key, kind, text, prompt_tokens, completion_tokens, finish_reason, extra "
                f"FROM entries WHERE key IN ({marks})", chunk)
            for key, kind, text, ptok, ctok, finish, extra in rows:
                found[key] = Entry(kind, text, ptok, ctok, finish, json.loads(extra))
        return found

    def put_many(self, items: dict[str, Entry]) -> None:
        """Write a batch in one transaction: it is either wholly in the file or not at all."""
        if not items:
            return
        now = time.time()
        rows = [(k, e.kind, e.text, e.prompt_tokens, e.completion_tokens, e.finish_reason,
                 json.dumps(e.extra, sort_keys=True), now) for k, e in items.items()]
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR IGNORE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None


class NullCache:
    """Stand-in when caching is disabled (`cache=False`): remembers nothing."""

    path = None

    def __repr__(self) -> str:
        return "NullCache()"

    def get_many(self, keys: list[str]) -> dict[str, Entry]:
        return {}

    def put_many(self, items: dict[str, Entry]) -> None:
        pass

    def __len__(self) -> int:
        return 0

    def close(self) -> None:
        pass


def open_cache(cache: bool | str | Path | GenCache | NullCache = True,
               cache_path: str | Path | None = None) -> GenCache | NullCache:
    """The cache a teacher uses: default file in the user cache, a given path, or none."""
    if isinstance(cache, GenCache | NullCache):
        return cache
    if cache is False:
        if cache_path is not None:
            raise ValueError("cache=False disables the cache, yet cache_path was given: drop one of them")
        return NullCache()
    if cache is not True and not isinstance(cache, str | Path):
        raise TypeError(f"cache must be True, False, a path or a GenCache, got {cache!r}")
    if isinstance(cache, str | Path):
        cache_path = cache
    if cache_path is None:
        from kdlib.lab.paths import cache_dir

        cache_path = cache_dir() / "teacher_cache.sqlite"
    return GenCache(cache_path)

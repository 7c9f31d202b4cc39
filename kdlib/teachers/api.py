"""The teacher/annotator interface: one API that the local and HTTP backends implement, with a cache and a ledger.

    teacher = make_teacher()                                   # local SmolLM2 (HF id or path)
    teacher = make_teacher("http://localhost:8000/v1", model="Qwen/Qwen2.5-7B-Instruct")
    outs = teacher.generate([user("Say hi")], max_new_tokens=16, temperature=0.7, n=2, seed=1)
    scores = teacher.score(user("Is 'great film' positive?"), ["yes", "no"])
    teacher.tokens_spent(), teacher.ledger.summary()

Prompts are plain strings (completion) or chat conversations (a list of
{"role", "content"} dicts; the chat template is applied). `generate` returns a
flat list of `Completion`s, prompt-major: prompt i, sample j sits at i * n + j.

Determinism, which makes caching and kill-and-resume exact: sample j of a prompt
is drawn with a seed derived from (seed, prompt, j), never from its position in
a batch. Batches are committed one by one in plan order, so after a kill the
committed rows are a prefix of the plan; the plan of the missing rows (a stable
sort of a subset) is then exactly the rest of the original plan, and a restarted
run computes the very batches an uninterrupted run would have.
"""

from __future__ import annotations

import copy
import difflib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields

from kdlib.teachers.gen_cache import Entry, make_key, open_cache
from kdlib.teachers.ledger import Ledger

Prompt = str | list[dict]
FEATURES = ("logits", "score", "grammar")
_FLOAT = (int, float)


def user(text: str, system: str | None = None) -> list[dict]:
    """A one-turn chat conversation (optionally with a system message)."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    return messages + [{"role": "user", "content": text}]


@dataclass(frozen=True)
class GenParams:
    """Generation parameters; field names match `kdlib.teachers.sampling.SamplingParams` plus text `stop`."""
    max_new_tokens: int = 64
    temperature: float = 0.0      # 0 => greedy
    top_p: float = 1.0
    top_k: int = 0                # 0 => off
    min_p: float = 0.0            # 0 => off
    typical_p: float = 1.0        # locally typical sampling; 1 => off
    adaptive_temperature: float = 0.0  # entropy exponent (kdlib.teachers.sampling.row_temperatures); 0 => off
    contrastive: float = 0.0      # contrastive decoding strength beta (kdlib.teachers.contrastive); 0 => off
    contrastive_alpha: float = 0.1  # plausibility: keep tokens with p_expert >= alpha * max p_expert
    stop: tuple[str, ...] = ()    # output is cut before the first occurrence of any of these strings
    stop_token_ids: tuple[int, ...] = ()
    grammar: str = ""             # structured output: a JSON schema (dict) or `kdlib.teachers.structured` spec; "" => free

    def __post_init__(self):
        if isinstance(self.grammar, dict):
            from kdlib.teachers.structured import json_schema

            object.__setattr__(self, "grammar", json_schema(self.grammar))
        if not isinstance(self.grammar, str):
            raise TypeError(f"GenParams.grammar must be a JSON schema (dict) or a kdlib.teachers.structured spec, got "
                            f"{type(self.grammar).__name__}")
        if self.grammar:
            from kdlib.teachers.structured import check_spec

            check_spec(self.grammar)
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        for name in ("stop", "stop_token_ids"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        _check_int("max_new_tokens", self.max_new_tokens, low=1)
        _check_int("top_k", self.top_k, low=0)
        _check_float("temperature", self.temperature, 0.0, None)
        _check_float("top_p", self.top_p, 0.0, 1.0, open_low=True)
        _check_float("min_p", self.min_p, 0.0, 1.0)
        _check_float("typical_p", self.typical_p, 0.0, 1.0, open_low=True)
        _check_float("adaptive_temperature", self.adaptive_temperature, -4.0, 4.0)
        _check_float("contrastive", self.contrastive, 0.0, None)
        _check_float("contrastive_alpha", self.contrastive_alpha, 0.0, 1.0)
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"GenParams.stop must be a string or a list of non-empty strings, got {self.stop!r}")
        if not isinstance(self.stop_token_ids, tuple):
            raise ValueError(f"GenParams.stop_token_ids must be a list of ints, got {self.stop_token_ids!r}")
        for tid in self.stop_token_ids:
            _check_int("stop_token_ids[]", tid, low=0)

    @property
    def greedy(self) -> bool:
        # Contrastive decoding with temperature 0 is greedy on the contrastive scores: still deterministic.
        return self.temperature == 0.0

    def key_fields(self) -> dict:
        """The fields that enter cache keys. Knobs added after the first release are left out while they
        sit at their 'off' value, so adding a knob never invalidates the rows already paid for."""
        out = asdict(self)
        for name, off in _LATER_KNOBS.items():
            if out[name] == off:
                del out[name]
        if self.contrastive == 0:
            out.pop("contrastive_alpha", None)
        return out

    @classmethod
    def build(cls, params: GenParams | dict | None = None, **overrides) -> GenParams:
        """Merge a base (GenParams or dict) with keyword overrides; unknown names are errors."""
        base = asdict(params) if isinstance(params, GenParams) else dict(params or {})
        base.update(overrides)
        known = [f.name for f in fields(cls)]
        for name in base:
            if name not in known:
                near = difflib.get_close_matches(name, known, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else f"; known: {', '.join(known)}"
                raise TypeError(f"unknown generation parameter {name!r}{hint}")
        return cls(**base)


_LATER_KNOBS = {"typical_p": 1.0, "adaptive_temperature": 0.0, "contrastive": 0.0, "grammar": ""}


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"GenParams.{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"GenParams.{name} must be >= {low}, got {value}")


def _check_float(name: str, value, low: float, high: float | None, open_low: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, _FLOAT):
        raise TypeError(f"GenParams.{name} must be a number, got {value!r} ({type(value).__name__})")
    too_low = value <= low if open_low else value < low
    if too_low or (high is not None and value > high):
        bounds = f"{'(' if open_low else '['}{low}, {high if high is not None else 'inf'}]"
        raise ValueError(f"GenParams.{name} must be in {bounds}, got {value}")


class Unsupported(ValueError):
    """A feature or decoding knob this backend (or the server behind it) cannot honour. Raised before any
    work where it can be known; notebooks catch it to skip a method with a sentence instead of crashing."""


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str            # 'stop' (EOS, stop token or stop string) or 'length'
    prompt_tokens: int
    completion_tokens: int        # tokens the model generated (before any stop-string cut)
    index: int                    # which prompt
    sample: int                   # which of the n samples
    cached: bool                  # served from the cache (no teacher call)


@dataclass(frozen=True)
class Score:
    """Log-likelihood of a candidate continuation given a prompt (natural log)."""
    sum_logprob: float
    mean_logprob: float
    n_tokens: int
    token_logprobs: tuple[float, ...]
    cached: bool


@dataclass(frozen=True)
class Request:
    """One row of work: sample `sample` of prompt `index` (generate), or candidate `sample` (score)."""
    index: int
    sample: int
    prompt: Prompt
    key: str
    seed: int = 0
    candidate: str | None = None
    grammar: str = ""              # the row's grammar spec (the call's, or its prompt's own); "" = free


def check_prompt(prompt, where: str) -> Prompt:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, dict):
        raise TypeError(f"{where} is a single message dict: pass a list of conversations, e.g. [messages]")
    if isinstance(prompt, list | tuple) and prompt and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in prompt):
        return [dict(m) for m in prompt]
    raise TypeError(f"{where} must be a string or a non-empty list of {{'role': str, 'content': str}} "
                    f"messages, got {str(prompt)[:80]!r}")


def check_prompts(prompts) -> list[Prompt]:
    if isinstance(prompts, str) or (isinstance(prompts, list | tuple) and prompts and isinstance(prompts[0], dict)):
        raise TypeError("prompts must be a list of prompts; wrap a single prompt or conversation in a list")
    return [check_prompt(p, f"prompts[{i}]") for i, p in enumerate(prompts)]


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Text before the earliest stop string, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[:min(cuts)], True) if cuts else (text, False)


class Teacher:
    """Front of every backend: validation, seeds, cache, ledger. Backends implement the `_` hooks."""
    backend = "base"

    def __init__(self, model: str, revision: str = "", *, cache=True, cache_path=None,
                 ledger: Ledger | None = None, prices: dict | None = None, progress: bool = True):
        self.model, self.revision = model, revision or ""
        self.cache = open_cache(cache, cache_path)
        self.ledger = ledger if ledger is not None else Ledger(prices=prices or {})
        if ledger is not None and prices:
            raise ValueError("pass prices to the shared Ledger, not to the teacher")
        self.progress = progress

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, revision={self.revision!r}, cache={self.cache!r})"

    # --- hooks for backends -------------------------------------------------------------------
    def identity(self) -> dict:
        """Everything about the backend that changes outputs; part of every cache key."""
        return {"backend": self.backend, "model": self.model, "revision": self.revision}

    def _plan(self, requests: list[Request]) -> list[list[Request]]:
        raise NotImplementedError

    def _check_supported(self, params: GenParams) -> None:
        """Raise a clear error for decoding knobs this backend cannot honour (before any work)."""

    def _run_generate(self, batch: list[Request], params: GenParams) -> list[Entry]:
        raise NotImplementedError

    def _run_score(self, batch: list[Request]) -> list[Entry]:
        raise NotImplementedError

    def unsupported(self, feature: str) -> str | None:
        """None if this backend can do `feature`, else one sentence saying why not (for the report).

        Features: "logits" (the next-token distribution: contrastive decoding, entropy-adaptive
        temperature, calibrated scoring from logits, drafts and speculation, which also need the weights),
        "score" (log-likelihood of a given continuation: `score`, `score_many`), "grammar" (constraining
        answers to a Lark grammar; JSON schemas are sent to servers as response_format).
        """
        if feature not in FEATURES:
            raise ValueError(f"unknown teacher feature {feature!r}; known: {', '.join(FEATURES)}")
        return None

    # --- public API ---------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt], params: GenParams | dict | None = None, *,
                 n: int = 1, seed: int = 0, grammars: Sequence[str] | None = None, **overrides) -> list[Completion]:
        """n samples per prompt, prompt-major (prompt i, sample j at i * n + j).

        `grammars` (one `kdlib.teachers.structured` spec per prompt) constrains each prompt's answers to its own
        grammar, e.g. a copy of that prompt's sentence with entity marks; it replaces `params.grammar`."""
        params = GenParams.build(params, **overrides)
        _check_int("n", n, low=1)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        prompts = check_prompts(prompts)
        if grammars is not None and (isinstance(grammars, str) or len(grammars) != len(prompts)):
            raise ValueError(f"grammars must be a list with one spec per prompt ({len(prompts)}), got {grammars!r:.80}")
        row_params = [GenParams.build(params, grammar=g) for g in grammars] if grammars is not None else [params]
        for distinct in {q.grammar: q for q in row_params}.values():
            self._check_supported(distinct)
        ident = self.identity()
        requests = []
        for i, prompt in enumerate(prompts):
            mine = row_params[i] if grammars is not None else params
            p = mine.key_fields()
            for j in range(n):
                # Greedy output does not depend on seed or sample index: share one row between them.
                s, jj = (None, None) if params.greedy else (seed, j)
                key = make_key(kind="generate", **ident, prompt=prompt, params=p, seed=s, sample=jj)
                # 31 bits: llama.cpp and others take 32-bit seeds; the prompt is in the hash anyway.
                row_seed = int(make_key(seed=s, prompt=prompt, sample=jj)[:8], 16) & 0x7FFFFFFF
                requests.append(Request(i, j, prompt, key, row_seed, grammar=mine.grammar))
        entries = self._serve("generate", requests, lambda batch: self._run_generate(batch, params))
        return [Completion(e.text, e.finish_reason, e.prompt_tokens, e.completion_tokens, r.index, r.sample,
                           cached) for r, (e, cached) in zip(requests, entries)]

    def texts(self, prompts: Sequence[Prompt], params: GenParams | dict | None = None, **kw) -> list[str]:
        """Just the texts of `generate`."""
        return [c.text for c in self.generate(prompts, params, **kw)]

    def score(self, prompt: Prompt, candidates: Sequence[str]) -> list[Score]:
        """Log-likelihood (sum and per-token mean) of each candidate continuing the prompt."""
        return self.score_many([prompt], [list(candidates)])[0]

    def score_many(self, prompts: Sequence[Prompt], candidates: Sequence[str] | Sequence[Sequence[str]]
                   ) -> list[list[Score]]:
        """Scores per prompt; `candidates` is one shared list of strings or one list per prompt."""
        prompts = check_prompts(prompts)
        per_prompt = _candidate_lists(candidates, len(prompts))
        ident, requests = self.identity(), []
        for i, (prompt, cands) in enumerate(zip(prompts, per_prompt)):
            for j, cand in enumerate(cands):
                key = make_key(kind="score", **ident, prompt=prompt, candidate=cand)
                requests.append(Request(i, j, prompt, key, candidate=cand))
        entries = self._serve("score", requests, self._run_score)
        out: list[list[Score]] = [[] for _ in prompts]
        for r, (e, cached) in zip(requests, entries):
            lps = tuple(e.extra["token_logprobs"])
            total = float(sum(lps))
            out[r.index].append(Score(total, total / max(len(lps), 1), len(lps), lps, cached))
        return out

    def tokens_spent(self) -> int:
        """Prompt + completion tokens this teacher really computed (cache hits are free)."""
        return self.ledger.tokens_spent()

    def with_cache(self, cache=True, cache_path=None, ledger: Ledger | None = None) -> Teacher:
        """The same backend (loaded weights, HTTP client) with another cache and its own ledger."""
        twin = copy.copy(self)
        twin.cache = open_cache(cache, cache_path)
        twin.ledger = ledger if ledger is not None else Ledger(prices=self.ledger.prices)
        return twin

    # --- the engine ---------------------------------------------------------------------------
    def _serve(self, kind: str, requests: list[Request], run: Callable[[list[Request]], list[Entry]]
               ) -> list[tuple[Entry, bool]]:
        """Cache lookup, batch plan, run the misses batch by batch (committing each), ledger."""
        start = time.monotonic()
        found = self.cache.get_many([r.key for r in requests])
        fresh: dict[str, Entry] = {}
        try:
            unique = list({r.key: r for r in requests if r.key not in found}.values())
            for batch in self._batches(unique, kind):
                todo = [r for r in batch if r.key not in found]
                late = self.cache.get_many([r.key for r in todo])  # a concurrent worker may have done them
                found.update(late)
                todo = [r for r in todo if r.key not in found]
                if not todo:
                    continue
                done = dict(zip((r.key for r in todo), run(todo)))
                self.cache.put_many(done)  # commit per batch: a kill loses at most this batch
                found.update(done)
                fresh.update(done)
        finally:
            self._record(kind, requests, found, fresh, time.monotonic() - start)
        return [(found[r.key], r.key not in fresh) for r in requests]

    def _batches(self, unique: list[Request], kind: str) -> Iterator[list[Request]]:
        if not unique:
            return iter(())
        plan = self._plan(unique)
        if self.progress and len(plan) > 1:
            from kdlib.lab.progress import track

            return track(plan, desc=f"teacher {kind} ({len(unique)} rows)")
        return iter(plan)

    def _record(self, kind: str, requests: list[Request], found: dict, fresh: dict, wall_s: float) -> None:
        hit_rows = [found[r.key] for r in requests if r.key in found and r.key not in fresh]
        spent = fresh.values()  # duplicates within a call ran once, so they count once
        self.ledger.record(
            kind=kind, backend=self.backend, model=self.model, requests=len(requests),
            hits=len(hit_rows), misses=len(fresh),
            spent=(sum(e.prompt_tokens for e in spent), sum(e.completion_tokens for e in spent)),
            cached=(sum(e.prompt_tokens for e in hit_rows), sum(e.completion_tokens for e in hit_rows)),
            wall_s=wall_s)


def _candidate_lists(candidates, n_prompts: int) -> list[list[str]]:
    if isinstance(candidates, str) or not isinstance(candidates, Sequence) or not candidates:
        raise TypeError("candidates must be a non-empty list of strings (or one such list per prompt)")
    if all(isinstance(c, str) for c in candidates):
        lists = [list(candidates)] * n_prompts
    elif len(candidates) == n_prompts:
        lists = [list(c) for c in candidates]
    else:
        raise TypeError(f"candidates: got {len(candidates)} lists for {n_prompts} prompts")
    for cands in lists:
        if not cands or not all(isinstance(c, str) and c for c in cands):
            raise TypeError(f"each candidate must be a non-empty string, got {cands!r}")
    return lists

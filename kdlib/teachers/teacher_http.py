"""OpenAI-compatible HTTP teacher: vLLM, llama.cpp server, Ollama, a hosted API or `kdlib.teachers.openai_server`.

Plain-text prompts go to `/v1/completions`, chat conversations to `/v1/chat/completions`.
Each sample is its own request (n=1) carrying the sample's derived seed, so every
sample is cached on its own and servers that honour `seed` (vLLM) are reproducible.

Reliability: a bounded thread pool; 429, 5xx, timeouts and connection errors are
retried with exponential backoff and full jitter (a Retry-After header wins when
longer); any other 4xx fails at once, since repeating a bad request cannot help.

Secrets: the API key is read from the environment variable named by `api_key_env`
when each request is built. It is never stored on the object, never part of a cache
key, and every error message passes through `redact`.
"""

from __future__ import annotations

import email.utils
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import httpx

from kdlib.lab.redact import redact, register_key_env
from kdlib.teachers.api import GenParams, Request, Teacher, Unsupported, cut_at_stop
from kdlib.teachers.gen_cache import Entry
from kdlib.teachers.structured import schema_of

# Sampling knobs outside the OpenAI protocol (vLLM, llama.cpp accept them), sent only when used: strict
# servers reject unknown fields.
_EXTRA_KNOBS = (("top_k", 0), ("min_p", 0.0), ("typical_p", 1.0), ("stop_token_ids", ()))
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 300.0


class TeacherHTTPError(RuntimeError):
    """A request the server refused for good (or kept failing after every retry)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(redact(message))
        self.status = status


def _public_url(url: str) -> str:
    """The URL without user:password@ or a query string: safe to print and to put in cache keys."""
    parts = urlsplit(url)
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def retry_after_s(header: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class HTTPTeacher(Teacher):
    backend = "http"

    def __init__(self, base_url: str, *, model: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, timeout_s: float = 120.0, max_retries: int = 6,
                 backoff_s: float = 1.0, max_backoff_s: float = 60.0, revision: str = "", **common):
        for name, value, low in (("concurrency", concurrency, 1), ("max_retries", max_retries, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        for name, value in (("timeout_s", timeout_s), ("backoff_s", backoff_s), ("max_backoff_s", max_backoff_s)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        register_key_env(api_key_env)
        self.base_url = _public_url(base_url)
        self._url_parts = urlsplit(base_url)  # requests keep any query string; messages show base_url
        self.api_key_env = api_key_env
        self.concurrency, self.max_retries = concurrency, max_retries
        self.backoff_s, self.max_backoff_s = float(backoff_s), float(max_backoff_s)
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)))
        self._jitter = random.Random()  # timing only: never touches outputs
        super().__init__(model or "", revision, **common)  # first, so misspelt keywords fail before any I/O
        self.model = model or self._only_model()
        self._response_format_ok = True         # until the server refuses response_format

    def __repr__(self) -> str:
        return f"HTTPTeacher(url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def identity(self) -> dict:
        # Two servers can serve different weights under one name (llama.cpp says "default"): keep the URL.
        return {**super().identity(), "base_url": self.base_url}

    def close(self) -> None:
        self._client.close()

    # --- transport -----------------------------------------------------------------------------
    def _headers(self) -> dict:
        key = os.environ.get(self.api_key_env, "")
        return {"Authorization": f"Bearer {key}"} if key else {}

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        """One API call with retries; returns the JSON body or raises TeacherHTTPError."""
        parts, last = self._url_parts, ""
        url = urlunsplit(parts._replace(path=parts.path.rstrip("/") + path))
        for attempt in range(self.max_retries + 1):
            wait = None
            try:
                resp = self._client.request(method, url, json=body, headers=self._headers())
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code < 400:
                    return resp.json()
                last = f"HTTP {resp.status_code}: {resp.text[:500]}"
                if resp.status_code not in RETRY_STATUS:
                    raise TeacherHTTPError(self._failure(method, path, last, attempt), resp.status_code)
                wait = retry_after_s(resp.headers.get("retry-after"))
            if attempt < self.max_retries:
                time.sleep(self._backoff(attempt, wait))
        raise TeacherHTTPError(self._failure(method, path, last, self.max_retries))

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        jittered = self._jitter.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** attempt))
        return max(jittered, min(retry_after, MAX_RETRY_AFTER_S)) if retry_after is not None else jittered

    def _failure(self, method: str, path: str, last: str, retries: int) -> str:
        hint = ""
        if last.startswith(("HTTP 401", "HTTP 403")):
            hint = f" Check the API key in the environment variable {self.api_key_env}."
        after = f" after {retries} retries" if retries else ""
        return f"{method} {self.base_url}{path} failed{after}: {last}.{hint}"

    def _only_model(self) -> str:
        ids = [m.get("id") for m in self.request("GET", "/models").get("data", [])]
        if len(ids) != 1:
            raise ValueError(f"{self.base_url} serves {ids}: pick one with model=...")
        return ids[0]

    # --- generation ----------------------------------------------------------------------------
    def _plan(self, requests: list[Request]) -> list[list[Request]]:
        size = self.concurrency * 4  # small enough to commit often, big enough to keep the pool busy
        return [requests[i:i + size] for i in range(0, len(requests), size)]

    def _parallel(self, fn, batch: list[Request]) -> list:
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(batch)))
        try:
            return list(pool.map(fn, batch))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # a permanent error stops the queued rest

    def unsupported(self, feature: str) -> str | None:
        super().unsupported(feature)
        if feature == "logits":
            return (f"the teacher is an OpenAI-compatible endpoint ({self.base_url}), which returns chosen tokens, "
                    f"not the model's logits or weights")
        if feature == "grammar":
            return ("an OpenAI-compatible endpoint takes JSON schemas (response_format), not Lark grammars: NER "
                    "markup requests go out as free text and are parsed as such")
        # feature == "score": `score` of plain text works where the server echoes prompt logprobs (vLLM,
        # kdlib.teachers.openai_server), but kdlib's scoring methods score chat prompts, and the chat template that
        # turns them into text lives on the server, out of the client's sight.
        return (f"scoring needs the log-probabilities of given answers after a chat prompt; an OpenAI-compatible "
                f"endpoint ({self.base_url}) applies its chat template out of the client's sight and returns "
                f"log-probabilities only of the tokens it chose")

    def _check_supported(self, params: GenParams) -> None:
        # The OpenAI protocol carries token choices only: these knobs need the logits on our side.
        for name, off in (("adaptive_temperature", 0.0), ("contrastive", 0.0)):
            if getattr(params, name) != off:
                raise Unsupported(f"{name} needs the model's logits, which an OpenAI-compatible endpoint does not "
                                  f"expose: use a local teacher (HF id or path) for it, or set {name}={off}")

    def _run_generate(self, batch: list[Request], params: GenParams) -> list[Entry]:
        return self._parallel(lambda r: self._one_completion(r, params), batch)

    def _one_completion(self, r: Request, params: GenParams) -> Entry:
        body = {"model": self.model, "max_tokens": params.max_new_tokens, "temperature": params.temperature,
                "top_p": params.top_p, "n": 1, "seed": r.seed}
        if params.stop:
            body["stop"] = list(params.stop)
        extras = [name for name, off in _EXTRA_KNOBS if getattr(params, name) != off]
        for name in extras:
            body[name] = list(getattr(params, name)) if name == "stop_token_ids" else getattr(params, name)
        try:
            return self._completion_entry(r, params, body)
        except TeacherHTTPError as exc:
            refused = [name for name in extras if name in str(exc)]
            if exc.status is None or exc.status >= 500 or not refused:
                raise
            raise Unsupported(f"the server at {self.base_url} refuses the sampling knob(s) {refused} "
                              f"(not part of the OpenAI protocol; vLLM and llama.cpp accept them): {exc}") from None

    def _completion_entry(self, r: Request, params: GenParams, body: dict) -> Entry:
        chat = not isinstance(r.prompt, str)
        body["messages" if chat else "prompt"] = r.prompt
        path = "/chat/completions" if chat else "/completions"
        # A JSON schema goes out as response_format; a Lark grammar (NER markup) cannot be expressed in the
        # OpenAI protocol, so that request is free text, read by the same parser as any free answer.
        schema = schema_of(r.grammar)
        if schema is not None and self._response_format_ok:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "answer", "schema": schema, "strict": True}}
            try:
                data = self.request("POST", path, body)
            except TeacherHTTPError as exc:
                if exc.status is None or exc.status >= 500 or "response_format" not in str(exc):
                    raise
                # The server refuses structured outputs: free text from now on; the parser reads it.
                self._response_format_ok = False
                del body["response_format"]
                data = self.request("POST", path, body)
        else:
            data = self.request("POST", path, body)
        choice = (data.get("choices") or [{}])[0]
        text = (choice.get("message") or {}).get("content") if chat else choice.get("text")
        text, stopped = cut_at_stop(text or "", params.stop)  # servers differ on including stop strings
        usage = data.get("usage") or {}
        finish = "stop" if stopped else choice.get("finish_reason") or "stop"
        return Entry("generate", text, int(usage.get("prompt_tokens", 0)),
                     int(usage.get("completion_tokens", 0)), finish)

    # --- scoring -------------------------------------------------------------------------------
    def _run_score(self, batch: list[Request]) -> list[Entry]:
        if any(not isinstance(r.prompt, str) for r in batch):
            raise Unsupported(
                "score over HTTP needs plain-text prompts: /v1/completions scores text, and the server's chat "
                "template is not visible to the client. Pass the templated prompt text instead of messages.")
        return self._parallel(self._one_score, batch)

    def _one_score(self, r: Request) -> Entry:
        text = r.prompt + r.candidate
        body = {"model": self.model, "prompt": text, "echo": True, "logprobs": 1, "max_tokens": 0,
                "temperature": 0.0}
        try:
            data = self.request("POST", "/completions", body)
        except TeacherHTTPError as exc:
            if exc.status is None or exc.status >= 500:
                raise
            try:  # some servers refuse max_tokens=0 but echo fine with one generated token
                data = self.request("POST", "/completions", {**body, "max_tokens": 1})
            except TeacherHTTPError as again:
                raise Unsupported(self._no_scoring(str(again))) from None
        lps = self._candidate_logprobs(data, len(r.prompt), len(text))
        usage = data.get("usage") or {}
        return Entry("score", None, int(usage.get("prompt_tokens", len(lps))), 0, None, {"token_logprobs": lps})

    def _candidate_logprobs(self, data: dict, prompt_len: int, text_len: int) -> list[float]:
        logprobs = ((data.get("choices") or [{}])[0]).get("logprobs") or {}
        offsets, values = logprobs.get("text_offset"), logprobs.get("token_logprobs")
        if not offsets or values is None:
            raise Unsupported(self._no_scoring("the response has no echoed prompt logprobs"))
        ends = list(offsets[1:]) + [text_len]
        # Candidate tokens end after the prompt; tokens at or past the text's end were generated.
        return [float(v) for start, end, v in zip(offsets, ends, values)
                if end > prompt_len and start < text_len and v is not None]

    def _no_scoring(self, why: str) -> str:
        return redact(f"{self.base_url} cannot score: scoring needs /v1/completions with echo=True, logprobs=1 "
                      f"and max_tokens=0 (vLLM and kdlib.teachers.openai_server support it) ({why})")

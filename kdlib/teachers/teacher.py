"""The teacher a spec names: `make_teacher` picks the local engine for an HF id or a folder and the HTTP client
for an OpenAI-compatible URL, and passes each only the options it understands.

    teacher = make_teacher()                                   # local SmolLM2 (HF id or path)
    teacher = make_teacher("http://localhost:8000/v1", model="Qwen/Qwen2.5-7B-Instruct")

The interface both return is `kdlib.teachers.api.Teacher`.
"""

from __future__ import annotations

from kdlib.lab.redact import redact
from kdlib.registry.models import TEACHER_ID
from kdlib.teachers.api import Teacher

# How a local model runs (weights, device, batching, the contrastive amateur's layers). A server runs its
# own model, so a URL spec drops these: one call works for every spec, and a notebook need not branch.
LOCAL_OPTIONS = frozenset({"device", "dtype", "batch_size", "commit_every", "trust_remote_code", "amateur"})
# How an endpoint is reached. A local spec drops them, except a served model name, which would be a mistake.
HTTP_OPTIONS = frozenset({"model", "api_key_env", "concurrency", "timeout_s", "max_retries", "backoff_s",
                          "max_backoff_s"})


def is_remote(spec: str) -> bool:
    """True for an http(s)://.../v1 URL (an OpenAI-compatible server), False for an HF id or a folder."""
    return isinstance(spec, str) and spec.startswith(("http://", "https://"))


def make_teacher(spec: str = TEACHER_ID, **kw) -> Teacher:
    """A teacher from a spec: an HF id or local path (local backend) or an http(s)://.../v1 URL.

    Local keywords: device, dtype, batch_size, commit_every, trust_remote_code, amateur (`LOCAL_OPTIONS`;
    dropped for a URL). HTTP keywords: model (the served model's name; None or "" = the only one the
    server lists), api_key_env (default "OPENAI_API_KEY"; the key itself is never a parameter),
    concurrency, timeout_s, max_retries (`HTTP_OPTIONS`; dropped for a local spec). Both: revision, cache
    (False disables), cache_path, ledger, prices, progress. So every notebook makes its teacher with one
    call, whatever the user points it at; what a backend cannot do is asked with `Teacher.unsupported`.
    """
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"teacher spec must be a model id, a path or an http(s) URL, got {redact(spec)!r}")
    if is_remote(spec):
        from kdlib.teachers.teacher_http import HTTPTeacher

        kw = {k: v for k, v in kw.items() if k not in LOCAL_OPTIONS}
        kw["model"] = kw.get("model") or None
        return HTTPTeacher(spec, **kw)
    if kw.get("model"):
        raise ValueError(f"model={kw['model']!r} names the model served at a URL, but the teacher {spec!r} is "
                         "local: name the local model in the spec itself (or pass an http(s)://.../v1 URL)")
    from kdlib.teachers.teacher_local import LocalTeacher

    return LocalTeacher(spec, **{k: v for k, v in kw.items() if k not in HTTP_OPTIONS})


def timed_answer(teacher, prompt, max_new_tokens: int = 48) -> tuple[str, float]:
    """(greedy answer, completion tokens per second at batch 1) of one prompt, after a two-token warm-up that
    pays the one-off costs (loading, compilation). For a first look at a teacher, not a benchmark."""
    import time

    teacher.generate([prompt], max_new_tokens=2)
    start = time.perf_counter()
    out = teacher.generate([prompt], max_new_tokens=max_new_tokens)[0]
    return out.text, out.completion_tokens / (time.perf_counter() - start)

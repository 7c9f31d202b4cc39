"""A minimal OpenAI-protocol server over the local teacher backend (stdlib only).

    python -m kdlib.teachers.openai_server --model HuggingFaceTB/SmolLM2-135M-Instruct --port 8765

Serves GET /v1/models, POST /v1/completions (with echo + logprobs, for scoring) and
POST /v1/chat/completions, with structured outputs (response_format json_schema). No streaming.

Why it exists beside `transformers serve` (which the notebook tests run against): it can inject faults
(below) for the client's retry tests, and it echoes prompt logprobs and honours response_format, so the
client's scoring and structured-output paths are tested against a server that offers them (transformers
serve 5.23 ignores echo, logprobs and response_format). A bearer key is checked when --api-key-env
names a set environment variable (the key is never a command-line argument: those
show up in `ps`). Model calls are serialised: the model already uses every core,
and one request at a time keeps outputs independent of what else is in flight.

`--faults 429,500:retry-after=1,delay:3` makes the first POST requests fail in that
order (`delay:S` stalls S seconds and then drops the connection: a client timeout or a
connection error, depending on the client's timeout). The tests use it to exercise
client retries over real loopback HTTP.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kdlib.teachers.api import GenParams, check_prompt


@dataclass(frozen=True)
class Fault:
    status: int | None = None       # HTTP status to answer with, or None for "answer normally"
    delay_s: float = 0.0            # with no status: stall this long, then drop the connection unanswered
    retry_after: float | None = None


def parse_faults(spec: str | list | tuple | None) -> list[Fault]:
    """'429,500:retry-after=1,delay:2.5' -> faults for the first POST requests, in order."""
    if not spec:
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    faults = []
    for item in items:
        if isinstance(item, Fault):
            faults.append(item)
        elif str(item).startswith("delay:"):
            faults.append(Fault(delay_s=float(str(item)[6:])))
        else:
            status, _, opt = str(item).partition(":")
            after = float(opt.split("=", 1)[1]) if opt.startswith("retry-after=") else None
            if opt and after is None:
                raise ValueError(f"unknown fault option {opt!r} in {item!r}")
            faults.append(Fault(status=int(status), retry_after=after))
    return faults


class APIError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _ints(body: dict) -> tuple[int, int, int]:
    """(n, seed, logprobs) of a request; absent or null fields take OpenAI's defaults."""
    try:
        n, seed, top = int(body.get("n") or 1), int(body.get("seed") or 0), int(body.get("logprobs") or 0)
    except (TypeError, ValueError):
        raise APIError(400, "n, seed and logprobs must be integers") from None
    if not 1 <= n <= 16 or not 0 <= top <= 20:
        raise APIError(400, f"n must be in [1, 16] and logprobs in [0, 20], got n={n}, logprobs={top}")
    return n, seed, top


def _response_schema(response_format) -> dict | str:
    """OpenAI structured outputs: {"type": "json_schema", "json_schema": {"schema": ...}} -> the schema."""
    if response_format is None or response_format.get("type") == "text":
        return ""
    if response_format.get("type") != "json_schema" or not isinstance(response_format.get("json_schema"), dict):
        raise APIError(400, f"response_format: only json_schema is supported, got {response_format!r}")
    return response_format["json_schema"].get("schema") or ""


def _gen_params(body: dict, default_max: int) -> GenParams:
    stop = body.get("stop") or ()
    try:
        return GenParams(max_new_tokens=body.get("max_tokens") or default_max,
                         temperature=float(body.get("temperature", 1.0)), top_p=float(body.get("top_p", 1.0)),
                         top_k=max(0, int(body.get("top_k", 0))), min_p=float(body.get("min_p", 0.0)),
                         typical_p=float(body.get("typical_p", 1.0)),
                         stop=(stop,) if isinstance(stop, str) else tuple(stop),
                         stop_token_ids=tuple(body.get("stop_token_ids") or ()),
                         grammar=_response_schema(body.get("response_format")))
    except (TypeError, ValueError) as exc:
        raise APIError(400, str(exc)) from None


class OpenAIServer:
    """Serve a LocalTeacher; `with OpenAIServer(teacher, port=0) as srv: srv.url` runs it in a thread."""

    def __init__(self, teacher, host: str = "127.0.0.1", port: int = 0, api_key_env: str | None = None,
                 faults=None, served_name: str | None = None):
        self.teacher, self.api_key_env = teacher, api_key_env
        self.served_name = served_name or teacher.model
        self.faults, self._fault_lock = parse_faults(faults), threading.Lock()
        self.model_lock = threading.Lock()
        self.stats = {"requests": 0, "faults": 0, "generated_rows": 0, "scored_texts": 0}
        self._ids = itertools.count(1)
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        self.stopped = False

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> OpenAIServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        with self.model_lock:  # let a model call in flight finish: torch aborts if the process exits mid-call
            self.stopped = True

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def next_fault(self) -> Fault | None:
        with self._fault_lock:
            self.stats["requests"] += 1
            if self.faults:
                self.stats["faults"] += 1
                return self.faults.pop(0)
        return None

    @contextlib.contextmanager
    def _model(self):
        """Hold the model (one call at a time); refuse once the server is stopping."""
        with self.model_lock:
            if self.stopped:
                raise APIError(503, "server is shutting down")
            yield

    def authorised(self, header: str | None) -> bool:
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        return not key or header == f"Bearer {key}"

    # --- endpoints -----------------------------------------------------------------------------
    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.served_name, "object": "model", "owned_by": "kdlib"}]}

    def chat(self, body: dict) -> dict:
        if body.get("logprobs") or body.get("stream"):
            raise APIError(400, "this server supports neither logprobs nor streaming on chat completions")
        messages = self._prompt(body.get("messages"), "messages")
        params, (n, seed, _) = _gen_params(body, 64), _ints(body)
        with self._model():
            outs = self.teacher.generate([messages], params, n=n, seed=seed)
            self.stats["generated_rows"] += n
        choices = [{"index": k, "message": {"role": "assistant", "content": o.text},
                    "finish_reason": o.finish_reason} for k, o in enumerate(outs)]
        return self._reply("chat.completion", choices, outs[0].prompt_tokens, sum(o.completion_tokens for o in outs))

    def completions(self, body: dict) -> dict:
        if body.get("stream"):
            raise APIError(400, "streaming is not supported")
        prompt = self._prompt(body.get("prompt"), "prompt")
        (n, seed, top), echo = _ints(body), bool(body.get("echo"))
        with self._model():
            if body.get("max_tokens", 16) == 0:  # echo-only request: score the prompt, generate nothing
                outs, texts = [], [""] * n
            else:
                outs = self.teacher.generate([prompt], _gen_params(body, 16), n=n, seed=seed)
                texts = [o.text for o in outs]
                self.stats["generated_rows"] += n
            logprobs = [self._logprobs(prompt, t, echo, top) if body.get("logprobs") is not None else None
                        for t in texts]
        prompt_tokens = outs[0].prompt_tokens if outs else len(self.teacher.encode(prompt))
        choices = [{"index": k, "text": (prompt if echo else "") + t, "logprobs": lp,
                    "finish_reason": outs[k].finish_reason if outs else "length"}
                   for k, (t, lp) in enumerate(zip(texts, logprobs))]
        return self._reply("text_completion", choices, prompt_tokens, sum(o.completion_tokens for o in outs))

    def _logprobs(self, prompt: str, completion: str, echo: bool, top: int) -> dict:
        toks = self.teacher.token_logprobs([prompt + completion], top=top)[0]
        self.stats["scored_texts"] += 1
        if not echo:
            toks = [t for t in toks if t.end > len(prompt)]
        return {"tokens": [t.token for t in toks], "token_logprobs": [t.logprob for t in toks],
                "top_logprobs": [dict(t.top) if t.logprob is not None else None for t in toks],
                "text_offset": [t.offset for t in toks]}

    def _prompt(self, value, field: str):
        if isinstance(value, list) and field == "prompt" and len(value) == 1:
            value = value[0]  # OpenAI allows a list of prompts; one is all this server takes
        try:
            return check_prompt(value, field)
        except TypeError as exc:
            raise APIError(400, str(exc)) from None

    def _reply(self, obj: str, choices: list, prompt_tokens: int, completion_tokens: int) -> dict:
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        return {"id": f"kdlib-{next(self._ids)}", "object": obj, "created": int(time.time()),
                "model": self.served_name, "choices": choices, "usage": usage}


def _handler(server: OpenAIServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet: request lines would flood test output
            pass

        def do_GET(self):
            if not self._auth():
                return
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, server.models())
            else:
                self._send(404, _error(f"no route GET {self.path}"))

        def do_POST(self):
            length = int(self.headers.get("content-length", 0))
            raw = self.rfile.read(length) if length else b""
            fault = server.next_fault()
            if fault is not None and self._inject(fault):
                return
            if not self._auth():
                return
            routes = {"/v1/chat/completions": server.chat, "/v1/completions": server.completions}
            route = routes.get(self.path.rstrip("/"))
            if route is None:
                return self._send(404, _error(f"no route POST {self.path}"))
            try:
                self._send(200, route(json.loads(raw or b"{}")))
            except json.JSONDecodeError as exc:
                self._send(400, _error(f"request body is not JSON: {exc}"))
            except APIError as exc:
                self._send(exc.status, _error(str(exc)))
            except Exception as exc:  # a server answers 500 rather than dropping the connection
                self._send(500, _error(f"{type(exc).__name__}: {exc}"))

        def _inject(self, fault: Fault) -> bool:
            time.sleep(fault.delay_s)
            if fault.status is None:  # a stall: hang up without answering, as a dead upstream would
                self.close_connection = True
                return True
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            self._send(fault.status, _error(f"injected fault {fault.status}"), headers)
            return True

        def _auth(self) -> bool:
            if server.authorised(self.headers.get("authorization")):
                return True
            self._send(401, _error("invalid or missing API key", "invalid_api_key"))
            return False

        def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout): nothing to do
                pass

    return Handler


def _error(message: str, code: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "code": code}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m kdlib.teachers.openai_server")
    ap.add_argument("--model", default=None, help="HF id or local folder (default: the lab's teacher)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--api-key-env", default=None, help="env var holding the bearer key clients must send")
    ap.add_argument("--faults", default="", help="e.g. '429,500:retry-after=1,delay:3' for the first POSTs")
    ap.add_argument("--served-name", default=None, help="model id reported to clients")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args(argv)
    from kdlib.registry.models import TEACHER_ID
    from kdlib.teachers.teacher_local import LocalTeacher

    teacher = LocalTeacher(args.model or TEACHER_ID, device=args.device, dtype=args.dtype,
                           batch_size=args.batch_size, cache=False, progress=False)
    teacher.load()
    server = OpenAIServer(teacher, args.host, args.port, args.api_key_env, args.faults, args.served_name)
    print(f"serving {server.served_name} at {server.url}", file=sys.stderr, flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()


if __name__ == "__main__":
    main()

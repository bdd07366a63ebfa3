"""A stand-in LLM server with known timing, for tests: NOT a model, and not Ollama or vLLM.

Every generate request is answered with TOKENS tokens: the first FIRST_TOKEN_DELAY seconds after
the request got a slot, each next one INTER_TOKEN_DELAY seconds after the one before. At most
PARALLELISM requests are served at once; the others wait for a slot, first come first served, so
queueing shows in their time to first token. Both APIs stream:

- POST /v1/completions and /v1/chat/completions with "stream": true: server-sent events as vLLM and
  OpenAI send them (`data: {chunk}` lines, a blank line after each, `data: [DONE]` at the end); with
  "stream_options": {"include_usage": true} a last chunk with empty `choices` and `usage`
  (prompt_tokens = the prompt's words, completion_tokens = TOKENS); `--no-usage` leaves it out.
  Two habits of real servers, off by default: `--empty-first` streams a chunk without content as soon as the
  request has its slot (chat: `{"delta": {"role": "assistant", "content": ""}}`, as vLLM's first chunk; completions:
  `"text": ""`; Ollama: `"response": ""`), and `--empty-last` a chunk without content after the last token
  (`"finish_reason": "length"`, chat `"delta": {}`, as llama.cpp's server ends a stream). Neither is a token:
  the log's token times are those of the TOKENS chunks with text only.
- POST /api/generate with "stream" true (Ollama's default): NDJSON, one {"response": "tN ", "done": false}
  per token, then {"done": true, "prompt_eval_count", "eval_count", "load_duration", "prompt_eval_duration",
  "eval_duration", "total_duration"} (ns): load 0, prompt eval = FIRST_TOKEN_DELAY, eval = the rest.
- GET /api/version -> {"version": VERSION}; GET /version -> {"version": VERSION} (as vLLM answers);
  GET /metrics -> Prometheus text with vLLM's scheduler gauges at that instant (metrics_text: requests holding a
  slot, requests waiting for one, the share of slots held as the KV cache's use) and the tokens written so far;
  GET /v1/models and GET /api/tags (one model, "tiny"), GET /health. The model "missing" is answered 404.

With an API key (VLLM_API_KEY in the environment, as `vllm serve` reads it, or `api_key=`), requests whose path
starts with /v1, /v2, /inference or /cohere are refused with 401 {"error": "Unauthorized"} unless they carry
`Authorization: Bearer KEY` (scheme in any case), as vLLM's AuthenticationMiddleware does
(vllm/entrypoints/serve/utils/server_utils.py); /health, /version and the Ollama paths stay open.

`llm_standin.py serve MODEL --host H --port P [vLLM engine arguments, ignored]` is the `vllm serve` shim: it
lists MODEL (instead of "tiny") and refuses `--api-key` on its command line, where every user of a node sees it.

`"max_tokens"` (OpenAI) and `"options": {"num_predict"}` (Ollama) cap TOKENS. Every request body is kept
(`requests`), and so is each request's timing as the server saw it (`timings`: when it arrived, got its
slot and wrote each token); with a log file, one JSON line each. Settable by arguments or by environment
(STANDIN_TOKENS, STANDIN_FIRST_TOKEN_DELAY, STANDIN_INTER_TOKEN_DELAY, STANDIN_PARALLELISM, STANDIN_LOG).

    python3 tests/llm_standin.py --port 0 --tokens 5 --first-token-delay 0.05 --inter-token-delay 0.02 --parallelism 1
prints `listening on HOST:PORT` once it accepts connections.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import secrets
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VERSION = "0.0.0-llm-standin"
GUARDED_PREFIX = ("/v1", "/v2", "/inference", "/cohere")


class FifoSlots:
    """At most `size` holders at once; waiters get a slot in the order they asked (no barging)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self.lock = threading.Lock()
        self.waiting: collections.deque[threading.Event] = collections.deque()

    def acquire(self) -> None:
        with self.lock:
            if self.used < self.size and not self.waiting:
                self.used += 1
                return
            event = threading.Event()
            self.waiting.append(event)
        event.wait()

    def release(self) -> None:
        with self.lock:
            if self.waiting:
                self.waiting.popleft().set()  # the slot passes straight to the first waiter
            else:
                self.used -= 1


class Settings:
    def __init__(self, tokens: int = 5, first_token_delay: float = 0.05, inter_token_delay: float = 0.02,
                 parallelism: int = 1, log: str | None = None, usage: bool = True, api_key: str | None = None,
                 model: str = "tiny", empty_first: bool = False, empty_last: bool = False) -> None:
        self.tokens = tokens
        self.empty_first = empty_first
        self.empty_last = empty_last
        self.model = model
        self.key_hash = hashlib.sha256(api_key.encode()).digest() if api_key else None
        self.usage = usage
        self.first_token_delay = first_token_delay
        self.inter_token_delay = inter_token_delay
        self.slots = FifoSlots(parallelism)
        self.log = log
        self.requests: list[dict[str, Any]] = []
        self.timings: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def authorized(self, path: str, authorization: str | None) -> bool:
        """vLLM's check: only guarded paths need the key; the scheme is matched in any case, the token
        by the digest of what follows the first space."""
        if self.key_hash is None or not path.startswith(GUARDED_PREFIX):
            return True
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return secrets.compare_digest(hashlib.sha256(token.encode()).digest(), self.key_hash)

    def metrics_text(self) -> str:
        """GET /metrics, Prometheus' text format, vLLM's names for its scheduler's state at this instant
        (vllm/v1/metrics/loggers.py): requests holding a slot, requests queued for one, and the KV cache's use
        (the held slots' share of all slots, 0 to 1), and the tokens written so far."""
        with self.slots.lock:
            running, waiting = self.slots.used, len(self.slots.waiting)
        with self.lock:
            tokens = sum(len(t["timing"]["tokens"]) for t in self.timings)
        labels = f'{{engine="0",model_name="{self.model}"}}'
        return "".join([
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n",
            "# TYPE vllm:num_requests_running gauge\n", f"vllm:num_requests_running{labels} {float(running)}\n",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n",
            "# TYPE vllm:num_requests_waiting gauge\n", f"vllm:num_requests_waiting{labels} {float(waiting)}\n",
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n",
            "# TYPE vllm:kv_cache_usage_perc gauge\n", f"vllm:kv_cache_usage_perc{labels} {running / self.slots.size}\n",
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.\n",
            "# TYPE vllm:generation_tokens_total counter\n", f"vllm:generation_tokens_total{labels} {float(tokens)}\n",
        ])

    def record(self, entry: dict[str, Any]) -> None:
        """A request as it arrives ({"path", "body"}), and once its last token is written its timing
        ({"path", "timing": {"received", "slot", "tokens"}}: time.perf_counter() values, which on Linux are
        CLOCK_MONOTONIC, so comparable between processes); a log line each."""
        with self.lock:
            (self.timings if "timing" in entry else self.requests).append(entry)
            if self.log:
                with open(self.log, "a") as out:
                    out.write(json.dumps(entry) + "\n")


def handler(settings: Settings) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # as uvicorn (vLLM's server) does: each chunk leaves when written, not held by Nagle's algorithm
            # until the client acknowledges the last one (up to its 40 ms delayed ACK)
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, value: Any) -> None:
            data = json.dumps(value, separators=(",", ":")).encode()  # compact, as FastAPI answers
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
            self.wfile.flush()

        def _refused(self) -> bool:
            if settings.authorized(self.path, self.headers.get("Authorization")):
                return False
            self._send(401, {"error": "Unauthorized"})
            return True

        def do_GET(self) -> None:
            if self._refused():
                return
            if self.path in ("/api/version", "/version"):
                self._send(200, {"version": VERSION})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": settings.model, "object": "model", "owned_by": "standin"}]})
            elif self.path == "/api/tags":
                self._send(200, {"models": [{"name": "tiny:latest", "model": "tiny:latest", "size": 1000}]})
            elif self.path == "/health":
                self._send(200, {})
            elif self.path == "/metrics":
                data = settings.metrics_text().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if self._refused():
                self.rfile.read(length)
                return
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self._send(400, {"error": "invalid JSON"})
                return
            settings.record({"path": self.path, "body": body})
            if self.path not in ("/v1/completions", "/v1/chat/completions", "/api/generate"):
                self._send(404, {"error": "not found"})
                return
            if not body.get("model"):
                self._send(400, {"error": "model is required"})
                return
            if body["model"] == "missing":
                self._send(404, {"error": "model 'missing' not found"})
                return
            ollama = self.path == "/api/generate"
            cap = (body.get("options") or {}).get("num_predict") if ollama else body.get("max_tokens")
            count = min(settings.tokens, cap) if isinstance(cap, int) and cap > 0 else settings.tokens
            prompt = body.get("prompt") if self.path != "/v1/chat/completions" else \
                " ".join(str(m.get("content", "")) for m in body.get("messages") or [])
            prompt_tokens = len(str(prompt or "").split())
            received = time.perf_counter()
            settings.slots.acquire()
            times: list[float] = []
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson" if ollama else "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.flush()
                started = time.perf_counter()
                due = started + settings.first_token_delay
                if settings.empty_first:
                    self._chunk(self._empty(body, ollama, first=True))
                for i in range(count):
                    pause = due - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
                    self._chunk(self._token(body, i, ollama))
                    times.append(time.perf_counter())
                    due += settings.inter_token_delay
                settings.record({"path": self.path, "timing": {"received": received, "slot": started, "tokens": times}})
                if settings.empty_last and not ollama:
                    self._chunk(self._empty(body, ollama, first=False))
                self._chunk(self._final(body, prompt_tokens, count, ollama))
                self._chunk(b"")
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
                settings.record({"path": self.path, "timing": {"received": received, "tokens": times, "cut": True}})
            finally:
                settings.slots.release()

        def _token(self, body: dict[str, Any], i: int, ollama: bool) -> bytes:
            text = f"t{i} "
            if ollama:
                return json.dumps({"model": body["model"], "response": text, "done": False}).encode() + b"\n"
            if self.path == "/v1/chat/completions":
                return self._event(body, {"index": 0, "delta": {"content": text}, "finish_reason": None})
            return self._event(body, {"index": 0, "text": text, "finish_reason": None})

        def _empty(self, body: dict[str, Any], ollama: bool, first: bool) -> bytes:
            """A chunk that carries no token: the role chunk first, or the finish_reason chunk last."""
            if ollama:
                return json.dumps({"model": body["model"], "response": "", "done": False}).encode() + b"\n"
            finish = None if first else "length"
            if self.path == "/v1/chat/completions":
                delta = {"role": "assistant", "content": ""} if first else {}
                return self._event(body, {"index": 0, "delta": delta, "finish_reason": finish})
            return self._event(body, {"index": 0, "text": "", "finish_reason": finish})

        def _event(self, body: dict[str, Any], choice: dict[str, Any]) -> bytes:
            kind = "chat.completion.chunk" if self.path == "/v1/chat/completions" else "text_completion"
            chunk = {"id": "standin", "object": kind, "model": body["model"], "choices": [choice], "usage": None}
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        def _final(self, body: dict[str, Any], prompt_tokens: int, count: int, ollama: bool) -> bytes:
            if ollama:
                first = int(settings.first_token_delay * 1e9)
                rest = int(max(count - 1, 0) * settings.inter_token_delay * 1e9)
                return json.dumps({"model": body["model"], "response": "", "done": True, "done_reason": "length",
                                   "total_duration": first + rest, "load_duration": 0,
                                   "prompt_eval_count": prompt_tokens, "prompt_eval_duration": first,
                                   "eval_count": count, "eval_duration": rest}).encode() + b"\n"
            out = b""
            if settings.usage and (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": count, "total_tokens": prompt_tokens + count}
                out += b"data: " + json.dumps({"id": "standin", "model": body["model"], "choices": [], "usage": usage}).encode() + b"\n\n"
            return out + b"data: [DONE]\n\n"

    return Handler


class Standin:
    """The server on a thread of the calling process (tests that only need it in process)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **settings: Any) -> None:
        self.settings = Settings(**settings)
        self.server = ThreadingHTTPServer((host, port), handler(self.settings))
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.settings.requests

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main(argv: list[str]) -> int:
    env = os.environ
    serve = argv[:1] == ["serve"] and len(argv) >= 2
    model = argv[1] if serve else "tiny"
    if serve and any(word == "--api-key" or word.startswith("--api-key=") for word in argv):
        sys.exit("llm stand-in: --api-key on the command line, where every user of the node can read it")
    p = argparse.ArgumentParser(description="a stand-in LLM server with known timing (tests only)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--tokens", type=int, default=int(env.get("STANDIN_TOKENS", "5")))
    p.add_argument("--first-token-delay", type=float, default=float(env.get("STANDIN_FIRST_TOKEN_DELAY", "0.05")))
    p.add_argument("--inter-token-delay", type=float, default=float(env.get("STANDIN_INTER_TOKEN_DELAY", "0.02")))
    p.add_argument("--parallelism", type=int, default=int(env.get("STANDIN_PARALLELISM", "1")))
    p.add_argument("--log", default=env.get("STANDIN_LOG"))
    p.add_argument("--no-usage", action="store_true", help="never send the usage chunk (a server that gives no counts)")
    p.add_argument("--empty-first", action="store_true", help="a chunk without content first (the role chunk)")
    p.add_argument("--empty-last", action="store_true", help="a chunk without content after the last token (finish_reason)")
    # as `vllm serve`: the engine's arguments (--tensor-parallel-size, --dtype, ...) mean nothing here
    args = p.parse_known_args(argv[2:])[0] if serve else p.parse_args(argv)
    settings = Settings(args.tokens, args.first_token_delay, args.inter_token_delay, args.parallelism, args.log,
                        usage=not args.no_usage, api_key=env.get("VLLM_API_KEY") or None, model=model,
                        empty_first=args.empty_first, empty_last=args.empty_last)
    if args.log:
        with open(args.log, "a") as out:
            out.write(json.dumps({"argv": sys.argv}) + "\n")
    server = ThreadingHTTPServer((args.host, args.port), handler(settings))
    server.daemon_threads = True
    print(f"listening on {args.host}:{server.server_port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

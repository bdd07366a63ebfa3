"""A stand-in for Ollama, for tests: Ollama cannot be installed here.

It is NOT Ollama. It answers the parts of Ollama's HTTP API the ollama type uses
(https://github.com/ollama/ollama/blob/main/docs/api.md) with known behaviour:

- GET /api/version -> {"version": "0.0.0-standin"}
- GET /api/tags -> the models pulled or created so far
- POST /api/pull {"model"} -> NDJSON progress, then {"status": "success"}; a manifest file is written
  under $OLLAMA_MODELS/manifests/ (so tests see where the model store is)
- POST /api/create {"model", "from", "parameters"} -> a derived model; `from` must exist
- POST /api/generate {"model", "prompt", "stream", "keep_alive", "options"} -> STANDIN_TOKENS tokens,
  one every STANDIN_TOKEN_DELAY seconds (streamed as NDJSON unless "stream": false); the final object
  has eval_count and eval_duration (ns). The model is then "loaded". Unknown model: 404.
- GET /api/ps -> the loaded models, compact JSON as Go writes it, size_vram = $STANDIN_SIZE_VRAM (default 0)

Every request is appended to $STANDIN_LOG (one JSON line) when set. `serve` appends its OLLAMA_HOST and
CUDA_VISIBLE_DEVICES to $STANDIN_SERVED when set, and exits with status 3 at once when its CUDA_VISIBLE_DEVICES is
$STANDIN_FAIL_ON_DEVICES (a replica that fails, tests/test_replicas.py).

The same file is the `ollama` CLI shim: `serve` (listen on $OLLAMA_HOST), `pull MODEL`,
`create NAME -f MODELFILE` (FROM and PARAMETER lines), talking to $OLLAMA_HOST like Ollama's CLI.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

VERSION = "0.0.0-standin"
MODELS: dict[str, dict[str, Any]] = {}
LOADED: dict[str, dict[str, Any]] = {}
LOCK = threading.Lock()


def full_name(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _log(self, body: Any) -> None:
        log = os.environ.get("STANDIN_LOG")
        if log:
            with LOCK, open(log, "a") as out:
                out.write(json.dumps({"method": self.command, "path": self.path, "body": body,
                                      "port": self.server.server_address[1]}) + "\n")

    def _send(self, status: int, value: Any) -> None:
        data = compact(value) + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, objects: Any) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for obj in objects:
            data = compact(obj) + b"\n"
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def do_GET(self) -> None:
        self._log(None)
        if self.path == "/api/version":
            self._send(200, {"version": VERSION})
        elif self.path == "/api/tags":
            self._send(200, {"models": [{"name": n, "model": n, "size": 1000, "digest": "0" * 64}
                                        for n in sorted(MODELS)]})
        elif self.path == "/api/ps":
            vram = int(os.environ.get("STANDIN_SIZE_VRAM", "0"))
            models = [{"name": n, "model": n, "size": 4000, "digest": "0" * 64,
                       "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                                   "parameter_size": "1B", "quantization_level": "Q4_0"},
                       "expires_at": "2030-01-01T00:00:00Z", "size_vram": vram, "context_length": 4096}
                      for n in sorted(LOADED)]
            self._send(200, {"models": models})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._send(400, {"error": "invalid JSON"})
            return
        self._log(body)
        name = full_name(str(body.get("model") or body.get("name") or ""))
        if self.path == "/api/pull":
            MODELS[name] = {"parameters": {}}
            store = Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models")
            (store / "manifests").mkdir(parents=True, exist_ok=True)
            (store / "manifests" / name.replace("/", "_")).write_text("standin\n")
            steps = [{"status": "pulling manifest"}, {"status": "verifying sha256 digest"}, {"status": "success"}]
            self._stream(steps) if body.get("stream", True) else self._send(200, steps[-1])
        elif self.path == "/api/create":
            source = full_name(str(body.get("from") or ""))
            if source not in MODELS:
                self._send(404, {"error": f"model '{source}' not found"})
                return
            MODELS[name] = {"from": source, "parameters": body.get("parameters") or {}}
            self._send(200, {"status": "success"})
        elif self.path == "/api/generate":
            if name not in MODELS:
                self._send(404, {"error": f"model '{name}' not found"})
                return
            LOADED[name] = {"keep_alive": body.get("keep_alive")}
            count = int(os.environ.get("STANDIN_TOKENS", "5"))
            delay = float(os.environ.get("STANDIN_TOKEN_DELAY", "0.01"))

            def tokens() -> Any:
                for i in range(count):
                    time.sleep(delay)
                    yield {"model": name, "response": f"t{i} ", "done": False}
                yield {"model": name, "response": "", "done": True, "eval_count": count,
                       "eval_duration": int(count * delay * 1e9)}

            if body.get("stream", True):
                self._stream(tokens())
            else:
                parts = list(tokens())
                self._send(200, {**parts[-1], "response": "".join(p["response"] for p in parts)})
        else:
            self._send(404, {"error": "not found"})


def address() -> tuple[str, int]:
    host = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434").split("://")[-1]
    name, _, port = host.rpartition(":")
    return (name or "127.0.0.1"), int(port or 11434)


def call(path: str, body: Any) -> None:
    host, port = address()
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    request = urllib.request.Request(f"http://{host}:{port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            for line in response:
                print(json.loads(line).get("status", ""))
    except urllib.error.HTTPError as exc:
        sys.exit(f"Error: {json.loads(exc.read()).get('error')}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        devices = os.environ.get("CUDA_VISIBLE_DEVICES")
        if os.environ.get("STANDIN_SERVED"):
            with open(os.environ["STANDIN_SERVED"], "a") as out:
                out.write(json.dumps({"host": os.environ.get("OLLAMA_HOST"), "devices": devices, "pid": os.getpid()}) + "\n")
        if devices is not None and devices == os.environ.get("STANDIN_FAIL_ON_DEVICES"):
            return 3
        server = ThreadingHTTPServer(address(), Handler)
        server.daemon_threads = True
        server.serve_forever()
    elif argv[:1] == ["pull"] and len(argv) == 2:
        call("/api/pull", {"model": argv[1]})
    elif argv[:1] == ["create"] and len(argv) == 4 and argv[2] == "-f":
        source, parameters = "", {}
        for line in Path(argv[3]).read_text().splitlines():
            words = line.split()
            if words[:1] == ["FROM"]:
                source = words[1]
            elif words[:1] == ["PARAMETER"]:
                parameters[words[1]] = int(words[2]) if words[2].isdigit() else words[2]
        call("/api/create", {"model": argv[1], "from": source, "parameters": parameters})
    else:
        sys.exit(f"ollama stand-in: unsupported: {' '.join(argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

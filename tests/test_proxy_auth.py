"""Chroma and Ollama have no authentication of their own: orchc puts them behind nginx (TLS with a certificate of
the job, and `Authorization: Bearer KEY` or 401), and binds them to 127.0.0.1. The generated scripts run with
bash (`--site local`): the real nginx of Debian (tests/install-deps.sh) in front of the real chromadb server
(`chroma` of the venv) and of the Ollama stand-in (tests/ollama_standin.py, on PATH as `ollama`). Checked: a
request without the key, with another key, or in plain HTTP is refused; with the key (and TLS checked against
the job's authority) it is served; the clients (chroma_client, ollama_client) succeed with the key and fail
without it; the key is on no command line and in no script.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, in_ci

pytestmark = pytest.mark.slow   # every test starts real services (chroma or ollama stand-in, nginx) and waits for them


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def program(name: str, hint: str) -> str:
    found = shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        if in_ci():
            pytest.fail(f"CI=true but no `{name}` program: {hint}")
        pytest.skip(f"no `{name}` program: {hint}")
    return found


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """PATH for the jobs: nginx, the venv's chroma, and the Ollama stand-in as `ollama`."""
    program("nginx", "run tests/install-deps.sh as root (Debian's nginx)")
    chroma = program("chroma", "install the test extra (.venv/bin/python -m pip install -e '.[test]')")
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "chroma").symlink_to(chroma)
    shim = folder / "ollama"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} {ROOT / 'tests' / 'ollama_standin.py'} \"$@\"\n")
    shim.chmod(0o755)
    return folder


class Service:
    def __init__(self, run: Path, job: str, port: int, key_file: Path) -> None:
        self.run, self.job, self.port, self.key_file = run, job, port, key_file

    @property
    def key(self) -> str:
        return self.key_file.read_text()

    @property
    def ca(self) -> Path:
        return self.run / "credentials" / self.job / "ca.crt"

    def get(self, path: str, key: str | None = None, tls: bool = True) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        scheme = "https" if tls else "http"
        context = ssl.create_default_context(cafile=str(self.ca)) if tls else None
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{scheme}://127.0.0.1:{self.port}{path}", headers=headers),
                                        timeout=10, context=context) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()


def start(run: Path, job: str, env: dict[str, str]) -> subprocess.Popen[str]:
    process = subprocess.Popen(["bash", f"{job}.sbatch"], cwd=run, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 90
    while process.poll() is None and not (run / "endpoints" / job).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if process.poll() is not None or not (run / "endpoints" / job).exists():
        stop(process)
        pytest.fail(f"{job} never became ready:\n{process.communicate(timeout=30)[1][-3000:]}")
    return process


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


RECIPES = {
    "chroma": ("service:\n  name: db\n  type: chroma\n  ports: [{port}]\n  internal_port: {internal}\n  health_timeout: 60\n"
               "client:\n  name: bench\n  type: chroma_client\n  target: db\n  num_documents: 60\n  dimension: 8\n"
               "  batch_size: 20\n  num_queries: 10\n  recall_queries: 2\n  n_results: 3\n  workers: 2\n  duration: 60\n"),
    "ollama": ("service:\n  name: db\n  type: ollama\n  model: tiny\n  ports: [{port}]\n  internal_port: {internal}\n"
               "  health_timeout: 30\n  resources: {{gres!: null, partition: cpu}}\n"
               "client:\n  name: bench\n  type: ollama_client\n  target: db\n  model: tiny\n  num_requests: 3\n"
               "  concurrent: 1\n  warmup_requests: 0\n  duration: 30\n"),
}
PROBES = {"chroma": "/api/v2/heartbeat", "ollama": "/api/tags"}


@pytest.fixture(params=sorted(RECIPES))
def service(request, orchc, write, tmp_path, bin_dir):
    """A proxied service (chroma or ollama) running from its generated script, with its run folder."""
    kind = request.param
    port, internal = free_port(), free_port()
    recipe = write("r.yaml", RECIPES[kind].format(port=port, internal=internal))
    result = orchc("compile", str(recipe), "--site", "local", "-o", "out", cwd=tmp_path)
    assert result.code == 0, result.err
    run = tmp_path / "out" / "r"
    env = {**os.environ, "ORCHC_RUN_DIR": str(run), "HOME": str(run), "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "STANDIN_LOG": str(run / "standin.log")}
    process = start(run, "db", env)
    try:
        yield kind, Service(run, "db", port, run / ".orchc" / "secrets" / f"{kind}_api_key"), internal
    finally:
        stop(process)


def test_the_proxy_refuses_without_the_key_and_serves_with_it(service):
    kind, s, _ = service
    probe = PROBES[kind]
    assert s.get(probe) == (401, b'{"error":"Unauthorized"}')
    assert s.get(probe, "x" + s.key)[0] == 401
    assert s.get(probe, s.key.lower() if s.key != s.key.lower() else s.key.upper())[0] == 401   # case counts
    assert s.get(probe, s.key, tls=False)[0] == 400   # plain HTTP on the TLS port: nginx answers 400
    status, body = s.get(probe, s.key)
    assert status == 200, body
    assert s.key_file.stat().st_mode & 0o777 == 0o600


def listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses with a socket listening on `port` (from /proc/net/tcp: state 0A is LISTEN)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
    return found


def test_the_service_itself_listens_on_loopback_only(service):
    _, s, internal = service
    assert listening_addresses(internal) == {"127.0.0.1"}
    assert listening_addresses(s.port) == {"0.0.0.0"}   # the proxy: what other nodes reach


def test_the_key_is_in_no_script_and_on_no_command_line(service):
    _, s, _ = service
    for script in s.run.glob("*.sbatch"):
        assert s.key not in script.read_text()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert s.key.encode() not in cmdline.read_bytes(), cmdline
        except OSError:
            continue


def run_client(s: Service, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ORCHC_RUN_DIR": str(s.run), "HOME": str(home)}
    return subprocess.run(["bash", "bench.sbatch"], cwd=s.run, env=env, capture_output=True, text=True, timeout=120)


def test_the_client_with_the_key_succeeds_and_without_it_is_refused(service, tmp_path):
    kind, s, _ = service
    stranger = tmp_path / "stranger"   # another $HOME: another key file
    stranger.mkdir()
    refused = run_client(s, stranger)
    assert refused.returncode != 0
    said = refused.stderr + "".join(p.read_text() for p in (s.run / "results" / "bench").glob("error"))
    assert "401" in said, said[-3000:]
    shutil.rmtree(s.run / "results" / "bench")
    (s.run / "done").exists() and shutil.rmtree(s.run / "done")
    done = run_client(s, s.run)   # the service's $HOME: the same key file
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((s.run / "results" / "bench" / "metrics.json").read_text())
    if kind == "chroma":
        assert metrics["documents_added_count"] == 60 and metrics["queries_count"] == 10
    else:
        assert metrics["requests_ok_count"] == 3

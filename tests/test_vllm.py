"""The vllm type and llm_client hold an API key: the generated scripts run with bash (`--site local`)
against a stand-in for `vllm serve` (tests/llm_standin.py `serve`, on PATH as `vllm`), which enforces the
key exactly as vLLM's AuthenticationMiddleware does (401 on /v1/* without `Authorization: Bearer KEY`).

vLLM itself cannot run here (no GPU, no image). What is checked: the key is a secret made on the node
(0600, random), it reaches the server in its environment (the stand-in reads VLLM_API_KEY, as vLLM does,
and refuses `--api-key` on its command line), the service's own readiness check carries it (the stand-in
refuses /v1/models without it, so the service would never become ready), a request without the key or
with another key is refused, and llm_client succeeds with the key and fails without it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def shim_dir(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "vllm"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} {ROOT / 'tests' / 'llm_standin.py'} \"$@\"\n")
    shim.chmod(0o755)
    return bin_dir


def compile_to(orchc, recipe: Path, out: str, cwd: Path) -> Path:
    result = orchc("compile", str(recipe), "--site", "local", "-o", out, cwd=cwd)
    assert result.code == 0, result.err
    return cwd / out / recipe.stem


def request(port: int, path: str, key: str | None = None, scheme: str = "Bearer") -> tuple[int, bytes]:
    body = json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": 2}).encode() if path != "/health" else None
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"{scheme} {key}"
    try:
        with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                                           headers=headers), timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture
def vllm_service(orchc, write, tmp_path):
    """The vllm service job running (ready: its endpoint published), with its run folder, port and key."""
    port = free_port()
    recipe = write("svc.yaml", f"service:\n  name: llm\n  type: vllm\n  model: tiny\n  ports: [{port}]\n"
                               "  health_timeout: 30\n  resources: {gres!: null, partition: cpu}\n")
    run = compile_to(orchc, recipe, "out", tmp_path)
    env = {**os.environ, "ORCHC_RUN_DIR": str(run), "HOME": str(run), "PATH": f"{shim_dir(tmp_path)}:{os.environ['PATH']}",
           "STANDIN_LOG": str(run / "standin.log")}
    env.pop("VLLM_API_KEY", None)
    job = subprocess.Popen(["bash", "llm.sbatch"], cwd=run, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while job.poll() is None and not (run / "endpoints" / "llm").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        assert job.poll() is None, job.communicate(timeout=30)[1]
        assert (run / "endpoints" / "llm").exists(), "the service never became ready"
        key_file = run / ".orchc" / "secrets" / "vllm_api_key"
        yield run, port, key_file.read_text(), key_file
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGTERM)
        job.communicate(timeout=30)


def test_the_key_is_a_private_random_secret_given_in_the_environment_only(vllm_service):
    run, _, key, key_file = vllm_service
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert len(key) >= 32
    for script in run.glob("*.sbatch"):
        assert key not in script.read_text()
    argv = [json.loads(line)["argv"] for line in (run / "standin.log").read_text().splitlines() if '"argv"' in line]
    assert argv and argv[0][1:3] == ["serve", "tiny"], argv
    assert not any(key in word for word in argv[0]), "the key must not be on the server's command line"


def test_the_api_refuses_a_request_without_the_key_and_serves_one_with_it(vllm_service):
    _, port, key, _ = vllm_service
    assert request(port, "/v1/completions") == (401, b'{"error":"Unauthorized"}')
    assert request(port, "/v1/completions", "not-" + key)[0] == 401
    assert request(port, "/v1/completions", key, scheme="Basic")[0] == 401
    assert request(port, "/v1/models", None)[0] == 401
    assert request(port, "/v1/completions", key)[0] == 200
    assert request(port, "/v1/completions", key, scheme="bearer")[0] == 200   # the scheme in any case, as vLLM
    assert request(port, "/health")[0] == 200   # open in vLLM too: the readiness probe needs no key


def client_recipe(write, port: int, extra: str = "") -> Path:
    return write("bench.yaml", f"client:\n  name: bench\n  type: llm_client\n  model: tiny\n"
                               f"  target_endpoint: '127.0.0.1:{port}'\n  num_requests: 3\n  concurrent: 1\n"
                               "  warmup_requests: 0\n  duration: 30\n" + extra)


def run_client(run: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ORCHC_RUN_DIR": str(run), "HOME": str(home)}
    env.pop("LLM_BENCH_API_KEY", None)
    return subprocess.run(["bash", "bench.sbatch"], cwd=run, env=env, capture_output=True, text=True, timeout=120)


def test_llm_client_with_the_key_succeeds(orchc, write, tmp_path, vllm_service):
    service_run, port, key, _ = vllm_service
    # with an SLO (one no request can miss, one every request misses): it reaches the benchmark and the results
    run = compile_to(orchc, client_recipe(write, port, "  slo: {ttft_p99_ms: 60000, e2e_latency_p99_ms: 0.001}\n"),
                     "client", tmp_path)
    done = run_client(run, home=service_run)   # the same $HOME: the same secret file
    assert done.returncode == 0, done.stderr
    metrics = json.loads((run / "results" / "bench" / "metrics.json").read_text())
    assert metrics["requests_ok_count"] == 3 and metrics["requests_failed_count"] == 0
    results = json.loads((run / "results" / "bench" / "results.json").read_text())
    assert results["parameters"]["slo"] == {"ttft_p99_ms": 60000, "e2e_latency_p99_ms": 0.001}
    assert [results["metrics"][k] for k in ("goodput_requests_per_s", "slo_met_ratio", "slo_p99_met")] == [0, 0, 0]
    assert key not in (run / "bench.sbatch").read_text() and key not in done.stderr


def test_llm_client_without_the_key_is_refused(orchc, write, tmp_path, vllm_service):
    _, port, _, _ = vllm_service
    run = compile_to(orchc, client_recipe(write, port), "client", tmp_path)
    stranger = tmp_path / "stranger"   # another $HOME: its own, different key file
    stranger.mkdir()
    done = run_client(run, home=stranger)
    assert done.returncode != 0
    assert "HTTP 401" in (run / "results" / "bench" / "error").read_text()


@pytest.mark.parametrize(("slo", "column", "message"), [
    ("{ttft_ms: 2000}", 9, "unknown field 'ttft_ms' in slo of client 'bench'; did you mean 'ttft_p99_ms'?"),
    ("{tpot_p99_ms: 0}", 22, "slo.tpot_p99_ms: 0 is less than or equal to the minimum of 0"),
    ("{}", 8, "slo: {} should be non-empty"),
])
def test_a_bad_slo_is_a_located_error(orchc, write, tmp_path, slo, column, message):
    recipe = client_recipe(write, 8000, f"  slo: {slo}\n")
    done = orchc("validate", str(recipe), "--site", "local", cwd=tmp_path)
    assert done.code == 1 and done.err.startswith(f"bench.yaml:10:{column}: error: {message}\n"), done.err


def test_llm_client_with_a_search_runs_llm_search_and_reports_the_capacity(orchc, write, tmp_path, vllm_service):
    """The type's search: the job runs llm_search.py with the same options (config, key, target) and its results
    carry the capacity and search.json; a search whose lowest rate already meets the SLO only at 'max' here."""
    service_run, port, _, _ = vllm_service
    search = "  search: {slo: {ttft_p90_ms: 60000}, rate: {min: 2, max: 4}, probe_requests: 3, probe_s: 0.5, warmup_s: 0}\n"
    run = compile_to(orchc, client_recipe(write, port, search), "client", tmp_path)
    script = (run / "bench.sbatch").read_text()
    assert "/llm_search.py run " in script and "/llm_search.py summarize " in script
    done = run_client(run, home=service_run)
    assert done.returncode == 0, done.stderr
    results = json.loads((run / "results" / "bench" / "results.json").read_text())
    metrics = results["metrics"]
    # p90 within 60 s: every probe passes (29 judged requests each at 95 %), so the capacity is at least max
    assert (metrics["capacity_requests_per_s"], metrics["capacity_high_requests_per_s"]) == (4, None), metrics
    assert metrics["search_probes_count"] == 2 and "search.json" in results["raw"]

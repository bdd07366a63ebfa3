"""Chroma works: health checks that report an HTTP error at once, and chroma + chroma_client end to end.

The fast tests compile a probe service whose health check is `orchc_wait_http` against a tiny local
HTTP server, and run the script with bash (no SLURM). The end-to-end test runs the `chroma` server of
the `chromadb` package from PyPI (the `test` extra) and the stdlib-only benchmark client on the test
cluster, natively (`--site local`); the job finds `chroma` on PATH because sbatch exports the
submitting environment.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import ROOT, in_ci
from test_cluster import cluster, free_port, orchc, status, wait_for
from test_failfast import _unique, compile_probe, run_script

__all__ = ["cluster"]   # the fixture, imported for the end-to-end test

V1_GONE = b'{"error":"Unimplemented","message":"The v1 API is deprecated. Please use /v2 apis"}'


class Answering:
    """An HTTP server on 127.0.0.1 that answers every GET with the status and body `answer()` returns."""

    def __init__(self, answer, port: int = 0) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code, body = answer()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def http_probe(url: str, timeout: int) -> str:
    """A service type whose health check waits for `url`; its command sleeps, marked for cleanup."""
    return ("type: http_probe\nextends: service\ndescription: waits for an HTTP URL\nfields:\n"
            "  ports: {default: [9]}\n  sleep: {type: string, pattern: '^[0-9.]+$'}\n"
            "container:\n  command: sleep {{ sleep }}\nphases:\n  health_check!:\n"
            f"    - orchc_wait_http {url} {timeout}\n"
            "    - printf '%s\\n' healthy >>\"$ORCHC_RUN_DIR/trace\"\n")


def run_probe(orchc_in_process, tmp_path: Path, url: str, timeout: int = 60, sleep: str = "300"):
    unique = _unique()
    script = compile_probe(orchc_in_process, tmp_path, "http_probe", http_probe(url, timeout),
                           f"service:\n  name: s\n  type: http_probe\n  sleep: '{sleep}.{unique}'\n")
    started = time.monotonic()
    ran = run_script(script, tmp_path, unique)
    return ran, time.monotonic() - started


def test_an_http_error_status_fails_the_health_check_at_once(orchc, tmp_path):
    """Chroma 1.x answers the v1 heartbeat with 410: the job says so within seconds, not after its timeout."""
    server = Answering(lambda: (410, V1_GONE))
    try:
        ran, seconds = run_probe(orchc, tmp_path, f"http://127.0.0.1:{server.port}/api/v1/heartbeat")
    finally:
        server.close()
    assert not ran.timed_out, f"still waiting after 20 s on an HTTP 410:\n{ran.err[-2000:]}"
    assert ran.status != 0
    assert seconds < 10, seconds
    assert ran.trace == [], "the health check passed on an HTTP 410"
    failed = [line for line in ran.err.splitlines() if "error:" in line and "HTTP 410" in line]
    assert failed, f"no error line naming HTTP 410:\n{ran.err[-2000:]}"
    assert "The v1 API is deprecated" in failed[0], failed[0]
    assert f"127.0.0.1:{server.port}/api/v1/heartbeat" in failed[0], failed[0]
    assert "did not answer within" not in ran.err
    assert ran.survivors == [], f"left running: {ran.survivors}"


@pytest.mark.parametrize("status", [404, 500])
def test_other_http_errors_fail_at_once_and_quote_at_most_the_start_of_the_body(orchc, tmp_path, status):
    body = b"line one\nline\ttwo " + b"x" * 5000
    server = Answering(lambda: (status, body))
    try:
        ran, seconds = run_probe(orchc, tmp_path, f"http://127.0.0.1:{server.port}/health")
    finally:
        server.close()
    assert not ran.timed_out and ran.status != 0 and seconds < 10
    (failed,) = [line for line in ran.err.splitlines() if "error:" in line and f"HTTP {status}" in line]
    assert "line one line two xxx" in failed, failed        # control characters become spaces: one log line
    assert failed.count("x") < 250, f"the whole body was logged: {len(failed)} characters"


@pytest.mark.slow
def test_a_url_that_answers_late_is_waited_for(orchc, tmp_path):
    """Connection refused at first (nothing listens yet), then 503 while starting, then 200: healthy."""
    port = free_port()
    answers = iter([(503, b"Service Unavailable")] * 2)
    late: list[Answering] = []

    def serve_late() -> None:
        time.sleep(1.5)
        late.append(Answering(lambda: next(answers, (200, b'{"nanosecond heartbeat": 1}')), port))

    threading.Thread(target=serve_late, daemon=True).start()
    try:
        ran, _ = run_probe(orchc, tmp_path, f"http://127.0.0.1:{port}/api/v2/heartbeat", sleep="8")
    finally:
        for server in late:
            server.close()
    assert late, "the late server never started"
    assert next(answers, None) is None, "the check stopped before the server answered 200"
    assert not ran.timed_out
    assert ran.trace == ["healthy"], ran.err[-2000:]
    assert ran.status == 0, ran.err[-2000:]
    assert "error" not in ran.err, f"a refused connection or a 503 was reported as an error:\n{ran.err[-2000:]}"
    assert "s is ready" in ran.err


def test_a_url_that_never_answers_times_out_with_the_last_answer(orchc, tmp_path):
    server = Answering(lambda: (503, b"still starting"))
    try:
        ran, _ = run_probe(orchc, tmp_path, f"http://127.0.0.1:{server.port}/-/ready", timeout=2)
    finally:
        server.close()
    assert not ran.timed_out and ran.status != 0
    (failed,) = [line for line in ran.err.splitlines() if "error:" in line and "did not answer within 2 s" in line]
    assert "HTTP 503: still starting" in failed, failed


def test_a_url_where_nothing_listens_times_out_saying_so(orchc, tmp_path):
    port = free_port()
    ran, _ = run_probe(orchc, tmp_path, f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1)
    assert not ran.timed_out and ran.status != 0
    (failed,) = [line for line in ran.err.splitlines() if "error:" in line]
    assert "did not answer within 1 s (last: no answer, curl exit status 7)" in failed, failed   # 7: connection refused
    assert "command failed" not in ran.err, "a refused connection tripped the ERR trap"


def test_the_chroma_type_checks_the_v2_heartbeat(orchc, tmp_path):
    (tmp_path / "r.yaml").write_text("service:\n  name: chroma\n  ports: [8123]\n  internal_port: 8124\n"
                                     "client:\n  name: vectors\n  type: chroma_client\n")
    result = orchc("compile", "r.yaml", "--site", "local", "-o", "out", cwd=tmp_path)
    assert result.code == 0, result.err
    service = (tmp_path / "out" / "r" / "chroma.sbatch").read_text()
    # Chroma itself behind the proxy (see test_proxy_auth.py), then through the proxy
    assert "orchc_wait_http http://127.0.0.1:8124/api/v2/heartbeat" in service
    assert "https://127.0.0.1:8123/api/v2/heartbeat" in service
    assert "/api/v1" not in service
    client = (tmp_path / "out" / "r" / "vectors.sbatch").read_text()
    (program,) = (tmp_path / "out" / "r").glob("orchc-file-*-chroma_bench.py")   # the benchmark, shipped beside it
    assert f"orchc_shipped_file {program.name} " in client
    assert "/api/v2/tenants/" in program.read_text() and "/api/v1" not in program.read_text() + client


@pytest.fixture
def chroma_program() -> str:
    found = shutil.which("chroma", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        message = "no `chroma` program: install the test extra (.venv/bin/python -m pip install -e '.[test]')"
        if in_ci():
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)
    return found


@pytest.mark.cluster
def test_chroma_and_its_benchmark_client_complete_with_real_results(cluster, chroma_program, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{Path(chroma_program).parent}{os.pathsep}{os.environ['PATH']}")
    port = free_port()
    (tmp_path / "chroma.yaml").write_text(
        "site: local\n"
        f"service:\n  name: chroma\n  ports: [{port}]\n  internal_port: {free_port()}\n  persist_directory: {tmp_path / 'data'}\n"
        "  resources: {time: '00:05:00'}\n"
        "client:\n  name: vectors\n  type: chroma_client\n  num_documents: 300\n  dimension: 16\n"
        "  batch_size: 50\n  num_queries: 40\n  query_batch_size: 2\n  n_results: 5\n  workers: 3\n"
        "  recall_queries: 10\n  duration: 60\n  resources: {time: '00:05:00'}\n")
    run = tmp_path / "run"
    orchc("submit", "chroma.yaml", "--run-dir", run, cwd=tmp_path)
    ended = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")

    def all_ended() -> dict[str, dict[str, str]] | None:
        jobs = status(run)
        return jobs if all(job["state"] in ended for job in jobs.values()) else None

    jobs = wait_for(all_ended, 110, "chroma and its client to end", interval=0.5)
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(run.glob("slurm-*")))
    assert {name: job["state"] for name, job in jobs.items()} == {"chroma": "COMPLETED", "vectors": "COMPLETED"}, logs
    folder = run / "results" / "vectors"
    results = json.loads((folder / "results.json").read_text())
    assert results["tool"] == "chroma_bench" and results["status"] == "complete", results
    assert results["environment"]["reported"]["api"] == "v2"
    assert results["environment"]["reported"]["distance"] == "l2"
    metrics = results["metrics"]
    assert metrics["documents_added_count"] == 300 and metrics["add_requests_count"] == 6
    assert metrics["queries_count"] == 40 and metrics["query_requests_count"] == 20
    for phase, items, raw in (("add", 300, "adds.tsv"), ("query", 40, "queries.tsv")):
        latency = [metrics[f"{phase}_latency_{p}_ms"] for p in ("min", "p50", "p90", "p95", "p99", "max")]
        assert latency[0] > 0 and latency == sorted(latency), (phase, latency)
        # throughput over the phase's wall time, which with 3 workers is shorter than the summed latencies
        wall = metrics[f"{phase}_wall_s"]
        rate = metrics["adds_per_s" if phase == "add" else "queries_per_s"]
        assert rate == pytest.approx(items / wall, rel=1e-3)
        summed = sum(float(line.split("\t")[3]) for line in (folder / raw).read_text().splitlines()[1:])
        assert wall <= summed + 0.05, (phase, wall, summed)
    # HNSW is approximate: recall is at most 1; far above chance (5 of 300) when the exact neighbours are right
    assert 0.5 < metrics["recall_at_5_ratio"] <= 1, metrics
    assert metrics["recall_queries_count"] == 10
    assert len((folder / "recall.jsonl").read_text().splitlines()) == 10
    assert results["parameters"]["workers"] == 3
    assert not (run / "endpoints" / "chroma").exists()
    assert any((tmp_path / "data").iterdir()), "chroma persisted nothing into persist_directory"


def chroma_bench():
    """service_defs/files/chroma_bench.py, the program chroma_client ships, as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("chroma_bench", ROOT / "service_defs" / "files" / "chroma_bench.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = [("a", [0.0, 0.0]), ("b", [1.0, 0.0]), ("c", [0.0, 1.0]), ("d", [1.0, 1.0]), ("e", [2.0, 2.0]), ("f", [1.0, 0.0])]


@pytest.mark.parametrize("use_numpy", [False, True])
@pytest.mark.parametrize(("space", "query", "expected"), [
    # l2 is squared: to (2, 2): e 0, d 2, then b, c, f all 5 (the first of a tie wins), a 8
    ("l2", [2.0, 2.0], ["e", "d", "b", "c"]),
    ("l2", [0.8, 0.1], ["b", "f", "a", "d"]),   # 0.05, 0.05, 0.65, 0.85
    # ip is 1 - q.x: to (1, 0): b, d, e, f have dot 1, 1, 2, 1 -> e first, then b, d, f in order
    ("ip", [1.0, 0.0], ["e", "b", "d", "f"]),
    # cosine: d and e point the same way (distance 0, d first); a has no direction (distance 1)
    ("cosine", [3.0, 3.0], ["d", "e", "b", "c"]),
])
def test_exact_neighbours_on_tiny_vectors(space, query, expected, use_numpy):
    if use_numpy:
        pytest.importorskip("numpy")
    module = chroma_bench()
    assert module.exact_neighbours([query], TINY, 4, space, use_numpy=use_numpy) == [expected]
    assert module.exact_neighbours([query, query], iter(TINY), 2, space, use_numpy=use_numpy) == [expected[:2]] * 2
    assert module.exact_neighbours([query], TINY, 10, space, use_numpy=use_numpy)[0][:4] == expected


def test_exact_neighbours_agree_with_sorting_every_distance():
    """Random vectors, k of 200, many queries: the one-pass heaps (and numpy's chunks) give the full sort's top k."""
    import random

    module = chroma_bench()
    rng = random.Random(7)
    docs = [(f"doc-{i}", [rng.random() for _ in range(8)]) for i in range(200)]
    queries = [[rng.random() for _ in range(8)] for _ in range(15)]
    for space in module.SPACES:
        distance = module.distance_function(space)
        truth = [[doc_id for _, _, doc_id in sorted(
            (distance(q, x, sum(v * v for v in q), sum(v * v for v in x)), order, doc_id)
            for order, (doc_id, x) in enumerate(docs))][:7] for q in queries]
        assert module.exact_neighbours(queries, docs, 7, space, use_numpy=False) == truth
        try:
            import numpy
        except ImportError:
            continue
        assert module._exact_neighbours_numpy(numpy, queries, docs, 7, space, chunk=32) == truth


def test_recall_counts_the_exact_neighbours_chroma_returned(tmp_path):
    """summarize draws the added vectors again from the seed, for the batches Chroma acknowledged only."""
    module = chroma_bench()
    source = module.vectors(module.document_seed(5), 4)
    vectors = [next(source) for _ in range(30)]
    (tmp_path / "adds.tsv").write_text("first\tdocuments\tstart_s\tseconds\n0\t10\t0.0\t0.1\n20\t10\t0.1\t0.1\n")
    docs = [(f"doc-{i}", vectors[i]) for i in [*range(10), *range(20, 30)]]
    assert list(module.added_documents(str(tmp_path), 5, 4)) == docs
    query = vectors[25]
    truth = module.exact_neighbours([query], docs, 3, "l2", use_numpy=False)[0]
    assert truth[0] == "doc-25"
    answer = [truth[0], truth[1], "doc-15"]    # doc-15 was never added: it cannot be a true neighbour
    (tmp_path / "recall.jsonl").write_text(json.dumps({"query": 0, "vector": query, "ids": answer}) + "\n")
    args = type("Args", (), {"results": str(tmp_path), "n_results": 3, "seed": 5, "dimension": 4, "space": "l2"})()
    assert module.recall_metrics(args) == {"recall_at_3_ratio": round(2 / 3, 6), "recall_queries_count": 1}

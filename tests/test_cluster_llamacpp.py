"""A real inference engine on the test cluster: llama.cpp's llama-server (tests/install-deps.sh builds it into
/opt/orchc/llama.cpp/bin) serving a tiny random llama written at test time (tests/tiny_gguf.py), and llm_client
against it: streams, token counts, TTFT/ITL/TPOT, llama-server's own timings and gauges, the key never on an argv.

The model is for timing, not quality: 8 layers of width 1024 (185 MB F16), greedy, so each request streams exactly
max_tokens tokens (its end-of-stream and byte pieces can never win). Like tests/test_cluster.py, these skip without
a cluster or without llama-server, and fail under CI=true.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, in_ci
from test_cluster import cluster, free_port, status, wait_for
from test_cluster_clients import cmdlines

__all__ = ["cluster"]   # the fixture, imported for the tests below
pytestmark = pytest.mark.cluster

LLAMA_SERVER = Path("/opt/orchc/llama.cpp/bin/llama-server")
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The tiny random llama, written once for the module (about 5 s)."""
    if not LLAMA_SERVER.exists():
        message = f"{LLAMA_SERVER} missing; run tests/install-deps.sh"
        pytest.fail(f"CI=true but {message}") if in_ci() else pytest.skip(message)
    sys.path.insert(0, str(ROOT / "tests"))
    import tiny_gguf
    path = tmp_path_factory.mktemp("model") / "tiny.gguf"
    tiny_gguf.write(path)
    return path


def http_get(url: str) -> tuple[int, str] | None:
    """(status, body) of a GET, None while nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status, answer.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError:
        return None


def submit(recipe: Path, run: Path) -> None:
    """orchc submit, llama-server on the PATH the jobs inherit (sbatch passes the submitter's environment on)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{LLAMA_SERVER.parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, "-m", "compiler", "submit", str(recipe), "--run-dir", str(run)],
                          cwd=recipe.parent, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr


def ended(run: Path):
    jobs = status(run)
    return jobs if jobs and all(job["state"] in ENDED for job in jobs.values()) else None


def logs(run: Path) -> str:
    return "".join(f"\n--- {p.name}\n{p.read_text()[-4000:]}" for p in sorted(run.glob("slurm-*")))


def service_yaml(tmp_path: Path, model: Path, port: int, metrics_port: int, parallel: int = 2) -> str:
    return (f"site: local\nservice:\n  name: llm\n  type: llamacpp\n  model: {model}\n  ports: [{port}]\n"
            f"  metrics_port: {metrics_port}\n"
            f"  parallel: {parallel}\n  ctx_size: {parallel * 256}\n  api_key: {{file: {tmp_path}/secrets/llamacpp_api_key}}\n"
            f"  resources: {{time: '00:15:00', cpus_per_task: 2}}\n")


def client_yaml(tmp_path: Path, name: str, settings: str, input_length: int = 24) -> str:
    return (f"  - name: {name}\n    type: llm_client\n    api_key: {{file: {tmp_path}/secrets/llamacpp_api_key}}\n"
            f"    input_length: {input_length}\n    max_tokens: {MAX_TOKENS}\n    warmup_requests: 1\n    duration: 400\n"
            f"    resources: {{time: '00:15:00'}}\n" + "".join(f"    {line}\n" for line in settings.splitlines()))


def test_llm_client_against_llama_server_streams_exactly_max_tokens_with_the_key_never_on_an_argv(cluster, model, tmp_path):
    recipe = tmp_path / "llama.yaml"
    port, metrics_port = free_port(), free_port()
    # one thread: on the 2 shared cores two threads spin against the other jobs (600 ms a token at load 10, not 60)
    recipe.write_text(service_yaml(tmp_path, model, port, metrics_port) + "  threads: 1\nclients:\n"
                      + client_yaml(tmp_path, "bench", "num_requests: 12\nconcurrent: 2\nengine_metrics_interval: 0.5"))
    run = tmp_path / "run"
    submit(recipe, run)
    secret = tmp_path / "secrets" / "llamacpp_api_key"
    wait_for(secret.exists, 60, "the key to be generated")
    key = secret.read_text().strip().encode()
    assert len(key) >= 20
    seen: list[bytes] = []
    relayed: list[str] = []
    guarded: list[int] = []

    def watch() -> bool:
        for pid, line in cmdlines().items():
            assert key not in line, f"the key is on the command line of pid {pid}: {line[:200]!r}"
            if b"llama-server\0" in line:
                seen.append(line)
        # while it serves: /metrics without the key only through the relay, which passes nothing else
        if seen and not relayed and (answer := http_get(f"http://127.0.0.1:{metrics_port}/metrics")) and answer[0] == 200:
            relayed.append(answer[1])
            guarded.extend(code for code, _ in filter(None, [http_get(f"http://127.0.0.1:{port}/metrics"),
                                                              http_get(f"http://127.0.0.1:{metrics_port}/v1/models")]))
        return ended(run) is not None

    wait_for(watch, 600, "llama-server and the client to end", interval=0.3)
    jobs = ended(run)
    assert {name: job["state"] for name, job in jobs.items()} == {"llm": "COMPLETED", "bench": "COMPLETED"}, logs(run)
    assert seen and b"--metrics\0" in seen[0] and b"-np\0002\0" in seen[0] and b"-t\0001\0" in seen[0], seen[:1]

    folder = run / "results" / "bench"
    metrics = json.loads((folder / "results.json").read_text())["metrics"]
    records = [json.loads(line) for line in (folder / "requests.jsonl").read_text().splitlines()]
    assert metrics["requests_ok_count"] == 12 and metrics["requests_failed_count"] == 0, metrics
    # exactly max_tokens each, as the server counted them (usage) and as streamed (one chunk per token)
    assert metrics["output_tokens_count"] == 12 * MAX_TOKENS
    assert all(r["output_tokens"] == MAX_TOKENS and r["tokens_source"] == "server" for r in records), records[:2]
    assert all(len(r["chunk_times_s"]) == MAX_TOKENS for r in records)
    assert all(r["input_tokens"] == 24 + 1 for r in records), [r["input_tokens"] for r in records]   # one word a token, and <s>
    for name in ("ttft", "itl", "tpot", "e2e_latency"):
        assert 0 < metrics[f"{name}_median_ms"] <= metrics[f"{name}_p99_ms"], (name, metrics)
    assert metrics["ttft_median_ms"] < metrics["e2e_latency_median_ms"]
    # llama-server's own timings of every request, and the client's overhead over them: small, never negative by much
    # (printed with -s: README "llamacpp", the client's overhead)
    print({k: round(metrics[k], 2) for k in ("ttft_mean_ms", "server_prompt_mean_ms", "client_ttft_overhead_mean_ms", "tpot_mean_ms",
                                             "server_predicted_per_token_mean_ms", "client_tpot_overhead_mean_ms", "itl_mean_ms",
                                             "schedule_delay_median_ms", "client_cpu_percent", "output_tokens_per_s")})
    assert metrics["server_timed_requests_count"] == 12
    assert 0 < metrics["server_predicted_per_token_mean_ms"] <= metrics["tpot_mean_ms"] * 1.05, metrics
    assert -5 < metrics["client_tpot_overhead_mean_ms"] < 0.5 * metrics["tpot_mean_ms"], metrics
    assert metrics["client_ttft_overhead_mean_ms"] > -5, metrics
    # its gauges, read from /metrics with the key: never more than its 2 slots decoding
    assert metrics["engine_samples_count"] >= 1 and metrics["engine_running_max_count"] <= 2, metrics
    assert relayed and "llamacpp:requests_processing" in relayed[0], relayed
    assert guarded == [401, 404], guarded
    assert "llamacpp=" in (run / "llm.sbatch").read_text()   # the relay's port published to the run's Prometheus
    props = json.loads((run / "results" / "llm" / "llamacpp-props.json").read_text())
    assert props["total_slots"] == 2, props
    for path in run.rglob("*"):
        if path.is_file() and path.relative_to(run).parts[0] != "proxy":   # the relay's key.conf (mode 0600 in a 0700 folder)
            assert key not in path.read_bytes(), path


SEARCH_SLO_MS = 500.0
"""The p90 TTFT bound of the search and of the sweep. A prompt of 4 words takes about one decode step (60-100 ms
with one thread on this loaded machine, 350 ms for 24 words); a request that finds both slots busy waits for one
to free, a whole service (16 tokens, over 1 s here): the bound is met while the slots keep up, missed once they don't."""


def search_client(tmp_path: Path) -> str:
    # up to 64/s: on an idle machine one thread serves about ten times the rate it serves at a load of 12 (a CI run
    # passed every probe to 8/s, the old top, and so found no bracket)
    search = (f"search: {{slo: {{ttft_p90_ms: {SEARCH_SLO_MS:g}}}, rate: {{min: 1, max: 64}}, precision: 0.1,"
              " arrivals: constant, probe_requests: 30, probe_s: 4, warmup_s: 1, settle_s: 30}")
    return client_yaml(tmp_path, "capacity", search, input_length=4)


def sweep_client(tmp_path: Path, name: str, rate: float, port: int) -> str:
    """A fixed-rate point against the running service (by its endpoint: it is another recipe's)."""
    return client_yaml(tmp_path, name, f"target_endpoint: '127.0.0.1:{port}'\nmodel: tiny\nrequest_rate: {rate:.4f}\n"
                                       f"arrivals: constant\nnum_requests: 30\nslo: {{ttft_p99_ms: {SEARCH_SLO_MS:g}}}\n"
                                       "engine_metrics_interval: 0", input_length=4)


def run_to_the_end(recipe: Path, run: Path, names: set[str]) -> dict:
    submit(recipe, run)
    jobs = wait_for(lambda: ended(run), 900, "llama-server and its clients to end", interval=1)
    assert {name: job["state"] for name, job in jobs.items()} == {name: "COMPLETED" for name in names}, logs(run)
    return {name: json.loads((run / "results" / name / "results.json").read_text())["metrics"] for name in names - {"llm"}}


def clients_done(run: Path, names: set[str]) -> dict | None:
    jobs = status(run)
    return jobs if jobs and all(jobs.get(name, {}).get("state") in ENDED for name in names) else None


PRECISION = 0.1
"""the search's precision (its bracket's width) and how far outside the bracket the sweep's judged points lie"""


@pytest.mark.slow
def test_the_capacity_search_agrees_with_a_fixed_rate_sweep_on_llama_server(cluster, model, tmp_path):
    """The search (p90 TTFT within 500 ms, constant arrivals, to 10 %) against llama-server, then, against the same
    server right after (it keeps running; the sweep is a second recipe targeting its endpoint, since its rates come
    from the search), a fixed-rate sweep around the bracket [low, high) found: low / 1.1, low, high, 1.1 x high, each
    point judged as a plain run is (its p90 TTFT, no failed request). Asserted: low / 1.1 passes and 1.1 x high fails,
    so the sweep's own crossing of the bound lies within the search's bracket widened by its precision, and the sweep
    stays on the client's side of its ceiling. Printed, not asserted: whether the highest passing point lies within
    [low, high] itself. That is a coin toss by construction: the bracket is where the bound is crossed, and near the
    crossing the p90 moves steeply with the engine's speed (at low = 8.72/s, the same rate the search passed with no
    request of 30 over 500 ms, two sweeps measured a p90 of 303 and 505 ms on an idle machine)."""
    port = free_port()
    first = tmp_path / "search"
    first.mkdir()
    recipe = first / "llama.yaml"
    recipe.write_text(service_yaml(tmp_path, model, port, free_port()) + "  threads: 1\n  alias: tiny\n  keep_running: true\n"
                      "clients:\n" + search_client(tmp_path))
    submit(recipe, first / "run")
    second = tmp_path / "sweep"
    second.mkdir()
    try:
        jobs = wait_for(lambda: clients_done(first / "run", {"capacity"}), 900, "the search to end", interval=1)
        assert jobs["capacity"]["state"] == "COMPLETED" and jobs["llm"]["state"] == "RUNNING", logs(first / "run")
        found = json.loads((first / "run" / "results" / "capacity" / "results.json").read_text())["metrics"]
        probes = json.loads((first / "run" / "results" / "capacity" / "search.json").read_text())["probes"]
        tried = [(round(p["rate_per_s"], 3), p["verdict"]) for p in probes]
        low, high = found["capacity_low_requests_per_s"], found["capacity_high_requests_per_s"]
        assert found["capacity_client_limited"] == 0 and low > 0 and high is not None, (found, tried)
        assert high / low <= 1.1 + 1e-9 and found["search_probes_count"] <= 12, tried

        rates = {"s1": low / (1 + PRECISION), "s2": low, "s3": high, "s4": high * (1 + PRECISION)}
        recipe = second / "sweep.yaml"
        recipe.write_text("site: local\nclients:\n" + "".join(sweep_client(tmp_path, name, rate, port) for name, rate in rates.items()))
        sweep = run_to_the_end(recipe, second / "run", set(rates))
    finally:
        done = subprocess.run([sys.executable, "-m", "compiler", "cancel", str(first / "run")], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, done.stderr
    passing = {name: m["ttft_p90_ms"] <= SEARCH_SLO_MS and m["requests_failed_count"] == 0 and m["requests_ok_count"] == 30
               for name, m in sweep.items()}
    figures = {name: (round(rates[name], 3), round(m["ttft_p90_ms"], 1), m["client_kept_up"]) for name, m in sweep.items()}
    assert all(m["client_kept_up"] == 1 for m in sweep.values()), figures
    highest = max((rates[name] for name, ok in passing.items() if ok), default=None)
    said = (f"search [{low:.3f}, {high:.3f}) {tried}; sweep (rate, p90 TTFT ms, kept up): {figures}; highest passing {highest}; "
            f"within [low, high]: {highest is not None and low <= highest <= high}")
    print(said)
    assert passing["s1"] and not passing["s4"], said

"""The LLM client's own ceiling on a real engine: the highest open-loop rate one llm_bench process drives before its
schedule delay grows, found against a llama-server fast enough that the client, not the engine, gives out first.

The engine: llama.cpp's llama-server (tests/install-deps.sh builds it) serving the smallest llama tests/tiny_gguf.py
writes (1 layer, width 64, 4 heads, 2 KV heads, FFN 128, 512 pieces: 0.2 ms of its own time for a one-word prompt),
SLOTS slots, one thread pinned to CPU 0; the client (llm_client's generated job script, `orchc compile --site local`,
run with bash) pinned to CPU 1. Each request is one word in and MAX_TOKENS token out: a further streamed token costs
this llama-server about three times what it costs the client (0.13 ms against 0.045 ms of CPU), a request less
(0.6 against 0.9 ms), so only short answers let the client give out first (the last test here measures both).

The ladder: open-loop constant rates (RATES: doubling from 100/s, then steps of 200/s and more near where a 2-core
machine's client gives out), RUNG_S seconds each, until llm_bench's audit says it fell behind (client_kept_up 0).
`max_concurrency` bounds the requests in flight: a client that falls behind sends its late requests back to back,
and without a bound that burst queues in llama-server, whose every result wakes every waiting HTTP thread
(server_response::send, notify_all): the engine would then collapse too (measured: 1000 deferred requests, 77 ms
prompt_ms) and the rung would not say whose limit it was. Asserted, not the machine's speed: the lowest rung kept
up; a rung did not; and at that rung the engine was not the limit, by its own figures: it answered every request
the client sent (served rate = achieved rate), each with exactly MAX_TOKENS tokens; no request waited for a slot
(its requests_deferred gauge stayed 0); its own time per request (`timings.prompt_ms`, its clock) stayed under
the gap between two requests; and its process used under 90 % of its core over the client's measured phase, less
than the client used of its own.

Without llama-server the test fails (no skip). `python -m pytest -s tests/test_client_ceiling.py` prints the ladder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cluster import free_port

ROOT = Path(__file__).resolve().parent.parent
LLAMA_SERVER = Path("/opt/orchc/llama.cpp/bin/llama-server")
SHAPE = {"layers": 1, "width": 64, "heads": 4, "kv_heads": 2, "ffn": 128, "vocab": 512}
SLOTS, MAX_CONCURRENCY = 8, 16
MAX_TOKENS, INPUT_WORDS = 1, 1
RATES = (100, 200, 400, 800, 1000, 1200, 1400, 1600, 2000, 2400, 3200, 4800, 6400)
RUNG_S = 4
TOKEN_RATE, LONG = 200, 16
CLIENT_CPU, SERVER_CPU = "1", "0"
pytestmark = pytest.mark.slow


def server_cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class FastLlamaServer:
    """llama-server on CPU 0, one thread, SLOTS slots of 64 tokens, /metrics on, made as cheap per request as it goes:
    no polling for work (--poll 0), no log (--log-disable: its lines per request cost the engine a sixth of its CPU at
    1000 requests/s), no prompt cache in RAM (-cram 0)."""

    def __init__(self, model: Path, log: Path, port: int) -> None:
        if not LLAMA_SERVER.exists():
            pytest.fail(f"{LLAMA_SERVER} missing: run tests/install-deps.sh (it builds llama-server)")
        self.port, self.output = port, log.open("w")
        self.process = subprocess.Popen(["taskset", "-c", SERVER_CPU, str(LLAMA_SERVER), "-m", str(model), "--host", "127.0.0.1",
                                         "--port", str(port), "-np", str(SLOTS), "-c", str(SLOTS * 64), "-t", "1", "--poll", "0",
                                         "--log-disable", "-cram", "0", "--alias", "tiny", "--metrics", "--no-webui"], stdout=self.output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not self.healthy():
            assert self.process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def cpu_seconds(self) -> float:
        return server_cpu_seconds(self.process.pid)

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        self.output.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FastLlamaServer]:
    sys.path.insert(0, str(ROOT / "tests"))
    import tiny_gguf
    model = tmp_path / "fast.gguf"
    tiny_gguf.write(model, **SHAPE)
    started = FastLlamaServer(model, tmp_path / "server.log", free_port())
    yield started
    started.close()


def rung_name(rate: int) -> str:
    return f"rate{rate}"


def recipe(port: int) -> str:
    """One llm_client per rung, each an open loop at its constant rate for RUNG_S seconds."""
    clients = "".join(
        f"  - name: {rung_name(rate)}\n    type: llm_client\n    target_endpoint: '127.0.0.1:{port}'\n    model: tiny\n"
        f"    api: openai-completions\n    input_length: {INPUT_WORDS}\n    max_tokens: {MAX_TOKENS}\n    request_rate: {rate}\n"
        f"    arrivals: constant\n    max_concurrency: {MAX_CONCURRENCY}\n    num_requests: {rate * RUNG_S}\n"
        f"    warmup_requests: 2\n    metrics_port: 0\n    request_timeout: 20\n    duration: 60\n    after: []\n"
        for rate in RATES)
    return f"clients:\n{clients}"


def most_in_flight(records: list[dict[str, Any]]) -> int:
    """The most requests in flight at once (from each one's send to its end), from the client's own records."""
    events = sorted([(r["send_s"], 1) for r in records] + [(r["send_s"] + (r["end_s"] or 0.0), -1) for r in records])
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


class CpuSampler:
    """The engine's CPU time, sampled every 50 ms in a thread: share_between(t0, t1) is its CPU share between two
    wall-clock times (epoch seconds), such as the start and end of a client's measured phase."""

    def __init__(self, server: FastLlamaServer) -> None:
        self.server, self.samples, self.done = server, [(time.time(), server.cpu_seconds())], threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        while not self.done.wait(0.05):
            self.samples.append((time.time(), self.server.cpu_seconds()))

    def stop(self) -> None:
        self.done.set()
        self.thread.join()
        self.samples.append((time.time(), self.server.cpu_seconds()))

    def at(self, when: float) -> float:
        after = next((i for i, (t, _) in enumerate(self.samples) if t >= when), len(self.samples) - 1)
        (t0, c0), (t1, c1) = self.samples[max(after - 1, 0)], self.samples[after]
        return c0 if t1 <= t0 else c0 + (c1 - c0) * (when - t0) / (t1 - t0)

    def share_between(self, start: float, end: float) -> float:
        return (self.at(end) - self.at(start)) / (end - start)


def run_rung(run: Path, env: dict[str, str], server: FastLlamaServer, rate: int | str) -> dict[str, Any]:
    """One rung: its client's job script on CPU 1; llm_bench's metrics, the engine's CPU share over the client's
    measured phase, the most requests in flight and each request's output tokens."""
    name = rung_name(rate) if isinstance(rate, int) else rate
    sampler = CpuSampler(server)
    try:
        job = subprocess.run(["taskset", "-c", CLIENT_CPU, "bash", f"{name}.sbatch"], cwd=run, env=env, capture_output=True,
                             text=True, timeout=180)
    finally:
        sampler.stop()
    assert job.returncode == 0, (name, job.stderr[-3000:])
    results = run / "results" / name
    metrics = json.loads((results / "metrics.json").read_text())
    measured = json.loads((results / "run.json").read_text())
    records = [json.loads(line) for line in (results / "requests.jsonl").read_text().splitlines() if line.strip()]
    share = sampler.share_between(measured["t0_epoch"], measured["t0_epoch"] + measured["wall_time_s"])
    return {**metrics, "rate": measured["request_rate"], "server_cpu_share": share, "most_in_flight": most_in_flight(records),
            "output_tokens": [r.get("output_tokens") for r in records]}


def line(rung: dict[str, Any]) -> str:
    return (f"{rung['rate']:>5g}/s offered: kept_up {rung['client_kept_up']}, achieved {rung['achieved_rate_per_s']:.0f}/s, "
            f"served {rung['request_throughput_per_s']:.0f}/s ({rung['output_tokens_per_s']:.0f} tokens/s), schedule delay median "
            f"{rung['schedule_delay_median_ms']:.2f} ms p99 {rung['schedule_delay_p99_ms']:.2f} ms, client CPU "
            f"{rung['client_cpu_percent']:.0f} %; engine: CPU {100 * rung['server_cpu_share']:.0f} %, prompt_ms mean {rung['server_prompt_mean_ms']:.2f}, deferred max "
            f"{rung['engine_waiting_max_count']}, in flight max {rung['most_in_flight']}; TTFT median {rung['ttft_median_ms']:.2f} ms")


def test_the_client_gives_out_before_the_engine_and_says_so(orchc, write, tmp_path, server):
    path = write("ceiling.yaml", recipe(server.port))
    done = orchc("compile", str(path), "--site", "local", "-o", "out", cwd=tmp_path)
    assert done.code == 0, done.err
    run = tmp_path / "out" / "ceiling"
    env = {**os.environ, "ORCHC_RUN_DIR": str(run), "HOME": str(tmp_path)}
    ladder = []
    for rate in RATES:
        rung = run_rung(run, env, server, rate)
        print(line(rung))
        ladder.append(rung)
        if rung["client_kept_up"] == 0:
            break
    first = ladder[0]
    assert first["client_kept_up"] == 1, line(first)
    behind = ladder[-1]
    assert behind["client_kept_up"] == 0, f"the client kept up to {RATES[-1]}/s: the ladder found no ceiling"
    for rung in ladder:
        # every request answered, each with exactly MAX_TOKENS tokens (the tiny model never ends a stream early)
        assert (rung["requests_ok_count"], rung["requests_failed_count"], rung["requests_cut_count"]) == (rung["rate"] * RUNG_S, 0, 0), line(rung)
        assert set(rung["output_tokens"]) == {MAX_TOKENS}, line(rung)
    # the engine was not the limit where the client fell behind
    assert behind["request_throughput_per_s"] >= 0.95 * behind["achieved_rate_per_s"], line(behind)
    assert behind["engine_waiting_max_count"] == 0, line(behind)
    assert behind["server_prompt_mean_ms"] < 1000.0 / behind["achieved_rate_per_s"], line(behind)
    assert behind["server_cpu_share"] < 0.9, line(behind)
    assert behind["server_cpu_share"] * 100 < behind["client_cpu_percent"], line(behind)


def test_a_capacity_search_against_the_fast_engine_flags_the_clients_limit_not_the_servers(orchc, write, tmp_path, server):
    """The capacity search (llm_search.py) on the same engine with an SLO the engine meets at any rate the client can
    send (TTFT p99 within a second): it doubles until a probe at which the client fell behind, stops there and reports
    capacity_client_limited 1, its capacity the highest probe that passed below it, never the rate the client could
    not send (issue 22 item 2)."""
    search = ("{slo: {ttft_p99_ms: 1000}, rate: {min: 200, max: 6400}, arrivals: constant, probe_requests: 300, probe_s: 3,"
              " warmup_s: 0.5, settle_s: 10}")
    path = write("search.yaml", f"client:\n  name: search\n  type: llm_client\n  target_endpoint: '127.0.0.1:{server.port}'\n"
                                f"  model: tiny\n  api: openai-completions\n  input_length: {INPUT_WORDS}\n  max_tokens: {MAX_TOKENS}\n"
                                f"  max_concurrency: {MAX_CONCURRENCY}\n  warmup_requests: 2\n  metrics_port: 0\n  request_timeout: 20\n"
                                f"  duration: 150\n  search: {search}\n")
    assert orchc("compile", str(path), "--site", "local", "-o", "out", cwd=tmp_path).code == 0
    run = tmp_path / "out" / "search"
    job = subprocess.run(["taskset", "-c", CLIENT_CPU, "bash", "search.sbatch"], cwd=run, capture_output=True, text=True, timeout=240,
                         env={**os.environ, "ORCHC_RUN_DIR": str(run), "HOME": str(tmp_path)})
    assert job.returncode == 0, job.stderr[-3000:]
    results = run / "results" / "search"
    metrics = json.loads((results / "metrics.json").read_text())
    probes = json.loads((results / "search.json").read_text())["probes"]
    for probe in probes:
        figures = probe["metrics"]
        print(f"probe {probe['probe']} at {probe['rate_per_s']:g}/s: {probe['verdict']}, kept_up {probe['client_kept_up']}, served "
              f"{figures['request_throughput_per_s']:.0f}/s, sent {figures['achieved_rate_per_s']:.0f}/s, schedule delay median "
              f"{figures['schedule_delay_median_ms']:.2f} ms, client CPU {figures['client_cpu_percent']:.0f} %, TTFT p99 "
              f"{figures['ttft_p99_ms']:.2f} ms")
    print({key: metrics[key] for key in ("capacity_requests_per_s", "capacity_high_requests_per_s", "capacity_client_limited")})
    last = probes[-1]
    assert last["client_kept_up"] == 0 and all(p["client_kept_up"] == 1 and p["verdict"] == "pass" for p in probes[:-1]), probes
    assert metrics["capacity_client_limited"] == 1
    assert metrics["capacity_requests_per_s"] == probes[-2]["rate_per_s"] < last["rate_per_s"]


def test_a_streamed_token_costs_this_engine_more_cpu_than_the_client(orchc, write, tmp_path, server):
    """Why the ladder's requests are one token long: at one rate (TOKEN_RATE/s, both keep up), a request of LONG
    tokens against one of 1 token, each side's CPU per request (the client's client_cpu_percent, the engine's from
    /proc over the client's measured phase); the difference over LONG - 1 is what one more streamed token costs. For
    the client it is one chunk read and parsed; for llama-server one decode step and one chunk written: more, so with
    long answers this engine gives out first."""
    clients = "".join(
        f"  - name: tokens{tokens}\n    type: llm_client\n    target_endpoint: '127.0.0.1:{server.port}'\n    model: tiny\n"
        f"    api: openai-completions\n    input_length: {INPUT_WORDS}\n    max_tokens: {tokens}\n    request_rate: {TOKEN_RATE}\n"
        f"    arrivals: constant\n    max_concurrency: {MAX_CONCURRENCY}\n    num_requests: {TOKEN_RATE * RUNG_S}\n"
        f"    warmup_requests: 2\n    metrics_port: 0\n    request_timeout: 20\n    duration: 60\n    after: []\n"
        for tokens in (1, LONG))
    assert orchc("compile", str(write("tokens.yaml", f"clients:\n{clients}")), "--site", "local", "-o", "out", cwd=tmp_path).code == 0
    run = tmp_path / "out" / "tokens"
    env = {**os.environ, "ORCHC_RUN_DIR": str(run), "HOME": str(tmp_path)}
    cost = {}
    for tokens in (1, LONG):
        rung = run_rung(run, env, server, f"tokens{tokens}")
        assert rung["client_kept_up"] == 1 and set(rung["output_tokens"]) == {tokens}, line(rung)
        cost[tokens] = (rung["client_cpu_percent"] * 10.0 / TOKEN_RATE, rung["server_cpu_share"] * 1000.0 / TOKEN_RATE)
        print(line(rung))
    client_ms, engine_ms = ((cost[LONG][side] - cost[1][side]) / (LONG - 1) for side in (0, 1))
    print(f"CPU per request of 1 token: client {cost[1][0]:.3f} ms, engine {cost[1][1]:.3f} ms; per further streamed token: "
          f"client {client_ms:.3f} ms, engine {engine_ms:.3f} ms")
    assert 0 < client_ms < engine_ms

"""service_defs/files/llm_bench.py against a server with known timing (tests/llm_standin.py).

The stand-in streams TOKENS tokens: the first F seconds after a request gets one of its PARALLELISM
slots, then one every D seconds; requests beyond PARALLELISM wait, first come first served. So one
request takes S = F + (TOKENS - 1) * D of service, and every figure the benchmark reports has a value
the test can compute: TTFT = queue wait + F, ITL = TPOT = D, E2E = TTFT + (TOKENS - 1) * D, and
request throughput = completed requests / wall time.

Two references. The server's own record of each request (tests/llm_standin.py logs when it got the
request and when it wrote each token, on the same monotonic clock) is what the client should have
seen: TTFT and E2E distributions must match it within 15 ms + 5 % per value, the averages of token
gaps (TPOT, ITL mean and median) within 1.5 ms + 2 %, the request rate within 10 % (measured at load
average 5 on the 2-core VM: TTFT within 4 ms of the server's record, token-gap averages within 0.1 ms).
The nominal timing (F, D, the queue) must hold too, looser: 30 ms + 20 % per value, 20 % for rates,
because under load the server itself sleeps late and a queue adds up every late service ahead of it
(measured at load average 7, while other suites ran: a queued TTFT of 495 ms for a nominal 440 ms).
A wrong definition is outside these bounds: TPOT divided by N instead of N - 1 is 4 ms off, one
service of queue wait is 130 ms, ITL per request instead of pooled changes its percentiles. The
delays (20-50 ms) keep the file at about 20 s.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "service_defs" / "files" / "llm_bench.py"
STANDIN = ROOT / "tests" / "llm_standin.py"
sys.path.insert(0, str(BENCH.parent))
import llm_bench  # noqa: E402

F, D, TOKENS = 0.05, 0.02, 5
S = F + (TOKENS - 1) * D          # 0.13 s of service per request
CLIENT = (15.0, 0.05)       # against the server's record: ms + share of the value
AVERAGE = (1.5, 0.02)       # averages of token gaps against the server's record
NOMINAL = (30.0, 0.20)      # against the nominal timing
RATE, NOMINAL_RATE = 0.10, 0.20


def inclusive_percentile(values: list[float], p: int) -> float:
    """The reference: statistics.quantiles' "inclusive" method is numpy's default linear interpolation."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1] if p not in (0, 100) else sorted(values)[-1 if p else 0]


class Server:
    def __init__(self, *args: str) -> None:
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"llm-standin-{os.getpid()}-{time.monotonic_ns()}.jsonl"
        self.process = subprocess.Popen([sys.executable, str(STANDIN), "--port", "0", "--log", str(self.log), *args],
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()   # "listening on HOST:PORT"
        assert line.startswith("listening on "), line
        self.port = int(line.rsplit(":", 1)[1])

    def _log(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def requests(self) -> list[dict]:
        return [entry for entry in self._log() if "body" in entry]

    def timings(self) -> list[dict]:
        return [entry for entry in self._log() if "timing" in entry]

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        self.log.unlink(missing_ok=True)


@pytest.fixture
def server():
    started: list[Server] = []

    def start(parallelism: int = 1, tokens: int = TOKENS, *extra: str) -> Server:
        s = Server("--tokens", str(tokens), "--first-token-delay", str(F), "--inter-token-delay", str(D),
                   "--parallelism", str(parallelism), *extra)
        started.append(s)
        return s
    yield start
    for s in started:
        s.close()


def bench(tmp_path: Path, port: int, *args: str, api: str = "openai-completions", check: bool = True,
          results: str = "res") -> tuple[dict, list[dict], subprocess.CompletedProcess[str]]:
    prompts = tmp_path / "prompts.json"
    if not prompts.exists():
        prompts.write_text(json.dumps(["one two three", "four five six seven"]))
    done = subprocess.run([sys.executable, str(BENCH), "run", str(tmp_path / results), "--host", "127.0.0.1",
                           "--port", str(port), "--api", api, "--model", "tiny", "--prompts-json", str(prompts),
                           "--max-tokens", "64", *args], capture_output=True, text=True, timeout=60)
    if check:
        assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / results / "metrics.json").read_text())
    records = [json.loads(line) for line in (tmp_path / results / "requests.jsonl").read_text().splitlines()]
    return metrics, records, done


def near(value: float | None, expected: float, tolerance: tuple[float, float]) -> bool:
    return value is not None and abs(value - expected) <= tolerance[0] + tolerance[1] * abs(expected)


def assert_distribution(metrics: dict, name: str, expected_s: list[float], tolerance: tuple[float, float]) -> None:
    """mean, median, p90, p95, p99, min and max of `name` against those of the expected values."""
    ms = [v * 1000 for v in expected_s]
    want = {"mean": statistics.fmean(ms), "median": statistics.median(ms), "min": min(ms), "max": max(ms),
            **{f"p{p}": inclusive_percentile(ms, p) for p in (90, 95, 99)}}
    for label, value in want.items():
        got = metrics[f"{name}_{label}_ms"]
        assert near(got, value, tolerance), (name, label, got, value, tolerance)


def server_record(s: Server, skip: int = 0) -> dict[str, list[float]]:
    """What the server saw, per completed request (after the first `skip`, the warm-up): TTFT, E2E, TPOT from
    its arrival and token times, ITL pooled, and its span (first arrival to last token)."""
    timings = [t["timing"] for t in s.timings() if not t["timing"].get("cut")][skip:]
    tokens = [t["tokens"] for t in timings]
    return {"ttft": [t["tokens"][0] - t["received"] for t in timings],
            "e2e_latency": [t["tokens"][-1] - t["received"] for t in timings],
            "tpot": [(x[-1] - x[0]) / (len(x) - 1) for x in tokens if len(x) > 1],
            "itl": [b - a for x in tokens for a, b in itertools.pairwise(x)],
            "span": [max(x[-1] for x in tokens) - min(t["received"] for t in timings)]}


def assert_timing(m: dict, s: Server, nominal: dict[str, list[float]]) -> None:
    """TTFT and E2E against the server's record and the nominal values; TPOT and ITL averages likewise."""
    seen = server_record(s)
    for name in ("ttft", "e2e_latency"):
        assert_distribution(m, name, seen[name], CLIENT)
        assert_distribution(m, name, nominal[name], NOMINAL)
    for name in ("tpot", "itl"):
        assert near(m[f"{name}_mean_ms"], statistics.fmean(seen[name]) * 1000, AVERAGE), (name, m[f"{name}_mean_ms"])
        assert near(m[f"{name}_median_ms"], statistics.median(seen[name]) * 1000, AVERAGE), (name, m[f"{name}_median_ms"])
        assert near(m[f"{name}_mean_ms"], D * 1000, NOMINAL)
    assert m["request_throughput_per_s"] == pytest.approx(len(seen["ttft"]) / seen["span"][0], rel=RATE)


# ---------------------------------------------------------------------------------------------- percentiles

@pytest.mark.parametrize(("values", "p", "expected"), [
    ([1, 2, 3, 4], 50, 2.5),              # rank (4-1)*0.5 = 1.5: halfway between 2 and 3
    ([1, 2, 3, 4], 90, 3.7),              # rank 2.7: 3 + 0.7 * (4 - 3)
    ([1, 2, 3, 4], 99, 3.97),             # rank 2.97
    ([4, 1, 3, 2], 0, 1),                 # order of the input does not matter
    ([4, 1, 3, 2], 100, 4),
    ([10], 99, 10),
    (list(range(1, 11)), 95, 9.55),       # rank 9 * 0.95 = 8.55: 9 + 0.55
    ([0.5, 100.0], 90, 90.05),            # rank 0.9: 0.5 + 0.9 * 99.5
])
def test_percentile_is_numpy_linear(values, p, expected):
    assert llm_bench.percentile(values, p) == pytest.approx(expected)


def test_percentile_of_nothing_is_none_and_metrics_are_null():
    assert llm_bench.percentile([], 50) is None
    metrics = llm_bench.metrics_of([], {"wall_time_s": 1.0})
    assert metrics["ttft_p99_ms"] is None and metrics["request_throughput_per_s"] == 0.0


def test_metrics_of_hand_made_records():
    """The definitions on two requests whose figures are worked out by hand (vLLM's calculate_metrics)."""
    records = [
        {"ok": True, "send_s": 0.0, "end_s": 0.5, "ttft_s": 0.1, "e2e_s": 0.4, "chunk_times_s": [0.1, 0.2, 0.4],
         "input_tokens": 10, "output_tokens": 3},
        {"ok": True, "send_s": 0.2, "end_s": 0.3, "ttft_s": 0.3, "e2e_s": 0.3, "chunk_times_s": [0.3],
         "input_tokens": 5, "output_tokens": 1},                                     # 1 token: no TPOT, no ITL
        {"ok": False, "cut": False, "send_s": 0.3, "end_s": 0.01, "chunk_times_s": [], "error": "HTTP 500"},
    ]
    m = llm_bench.metrics_of(records, {"wall_time_s": 2.0})
    assert (m["requests_ok_count"], m["requests_failed_count"], m["requests_cut_count"]) == (2, 1, 0)
    assert m["request_throughput_per_s"] == pytest.approx(1.0)           # 2 ok / 2 s
    assert m["output_tokens_per_s"] == pytest.approx(2.0)                # 4 tokens / 2 s
    assert m["total_tokens_per_s"] == pytest.approx(9.5)                 # (15 + 4) / 2 s
    assert m["tpot_mean_ms"] == pytest.approx(150.0)                     # (0.4 - 0.1) / (3 - 1)
    assert m["itl_mean_ms"] == pytest.approx(150.0) and m["itl_min_ms"] == pytest.approx(100.0)  # gaps 0.1, 0.2
    assert m["itl_max_ms"] == pytest.approx(200.0)
    assert m["ttft_mean_ms"] == pytest.approx(200.0) and m["ttft_median_ms"] == pytest.approx(200.0)
    assert m["e2e_latency_p90_ms"] == pytest.approx(390.0)               # 300 + 0.9 * (400 - 300)
    # without run.json's wall time (a killed run), the run lasted until its last request ended: 0.5 s
    assert llm_bench.metrics_of(records, {})["wall_time_s"] == pytest.approx(0.5)


def test_metrics_of_the_clients_audit_of_itself():
    """Schedule delay (actual - intended send), rates, latency from the intended send, CPU and the verdict, on
    three requests worked out by hand: sent 1, 20 and 3 ms late, the last at 1.003 s for 1.0 s."""
    records = [
        {"ok": True, "intended_s": 0.0, "send_s": 0.001, "end_s": 0.5, "ttft_s": 0.1, "e2e_s": 0.4, "chunk_times_s": [0.1, 0.4],
         "input_tokens": 1, "output_tokens": 2},
        {"ok": True, "intended_s": 0.5, "send_s": 0.52, "end_s": 0.3, "ttft_s": 0.3, "e2e_s": 0.3, "chunk_times_s": [0.3],
         "input_tokens": 1, "output_tokens": 1},
        {"ok": False, "cut": False, "intended_s": 1.0, "send_s": 1.003, "end_s": 0.01, "chunk_times_s": [], "error": "HTTP 500"},
    ]
    run = {"wall_time_s": 2.0, "request_rate": 3.0, "client_cpu_s": 0.5}
    m = llm_bench.metrics_of(records, run)
    assert m["schedule_delay_median_ms"] == pytest.approx(3.0)               # of 1, 3, 20: every request sent
    assert m["schedule_delay_p90_ms"] == pytest.approx(16.6)                 # rank 1.8: 3 + 0.8 * 17
    assert m["schedule_delay_p99_ms"] == pytest.approx(19.66)
    assert m["requested_rate_per_s"] == 3.0
    assert m["scheduled_rate_per_s"] == pytest.approx(3.0)                   # 3 requests / 1.0 s
    assert m["achieved_rate_per_s"] == pytest.approx(3 / 1.003)
    assert m["e2e_from_schedule_mean_ms"] == pytest.approx((401 + 320) / 2)  # successful ones: delay + E2E
    assert m["ttft_from_schedule_max_ms"] == pytest.approx(320.0)
    assert m["e2e_latency_mean_ms"] == pytest.approx(350.0)                  # vLLM's definition unchanged
    assert (m["client_cpu_s"], m["client_cpu_percent"]) == (0.5, pytest.approx(25.0))
    assert m["client_kept_up"] == 1
    # late at the median: not kept up
    late = [{**r, "send_s": r["intended_s"] + 0.02} for r in records]
    assert llm_bench.metrics_of(late, run)["client_kept_up"] == 0
    # on time at the median, but the last one 0.2 s late: 3 / 1.2 s is 83 % of the schedule's rate
    behind = [records[0], {**records[1], "send_s": 0.502}, {**records[2], "send_s": 1.2}]
    assert llm_bench.metrics_of(behind, run)["schedule_delay_median_ms"] < 10
    assert llm_bench.metrics_of(behind, run)["client_kept_up"] == 0
    # closed loop: no requested rate, the verdict is the schedule delay's
    closed = llm_bench.metrics_of(behind, {"wall_time_s": 2.0})
    assert (closed["requested_rate_per_s"], closed["scheduled_rate_per_s"], closed["client_kept_up"]) == (None, None, 1)
    # records of an older client (no intended send time), a killed run (no CPU): unknown, not a verdict
    old = llm_bench.metrics_of([{k: v for k, v in r.items() if k != "intended_s"} for r in records], {})
    assert (old["schedule_delay_median_ms"], old["client_kept_up"], old["client_cpu_percent"]) == (None, None, None)


def test_slo_goodput_and_the_p99_check_on_hand_made_records():
    """vLLM's per-request rule (each figure <= its bound, TPOT 0 for one token) and MLPerf's p99 check, worked out by
    hand: TTFT 100, 300, 300 ms; TPOT 150, 0, 50 ms; a failed and a cut request."""
    records = [
        {"ok": True, "send_s": 0.0, "end_s": 0.5, "ttft_s": 0.1, "e2e_s": 0.4, "chunk_times_s": [0.1, 0.2, 0.4],
         "input_tokens": 10, "output_tokens": 3},
        {"ok": True, "send_s": 0.2, "end_s": 0.3, "ttft_s": 0.3, "e2e_s": 0.3, "chunk_times_s": [0.3],
         "input_tokens": 5, "output_tokens": 1},
        {"ok": True, "send_s": 0.3, "end_s": 0.4, "ttft_s": 0.3, "e2e_s": 0.4, "chunk_times_s": [0.3, 0.35, 0.4],
         "input_tokens": 5, "output_tokens": 3},
        {"ok": False, "cut": False, "send_s": 0.3, "end_s": 0.01, "chunk_times_s": [], "error": "HTTP 500"},
        {"ok": False, "cut": True, "send_s": 1.5, "end_s": 0.05, "chunk_times_s": [], "error": "cut at duration"},
    ]
    run = {"wall_time_s": 2.0}
    assert "goodput_requests_per_s" not in llm_bench.metrics_of(records, run)      # no SLO, no SLO metrics
    m = llm_bench.metrics_of(records, {**run, "slo": {"ttft_p99_ms": 300}})
    # all three successes are within 300 ms (the bound is inclusive); the failure misses; the cut one (50 ms in,
    # no token yet, under the bound) is not judged
    assert m["goodput_requests_per_s"] == pytest.approx(1.5) and m["goodput_tokens_per_s"] == pytest.approx(3.5)
    assert m["slo_met_ratio"] == pytest.approx(3 / 4) and m["slo_p99_met"] == 0      # a failed request: MLPerf fails
    m = llm_bench.metrics_of(records[:3], {**run, "slo": {"ttft_p99_ms": 300, "tpot_p99_ms": 100}})
    assert m["goodput_requests_per_s"] == pytest.approx(1.0)                      # TPOT 150 ms misses; 1 token: TPOT 0
    assert m["slo_met_ratio"] == pytest.approx(2 / 3) and m["slo_p99_met"] == 0    # tpot_p99_ms 149 > 100
    m = llm_bench.metrics_of(records[:3], {**run, "slo": {"ttft_p99_ms": 299, "e2e_latency_p99_ms": 1000}})
    assert m["slo_met_ratio"] == pytest.approx(1 / 3) and m["slo_p99_met"] == 0    # p99 TTFT 300 > 299
    m = llm_bench.metrics_of(records[:3], {**run, "slo": {"tpot_p99_ms": 151}})
    assert (m["slo_met_ratio"], m["slo_p99_met"]) == (1.0, 1)
    one_token = llm_bench.metrics_of(records[1:2], {**run, "slo": {"tpot_p99_ms": 10}})  # no TPOT: 0, as per request
    assert (one_token["slo_met_ratio"], one_token["slo_p99_met"]) == (1.0, 1)
    # a cut request already past a bound missed it: no token after 400 ms against a TTFT bound of 300 ms
    late = {**records[4], "end_s": 0.4}
    m = llm_bench.metrics_of([*records[:3], late], {**run, "slo": {"ttft_p99_ms": 300}})
    assert m["slo_met_ratio"] == pytest.approx(3 / 4)
    nothing = llm_bench.metrics_of([], {**run, "slo": {"ttft_p99_ms": 300}})
    assert [nothing[k] for k in ("goodput_requests_per_s", "slo_met_ratio", "slo_p99_met")] == [None, None, None]


@pytest.mark.parametrize("text", ['{"ttft_ms": 5}', '{"ttft_p99_ms": 0}', '{"ttft_p99_ms": true}', "{}", "[1]", "x"])
def test_a_bad_slo_argument_is_refused(text):
    with pytest.raises(SystemExit):
        llm_bench.parser().parse_args(["run", "r", "--host", "h", "--port", "1", "--api", "ollama", "--slo", text])


def expected_ttfts(count: int, rate: float, seed: int, slots: int, first: float, service: float) -> list[float]:
    """What each request's TTFT should be at the stand-in: its seeded Poisson arrival (llm_bench.arrival_times) waits
    for the first of `slots` FIFO slots to free, then `first` to its first token; a slot is busy `service` seconds."""
    free = [0.0] * slots
    found = []
    for arrival in llm_bench.arrival_times(count, rate, seed):
        start = max(arrival, heapq.heappop(free))
        heapq.heappush(free, start + service)
        found.append(start - arrival + first)
    return found


def slo_sweep_run(folder: Path, points: list[tuple[float, dict]], slo: dict) -> Path:
    """A run folder of a sweep over bench.request_rate, one repeat per point, with these llm_bench metrics."""
    jobs, manifest_jobs, sweep_points = [], [], []
    for number, (value, metrics) in enumerate(points, 1):
        point, name = f"p{number:02d}", f"bench-p{number:02d}-r1"
        jobs.append({"name": name, "type": "llm_client", "role": "client", "target": None, "script": f"{name}.sbatch",
                     "slurm_id": str(100 + number), "submitted": "2026-01-01T00:00:00Z"})
        manifest_jobs.append({"name": name, "point": point, "repeat": 1})
        sweep_points.append({"point": point, "values": {"bench.request_rate": value}})
        (folder / "results" / name).mkdir(parents=True)
        (folder / "results" / name / "results.json").write_text(json.dumps(
            {"schema": "orchc-results/1", "status": "complete", "metrics": metrics, "parameters": {"slo": slo}}))
    (folder / "run.json").write_text(json.dumps({"recipe": "r", "site": "local", "created": "2026-01-01T00:00:00Z",
                                                 "run_dir": str(folder), "state": "submitted", "outcome": "completed",
                                                 "error": None, "jobs": jobs}))
    (folder / "manifest.json").write_text(json.dumps({"recipe": "r", "jobs": manifest_jobs, "sweep": {
        "keys": ["bench.request_rate"], "repeat": 1, "points": sweep_points}}))
    return folder


def test_a_sweep_of_rates_meets_the_slo_up_to_the_servers_capacity(tmp_path, orchc):
    """2 slots of 70 ms (first token at 40 ms, 3 more 10 ms apart): capacity 28.6 requests/s. 16 requests at 8/s
    and 16/s, whose seeded arrivals never wait more than 13 ms for a slot, meet a TTFT bound of 120 ms; at 60/s they
    queue, and only the requests the queue simulation (expected_ttfts) puts under the bound meet it. So goodput
    is the throughput up to 16/s, less at 60/s, and `orchc results` names 16/s as the highest point meeting the SLO.
    A request within 40 ms of the bound may land on either side (jitter of a loaded machine)."""
    first, gap, tokens, slots, bound = 0.04, 0.01, 4, 2, 120.0
    service = first + (tokens - 1) * gap
    s = Server("--tokens", str(tokens), "--first-token-delay", str(first), "--inter-token-delay", str(gap),
               "--parallelism", str(slots))
    try:
        measured = []
        for rate in (8.0, 16.0, 60.0):
            m, records, _ = bench(tmp_path, s.port, "--num-requests", "16", "--request-rate", str(rate),
                                  "--slo", json.dumps({"ttft_p99_ms": bound}), results=f"r{rate:g}")
            expected = [t * 1000 for t in expected_ttfts(16, rate, 0, slots, first, service)]
            surely = sum(1 for t in expected if t < bound - 40)
            maybe = sum(1 for t in expected if abs(t - bound) <= 40)
            assert surely <= m["slo_met_ratio"] * 16 <= surely + maybe, (rate, sorted(expected), m["slo_met_ratio"])
            good = [r for r in records if r["ok"] and r["ttft_s"] * 1000 <= bound]
            assert m["goodput_requests_per_s"] == pytest.approx(len(good) / m["wall_time_s"])
            assert m["goodput_tokens_per_s"] == pytest.approx(sum(r["output_tokens"] for r in good) / m["wall_time_s"])
            measured.append((rate, m))
    finally:
        s.close()
    low, middle, high = (m for _, m in measured)
    for m in (low, middle):
        assert (m["slo_met_ratio"], m["slo_p99_met"]) == (1.0, 1)
        assert m["goodput_requests_per_s"] == m["request_throughput_per_s"]
    assert high["slo_met_ratio"] < 0.5 and high["slo_p99_met"] == 0 and high["ttft_p99_ms"] > bound
    assert high["goodput_requests_per_s"] < 0.5 * high["request_throughput_per_s"]
    run = slo_sweep_run(tmp_path / "run", measured, {"ttft_p99_ms": bound})
    done = orchc("results", run)
    assert done.code == 0, done.err
    line = next(line for line in done.out.splitlines() if line.startswith("SLO "))
    assert line.startswith(f"SLO (bench): highest point meeting it p02 bench.request_rate=16.0, goodput "
                           f"{middle['goodput_requests_per_s']:.4g} requests/s (n=1), slo_met_ratio 1.000; "
                           f"p03 bench.request_rate=60.0 misses it ({high['slo_met_ratio']:.3f})"), line


# ---------------------------------------------------------------------------------------------- closed loop

def test_closed_loop_one_at_a_time(server, tmp_path):
    s = server(parallelism=1)
    m, records, _ = bench(tmp_path, s.port, "--num-requests", "6", "--concurrent", "1")
    assert (m["requests_ok_count"], m["requests_failed_count"]) == (6, 0)
    assert_timing(m, s, {"ttft": [F] * 6, "e2e_latency": [S] * 6})
    assert m["request_throughput_per_s"] == pytest.approx(1 / S, rel=NOMINAL_RATE)
    assert m["output_tokens_per_s"] == pytest.approx(6 * TOKENS / m["wall_time_s"])
    # input tokens from the server's usage: the stand-in counts the prompt's words (3 and 4, in turn)
    assert m["input_tokens_count"] == 3 * 3 + 3 * 4 and m["output_tokens_count"] == 6 * TOKENS
    assert m["total_tokens_per_s"] == pytest.approx((21 + 30) / m["wall_time_s"])
    assert m["wall_time_s"] == pytest.approx(6 * S, rel=NOMINAL_RATE)
    assert {r["tokens_source"] for r in records} == {"server"}
    assert all(len(r["chunk_times_s"]) == TOKENS for r in records)
    # the client's audit: each request meant to go when the one before ended (the first at the start), and did
    records.sort(key=lambda r: r["send_s"])
    assert records[0]["intended_s"] == 0.0
    for before, after in itertools.pairwise(records):
        assert before["send_s"] + before["end_s"] <= after["intended_s"] <= after["send_s"]
    assert m["schedule_delay_median_ms"] < 10 and m["client_kept_up"] == 1 and m["requested_rate_per_s"] is None
    assert 0 < m["client_cpu_percent"] < 100 * (os.cpu_count() or 1)


@pytest.mark.slow
def test_closed_loop_four_workers_against_one_slot_shows_the_queue_in_ttft(server, tmp_path):
    """4 in flight, 1 served at a time: request k of the first four waits k * S; every later one waits for
    the three ahead of it, 3 * S. Throughput stays 1 / S, whatever the concurrency."""
    s = server(parallelism=1)
    m, _, _ = bench(tmp_path, s.port, "--num-requests", "8", "--concurrent", "4", api="openai-chat")
    ttfts = [F, S + F, 2 * S + F] + [3 * S + F] * 5
    assert_timing(m, s, {"ttft": ttfts, "e2e_latency": [t + (TOKENS - 1) * D for t in ttfts]})
    assert m["request_throughput_per_s"] == pytest.approx(1 / S, rel=NOMINAL_RATE)
    assert m["wall_time_s"] == pytest.approx(8 * S, rel=NOMINAL_RATE)
    assert s.requests()[0]["path"] == "/v1/chat/completions"


@pytest.mark.slow
def test_closed_loop_four_workers_against_four_slots(server, tmp_path):
    """No queue: every TTFT is F, and four times the throughput of one slot."""
    s = server(parallelism=4)
    m, _, _ = bench(tmp_path, s.port, "--num-requests", "8", "--concurrent", "4", api="ollama")
    assert_timing(m, s, {"ttft": [F] * 8, "e2e_latency": [S] * 8})
    assert m["request_throughput_per_s"] == pytest.approx(4 / S, rel=NOMINAL_RATE)
    # Ollama's own timings, as the stand-in reports them (ns -> ms)
    assert m["load_duration_mean_ms"] == 0
    assert m["prompt_eval_duration_mean_ms"] == pytest.approx(F * 1000)
    assert m["eval_duration_mean_ms"] == pytest.approx((TOKENS - 1) * D * 1000)
    bodies = [r["body"] for r in s.requests()]
    assert all(b["stream"] is True and b["options"] == {"num_predict": 64, "temperature": 0.0, "seed": 0} for b in bodies)
    assert json.loads((tmp_path / "res" / "environment.json").read_text()) == \
        {"server_version": "0.0.0-llm-standin", "model": "tiny", "api": "ollama"}


# ---------------------------------------------------------------------------------------------- open loop

@pytest.mark.slow
def test_open_loop_poisson_arrivals_at_a_rate(server, tmp_path):
    """10 requests at 20/s with room for all: arrivals are Poisson (uneven gaps, the last at 10 / 20 s as
    vLLM scales them), the same for the same seed; nothing queues, so TTFT is F and E2E is S."""
    s = server(parallelism=16)
    m, records, _ = bench(tmp_path, s.port, "--num-requests", "10", "--request-rate", "20", "--seed", "7")
    sends = sorted(r["send_s"] for r in records)
    assert near(sends[-1] * 1000, 10 / 20 * 1000, CLIENT)
    gaps = [b - a for a, b in itertools.pairwise(sends)]
    assert statistics.pstdev(gaps) > 0.3 * statistics.fmean(gaps)        # exponential gaps, not a metronome
    assert_timing(m, s, {"ttft": [F] * 10, "e2e_latency": [S] * 10})
    assert m["wall_time_s"] == pytest.approx(sends[-1] + S, rel=NOMINAL_RATE)
    _, again, _ = bench(tmp_path, s.port, "--num-requests", "10", "--request-rate", "20", "--seed", "7", results="again")
    assert all(near(a * 1000, b * 1000, CLIENT) for a, b in zip(sends, sorted(r["send_s"] for r in again)))
    _, other, _ = bench(tmp_path, s.port, "--num-requests", "10", "--request-rate", "20", "--seed", "8", results="other")
    assert any(abs(a - b) > 0.03 for a, b in zip(sends, sorted(r["send_s"] for r in other)))


@pytest.mark.slow
def test_open_loop_max_concurrency_holds_arrivals_back(server, tmp_path):
    """At 100/s with max_concurrency 1, each request waits for the one before to end."""
    s = server(parallelism=4)
    m, records, _ = bench(tmp_path, s.port, "--num-requests", "5", "--request-rate", "100", "--max-concurrency", "1",
                          api="openai-chat")
    records.sort(key=lambda r: r["send_s"])
    for before, after in itertools.pairwise(records):
        assert after["send_s"] >= before["send_s"] + before["end_s"] - 0.001
    assert_timing(m, s, {"ttft": [F] * 5, "e2e_latency": [S] * 5})
    assert m["request_throughput_per_s"] == pytest.approx(1 / S, rel=NOMINAL_RATE)


def test_a_rate_the_client_cannot_send_is_not_kept_up(server, tmp_path):
    """5 requests at 100/s (all due by 0.05 s) but at most 1 in flight, S = 0.13 s each: request k goes at about
    k * S, so the median one is ~0.2 s late and 5 requests take ~0.5 s to send. The vLLM-compatible latencies
    stay S (the slot wait is not in them); measured from the intended send time they hold the wait."""
    s = server(parallelism=4)
    m, records, _ = bench(tmp_path, s.port, "--num-requests", "5", "--request-rate", "100", "--max-concurrency", "1")
    assert sorted(r["intended_s"] for r in records) == pytest.approx(llm_bench.arrival_times(5, 100.0, 0))
    assert m["client_kept_up"] == 0
    assert m["schedule_delay_median_ms"] > 150 and m["requested_rate_per_s"] == 100.0
    assert m["achieved_rate_per_s"] < 20 and m["scheduled_rate_per_s"] == pytest.approx(100.0)
    assert_timing(m, s, {"ttft": [F] * 5, "e2e_latency": [S] * 5})
    assert m["e2e_from_schedule_mean_ms"] == pytest.approx(m["e2e_latency_mean_ms"] + m["schedule_delay_mean_ms"])
    assert m["ttft_from_schedule_median_ms"] > m["ttft_median_ms"] + 150


def test_an_easy_rate_is_kept_up(server, tmp_path):
    """20 requests at 10/s against 16 slots: every one goes when the schedule says, within a few ms."""
    s = server(parallelism=16)
    m, records, _ = bench(tmp_path, s.port, "--num-requests", "20", "--request-rate", "10", "--seed", "3", api="openai-chat")
    assert sorted(r["intended_s"] for r in records) == pytest.approx(llm_bench.arrival_times(20, 10.0, 3))
    assert m["client_kept_up"] == 1, {k: v for k, v in m.items() if "schedule" in k or "rate" in k}
    assert m["schedule_delay_median_ms"] < 10
    assert m["achieved_rate_per_s"] == pytest.approx(10.0, rel=0.05)
    assert near(m["e2e_from_schedule_median_ms"], m["e2e_latency_median_ms"], (10.0, 0.0))
    assert m["client_cpu_s"] > 0 and 0 < m["client_cpu_percent"] < 100 * (os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------------- warm-up, cuts

@pytest.mark.slow
def test_warmup_requests_are_sent_first_and_not_counted(server, tmp_path):
    s = server(parallelism=1)
    m, records, _ = bench(tmp_path, s.port, "--num-requests", "3", "--warmup-requests", "2")
    assert len(s.requests()) == 5 and len(records) == 3
    assert sorted(r["index"] for r in records) == [0, 1, 2]
    assert (m["requests_ok_count"], m["warmup_requests_count"]) == (3, 2)
    assert m["wall_time_s"] == pytest.approx(3 * S, rel=NOMINAL_RATE)    # the warm-up is not in the wall time


def test_duration_cuts_requests_in_flight_and_keeps_their_partial_timings(server, tmp_path):
    """400 tokens take 8 s; the run may last 0.5 s: the two requests in flight are cut then, with the
    tokens they got, and nothing else starts. A token is never written before F + i * D after its request
    reached the server, after the program's start, so by the deadline at most 23 tokens exist: a client that
    got more read past the deadline, however loaded the machine (a late server only sends fewer)."""
    s = server(2, 400)
    stream = F + 399 * D
    started = time.monotonic()
    m, records, _ = bench(tmp_path, s.port, "--num-requests", "10", "--concurrent", "2", "--duration", "0.5",
                          "--max-tokens", "400")
    assert time.monotonic() - started < stream / 2
    assert len(records) == 2 and len(s.requests()) == 2
    for r in records:
        assert (r["ok"], r["cut"], r["error"]) == (False, True, "cut at duration")
        assert near(r["ttft_s"] * 1000, F * 1000, NOMINAL)
        assert 5 <= len(r["chunk_times_s"]) <= int((0.5 - F) / D) + 1, len(r["chunk_times_s"])
        assert r["chunk_times_s"][-1] <= r["end_s"] < stream / 2        # the cut's time is kept, not the stream's end
    assert (m["requests_ok_count"], m["requests_cut_count"], m["requests_failed_count"]) == (0, 2, 0)
    assert m["ttft_mean_ms"] is None                                       # only completed requests count


@pytest.mark.parametrize(("stopped", "error"), [(None, "stopped by SIGTERM"), ("duration", "cut at duration")])
def test_sigterm_cuts_and_still_writes_metrics(server, tmp_path, stopped, error):
    """orchc stops a benchmark with SIGTERM, after writing why into RESULTS/stopped."""
    s = server(parallelism=1, tokens=100)
    (tmp_path / "prompts.json").write_text(json.dumps(["x"]))
    process = subprocess.Popen([sys.executable, str(BENCH), "run", str(tmp_path / "res"), "--host", "127.0.0.1",
                                "--port", str(s.port), "--api", "openai-completions", "--model", "tiny",
                                "--prompts-json", str(tmp_path / "prompts.json"), "--num-requests", "3"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while not s.requests() and time.monotonic() < deadline:   # the request has reached the server
        time.sleep(0.02)
    time.sleep(0.3)                                           # ~12 tokens streamed (fewer on a loaded machine)
    if stopped:
        (tmp_path / "res" / "stopped").write_text(stopped + "\n")
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=5) == 0, process.stderr.read() if process.stderr else ""
    assert time.monotonic() - sent < 1
    (record,) = [json.loads(line) for line in (tmp_path / "res" / "requests.jsonl").read_text().splitlines()]
    assert record["error"] == error and record["cut"] and 3 <= len(record["chunk_times_s"]) < 100
    metrics = json.loads((tmp_path / "res" / "metrics.json").read_text())
    assert metrics["requests_cut_count"] == 1


def test_summarize_after_a_kill_uses_what_was_written(server, tmp_path):
    s = server(parallelism=2)
    bench(tmp_path, s.port, "--num-requests", "4", "--concurrent", "2")
    res = tmp_path / "res"
    run = json.loads((res / "run.json").read_text())
    del run["wall_time_s"]                                   # as if killed before the end
    (res / "run.json").write_text(json.dumps(run))
    lines = (res / "requests.jsonl").read_text().splitlines()
    (res / "requests.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:40])   # the last line cut mid-write
    subprocess.run([sys.executable, str(BENCH), "summarize", str(res)], check=True)
    m = json.loads((res / "metrics.json").read_text())
    kept = [json.loads(line) for line in lines[:3]]
    assert m["requests_ok_count"] == 3
    assert m["wall_time_s"] == pytest.approx(max(r["send_s"] + r["end_s"] for r in kept))


# ---------------------------------------------------------------------------------------------- counts, errors

def test_without_usage_the_chunks_are_counted_and_said_so(server, tmp_path):
    s = server(1, TOKENS, "--no-usage")
    m, records, _ = bench(tmp_path, s.port, "--num-requests", "2")
    assert {(r["tokens_source"], r["output_tokens"], r["input_tokens"]) for r in records} == {("chunks", TOKENS, None)}
    assert m["output_tokens_count"] == 2 * TOKENS
    assert m["input_tokens_count"] is None and m["total_tokens_per_s"] is None     # unknown, not 0


@pytest.mark.parametrize(("api", "extra", "source"), [
    ("openai-completions", ("--empty-first", "--empty-last", "--no-usage"), "chunks"),
    ("openai-chat", ("--empty-first", "--empty-last", "--no-usage"), "chunks"),
    ("openai-chat", ("--empty-first", "--empty-last"), "server"),
    ("ollama", ("--empty-first",), "server"),
])
def test_chunks_without_content_are_not_tokens(server, tmp_path, api, extra, source):
    """A server that streams a chunk without content as soon as a request has its slot (the role chunk) and
    one after the last token (finish_reason, as llama.cpp's server ends a stream): TTFT is still F, the first
    chunk with text (not the empty chunk's ~0 ms), only the TOKENS chunks with text timed (so no ~0 ms ITL gap
    before the empty last chunk: a minimum over gaps would not show it, since a loaded machine delivers two token
    chunks together now and then), TOKENS tokens a request (not TOKENS + 1 without usage), and without usage the
    input tokens are unknown."""
    s = server(1, TOKENS, *extra)
    m, records, _ = bench(tmp_path, s.port, "--num-requests", "3", api=api)
    assert_timing(m, s, {"ttft": [F] * 3, "e2e_latency": [S] * 3})
    assert all(len(r["chunk_times_s"]) == TOKENS and r["output_tokens"] == TOKENS for r in records)
    assert {r["tokens_source"] for r in records} == {source}
    assert m["output_tokens_count"] == 3 * TOKENS
    if source == "chunks":
        assert {r["input_tokens"] for r in records} == {None} and m["input_tokens_count"] is None


@pytest.mark.parametrize(("chunk", "token"), [
    ({"choices": [{"index": 0, "text": "a", "finish_reason": None}]}, True),
    ({"choices": [{"index": 0, "text": "", "finish_reason": None}]}, False),
    ({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}, False),
    ({"choices": [{"index": 0, "delta": {"content": "a"}}]}, True),
    ({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}, False),
    ({"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}]}, False),
    ({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}, False),
    ({"choices": [{"index": 0, "delta": {"content": None, "reasoning_content": "We"}}]}, True),   # DeepSeek, vLLM < 0.10
    ({"choices": [{"index": 0, "delta": {"reasoning": "We"}}]}, True),                             # vLLM >= 0.10, OpenRouter
    ({"choices": [{"index": 0, "delta": {"reasoning_content": ""}}]}, False),
    ({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\""}}]}}]}, True),
    ({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"name": "get"}}]}}]}, True),
    ({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c1", "type": "function"}]}}]}, False),
    ({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}}, False),
    ({"choices": [{"index": 0, "delta": "oops"}]}, False),
    ({"choices": "oops"}, False),
])
def test_a_token_is_a_chunk_with_content(chunk, token):
    assert llm_bench.carries_token(chunk) is token


@pytest.mark.parametrize(("line", "token"), [
    ({"response": "a", "done": False}, True),
    ({"response": "", "done": False}, False),
    ({"response": "", "thinking": "hm", "done": False}, True),
    ({"response": "", "done": True, "eval_count": 5}, False),
])
def test_an_ollama_token_is_a_line_with_content(line, token):
    assert llm_bench.carries_ollama_token(line) is token


def test_every_request_carries_the_fixed_generation_settings(server, tmp_path):
    s = server(parallelism=2)
    bench(tmp_path, s.port, "--num-requests", "2", "--concurrent", "2", "--temperature", "0.7", "--seed", "42",
          "--max-tokens", "3", "--ignore-eos")
    for request in s.requests():
        body = request["body"]
        assert (body["max_tokens"], body["temperature"], body["seed"], body["stream"]) == (3, 0.7, 42, True)
        assert body["stream_options"] == {"include_usage": True} and body["ignore_eos"] is True
    records = [json.loads(line) for line in (tmp_path / "res" / "requests.jsonl").read_text().splitlines()]
    assert {r["output_tokens"] for r in records} == {3}                   # max_tokens reached the server


def test_synthetic_prompts_have_the_input_length_and_depend_on_the_seed(server, tmp_path):
    s = server(parallelism=4)
    for results, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        subprocess.run([sys.executable, str(BENCH), "run", str(tmp_path / results), "--host", "127.0.0.1", "--port",
                        str(s.port), "--api", "openai-completions", "--model", "tiny", "--input-length", "12",
                        "--num-requests", "3", "--concurrent", "3", "--seed", seed], check=True, capture_output=True)
    prompts = [sorted(r["body"]["prompt"] for r in s.requests()[i * 3:i * 3 + 3]) for i in range(3)]
    assert all(len(p.split()) == 12 for group in prompts for p in group)
    assert prompts[0] == prompts[1] != prompts[2]


def test_prompts_file_one_per_line(server, tmp_path):
    s = server(parallelism=2)
    (tmp_path / "prompts.txt").write_text('first prompt\n\n"a prompt\\nwith a newline"\n')
    subprocess.run([sys.executable, str(BENCH), "run", str(tmp_path / "res"), "--host", "127.0.0.1", "--port",
                    str(s.port), "--api", "ollama", "--model", "tiny", "--prompts-file", str(tmp_path / "prompts.txt"),
                    "--num-requests", "2", "--concurrent", "1"], check=True, capture_output=True)
    assert [r["body"]["prompt"] for r in s.requests()] == ["first prompt", "a prompt\nwith a newline"]


def test_a_server_that_refuses_every_request_fails_the_run(server, tmp_path):
    s = server(parallelism=1)
    m, records, done = bench(tmp_path, s.port, "--num-requests", "2", "--model", "missing", check=False)
    assert done.returncode == 1
    assert (m["requests_ok_count"], m["requests_failed_count"]) == (0, 2)
    assert all(r["http_status"] == 404 and "model 'missing' not found" in r["error"] for r in records)
    assert "no request succeeded: HTTP 404" in (tmp_path / "res" / "error").read_text()


@pytest.mark.parametrize(("api", "listed"), [("openai-chat", "tiny"), ("ollama", "tiny:latest")])
def test_options_from_a_config_file_and_the_servers_first_model(server, tmp_path, api, listed):
    """The type passes its fields in a JSON file; without a model the first the server lists is used."""
    s = server(parallelism=2)
    (tmp_path / "prompts.json").write_text(json.dumps(["hi"]))
    config = {"api": api, "prompts_json": str(tmp_path / "prompts.json"), "num_requests": 3, "concurrent": 2,
              "request_rate": None, "ignore_eos": False, "max_tokens": 2, "model": None}
    (tmp_path / "config.json").write_text(json.dumps(config))
    subprocess.run([sys.executable, str(BENCH), "run", str(tmp_path / "res"), "--config", str(tmp_path / "config.json"),
                    "--host", "127.0.0.1", "--port", str(s.port), "--num-requests", "2"], check=True, capture_output=True)
    records = [json.loads(line) for line in (tmp_path / "res" / "requests.jsonl").read_text().splitlines()]
    assert len(records) == 2                                               # the command line wins
    bodies = [r["body"] for r in s.requests()]
    assert {b["model"] for b in bodies} == {listed}
    assert "ignore_eos" not in bodies[0]
    assert json.loads((tmp_path / "res" / "environment.json").read_text())["model"] == listed


def test_nothing_listening_is_a_failed_run_not_a_hang(tmp_path):
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    m, records, done = bench(tmp_path, port, "--num-requests", "2", check=False)
    assert done.returncode == 1 and m["requests_failed_count"] == 2
    assert all("ConnectionRefusedError" in r["error"] for r in records)


# ---------------------------------------------------------------------------------------------- engine metrics, J/token

def test_engine_metrics_of_a_queue_are_sampled_from_the_servers_own_metrics(server, tmp_path):
    """4 in flight against one slot (each request 0.43 s): while the queue is full the server's /metrics says
    1 running, 3 waiting, its KV cache (the share of slots held) full; the client samples it every 0.1 s."""
    s = server(1, 20)
    m, _, _ = bench(tmp_path, s.port, "--num-requests", "8", "--concurrent", "4", "--engine-metrics-interval", "0.1")
    assert m["engine_samples_count"] >= 10, m
    assert (m["engine_running_max_count"], m["engine_waiting_max_count"]) == (1, 3)
    assert m["engine_kv_cache_usage_max_ratio"] == 1.0
    # 8 requests, 4 of them queued behind the slot for most of the time, the last 3 with fewer behind them
    assert 1.2 < m["engine_waiting_mean_count"] < 3 and 0.8 < m["engine_running_mean_count"] <= 1
    samples = [json.loads(line) for line in (tmp_path / "res" / "engine.jsonl").read_text().splitlines()]
    assert len(samples) == m["engine_samples_count"] and all(set(x) == {"t_s", "running", "waiting", "kv_cache_usage"} for x in samples)


def test_against_ollama_no_engine_metrics_and_without_gpu_samples_no_energy(server, tmp_path):
    """Ollama serves no /metrics: nothing is sampled, the figures are null (not 0), and so is the energy without a gpu.csv."""
    s = server(1)
    m, _, _ = bench(tmp_path, s.port, "--num-requests", "2", "--engine-metrics-interval", "0.1", api="ollama")
    assert m["engine_samples_count"] == 0 and m["engine_waiting_max_count"] is None and m["energy_per_token_j"] is None


def test_energy_per_token_from_the_gpu_samples_of_a_stand_in_of_known_power(server, tmp_path):
    """Two stand-in GPUs drawing 200 W each, sampled every second into gpu.csv as the job's sampler does: the energy
    over the measured phase is 400 W times its wall time, per output token the stand-in server wrote."""
    import nvidia_smi_standin

    s = server(1, 20)
    csv = tmp_path / "gpu.csv"
    env = {**os.environ, "ORCHC_STANDIN_GPUS": "2", "ORCHC_STANDIN_POWER": "200"}
    with csv.open("w") as out:
        sampler = subprocess.Popen([sys.executable, nvidia_smi_standin.__file__, f"--query-gpu={','.join(nvidia_smi_standin.FIELDS)}",
                                    "--format=csv,nounits", "-l", "1"], stdout=out, env=env)
    try:
        m, _, _ = bench(tmp_path, s.port, "--num-requests", "8", "--concurrent", "2", "--gpu-csv", str(csv))
    finally:
        sampler.kill()
        sampler.wait()
    tokens = sum(len(t["timing"]["tokens"]) for t in s.timings())
    assert m["output_tokens_count"] == tokens == 8 * 20
    assert m["gpu_samples_count"] >= 2 * 2, m          # 2 GPUs, at least 2 s of samples
    assert m["gpu_power_mean_w"] == pytest.approx(400)
    assert m["gpu_energy_j"] == pytest.approx(400 * m["wall_time_s"], rel=1e-6)
    assert m["energy_per_token_j"] == pytest.approx(400 * m["wall_time_s"] / tokens, rel=1e-6)


def test_engine_sample_reads_vllms_text_format():
    """Two engines' label sets are summed, the KV cache's use is the highest; the name before vLLM's rename is read too;
    a server without these gauges gives None, not 0."""
    text = ("# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            'vllm:num_requests_running{engine="0",model_name="m"} 3.0\n'
            'vllm:num_requests_running{engine="1",model_name="m"} 2.0\n'
            'vllm:num_requests_waiting{engine="0",model_name="m"} 7.0 1700000000000\n'
            'vllm:gpu_cache_usage_perc{engine="0",model_name="a}b"} 0.25\n'
            'vllm:gpu_cache_usage_perc{engine="1",model_name="m"} 0.5\n'
            "process_cpu_seconds_total 12.5\n")
    assert llm_bench.engine_sample(text) == {"running": 5.0, "waiting": 7.0, "kv_cache_usage": 0.5}
    assert llm_bench.engine_sample("process_cpu_seconds_total 1\n") == {"running": None, "waiting": None, "kv_cache_usage": None}
    assert llm_bench.engine_of([]) == {"engine_samples_count": 0, **{f"engine_{k}_{s}_{u}": None for k, u in
                                       (("running", "count"), ("waiting", "count"), ("kv_cache_usage", "ratio")) for s in ("mean", "max")}}


def test_engine_sample_reads_llama_cpps_text_format():
    """llama-server's /metrics (tools/server/server-task.cpp, to_metrics: `llamacpp:` names, no labels, no KV-cache
    ratio): the slots decoding are running, the requests deferred are waiting."""
    text = ("# HELP llamacpp:requests_processing Number of requests processing\n"
            "# TYPE llamacpp:requests_processing gauge\n"
            "llamacpp:requests_processing 4\n"
            "# TYPE llamacpp:requests_deferred gauge\n"
            "llamacpp:requests_deferred 2\n"
            "llamacpp:n_busy_slots_per_decode 3.5\n")
    assert llm_bench.engine_sample(text) == {"running": 4.0, "waiting": 2.0, "kv_cache_usage": None}


def test_llama_cpp_timings_give_the_servers_figures_and_the_clients_overhead():
    """llama-server ends a stream with its own timings of the request (prompt_ms, predicted_per_token_ms): the results
    give their means and the client's overhead over them, TTFT - prompt_ms and TPOT - predicted_per_token_ms, worked
    out by hand on two requests (the second without timings, so not in these figures)."""
    timed = {"ok": True, "send_s": 0.0, "end_s": 0.5, "ttft_s": 0.1, "e2e_s": 0.4, "chunk_times_s": [0.1, 0.2, 0.4],
             "input_tokens": 10, "output_tokens": 3,
             "server": {"prompt_n": 10, "prompt_ms": 80.0, "predicted_n": 3, "predicted_ms": 290.0, "predicted_per_token_ms": 140.0}}
    untimed = {"ok": True, "send_s": 0.2, "end_s": 0.3, "ttft_s": 0.3, "e2e_s": 0.35, "chunk_times_s": [0.3, 0.35],
               "input_tokens": 5, "output_tokens": 2}
    m = llm_bench.metrics_of([timed, untimed], {"wall_time_s": 2.0})
    assert m["server_timed_requests_count"] == 1
    assert m["server_prompt_mean_ms"] == pytest.approx(80.0)
    assert m["server_predicted_per_token_mean_ms"] == pytest.approx(140.0)
    assert m["client_ttft_overhead_mean_ms"] == pytest.approx(20.0)           # 100 - 80
    assert m["client_tpot_overhead_mean_ms"] == pytest.approx(10.0)           # (400 - 100) / 2 - 140
    none = llm_bench.metrics_of([untimed], {"wall_time_s": 2.0})
    assert none["server_timed_requests_count"] == 0 and none["client_ttft_overhead_mean_ms"] is None


def test_a_llama_cpp_stream_keeps_its_timings(tmp_path):
    """The last chunk of a llama-server stream carries `timings` beside `usage`: the request's record keeps them."""
    record = llm_bench.timings_of({"choices": [], "usage": {"completion_tokens": 3},
                                   "timings": {"prompt_n": 10, "prompt_ms": 80.5, "predicted_n": 3, "predicted_ms": 290.0,
                                               "predicted_per_token_ms": 96.7, "cache_n": 0, "other": "x"}})
    assert record == {"prompt_n": 10, "prompt_ms": 80.5, "predicted_n": 3, "predicted_ms": 290.0, "predicted_per_token_ms": 96.7}
    assert llm_bench.timings_of({"choices": []}) == {}


def write_task(folder: Path, started: float, wall: float, ttfts: list[float], **run: object) -> Path:
    """A task's results folder as `llm_bench.py run` leaves it: run.json and requests.jsonl, one request per TTFT."""
    folder.mkdir(parents=True)
    info = {"api": "openai-completions", "load": "closed", "wall_time_s": wall, "started_epoch_s": started,
            "client_cpu_s": 0.5, "warmup_requests_done": 1, **run}
    (folder / "run.json").write_text(json.dumps(info))
    records = [{"ok": True, "send_s": 0.1 * i, "intended_s": 0.1 * i, "end_s": ttft + 0.1, "ttft_s": ttft,
                "e2e_s": ttft + 0.1, "chunk_times_s": [ttft, ttft + 0.1], "input_tokens": 4, "output_tokens": 2}
               for i, ttft in enumerate(ttfts)]
    (folder / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_merged_percentiles_are_those_of_the_pooled_samples_never_the_mean_of_the_tasks():
    """Three load generators (issue 21, item 5): two fast ones (5 requests each, TTFT 10 ms) and a slow one (2
    requests, TTFT 1 s). The merged p50 and p90 are the percentiles of the 12 pooled TTFTs (10 ms and 901 ms); the
    mean of the tasks' own p90s would be 340 ms."""
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        tasks = [str(write_task(root / "tasks" / "0", 1000.0, 2.0, [0.01] * 5)),
                 str(write_task(root / "tasks" / "1", 1000.2, 2.0, [0.01] * 5)),
                 str(write_task(root / "tasks" / "2", 1000.5, 3.0, [1.0, 1.0]))]
        merged = llm_bench.merge(str(root), tasks)
        pooled = [0.01] * 10 + [1.0, 1.0]
        for label, p in (("median", 50), ("p90", 90), ("p99", 99)):
            assert merged[f"ttft_{label}_ms"] == pytest.approx(1000 * llm_bench.percentile(pooled, p))
        # p90 at rank 9.9 of the 12 sorted: 10 ms + 0.9 x (1000 - 10) ms
        assert merged["ttft_median_ms"] == pytest.approx(10.0) and merged["ttft_p90_ms"] == pytest.approx(901.0)
        mean_of_tasks = statistics.mean(1000 * llm_bench.percentile(t, 90) for t in ([0.01] * 5, [0.01] * 5, [1.0] * 2))
        assert mean_of_tasks == pytest.approx(340.0) and merged["ttft_p90_ms"] != pytest.approx(mean_of_tasks)
        assert merged["ttft_mean_ms"] == pytest.approx(1000 * sum(pooled) / 12)
        # throughput: all successful requests over the common window, first start (1000.0) to last end (1003.5)
        assert merged["requests_ok_count"] == 12 and merged["wall_time_s"] == pytest.approx(3.5)
        assert merged["request_throughput_per_s"] == pytest.approx(12 / 3.5)
        assert merged["tasks_count"] == 3 and merged["warmup_requests_count"] == 3
        assert merged["client_cpu_s"] == pytest.approx(1.5)
        assert json.loads((root / "metrics.json").read_text()) == json.loads(json.dumps(merged))
        breakdown = json.loads((root / "tasks.json").read_text())
        assert [task["task"] for task in breakdown["tasks"]] == [0, 1, 2]
        assert breakdown["tasks"][2]["metrics"]["ttft_median_ms"] == pytest.approx(1000.0)
        # the slow task is 100 times the tasks' median TTFT (10 ms), 10 times their E2E, a quarter of their rate
        assert {(o["task"], o["metric"]) for o in breakdown["outliers"]} == {
            (2, "ttft_median_ms"), (2, "e2e_latency_median_ms"), (2, "request_throughput_per_s")}
        (ttft,) = [o for o in breakdown["outliers"] if o["metric"] == "ttft_median_ms"]
        assert (ttft["value"], ttft["tasks_median"]) == (pytest.approx(1000.0), pytest.approx(10.0))


def test_merging_tasks_that_agree_flags_none():
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        tasks = [str(write_task(root / "tasks" / str(i), 1000.0, 2.0, [0.1 + 0.01 * i] * 5)) for i in range(3)]
        llm_bench.merge(str(root), tasks)
        assert json.loads((root / "tasks.json").read_text())["outliers"] == []


def test_tasks_of_one_srun_step_each_take_their_share_start_together_and_merge(server, tmp_path):
    """`run --tasks-from-slurm` as each task of `srun --ntasks=2` runs it (SLURM_PROCID, SLURM_STEP_NUM_TASKS): task 0
    takes 3 of 5 requests and task 1 the other 2, each in RESULTS/tasks/<task>; the later task is waited for at the
    barrier (RESULTS/barrier), so both start measuring together; `summarize` then merges the two."""
    s = server(parallelism=4)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["one two three"]))
    results = tmp_path / "res"

    def task(rank: int) -> subprocess.Popen[str]:
        env = {**os.environ, "SLURM_PROCID": str(rank), "SLURM_STEP_NUM_TASKS": "2", "SLURMD_NODENAME": f"n{rank + 1}"}
        return subprocess.Popen([sys.executable, str(BENCH), "run", str(results), "--host", "127.0.0.1", "--port",
                                 str(s.port), "--api", "openai-completions", "--model", "tiny", "--prompts-json",
                                 str(prompts), "--num-requests", "5", "--concurrent", "2", "--tasks-from-slurm"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first = task(0)
    time.sleep(2)
    second = task(1)
    for process in (first, second):
        assert process.wait(timeout=60) == 0, process.stderr.read() if process.stderr else ""
    runs = [json.loads((results / "tasks" / str(rank) / "run.json").read_text()) for rank in (0, 1)]
    assert [run["num_requests"] for run in runs] == [3, 2] and [run["concurrent"] for run in runs] == [1, 1]
    assert [run["node"] for run in runs] == ["n1", "n2"]
    assert abs(runs[0]["started_epoch_s"] - runs[1]["started_epoch_s"]) < 1.0    # not 2 s apart: the barrier
    assert sorted(path.name for path in (results / "barrier").iterdir()) == ["0", "1"]
    subprocess.run([sys.executable, str(BENCH), "summarize", str(results)], check=True, timeout=60)
    merged = json.loads((results / "metrics.json").read_text())
    assert merged["requests_ok_count"] == 5 and merged["tasks_count"] == 2
    tasks = json.loads((results / "tasks.json").read_text())["tasks"]
    assert [t["metrics"]["requests_ok_count"] for t in tasks] == [3, 2] and [t["node"] for t in tasks] == ["n1", "n2"]


def test_a_task_stopped_by_orchc_reads_why_in_the_clients_results_folder(server, tmp_path):
    """orchc writes RESULTS/stopped (not RESULTS/tasks/<task>/stopped) before it stops the tasks' srun: each task's
    requests in flight are "cut at duration", as one generator's are."""
    s = server(parallelism=1, tokens=100)
    (tmp_path / "prompts.json").write_text(json.dumps(["x"]))
    env = {**os.environ, "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}
    process = subprocess.Popen([sys.executable, str(BENCH), "run", str(tmp_path / "res"), "--host", "127.0.0.1",
                                "--port", str(s.port), "--api", "openai-completions", "--model", "tiny",
                                "--prompts-json", str(tmp_path / "prompts.json"), "--num-requests", "3",
                                "--tasks-from-slurm"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while not s.requests() and time.monotonic() < deadline:
        time.sleep(0.02)
    (tmp_path / "res" / "stopped").write_text("duration\n")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=5) == 0, process.stderr.read() if process.stderr else ""
    (record,) = [json.loads(line) for line in (tmp_path / "res" / "tasks" / "0" / "requests.jsonl").read_text().splitlines()]
    assert record["error"] == "cut at duration" and record["cut"]

"""The capacity search (service_defs/files/llm_search.py, llm_client `search:`): its statistics, its probe count,
and the capacity it finds against a server whose capacity is known (tests/llm_standin.py).

The stand-in serves at most N requests at once, first come first served, each for exactly S = first-token delay +
(tokens - 1) x inter-token delay. Under constant arrivals (one every 1 / rate s) a rate up to N / S never queues,
so every TTFT stays at the first-token delay; any rate above it queues without bound, so every TTFT bound above the
first-token delay is missed once the probe is long enough. Its capacity under such an SLO is therefore N / S.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from test_llm_bench import BENCH, Server

sys.path.insert(0, str(BENCH.parent))
import llm_search

SEARCH = BENCH.parent / "llm_search.py"


def test_clopper_pearson_bounds_against_closed_forms():
    # with no request over its bound, the upper bound solves (1 - p)^n = alpha; all over: the lower p^n = alpha
    for n in (1, 10, 29, 299):
        low, high = llm_search.share_interval(0, n, 0.95)
        assert low == 0.0 and high == pytest.approx(1 - 0.05 ** (1 / n), abs=1e-7)
        low, high = llm_search.share_interval(n, n, 0.95)
        assert high == 1.0 and low == pytest.approx(0.05 ** (1 / n), abs=1e-7)
    # symmetric: the lower bound of k over n is 1 - the upper bound of n - k over n
    for k, n in ((3, 40), (17, 50), (1, 2)):
        assert llm_search.share_interval(k, n, 0.9)[0] == pytest.approx(1 - llm_search.share_interval(n - k, n, 0.9)[1])
    # a value from the beta quantile: the one-sided 95 % upper bound for 5 of 100 is 0.1024 (beta.ppf(.95, 6, 95))
    assert llm_search.share_interval(5, 100, 0.95)[1] == pytest.approx(0.10237, abs=2e-4)
    assert llm_search.requests_to_pass(99, 0.95) == 299 and llm_search.requests_to_pass(90, 0.95) == 29


def test_a_probe_is_decided_only_when_its_interval_leaves_the_allowed_share():
    bounds = llm_search.parse_bounds({"ttft_p90_ms": 100})
    tally = llm_search.Tally(bounds, 0.95)
    fast = {"ok": True, "ttft_s": 0.05, "e2e_s": 0.1, "output_tokens": 5}
    slow = {**fast, "ttft_s": 0.2}
    for _ in range(28):
        tally.add(fast)
    assert tally.verdict() == "undecided"         # 28 < 29: (1 - 0.1)^28 > 0.05
    tally.add(fast)
    assert tally.verdict() == "pass"
    tally.add(slow)                               # one of 30 over: undecided again
    assert tally.verdict() == "undecided"
    failing = llm_search.Tally(bounds, 0.95)
    failing.add(slow)
    failing.add({"ok": False})                    # a failed request exceeds every bound
    assert failing.verdict() == "fail"            # 2 of 2 over: P = 0.01 under a 10 % share


def test_a_probe_the_client_did_not_keep_up_with_is_never_the_capacity():
    """A probe that met its SLO while the client fell behind its own schedule (client_kept_up 0: it sent fewer requests
    than the rate, later) says nothing of the server: the capacity is the highest pass the client kept up with, its
    upper end unknown, and the search says it was the client's limit (issue 22 item 2). Seen on a fast llama-server:
    the probe at 1600/s passed a loose TTFT bound at 1084/s sent, and was reported as the capacity. Nor is its failure
    the server's upper bound."""
    bounds = llm_search.parse_bounds({"ttft_p99_ms": 1000})

    def probe(rate, kept_up):
        return {"rate_per_s": rate, "verdict": "pass", "client_kept_up": kept_up, "metrics": {"request_throughput_per_s": rate},
                "bounds": {"ttft_p99_ms": {"measured_ms": 1.0}}}

    metrics = llm_search.capacity_metrics([probe(200, 1), probe(400, 1), probe(800, 1), probe(1600, 0)], bounds)
    assert (metrics["capacity_requests_per_s"], metrics["capacity_low_requests_per_s"]) == (800, 800)
    assert metrics["capacity_high_requests_per_s"] is None
    assert metrics["capacity_client_limited"] == 1 and metrics["capacity_request_throughput_per_s"] == 800
    # nor its failure the server's: the client that fell behind measured late reads too
    failed = llm_search.capacity_metrics([probe(200, 1), {**probe(400, 0), "verdict": "fail"}], bounds)
    assert (failed["capacity_requests_per_s"], failed["capacity_high_requests_per_s"], failed["capacity_client_limited"]) == (200, None, 1)
    alone = llm_search.capacity_metrics([probe(200, 0)], bounds)
    assert (alone["capacity_requests_per_s"], alone["capacity_low_requests_per_s"], alone["capacity_client_limited"]) == (None, 0.0, 1)


@pytest.mark.parametrize("capacity", [0.3, 0.5, 0.61, 1.0, 2.7, 5.0, 13.3, 31.9, 47.0, 63.9, 64.0, 100.0])
def test_the_search_brackets_a_threshold_within_the_precision_in_at_most_twelve_probes(capacity):
    """0.5 to 64 per second at 5 %: doubling (at most 8 probes) then bisecting a factor 2 to 1.05 (at most 4)."""
    settings = {"precision": 0.05}
    lo = hi = None
    probes = 0
    while (rate := llm_search.next_rate(lo, hi, (0.5, 64.0), settings)) is not None:
        probes += 1
        if rate <= capacity:
            lo = rate
        else:
            hi = rate
    assert probes <= 12
    if capacity < 0.5:
        assert (lo, hi) == (None, 0.5)
    elif capacity >= 64:
        assert (lo, hi) == (64.0, None)
    else:
        assert lo <= capacity < hi and hi / lo <= 1.05


@pytest.mark.parametrize("search, problem", [
    ({"slo": {"ttft_p99_ms": 5}, "rate": {"min": 4, "max": 2}}, "min < max"),
    ({"slo": {"ttft_p99_ms": 5}, "rate": {"min": 1, "max": 2}, "precison": 0.1}, "unknown key 'precison'"),
    ({"slo": {"ttft_p100_ms": 5}, "rate": {"min": 1, "max": 2}}, "ttft_p100_ms: not FAMILY_pQ_ms"),
    ({"slo": {}, "rate": {"min": 1, "max": 2}}, "no bound"),
])
def test_a_search_it_cannot_run_is_refused_before_any_request(tmp_path, search, problem):
    done = subprocess.run([sys.executable, str(SEARCH), "run", str(tmp_path / "r"), "--host", "127.0.0.1", "--port", "9",
                           "--api", "openai-completions", "--model", "m", "--input-length", "3",
                           "--search", json.dumps(search)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and problem in done.stderr, done.stderr
    assert not (tmp_path / "r").exists()


def test_llm_bench_leaves_a_search_to_llm_search(tmp_path):
    """llm_bench.py never imports llm_search.py (no import cycle between the two shipped programs): given --search it
    says which program runs one."""
    done = subprocess.run([sys.executable, str(BENCH), "run", str(tmp_path / "r"), "--host", "127.0.0.1", "--port", "9",
                           "--api", "openai-completions", "--model", "m", "--input-length", "3", "--search",
                           json.dumps({"slo": {"ttft_p99_ms": 5}, "rate": {"min": 1, "max": 2}})],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "run it with llm_search.py" in done.stderr, done.stderr
    assert "import llm_search" not in BENCH.read_text()


@pytest.mark.slow
def test_the_search_finds_the_known_capacity_of_the_stand_in(tmp_path):
    """Nominally 2 slots of 0.15 s: 13.3 requests/s. The stand-in's own record of each request (when it got its slot,
    when it wrote its last token) gives the service time it really kept on this machine, and so the capacity the
    search must find within 5 %; the nominal figure within 10 % (a loaded machine makes the server itself late)."""
    slots, first, gap, tokens = 2, 0.05, 0.025, 5
    nominal = slots / (first + (tokens - 1) * gap)       # 13.33 requests per second
    server = Server("--tokens", str(tokens), "--first-token-delay", str(first), "--inter-token-delay", str(gap),
                    "--parallelism", str(slots))
    try:
        search = {"slo": {"ttft_p90_ms": 120}, "rate": {"min": 4, "max": 32}, "arrivals": "constant",
                  "probe_requests": 40, "probe_s": 2, "warmup_s": 0.5}
        done = subprocess.run([sys.executable, str(SEARCH), "run", str(tmp_path / "r"), "--host", "127.0.0.1",
                               "--port", str(server.port), "--api", "openai-completions", "--model", "tiny",
                               "--input-length", "3", "--max-tokens", "5", "--warmup-requests", "2",
                               "--search", json.dumps(search)], capture_output=True, text=True, timeout=300)
        held = sorted(t["timing"]["tokens"][-1] - t["timing"]["slot"] for t in server.timings()
                      if not t["timing"].get("cut") and t["timing"].get("tokens"))
    finally:
        server.close()
    assert done.returncode == 0, done.stderr
    capacity = slots / held[len(held) // 2]               # the slots over the median time a request held one
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    probes = json.loads((tmp_path / "r" / "search.json").read_text())["probes"]
    assert metrics["search_probes_count"] == len(probes) <= 12
    assert metrics["capacity_client_limited"] == 0
    found = metrics["capacity_requests_per_s"]
    tried = [(p["rate_per_s"], p["verdict"]) for p in probes]
    assert abs(found - capacity) / capacity <= 0.05, (found, capacity, tried)
    assert abs(found - nominal) / nominal <= 0.10, (found, nominal, tried)
    assert metrics["capacity_low_requests_per_s"] == found < metrics["capacity_high_requests_per_s"]
    for probe in probes:
        measured = probe["bounds"]["ttft_p90_ms"]["measured_ms"]
        if probe["verdict"] == "pass":
            assert probe["judged"] >= 40 and measured <= 120
        # below the capacity nothing queues: the TTFT is the first-token delay plus the client's and server's overhead
        if probe["verdict"] == "pass" and probe["rate_per_s"] <= 0.9 * capacity:
            assert measured < 1000 * first + 30
    assert math.isclose(metrics["capacity_measured_ttft_p90_ms"],
                        next(p for p in probes if p["rate_per_s"] == found)["bounds"]["ttft_p90_ms"]["measured_ms"])


def test_a_probes_audit_counts_its_rates_from_its_judged_requests(tmp_path):
    """A probe's warm-up arrivals are part of its open loop, not of its judged requests: the probe's achieved and
    scheduled rates and its client CPU share are those of the judged phase. They were counted from the probe's start,
    warm-up included: a probe at 200/s with 0.5 s of warm-up and 3 s judged said 171/s sent, and its client 112 %
    of one core."""
    server = Server("--tokens", "2", "--first-token-delay", "0.005", "--inter-token-delay", "0.005", "--parallelism", "16")
    try:
        search = {"slo": {"ttft_p90_ms": 1000}, "rate": {"min": 40, "max": 80}, "arrivals": "constant", "max_probes": 1,
                  "probe_requests": 40, "probe_s": 1, "warmup_s": 1}
        done = subprocess.run([sys.executable, str(SEARCH), "run", str(tmp_path / "r"), "--host", "127.0.0.1",
                               "--port", str(server.port), "--api", "openai-completions", "--model", "tiny",
                               "--input-length", "3", "--max-tokens", "2", "--search", json.dumps(search)],
                              capture_output=True, text=True, timeout=120)
    finally:
        server.close()
    assert done.returncode == 0, done.stderr
    (probe,) = json.loads((tmp_path / "r" / "search.json").read_text())["probes"]
    figures = probe["metrics"]
    assert probe["warmup_requests"] == 40 and probe["judged"] >= 40, probe
    assert figures["scheduled_rate_per_s"] == pytest.approx(40, rel=0.01), figures
    assert figures["achieved_rate_per_s"] == pytest.approx(40, rel=0.05), figures
    assert figures["client_kept_up"] == 1 and 0 < figures["client_cpu_percent"] < 100, figures

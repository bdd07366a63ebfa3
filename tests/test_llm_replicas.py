"""llm_bench.py against the replicas of a service with one engine per GPU (issue 21, item 4): each request goes to one
replica by the policy (round-robin, least-outstanding), its record names the replica, replicas.json has each replica's
figures, and the total stays the pooled figures. Against real stand-in servers (tests/llm_standin.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_llm_bench import BENCH, Server, bench

F, D, TOKENS = 0.05, 0.02, 5


def servers(*first_token_delays: float, parallelism: int = 4) -> list[Server]:
    return [Server("--tokens", str(TOKENS), "--first-token-delay", str(delay), "--inter-token-delay", str(D),
                   "--parallelism", str(parallelism)) for delay in first_token_delays]


def replicas_arg(started: list[Server]) -> str:
    return ",".join(f"127.0.0.1:{s.port}" for s in started)


def test_round_robin_sends_each_replica_its_turn_and_records_it(tmp_path: Path):
    started = servers(F, F, F)
    try:
        m, records, _ = bench(tmp_path, started[0].port, "--num-requests", "12", "--concurrent", "3",
                              "--replicas", replicas_arg(started), "--replica-gpus", "0,1,2", api="ollama")
        assert [len(s.requests()) for s in started] == [4, 4, 4]
        assert sorted(r["replica"] for r in records) == [0] * 4 + [1] * 4 + [2] * 4
        assert m["requests_ok_count"] == 12 and m["replicas_count"] == 3
        shown = json.loads((tmp_path / "res" / "replicas.json").read_text())
        assert shown["policy"] == "round-robin"
        assert [(r["replica"], r["address"], r["gpu"], r["metrics"]["requests_ok_count"]) for r in shown["replicas"]] == \
            [(i, f"127.0.0.1:{s.port}", str(i), 4) for i, s in enumerate(started)]
        # per replica over the run's whole wall time: the replicas' throughputs add up to the total
        total = sum(r["metrics"]["request_throughput_per_s"] for r in shown["replicas"])
        assert abs(total - m["request_throughput_per_s"]) < 1e-9
        # the total's percentiles are the pooled requests', not an average of the replicas'
        pooled = sorted(r["e2e_s"] * 1000 for r in records)
        assert m["e2e_latency_max_ms"] == pooled[-1]
    finally:
        for s in started:
            s.close()


def test_least_outstanding_sends_more_to_the_replica_that_answers_sooner(tmp_path: Path):
    """One replica 10 times slower: in turn each gets half; by outstanding requests the fast one gets most."""
    started = servers(0.6, F)
    try:
        _, records, _ = bench(tmp_path, started[0].port, "--num-requests", "16", "--concurrent", "2",
                              "--replicas", replicas_arg(started), "--replica-policy", "least-outstanding", api="ollama")
        slow = sum(1 for r in records if r["replica"] == 0)
        assert 1 <= slow <= 5 and len(records) == 16  # in turn: 8; here about 3 (a slow one per 0.68 s, fast ones 0.13 s)
        assert [len(s.requests()) for s in started] == [slow, 16 - slow]
        _, records, _ = bench(tmp_path, started[0].port, "--num-requests", "8", "--concurrent", "2",
                              "--replicas", replicas_arg(started), api="ollama", results="rr")
        assert sum(1 for r in records if r["replica"] == 0) == 4
    finally:
        for s in started:
            s.close()


def test_a_bad_replica_address_is_refused(tmp_path: Path):
    done = subprocess.run([sys.executable, str(BENCH), "run", str(tmp_path / "x"), "--host", "h", "--port", "1", "--api",
                           "ollama", "--replicas", "127.0.0.1:80,nohostport"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "not HOST:PORT: 'nohostport'" in done.stderr


def test_every_replica_is_kept_when_fewer_gpus_than_addresses_are_known(tmp_path: Path):
    import llm_bench

    records = [{"ok": True, "replica": i % 3, "send_s": 0.1 * i, "end_s": 0.1, "ttft_s": 0.05, "e2e_s": 0.1,
                "chunk_times_s": [0.05, 0.1], "input_tokens": 1, "output_tokens": 2} for i in range(6)]
    run = {"replicas": ["a:1", "b:2", "c:3"], "replica_gpus": ["0"], "wall_time_s": 1.0}
    assert llm_bench.write_replicas(str(tmp_path), records, run) == {"replicas_count": 3}
    shown = json.loads((tmp_path / "replicas.json").read_text())["replicas"]
    assert [(r["address"], r["gpu"], r["metrics"]["requests_ok_count"]) for r in shown] == [("a:1", "0", 2), ("b:2", None, 2), ("c:3", None, 2)]

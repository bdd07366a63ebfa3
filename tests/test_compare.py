"""`orchc compare` and `orchc results --check` on run folders built by hand (run.json, manifest.json and
results/<client>/results.json, in the shapes the compile side and the clients write), through the CLI."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

from compiler.results.compare import Judging, _print_comparison, compare_rows
from compiler.results.metrics import HIGHER, LOWER, NEUTRAL, direction


def orchc(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    # no SLURM program is needed: compare and --check read the run folders only
    return subprocess.run([sys.executable, "-m", "compiler", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)})


def results(metrics: dict[str, Any], status: str = "complete") -> dict[str, Any]:
    return {"schema": "orchc-results/1", "metrics": metrics, "status": status, "parameters": {}, "environment": {}}


def write_run(folder: Path, clients: dict[str, dict[str, Any] | None], sweep: dict | None = None,
              placed: dict[str, tuple[str, int]] | None = None, references: dict | None = None,
              headline: dict | None = None) -> Path:
    """A run folder: one redis service, the given clients (name -> results, None: no results.json yet);
    `placed` gives a client's (point, repeat) in the manifest, `headline` the manifest's type -> headline."""
    folder.mkdir(parents=True)
    names = ["redis", *clients]
    jobs = [{"name": name, "type": "redis" if name == "redis" else "redis_client",
             "role": "service" if name == "redis" else "client", "target": None if name == "redis" else "redis",
             "script": f"{name}.sbatch", "slurm_id": str(100 + index), "submitted": "2026-01-01T00:00:00Z"}
            for index, name in enumerate(names)]
    (folder / "run.json").write_text(json.dumps({
        "recipe": "r", "site": "local", "created": "2026-01-01T00:00:00Z", "run_dir": str(folder),
        "state": "submitted", "outcome": "completed", "error": None, "jobs": jobs}))
    manifest: dict[str, Any] = {"recipe": "r", "jobs": [
        {"name": name, **({"point": placed[name][0], "repeat": placed[name][1]} if placed and name in placed else {})}
        for name in names]}
    if sweep is not None:
        manifest["sweep"] = sweep
    if references is not None:
        manifest["references"] = references
    if headline is not None:
        manifest["headline"] = headline
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for name, data in clients.items():
        if data is not None:
            (folder / "results" / name).mkdir(parents=True)
            (folder / "results" / name / "results.json").write_text(json.dumps(data))
    return folder


def sweep_run(folder: Path, points: list[tuple[str, int, list[dict[str, Any] | None]]],
              references: dict | None = None) -> Path:
    """A sweep over bench.clients: (point name, clients value, metrics of each repeat)."""
    repeat = max(len(repeats) for _, _, repeats in points)
    clients: dict[str, dict[str, Any] | None] = {}
    placed: dict[str, tuple[str, int]] = {}
    for point, _, repeats in points:
        for index, metrics in enumerate(repeats, 1):
            name = f"bench-{point}-r{index}"
            clients[name] = results(metrics) if metrics is not None else None
            placed[name] = (point, index)
    sweep = {"keys": ["bench.clients"], "repeat": repeat,
             "points": [{"point": point, "values": {"bench.clients": value}} for point, value, _ in points]}
    return write_run(folder, clients, sweep, placed, references)


BASE = {"set.requests_per_s": 1000.0, "set.latency_p99_ms": 2.0, "errors_count": 0, "requests_ok_count": 5000}


def rows_of(done: subprocess.CompletedProcess[str]) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(done.stdout)))


# --- direction ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("metric", "expected"), [
    ("set.requests_per_s", HIGHER), ("output_tokens_per_s", HIGHER), ("recall_at_10_ratio", HIGHER),
    ("requests_ok_count", HIGHER), ("success_percent", HIGHER),
    ("set.latency_p99_ms", LOWER), ("ttft_p99_ms", LOWER), ("wall_time_s", LOWER), ("errors_count", LOWER),
    ("requests_failed_count", LOWER), ("requests_cut_count", LOWER), ("errors_per_s", LOWER),
    ("cache_miss_ratio", LOWER), ("reconnects_count", LOWER),
    ("queries_count", NEUTRAL), ("redis_memory_used_bytes", NEUTRAL), ("cpu_percent", NEUTRAL), ("status", NEUTRAL),
    # the LLM client's engine and energy figures (issue 20): a full KV cache or a long queue is neither good nor bad
    # in itself; less energy for the same work is better
    ("engine_kv_cache_usage_max_ratio", NEUTRAL), ("engine_waiting_max_count", NEUTRAL), ("gpu_power_mean_w", NEUTRAL),
    ("energy_per_token_j", LOWER), ("gpu_energy_j", LOWER),
])
def test_direction_from_the_metric_name(metric, expected):
    assert direction(metric) == expected


@pytest.mark.parametrize(("metric", "unit"), [("energy_per_token_j", "J"), ("gpu_power_mean_w", "W"),
                                              ("engine_kv_cache_usage_max_ratio", "ratio"), ("ttft_p99_ms", "ms")])
def test_unit_from_the_metric_name(metric, unit):
    from compiler.results.metrics import unit_of

    assert unit_of(metric) == unit


# --- compare --------------------------------------------------------------------------------------

def test_a_regression_fails_its_threshold_and_names_point_metric_values_and_change(tmp_path):
    write_run(tmp_path / "a", {"bench": results(BASE)})
    write_run(tmp_path / "b", {"bench": results({**BASE, "set.latency_p99_ms": 2.5, "set.requests_per_s": 1010.0})})
    done = orchc("compare", "a", "b", "--threshold", "*.latency_p99_ms=10", "--point-estimates", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "orchc: regression: point -, bench.set.latency_p99_ms: 2 -> 2.5 ms (+25.0%), a rise beyond the 10% " \
           "allowed (--threshold *.latency_p99_ms=10)" in done.stderr
    assert done.stderr.rstrip().endswith("orchc: error: 1 change(s) beyond the thresholds")
    table = done.stdout.splitlines()
    assert table[0].split() == ["point", "client", "metric", "unit", "A", "B", "change", "95%", "interval", "verdict"]
    latency = next(line for line in table if "set.latency_p99_ms" in line)
    assert latency.split() == ["-", "bench", "set.latency_p99_ms", "ms", "2", "2.5", "+25.0%", "-", "worse"]
    throughput = next(line for line in table if "set.requests_per_s" in line)
    assert throughput.split()[-4:] == ["+1.0%", "-", "no", "change"]  # within the default band of 5%
    assert "\x1b[" not in done.stdout  # not a terminal: no colour


def test_within_the_threshold_and_without_thresholds_exit_0(tmp_path):
    write_run(tmp_path / "a", {"bench": results(BASE)})
    write_run(tmp_path / "b", {"bench": results({**BASE, "set.latency_p99_ms": 2.1})})
    assert orchc("compare", "a", "b", "--threshold", "*.latency_p99_ms=10", "--point-estimates",
                 cwd=tmp_path).returncode == 0
    worse = tmp_path / "c"
    write_run(worse, {"bench": results({**BASE, "set.latency_p99_ms": 20.0})})
    assert orchc("compare", "a", "c", cwd=tmp_path).returncode == 0  # no threshold: a report only


def test_directions_latency_down_and_throughput_up_never_fail(tmp_path):
    write_run(tmp_path / "a", {"bench": results(BASE)})
    write_run(tmp_path / "b", {"bench": results({**BASE, "set.latency_p99_ms": 1.0, "set.requests_per_s": 3000.0,
                                                 "requests_ok_count": 9000})})
    assert orchc("compare", "a", "b", "--threshold", "*=1", "--point-estimates", cwd=tmp_path).returncode == 0
    # the same changes the other way round are regressions: throughput down, latency up, fewer ok requests
    done = orchc("compare", "b", "a", "--threshold", "*=1", "--point-estimates", cwd=tmp_path)
    assert done.returncode == 1
    failed = [line for line in done.stderr.splitlines() if line.startswith("orchc: regression:")]
    assert len(failed) == 3
    assert any("bench.set.requests_per_s: 3000 -> 1000 1/s (-66.7%), a fall beyond the 1%" in line for line in failed)
    assert any("bench.set.latency_p99_ms: 1 -> 2 ms (+100.0%), a rise beyond" in line for line in failed)
    assert any("bench.requests_ok_count: 9000 -> 5000 count" in line for line in failed)


def test_errors_from_zero_are_an_infinite_rise(tmp_path):
    write_run(tmp_path / "a", {"bench": results(BASE)})
    write_run(tmp_path / "b", {"bench": results({**BASE, "errors_count": 3})})
    done = orchc("compare", "a", "b", "--threshold", "errors_count=50", "--csv", "--point-estimates", cwd=tmp_path)
    assert done.returncode == 1
    assert "bench.errors_count: 0 -> 3 count (+inf%)" in done.stderr
    row = next(row for row in rows_of(done) if row["metric"] == "errors_count")
    assert (row["change_percent"], row["verdict"], row["direction"]) == ("", "worse", "lower is better")


def test_a_glob_matches_the_client_and_metric_and_selects_only_its_metrics(tmp_path):
    write_run(tmp_path / "a", {"bench": results(BASE), "load": results(BASE)})
    write_run(tmp_path / "b", {"bench": results(BASE), "load": results({**BASE, "set.latency_p99_ms": 9.0})})
    assert orchc("compare", "a", "b", "--threshold", "bench.*=5", "--point-estimates", cwd=tmp_path).returncode == 0
    assert orchc("compare", "a", "b", "--threshold", "set.requests_per_s=5", "--point-estimates",
                 cwd=tmp_path).returncode == 0
    done = orchc("compare", "a", "b", "--threshold", "load.set.latency_*=5", "--point-estimates", cwd=tmp_path)
    assert done.returncode == 1 and "load.set.latency_p99_ms: 2 -> 9 ms" in done.stderr


def test_signed_thresholds_for_metrics_without_a_direction(tmp_path):
    write_run(tmp_path / "a", {"bench": results({**BASE, "memory_bytes": 1000})})
    write_run(tmp_path / "b", {"bench": results({**BASE, "memory_bytes": 1500})})
    unsigned = orchc("compare", "a", "b", "--threshold", "memory_bytes=10", cwd=tmp_path)
    assert unsigned.returncode == 1 and "Traceback" not in unsigned.stderr
    assert unsigned.stderr.startswith("orchc: error: --threshold memory_bytes=10: memory_bytes has no known direction")
    assert unsigned.stdout == ""  # refused before anything is shown
    single = "--point-estimates"
    assert orchc("compare", "a", "b", "--threshold", "memory_bytes=+10", single, cwd=tmp_path).returncode == 1
    assert orchc("compare", "a", "b", "--threshold", "memory_bytes=-10", single, cwd=tmp_path).returncode == 0
    assert orchc("compare", "a", "b", "--threshold", "memory_bytes=+60%", single, cwd=tmp_path).returncode == 0
    # a sign also overrides a known direction: here a rise of throughput is what fails
    assert orchc("compare", "a", "b", "--threshold", "set.requests_per_s=+0", single, cwd=tmp_path).returncode == 0
    done = orchc("compare", "b", "a", "--threshold", "memory_bytes=-10", single, cwd=tmp_path)
    assert done.returncode == 1 and "memory_bytes: 1500 -> 1000 bytes (-33.3%), a fall beyond the 10%" in done.stderr


def test_points_are_matched_by_their_values_and_repeats_averaged(tmp_path):
    # A lists clients=10 as p01 and clients=50 as p02; B ran them the other way round, and has a point A has not
    sweep_run(tmp_path / "a", [("p01", 10, [{"set.requests_per_s": 100.0}, {"set.requests_per_s": 300.0}]),
                               ("p02", 50, [{"set.requests_per_s": 1000.0}, {"set.requests_per_s": 1000.0}])])
    sweep_run(tmp_path / "b", [("p01", 50, [{"set.requests_per_s": 1000.0}, {"set.requests_per_s": 1000.0}]),
                               ("p02", 10, [{"set.requests_per_s": 150.0}, {"set.requests_per_s": 250.0},
                                            {"set.requests_per_s": 200.0}]),
                               ("p03", 100, [{"set.requests_per_s": 1.0}])])
    done = orchc("compare", "a", "b", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    rows = {json.dumps(row["point"]): row for row in shown["rows"]}
    ten = rows['{"bench.clients": 10}']
    assert (ten["point_a"], ten["point_b"], ten["client"]) == ("p01", "p02", "bench")
    assert ten["a"]["mean"] == 200.0 and ten["a"]["n"] == 2 and ten["a"]["min"] == 100.0
    assert ten["b"]["mean"] == 200.0 and ten["b"]["n"] == 3
    # the change is the ratio of geometric means, its interval Welch's on the logs: wide with this spread
    assert ten["change_percent"] == pytest.approx(((150 * 250 * 200) ** (1 / 3) / (100 * 300) ** 0.5 - 1) * 100)
    assert ten["ci_low_percent"] < -50 and ten["ci_high_percent"] > 100 and ten["verdict"] == "inconclusive"
    assert ten["repeats_needed"] > 3 and ten["band_percent"] == 5.0
    fifty = rows['{"bench.clients": 50}']
    assert (fifty["point_a"], fifty["point_b"], fifty["verdict"]) == ("p02", "p01", "no change")
    assert (fifty["change_percent"], fifty["ci_low_percent"], fifty["ci_high_percent"]) == (0.0, 0.0, 0.0)
    assert fifty["repeats_needed"] is None
    hundred = rows['{"bench.clients": 100}']
    assert (hundred["a"], hundred["point_a"], hundred["verdict"]) == (None, None, "only in B")
    table = orchc("compare", "a", "b", cwd=tmp_path).stdout
    ten_line = next(line for line in table.splitlines() if line.startswith("bench.clients=10 "))
    cells = ten_line.split()
    assert cells[:11] == ["bench.clients=10", "bench", "set.requests_per_s", "1/s", "200", "±141", "(n=2)",
                          "200", "±50", "(n=3)", "+13.0%"]
    assert cells[13:15] == ["inconclusive", f"(n={ten['repeats_needed']}"]


def test_a_point_missing_in_b_is_shown_and_fails_its_threshold(tmp_path):
    sweep_run(tmp_path / "a", [("p01", 10, [{"set.latency_p99_ms": 1.0}]), ("p02", 50, [{"set.latency_p99_ms": 2.0}])])
    sweep_run(tmp_path / "b", [("p01", 10, [{"set.latency_p99_ms": 1.0}])])
    done = orchc("compare", "a", "b", "--threshold", "*latency*=10", cwd=tmp_path)
    assert done.returncode == 1
    assert "point bench.clients=50, bench.set.latency_p99_ms: 2 in A, missing in B" in done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("bench.clients=50"))
    assert line.split()[-7:] == ["2", "-", "-", "-", "only", "in", "A"]


def test_missing_metrics_and_clients_without_results_are_reported(tmp_path):
    write_run(tmp_path / "a", {"bench": results(BASE)})
    write_run(tmp_path / "b", {"bench": results({"set.requests_per_s": 990.0, "new_ms": 1.0}, status="partial")})
    done = orchc("compare", "a", "b", "--csv", "--point-estimates", cwd=tmp_path)
    assert done.returncode == 0
    verdicts = {row["metric"]: row["verdict"] for row in rows_of(done)}
    assert verdicts == {"errors_count": "only in A", "requests_ok_count": "only in A", "set.latency_p99_ms": "only in A",
                        "set.requests_per_s": "no change", "new_ms": "only in B"}  # -1%: within the band of 5%
    assert "orchc: note: B b: bench results are partial" in done.stderr
    write_run(tmp_path / "c", {"bench": None})
    done = orchc("compare", "a", "c", "--threshold", "set.requests_per_s=5", cwd=tmp_path)
    assert done.returncode == 1
    assert "orchc: note: B c: bench has no results" in done.stderr
    assert "bench.set.requests_per_s: 1000 in A, missing in B" in done.stderr


@pytest.mark.parametrize("threshold", ["latency", "=5", "x=", "x=abc", "x=5x", "x=--5", "x=nan", "x=inf"])
def test_a_malformed_threshold_is_an_error(tmp_path, threshold):
    write_run(tmp_path / "a", {"bench": results(BASE)})
    done = orchc("compare", "a", "a", "--threshold", threshold, cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"orchc: error: --threshold {threshold!r}: expected METRIC=PCT")


def test_a_threshold_matching_nothing_and_an_unknown_run_are_errors(tmp_path):
    write_run(tmp_path / "a", {"bench": results(BASE)})
    done = orchc("compare", "a", "a", "--threshold", "ttft_p99_ms=5", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr == ("orchc: error: --threshold ttft_p99_ms=5: matches no metric of either run; "
                           "did you mean 'set.latency_p99_ms'?\n")
    done = orchc("compare", "a", "nope", cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("orchc: error: runs/nope: not an orchc run")


@pytest.mark.parametrize("written", ["runs/nope", "./nope", "elsewhere/nope"])
def test_a_missing_run_given_as_a_path_is_named_as_written(tmp_path, written: str):
    write_run(tmp_path / "runs" / "a", {"bench": results(BASE)})
    done = orchc("compare", "a", written, cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.startswith(f"orchc: error: {written}: not an orchc run"), done.stderr
    assert "runs/runs" not in done.stderr and "runs/elsewhere" not in done.stderr


def test_a_terminal_gets_green_and_red(tmp_path):
    write_run(tmp_path / "a", {"bench": results(BASE)})
    write_run(tmp_path / "b", {"bench": results({**BASE, "set.latency_p99_ms": 3.0, "set.requests_per_s": 2000.0})})
    from compiler.results.compare import _sides
    from compiler.run.runs import load_run

    rows = compare_rows(_sides(*load_run(str(tmp_path / "a"))), _sides(*load_run(str(tmp_path / "b"))),
                        Judging(point_estimates=True))

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    _print_comparison("a -> b", rows, screen)
    text = screen.getvalue()
    assert re.search(r"\x1b\[31m *\+50\.0%\x1b\[0m", text)  # latency up: red
    assert re.search(r"\x1b\[32m *\+100\.0%\x1b\[0m", text)  # throughput up: green
    assert re.search(r"\x1b\[3[12]m *\+0\.0%", text) is None  # unchanged: plain


# --- noise: a server whose speed drifts -----------------------------------------------------------

def drifting_results(rng: random.Random, sigma: float, slowdown: float = 1.0) -> dict[str, Any]:
    """One repeat against a server whose speed drifts like a shared machine's: the repeat runs in a time window with
    a log-normal speed factor (sigma per window); throughput divides by it, latencies multiply (each percentile with a
    little noise of its own); `slowdown` is a real change of the server."""
    factor = slowdown * math.exp(rng.gauss(0.0, sigma))
    return results({"get.requests_per_s": 100_000.0 / factor, "get.latency_p50_ms": 0.2 * factor * math.exp(rng.gauss(0, 0.03)),
                    "get.latency_p99_ms": 0.9 * factor * math.exp(rng.gauss(0, 0.05)), "errors_count": 0})


def drifting_run(folder: Path, seed: int, sigma: float, slowdown: float = 1.0, repeats: int = 4) -> Path:
    rng = random.Random(seed)
    clients = {f"bench-r{index}": drifting_results(rng, sigma, slowdown) for index in range(1, repeats + 1)}
    return write_run(folder, clients, {"keys": [], "repeat": repeats, "points": []},
                     {name: (None, index) for index, name in enumerate(clients, 1)})  # type: ignore[misc]


DRIFT_THRESHOLDS = ("--threshold", "*latency*=10", "--threshold", "*requests_per_s=10")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_two_runs_of_the_same_drifting_server_are_not_regressions(tmp_path, seed):
    """The issue's report: a rerun of the same server was flagged `regression -38.7%`. At a realistic drift (sigma
    0.12 per repeat) and 4 repeats, differences are `no change` or `inconclusive` and the gate passes."""
    drifting_run(tmp_path / "a", seed, 0.12)
    drifting_run(tmp_path / "b", 1000 + seed, 0.12)
    done = orchc("compare", "a", "b", *DRIFT_THRESHOLDS, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    verdicts = {row["metric"]: row["verdict"] for row in shown["rows"]}
    assert set(verdicts.values()) <= {"no change", "inconclusive"}, verdicts
    assert verdicts["errors_count"] == "no change" and shown["failures"] == []
    for row in shown["rows"]:
        assert row["a"]["n"] == row["b"]["n"] == 4
        assert row["ci_low_percent"] <= row["change_percent"] <= row["ci_high_percent"]


def test_a_server_twice_as_slow_is_a_regression_named_by_metric(tmp_path):
    drifting_run(tmp_path / "a", 1, 0.12)
    drifting_run(tmp_path / "b", 2, 0.12, slowdown=2.0)
    done = orchc("compare", "a", "b", *DRIFT_THRESHOLDS, cwd=tmp_path)
    assert done.returncode == 1
    failed = sorted(line.split(": ")[2].split(",")[1].strip() for line in done.stderr.splitlines()
                    if line.startswith("orchc: regression:"))
    assert failed == ["bench.get.latency_p50_ms", "bench.get.latency_p99_ms", "bench.get.requests_per_s"], done.stderr
    assert re.search(r"bench\.get\.latency_p99_ms: [0-9.]+ -> [0-9.]+ ms \(\+[0-9.]+%, 95% interval \[\+[0-9.]+%, "
                     r"\+[0-9.]+%\]\), a rise beyond the 10% allowed", done.stderr), done.stderr
    table = done.stdout
    assert len([line for line in table.splitlines() if line.rstrip().endswith("worse")]) == 3


def test_the_issues_noisy_throughput_is_inconclusive_with_the_repeats_that_would_decide(tmp_path):
    """133,343 ±60,479 -> 81,802 ±24,080 requests/s over 3 repeats was called a regression of -38.7%."""
    a = [80_000.0, 120_029.0, 200_000.0]
    b = [60_000.0, 78_000.0, 107_406.0]
    sweep_run(tmp_path / "a", [("p01", 1, [{"get.requests_per_s": value} for value in a])])
    sweep_run(tmp_path / "b", [("p01", 1, [{"get.requests_per_s": value} for value in b])])
    done = orchc("compare", "a", "b", "--threshold", "*requests_per_s=10", "--csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (row,) = rows_of(done)
    assert row["verdict"] == "inconclusive" and float(row["change_percent"]) < -30
    assert float(row["ci_low_percent"]) < -10 < float(row["ci_high_percent"])
    assert int(row["repeats_needed"]) > 3 and row["band_percent"] == "10.0"
    done = orchc("compare", "a", "b", "--threshold", "*requests_per_s=10", cwd=tmp_path)
    assert f"inconclusive (n={row['repeats_needed']} would decide)" in done.stdout
    assert re.search(r"orchc: note: point bench.clients=1, bench.get.requests_per_s: 133343 -> 81802 1/s "
                     r"\(-[0-9.]+%, 95% interval \[-[0-9.]+%, \+[0-9.]+%\]\) is beyond --threshold \*requests_per_s=10 but "
                     f"its interval is not: inconclusive \\({row['repeats_needed']} repeats per run would decide at "
                     r"this spread\)", done.stderr), done.stderr


def test_one_repeat_beyond_a_threshold_is_inconclusive_and_said_so(tmp_path):
    write_run(tmp_path / "a", {"bench": results(BASE)})
    write_run(tmp_path / "b", {"bench": results({**BASE, "set.latency_p99_ms": 2.5})})
    done = orchc("compare", "a", "b", "--threshold", "*.latency_p99_ms=10", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "orchc: note: point -, bench.set.latency_p99_ms: 2 -> 2.5 ms (+25.0%) is beyond --threshold " \
           "*.latency_p99_ms=10, but with one repeat (n=1 -> n=1) there is no interval: inconclusive" in done.stderr
    latency = next(line for line in done.stdout.splitlines() if "set.latency_p99_ms" in line)
    assert latency.split()[-3:] == ["+25.0%", "-", "inconclusive"]


def test_a_higher_confidence_widens_the_interval(tmp_path):
    sweep_run(tmp_path / "a", [("p01", 1, [{"x_ms": 10.0}, {"x_ms": 11.0}, {"x_ms": 10.5}])])
    sweep_run(tmp_path / "b", [("p01", 1, [{"x_ms": 12.0}, {"x_ms": 12.6}, {"x_ms": 13.0}])])
    widths = {}
    for confidence in ("90", "95", "99.9%"):
        done = orchc("compare", "a", "b", "--json", "--confidence", confidence, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        shown = json.loads(done.stdout)
        (row,) = shown["rows"]
        widths[confidence] = row["ci_high_percent"] - row["ci_low_percent"]
        assert shown["confidence_percent"] == float(confidence.rstrip("%"))
    assert widths["90"] < widths["95"] < widths["99.9%"]


@pytest.mark.parametrize("confidence", ["50", "100", "x", "-5", "95.5.5"])
def test_a_confidence_out_of_range_is_an_error(tmp_path, confidence):
    write_run(tmp_path / "a", {"bench": results(BASE)})
    done = orchc("compare", "a", "a", "--confidence", confidence, cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"orchc: error: --confidence {confidence!r}: expected a percent between 50 and 100")


# --- references -----------------------------------------------------------------------------------

REFERENCES = {"bench.set.requests_per_s": {"min": 800}, "bench.set.latency_p99_ms": {"expect": 2.0,
                                                                                      "tolerance_percent": 10}}


def test_references_pass(tmp_path):
    sweep_run(tmp_path / "run", [("p01", 10, [{"set.requests_per_s": 900.0, "set.latency_p99_ms": 2.1}] * 2),
                                 ("p02", 50, [{"set.requests_per_s": 800.0, "set.latency_p99_ms": 1.8}])],
              references=REFERENCES)
    done = orchc("results", "--check", "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["reference", "point", "job", "value", "allowed", "result"]
    assert len(lines) == 1 + 6  # header, 2 references x 3 client results
    assert all(line.endswith("pass") for line in lines[1:])
    assert lines[4].split() == ["bench.set.latency_p99_ms", "bench.clients=10", "bench-p01-r1", "2.1", "ms", "2",
                                "±10%", "[1.8,", "2.2]", "pass"]


def test_references_fail_at_any_point_or_repeat(tmp_path):
    sweep_run(tmp_path / "run", [("p01", 10, [{"set.requests_per_s": 900.0, "set.latency_p99_ms": 2.1},
                                              {"set.requests_per_s": 799.0, "set.latency_p99_ms": 2.1}]),
                                 ("p02", 50, [{"set.requests_per_s": 900.0, "set.latency_p99_ms": 2.3}])],
              references=REFERENCES)
    done = orchc("results", "--check", "run", "--json", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr == "orchc: error: 2 of 6 reference check(s) failed\n"
    checks = json.loads(done.stdout)["checks"]
    failed = [(check["reference"], check["job"], check["value"]) for check in checks if check["result"] == "FAIL"]
    assert failed == [("bench.set.requests_per_s", "bench-p01-r2", "799 1/s"),
                      ("bench.set.latency_p99_ms", "bench-p02-r1", "2.3 ms")]


def test_references_per_point_check_the_mean_with_its_interval(tmp_path):
    """`per: point`: one check per point, the mean over its repeats with its 95% t interval; FAIL only when the whole
    interval is outside the bounds, `inconclusive` (not a failure) when it crosses one."""
    sweep_run(tmp_path / "run", [
        ("p01", 10, [{"set.requests_per_s": v} for v in (900.0, 910.0, 890.0)]),   # 900 [875, 925]: pass
        ("p02", 50, [{"set.requests_per_s": v} for v in (700.0, 900.0, 800.0)]),   # 800 [552, 1048]: inconclusive
        ("p03", 100, [{"set.requests_per_s": v} for v in (600.0, 610.0, 590.0)]),  # 600 [575, 625]: FAIL
        ("p04", 200, [{"other_ms": 1.0}])])                                         # missing: FAIL
    references = {"bench.set.requests_per_s": {"min": 800, "per": "point"}}
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({**manifest, "references": references}))
    done = orchc("results", "--check", "run", "--json", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    checks = json.loads(done.stdout)["checks"]
    assert [(check["point"], check["result"]) for check in checks] == [
        ("bench.clients=10", "pass"), ("bench.clients=50", "inconclusive"), ("bench.clients=100", "FAIL"),
        ("bench.clients=200", "FAIL")]
    assert checks[0]["value"] == "900 1/s (n=3, 95% [875.159, 924.841])"  # 900 +- 4.303 * 10 / sqrt(3)
    assert checks[0]["job"] == "bench-p01-r1, bench-p01-r2, bench-p01-r3" and checks[3]["value"] == "missing"
    assert "orchc: note: 1 reference check(s) inconclusive" in done.stderr
    assert done.stderr.endswith("orchc: error: 2 of 4 reference check(s) failed\n")
    # the per-repeat form of the same bound fails every repeat below 800
    references["bench.set.requests_per_s"]["per"] = "repeat"
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({**manifest, "references": references}))
    done = orchc("results", "--check", "run", "--json", cwd=tmp_path)
    assert json.loads(done.stdout)["failed"] == 1 + 3 + 1


def test_a_missing_metric_or_client_fails_a_reference(tmp_path):
    write_run(tmp_path / "run", {"bench": results({"set.requests_per_s": 900.0}), "load": None},
              references={"bench.set.requests_per_s": {"min": 800, "max": 1000}, "bench.get.requests_per_s": {"min": 1},
                          "load.set.requests_per_s": {"max": 5}, "other.x_ms": {"max": 5}})
    done = orchc("results", "--check", "run", "--csv", cwd=tmp_path)
    assert done.returncode == 1
    got = [(row["reference"], row["value"], row["allowed"], row["result"]) for row in rows_of(done)]
    assert got == [("bench.set.requests_per_s", "900 1/s", ">= 800, <= 1000", "pass"),
                   ("bench.get.requests_per_s", "missing; did you mean 'set.requests_per_s'?", ">= 1", "FAIL"),
                   ("load.set.requests_per_s", "no results", "<= 5", "FAIL"),
                   ("other.x_ms", "no client other in this run", "<= 5", "FAIL")]


def test_client_names_with_dots_take_the_longest_fit(tmp_path):
    write_run(tmp_path / "run", {"bench": results({"v1.latency_ms": 50.0}), "bench.v1": results({"latency_ms": 1.0})},
              references={"bench.v1.latency_ms": {"max": 5}})
    done = orchc("results", "--check", "run", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stdout
    assert [check["job"] for check in json.loads(done.stdout)["checks"]] == ["bench.v1"]


@pytest.mark.parametrize(("references", "message"), [
    (None, "has no references: give the recipe a `references:` block"),
    ([1], "references is not a mapping"),
    ({"bench.x_ms": {"expect": 1}}, "references.bench.x_ms: expect and tolerance_percent go together"),
    ({"bench.x_ms": {"max": "5"}}, "references.bench.x_ms: max is not a number"),
    ({"bench.x_ms": {"max": True}}, "references.bench.x_ms: max is not a number"),
    ({"bench.x_ms": {"maximum": 5}}, "references.bench.x_ms: expected {expect: N, tolerance_percent: P}"),
    ({"bench.x_ms": {}}, "references.bench.x_ms: expected {expect: N, tolerance_percent: P}"),
    ({"bench.x_ms": {"expect": 1, "tolerance_percent": -1}}, "references.bench.x_ms: tolerance_percent is negative"),
    ({"bench.x_ms": {"per": "point"}}, "references.bench.x_ms: expected {expect: N, tolerance_percent: P}"),
    ({"bench.x_ms": {"max": 1, "per": "mean"}}, "references.bench.x_ms: per is 'mean', expected repeat or point"),
])
def test_malformed_references_are_errors(tmp_path, references, message):
    write_run(tmp_path / "run", {"bench": results({"x_ms": 1.0})}, references=references)
    done = orchc("results", "--check", "run", cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("orchc: error: run/manifest.json") and message in done.stderr
    assert done.stdout == ""


def test_check_of_an_unknown_run_is_an_error(tmp_path):
    done = orchc("results", "--check", "nope", cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.startswith("orchc: error: runs/nope: not an orchc run")


def test_the_recipe_schema_accepts_references_and_locates_bad_ones(tmp_path):
    recipe = "site: local\nservice:\n  name: redis\nclient:\n  name: bench\n  type: redis_client\nreferences:\n"
    (tmp_path / "ok.yaml").write_text(recipe + "  bench.set.requests_per_s: {min: 800}\n"
                                      "  bench.set.latency_p99_ms: {expect: 2, tolerance_percent: 10, max: 3, per: point}\n")
    done = orchc("validate", "ok.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (tmp_path / "bad.yaml").write_text(recipe + "  bench.set.requests_per_s: {min: fast}\n  nodot: {max: 1}\n"
                                       "  bench.x_ms: {expect: 3}\n  bench.y_ms: {max: 1, per: mean}\n")
    done = orchc("validate", "bad.yaml", cwd=tmp_path)
    assert done.returncode == 1
    assert "bad.yaml:8:35: error: references.bench.set.requests_per_s.min: expected number" in done.stderr
    assert "bad.yaml:9:3: error: invalid name 'nodot' in references" in done.stderr
    assert "bad.yaml:10:15: error: references.bench.x_ms: 'tolerance_percent' is a dependency of 'expect'" \
        in done.stderr
    assert "bad.yaml:11:29: error: references.bench.y_ms.per: 'mean' is not one of 'repeat', 'point'" in done.stderr


@pytest.mark.slow
def test_results_csv_has_one_column_per_swept_key(tmp_path):
    """What spreadsheets and pandas want: `bench.clients` a column of its own, not {"bench.clients": 1} in one cell."""
    sweep_run(tmp_path / "run", [("p01", 1, [BASE, BASE]), ("p02", 10, [BASE])])
    done = orchc("results", "run", "--csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = rows_of(done)
    assert list(rows[0])[-3:] == ["unit", "bench.clients", "parameters"] and "swept" not in rows[0]
    assert {(row["job"], row["bench.clients"]) for row in rows} == \
        {("bench-p01-r1", "1"), ("bench-p01-r2", "1"), ("bench-p02-r1", "10")}


@pytest.mark.slow
def test_results_csv_of_a_run_without_a_sweep_has_no_swept_columns(tmp_path):
    write_run(tmp_path / "run", {"bench": results(BASE)})
    done = orchc("results", "run", "--csv", cwd=tmp_path)
    assert done.stdout.splitlines()[0] == "run,point,repeat,job,slurm_id,type,state,status,metric,value,unit,parameters"


# --- metric names in thresholds and references match by suffix or glob -----------------------------

def test_a_threshold_matches_the_last_parts_of_a_metric_name(tmp_path):
    """The README's own `--threshold requests_per_s=5` on redis, whose metrics are `get.requests_per_s`, ..."""
    write_run(tmp_path / "a", {"bench": results({**BASE, "get.requests_per_s": 1000.0})})
    write_run(tmp_path / "b", {"bench": results({**BASE, "get.requests_per_s": 900.0})})
    done = orchc("compare", "a", "b", "--threshold", "requests_per_s=5", "--point-estimates", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "bench.get.requests_per_s: 1000 -> 900 1/s (-10.0%)" in done.stderr
    assert "bench.set.requests_per_s" not in done.stderr          # unchanged: within the threshold
    # a suffix is whole parts: `per_s` is no part of `get.requests_per_s`, and `ok_count` no part of `requests_ok_count`
    done = orchc("compare", "a", "b", "--threshold", "per_s=5", cwd=tmp_path)
    assert done.returncode == 1 and "matches no metric of either run" in done.stderr


def test_a_threshold_matching_nothing_lists_the_near_names(tmp_path):
    write_run(tmp_path / "a", {"bench": results(BASE)})
    done = orchc("compare", "a", "a", "--threshold", "latency_p95_ms=5", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr == ("orchc: error: --threshold latency_p95_ms=5: matches no metric of either run; "
                           "did you mean 'set.latency_p99_ms'?\n")


def test_a_reference_matches_the_last_parts_of_a_metric_name(tmp_path):
    write_run(tmp_path / "run", {"bench": results({"get.requests_per_s": 900.0, "set.requests_per_s": 700.0})},
              references={"bench.requests_per_s": {"min": 800}, "bench.latency_p99_ms": {"max": 1}})
    done = orchc("results", "--check", "run", "--csv", cwd=tmp_path)
    assert done.returncode == 1
    got = [(row["reference"], row["value"], row["result"]) for row in rows_of(done)]
    assert got == [("bench.requests_per_s (get.requests_per_s)", "900 1/s", "pass"),
                   ("bench.requests_per_s (set.requests_per_s)", "700 1/s", "FAIL"),
                   ("bench.latency_p99_ms", "missing", "FAIL")]


# --- headline rows by default ---------------------------------------------------------------------------

REDIS = {"get.requests_per_s": 1000.0, "get.latency_p50_ms": 1.0, "get.latency_p95_ms": 1.9, "get.latency_p99_ms": 2.0,
         "get.latency_max_ms": 9.0, "get.latency_mean_ms": 1.1, "errors_count": 0}
REDIS_HEADLINE = {"redis_client": ["requests_per_s", "latency_p50_ms", "latency_p99_ms"]}


def shown_metrics(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line.split()[2] for line in done.stdout.splitlines()[1:] if line.strip()]


def test_compare_shows_the_headline_metrics_of_each_type_by_default(tmp_path):
    write_run(tmp_path / "a", {"bench": results(REDIS)}, headline=REDIS_HEADLINE)
    write_run(tmp_path / "b", {"bench": results({**REDIS, "get.latency_max_ms": 20.0})}, headline=REDIS_HEADLINE)
    done = orchc("compare", "a", "b", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert shown_metrics(done) == ["get.latency_p50_ms", "get.latency_p99_ms", "get.requests_per_s"]
    assert "orchc: note: 4 more metrics not shown (not in the headline of their type): --all shows them" in done.stderr
    assert shown_metrics(orchc("compare", "a", "b", "--all", cwd=tmp_path)) == sorted(REDIS)
    # a metric a threshold names is shown, headline or not
    done = orchc("compare", "a", "b", "--threshold", "latency_max_ms=10", "--point-estimates", cwd=tmp_path)
    assert done.returncode == 1 and "get.latency_max_ms" in shown_metrics(done)
    # JSON and CSV have every row; JSON says which are headline
    rows = json.loads(orchc("compare", "a", "b", "--json", cwd=tmp_path).stdout)["rows"]
    assert {row["metric"]: row["headline"] for row in rows} == {name: name in ("get.requests_per_s", "get.latency_p50_ms",
                                                                               "get.latency_p99_ms") for name in REDIS}


def test_a_type_without_a_headline_shows_throughputs_medians_and_tails(tmp_path):
    write_run(tmp_path / "a", {"bench": results(REDIS)})
    done = orchc("compare", "a", "a", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert shown_metrics(done) == ["get.latency_p50_ms", "get.latency_p99_ms", "get.requests_per_s"]

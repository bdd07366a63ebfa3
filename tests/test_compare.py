"""`orchc compare` and `orchc results --check` on run folders built by hand (run.json, manifest.json and
results/<client>/results.json, in the shapes the compile side and the clients write), through the CLI."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

from compiler.results.compare import _print_comparison, compare_rows
from compiler.results.metrics import HIGHER, LOWER, NEUTRAL, direction


def orchc(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    # no SLURM program is needed: compare and --check read the run folders only
    return subprocess.run([sys.executable, "-m", "compiler", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)})


def results(metrics: dict[str, Any], status: str = "complete") -> dict[str, Any]:
    return {"schema": "orchc-results/1", "metrics": metrics, "status": status, "parameters": {}, "environment": {}}


def write_run(folder: Path, clients: dict[str, dict[str, Any] | None], sweep: dict | None = None,
              placed: dict[str, tuple[str, int]] | None = None, references: dict | None = None) -> Path:
    """A run folder: one redis service, the given clients (name -> results, None: no results.json yet);
    `placed` gives a client's (point, repeat) in the manifest."""
    folder.mkdir(parents=True)
    names = ["redis", *clients]
    jobs = [{"name": name, "type": "redis" if name == "redis" else "redis_client",
             "role": "service" if name == "redis" else "client", "target": None if name == "redis" else "redis",
             "script": f"{name}.sbatch", "slurm_id": str(100 + index), "submitted": "2026-01-01T00:00:00Z"}
            for index, name in enumerate(names)]
    (folder / "run.json").write_text(json.dumps({
        "recipe": "r", "site": "local", "created": "2026-01-01T00:00:00Z", "run_dir": str(folder),
        "state": "submitted", "error": None, "jobs": jobs}))
    manifest: dict[str, Any] = {"recipe": "r", "jobs": [
        {"name": name, **({"point": placed[name][0], "repeat": placed[name][1]} if placed and name in placed else {})}
        for name in names]}
    if sweep is not None:
        manifest["sweep"] = sweep
    if references is not None:
        manifest["references"] = references
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
])
def test_direction_from_the_metric_name(metric, expected):
    assert direction(metric) == expected


# --- compare --------------------------------------------------------------------------------------

def test_a_regression_fails_its_threshold_and_names_point_metric_values_and_change(tmp_path):
    write_run(tmp_path / "a", {"bench": results(BASE)})
    write_run(tmp_path / "b", {"bench": results({**BASE, "set.latency_p99_ms": 2.5, "set.requests_per_s": 1010.0})})
    done = orchc("compare", "a", "b", "--threshold", "*.latency_p99_ms=10", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "orchc: regression: point -, bench.set.latency_p99_ms: 2 -> 2.5 ms (+25.0%), a rise beyond the 10% " \
           "allowed (--threshold *.latency_p99_ms=10)" in done.stderr
    assert done.stderr.rstrip().endswith("orchc: error: 1 change(s) beyond the thresholds")
    table = done.stdout.splitlines()
    assert table[0].split() == ["point", "client", "metric", "unit", "A", "B", "change"]
    latency = next(line for line in table if "set.latency_p99_ms" in line)
    assert latency.split() == ["-", "bench", "set.latency_p99_ms", "ms", "2", "2.5", "+25.0%", "worse"]
    throughput = next(line for line in table if "set.requests_per_s" in line)
    assert throughput.split()[-2:] == ["+1.0%", "better"]
    assert "\x1b[" not in done.stdout  # not a terminal: no colour


def test_within_the_threshold_and_without_thresholds_exit_0(tmp_path):
    write_run(tmp_path / "a", {"bench": results(BASE)})
    write_run(tmp_path / "b", {"bench": results({**BASE, "set.latency_p99_ms": 2.1})})
    assert orchc("compare", "a", "b", "--threshold", "*.latency_p99_ms=10", cwd=tmp_path).returncode == 0
    worse = tmp_path / "c"
    write_run(worse, {"bench": results({**BASE, "set.latency_p99_ms": 20.0})})
    assert orchc("compare", "a", "c", cwd=tmp_path).returncode == 0  # no threshold: a report only


def test_directions_latency_down_and_throughput_up_never_fail(tmp_path):
    write_run(tmp_path / "a", {"bench": results(BASE)})
    write_run(tmp_path / "b", {"bench": results({**BASE, "set.latency_p99_ms": 1.0, "set.requests_per_s": 3000.0,
                                                 "requests_ok_count": 9000})})
    assert orchc("compare", "a", "b", "--threshold", "*=1", cwd=tmp_path).returncode == 0
    # the same changes the other way round are regressions: throughput down, latency up, fewer ok requests
    done = orchc("compare", "b", "a", "--threshold", "*=1", cwd=tmp_path)
    assert done.returncode == 1
    failed = [line for line in done.stderr.splitlines() if line.startswith("orchc: regression:")]
    assert len(failed) == 3
    assert any("bench.set.requests_per_s: 3000 -> 1000 1/s (-66.7%), a fall beyond the 1%" in line for line in failed)
    assert any("bench.set.latency_p99_ms: 1 -> 2 ms (+100.0%), a rise beyond" in line for line in failed)
    assert any("bench.requests_ok_count: 9000 -> 5000 count" in line for line in failed)


def test_errors_from_zero_are_an_infinite_rise(tmp_path):
    write_run(tmp_path / "a", {"bench": results(BASE)})
    write_run(tmp_path / "b", {"bench": results({**BASE, "errors_count": 3})})
    done = orchc("compare", "a", "b", "--threshold", "errors_count=50", "--csv", cwd=tmp_path)
    assert done.returncode == 1
    assert "bench.errors_count: 0 -> 3 count (+inf%)" in done.stderr
    row = next(row for row in rows_of(done) if row["metric"] == "errors_count")
    assert (row["change_percent"], row["verdict"], row["direction"]) == ("", "worse", "lower is better")


def test_a_glob_matches_the_client_and_metric_and_selects_only_its_metrics(tmp_path):
    write_run(tmp_path / "a", {"bench": results(BASE), "load": results(BASE)})
    write_run(tmp_path / "b", {"bench": results(BASE), "load": results({**BASE, "set.latency_p99_ms": 9.0})})
    assert orchc("compare", "a", "b", "--threshold", "bench.*=5", cwd=tmp_path).returncode == 0
    assert orchc("compare", "a", "b", "--threshold", "set.requests_per_s=5", cwd=tmp_path).returncode == 0
    done = orchc("compare", "a", "b", "--threshold", "load.set.latency_*=5", cwd=tmp_path)
    assert done.returncode == 1 and "load.set.latency_p99_ms: 2 -> 9 ms" in done.stderr


def test_signed_thresholds_for_metrics_without_a_direction(tmp_path):
    write_run(tmp_path / "a", {"bench": results({**BASE, "memory_bytes": 1000})})
    write_run(tmp_path / "b", {"bench": results({**BASE, "memory_bytes": 1500})})
    unsigned = orchc("compare", "a", "b", "--threshold", "memory_bytes=10", cwd=tmp_path)
    assert unsigned.returncode == 1 and "Traceback" not in unsigned.stderr
    assert unsigned.stderr.startswith("orchc: error: --threshold memory_bytes=10: memory_bytes has no known direction")
    assert unsigned.stdout == ""  # refused before anything is shown
    assert orchc("compare", "a", "b", "--threshold", "memory_bytes=+10", cwd=tmp_path).returncode == 1
    assert orchc("compare", "a", "b", "--threshold", "memory_bytes=-10", cwd=tmp_path).returncode == 0
    assert orchc("compare", "a", "b", "--threshold", "memory_bytes=+60%", cwd=tmp_path).returncode == 0
    # a sign also overrides a known direction: here a rise of throughput is what fails
    assert orchc("compare", "a", "b", "--threshold", "set.requests_per_s=+0", cwd=tmp_path).returncode == 0
    done = orchc("compare", "b", "a", "--threshold", "memory_bytes=-10", cwd=tmp_path)
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
    assert ten["change_percent"] == 0.0 and ten["verdict"] == "same"
    fifty = rows['{"bench.clients": 50}']
    assert (fifty["point_a"], fifty["point_b"], fifty["verdict"]) == ("p02", "p01", "same")
    hundred = rows['{"bench.clients": 100}']
    assert (hundred["a"], hundred["point_a"], hundred["verdict"]) == (None, None, "only in B")
    table = orchc("compare", "a", "b", cwd=tmp_path).stdout
    ten_line = next(line for line in table.splitlines() if line.startswith("bench.clients=10 "))
    assert ten_line.split() == ["bench.clients=10", "bench", "set.requests_per_s", "1/s", "200", "±141", "(n=2)",
                                "200", "±50", "(n=3)", "+0.0%", "same"]


def test_a_point_missing_in_b_is_shown_and_fails_its_threshold(tmp_path):
    sweep_run(tmp_path / "a", [("p01", 10, [{"set.latency_p99_ms": 1.0}]), ("p02", 50, [{"set.latency_p99_ms": 2.0}])])
    sweep_run(tmp_path / "b", [("p01", 10, [{"set.latency_p99_ms": 1.0}])])
    done = orchc("compare", "a", "b", "--threshold", "*latency*=10", cwd=tmp_path)
    assert done.returncode == 1
    assert "point bench.clients=50, bench.set.latency_p99_ms: 2 in A, missing in B" in done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("bench.clients=50"))
    assert line.split()[-6:] == ["2", "-", "-", "only", "in", "A"]


def test_missing_metrics_and_clients_without_results_are_reported(tmp_path):
    write_run(tmp_path / "a", {"bench": results(BASE)})
    write_run(tmp_path / "b", {"bench": results({"set.requests_per_s": 990.0, "new_ms": 1.0}, status="partial")})
    done = orchc("compare", "a", "b", "--csv", cwd=tmp_path)
    assert done.returncode == 0
    verdicts = {row["metric"]: row["verdict"] for row in rows_of(done)}
    assert verdicts == {"errors_count": "only in A", "requests_ok_count": "only in A", "set.latency_p99_ms": "only in A",
                        "set.requests_per_s": "worse", "new_ms": "only in B"}
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
    assert done.stderr == "orchc: error: --threshold ttft_p99_ms=5: matches no metric of either run\n"
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

    rows = compare_rows(_sides(*load_run(str(tmp_path / "a"))), _sides(*load_run(str(tmp_path / "b"))))

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    _print_comparison("a -> b", rows, screen)
    text = screen.getvalue()
    assert re.search(r"\x1b\[31m *\+50\.0%\x1b\[0m", text)  # latency up: red
    assert re.search(r"\x1b\[32m *\+100\.0%\x1b\[0m", text)  # throughput up: green
    assert re.search(r"\x1b\[3[12]m *\+0\.0%", text) is None  # unchanged: plain


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


def test_a_missing_metric_or_client_fails_a_reference(tmp_path):
    write_run(tmp_path / "run", {"bench": results({"set.requests_per_s": 900.0}), "load": None},
              references={"bench.set.requests_per_s": {"min": 800, "max": 1000}, "bench.get.requests_per_s": {"min": 1},
                          "load.set.requests_per_s": {"max": 5}, "other.x_ms": {"max": 5}})
    done = orchc("results", "--check", "run", "--csv", cwd=tmp_path)
    assert done.returncode == 1
    got = [(row["reference"], row["value"], row["allowed"], row["result"]) for row in rows_of(done)]
    assert got == [("bench.set.requests_per_s", "900 1/s", ">= 800, <= 1000", "pass"),
                   ("bench.get.requests_per_s", "missing", ">= 1", "FAIL"),
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
                                      "  bench.set.latency_p99_ms: {expect: 2, tolerance_percent: 10, max: 3}\n")
    done = orchc("validate", "ok.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (tmp_path / "bad.yaml").write_text(recipe + "  bench.set.requests_per_s: {min: fast}\n  nodot: {max: 1}\n"
                                       "  bench.x_ms: {expect: 3}\n")
    done = orchc("validate", "bad.yaml", cwd=tmp_path)
    assert done.returncode == 1
    assert "bad.yaml:8:35: error: references.bench.set.requests_per_s.min: expected number" in done.stderr
    assert "bad.yaml:9:3: error: invalid name 'nodot' in references" in done.stderr
    assert "bad.yaml:10:15: error: references.bench.x_ms: 'tolerance_percent' is a dependency of 'expect'" \
        in done.stderr


def test_results_csv_has_one_column_per_swept_key(tmp_path):
    """What spreadsheets and pandas want: `bench.clients` a column of its own, not {"bench.clients": 1} in one cell."""
    sweep_run(tmp_path / "run", [("p01", 1, [BASE, BASE]), ("p02", 10, [BASE])])
    done = orchc("results", "run", "--csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = rows_of(done)
    assert list(rows[0])[-3:] == ["unit", "bench.clients", "parameters"] and "swept" not in rows[0]
    assert {(row["job"], row["bench.clients"]) for row in rows} == \
        {("bench-p01-r1", "1"), ("bench-p01-r2", "1"), ("bench-p02-r1", "10")}


def test_results_csv_of_a_run_without_a_sweep_has_no_swept_columns(tmp_path):
    write_run(tmp_path / "run", {"bench": results(BASE)})
    done = orchc("results", "run", "--csv", cwd=tmp_path)
    assert done.stdout.splitlines()[0] == "run,point,repeat,job,slurm_id,type,state,status,metric,value,unit,parameters"

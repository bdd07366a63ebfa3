"""`orchc results` shows, below the merged figures, one row per task of a client with several tasks (tasks.json of the
multi-node llm_client) and one row per replica of a client that spread its load over the replicas of a service
(replicas.json), each flagged when llm_bench found its figures far from the others' (issue 21, items 4 and 5)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from test_compare import results, write_run


def task(number: int, node: str, ok: int, per_s: float, e2e: tuple[float, float], ttft: tuple[float, float]) -> dict[str, Any]:
    return {"task": number, "node": node, "metrics": {
        "requests_ok_count": ok, "requests_failed_count": 0, "request_throughput_per_s": per_s,
        "e2e_latency_median_ms": e2e[0], "e2e_latency_p99_ms": e2e[1], "ttft_median_ms": ttft[0], "ttft_p99_ms": ttft[1]}}


TASKS = {"tasks": [task(0, "n1", 10, 5.0, (100.0, 180.0), (10.0, 19.0)), task(1, "n2", 10, 5.2, (96.0, 170.0), (11.0, 20.0)),
                   task(2, "n3", 10, 1.5, (410.0, 900.0), (12.0, 21.0))],
         "outliers": [{"task": 2, "metric": "request_throughput_per_s", "value": 1.5, "tasks_median": 5.0},
                      {"task": 2, "metric": "e2e_latency_median_ms", "value": 410.0, "tasks_median": 100.0}]}


def run_with(tmp_path: Path, files: dict[str, Any]) -> Path:
    folder = write_run(tmp_path / "a", {"bench": results({"request_throughput_per_s": 11.7, "tasks_count": 3})})
    for name, content in files.items():
        (folder / "results" / "bench" / name).write_text(content if isinstance(content, str) else json.dumps(content))
    return folder


def test_results_show_one_row_per_task_below_the_merged_figures_and_flag_the_outlier(orchc, tmp_path: Path):
    run_with(tmp_path, {"tasks.json": TASKS})
    shown = orchc("results", "a", cwd=tmp_path)
    assert shown.code == 0, shown.err
    merged, _, below = shown.out.partition("per task")
    assert "11.7" in merged and "tasks_count" in merged
    rows = {line.split()[0]: line for line in below.splitlines()[1:] if line.strip() and line.split()[0].isdigit()}
    assert set(rows) == {"0", "1", "2"}
    assert rows["0"].split()[:5] == ["0", "n1", "10", "0", "5"]
    assert "180" in rows["0"] and "19" in rows["0"]
    assert "outlier" not in rows["0"] and "outlier" not in rows["1"]
    assert "outlier: request_throughput_per_s 1.5 (median 5), e2e_latency_median_ms 410 (median 100)" in rows["2"]


def test_results_json_carries_the_breakdown(orchc, tmp_path: Path):
    run_with(tmp_path, {"tasks.json": TASKS})
    shown = json.loads(orchc("results", "a", "--json", cwd=tmp_path).out)["bench"]
    rows = shown["breakdown"]["tasks"]
    assert [row["task"] for row in rows] == [0, 1, 2]
    assert rows[2] == {"task": 2, "node": "n3", "requests_ok_count": 10, "requests_failed_count": 0,
                       "request_throughput_per_s": 1.5, "e2e_latency_median_ms": 410.0, "e2e_latency_p99_ms": 900.0,
                       "ttft_median_ms": 12.0, "ttft_p99_ms": 21.0,
                       "outliers": [{"metric": "request_throughput_per_s", "value": 1.5, "median": 5.0},
                                    {"metric": "e2e_latency_median_ms", "value": 410.0, "median": 100.0}]}
    assert rows[0]["outliers"] == []


def test_results_show_one_row_per_replica(orchc, tmp_path: Path):
    replicas = {"replicas": [{"replica": index, "address": f"n1:{11434 + index}", "gpu": str(index),
                              "metrics": {"requests_ok_count": 5, "request_throughput_per_s": 2.5}} for index in range(4)],
                "outliers": []}
    run_with(tmp_path, {"replicas.json": replicas})
    shown = orchc("results", "a", cwd=tmp_path)
    assert shown.code == 0, shown.err
    below = shown.out.partition("per replica")[2]
    assert [line.split()[:6] for line in below.splitlines() if line.split()[1:2] == ["n1:11437"]] == [["3", "n1:11437", "3", "5", "-", "2.5"]]


def test_a_client_of_one_task_has_no_breakdown(orchc, tmp_path: Path):
    run_with(tmp_path, {})
    shown = orchc("results", "a", cwd=tmp_path)
    assert "per task" not in shown.out and "per replica" not in shown.out
    assert "breakdown" not in json.loads(orchc("results", "a", "--json", cwd=tmp_path).out)["bench"]


def test_a_breakdown_of_another_shape_is_said_not_shown(orchc, tmp_path: Path):
    run_with(tmp_path, {"tasks.json": '{"tasks": [1, {"task": {"x": 1}, "metrics": 3}], "outliers": 7}'})
    shown = orchc("results", "a", cwd=tmp_path)
    assert shown.code == 0 and "Traceback" not in shown.err
    assert "tasks.json" in shown.err
    run_with(tmp_path / "b", {"tasks.json": "{not json"})
    shown = orchc("results", "a", cwd=tmp_path / "b")
    assert shown.code == 0 and "unreadable results/bench/tasks.json" in shown.err

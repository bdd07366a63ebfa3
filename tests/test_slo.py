"""The highest point of a sweep that meets a client's SLO (compiler/results/slo.py), as `orchc results` and the
report name it, on runs built by hand with known figures. The figures themselves (goodput, slo_met_ratio) come
from the LLM client and are tested against the stand-in in test_llm_bench.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_compare import orchc, sweep_run

from compiler.results.slo import SLO_TARGET


def slo_metrics(ratio: float, goodput: float) -> dict[str, float]:
    return {"request_throughput_per_s": 10.0, "ttft_p99_ms": 100.0, "slo_met_ratio": ratio, "goodput_requests_per_s": goodput}


def slo_lines(done) -> list[str]:
    return [line for line in done.stdout.splitlines() if line.startswith("SLO ")]


# four loads x 3 repeats: 10 and 20 meet the SLO in every repeat; at 40 one repeat of three misses (0.98), 80 misses
RUN = [("p01", 10, [slo_metrics(1.0, 9.0), slo_metrics(1.0, 9.5), slo_metrics(1.0, 10.0)]),
       ("p02", 20, [slo_metrics(0.995, 19.0), slo_metrics(1.0, 20.0), slo_metrics(0.99, 21.0)]),
       ("p03", 40, [slo_metrics(1.0, 39.0), slo_metrics(0.98, 38.0), slo_metrics(1.0, 40.0)]),
       ("p04", 80, [slo_metrics(0.5, 30.0), slo_metrics(0.4, 25.0), slo_metrics(0.6, 35.0)])]


def test_results_names_the_highest_point_where_every_repeat_meets_the_slo_with_its_interval(tmp_path: Path):
    sweep_run(tmp_path / "a", RUN)
    done = orchc("results", "a", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # p02: mean goodput 20, s = 1, t(0.975, 2) = 4.3027: 20 +- 2.484
    assert slo_lines(done) == ["SLO (bench): highest point meeting it p02 bench.clients=20, goodput 20 requests/s "
                               "[17.52, 22.48] (95%, n=3), slo_met_ratio min 0.990 of 0.995, 1.000, 0.990; "
                               "p03 bench.clients=40 misses it (min 0.980 of 1.000, 0.980, 1.000)"]
    shown = json.loads(orchc("results", "a", "--json", cwd=tmp_path).stdout)["slo"]
    assert [(c["client"], c["key"], c["point"], c["value"], c["target_ratio"]) for c in shown] == [
        ("bench", "bench.clients", "p02", 20, SLO_TARGET)]
    assert [p["meets"] for p in shown[0]["points"]] == [True, True, False, False]


def test_no_point_meeting_the_slo_says_so_and_a_run_without_slo_says_nothing(tmp_path: Path):
    sweep_run(tmp_path / "a", [(point, load, [slo_metrics(0.9, 9.0)]) for point, load, _ in RUN])
    assert slo_lines(orchc("results", "a", cwd=tmp_path)) == [
        "SLO (bench): no point meets it (slo_met_ratio >= 0.99 in every repeat); at the lowest load, p01 "
        "bench.clients=10, slo_met_ratio 0.900"]
    sweep_run(tmp_path / "b", [(point, load, [{"request_throughput_per_s": 1.0}]) for point, load, _ in RUN])
    done = orchc("results", "b", cwd=tmp_path)
    assert done.returncode == 0 and slo_lines(done) == []
    assert json.loads(orchc("results", "b", "--json", cwd=tmp_path).stdout)["slo"] == []


def test_a_repeat_without_results_does_not_meet_the_slo(tmp_path: Path):
    sweep_run(tmp_path / "a", [("p01", 10, [slo_metrics(1.0, 9.0)]), ("p02", 20, [slo_metrics(1.0, 19.0), None])])
    assert slo_lines(orchc("results", "a", cwd=tmp_path))[0].startswith(
        "SLO (bench): highest point meeting it p01 bench.clients=10, goodput 9 requests/s (n=1)")


@pytest.mark.slow
def test_the_report_says_which_point_meets_the_slo_and_marks_it(tmp_path: Path):
    pytest.importorskip("matplotlib")
    sweep_run(tmp_path / "a", RUN)
    done = orchc("report", "a", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "a" / "report.html").read_text()
    assert page.count("SLO (bench): highest point meeting it p02 bench.clients=20, goodput 20 requests/s") == 1
    rows = re.findall(r"<tr><td>(p\d\d)(.*?)</td>", page)
    assert [point for point, marker in rows if marker] == ["p02"]


def test_hostile_figures_and_loads_are_text_not_a_traceback(tmp_path: Path):
    """A ratio above 1, an infinite goodput (dropped: not a finite number), a load beyond the float range."""
    sweep_run(tmp_path / "a", [("p01", 10 ** 400, [slo_metrics(12.0, 1e308), slo_metrics(1.0, 1e308)]),
                               ("p02", 1, [slo_metrics(0.5, 1.0), None])])
    done = orchc("results", "a", cwd=tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    line = slo_lines(done)[0]
    assert line.startswith("SLO (bench): highest point meeting it p01 bench.clients=1000") and "min 1.000 of 12.000, 1.000" in line

"""`results`, `compare` and `report` stay linear in the number of metrics (issue 17: 20,000 metrics took 182 s in
`report`). No timings: the tests count the work done per metric, which a nested scan makes grow with the square.
benchmarks/aggregation.py times the same commands on 20,000 metrics."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from test_compare import results, sweep_run

import compiler.results.points as points
import compiler.results.report as htmlreport


class Counted(dict):
    """A client's metrics that count how often they are read whole (each read is work as long as the metrics)."""

    reads = 0

    def items(self) -> Any:
        Counted.reads += 1
        return super().items()

    def __iter__(self) -> Any:
        Counted.reads += 1
        return super().__iter__()


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch):
    """Every results.json read for results/compare/report hands its metrics over as Counted."""
    real = points.results

    def wrapped(run_dir: Path, run: Any) -> dict[str, Any]:
        found = real(run_dir, run)
        for data in found.values():
            if isinstance(data, dict) and isinstance(data.get("metrics"), dict):
                data["metrics"] = Counted(data["metrics"])
        return found

    monkeypatch.setattr(points, "results", wrapped)
    Counted.reads = 0
    return Counted


def sweep_with(folder: Path, metrics: int, shift: float = 0.0) -> Path:
    """Two points x two repeats of client bench, each reporting `metrics` counters, each with a reference."""
    values = [{f"m{i:05d}_count": i + shift + r for i in range(metrics)} for r in range(2)]
    references = {f"bench.m{i:05d}_count": {"min": 0} for i in range(metrics)}
    return sweep_run(folder, [("p01", 10, values), ("p02", 50, values)], references)


@pytest.mark.parametrize("command", [("results", "a"), ("results", "a", "--json"), ("results", "--check", "a"),
                                     ("compare", "a", "b"), ("compare", "a", "b", "--csv"), ("report", "a")])
def test_each_clients_metrics_are_read_a_few_times_whatever_their_number(orchc, counted, tmp_path, command):
    reads = []
    for metrics in (5, 300):
        root = tmp_path / str(metrics)
        sweep_with(root / "a", metrics)
        sweep_with(root / "b", metrics, 0.5)
        counted.reads = 0
        done = orchc(*command, cwd=root)
        assert done.code == 0, done.err
        reads.append(counted.reads)
    assert reads[0] == reads[1] <= 3 * 4 * (2 if command[0] == "compare" else 1)  # a few reads per client result


def test_grouping_the_metrics_of_a_report_is_linear(monkeypatch: pytest.MonkeyPatch):
    """Throughputs and latencies in many groups (`g1.requests_per_s`, `g1.latency_p99_ms`, ...): pairing each
    latency with its throughput and finding each group's knee asks each metric's group a bounded number of times."""
    real, calls = htmlreport.group_of, [0]

    def counting(metric: str) -> str:
        calls[0] += 1
        return real(metric)

    monkeypatch.setattr(htmlreport, "group_of", counting)
    asked = []
    for groups in (20, 200):
        names = [f"g{i}.{leaf}" for i in range(groups) for leaf in ("requests_per_s", "latency_p50_ms", "latency_p99_ms")]
        stats = {name: points.Aggregate(1, 1.0, None, 1.0, 1.0) for name in names}
        client = htmlreport.Client("bench", "redis_client", [htmlreport.PointStats("p01", {"k": 1}, [], stats)])
        calls[0] = 0
        htmlreport.knees(client, ["k"])
        htmlreport.latency_pairs(client)
        asked.append(calls[0])
    assert asked[1] <= 12 * asked[0]  # 10 times the metrics: about 10 times the work, not 100 or 1,000


def test_many_metrics_aggregate_to_the_same_figures():
    rows = [points.PointResult("p01", {}, r, f"bench-p01-r{r}", "t", "1", results({"a_ms": float(r), "b_ms": 2.0 * r}))
            for r in (1, 2, 3)]
    found = points.aggregates(rows)
    assert list(found) == ["a_ms", "b_ms"]
    assert found["a_ms"] == points.Aggregate(3, 2.0, 1.0, 1.0, 3.0) and found["b_ms"].mean == 4.0


def _paired_by_scanning(family: htmlreport.Family, candidates: list[str]) -> str | None:
    """The pairing rule read literally (README "Reports"): every throughput of the group scanned."""
    same = sorted(name for name in candidates if htmlreport.group_of(name) == family.group)
    leaf = family.name.rsplit(".", 1)[-1]
    best = max(same, key=lambda name: htmlreport._shared(leaf, name.rsplit(".", 1)[-1]), default=None)
    if best is not None and htmlreport._shared(leaf, best.rsplit(".", 1)[-1]) >= 3:
        return best
    return htmlreport.primary_throughput(same)


@pytest.mark.parametrize("seed", range(300))
def test_pairing_by_bisection_is_the_scan(seed: int):
    """Random throughputs in a few groups, with leaves made of a few letters so that starts are shared."""
    rng = random.Random(seed)
    groups, letters = ["", "g.", "h.x."], "abqueryltncs_"

    def leaf(least: int) -> str:
        return "".join(rng.choice(letters) for _ in range(rng.randint(least, 12)))

    names = [f"{rng.choice(groups)}{leaf(0)}_per_s" for _ in range(rng.randint(0, 30))]
    name = f"{rng.choice(groups)}{leaf(1)}"
    family = htmlreport.Family(name, (("p99", f"{name}_p99_ms"),))
    assert htmlreport.paired_throughput(family, names) == _paired_by_scanning(family, names)


@pytest.mark.parametrize("value", [0.1, 0.7, 3.3, 12.34, 0.123456, 1e-300, 1.7e308])
@pytest.mark.parametrize("count", [2, 3, 5, 7])
def test_identical_repeats_have_no_spread_and_their_own_mean(value: float, count: int):
    found = points.aggregate([value] * count)
    assert found == points.Aggregate(count, value, 0.0, value, value)  # not 1.6996749443881478e-17 from rounding


def test_the_mean_of_repeats_stays_within_them():
    found = points.aggregate([0.1, 0.1, 0.1, 0.1000000000000001])
    assert found is not None and found.min <= found.mean <= found.max and found.stdev is not None

"""`orchc report RUN [-o FILE.html]`: one self-contained HTML report of a run (run side; the command is overlay.cmd_report).

The report reads the run through points.point_results: a summary table per client (swept values, headline
metrics as mean ± sample stdev over the repeats, status), the saturation point (knee) of each curve where one
is detected, plots (each headline metric against each swept parameter, latency percentiles against
throughput, error bars from the repeats) and the GPU telemetry of each job that has a `gpu.csv`. Plots are
drawn with matplotlib (an optional extra: `pip install 'orchc[report]'`) as inline SVG, so the HTML needs no
network and no JavaScript; each plot is also written as SVG and PNG into the folder beside the HTML, for
slides. Same run folder, same bytes: no clock, no random ids (`svg.hashsalt`), no dates in the files.

Module-level imports stay standard-library only: the CLI imports this module for every command.
"""

from __future__ import annotations

import bisect
import csv
import html
import io
import itertools
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import ClusterError

if TYPE_CHECKING:
    from ..output.manifest import Sweep
    from ..run.runs import Run
    from .points import Aggregate, PointResult
    from .slo import SloCurve

NEEDS_MATPLOTLIB = "orchc report needs matplotlib: pip install 'orchc[report]'"
KNEE_GAIN = 0.10
"""a step that adds less than this share of throughput ..."""
KNEE_GROWTH = 0.50
"""... while the tail latency grows by more than this share is past the knee"""
KNEE_CONFIDENCE = 95.0
"""with repeats, both must hold for this confidence interval of the step's change"""
REPORT_NAME = "report.html"
MAX_PLOTS = 200
"""Plots drawn at most (matplotlib takes a good part of a second each); the report says how many it left out."""
GPU_CSV_LIMIT = 64 << 20
LOG_SPAN = 10.0
"""An axis whose values are all positive and span more than this factor (a decade) is logarithmic."""
X_ERROR_SHARE = 0.20
"""A horizontal error bar is drawn only where it spans at most this share of the x axis (of its decades on a log
axis): throughput's spread over the repeats, drawn in full, crossed the plot; the summary table has every spread."""
LABEL_OFFSETS = ((4, 4), (4, -11), (-4, 4), (-4, -11))
"""Where a point's name may go, in points from the point (negative x: the name ends there), in order of preference."""
MAX_LABELS = 200
_PLOT_FILE = re.compile(r"\d{2,}-[A-Za-z0-9._-]+\.(?:svg|png)")
_STAT = re.compile(r"(?P<family>.+?)_(?P<stat>p\d+(?:[._]\d+)?|median|mean|min|max)_ms")
_GPU_FIELDS = (("utilization.gpu", "GPU utilisation", "%"), ("utilization.memory", "memory utilisation", "%"),
               ("memory.used", "memory used", "MiB"), ("power.draw", "power draw", "W"),
               ("temperature.gpu", "temperature", "°C"))
_RC = {
    "svg.fonttype": "none",        # text stays text: searchable, smaller, selectable in the browser
    "text.parse_math": False,      # a $ in a metric or job name is a dollar sign, never mathtext
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.figsize": (7.0, 4.2),
    "legend.fontsize": 8.0,
    "savefig.dpi": 150.0,
}


# --- which metrics, which direction ------------------------------------------------------------------------

@dataclass(frozen=True)
class Family:
    """The statistics of one latency (`set.latency_p99_ms` belongs to family `set.latency` of group `set`)."""

    name: str
    stats: tuple[tuple[str, str], ...]
    """(statistic, metric): p50, p99, median, mean, min, max"""

    @property
    def group(self) -> str:
        return self.name.rsplit(".", 1)[0] if "." in self.name else ""

    def percentiles(self) -> list[tuple[float, str]]:
        """(percentile, metric), lowest first; a median is the 50th."""
        found = [(50.0 if stat == "median" else float(stat[1:].replace("_", ".")), metric)
                 for stat, metric in self.stats if stat == "median" or stat.startswith("p")]
        return sorted(found)

    def metric(self, stat: str) -> str | None:
        return next((metric for name, metric in self.stats if name == stat), None)

    @property
    def median(self) -> str | None:
        return next((metric for p, metric in self.percentiles() if p == 50.0), None)

    @property
    def tail(self) -> str | None:
        """The highest percentile of 90 or more (p99 usually)."""
        high = [metric for p, metric in self.percentiles() if p >= 90.0]
        return high[-1] if high else None

    def headline(self) -> list[str]:
        """Median and tail; the mean when the family has neither."""
        chosen = [metric for metric in (self.median, self.tail) if metric]
        mean = self.metric("mean")
        return chosen or ([mean] if mean else [])

    @property
    def knee_metric(self) -> str | None:
        """The latency the knee rule watches: the tail, else the mean, else the median."""
        return self.tail or self.metric("mean") or self.median

    def curve_metrics(self) -> list[str]:
        """What the latency-vs-throughput plot draws: every percentile, else the mean."""
        chosen = [metric for _, metric in self.percentiles()]
        mean = self.metric("mean")
        return chosen or ([mean] if mean else [])


def families(names: Iterable[str]) -> dict[str, Family]:
    """Latency families of these metric names (`_ms` metrics ending in a statistic), by family name."""
    found: dict[str, list[tuple[str, str]]] = {}
    for name in sorted(set(names)):
        match = _STAT.fullmatch(name)
        if match:
            found.setdefault(match["family"], []).append((match["stat"], name))
    return {family: Family(family, tuple(stats)) for family, stats in found.items()}


def group_of(metric: str) -> str:
    """The dotted prefix of a metric (`set` for `set.requests_per_s`; "" without one)."""
    return metric.rsplit(".", 1)[0] if "." in metric else ""


def is_quality(metric: str) -> bool:
    return "recall" in metric.rsplit(".", 1)[-1].lower()


def headline(names: Iterable[str]) -> list[str]:
    """The headline metrics among `names` (README "Reports"): every throughput (`_per_s`), per latency family
    its median (`_p50_ms`/`_median_ms`) and highest percentile >= 90 (`_p99_ms`; its `_mean_ms` when it has no
    percentile), and recall; ordered by group, then throughput, latency, quality."""
    names = set(names)
    chosen: list[tuple[str, int, str]] = [(group_of(name), 0, name) for name in names if name.endswith("_per_s")]
    for family in families(names).values():
        chosen += [(family.group, 1, metric) for metric in family.headline()]
    chosen += [(group_of(name), 2, name) for name in names if is_quality(name) and not name.endswith("_count")]
    return [name for _, _, name in sorted(set(chosen))]


def primary_throughput(candidates: Iterable[str]) -> str | None:
    """The throughput a group is measured by: requests, else transactions, else queries, else the first by name."""
    ordered = sorted(candidates)
    for word in ("request", "transaction", "quer"):
        for name in ordered:
            if word in name.rsplit(".", 1)[-1]:
                return name
    return ordered[0] if ordered else None


def _shared(a: str, b: str) -> int:
    """The length of the start two texts share."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@dataclass(frozen=True)
class Throughputs:
    """A client's throughputs (`_per_s`) by group, each group's sorted once: pairing a latency looks at its own
    group only, by bisection, so pairing every family of a client stays linear in its metrics."""

    names: dict[str, list[str]]
    """group -> its throughputs, sorted (one group's names differ only in their leaf, so by leaf too)"""
    leaves: dict[str, list[str]]
    primary: dict[str, str | None]

    @classmethod
    def of(cls, names: Iterable[str]) -> Throughputs:
        grouped: dict[str, list[str]] = {}
        for name in names:
            if name.endswith("_per_s"):
                grouped.setdefault(group_of(name), []).append(name)
        ordered = {group: sorted(set(members)) for group, members in grouped.items()}
        return cls(ordered, {group: [name.rsplit(".", 1)[-1] for name in members] for group, members in ordered.items()},
                   {group: primary_throughput(members) for group, members in ordered.items()})

    def paired(self, family: Family) -> str | None:
        """The throughput whose leaf shares the longest start (3 characters or more) with the family's leaf, the
        first by name among equals; else the group's primary. The longest start shared with any name of a sorted
        list is shared with a neighbour of the place the leaf would take in it."""
        names, leaves = self.names.get(family.group, []), self.leaves.get(family.group, [])
        leaf = family.name.rsplit(".", 1)[-1]
        at = bisect.bisect_left(leaves, leaf)
        longest = max((_shared(leaf, leaves[i]) for i in (at - 1, at) if 0 <= i < len(leaves)), default=0)
        if longest >= 3:
            return names[bisect.bisect_left(leaves, leaf[:longest])]
        return self.primary.get(family.group)


def paired_throughput(family: Family, candidates: Iterable[str]) -> str | None:
    """The throughput a latency family is plotted against: in the family's group, the one whose name shares the
    longest start (3 characters or more) with the family's (`query_latency` -> `queries_per_s`), else the
    group's primary throughput."""
    return Throughputs.of(candidates).paired(family)


def latency_pairs(client: Client) -> list[tuple[Family, str]]:
    """Each latency family of a client (by name) with the throughput it is plotted against, when it has one."""
    rates = Throughputs.of(client.metrics())
    return [(family, throughput) for family in families(client.metrics()).values()
            if (throughput := rates.paired(family)) is not None]


def knee(throughput: Sequence[float | None], latency: Sequence[float | None],
         gain: float = KNEE_GAIN, growth: float = KNEE_GROWTH) -> int | None:
    """The saturation point of a curve ordered by rising load: the index i of the last point before the first
    step (between consecutive measured points) that adds less than `gain` of throughput
    ((T[j] - T[i]) / T[i] < gain) while the latency grows by more than `growth` ((L[j] - L[i]) / L[i] > growth).
    None when no step does (still scaling, or flat), or a value is missing or not positive."""
    return knee_over_repeats([[] if t is None else [t] for t in throughput], [[] if lat is None else [lat] for lat in latency],
                             gain, growth)


def knee_over_repeats(throughput: Sequence[Sequence[float]], latency: Sequence[Sequence[float]],
                      gain: float = KNEE_GAIN, growth: float = KNEE_GROWTH,
                      confidence: float = KNEE_CONFIDENCE) -> int | None:
    """`knee` on each point's repeats: where both points of a step have 2 or more repeats of both metrics, the rule
    must hold for the whole confidence interval of the step's change (stats.change: the throughput's interval below
    +gain, the latency's above +growth), so a step within the noise of the repeats is no knee; otherwise the means."""
    from .stats import mean_of

    measured = [i for i, (t, lat) in enumerate(zip(throughput, latency)) if t and lat and mean_of(t) > 0 and mean_of(lat) > 0]
    for i, j in itertools.pairwise(measured):
        if _past_the_knee(throughput[i], throughput[j], latency[i], latency[j], gain, growth, confidence):
            return i
    return None


def _past_the_knee(t_i: Sequence[float], t_j: Sequence[float], l_i: Sequence[float], l_j: Sequence[float],
                   gain: float, growth: float, confidence: float) -> bool:
    from .stats import change, mean_of

    if min(len(t_i), len(t_j), len(l_i), len(l_j)) < 2:
        mean_t_i, mean_l_i = mean_of(t_i), mean_of(l_i)
        return (mean_of(t_j) - mean_t_i) / mean_t_i < gain and (mean_of(l_j) - mean_l_i) / mean_l_i > growth
    rate, delay = change(t_i, t_j, confidence).interval_percent, change(l_i, l_j, confidence).interval_percent
    assert rate is not None and delay is not None
    return rate[1] < gain * 100 and delay[0] > growth * 100


# --- the run as points -------------------------------------------------------------------------------------

@dataclass
class PointStats:
    point: str | None
    values: Mapping[str, Any]
    rows: list[PointResult]
    stats: dict[str, Aggregate]

    def mean(self, metric: str) -> float | None:
        found = self.stats.get(metric)
        return found.mean if found else None

    def series(self, metric: str) -> list[float]:
        """The metric's value in each repeat that has it."""
        return [value for row in self.rows if (value := row.metrics().get(metric)) is not None]

    def error(self, metric: str) -> float:
        found = self.stats.get(metric)
        return found.stdev if found and found.stdev is not None else 0.0

    @property
    def label(self) -> str:
        return self.point or "-"

    def status(self) -> str:
        counts: dict[str, int] = {}
        for row in self.rows:
            data = row.results
            if data is None:
                state = "no results"
            elif isinstance(data, dict) and isinstance(data.get("status"), str):
                state = data["status"] + (f" ({data['stopped_by']})" if isinstance(data.get("stopped_by"), str) else "")
            elif isinstance(data, dict) and "error" in data:
                state = "unreadable"
            else:
                state = "no status"
            counts[state] = counts.get(state, 0) + 1
        return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))


@dataclass
class Client:
    name: str
    type: str
    points: list[PointStats] = field(default_factory=list)

    def metrics(self) -> list[str]:
        return sorted({metric for point in self.points for metric in point.stats})


def clients_of(rows: list[PointResult], sweep: Sweep | None) -> list[Client]:
    """The run's clients (by their name in the recipe), each with its points in the sweep's order."""
    from .points import aggregates, by_point

    order = {name: index for index, (name, _) in enumerate(sweep.points)} if sweep else {}
    found: dict[str, Client] = {}
    for (point, name), repeats in by_point(rows).items():
        client = found.setdefault(name, Client(name, repeats[0].type))
        client.points.append(PointStats(point, repeats[0].values, sorted(repeats, key=lambda r: (r.repeat or 0, r.job)),
                                        aggregates(repeats)))
    for client in found.values():
        client.points.sort(key=lambda p: (p.point is not None, order.get(p.point or "", len(order)), p.point or ""))
    return list(found.values())


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def shown(value: Any) -> str:
    """A swept value as text: strings as they are, anything else the way JSON writes it."""
    return value if isinstance(value, str) else _key(value)


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _as_float(value: Any) -> float:
    return float(value) if _numeric(value) else math.nan


def _tied(points: Sequence[PointStats], a: str, b: str) -> bool:
    """Whether keys a and b vary together over these points (a zip: each value of one goes with one of the other)."""
    forward: dict[str, set[str]] = {}
    backward: dict[str, set[str]] = {}
    for point in points:
        x, y = _key(point.values.get(a)), _key(point.values.get(b))
        forward.setdefault(x, set()).add(y)
        backward.setdefault(y, set()).add(x)
    return all(len(v) == 1 for v in forward.values()) and all(len(v) == 1 for v in backward.values())


@dataclass(frozen=True)
class Curve:
    """The points of one client along swept key `key`, the other swept keys fixed at `fixed`."""

    key: str
    fixed: tuple[tuple[str, Any], ...]
    points: tuple[PointStats, ...]
    numeric: bool

    @property
    def label(self) -> str:
        return ", ".join(f"{key}={shown(value)}" for key, value in self.fixed) or "all points"

    def x(self, point: PointStats, order: Sequence[str]) -> float:
        value = point.values.get(self.key)
        return _as_float(value) if self.numeric else float(order.index(_key(value)))


def curves(points: Sequence[PointStats], key: str, keys: Sequence[str]) -> tuple[list[Curve], list[str]]:
    """The curves along `key` (one per combination of the other swept keys that do not vary with it), and the
    x order of `key`'s values (as JSON): numeric order when every value is a number, else the sweep's order."""
    others = [other for other in keys if other != key and not _tied(points, key, other)]
    values = [point.values.get(key) for point in points]
    numeric = all(_numeric(value) for value in values)
    order = list(dict.fromkeys(_key(value) for value in (sorted(values, key=_as_float) if numeric else values)))
    position = {value: index for index, value in enumerate(order)}
    lines: dict[str, list[PointStats]] = {}
    fixed: dict[str, tuple[tuple[str, Any], ...]] = {}
    for point in points:
        combination = tuple((other, point.values.get(other)) for other in others)
        lines.setdefault(_key(combination), []).append(point)
        fixed[_key(combination)] = combination
    found = [Curve(key, fixed[name], tuple(sorted(line, key=lambda p: position[_key(p.values.get(key))])), numeric)
             for name, line in lines.items()]
    return found, order


@dataclass(frozen=True)
class Knee:
    client: str
    group: str
    throughput: str
    latency: str
    curve: Curve
    at: PointStats
    after: PointStats

    def describe(self) -> str:
        t0, t1 = self.at.mean(self.throughput), self.after.mean(self.throughput)
        l0, l1 = self.at.mean(self.latency), self.after.mean(self.latency)
        assert t0 and t1 is not None and l0 and l1 is not None
        return (f"at {self.curve.key}={shown(self.at.values.get(self.curve.key))} ({self.at.label}): "
                f"{self.throughput} {number(t0)}, {self.latency} {number(l0)}; the next step "
                f"({self.curve.key}={shown(self.after.values.get(self.curve.key))}, {self.after.label}) adds "
                f"{self._step(self.throughput, t0, t1)} throughput for {self._step(self.latency, l0, l1)} latency")

    def _step(self, metric: str, before: float, after: float) -> str:
        """The change of the means, and with repeats its interval (stats.change, at KNEE_CONFIDENCE)."""
        from .stats import change

        text = f"{(after / before - 1) * 100:+.1f}%"
        a, b = self.at.series(metric), self.after.series(metric)
        interval = change(a, b, KNEE_CONFIDENCE).interval_percent if a and b else None
        return text if interval is None else f"{text} [{interval[0]:+.1f}%, {interval[1]:+.1f}%]"


def knees(client: Client, keys: Sequence[str]) -> list[Knee]:
    """Every knee of a client: per group of metrics with a throughput and a latency, along every swept key. A
    group's knee is watched on its primary throughput and, among the latency families paired with it, one named
    ...latency... first, else the first by name."""
    rates = Throughputs.of(client.metrics())
    paired: dict[str, list[Family]] = {}
    for family, rate in latency_pairs(client):
        if family.knee_metric:
            paired.setdefault(rate, []).append(family)
    lines = {key: curves(client.points, key, keys)[0] for key in keys}
    found = []
    for group in sorted(rates.names):
        primary = rates.primary[group]
        candidates = paired.get(primary or "", [])
        if primary is None or not candidates:
            continue
        throughput = primary
        family = min(candidates, key=lambda f: ("latency" not in f.name.rsplit(".", 1)[-1], f.name))
        latency = family.knee_metric
        assert latency is not None
        for key in keys:
            for curve in lines[key]:
                index = knee_over_repeats([p.series(throughput) for p in curve.points],
                                          [p.series(latency) for p in curve.points])
                if index is not None:
                    after = next(p for p in curve.points[index + 1:]
                                 if p.mean(throughput) is not None and p.mean(latency) is not None)
                    found.append(Knee(client.name, group, throughput, latency, curve, curve.points[index], after))
    return found


# --- GPU telemetry -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GpuTrace:
    job: str
    series: dict[str, dict[str, list[tuple[float, float]]]]
    """GPU label -> field (utilization.gpu, ...) -> (seconds since the first sample, value)"""
    samples: int
    skipped: int


def parse_gpu_csv(job: str, text: str) -> GpuTrace:
    """nvidia-smi --query-gpu=timestamp,index,name,uuid,... --format=csv,nounits rows (the GPU sampler's
    gpu.csv); a header names the columns (units in brackets dropped); rows that do not parse (a half-written last
    line, [N/A] values) are skipped, values that are not numbers left out."""
    header: list[str] | None = None
    rows: list[tuple[datetime, str, dict[str, float]]] = []
    skipped = 0
    for row in csv.reader(io.StringIO(text), skipinitialspace=True):
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        if cells[0] == "timestamp":
            header = [cell.split(" [", 1)[0].strip() for cell in cells]
            continue
        if header is None or len(cells) != len(header):
            skipped += 1
            continue
        record = dict(zip(header, cells))
        try:
            stamp = datetime.strptime(record.get("timestamp", ""), "%Y/%m/%d %H:%M:%S.%f")
        except ValueError:
            skipped += 1
            continue
        values = {}
        for name, _, _ in _GPU_FIELDS:
            try:
                number_ = float(record.get(name, ""))
            except ValueError:
                continue
            if math.isfinite(number_):
                values[name] = number_
        label = f"GPU {record.get('index', '?')}"
        rows.append((stamp, label, values))
    series: dict[str, dict[str, list[tuple[float, float]]]] = {}
    if rows:
        start = min(stamp for stamp, _, _ in rows)
        for stamp, label, values in rows:
            for name, value in values.items():
                series.setdefault(label, {}).setdefault(name, []).append(((stamp - start).total_seconds(), value))
    return GpuTrace(job, {label: series[label] for label in sorted(series)}, len(rows), skipped)


def job_files(run_dir: Path, run: Run, name: str, limit: int, notes: list[str]) -> Iterator[tuple[str, str]]:
    """(job, text) of results/<job>/NAME for every job of the run that has one; a file that cannot be read is a note."""
    from ..core.files import read_in_run

    for job in run.jobs:
        try:
            yield job.name, read_in_run(run_dir, f"results/{job.name}/{name}", limit)
        except FileNotFoundError:
            continue
        except OSError as exc:
            notes.append(f"results/{job.name}/{name}: {exc.strerror or exc}")


def gpu_traces(run_dir: Path, run: Run) -> tuple[list[GpuTrace], list[str]]:
    """The GPU telemetry of every job that has results/<job>/gpu.csv, and notes on the files that cannot be read."""
    traces: list[GpuTrace] = []
    notes: list[str] = []
    for job, text in job_files(run_dir, run, "gpu.csv", GPU_CSV_LIMIT, notes):
        trace = parse_gpu_csv(job, text)
        if trace.samples:
            traces.append(trace)
        else:
            notes.append(f"results/{job}/gpu.csv: no samples")
    return traces, notes


@dataclass(frozen=True)
class CapacitySearch:
    """A client's capacity search (results/<job>/search.json, written by llm_search.py): its SLO bounds and probes."""

    job: str
    bounds: dict[str, float]
    """FAMILY_pQ_ms -> the bound in ms"""
    probes: list[tuple[float, str, dict[str, tuple[float, str]]]]
    """(rate per s, the probe's verdict, FAMILY_pQ_ms -> (the quantile measured over its judged requests in ms, that
    bound's own verdict))"""

    def bracket(self) -> tuple[float | None, float | None]:
        """(the highest passing rate, the lowest failing rate above it), as capacity_metrics of llm_search.py."""
        passed = [rate for rate, verdict, _ in self.probes if verdict == "pass"]
        low = max(passed) if passed else None
        above = [rate for rate, verdict, _ in self.probes if verdict in ("fail", "undecided") and (low is None or rate > low)]
        return low, (min(above) if above else None)


SEARCH_JSON_LIMIT = 16 << 20


def capacity_searches(run_dir: Path, run: Run) -> tuple[list[CapacitySearch], list[str]]:
    """The capacity search of every client that made one, and notes on the files that cannot be read."""
    searches: list[CapacitySearch] = []
    notes: list[str] = []
    for job, text in job_files(run_dir, run, "search.json", SEARCH_JSON_LIMIT, notes):
        search = _capacity_search(job, text)
        if search is None:
            notes.append(f"results/{job}/search.json: not a capacity search orchc can draw")
        elif search.probes:
            searches.append(search)
    return searches, notes


def _capacity_search(job: str, text: str) -> CapacitySearch | None:
    try:
        data = json.loads(text)
        bounds = {str(key): float(value) for key, value in data["slo"].items()}
        probes = [(float(p["rate_per_s"]), _probe_verdict(p),
                   {key: (float(entry["measured_ms"]), _probe_verdict(p, entry.get("verdict", p["verdict"])))
                    for key, entry in p["bounds"].items()
                    if key in bounds and isinstance(entry, dict) and entry.get("measured_ms") is not None})
                  for p in data["probes"]]
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if not bounds or not all(math.isfinite(rate) and rate > 0 for rate, _, _ in probes):
        return None
    return CapacitySearch(job, bounds, probes)


def _probe_verdict(probe: dict[str, Any], verdict: object = None) -> str:
    """A probe's (or one bound's) verdict; CLIENT_LIMITED where the client did not keep up with the probe's schedule:
    the server was not sent the probe's rate, so it bounds neither end of the capacity (llm_search.py's rule)."""
    return CLIENT_LIMITED if probe.get("client_kept_up") == 0 else str(probe["verdict"] if verdict is None else verdict)


CLIENT_LIMITED = "client-limited"
_VERDICT_STYLE = {"pass": ("o", "C2", "passed"), "fail": ("x", "C3", "failed"), "undecided": ("s", "C7", "undecided"),
                  "cut": ("d", "C7", "cut short"), CLIENT_LIMITED: ("^", "C1", "client fell behind")}


def capacity_plot(Figure: Any, search: CapacitySearch) -> Plot:
    """Each bound's measured quantile at each probe's rate, marked by that bound's verdict at the probe, the bound as
    a line and the capacity's bracket as a band: the search's curve."""
    keys = sorted(search.bounds)
    figure = Figure(figsize=(7.0, 2.6 * len(keys) + 0.6))
    axes = figure.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
    low, high = search.bracket()
    rates = [rate for rate, _, _ in search.probes]
    for ax, key in zip(axes, keys):
        seen: set[str] = set()
        for rate, _, measured in search.probes:
            if key not in measured:
                continue
            value, verdict = measured[key]
            marker, color, label = _VERDICT_STYLE.get(verdict, ("s", "C7", verdict))
            ax.plot([rate], [value], marker=marker, color=color, linestyle="none",
                    label=None if label in seen else f"bound {label}")
            seen.add(label)
        ax.axhline(search.bounds[key], color="C0", linestyle="--", label=f"bound {number(search.bounds[key])} ms")
        if low is not None:
            ax.axvspan(low, high if high is not None else low, color="C0", alpha=0.12, label="capacity bracket")
        _log_scale(ax, "y", [*[m[key][0] for _, _, m in search.probes if key in m], search.bounds[key]])
        ax.set_ylabel(_axis_label(key))
        ax.legend(loc="best", fontsize="small")
    _log_scale(axes[-1], "x", rates)
    axes[-1].set_xlabel("request rate [1/s]")
    title = f"{search.job}: {' and '.join(keys)} by request rate"
    axes[0].set_title(title)
    figure.set_layout_engine("constrained")
    found = (f"capacity {number(low)}/s, bracket [{number(low)}, {number(high) if high is not None else 'not found'})/s"
             if low is not None else "no probe met the SLO")
    if limited := sum(verdict == CLIENT_LIMITED for _, verdict, _ in search.probes):
        found += (f" ({limited} probe{'s' * (limited > 1)} the client did not keep up with: {'they say' if limited > 1 else 'it says'} "
                  f"nothing of the server, and bound{'' if limited > 1 else 's'} neither end)")
    caption = (f"results/{search.job}/search.json: {len(search.probes)} probes, {found}. Each marker is a probe's "
               "measured quantile over its judged requests, marked by that bound's verdict there: the one-sided "
               "Clopper-Pearson interval of the share of requests over the bound, so a point near the line may carry "
               "either; a probe fails when any bound does (README \"Capacity under an SLO\").")
    return Plot(slug("capacity", search.job), title, caption, figure)


# --- plots -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plot:
    slug: str
    title: str
    caption: str
    figure: Any


def _matplotlib() -> Any:
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        raise ClusterError(NEEDS_MATPLOTLIB) from None
    return matplotlib, Figure


def slug(*parts: str) -> str:
    text = "-".join(re.sub(r"[^A-Za-z0-9._]+", "_", part).strip("_.") for part in parts if part)
    return text[:80] or "plot"


def _axis_label(metric: str) -> str:
    from .metrics import unit_of

    unit = unit_of(metric)
    return f"{metric} [{unit}]" if unit else metric


def spans_decades(values: Iterable[float | None]) -> bool:
    """Whether these values (None left out) are all positive and span more than LOG_SPAN: a log axis shows them."""
    found = [value for value in values if value is not None and math.isfinite(value)]
    return bool(found) and min(found) > 0 and max(found) / min(found) > LOG_SPAN


def log_tick(value: float, _position: Any = None) -> str:
    """A tick of a log axis as plain text (0.02, 5, 10,000): matplotlib's 10^n is mathtext, which this report keeps off."""
    return f"{value:,.0f}" if value >= 1 else f"{value:.3g}"


def _log_scale(ax: Any, which: str, values: Iterable[float | None]) -> bool:
    """Make axis `which` ("x" or "y") logarithmic when `values` span decades, ticks as plain numbers (minor ticks at
    2 and 5 named while the values span 3 decades or less). Whether it did."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    found = [value for value in values if value is not None]
    if not spans_decades(found):
        return False
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_formatter(FuncFormatter(log_tick))
    axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    few = math.log10(max(found) / min(found)) <= 3
    axis.set_minor_formatter(FuncFormatter(log_tick) if few else NullFormatter())
    return True


def _set_x(ax: Any, curve_set: Sequence[Curve], order: Sequence[str]) -> None:
    if curve_set and curve_set[0].numeric:
        xs = [float(json.loads(value)) for value in order]
        _log_scale(ax, "x", xs)
        if len(xs) <= 12:
            ax.set_xticks(xs, [tick(x) for x in xs])
            ax.minorticks_off()
    else:
        ax.set_xticks(range(len(order)), [shown(json.loads(value)) for value in order])


def metric_plottable(client: Client, metric: str, key: str, keys: Sequence[str]) -> bool:
    """Whether `metric` was measured at two values of `key` or more (a plot needs two)."""
    measured = {_key(p.values.get(key)) for p in client.points if p.mean(metric) is not None}
    return len(measured) >= 2


def latency_points(client: Client, family: Family, throughput: str) -> list[PointStats]:
    """The points where the throughput and a latency of the family were measured (a plot needs two)."""
    metrics = family.curve_metrics()
    return [p for p in client.points if p.mean(throughput) is not None and any(p.mean(m) is not None for m in metrics)]


def metric_plot(Figure: Any, client: Client, metric: str, key: str, keys: Sequence[str],
                marked: list[Knee]) -> Plot | None:
    """`metric` of one client against swept key `key`, one line per combination of the other keys."""
    if not metric_plottable(client, metric, key, keys):
        return None
    curve_set, order = curves(client.points, key, keys)
    figure = Figure()
    ax = figure.subplots()
    repeats = max(len(p.rows) for p in client.points)
    for curve in curve_set:
        kept = [p for p in curve.points if p.mean(metric) is not None]
        if not kept:
            continue
        ax.errorbar([curve.x(p, order) for p in kept], [p.mean(metric) for p in kept],
                    yerr=[p.error(metric) for p in kept], marker="o", markersize=4, capsize=3, label=curve.label)
    for found in marked:
        if found.curve.key == key and metric in (found.throughput, found.latency):
            ax.plot([found.curve.x(found.at, order)], [found.at.mean(metric)], marker="o", markersize=14,
                    markerfacecolor="none", markeredgecolor="crimson", markeredgewidth=2, linestyle="none")
            ax.annotate("knee", (found.curve.x(found.at, order), found.at.mean(metric)), textcoords="offset points",
                        xytext=(8, 8), color="crimson")
    _set_x(ax, curve_set, order)
    if not _log_scale(ax, "y", [p.mean(metric) for p in client.points]):
        _thousands(ax.yaxis, [p.mean(metric) for p in client.points])
    ax.set_xlabel(key)
    ax.set_ylabel(_axis_label(metric))
    title = f"{client.name}: {metric} vs {key}"
    ax.set_title(title)
    if len(curve_set) > 1:
        ax.legend(loc="best")
    figure.set_layout_engine("constrained")
    caption = (f"Mean over the repeats of each point; error bars ±1 sample standard deviation "
               f"(up to {repeats} repeat{'s' if repeats != 1 else ''}).")
    return Plot(slug(client.name, metric, "vs", key), title, caption, figure)


def load_key(points: Sequence[PointStats], keys: Sequence[str]) -> str | None:
    """The swept key latency-throughput curves follow: the first whose values are all numbers."""
    return next((key for key in keys if all(_numeric(p.values.get(key)) for p in points)), None)


def latency_plot(Figure: Any, client: Client, family: Family, throughput: str, keys: Sequence[str],
                 marked: list[Knee]) -> Plot | None:
    """Every percentile of a latency family against its throughput: one line per percentile (colour) and per
    combination of the other swept values (line style), following the load key upward."""
    metrics = family.curve_metrics()
    points = latency_points(client, family, throughput)
    if len(points) < 2:
        return None
    load = load_key(points, keys)
    if load is not None:
        curve_set = curves(points, load, keys)[0]
    else:
        curve_set = [Curve("", (), tuple(sorted(points, key=lambda p: (p.mean(throughput), p.label))), False)]
    figure = Figure()
    ax = figure.subplots()
    rates = [p.mean(throughput) for p in points]
    log_x = _log_scale(ax, "x", rates)
    _log_scale(ax, "y", [p.mean(metric) for p in points for metric in metrics])
    if not log_x:
        _thousands(ax.xaxis, rates)
    x_error = partial(shown_error, span=_span([rate for rate in rates if rate is not None], log_x), log=log_x)
    styles, markers = ("-", "--", ":", "-."), ("o", "s", "^", "D", "v")
    for index, curve in enumerate(curve_set):
        for colour, metric in enumerate(metrics):
            kept = [p for p in curve.points if p.mean(metric) is not None and p.mean(throughput) is not None]
            if not kept:
                continue
            stat = "mean" if metric == family.metric("mean") else metric.rsplit("_", 2)[-2]
            ax.errorbar([p.mean(throughput) for p in kept], [p.mean(metric) for p in kept],
                        xerr=[x_error(p.mean(throughput), p.error(throughput)) for p in kept],
                        yerr=[p.error(metric) for p in kept],
                        color=f"C{colour % 10}", linestyle=styles[index % len(styles)],
                        marker=markers[index % len(markers)], markersize=4, capsize=3,
                        label=stat if len(curve_set) == 1 else f"{stat}, {curve.label}")
    for found in marked:
        if found.latency in metrics and found.throughput == throughput:
            ax.plot([found.at.mean(throughput)], [found.at.mean(found.latency)], marker="o", markersize=14,
                    markerfacecolor="none", markeredgecolor="crimson", markeredgewidth=2, linestyle="none")
    ax.set_xlabel(_axis_label(throughput))
    ax.set_ylabel(f"{family.name} [ms]")
    title = f"{client.name}: {family.name} percentiles vs {throughput}"
    ax.set_title(title)
    ax.legend(loc="best")
    figure.set_layout_engine("constrained")
    top = family.knee_metric or metrics[-1]
    unnamed = name_points(figure, ax, [(p.label, rate, value) for p in points
                                       if (rate := p.mean(throughput)) is not None and (value := p.mean(top)) is not None])
    follow = (f"each line follows {load} upward with the other swept values fixed" if load
              else "points in order of throughput")
    caption = (f"Colour: the percentile; {follow}; points named beside the highest percentile where the name fits"
               + (f" ({unnamed} not named: see the table)" if unnamed else "")
               + "; error bars ±1 sample standard deviation over the repeats, horizontal ones only where narrower "
               f"than {X_ERROR_SHARE:.0%} of the axis; a red ring marks a knee.")
    return Plot(slug(client.name, family.name, "vs", throughput), title, caption, figure)


def _span(values: Sequence[float], log: bool) -> float:
    """The width the values take on their axis: in decades on a log axis."""
    if not values:
        return 0.0
    return math.log10(max(values) / min(values)) if log else max(values) - min(values)


def shown_error(mean: float | None, error: float, span: float, log: bool) -> float:
    """The horizontal error bar drawn for a point: its ±error where the bar spans at most X_ERROR_SHARE of the axis
    (`span`, in decades when `log`), else none (0)."""
    if mean is None or error <= 0:
        return 0.0
    if log:
        wide = mean - error <= 0 or math.log10((mean + error) / (mean - error)) > X_ERROR_SHARE * span
    else:
        wide = 2 * error > X_ERROR_SHARE * span
    return 0.0 if wide else error


def name_points(figure: Any, ax: Any, named: Sequence[tuple[str, float, float]]) -> int:
    """Write each name beside its point (data coordinates) at the first of LABEL_OFFSETS where it stays inside the
    axes and overlaps no name written before it, after the figure's layout is done (the names take no part in it);
    a name that fits nowhere is left out. How many were left out."""
    figure.draw_without_rendering()
    frame = ax.get_window_extent()
    placed: list[Any] = []
    left_out = 0
    for text, x, y in named[:MAX_LABELS]:
        for dx, dy in LABEL_OFFSETS:
            label = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7, color="dimgray",
                                ha="left" if dx >= 0 else "right", annotation_clip=False)
            label.set_in_layout(False)
            box = label.get_window_extent().padded(1.0)
            if frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1) and not any(box.overlaps(other) for other in placed):
                placed.append(box)
                break
            label.remove()
        else:
            left_out += 1
    return left_out + max(0, len(named) - MAX_LABELS)


def _thousands(axis: Any, values: Iterable[float | None]) -> None:
    """Tick labels with thousands separators (700,000, not 700000 or 7e5) when the values reach 10,000."""
    from matplotlib.ticker import StrMethodFormatter

    if max((abs(v) for v in values if v is not None), default=0.0) >= 10000:
        axis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))


def gpu_plot(Figure: Any, trace: GpuTrace) -> Plot:
    figure = Figure(figsize=(7.0, 7.0))
    axes = figure.subplots(4, 1, sharex=True)
    panels = ((("utilization.gpu", "-"), ("utilization.memory", "--")), (("memory.used", "-"),),
              (("power.draw", "-"),), (("temperature.gpu", "-"),))
    ylabels = ("utilisation [%]", "memory used [MiB]", "power draw [W]", "temperature [°C]")
    for ax, panel, ylabel in zip(axes, panels, ylabels):
        drawn = False
        for index, (label, fields) in enumerate(trace.series.items()):
            for name, style in panel:
                points = fields.get(name, [])
                if points:
                    ax.plot([t for t, _ in points], [v for _, v in points], linestyle=style, color=f"C{index % 10}",
                            label=label if style == "-" else f"{label} memory")
                    drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "not reported", transform=ax.transAxes, ha="center", va="center", color="gray")
        ax.set_ylabel(ylabel)
    axes[0].legend(loc="best", ncols=2)
    axes[-1].set_xlabel("seconds since the first sample")
    title = f"GPU telemetry of {trace.job}"
    axes[0].set_title(title)
    figure.set_layout_engine("constrained")
    caption = (f"results/{trace.job}/gpu.csv from the GPU sampler (nvidia-smi), one colour per GPU (dashed: memory "
               f"utilisation): {trace.samples} row(s)"
               + (f", {trace.skipped} unreadable row(s) skipped" if trace.skipped else "") + ".")
    return Plot(slug("gpu", trace.job), title, caption, figure)


def render(matplotlib: Any, plot: Plot) -> tuple[str, bytes, bytes]:
    """(inline SVG element, SVG file, PNG file) of a plot: deterministic (ids salted with the plot's name). The files
    stand alone and keep the plot's title; on the page the figure's heading names it, so the drawing goes without."""
    svg, bare, png = io.StringIO(), io.StringIO(), io.BytesIO()
    titled = [axes for axes in plot.figure.axes if axes.get_title() == plot.title]
    with matplotlib.rc_context({"svg.hashsalt": f"orchc-{plot.slug}"}):
        plot.figure.savefig(svg, format="svg", metadata={"Date": None, "Creator": None})
        for axes in titled:
            axes.set_title("")
        plot.figure.savefig(bare, format="svg", metadata={"Date": None, "Creator": None})
        for axes in titled:
            axes.set_title(plot.title)
    plot.figure.savefig(png, format="png", metadata={"Software": None})
    text = bare.getvalue()
    inline = re.sub(r"<metadata>.*?</metadata>\s*", "", text[text.index("<svg"):], count=1, flags=re.S)
    return inline, svg.getvalue().encode("utf-8"), png.getvalue()


# --- the HTML ----------------------------------------------------------------------------------------------

def number(value: float | None) -> str:
    """A figure for people: thousands separated, 2 decimals from 1 up, 3 significant digits below."""
    if value is None:
        return "-"
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 100:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return "0" if size == 0 else f"{value:.3g}"


def tick(value: float) -> str:
    """A swept value on an axis: whole numbers without decimals."""
    return f"{int(value):,}" if value == int(value) else f"{value:g}"


def _cell(stats: Aggregate | None, best: bool = False) -> str:
    if stats is None:
        return "<td>-</td>"
    text = number(stats.mean) + (f" ± {number(stats.stdev)}" if stats.stdev is not None else "")
    tip = f"n={stats.n}, min {number(stats.min)}, max {number(stats.max)}"
    return f'<td class="num{" best" if best else ""}" title="{html.escape(tip)}">{html.escape(text)}</td>'


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{font-size:1.05em}table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.best{font-weight:bold;background:#eef7ee}td.status{white-space:nowrap}
.wide{overflow-x:auto;max-width:100%;background:linear-gradient(to right,#fff 30%,#fff0),
linear-gradient(to left,#fff 30%,#fff0) 100% 0,radial-gradient(farthest-side at 0 50%,#0003,#0000),
radial-gradient(farthest-side at 100% 50%,#0003,#0000) 100% 0;background-repeat:no-repeat;
background-size:40px 100%,40px 100%,14px 100%,14px 100%;background-attachment:local,local,scroll,scroll}
nav.contents{font-size:.9em;background:#f7f7f7;border:1px solid #ddd;padding:.4em 1em;margin:1em 0}
nav.contents ol{margin:.3em 0;padding-left:1.5em}nav.contents .plots{font-size:.9em;color:#555}
figure{margin:1em 0 2em;break-inside:avoid}figure svg{max-width:100%;height:auto}
figcaption{font-size:.85em;color:#555}.note{color:#555;font-size:.9em}code{font-size:.95em}
"""


SLO_MARK = ' <span title="the highest load point that meets the SLO">&#9733; SLO</span>'
"""beside the point of the summary table that slo.SloCurve.best names"""


def _summary(client: Client, keys: Sequence[str], heads: list[str], marked: Iterable[str | None] = ()) -> str:
    from .metrics import direction

    best: dict[str, float] = {}
    if len(client.points) > 1:
        for metric in heads:
            sign = direction(metric)
            means = [mean for p in client.points if (mean := p.mean(metric)) is not None]
            if sign and means:
                best[metric] = max(means) if sign > 0 else min(means)
    chosen = set(marked)
    head = "".join(f"<th>{wrappable(name)}</th>" for name in ["point", *keys, "repeats", "status", *heads])
    body = []
    for point in client.points:
        cells = [f"<td>{html.escape(point.label)}{SLO_MARK if point.point in chosen else ''}</td>"]
        cells += [f"<td>{html.escape(shown(point.values.get(key)))}</td>" for key in keys]
        cells += [f'<td class="num">{len(point.rows)}</td>', f'<td class="status">{html.escape(point.status())}</td>']
        cells += [_cell(point.stats.get(metric), metric in best and point.mean(metric) == best[metric])
                  for metric in heads]
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def wrappable(name: str) -> str:
    """A name as HTML that may wrap after its dots and underscores (a metric name is one long word)."""
    return re.sub(r"([._])", r"\1<wbr>", html.escape(name))


def _all_metrics(client: Client) -> str:
    names = client.metrics()
    head = "".join(f"<th>{html.escape(point.label)}</th>" for point in client.points)
    body = "".join(f"<tr><th>{html.escape(metric)}</th>{''.join(_cell(p.stats.get(metric)) for p in client.points)}</tr>"
                   for metric in names)
    return (f"<details><summary>every metric of {html.escape(client.name)} ({len(names)})</summary>"
            f'<div class="wide"><table><thead><tr><th>metric</th>{head}</tr></thead><tbody>{body}</tbody></table>'
            "</div></details>")


@dataclass
class Report:
    html: str
    files: dict[str, bytes]
    """file name in the plot folder -> bytes"""
    plots: int


def build(run_dir: Path, run: Run, folder_name: str, state: str | None = None,
          state_line: str | None = None) -> Report:
    """The report of a run; plot files are linked as `folder_name/<file>`. `state`: the run's (run_state; default
    what run.json knows); `state_line`: what a run still going or that did not complete says first (state_note).
    The page: the run's facts, contents, the headline figure, the summary tables, the knees, the other plots by
    client, the telemetry."""
    matplotlib, Figure = _matplotlib()
    from .. import __version__
    from ..output.manifest import read_manifest, recorded_sweep
    from .points import point_results
    from .slo import slo_curves

    manifest = read_manifest(run_dir)   # read once: for the sweep and for the points
    sweep = recorded_sweep(manifest)
    keys = list(sweep.keys) if sweep else []
    rows = point_results(run_dir, run, manifest)
    clients = clients_of(rows, sweep)
    slo = slo_curves(rows, keys)
    traces, notes = gpu_traces(run_dir, run)
    searches, search_notes = capacity_searches(run_dir, run)
    notes += search_notes
    name = run_dir.resolve().name
    heads = {client.name: headline(client.metrics()) for client in clients}
    found = {client.name: knees(client, keys) for client in clients}
    wanted = planned_plots(clients, keys, heads, found, traces, searches)
    with matplotlib.rc_context(_RC):
        drawn = draw_sections(matplotlib, Figure, wanted[:MAX_PLOTS], folder_name)
    sections = [Section("summary", "Summary", _summary_section(clients, keys, heads, slo)),
                Section("saturation", "Saturation", _saturation_section(clients, keys, found))]
    headline_ = [section for section in drawn if section.id == "headline"]
    body = headline_ + sections + [section for section in drawn if section.id != "headline"]
    tail = []
    if len(wanted) > MAX_PLOTS:
        tail.append(f'<p class="note">This report draws at most {MAX_PLOTS} plots: {len(wanted) - MAX_PLOTS} more '
                    "were left out (clients in order, headline metrics first, then latencies, then telemetry).</p>")
    if not traces:
        body.append(Section("telemetry", "Telemetry", '<p class="note">No job of this run has GPU telemetry '
                            "(results/&lt;job&gt;/gpu.csv).</p>"))
    tail += [f'<p class="note">{html.escape(note)}</p>' for note in notes]
    tail.append(f'<p class="note">Made by orchc {html.escape(__version__)} with matplotlib '
                f"{html.escape(matplotlib.__version__)}; plots also in {html.escape(folder_name)}/ as SVG and PNG.</p>")
    parts = [f"<h1>orchc report: {html.escape(name)}</h1>"]
    if state_line:
        parts.append(f'<p class="note"><b>{html.escape(state_line)}.</b></p>')
    parts += [_facts(run, state, keys, sweep), contents(body)]
    parts += [f'<h2 id="{section.id}">{html.escape(section.title)}</h2>{section.html}' for section in body]
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>orchc report: {html.escape(name)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(parts + tail) + "\n</body></html>\n")
    files = {file: data for section in drawn for file, data in section.files.items()}
    return Report(page, files, sum(len(section.plots) for section in drawn))


@dataclass
class Section:
    """One part of the page under its own heading (`id` its anchor), with the plots it shows (anchor, title) and
    their files."""

    id: str
    title: str
    html: str
    plots: list[tuple[str, str]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)


def contents(sections: Sequence[Section]) -> str:
    """The table of contents: a link to each section, and under it to each of its plots."""
    items = []
    for section in sections:
        links = " · ".join(f'<a href="#{anchor}">{html.escape(title)}</a>' for anchor, title in section.plots)
        items.append(f'<li><a href="#{section.id}">{html.escape(section.title)}</a>'
                     + (f' <span class="plots">({len(section.plots)}): {links}</span>' if section.plots else "") + "</li>")
    return f'<nav class="contents"><b>Contents</b><ol>{"".join(items)}</ol></nav>'


def _facts(run: Run, state: str | None, keys: Sequence[str], sweep: Sweep | None) -> str:
    facts = [("recipe", run.recipe), ("site", run.site), ("created", run.created),
             ("state", state or run.outcome or run.state),
             ("scheduler", run.scheduler), ("jobs", str(len(run.jobs))),
             ("sweep", ", ".join(keys) if sweep else "none (one configuration)")]
    if sweep:
        facts += [("points", str(len(sweep.points))), ("repeats per point", str(sweep.repeat))]
    if run.error:
        facts.append(("error", run.error))
    return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts) + "</table>"


def _summary_section(clients: Sequence[Client], keys: Sequence[str], heads: Mapping[str, list[str]],
                     slo: Sequence[SloCurve] = ()) -> str:
    parts = [] if clients else ['<p class="note">This run has no clients, so no results.</p>']
    for client in clients:
        parts.append(f"<h3>{html.escape(client.name)} <small>({html.escape(client.type)})</small></h3>")
        best = [curve.best.point for curve in slo if curve.client == client.name and curve.best]
        parts.append(_summary(client, keys, heads[client.name], best))
        parts.append(_all_metrics(client))
    parts.append('<p class="note">Cells: mean ± sample standard deviation over the repeats of a point (hover: n, '
                 "min, max); bold: the best point of a metric where its name says which way is better.</p>")
    parts += [f'<p class="note">{html.escape(curve.describe())} (&#9733; in its table).</p>' for curve in slo]
    return "".join(parts)


def _saturation_section(clients: Sequence[Client], keys: Sequence[str], found: Mapping[str, list[Knee]]) -> str:
    parts = [f'<p class="note">A knee is the last point of a curve (one client along one swept parameter, '
             f"the others fixed) before the first step that adds less than {KNEE_GAIN:.0%} throughput while "
             f"the tail latency grows by more than {KNEE_GROWTH:.0%}; with repeats, both for the whole "
             f"{KNEE_CONFIDENCE:g}% interval of the step's change, so a step within the noise is no knee "
             f"(README \"Reports\").</p>"]
    listed = [(client, knee_) for client in clients for knee_ in found[client.name]]
    if listed:
        parts.append("<ul>" + "".join(f"<li><b>{html.escape(client.name)}</b>"
                                      + (f" ({html.escape(k.curve.label)})" if k.curve.fixed else "")
                                      + f": {html.escape(k.describe())}</li>" for client, k in listed) + "</ul>")
    elif not keys:
        parts.append('<p class="note">No sweep: nothing to saturate along.</p>')
    else:
        parts.append('<p class="note">No knee detected.</p>')
    return "".join(parts)


def draw_sections(matplotlib: Any, Figure: Any, wanted: Sequence[tuple[str, Callable[[Any], Plot | None]]],
                  folder_name: str) -> list[Section]:
    """Draw the planned plots, numbered in order (NN-slug files, plot-NN anchors), into sections by title."""
    sections: dict[str, Section] = {}
    index = 0
    for title, draw in wanted:
        plot = draw(Figure)
        if plot is None:
            continue
        index += 1
        stem, anchor = f"{index:02d}-{plot.slug}", f"plot-{index:02d}"
        inline, svg, png = render(matplotlib, plot)
        section = sections.setdefault(title, Section(section_id(title), title, ""))
        section.files[f"{stem}.svg"], section.files[f"{stem}.png"] = svg, png
        section.plots.append((anchor, plot.title))
        links = " ".join(f'<a href="{html.escape(folder_name)}/{stem}.{ext}">{ext.upper()}</a>' for ext in ("svg", "png"))
        section.html += (f'<figure id="{anchor}"><h3>{html.escape(plot.title)}</h3>{inline}'
                         f"<figcaption>{html.escape(plot.caption)} Files: {links}</figcaption></figure>")
    return list(sections.values())


HEADLINE_SECTION = "Headline"
CAPACITY_SECTION = "Capacity"


def section_id(title: str) -> str:
    """The anchor of a section of plots: `headline`, `telemetry`, `plots-<client>` (unique: client names are)."""
    if title in (HEADLINE_SECTION, CAPACITY_SECTION, "Telemetry"):
        return title.lower()
    return "plots-" + html.escape(slug(title.removeprefix("Plots: ")), quote=True) + f"-{_fnv(title)}"


def _fnv(text: str) -> str:
    """A short stable hash (FNV-1a, 32 bits): two client names that slug alike still get two anchors."""
    value = 0x811C9DC5
    for byte in text.encode("utf-8"):
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return f"{value:08x}"


def headline_plot(clients: Sequence[Client], keys: Sequence[str]) -> tuple[Client, str, str] | None:
    """The figure a reader looks at first: the first client's (that has one) primary throughput against the load
    (the first numeric swept key it was measured along, else the first such key)."""
    for client in clients:
        metric = primary_throughput([name for name in client.metrics() if name.endswith("_per_s")])
        if metric is None:
            continue
        along = [key for key in keys if metric_plottable(client, metric, key, keys)]
        numeric = [key for key in along if all(_numeric(p.values.get(key)) for p in client.points)]
        if along:
            return client, metric, (numeric or along)[0]
    return None


def planned_plots(clients: list[Client], keys: Sequence[str], heads: Mapping[str, list[str]],
                  found: Mapping[str, list[Knee]], traces: list[GpuTrace],
                  searches: Sequence[CapacitySearch] = ()) -> list[tuple[str, Callable[[Any], Plot | None]]]:
    """(section, drawing) of every plot the report has data for, in order: the headline figure (headline_plot);
    per client each headline metric against each swept key, then each latency family against its throughput; then
    the GPU telemetry. A capacity search's curve comes right after the headline figure. Checking that a plot has its
    two points is cheap; drawing it is not, so only the first MAX_PLOTS are drawn."""
    wanted: list[tuple[str, Callable[[Any], Plot | None]]] = []
    first = headline_plot(clients, keys)
    if first:
        client, metric, key = first
        wanted.append((HEADLINE_SECTION, partial(_metric_drawing, client, metric, key, keys, found[client.name])))
    wanted += [(CAPACITY_SECTION, partial(_capacity_drawing, search)) for search in searches]
    for client in clients:
        section, knees_ = f"Plots: {client.name}", found[client.name]
        wanted += [(section, partial(_metric_drawing, client, metric, key, keys, knees_)) for metric in heads[client.name]
                   for key in keys if metric_plottable(client, metric, key, keys) and (client, metric, key) != first]
        wanted += [(section, partial(_latency_drawing, client, family, throughput, keys, knees_))
                   for family, throughput in latency_pairs(client) if len(latency_points(client, family, throughput)) >= 2]
    wanted += [("Telemetry", partial(_gpu_drawing, trace)) for trace in traces]
    return wanted


def _metric_drawing(client: Client, metric: str, key: str, keys: Sequence[str], knees_: list[Knee],
                    Figure: Any) -> Plot | None:
    return metric_plot(Figure, client, metric, key, keys, knees_)


def _latency_drawing(client: Client, family: Family, throughput: str, keys: Sequence[str], knees_: list[Knee],
                     Figure: Any) -> Plot | None:
    return latency_plot(Figure, client, family, throughput, keys, knees_)


def _gpu_drawing(trace: GpuTrace, Figure: Any) -> Plot | None:
    return gpu_plot(Figure, trace)


def _capacity_drawing(search: CapacitySearch, Figure: Any) -> Plot | None:
    return capacity_plot(Figure, search)


def write_report(report: Report, output: Path) -> Path:
    """Write the HTML and its plot folder (`output` without .html); old plot files there that this report
    did not write are removed. Returns the folder."""
    folder = output.with_suffix("")
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise ClusterError(f"{folder} is not a folder orchc can write plots into")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir(exist_ok=True)
        for name, data in report.files.items():
            _write_bytes(folder / name, data)
        for old in sorted(folder.iterdir()):
            if _PLOT_FILE.fullmatch(old.name) and old.name not in report.files and not old.is_dir():
                old.unlink()
        _write_bytes(output, report.html.encode("utf-8"))
    except OSError as exc:
        raise ClusterError(f"cannot write the report: {exc.filename or output}: {exc.strerror or exc}") from None
    return folder


def _write_bytes(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temp.unlink(missing_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, path)
    except BaseException:
        try:
            temp.unlink()
        except OSError:
            pass
        raise

"""Comparing two runs (`orchc compare`) and checking a run against its recipe's references
(`orchc results --check`). Run side: both read results through points.point_results.

Points of two runs are matched by their swept values (never by name: p03 of one sweep may be p01 of
another); a run without a sweep is one point with no values. Repeats of a client at a point are averaged, and
the change between runs gets a confidence interval over them (stats.py). Whether a change is better or worse is
decided from the metric's name by `direction` (README "Comparing runs").
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ..core.errors import ClusterError
from ..run.runs import EXIT_NOT_FINISHED, UNFINISHED_STATES
from .metrics import direction, direction_name, metric_matches, near_metrics
from .stats import DEFAULT_BAND, DEFAULT_CONFIDENCE, Change, beyond, repeats_needed, verdict
from .stats import change as change_of

if TYPE_CHECKING:
    from ..run.runs import Run
    from ..run.scheduler import JobState
    from .points import Aggregate, PointResult

_THRESHOLD = re.compile(r"(?P<pattern>[^=\s]+)=(?P<sign>[+-]?)(?P<pct>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)%?")
COMPARE_CSV_HEADERS = ["run_a", "run_b", "point", "point_a", "point_b", "client", "metric", "unit", "direction",
                       "a", "a_n", "b", "b_n", "change_percent", "ci_low_percent", "ci_high_percent", "verdict",
                       "repeats_needed", "band_percent"]
CHECK_HEADERS = ["reference", "point", "job", "value", "allowed", "result"]



# --- thresholds -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Threshold:
    text: str
    pattern: str
    percent: float
    sign: str
    """'+': a rise beyond percent fails; '-': a fall beyond percent fails; '': the metric's bad direction"""

    def matches(self, client: str, metric: str) -> bool:
        """The metric by its name or last parts (metric_matches), or CLIENT.METRIC by the glob."""
        return metric_matches(metric, self.pattern) or fnmatchcase(f"{client}.{metric}", self.pattern)

    def bad_direction(self, metric: str) -> int:
        """+1 when a rise is bad, -1 when a fall is bad, 0 when this threshold does not apply to the metric."""
        if self.sign:
            return 1 if self.sign == "+" else -1
        return -direction(metric)


def parse_threshold(text: str) -> Threshold:
    match = _THRESHOLD.fullmatch(text.strip())
    if not match:
        raise ClusterError(f"--threshold {text[:80]!r}: expected METRIC=PCT (a glob such as '*.latency_p99_ms=10', "
                           "PCT a number of percent, '+PCT' or '-PCT' to say which way is bad)")
    percent = float(match["pct"])
    return Threshold(text.strip(), match["pattern"], percent, match["sign"])


# --- reading the runs -----------------------------------------------------------------------------

@dataclass
class Side:
    """One client at one point of one run: its repeats' metrics."""

    point: str | None
    values: Mapping[str, Any]
    rows: list[PointResult] = field(default_factory=list)

    def stats(self) -> dict[str, Aggregate]:
        """Metric -> its aggregate over the repeats, every metric in one pass."""
        from .points import aggregates

        return aggregates(self.rows)

    def series(self) -> dict[str, tuple[float, ...]]:
        """Metric -> its value in each repeat that has it."""
        found: dict[str, list[float]] = {}
        for row in self.rows:
            for name, value in row.metrics().items():
                found.setdefault(name, []).append(value)
        return {name: tuple(values) for name, values in found.items()}


def point_key(values: Mapping[str, Any]) -> str:
    return json.dumps(values, sort_keys=True, default=str)


def point_label(values: Mapping[str, Any]) -> str:
    return " ".join(f"{key}={json.dumps(value, default=str)}" for key, value in values.items()) or "-"


def _sides(run_dir: Path, run: Run, manifest: Mapping[str, Any] | None = None) -> dict[tuple[str, str], Side]:
    """(point key, client) -> Side, in the manifest's order (`manifest`: the run's, when the caller read it)."""
    from .points import base_name, point_results

    found: dict[tuple[str, str], Side] = {}
    for row in point_results(run_dir, run, manifest):
        side = found.setdefault((point_key(row.values), base_name(row)), Side(row.point, row.values))
        side.rows.append(row)
    return found


def _notes(label: str, sides: Iterable[Side], waiting: Collection[str] = ()) -> list[str]:
    """Clients without results or that did not complete: why a metric may be missing (a job in `waiting`, not
    ended yet, has none to note: the run's note said so)."""
    notes = []
    for side in sides:
        for row in side.rows:
            data = row.results if isinstance(row.results, dict) else None
            if row.job in waiting:
                continue
            if data is None:
                notes.append(f"{label}: {row.job} has no results")
            elif data.get("status") not in (None, "complete"):
                why = f" ({data['stopped_by']})" if isinstance(data.get("stopped_by"), str) else ""
                notes.append(f"{label}: {row.job} results are {str(data.get('status'))[:40]}{why}")
    return notes


# --- headline rows --------------------------------------------------------------------------------

def recorded_headlines(manifest: Mapping[str, Any]) -> dict[str, list[str]]:
    """Type -> its `headline:` patterns, as a run's manifest.json records them (anything malformed is left out)."""
    found = manifest.get("headline")
    if not isinstance(found, dict):
        return {}
    return {name: patterns for name, patterns in found.items()
            if isinstance(patterns, list) and all(isinstance(pattern, str) for pattern in patterns)}


def headline_rows(rows: list[Row], types: Mapping[str, str], headlines: Mapping[str, list[str]]) -> set[int]:
    """The indices of the rows compare shows by default: per client, the metrics its type's `headline:` names
    (metric_matches); for a type without one, the report's rule (report.headline: throughputs, per latency family
    its median and highest percentile >= 90, recall)."""
    from .report import headline

    by_client: dict[str, set[str]] = {}
    for row in rows:
        by_client.setdefault(row.client, set()).add(row.metric)
    chosen: dict[str, set[str]] = {}
    for client, names in by_client.items():
        patterns = headlines.get(types.get(client, ""))
        chosen[client] = ({name for name in names if any(metric_matches(name, pattern) for pattern in patterns)}
                          if patterns else set(headline(names)))
    return {index for index, row in enumerate(rows) if row.metric in chosen[row.client]}


def client_types(*sides: Mapping[tuple[str, str], Side]) -> dict[str, str]:
    """Client -> its type, as run.json names it (the first run that has the client)."""
    types: dict[str, str] = {}
    for found in sides:
        for (_, client), side in found.items():
            if side.rows:
                types.setdefault(client, side.rows[0].type)
    return types


# --- comparing ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Judging:
    """How changes are judged: the interval's confidence (%), whether a single repeat counts as a value, and the
    thresholds (a metric's band of `no change` is the smallest threshold naming it, else DEFAULT_BAND)."""

    confidence: float = DEFAULT_CONFIDENCE
    point_estimates: bool = False
    thresholds: tuple[Threshold, ...] = ()

    def band(self, client: str, metric: str) -> float:
        named = [t.percent for t in self.thresholds if t.matches(client, metric) and t.bad_direction(metric)]
        return min(named, default=DEFAULT_BAND)


@dataclass(frozen=True)
class Row:
    values: Mapping[str, Any]
    point_a: str | None
    point_b: str | None
    client: str
    metric: str
    a: Aggregate | None
    b: Aggregate | None
    series_a: tuple[float, ...] = ()
    series_b: tuple[float, ...] = ()
    judging: Judging = Judging()

    @cached_property
    def stats(self) -> Change | None:
        """B against A with its interval (stats.change); None when a side is missing."""
        if self.a is None or self.b is None or not self.series_a or not self.series_b:
            return None
        return change_of(self.series_a, self.series_b, self.judging.confidence, self.judging.point_estimates)

    @property
    def change(self) -> float | None:
        """B against A in % of A: the ratio of geometric means (of |A|'s mean for values not all positive; +-inf
        when A is 0 and B is not); None when a side is missing."""
        return None if self.stats is None else self.stats.change_percent

    @property
    def interval(self) -> tuple[float, float] | None:
        """The confidence interval of the change in %; None with a single repeat on a side (even when judged by
        --point-estimates: a value has no interval)."""
        if self.stats is None or min(len(self.series_a), len(self.series_b)) < 2:
            return None
        return self.stats.interval_percent

    @property
    def band(self) -> float:
        return self.judging.band(self.client, self.metric)

    @property
    def verdict(self) -> str:
        if self.b is None:
            return "only in A"
        if self.a is None or self.stats is None:
            return "only in B"
        return verdict(self.stats, direction(self.metric), self.band)

    @property
    def repeats_needed(self) -> int | None:
        """Repeats per run that would decide an inconclusive change at the observed spread (stats.repeats_needed)."""
        if self.stats is None or self.verdict != "inconclusive":
            return None
        return repeats_needed(self.stats, self.band, self.judging.confidence)


def compare_rows(a: dict[tuple[str, str], Side], b: dict[tuple[str, str], Side], judging: Judging = Judging()) -> list[Row]:
    """Every (point, client, metric) of either run: A's order, then what only B has."""
    rows = []
    for key in [*a, *(key for key in b if key not in a)]:
        side_a, side_b = a.get(key), b.get(key)
        some = side_a or side_b
        assert some is not None
        stats_a, stats_b = side_a.stats() if side_a else {}, side_b.stats() if side_b else {}
        series_a, series_b = side_a.series() if side_a else {}, side_b.series() if side_b else {}
        for metric in sorted({*stats_a, *stats_b}):
            rows.append(Row(some.values, side_a.point if side_a else None, side_b.point if side_b else None, key[1],
                            metric, stats_a.get(metric), stats_b.get(metric), series_a.get(metric, ()),
                            series_b.get(metric, ()), judging))
    return rows


def threshold_failures(rows: list[Row], thresholds: list[Threshold]) -> list[str]:
    """A message per change beyond a threshold (or metric of A gone in B); ClusterError for a threshold
    that checks nothing (it matches no metric, or only metrics without a direction and has no sign)."""
    failures = []
    for threshold in thresholds:
        matched = [row for row in rows if threshold.matches(row.client, row.metric)]
        if not matched:
            raise ClusterError(f"--threshold {threshold.text}: matches no metric of either run"
                               + near_metrics(threshold.pattern, {row.metric for row in rows}))
        checked = [row for row in matched if threshold.bad_direction(row.metric)]
        if not checked:
            names = ", ".join(sorted({row.metric for row in matched})[:5])
            raise ClusterError(f"--threshold {threshold.text}: {names} has no known direction (README \"Comparing "
                               f"runs\"); write {threshold.pattern}=+{threshold.percent:g} (a rise fails) or "
                               f"{threshold.pattern}=-{threshold.percent:g} (a fall fails)")
        for row in checked:
            where = f"point {point_label(row.values)}, {row.client}.{row.metric}"
            if row.a is None:
                continue
            if row.b is None:
                failures.append(f"{where}: {_number(row.a.mean)} in A, missing in B (--threshold {threshold.text})")
                continue
            assert row.stats is not None
            bad = threshold.bad_direction(row.metric)
            if beyond(row.stats, bad, threshold.percent):
                way = "rise" if bad > 0 else "fall"
                failures.append(f"{where}: {_number(row.a.mean)} -> {_number(row.b.mean)}{_unit(row.metric)} "
                                f"({_described_change(row)}), a {way} beyond the {threshold.percent:g}% allowed "
                                f"(--threshold {threshold.text})")
    return failures


def _judged_failures(rows: list[Row], judged: list[Row], thresholds: list[Threshold]) -> list[str]:
    """threshold_failures over `judged` (the rows a run still going does not lack); a threshold that matches only
    rows left out has nothing to judge yet, one that matches no row at all is still an error."""
    failures = []
    for threshold in thresholds:
        if any(threshold.matches(row.client, row.metric) for row in judged):
            failures += threshold_failures(judged, [threshold])
        elif not any(threshold.matches(row.client, row.metric) for row in rows):
            threshold_failures(rows, [threshold])       # raises: it matches no metric of either run
    return failures


def undecided(rows: list[Row], thresholds: list[Threshold]) -> list[str]:
    """A message per thresholded change whose value is beyond its threshold but whose interval is not wholly beyond
    it (or that has one repeat on a side, so no interval): not a failure (README "Comparing runs"), but worth
    saying, with the repeats that would decide."""
    found = []
    for threshold in thresholds:
        for row in rows:
            bad = threshold.bad_direction(row.metric) if threshold.matches(row.client, row.metric) else 0
            if not bad or row.stats is None or beyond(row.stats, bad, threshold.percent):
                continue
            assert row.a is not None and row.b is not None
            low_edge, high_edge = row.stats.edges(threshold.percent)
            if not (row.stats.difference > high_edge if bad > 0 else row.stats.difference < low_edge):
                continue  # the change itself is within the threshold
            where = (f"point {point_label(row.values)}, {row.client}.{row.metric}: {_number(row.a.mean)} -> "
                     f"{_number(row.b.mean)}{_unit(row.metric)} ({_described_change(row)}) is beyond --threshold "
                     f"{threshold.text}")
            if row.interval is None:
                found.append(f"{where}, but with one repeat (n={row.a.n} -> n={row.b.n}) there is no interval: "
                             "inconclusive (run repeats, or judge single values with --point-estimates)")
                continue
            needed = repeats_needed(row.stats, threshold.percent, row.judging.confidence)
            found.append(f"{where} but its interval is not: inconclusive"
                         + (f" ({needed} repeats per run would decide at this spread)" if needed else ""))
    return found


def _described_change(row: Row) -> str:
    """The change, and its interval when it is one (not a single value's point estimate)."""
    interval = row.interval
    if interval is None:
        return _percent(row.change)
    return f"{_percent(row.change)}, {row.judging.confidence:g}% interval {_interval(interval)}"


def _interval(interval: tuple[float, float] | None) -> str:
    return "-" if interval is None else f"[{_percent(interval[0])}, {_percent(interval[1])}]"


def _unit(metric: str) -> str:
    from .metrics import unit_of

    unit = unit_of(metric)
    return f" {unit}" if unit else ""


def _number(value: float) -> str:
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def _percent(change: float | None) -> str:
    if change is None:
        return "-"
    if math.isinf(change):
        return "+inf%" if change > 0 else "-inf%"
    return f"{change:+.1f}%"


def _cell(value: Aggregate | None) -> str:
    if value is None:
        return "-"
    if value.n > 1 and value.stdev is not None:
        spread = f"{value.stdev:.0f}" if value.stdev >= 100 else f"{value.stdev:.3g}"
        return f"{_number(value.mean)} ±{spread} (n={value.n})"
    return _number(value.mean)


def _json_aggregate(value: Aggregate | None) -> dict[str, Any] | None:
    if value is None:
        return None
    return {"n": value.n, "mean": value.mean, "stdev": value.stdev, "min": value.min, "max": value.max}


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def cmd_compare(args: argparse.Namespace) -> int:
    from ..output.manifest import read_manifest
    from ..run.runs import load_run

    thresholds = [parse_threshold(text) for text in args.threshold or []]
    judging = Judging(parse_confidence(getattr(args, "confidence", None)), bool(getattr(args, "point_estimates", False)),
                      tuple(thresholds))
    dir_a, run_a = load_run(args.run_a)
    dir_b, run_b = load_run(args.run_b)
    name_a, name_b = dir_a.resolve().name, dir_b.resolve().name
    state_a, current_a = _state_noted(f"A {name_a}", dir_a, run_a)
    state_b, current_b = _state_noted(f"B {name_b}", dir_b, run_b)
    # each run's manifest read once: for its points and for its types' headlines
    manifest_a, manifest_b = read_manifest(dir_a), read_manifest(dir_b)
    sides_a, sides_b = _sides(dir_a, run_a, manifest_a), _sides(dir_b, run_b, manifest_b)
    rows = compare_rows(sides_a, sides_b, judging)
    # what a run still going has not written yet is no change: thresholds judge what both runs have
    judged = [row for row in rows if not ((row.a is None and state_a in UNFINISHED_STATES)
                                          or (row.b is None and state_b in UNFINISHED_STATES))]
    failures = _judged_failures(rows, judged, thresholds)
    heads = headline_rows(rows, client_types(sides_a, sides_b), {**recorded_headlines(manifest_b), **recorded_headlines(manifest_a)})
    if args.json:
        from ..core.terminal import json_text

        print(json_text({"a": name_a, "b": name_b, "a_state": state_a, "b_state": state_b, "rows": [
            {"point": dict(row.values), "point_a": row.point_a, "point_b": row.point_b, "client": row.client,
             "metric": row.metric, "direction": direction_name(direction(row.metric)),
             "a": _json_aggregate(row.a), "b": _json_aggregate(row.b), "change_percent": _finite(row.change),
             "ci_low_percent": _finite(row.interval[0]) if row.interval else None,
             "ci_high_percent": _finite(row.interval[1]) if row.interval else None,
             "verdict": row.verdict, "repeats_needed": row.repeats_needed, "band_percent": row.band,
             "headline": index in heads} for index, row in enumerate(rows)],
            "confidence_percent": judging.confidence, "point_estimates": judging.point_estimates,
            "thresholds": [threshold.text for threshold in thresholds], "failures": failures}, indent=2,
            sort_keys=True))
    elif args.csv:
        from ..core.terminal import write_csv
        from .metrics import unit_of

        table: list[list[Any]] = [COMPARE_CSV_HEADERS]
        for row in rows:
            low, high = row.interval or (None, None)
            needed = row.repeats_needed
            table.append([name_a, name_b, json.dumps(dict(row.values), sort_keys=True, default=str),
                             row.point_a or "", row.point_b or "", row.client, row.metric, unit_of(row.metric),
                             direction_name(direction(row.metric)),
                             "" if row.a is None else repr(row.a.mean), "" if row.a is None else row.a.n,
                             "" if row.b is None else repr(row.b.mean), "" if row.b is None else row.b.n,
                             *("" if (number := _finite(value)) is None else repr(number) for value in (row.change, low, high)),
                             row.verdict, "" if needed is None else needed, repr(row.band)])
        write_csv(table)
    else:
        # the headline rows, and every row a threshold names
        shown = rows if args.all else [row for index, row in enumerate(rows) if index in heads
                                       or any(threshold.matches(row.client, row.metric) for threshold in thresholds)]
        _print_comparison(f"{name_a} (A) -> {name_b} (B)", shown)
        if len(shown) < len(rows):
            left = len({row.metric for row in rows} - {row.metric for row in shown})
            print(f"orchc: note: {left} more metric{'s' if left != 1 else ''} not shown (not in the headline of "
                  "their type): --all shows them", file=sys.stderr)
    from ..core.terminal import terminal_text

    for note in [*_notes(f"A {name_a}", sides_a.values(), _not_ended(current_a)),
                 *_notes(f"B {name_b}", sides_b.values(), _not_ended(current_b)), *undecided(judged, thresholds)]:
        print(f"orchc: note: {terminal_text(note)}", file=sys.stderr)
    for failure in failures:
        print(f"orchc: regression: {terminal_text(failure)}", file=sys.stderr)
    if failures:
        print(f"orchc: error: {len(failures)} change(s) beyond the thresholds", file=sys.stderr)
        return 1
    if state_a in UNFINISHED_STATES or state_b in UNFINISHED_STATES:
        print(f"orchc: note: compare again once both runs have ended (exit status {EXIT_NOT_FINISHED})", file=sys.stderr)
        return EXIT_NOT_FINISHED
    return 0


def parse_confidence(text: str | None) -> float:
    """--confidence: a percent strictly between 50 and 100 (95, 99.5, 90%)."""
    if text is None:
        return DEFAULT_CONFIDENCE
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]*)?)%?", text.strip())
    if not match or not 50 < float(match[1]) < 100:
        raise ClusterError(f"--confidence {text[:40]!r}: expected a percent between 50 and 100 (such as 95)")
    return float(match[1])


def _verdict_cell(row: Row) -> str:
    needed = row.repeats_needed
    return f"{row.verdict} (n={needed} would decide)" if needed is not None else row.verdict


_STYLES = {"better": "green", "worse": "red", "only in A": "yellow", "only in B": "yellow"}


def _print_comparison(title: str, rows: list[Row], stream: TextIO | None = None) -> None:
    from ..core.terminal import is_terminal, print_table, terminal_text
    from .metrics import unit_of

    stream = stream or sys.stdout
    confidence = rows[0].judging.confidence if rows else DEFAULT_CONFIDENCE
    headers = ["point", "client", "metric", "unit", "A", "B", "change", f"{confidence:g}% interval", "verdict"]
    cells = [[point_label(row.values), row.client, row.metric, unit_of(row.metric), _cell(row.a), _cell(row.b),
              _percent(row.change), _interval(row.interval), _verdict_cell(row)] for row in rows]
    if not is_terminal(stream):
        print_table(title, headers, cells, stream)
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(terminal_text(title)), title_justify="left")
    for header in headers:
        table.add_column(header, justify="right" if header in ("A", "B", "change", headers[7]) else "left")
    for row, line in zip(rows, cells, strict=True):
        style = _STYLES.get(row.verdict, "")
        table.add_row(*(Text(terminal_text(text)) for text in line[:6]), *(Text(text, style=style) for text in line[6:]))
    Console(file=stream).print(table)


# --- references -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reference:
    key: str
    expect: float | None
    tolerance_percent: float | None
    min: float | None
    max: float | None
    per: str = "repeat"
    """`repeat`: every repeat's value is checked; `point`: the mean over each point's repeats, with its interval"""

    def allowed(self) -> str:
        parts = []
        if self.expect is not None and self.tolerance_percent is not None:
            spread = abs(self.expect) * self.tolerance_percent / 100
            parts.append(f"{_number(self.expect)} ±{self.tolerance_percent:g}% "
                         f"[{_number(self.expect - spread)}, {_number(self.expect + spread)}]")
        if self.min is not None:
            parts.append(f">= {_number(self.min)}")
        if self.max is not None:
            parts.append(f"<= {_number(self.max)}")
        return ", ".join(parts)

    def bounds(self) -> tuple[float, float]:
        """The allowed range, every condition given together."""
        low, high = -math.inf, math.inf
        if self.expect is not None and self.tolerance_percent is not None:
            spread = abs(self.expect) * self.tolerance_percent / 100
            low, high = self.expect - spread, self.expect + spread
        if self.min is not None:
            low = max(low, self.min)
        if self.max is not None:
            high = min(high, self.max)
        return low, high

    def passes(self, value: float) -> bool:
        low, high = self.bounds()
        return low <= value <= high

    def judge(self, low: float, high: float) -> str:
        """An interval against the bounds: `pass` wholly within, `FAIL` wholly outside, else `inconclusive`."""
        allowed_low, allowed_high = self.bounds()
        if allowed_low <= low and high <= allowed_high:
            return "pass"
        if high < allowed_low or low > allowed_high:
            return "FAIL"
        return "inconclusive"


_REFERENCE_FIELDS = ("expect", "tolerance_percent", "min", "max")
_REFERENCE_FORMS = ("repeat", "point")


def read_references(manifest: Mapping[str, Any], where: str) -> list[Reference]:
    """The manifest's `references` (the recipe's, as compiled); ClusterError when missing or malformed."""
    found = manifest.get("references")
    if found is None:
        raise ClusterError(f"{where} has no references: give the recipe a `references:` block "
                           "(CLIENT.METRIC: {expect: N, tolerance_percent: P} or {min: N} / {max: N})")
    if not isinstance(found, dict):
        raise ClusterError(f"{where}: references is not a mapping")
    references = []
    for key, spec in found.items():
        label = f"{where}: references.{str(key)[:80]}"
        if not isinstance(spec, dict) or not set(spec) - {"per"} or set(spec) - {*_REFERENCE_FIELDS, "per"}:
            raise ClusterError(f"{label}: expected {{expect: N, tolerance_percent: P}} and/or {{min: N}} / {{max: N}}")
        per = spec.get("per", "repeat")
        if per not in _REFERENCE_FORMS:
            raise ClusterError(f"{label}: per is {str(per)[:40]!r}, expected repeat or point")
        numbers: dict[str, float | None] = {}
        for name in _REFERENCE_FIELDS:
            value = spec.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise ClusterError(f"{label}: {name} is not a number")
            numbers[name] = None if value is None else float(value)
        if (numbers["expect"] is None) != (numbers["tolerance_percent"] is None):
            raise ClusterError(f"{label}: expect and tolerance_percent go together")
        if numbers["tolerance_percent"] is not None and numbers["tolerance_percent"] < 0:
            raise ClusterError(f"{label}: tolerance_percent is negative")
        references.append(Reference(str(key), numbers["expect"], numbers["tolerance_percent"], numbers["min"],
                                    numbers["max"], per))
    return references


def _split_reference(key: str, clients: Iterable[str]) -> tuple[str, str] | None:
    """CLIENT.METRIC -> (client, metric), the longest client name of the run that fits (names may hold dots)."""
    fitting = [client for client in clients if key.startswith(f"{client}.") and len(key) > len(client) + 1]
    if not fitting:
        return None
    client = max(fitting, key=len)
    return client, key[len(client) + 1:]


def check_rows(references: list[Reference], results: list[PointResult],
               waiting: Collection[str] = ()) -> list[tuple[list[str], bool | None]]:
    """One row per reference and client result (every point and repeat): the cells and whether it passed; None
    (`waiting`) where the value is missing because the job (named in `waiting`) has not ended yet."""
    from .points import base_name

    by_client: dict[str, list[PointResult]] = {}
    for row in results:
        by_client.setdefault(base_name(row), []).append(row)
    clients = list(by_client)
    checked: list[tuple[list[str], bool | None]] = []
    for reference in references:
        split = _split_reference(reference.key, clients)
        if split is None:
            checked.append(([reference.key, "-", "-", f"no client {reference.key.split('.', 1)[0]} in this run",
                             reference.allowed(), "FAIL"], False))
            continue
        client, pattern = split
        if reference.per == "point":
            checked += _point_checks(reference, pattern, by_client[client])
            continue
        for row in by_client[client]:
            point = point_label(row.values)
            found = row.metrics()
            matched = [pattern] if pattern in found else sorted(name for name in found if metric_matches(name, pattern))
            if not matched and row.job in waiting:
                checked.append(([reference.key, point, row.job, "not yet", reference.allowed(), "waiting"], None))
                continue
            if not matched:
                why = "no results" if row.results is None else "missing" + near_metrics(pattern, found)
                checked.append(([reference.key, point, row.job, why, reference.allowed(), "FAIL"], False))
                continue
            for metric in matched:
                value = found[metric]
                passed = reference.passes(value)
                named = reference.key if metric == pattern else f"{reference.key} ({metric})"
                checked.append(([named, point, row.job, f"{_number(value)}{_unit(metric)}", reference.allowed(),
                                 "pass" if passed else "FAIL"], passed))
    return checked


def mean_interval(values: list[float], confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its t interval, mean +- t(1 - alpha/2, n - 1) s / sqrt(n); with one value the
    value itself."""
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, mean, mean
    from .stats import t_quantile

    deviation = math.sqrt(math.fsum((x - mean) ** 2 for x in values) / (len(values) - 1))
    half = t_quantile(0.5 + confidence / 200, len(values) - 1) * deviation / math.sqrt(len(values))
    return mean, mean - half, mean + half


def _point_checks(reference: Reference, pattern: str, rows: list[PointResult]) -> list[tuple[list[str], bool | None]]:
    """`per: point`: one row per point and matching metric, its mean over the repeats and 95% interval against the
    bounds; a FAIL only when the interval lies wholly outside (`inconclusive` passes, and says so); a point without
    the metric fails."""
    from .points import by_point

    checked: list[tuple[list[str], bool | None]] = []
    for (_, _), repeats in by_point(rows).items():
        point = point_label(repeats[0].values)
        jobs = ", ".join(row.job for row in repeats) if len(repeats) <= 3 else f"{repeats[0].job} .. ({len(repeats)})"
        names = sorted({name for row in repeats for name in row.metrics() if metric_matches(name, pattern)})
        if not names:
            checked.append(([reference.key, point, jobs, "missing", reference.allowed(), "FAIL"], False))
            continue
        for metric in [pattern] if pattern in names else names:
            values = [value for row in repeats if (value := row.metrics().get(metric)) is not None]
            mean, low, high = mean_interval(values)
            shown = f"{_number(mean)}{_unit(metric)} (n={len(values)}"
            shown += f", {DEFAULT_CONFIDENCE:g}% [{_number(low)}, {_number(high)}])" if len(values) > 1 else ")"
            result = reference.judge(low, high)
            named = reference.key if metric == pattern else f"{reference.key} ({metric})"
            checked.append(([named, point, jobs, shown, reference.allowed(), result], result != "FAIL"))
    return checked


def cmd_check(args: argparse.Namespace) -> int:
    """`orchc results --check [RUN]`: every reference against every point and repeat; 1 when any fails."""
    from ..core.terminal import is_terminal, terminal_text
    from ..output.manifest import MANIFEST, read_manifest
    from ..run.runs import load_run
    from .points import point_results

    run_dir, run = load_run(args.run_ref)
    manifest = read_manifest(run_dir)
    references = read_references(manifest, str(run_dir / MANIFEST))
    state, current = _state_noted(run_dir.name, run_dir, run)
    checked = check_rows(references, point_results(run_dir, run, manifest), _not_ended(current))
    failed = sum(1 for _, passed in checked if passed is False)
    waiting = sum(1 for _, passed in checked if passed is None)
    if args.json:
        from ..core.terminal import json_text

        print(json_text({"run": run_dir.resolve().name, "state": state, "failed": failed, "waiting": waiting,
                         "checks": [dict(zip(CHECK_HEADERS, cells, strict=True)) for cells, _ in checked]},
                        indent=2, sort_keys=True))
    elif args.csv:
        from ..core.terminal import write_csv

        write_csv([["run", *CHECK_HEADERS], *([run_dir.resolve().name, *cells] for cells, _ in checked)])
    elif is_terminal(sys.stdout):
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(title=Text(terminal_text(f"references of {run_dir.name}")), title_justify="left")
        for header in CHECK_HEADERS:
            table.add_column(header)
        for cells, passed in checked:
            table.add_row(*(Text(terminal_text(cell)) for cell in cells[:-1]),
                          Text(cells[-1], style="yellow" if cells[-1] == "inconclusive" else _CHECK_STYLES[passed]))
        Console(file=sys.stdout).print(table)
    else:
        from ..core.terminal import print_table

        print_table(f"references of {run_dir.name}", CHECK_HEADERS, [cells for cells, _ in checked])
    undecided = sum(1 for cells, _ in checked if cells[-1] == "inconclusive")
    if undecided:
        print(f"orchc: note: {undecided} reference check(s) inconclusive: a point's interval crosses a bound "
              "(more repeats would decide)", file=sys.stderr)
    if failed:
        print(f"orchc: error: {failed} of {len(checked)} reference check(s) failed", file=sys.stderr)
        return 1
    if waiting:
        print(f"orchc: note: {waiting} of {len(checked)} reference check(s) wait for jobs still running; "
              f"check again once the run has ended (exit status {EXIT_NOT_FINISHED})", file=sys.stderr)
    return EXIT_NOT_FINISHED if state in UNFINISHED_STATES else 0


_CHECK_STYLES = {True: "green", False: "red", None: "yellow"}


def _state_noted(label: str, run_dir: Path, run: Run) -> tuple[str, dict[str, JobState] | None]:
    """The run's state and its jobs' (known_state); for a run still pending or running, its note said first."""
    from ..core.terminal import terminal_text
    from ..run.runs import known_state, state_note

    state, current = known_state(run_dir, run)
    note = state_note(f"run {label}", state, current)
    if note:
        print(f"orchc: note: {terminal_text(note)}", file=sys.stderr, flush=True)
    return state, current


def _not_ended(current: Mapping[str, JobState] | None) -> set[str]:
    """Jobs still queued or running (not one the scheduler forgot: UNKNOWN will write nothing more)."""
    return {name for name, job in (current or {}).items() if not job.ended and job.state != "UNKNOWN"}

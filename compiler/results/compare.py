"""Comparing two runs (`orchc compare`) and checking a run against its recipe's references
(`orchc results --check`). Run side: both read results through points.point_results.

Points of two runs are matched by their swept values (never by name: p03 of one sweep may be p01 of
another); a run without a sweep is one point with no values. Repeats of a client at a point are averaged.
Whether a change is better or worse is decided from the metric's name by `direction` (README "Comparing runs").
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ..core.errors import ClusterError
from .metrics import direction, direction_name

if TYPE_CHECKING:
    from ..run.runs import Run
    from .points import Aggregate, PointResult

_THRESHOLD = re.compile(r"(?P<pattern>[^=\s]+)=(?P<sign>[+-]?)(?P<pct>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)%?")
COMPARE_CSV_HEADERS = ["run_a", "run_b", "point", "point_a", "point_b", "client", "metric", "unit", "direction",
                       "a", "a_n", "b", "b_n", "change_percent", "verdict"]
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
        return fnmatchcase(metric, self.pattern) or fnmatchcase(f"{client}.{metric}", self.pattern)

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


def point_key(values: Mapping[str, Any]) -> str:
    return json.dumps(values, sort_keys=True, default=str)


def point_label(values: Mapping[str, Any]) -> str:
    return " ".join(f"{key}={json.dumps(value, default=str)}" for key, value in values.items()) or "-"


def _sides(run_dir: Path, run: Run) -> dict[tuple[str, str], Side]:
    """(point key, client) -> Side, in the manifest's order."""
    from .points import base_name, point_results

    found: dict[tuple[str, str], Side] = {}
    for row in point_results(run_dir, run):
        side = found.setdefault((point_key(row.values), base_name(row)), Side(row.point, row.values))
        side.rows.append(row)
    return found


def _notes(label: str, sides: Iterable[Side]) -> list[str]:
    """Clients without results or that did not complete: why a metric may be missing."""
    notes = []
    for side in sides:
        for row in side.rows:
            data = row.results if isinstance(row.results, dict) else None
            if data is None:
                notes.append(f"{label}: {row.job} has no results")
            elif data.get("status") not in (None, "complete"):
                why = f" ({data['stopped_by']})" if isinstance(data.get("stopped_by"), str) else ""
                notes.append(f"{label}: {row.job} results are {str(data.get('status'))[:40]}{why}")
    return notes


# --- comparing ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    values: Mapping[str, Any]
    point_a: str | None
    point_b: str | None
    client: str
    metric: str
    a: Aggregate | None
    b: Aggregate | None

    @property
    def change(self) -> float | None:
        """B against A in % of |A| (+-inf when A is 0 and B is not); None when a side is missing."""
        if self.a is None or self.b is None:
            return None
        if self.a.mean == self.b.mean:
            return 0.0
        if self.a.mean == 0:
            return math.copysign(math.inf, self.b.mean)
        return (self.b.mean - self.a.mean) / abs(self.a.mean) * 100

    @property
    def verdict(self) -> str:
        change = self.change
        if self.b is None:
            return "only in A"
        if self.a is None:
            return "only in B"
        assert change is not None
        if change == 0:
            return "same"
        way = direction(self.metric) * (1 if change > 0 else -1)
        return {1: "better", -1: "worse"}.get(way, "changed")


def compare_rows(a: dict[tuple[str, str], Side], b: dict[tuple[str, str], Side]) -> list[Row]:
    """Every (point, client, metric) of either run: A's order, then what only B has."""
    rows = []
    for key in [*a, *(key for key in b if key not in a)]:
        side_a, side_b = a.get(key), b.get(key)
        some = side_a or side_b
        assert some is not None
        stats_a, stats_b = side_a.stats() if side_a else {}, side_b.stats() if side_b else {}
        for metric in sorted({*stats_a, *stats_b}):
            rows.append(Row(some.values, side_a.point if side_a else None, side_b.point if side_b else None, key[1],
                            metric, stats_a.get(metric), stats_b.get(metric)))
    return rows


def threshold_failures(rows: list[Row], thresholds: list[Threshold]) -> list[str]:
    """A message per change beyond a threshold (or metric of A gone in B); ClusterError for a threshold
    that checks nothing (it matches no metric, or only metrics without a direction and has no sign)."""
    failures = []
    for threshold in thresholds:
        matched = [row for row in rows if threshold.matches(row.client, row.metric)]
        if not matched:
            raise ClusterError(f"--threshold {threshold.text}: matches no metric of either run")
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
            change = row.change
            assert change is not None
            bad = threshold.bad_direction(row.metric)
            if change * bad > threshold.percent:
                way = "rise" if bad > 0 else "fall"
                failures.append(f"{where}: {_number(row.a.mean)} -> {_number(row.b.mean)}{_unit(row.metric)} "
                                f"({_percent(change)}), a {way} beyond the {threshold.percent:g}% allowed "
                                f"(--threshold {threshold.text})")
    return failures


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
    from ..run.runs import load_run

    thresholds = [parse_threshold(text) for text in args.threshold or []]
    dir_a, run_a = load_run(args.run_a)
    dir_b, run_b = load_run(args.run_b)
    sides_a, sides_b = _sides(dir_a, run_a), _sides(dir_b, run_b)
    rows = compare_rows(sides_a, sides_b)
    failures = threshold_failures(rows, thresholds)
    name_a, name_b = dir_a.resolve().name, dir_b.resolve().name
    if args.json:
        from ..core.terminal import json_text

        print(json_text({"a": name_a, "b": name_b, "rows": [
            {"point": dict(row.values), "point_a": row.point_a, "point_b": row.point_b, "client": row.client,
             "metric": row.metric, "direction": direction_name(direction(row.metric)),
             "a": _json_aggregate(row.a), "b": _json_aggregate(row.b), "change_percent": _finite(row.change),
             "verdict": row.verdict} for row in rows],
            "thresholds": [threshold.text for threshold in thresholds], "failures": failures}, indent=2,
            sort_keys=True))
    elif args.csv:
        from ..core.terminal import write_csv
        from .metrics import unit_of

        table: list[list[Any]] = [COMPARE_CSV_HEADERS]
        for row in rows:
            change = _finite(row.change)
            table.append([name_a, name_b, json.dumps(dict(row.values), sort_keys=True, default=str),
                             row.point_a or "", row.point_b or "", row.client, row.metric, unit_of(row.metric),
                             direction_name(direction(row.metric)),
                             "" if row.a is None else repr(row.a.mean), "" if row.a is None else row.a.n,
                             "" if row.b is None else repr(row.b.mean), "" if row.b is None else row.b.n,
                             "" if change is None else repr(change), row.verdict])
        write_csv(table)
    else:
        _print_comparison(f"{name_a} (A) -> {name_b} (B)", rows)
    from ..core.terminal import terminal_text

    for note in [*_notes(f"A {name_a}", sides_a.values()), *_notes(f"B {name_b}", sides_b.values())]:
        print(f"orchc: note: {terminal_text(note)}", file=sys.stderr)
    for failure in failures:
        print(f"orchc: regression: {terminal_text(failure)}", file=sys.stderr)
    if failures:
        print(f"orchc: error: {len(failures)} change(s) beyond the thresholds", file=sys.stderr)
        return 1
    return 0


_STYLES = {"better": "green", "worse": "red", "only in A": "yellow", "only in B": "yellow"}


def _print_comparison(title: str, rows: list[Row], stream: TextIO | None = None) -> None:
    from ..core.terminal import is_terminal, print_table, terminal_text
    from .metrics import unit_of

    stream = stream or sys.stdout
    headers = ["point", "client", "metric", "unit", "A", "B", "change", ""]
    cells = [[point_label(row.values), row.client, row.metric, unit_of(row.metric), _cell(row.a), _cell(row.b),
              _percent(row.change), row.verdict] for row in rows]
    if not is_terminal(stream):
        print_table(title, headers, cells, stream)
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(terminal_text(title)), title_justify="left")
    for header in headers:
        table.add_column(header, justify="right" if header in ("A", "B", "change") else "left")
    for row, line in zip(rows, cells, strict=True):
        style = _STYLES.get(row.verdict, "")
        table.add_row(*(Text(terminal_text(text)) for text in line[:6]), Text(line[6], style=style),
                      Text(line[7], style=style))
    Console(file=stream).print(table)


# --- references -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reference:
    key: str
    expect: float | None
    tolerance_percent: float | None
    min: float | None
    max: float | None

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

    def passes(self, value: float) -> bool:
        if (self.expect is not None and self.tolerance_percent is not None
                and abs(value - self.expect) > abs(self.expect) * self.tolerance_percent / 100):
            return False
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


_REFERENCE_FIELDS = ("expect", "tolerance_percent", "min", "max")


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
        if not isinstance(spec, dict) or not spec or set(spec) - set(_REFERENCE_FIELDS):
            raise ClusterError(f"{label}: expected {{expect: N, tolerance_percent: P}} and/or {{min: N}} / {{max: N}}")
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
                                    numbers["max"]))
    return references


def _split_reference(key: str, clients: Iterable[str]) -> tuple[str, str] | None:
    """CLIENT.METRIC -> (client, metric), the longest client name of the run that fits (names may hold dots)."""
    fitting = [client for client in clients if key.startswith(f"{client}.") and len(key) > len(client) + 1]
    if not fitting:
        return None
    client = max(fitting, key=len)
    return client, key[len(client) + 1:]


def check_rows(references: list[Reference], results: list[PointResult]) -> list[tuple[list[str], bool]]:
    """One row per reference and client result (every point and repeat): the cells and whether it passed."""
    from .points import base_name

    by_client: dict[str, list[PointResult]] = {}
    for row in results:
        by_client.setdefault(base_name(row), []).append(row)
    clients = list(by_client)
    checked = []
    for reference in references:
        split = _split_reference(reference.key, clients)
        if split is None:
            checked.append(([reference.key, "-", "-", f"no client {reference.key.split('.', 1)[0]} in this run",
                             reference.allowed(), "FAIL"], False))
            continue
        client, metric = split
        for row in by_client[client]:
            point = point_label(row.values)
            value = row.metrics().get(metric)
            if value is None:
                why = "no results" if row.results is None else "missing"
                checked.append(([reference.key, point, row.job, why, reference.allowed(), "FAIL"], False))
                continue
            passed = reference.passes(value)
            checked.append(([reference.key, point, row.job, f"{_number(value)}{_unit(metric)}", reference.allowed(),
                             "pass" if passed else "FAIL"], passed))
    return checked


def cmd_check(args: argparse.Namespace) -> int:
    """`orchc results --check [RUN]`: every reference against every point and repeat; 1 when any fails."""
    from ..core.terminal import is_terminal, terminal_text
    from ..output.manifest import read_manifest
    from ..run.runs import load_run
    from .points import point_results

    run_dir, run = load_run(args.run_ref)
    references = read_references(read_manifest(run_dir), str(run_dir / "manifest.json"))
    checked = check_rows(references, point_results(run_dir, run))
    failed = sum(1 for _, passed in checked if not passed)
    if args.json:
        from ..core.terminal import json_text

        print(json_text({"run": run_dir.resolve().name, "failed": failed, "checks": [
            dict(zip(CHECK_HEADERS, cells, strict=True)) for cells, _ in checked]}, indent=2, sort_keys=True))
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
                          Text(cells[-1], style="green" if passed else "red"))
        Console(file=sys.stdout).print(table)
    else:
        from ..core.terminal import print_table

        print_table(f"references of {run_dir.name}", CHECK_HEADERS, [cells for cells, _ in checked])
    if failed:
        print(f"orchc: error: {failed} of {len(checked)} reference check(s) failed", file=sys.stderr)
        return 1
    return 0

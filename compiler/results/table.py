"""`orchc results [RUN] [--json|--csv]`: a run's results as a table, JSON or CSV (a sweep's by point and repeat,
then over the repeats of each point); `--check` is compare.cmd_check."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import ClusterError
from ..core.terminal import cell
from .metrics import unit_of

if TYPE_CHECKING:
    from ..output.manifest import Sweep
    from ..run.runs import Run



RESULT_HEADERS = ["job", "state", "metric", "value", "unit"]


# One row per metric, with what is needed to concatenate the CSV of many runs.
RESULT_CSV_HEADERS = ["run", "point", "repeat", "job", "slurm_id", "type", "state", "status", "metric", "value",
                      "unit", "parameters"]
"""`results --csv`; a sweep's keys are columns of their own, before `parameters`"""


RESULTS_SCHEMA = "orchc-results/1"


def job_states_of(run_dir: Path, run: Run) -> tuple[dict[str, str], str]:
    """Each job's state for `results`, and the run's (its note said first when it has not completed);
    results stay readable when the scheduler does not answer (states `?`, the run's `unknown`)."""
    from ..core.terminal import terminal_text
    from ..run.runs import current_state, scheduler_for, state_note, states

    try:
        current = states(run, scheduler_for(run))
    except ClusterError as error:
        print(f"orchc: warning: job states unknown: {terminal_text(error, lines=True)}", file=sys.stderr)
        return {job.name: "?" for job in run.jobs}, "unknown"
    state = current_state(run_dir, run, current)
    note = state_note(f"run {run_dir.name}", state, current)
    if note:
        print(f"orchc: note: {terminal_text(note)}", file=sys.stderr, flush=True)
    return {name: job.state for name, job in current.items()}, state



PATH_LIMIT = 1000
"""Characters of a nested key path shown (`a.b.c`); longer paths end in an ellipsis."""


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested results -> (dotted key path, value) rows, in order. Iterative, so any depth the JSON reader allowed
    is fine; a path is clipped at PATH_LIMIT characters, so that deep long keys cannot make every row huge."""
    rows: list[tuple[str, Any]] = []
    stack: list[tuple[str, Any]] = [(prefix, value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, dict) and item:
            stack.extend((_joined(path, str(key)), child) for key, child in reversed(item.items()))
        else:
            rows.append((path.rstrip("."), item))
    return rows


def _joined(path: str, key: str) -> str:
    if len(path) > PATH_LIMIT:
        return path
    joined = f"{path}{key}."
    return joined if len(joined) <= PATH_LIMIT else joined[:PATH_LIMIT] + "…"


def _metric_rows(data: Any) -> list[tuple[str, Any, str]]:
    """(metric, value, unit) rows of one client's results: the metrics of the documented shape, then how the
    run ended; results of another shape (a type that writes its own results.json) row by row, without units."""
    if not (isinstance(data, dict) and data.get("schema") == RESULTS_SCHEMA and isinstance(data.get("metrics"), dict)):
        return [(metric or "-", value, "") for metric, value in flatten(data)]
    rows = [(name, value, unit_of(name)) for name, value in sorted(data["metrics"].items())]
    rows.append(("status", data.get("status"), ""))
    rows += [(key, data[key], "") for key in ("stopped_by", "error") if data.get(key) is not None]
    rows += [(metric, value, "") for metric, value in flatten(data.get("images"), "images.") if data.get("images")]
    return rows


def _result_rows(collected: dict[str, Any], job_states: dict[str, str]) -> list[list[str]]:
    from ..run.scheduler import ENDED

    rows = []
    for job, data in collected.items():
        state = job_states.get(job, "?")
        if data is None:
            rows.append([job, state, "-", "no results" if state in ENDED else "no results yet", ""])
            continue
        rows += [[job, state, metric, cell(value), unit] for metric, value, unit in _metric_rows(data)]
    return rows


def _csv_table(run: Run, run_dir: Path, collected: dict[str, Any], job_states: dict[str, str]) -> list[list[str]]:
    """The header and one row per job and metric, each swept key a column named by the key (pandas and
    spreadsheets read a value per cell, not the JSON of them all)."""
    from ..output.manifest import read_manifest
    from ..results.points import placements

    placed = placements(read_manifest(run_dir))
    keys = list(dict.fromkeys(key for at in placed.values() if at.point for key in at.values))
    rows = [RESULT_CSV_HEADERS[:-1] + [_column_name(key) for key in keys] + RESULT_CSV_HEADERS[-1:]]
    for job in run.jobs:
        if job.name not in collected:
            continue
        data = collected[job.name]
        shaped = data if isinstance(data, dict) else {}
        parameters = json.dumps(shaped.get("parameters"), sort_keys=True) if "parameters" in shaped else ""
        at = placed.get(job.name)
        values = dict(at.values) if at and at.point else {}
        swept = [cell(values[key]) if key in values else "" for key in keys]
        first = [run.run_dir.rstrip("/").rsplit("/", 1)[-1], (at.point or "") if at else "",
                 str(at.repeat or "") if at else "", job.name, job.slurm_id, job.type,
                 job_states.get(job.name, "?"), cell(shaped.get("status", ""))]
        metric_rows = _metric_rows(data) if data is not None else [("-", "no results", "")]
        rows += [[*first, metric, cell(value), unit, *swept, parameters] for metric, value, unit in metric_rows]
    return rows


def _column_name(key: str) -> str:
    """A swept key as a column name; `swept:KEY` when the key is the name of a column of every row."""
    return f"swept:{key}" if key in RESULT_CSV_HEADERS else key


def _sweep_results(run_dir: Path, run: Run, manifest: dict[str, Any], sweep: Sweep,
                   known: tuple[dict[str, str], str], as_json: bool) -> int:
    """A sweep's results: one row per point, repeat and metric, then each point's aggregate over its repeats."""
    from ..core.terminal import json_text, print_table
    from ..results.points import aggregates, base_name, by_point, point_results
    from ..results.slo import slo_curves

    job_states, state = known
    rows = point_results(run_dir, run, manifest)
    slo = slo_curves(rows, list(sweep.keys))
    aggregated = [{"point": point, "values": dict(repeats[0].values), "client": client, "metric": name,
                   "unit": unit_of(name), **vars(summary)}
                  for (point, client), repeats in by_point(rows).items()
                  for name, summary in aggregates(repeats).items()]
    if as_json:
        print(json_text({"run": run_dir.name, "state": state, "sweep": {"keys": list(sweep.keys), "repeat": sweep.repeat},
                          "rows": [{"point": row.point, "values": dict(row.values), "repeat": row.repeat,
                                    "client": base_name(row), "job": row.job, "slurm_id": row.slurm_id,
                                    "state": job_states.get(row.job, "?"), "results": row.results} for row in rows],
                          "aggregates": aggregated, "slo": [curve.as_json() for curve in slo]}, indent=2, sort_keys=True))
        return 0
    keys = list(sweep.keys)
    table = []
    for row in rows:
        first = [row.point or "-", *(cell(row.values.get(key, "")) for key in keys), str(row.repeat or ""),
                 base_name(row), job_states.get(row.job, "?")]
        metric_rows = _metric_rows(row.results) if row.results is not None else [("-", "no results", "")]
        table += [[*first, metric, cell(value), unit] for metric, value, unit in metric_rows]
    print_table(f"results of {run_dir.name}: {len(sweep.points)} points x {sweep.repeat} repeats",
                ["point", *keys, "repeat", "client", "state", "metric", "value", "unit"], table)
    summary_rows = [[str(a["point"]), *(cell(a["values"].get(key, "")) for key in keys), str(a["client"]),
                     str(a["metric"]), str(a["n"]), _number(a["mean"]), _number(a["stdev"]), _number(a["min"]),
                     _number(a["max"]), str(a["unit"])] for a in aggregated]
    print()
    print_table("over the repeats of each point", ["point", *keys, "client", "metric", "n", "mean", "stdev", "min",
                                                   "max", "unit"], summary_rows)
    for curve in slo:
        print(curve.describe())
    return 0


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def cmd_results(args: argparse.Namespace) -> int:
    if args.check:
        from ..results.compare import cmd_check

        return cmd_check(args)
    from ..core.terminal import json_text, print_table
    from ..run.runs import images, load_run, results

    run_dir, run = load_run(args.run_ref)
    if not args.csv:
        from ..output.manifest import read_manifest, recorded_sweep

        manifest = read_manifest(run_dir)
        sweep = recorded_sweep(manifest)
        if sweep is not None:
            return _sweep_results(run_dir, run, manifest, sweep, job_states_of(run_dir, run), args.json)
    collected = results(run_dir, run)
    for job, used in images(run_dir, run).items():  # every job's images, services' too
        data = collected.get(job)
        collected[job] = {**(data if isinstance(data, dict) else {} if data is None else {"results": data}),
                          "images": used}
    job_states, _ = job_states_of(run_dir, run)
    if args.csv:
        from ..core.terminal import write_csv

        write_csv(_csv_table(run, run_dir, collected, job_states))
        return 0
    from ..core.terminal import terminal_text
    from .breakdown import breakdowns, heading_of, table_of

    parts = {job: found for job in collected if (found := breakdowns(run_dir, job))}
    if args.json:
        shown = {job: {**(data if isinstance(data, dict) else {} if data is None else {"results": data}),
                       "job_state": job_states.get(job, "?"), **({"breakdown": parts[job]} if job in parts else {})}
                 for job, data in collected.items()}
        print(json_text(shown, indent=2, sort_keys=True))
        return 0
    print_table(f"results of {run_dir.name}", RESULT_HEADERS, _result_rows(collected, job_states))
    for job, found in parts.items():
        for kind, rows in found.items():
            headers, table = table_of(kind, rows)
            print(f"\n{terminal_text(heading_of(job, kind, rows))}")
            print_table("", headers, table)
    return 0

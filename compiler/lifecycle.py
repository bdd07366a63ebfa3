"""The run commands of the CLI: submit, status, cancel, logs, results."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_commands(commands: Any, add_compile_options: Callable[[argparse.ArgumentParser], None]) -> None:
    submit = commands.add_parser("submit", help="compile a recipe into a new run folder and submit its jobs")
    submit.add_argument("recipe", type=Path, metavar="RECIPE")
    submit.add_argument("--run-dir", type=Path, metavar="DIR", help="default: runs/<recipe>-<UTC timestamp>/")
    add_compile_options(submit)
    submit.set_defaults(run=cmd_submit)

    status = commands.add_parser("status", help="the state of each job of a run (default: the latest)")
    status.add_argument("run_ref", nargs="?", metavar="RUN")
    status.add_argument("--watch", action="store_true", help="refresh until every job has ended")
    status.add_argument("--json", action="store_true")
    status.add_argument("--interval", type=float, default=2.0, help=argparse.SUPPRESS)
    status.set_defaults(run=cmd_status)

    cancel = commands.add_parser("cancel", help="cancel a run's jobs (all, or the ones named)")
    cancel.add_argument("run_ref", nargs="?", metavar="RUN")
    cancel.add_argument("jobs", nargs="*", metavar="JOB")
    cancel.set_defaults(run=cmd_cancel)

    logs = commands.add_parser("logs", help="print a job's slurm-%%j.out and .err")
    logs.add_argument("run_ref", metavar="RUN")
    logs.add_argument("job", metavar="JOB")
    logs.set_defaults(run=cmd_logs)

    results = commands.add_parser("results", help="the clients' collected results")
    results.add_argument("run_ref", nargs="?", metavar="RUN")
    form = results.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true")
    form.add_argument("--csv", action="store_true")
    results.set_defaults(run=cmd_results)


def cmd_submit(args: argparse.Namespace) -> int:
    from .cli import compile_options
    from .pipeline import compile_all
    from .runs import new_run_dir, submit

    (output,) = compile_all([args.recipe], compile_options(args))
    run_dir = args.run_dir or new_run_dir(output.recipe.name)
    run = submit(output, run_dir)
    for job in run["jobs"]:
        print(f"submitted {job['role']} {job['name']}: SLURM job {job['slurm_id']}")
    print(f"run: {run_dir}  (follow it with: orchc status --watch {run_dir})")
    return 0


def _status_rows(run: dict[str, Any]) -> tuple[list[list[str]], bool]:
    from .runs import states

    current = states(run)
    rows = []
    for job in run["jobs"]:
        state = current[job["name"]]
        rows.append([job["name"], job["role"], job["slurm_id"], state.state, state.node, state.elapsed, state.exit_code])
    return rows, all(state.ended for state in current.values())


HEADERS = ["job", "role", "slurm id", "state", "node", "elapsed", "exit code"]


def cmd_status(args: argparse.Namespace) -> int:
    from .report import is_terminal, print_table, rich_table
    from .runs import load_run

    run_dir, run = load_run(args.run_ref)
    rows, ended = _status_rows(run)
    if args.json:
        print(json.dumps({"run": str(run_dir), "jobs": [dict(zip(HEADERS, row, strict=True)) for row in rows]}, indent=2))
        return 0
    if not args.watch:
        print_table(f"run {run_dir.name}", HEADERS, rows)
        return 0
    title = f"run {run_dir.name}"
    if is_terminal(sys.stdout):
        from rich.live import Live

        with Live(rich_table(title, HEADERS, rows), refresh_per_second=4) as live:
            while not ended:
                time.sleep(args.interval)
                rows, ended = _status_rows(run)
                live.update(rich_table(title, HEADERS, rows))
        return 0
    last: list[list[str]] = []
    while True:
        if [row[3] for row in rows] != [row[3] for row in last]:
            print_table(title, HEADERS, rows)
            sys.stdout.flush()
            last = rows
        if ended:
            return 0
        time.sleep(args.interval)
        rows, ended = _status_rows(run)


def cmd_cancel(args: argparse.Namespace) -> int:
    from .runs import cancel, load_run

    run_dir, run = load_run(args.run_ref)
    ids = cancel(run, args.jobs)
    print(f"cancelled SLURM job(s) {', '.join(ids)} of {run_dir}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from .runs import load_run, log_files

    run_dir, run = load_run(args.run_ref)
    for path in log_files(run_dir, run, args.job):
        print(f"==> {path} <==")
        print(path.read_text(errors="replace") if path.exists() else "(not written yet)")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from .report import print_table
    from .runs import flatten, load_run, results

    run_dir, run = load_run(args.run_ref)
    collected = results(run_dir, run)
    if args.json:
        print(json.dumps(collected, indent=2, sort_keys=True))
        return 0
    rows = [[job, metric, "" if value is None else str(value)]
            for job, data in collected.items() for metric, value in (flatten(data) if data else [("", None)])]
    if args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["job", "metric", "value"])
        writer.writerows(rows)
        return 0
    print_table(f"results of {run_dir.name}", ["job", "metric", "value"], rows)
    return 0

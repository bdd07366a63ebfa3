"""Following runs: `orchc status` (one poll per refresh), `status --watch` with a sweep's progress, `orchc runs`.

A status row says what a job waits for: a PENDING job's SLURM reason (Resources, Priority, Dependency,
...) and estimated start, a RUNNING service's readiness (`ready` once it has published
`endpoints/<job>` carrying its own SLURM id, `starting` before). Times have one format in every
state: start as ISO 8601 UTC, elapsed as H:MM:SS (compiler/run/slurm.py normalizes what SLURM prints).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import ClusterError
from .ssh import patiently  # a login node that went away for a moment: --watch waits for it

if TYPE_CHECKING:
    from .runs import Run, RunJob, RunListing
    from .scheduler import JobState, Scheduler

HEADERS = ["job", "role", "slurm id", "state", "service", "node", "start", "elapsed", "exit code", "reason"]
KEPT = ("job", "state")
"""the columns a narrow terminal never cuts"""
_ENDPOINT_LIMIT = 4096
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}")


def readiness(run_dir: Path, name: str, slurm_id: str) -> str:
    """`ready` when endpoints/<name> names this job's SLURM id (or allocation step) first (orchc_publish_endpoint);
    `preparing` while phases/<name> says so for this job (orchc_phase: setup, images, downloads); else `starting`.
    A file left by an earlier job of the same name, or a damaged one, does not count."""
    # a job of its own, or a step ALLOCATION.JOB of a recipe run inside one allocation (allocation: one)
    ours = (slurm_id, f"{slurm_id}.{name}")
    endpoint = _first_words(run_dir, f"endpoints/{name}")
    if endpoint and endpoint[0] in ours:
        return "ready"
    phase = _first_words(run_dir, f"phases/{name}")
    return "preparing" if len(phase) > 1 and phase[0] in ours and phase[1] == "preparing" else "starting"


def _first_words(run_dir: Path, name: str) -> list[str]:
    """The words of a small file of the run folder; none when it is missing, unreadable or too large."""
    from ..core.files import read_in_run

    try:
        return read_in_run(run_dir, name, _ENDPOINT_LIMIT).split()
    except OSError:
        return []


def published_endpoint(run_dir: Path, job: RunJob) -> tuple[str, list[int]]:
    """The node and ports a service published (endpoints/<job>: `ID HOST PORT...`, orchc_publish_endpoint), its replicas'
    ports after its own."""
    from ..core.files import read_in_run

    if readiness(run_dir, job.name, job.slurm_id) != "ready":
        raise ClusterError(f"job {job.name} has published no endpoint (yet): is it a service, and running? "
                           f"(see orchc status {run_dir})")
    # `ID HOST PORT...`, then a line `replica I HOST PORT GPU` per replica of a service with one engine per GPU
    lines = read_in_run(run_dir, f"endpoints/{job.name}", _ENDPOINT_LIMIT).splitlines() or [""]
    words = lines[0].split()
    host = words[1] if len(words) > 1 else ""
    replicas = [line.split()[3] for line in lines[1:] if len(line.split()) == 5 and line.split()[0] == "replica"]
    ports = list(dict.fromkeys(int(word) for word in [*words[2:], *replicas] if word.isdigit() and 0 < int(word) < 65536))
    if not _HOST.fullmatch(host) or not ports:
        raise ClusterError(f"endpoints/{job.name} does not name a host and a port: {' '.join(words)[:80]!r}")
    return host, ports


def status_row(run_dir: Path, job: RunJob, state: JobState) -> dict[str, str | None]:
    """One job's row; None where a value is unknown or does not apply (the table shows N/A or nothing)."""
    service = readiness(run_dir, job.name, job.slurm_id) if job.role == "service" and state.state == "RUNNING" else None
    return {"job": job.name, "role": job.role, "slurm id": job.slurm_id, "state": state.state, "service": service,
            "node": state.node or None, "start": state.start or None, "elapsed": state.elapsed or None,
            "exit code": state.exit_code or None, "reason": state.reason or None}


def table_row(row: Mapping[str, str | None]) -> list[str]:
    shown = [row[key] or "" for key in HEADERS]
    if row["state"] == "PENDING" and row["start"] is None:
        shown[HEADERS.index("start")] = "N/A"     # as squeue --start says: SLURM has no estimate (yet)
    return shown


@dataclass(frozen=True)
class Progress:
    """A sweep's progress: clients ended of all clients, points done (every repeat ended) of all points."""

    clients_ended: int
    clients: int
    points_done: int
    points: int

    def line(self) -> str:
        return (f"progress: {self.clients_ended}/{self.clients} clients ended, "
                f"{self.points_done}/{self.points} points done")


def point_of_client(run_dir: Path) -> dict[str, str] | None:
    """Client job -> its sweep point, from the run's manifest.json; None for a run without a sweep."""
    from ..output.manifest import read_manifest, recorded_sweep

    manifest = read_manifest(run_dir)
    if recorded_sweep(manifest) is None:
        return None
    return {job["name"]: job["point"] for job in manifest.get("jobs", [])
            if isinstance(job, dict) and isinstance(job.get("name"), str) and isinstance(job.get("point"), str)}


def progress(run: Run, points: Mapping[str, str], current: Mapping[str, JobState]) -> Progress:
    clients = [job.name for job in run.jobs if job.role == "client"]
    ended = {name for name in clients if current[name].ended}
    by_point: dict[str, list[str]] = {}
    for name in clients:
        if name in points:
            by_point.setdefault(points[name], []).append(name)
    done = sum(all(name in ended for name in names) for names in by_point.values())
    return Progress(len(ended), len(clients), done, len(by_point))


class UnknownWatch:
    """Gives up when a job stays UNKNOWN (SLURM forgot it, or never had it) for longer than `limit` seconds."""

    def __init__(self, jobs: Sequence[RunJob], limit: float) -> None:
        self.jobs, self.limit = jobs, limit
        self.since: dict[str, float] = {}

    def check(self, current: Mapping[str, JobState]) -> None:
        now = time.monotonic()
        for job in self.jobs:
            if current[job.name].state != "UNKNOWN":
                self.since.pop(job.name, None)
                continue
            first = self.since.setdefault(job.name, now)
            if now - first >= self.limit:
                raise ClusterError(f"job {job.name} (SLURM job {job.slurm_id}) has been in state UNKNOWN for "
                                   f"{now - first:.0f} s: SLURM does not know it (any more); stopped watching")


@dataclass
class Snapshot:
    """One refresh: every job's state from one poll, the rows shown, the sweep's progress."""

    current: dict[str, JobState]
    rows: list[dict[str, str | None]]
    progress: Progress | None

    @property
    def ended(self) -> bool:
        return all(state.ended for state in self.current.values())


def snapshot(run_dir: Path, run: Run, scheduler: Scheduler, points: Mapping[str, str] | None,
             pull: bool = False) -> Snapshot:
    """`pull`: a run made over SSH gets what changed remotely first (endpoints say which service is ready)."""
    from .runs import pull_run, states

    if pull:
        pull_run(run_dir, run)
    current = states(run, scheduler)
    rows = [status_row(run_dir, job, current[job.name]) for job in run.jobs]
    return Snapshot(current, rows, progress(run, points, current) if points is not None else None)


def cmd_status(args: argparse.Namespace) -> int:
    from ..core.terminal import is_terminal, print_table, terminal_text
    from .runs import current_state, load_run, refresh_copy, scheduler_for

    run_dir, run = load_run(args.run_ref, pull=False)
    refresh_copy(run_dir, run, unreachable_is_error=True)    # (squeue would fail next, with the same cause)
    scheduler = scheduler_for(run)
    points = point_of_client(run_dir)
    now = snapshot(run_dir, run, scheduler, points)
    state = current_state(run_dir, run, now.current)
    if args.json:
        shown: dict[str, Any] = {"run": str(run_dir), "state": state, "error": run.error, "jobs": now.rows}
        if now.progress is not None:
            shown["progress"] = {key: getattr(now.progress, key)
                                 for key in ("clients_ended", "clients", "points_done", "points")}
        print(json.dumps(shown, indent=2))
        return 0
    if not args.watch:
        if not is_terminal(sys.stdout):        # a terminal shows it as the table's title
            print(terminal_text(_title(run_dir, run, state)))
        print_table(_title(run_dir, run, state), HEADERS, [table_row(row) for row in now.rows], keep=KEPT)
        if now.progress is not None:
            print(now.progress.line())
        return 0
    unknown = UnknownWatch(run.jobs, args.unknown_limit)
    if is_terminal(sys.stdout):
        now = _watch_live(_title(run_dir, run, state), run_dir, run, scheduler, points, now, unknown, args.interval)
    else:
        now = _watch_log(run_dir, run, scheduler, points, now, unknown, args.interval)
    return _ended(run_dir, run, now)


def _title(run_dir: Path, run: Run, state: str) -> str:
    """`run NAME: STATE`, with why a submit failed."""
    return f"run {run_dir.name}: {state}" + (f" ({run.error})" if run.state == "failed" and run.error else "")


def _ended(run_dir: Path, run: Run, now: Snapshot) -> int:
    """After --watch: the run's state on a line of its own; 0 when it completed, else EXIT_NOT_COMPLETED."""
    from ..core.terminal import terminal_text
    from .runs import EXIT_NOT_COMPLETED, current_state

    state = current_state(run_dir, run, now.current)
    print(terminal_text(f"run {run_dir.name}: {state}"))
    if state == "completed":
        return 0
    print(terminal_text(f"orchc: error: run {run_dir.name} ended {state} (not completed; see orchc status "
                        f"{run_dir} and orchc logs)"), file=sys.stderr)
    return EXIT_NOT_COMPLETED


def _watch_log(run_dir: Path, run: Run, scheduler: Scheduler, points: Mapping[str, str] | None,
               now: Snapshot, unknown: UnknownWatch, interval: float) -> Snapshot:
    """--watch into a file or pipe: the header once, then at each change the rows that changed, each after the
    time (UTC) it was seen, and the progress; a log grows by a line per change, not by a table per refresh."""
    from ..core.terminal import plain_lines

    shown: dict[str, list[str]] = {}
    header = True
    while True:
        rows = [table_row(row) for row in now.rows]
        # A row is printed again when something people wait on changes (state, readiness, reason), not elapsed.
        changed = [row for row in rows if _watched(shown.get(row[0])) != _watched(row)]
        if changed:
            stamp = time.strftime("%H:%M:%S", time.gmtime())
            lines = plain_lines(["time", *HEADERS], [[stamp, *row] for row in changed])
            print("\n".join(lines if header else lines[1:]))
            header = False
            shown.update((row[0], row) for row in changed)
            if now.progress is not None:
                print(now.progress.line())
            sys.stdout.flush()
        if now.ended:
            return now
        unknown.check(now.current)
        time.sleep(interval)
        now = patiently(lambda: snapshot(run_dir, run, scheduler, points, pull=True))


def _watched(row: list[str] | None) -> list[str] | None:
    """What --watch reports a change of: state, readiness, reason."""
    return None if row is None else row[3:5] + row[9:]


def _watch_live(title: str, run_dir: Path, run: Run, scheduler: Scheduler, points: Mapping[str, str] | None,
                now: Snapshot, unknown: UnknownWatch, interval: float) -> Snapshot:
    from rich.console import Group
    from rich.live import Live
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
    from rich.progress import Progress as Bar

    from ..core.terminal import rich_table

    bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    tasks = (bar.add_task("clients ended", total=now.progress.clients),
             bar.add_task("points done", total=now.progress.points)) if now.progress else ()

    def view(now: Snapshot) -> Any:
        table = rich_table(title, HEADERS, [table_row(row) for row in now.rows], KEPT)
        if not tasks or now.progress is None:
            return table
        bar.update(tasks[0], completed=now.progress.clients_ended)
        bar.update(tasks[1], completed=now.progress.points_done)
        return Group(table, bar)

    with Live(view(now), refresh_per_second=4) as live:
        while not now.ended:
            unknown.check(now.current)
            time.sleep(interval)
            now = patiently(lambda: snapshot(run_dir, run, scheduler, points, pull=True))
            live.update(view(now))
    return now


# --- orchc runs -----------------------------------------------------------------------------------

RUNS_HEADERS = ["run", "created", "recipe", "site", "where", "state", "jobs", "points", "folder"]


def cmd_runs(args: argparse.Namespace) -> int:
    from ..core.terminal import print_table
    from .runs import DEFAULT_ROOT, list_runs

    listed = list_runs(args.root or DEFAULT_ROOT)
    ended = _ended_counts(listed) if args.states else {}
    rows = [_runs_row(entry, *ended.get(entry.folder, (None, None))) for entry in listed]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print_table(f"runs under {args.root or DEFAULT_ROOT}/", RUNS_HEADERS,
                [[_runs_cell(row, key) for key in RUNS_HEADERS] for row in rows])
    return 0


def _runs_row(entry: RunListing, ended: int | None, state: str | None) -> dict[str, Any]:
    """`state`: the run's state from a poll (--states); else what run.json knows: its final state once a command
    saw it end, `submitted` before, `failed` when the submit failed."""
    run = entry.run
    known = state or (run.outcome or run.state if run else "unreadable")
    return {"run": entry.folder.name, "created": run.created if run else None, "recipe": run.recipe if run else None,
            "site": run.site if run else None, "state": known,
            "error": entry.error or (run.error if run else None), "jobs": len(run.jobs) if run else None,
            "jobs_ended": ended, "points": entry.points, "folder": str(entry.folder),
            "remote": run.remote.shown() if run and run.remote else None,
            "remote_folder": run.remote.remote_dir if run and run.remote else None,
            "submitted_from": run.submitted_from or None if run else None}


def _runs_cell(row: Mapping[str, Any], key: str) -> str:
    if key == "where":   # where the jobs run, seen from here: this machine's SLURM, a login node, or submitted elsewhere
        return f"ssh {row['remote']}" if row["remote"] else f"from {row['submitted_from']}" if row["submitted_from"] \
            else "local"
    if key == "jobs":
        if row["jobs"] is None:
            return ""
        return f"{row['jobs_ended']}/{row['jobs']} ended" if row["jobs_ended"] is not None else str(row["jobs"])
    if key == "state" and row["error"]:
        return f"{row['state']}: {row['error'][:60]}"
    return "" if row[key] is None else str(row[key])


def _ended_counts(listed: Sequence[RunListing]) -> dict[Path, tuple[int, str]]:
    """How many jobs of each run have ended, and the run's state: one poll per scheduler (and login node, for
    runs made over SSH) for the jobs of every run listed."""
    from dataclasses import replace

    from .runs import current_state, owned, scheduler_for

    by_scheduler: dict[tuple[str, Any], list[tuple[Path, Run]]] = {}
    for entry in listed:
        if entry.run is not None and entry.run.jobs:
            where = None if entry.run.remote is None else replace(entry.run.remote, remote_dir="")
            by_scheduler.setdefault((entry.run.scheduler, where), []).append((entry.folder, entry.run))
    counts: dict[Path, tuple[int, str]] = {}
    for runs in by_scheduler.values():
        found = scheduler_for(runs[0][1]).poll(*dict.fromkeys(job.slurm_id for _, run in runs for job in run.jobs))
        for folder, run in runs:
            current = {job.name: owned(run, job, found[job.slurm_id]) for job in run.jobs}
            counts[folder] = (sum(state.ended for state in current.values()), current_state(folder, run, current))
    return counts

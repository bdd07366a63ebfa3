"""`orchc logs [RUN] [JOB] [-f]`: a run's slurm-<id>.out and .err, each headed like tail's `==> FILE <==`.

RUN defaults to the latest run and JOB to every job; one argument is a run when it names one (a folder
with a run.json, or a name under runs/), else a job of the latest run. `-f` follows the files as they
grow until every job shown has ended (or Ctrl-C): files are polled from 0.1 s, doubling to 2 s while
nothing grows, the scheduler asked once every few seconds for all jobs at once. Files are read in
chunks of at most 64 KiB and written out at once, so memory stays bounded whatever a job prints.
"""

from __future__ import annotations

import argparse
import codecs
import errno
import os
import stat
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from .runs import Run, RunJob
    from .scheduler import Scheduler

CHUNK = 64 << 10
FIRST_DELAY = 0.1
LAST_DELAY = 2.0
REFRESH_EVERY = 1.0
# Chunks one file may print before the next file gets its turn (followed files take turns).
_TURN = 16


def add_logs_arguments(logs: argparse.ArgumentParser) -> None:
    logs.add_argument("run_ref", nargs="?", metavar="RUN", help="default: the latest run")
    logs.add_argument("job", nargs="?", metavar="JOB", help="default: every job of the run")
    logs.add_argument("-f", "--follow", action="store_true", help="print what the jobs write until they end")
    logs.add_argument("--check-every", type=float, default=5.0, help=argparse.SUPPRESS)
    logs.add_argument("--unknown-limit", type=float, default=120.0, help=argparse.SUPPRESS)


def chosen(first: str | None, second: str | None) -> tuple[Path, Run, list[RunJob]]:
    """The run and the job names `orchc logs FIRST SECOND` means."""
    from .runs import DEFAULT_ROOT, RUN_FILE, load_run

    if first is not None and second is None and not (Path(first) / RUN_FILE).is_file() \
            and not (DEFAULT_ROOT / first / RUN_FILE).is_file():
        first, second = None, first            # not a run: a job of the latest run
    run_dir, run = load_run(first)
    return run_dir, run, [run.job(second)] if second is not None else list(run.jobs)


class Tail:
    """One log file read from where the last read stopped; a file that shrank is read again from its start.
    With `run_dir`, `path` is a file inside that run folder, opened without following any link (runs.open_in_run)."""

    def __init__(self, path: Path, run_dir: Path | None = None) -> None:
        self.path = path
        self.run_dir = run_dir
        self.offset = 0
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def read(self) -> str | None:
        """The next chunk as text ('' when nothing new), None while the file does not exist (or is no file);
        a symbolic link is a ClusterError naming it."""
        from ..core.errors import ClusterError
        from ..core.files import LinkInRunFolder, open_in_run

        try:
            if self.run_dir is None:
                fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
            else:
                fd = open_in_run(self.run_dir, self.path.relative_to(self.run_dir).as_posix())
        except LinkInRunFolder as exc:
            raise ClusterError(str(exc)) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ClusterError(str(LinkInRunFolder(self.path))) from None
            return None
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                return None
            if info.st_size < self.offset:       # truncated or replaced: start over
                self.offset = 0
                self.decoder.reset()
            handle.seek(self.offset)
            data = handle.read(CHUNK)
        self.offset += len(data)
        return self.decoder.decode(data)


def log_files(run_dir: Path, job: RunJob) -> list[Path]:
    """A job's slurm-<id>.out/.err; inside one allocation (allocation: one), its step's slurm-<id>.<job>.out/.err."""
    step = [run_dir / f"slurm-{job.slurm_id}.{job.name}.{ext}" for ext in ("out", "err")]
    if os.path.lexists(step[0]) or os.path.lexists(step[1]):
        return step
    return [run_dir / f"slurm-{job.slurm_id}.{ext}" for ext in ("out", "err")]


def cmd_logs(args: argparse.Namespace) -> int:
    run_dir, run, jobs = chosen(args.run_ref, args.job)
    tails = [Tail(path, run_dir) for job in jobs for path in log_files(run_dir, job)]
    if not args.follow:
        for tail in tails:
            print(f"==> {tail.path} <==")
            if not _print_all(tail, sys.stdout):
                print("(not written yet)")
        return 0
    from .runs import pull_run, scheduler_for

    refresh = (lambda: pull_run(run_dir, run)) if run.remote is not None else None
    follow(tails, jobs, scheduler_for(run), sys.stdout, args.check_every, args.unknown_limit, refresh, run)
    return 0


def _print_all(tail: Tail, out: TextIO) -> bool:
    text = tail.read()
    if text is None:
        return False
    while text:
        out.write(text)
        text = tail.read()
    out.write(tail.decoder.decode(b"", final=True))
    return True


def follow(tails: Sequence[Tail], jobs: Sequence[RunJob], scheduler: Scheduler, out: TextIO, check_every: float,
           unknown_limit: float, refresh: Callable[[], None] | None = None, run: Run | None = None) -> None:
    """Print what the files gain until every job named has ended (then read them to their end once more).
    `refresh` (a run made over SSH: copy what changed remotely) runs before reading, at most once a second.
    With `run`, a job id that names a job that is not the run's counts as ended (runs.owned)."""
    from .runs import owned
    from .status import UnknownWatch

    unknown = UnknownWatch(jobs, unknown_limit)
    shown: Tail | None = None
    delay, check_at, ending, refreshed, last_pull = FIRST_DELAY, 0.0, False, -REFRESH_EVERY, False
    while True:
        grew = False
        if refresh is not None and ((ending and not last_pull) or time.monotonic() - refreshed >= REFRESH_EVERY):
            refresh()
            refreshed, last_pull = time.monotonic(), ending
        for tail in tails:
            for _ in range(_TURN):
                text = tail.read()
                if not text:
                    break
                if shown is not tail:
                    out.write(f"{'' if shown is None else chr(10)}==> {tail.path} <==\n")
                    shown = tail
                out.write(text)
                grew = True
        out.flush()
        if ending and not grew:
            return
        if not ending and time.monotonic() >= check_at:
            found = scheduler.poll(*(job.slurm_id for job in jobs))
            current = {job.name: owned(run, job, found[job.slurm_id]) if run else found[job.slurm_id] for job in jobs}
            unknown.check(current)
            ending = all(state.ended for state in current.values())
            check_at = time.monotonic() + check_every
            if ending:
                continue
        if grew:
            delay = FIRST_DELAY
        else:
            time.sleep(delay)
            delay = min(delay * 2, LAST_DELAY)

"""The SLURM backend: sbatch, squeue, sacct and scancel, found on PATH, each bounded by a timeout.

`poll(*ids)` asks squeue once for every job (`-t all` also lists jobs that ended
less than MinJobAge ago), then sacct once for the jobs squeue no longer knows;
on clusters without slurmdbd that is `sacct -c`, the job completion file.
Only the user's own jobs are answered for, with their names, in that same call: squeue --me, and sacct's
User field compared with the user's name (`sacct -c` ignores -u); `cancel` is scancel --me. A job id
that names another user's job is UNKNOWN, as one SLURM forgot.
The one squeue call also reads a pending job's reason and expected start (squeue's
`Reason` and `StartTime` fields, what `squeue --start` shows). Times are asked for in
UTC (TZ=UTC, SLURM_TIME_FORMAT=standard) and given in one format: see JobState.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..core.errors import ClusterError
from ..output.plan import Submission, sbatch_arguments
from .scheduler import UNKNOWN, JobState, Scheduler, checked_job_id, is_job_id, register_scheduler

TIMEOUT_VARIABLE = "ORCHC_SLURM_TIMEOUT"
DEFAULT_TIMEOUT = 30.0
# Inherited variables that would override what the run folder and the plan say.
_NOT_INHERITED = ("ORCHC_RUN_DIR", "ORCHC_TARGET_JOB_ID")
_EXPORT_VALUE = re.compile(r"[A-Za-z0-9_.:/+-]*")
_STATE_MAP = {
    "CONFIGURING": "PENDING", "REQUEUED": "PENDING", "RESV_DEL_HOLD": "PENDING", "SUSPENDED": "PENDING",
    "COMPLETING": "RUNNING", "STAGE_OUT": "RUNNING", "SIGNALING": "RUNNING",
    "NODE_FAIL": "FAILED", "OUT_OF_MEMORY": "FAILED", "BOOT_FAIL": "FAILED", "DEADLINE": "TIMEOUT",
    "PREEMPTED": "CANCELLED", "REVOKED": "CANCELLED",
}
# New fields go last: a reader of the first five keeps working. The job's name is last of all: it may hold a |.
# JobArrayID: a job's id (12345), or an array task's as ARRAY_TASK (12345_7), which is how run.json records it
_SQUEUE_FORMAT = "JobArrayID:|,State:|,NodeList:|,TimeUsed:|,exit_code:|,Reason:|,StartTime:|,Name:|"
_SACCT_DBD_FIELDS = ("JobID", "State", "ExitCode", "NodeList", "Elapsed", "Start", "User", "JobName")
_SACCT_FILE_FIELDS = ("JobID", "State", "ExitCode", "NodeList", "Start", "End", "User", "JobName")
_SACCT_DBD = ("sacct", "-X", "-n", "-P", "-o", ",".join(_SACCT_DBD_FIELDS))
_SACCT_FILE = ("sacct", "-c", "-n", "-P", "-o", ",".join(_SACCT_FILE_FIELDS))
# squeue and sacct print times in the local zone, in a format SLURM_TIME_FORMAT may change: pin both.
_TIME_ENV = {"TZ": "UTC", "SLURM_TIME_FORMAT": "standard"}
_DURATION = re.compile(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)(?:\.\d+)?")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")


def normalize_state(raw: str) -> str:
    word = raw.split()[0].rstrip("+") if raw.strip() else "UNKNOWN"
    return _STATE_MAP.get(word, word)


def command_timeout() -> float:
    text = os.environ.get(TIMEOUT_VARIABLE, "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        raise ClusterError(f"{TIMEOUT_VARIABLE}={text!r} is not a number of seconds") from None
    if not 0 < value <= 86400:
        raise ClusterError(f"{TIMEOUT_VARIABLE}={text!r} must be between 0 and 86400 seconds")
    return value


def require(program: str) -> None:
    if shutil.which(program) is None:
        raise ClusterError(f"{program} not found on PATH: is SLURM installed here? "
                           "(for the test cluster: bash tests/cluster/start.sh)")


@dataclass(frozen=True)
class Answer:
    code: int
    out: str
    err: str


def run_command(command: Sequence[str], timeout: float, cwd: Path | None = None,
                env: Mapping[str, str] | None = None) -> Answer:
    """Run a SLURM command; a missing program, an OS error or a timeout is a ClusterError naming it.

    The command runs in its own session: a Ctrl-C meant for orchc does not kill an sbatch
    half-way (orchc decides what to roll back), and on timeout its whole process group is killed.
    """
    require(command[0])
    try:
        process = subprocess.Popen(list(command), cwd=cwd, env=None if env is None else dict(env), text=True,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True, errors="replace")
    except OSError as exc:
        raise ClusterError(f"cannot run {command[0]}: {exc.strerror or exc}") from None
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(process)
        raise ClusterError(f"{command[0]} did not answer within {timeout:g} s ({_shown(command)}); "
                           f"is slurmctld reachable? ({TIMEOUT_VARIABLE} sets the limit)") from None
    except BaseException:
        kill_group(process)
        raise
    return Answer(process.returncode, out, err)


class Runner(Protocol):
    """How SLURM's commands run: here (`local_runner`), or on a login node over SSH (remote.runner_for).
    `env` holds only what orchc adds to the environment the command would otherwise get;
    `idempotent`: the command may safely run twice (a question; sbatch is not)."""

    def __call__(self, command: Sequence[str], timeout: float, cwd: Path | None = None,
                 env: Mapping[str, str] | None = None, idempotent: bool = True) -> Answer: ...


def local_runner(command: Sequence[str], timeout: float, cwd: Path | None = None,
                 env: Mapping[str, str] | None = None, idempotent: bool = True) -> Answer:
    """Run a SLURM command here, in orchc's environment (without what the run folder and plan set) plus `env`."""
    inherited = {key: value for key, value in os.environ.items() if key not in _NOT_INHERITED}
    return run_command(command, timeout, cwd, {**inherited, **(env or {})})


def kill_group(process: subprocess.Popen[str]) -> None:
    """Kill a process started in a session of its own, with its group, and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        process.communicate(timeout=5)
    except (subprocess.TimeoutExpired, OSError, ValueError):
        pass


def _shown(command: Sequence[str]) -> str:
    text = shlex.join(command)
    return text if len(text) <= 120 else text[:117] + "..."


@register_scheduler("slurm")
class SlurmScheduler(Scheduler):
    name = "slurm"
    # Which sacct works is a property of the cluster: learnt once per process.
    _completion_file_only: bool | None = None

    def __init__(self, timeout: float | None = None, runner: Runner | None = None) -> None:
        self.timeout = command_timeout() if timeout is None else timeout
        self.runner: Runner = local_runner if runner is None else runner
        self.remote = runner is not None
        self._user: str | None = None
        if self.remote:             # another cluster: learnt again, for this scheduler only
            self._completion_file_only = None

    def ready(self) -> None:
        if not self.remote:     # a remote login node is checked when its folder is prepared (remote.prepare)
            require("sbatch")

    def submit(self, job: Submission) -> str:
        for key, value in job.env:
            if not _EXPORT_VALUE.fullmatch(value):
                raise ClusterError(f"cannot pass {key}={value!r} through sbatch --export")
        answer = self.runner(sbatch_arguments(job.script.name, job.after, job.env, job.after_end), self.timeout,
                             job.cwd, idempotent=False)
        if answer.code != 0:
            raise ClusterError(f"sbatch {job.script.name} failed: {(answer.err or answer.out).strip()}")
        return checked_job_id(answer.out.strip().split(";")[0], f"sbatch {job.script.name}")

    def cancel(self, *job_ids: str) -> None:
        ids = _checked(job_ids)
        if ids:
            answer = self.runner(["scancel", "--me", *ids], self.timeout)
            if answer.code != 0:
                raise ClusterError(f"scancel {' '.join(ids)} failed: {answer.err.strip()}")

    def poll(self, *job_ids: str) -> dict[str, JobState]:
        ids = _checked(job_ids)
        arrays = sorted({job_id.partition("_")[0] for job_id in ids if "_" in job_id}.difference(ids))
        found = self._from_squeue([*ids, *arrays]) if ids else {}
        for job_id in ids:
            # tasks that never started (pending, or cancelled while pending) may be left only in the array's own
            # record, which squeue names by the bare array id, and answers for only when asked for that id
            meta = found.get(job_id.partition("_")[0]) if "_" in job_id and job_id not in found else None
            if meta is not None and not meta.node:
                found[job_id] = meta
        missing = [job_id for job_id in ids if job_id not in found]
        if missing:
            found.update(self._from_sacct(missing))
        return {job_id: found.get(job_id, UNKNOWN) for job_id in job_ids}

    def _from_squeue(self, ids: list[str]) -> dict[str, JobState]:
        # -r: one row per array task, also for the tasks still pending in the array's own record
        answer = self.runner(["squeue", "--me", "-h", "-r", "-t", "all", "-j", ",".join(ids), "-O", _SQUEUE_FORMAT],
                             self.timeout, env=_TIME_ENV)
        if answer.code != 0:
            if "Invalid job id" in answer.err:   # squeue's answer for one job it has forgotten
                return {}
            raise ClusterError(f"squeue failed: {answer.err.strip()}")
        return dict(parse_squeue(answer.out))

    def _from_sacct(self, ids: list[str]) -> dict[str, JobState]:
        cls: Any = self if self.remote else type(self)
        user = self.user()
        if cls._completion_file_only is not True:
            answer = self.runner([*_SACCT_DBD, "-j", ",".join(ids)], self.timeout, env=_TIME_ENV)
            if answer.code == 0:
                cls._completion_file_only = False
                return dict(parse_sacct(answer.out, _SACCT_DBD_FIELDS, user))
            if "accounting storage is disabled" not in answer.err:
                return {}
            cls._completion_file_only = True
        answer = self.runner([*_SACCT_FILE, "-j", ",".join(ids)], self.timeout, env=_TIME_ENV)
        return dict(parse_sacct(answer.out, _SACCT_FILE_FIELDS, user)) if answer.code == 0 else {}

    def user(self) -> str:
        """The name of the user SLURM's commands run as (here, or on the login node: asked once)."""
        if self._user is None:
            if not self.remote:
                self._user = pwd.getpwuid(os.geteuid()).pw_name
            else:
                answer = self.runner(["id", "-un"], self.timeout)
                self._user = answer.out.strip()
                if answer.code != 0 or not self._user:
                    raise ClusterError(f"cannot tell which user runs SLURM's commands (id -un: {answer.err.strip()})")
        return self._user


def _checked(job_ids: Sequence[str]) -> list[str]:
    bad = [job_id for job_id in job_ids if not is_job_id(job_id)]
    if bad:
        raise ClusterError(f"refusing to pass {bad[0][:40]!r} to SLURM: a job id is digits only (12345, or an array task: 12345_7)")
    return list(dict.fromkeys(job_ids))


def parse_squeue(text: str) -> list[tuple[str, JobState]]:
    """Rows of `squeue -r -O JobArrayID:|,State:|,NodeList:|,TimeUsed:|,exit_code:|,Reason:|,StartTime:|,Name:|`."""
    rows = []
    for line in text.splitlines():
        fields = [field.strip() for field in line.split("|", 7)]
        if len(fields) >= 4 and is_job_id(fields[0]):
            exit_code = _exit_code(fields[4]) if len(fields) > 4 else ""
            state = normalize_state(fields[1])
            reason = fields[5] if len(fields) > 5 and state == "PENDING" and fields[5] != "None" else ""
            # A job that never ran has a StartTime too (when it was cancelled): only a pending
            # job's estimate or a job that got a node has a start worth showing.
            start = utc_time(fields[6]) if len(fields) > 6 and (state == "PENDING" or fields[2]) else ""
            name = fields[7].removesuffix("|") if len(fields) > 7 else ""
            rows.append((fields[0], JobState(state, fields[2], clock(fields[3]), exit_code, reason, start, name)))
    return rows


def _exit_code(raw: str) -> str:
    """squeue's raw wait status (768) as SLURM's `exit:signal` (3:0)."""
    return f"{int(raw) >> 8}:{int(raw) & 0x7F}" if raw.isdigit() else ""


def parse_sacct(text: str, fields: Sequence[str] = _SACCT_DBD_FIELDS, user: str | None = None) -> list[tuple[str, JobState]]:
    """Rows of `sacct -n -P -o FIELDS` (JobID, State, ExitCode and NodeList, then Elapsed or Start and End, then
    User and JobName); with `user`, only that user's jobs (User is `name` from slurmdbd, `name(uid)` from sacct -c)."""
    rows = []
    for line in text.splitlines():
        row = dict(zip(fields, line.split("|", len(fields) - 1), strict=False))
        if user is not None and row.get("User", "").split("(")[0] != user:
            continue
        if len(row) >= 4 and is_job_id(row["JobID"]):
            start, end = row.get("Start", ""), row.get("End", "")
            elapsed = clock(row["Elapsed"]) if "Elapsed" in row else _elapsed(start, end)
            rows.append((row["JobID"], JobState(normalize_state(row["State"]), row["NodeList"], elapsed,
                                                row["ExitCode"], start=utc_time(start) if row["NodeList"] else "",
                                                name=row.get("JobName", ""))))
    return rows


def clock(duration: str) -> str:
    """One of SLURM's durations (`M:SS`, `H:MM:SS`, `D-HH:MM:SS`) as H:MM:SS; '' for anything else."""
    found = _DURATION.fullmatch(duration.strip())
    if found is None:
        return ""
    days, hours, minutes, seconds = (int(part or 0) for part in found.groups())
    return hms(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def hms(seconds: int) -> str:
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def utc_time(text: str) -> str:
    """A SLURM timestamp (printed in UTC, see _TIME_ENV) as ISO 8601 UTC; '' for N/A, Unknown, None."""
    text = text.strip()
    return f"{text}Z" if _TIMESTAMP.fullmatch(text) else ""


def _elapsed(start: str, end: str) -> str:
    """H:MM:SS between two of SLURM's ISO timestamps ('' when either is unknown)."""
    from datetime import datetime

    try:
        seconds = int((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds())
    except ValueError:
        return ""
    return hms(seconds) if seconds >= 0 else ""

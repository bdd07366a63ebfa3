"""The SLURM commands orchc drives (sbatch, squeue, scontrol, sacct, scancel), found on PATH.

A job's state comes from squeue while the queue knows it, then from
`scontrol show job` (until MinJobAge), then from `sacct` (or `sacct -c`, the
job completion file, on clusters without slurmdbd).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ClusterError

ENDED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"})
_STATE_MAP = {
    "CONFIGURING": "PENDING", "REQUEUED": "PENDING", "RESV_DEL_HOLD": "PENDING", "SUSPENDED": "PENDING",
    "COMPLETING": "RUNNING", "STAGE_OUT": "RUNNING", "SIGNALING": "RUNNING",
    "NODE_FAIL": "FAILED", "OUT_OF_MEMORY": "FAILED", "BOOT_FAIL": "FAILED", "DEADLINE": "TIMEOUT",
    "PREEMPTED": "CANCELLED", "REVOKED": "CANCELLED",
}


@dataclass(frozen=True)
class JobState:
    state: str
    node: str = ""
    elapsed: str = ""
    exit_code: str = ""

    @property
    def ended(self) -> bool:
        return self.state in ENDED


def normalize_state(raw: str) -> str:
    word = raw.split()[0].rstrip("+") if raw.strip() else "UNKNOWN"
    return _STATE_MAP.get(word, word)


def require(program: str) -> None:
    if shutil.which(program) is None:
        raise ClusterError(f"{program} not found on PATH: is SLURM installed here? "
                           "(for the test cluster: bash tests/cluster/start.sh)")


def _run(command: Sequence[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    require(command[0])
    return subprocess.run(list(command), cwd=cwd, capture_output=True, text=True, timeout=60)


def sbatch(script: Path, options: Sequence[str], cwd: Path) -> str:
    """Submit `script` from `cwd`; returns the SLURM job id."""
    done = _run(["sbatch", "--parsable", *options, script.name], cwd=cwd)
    if done.returncode != 0:
        raise ClusterError(f"sbatch {script.name} failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout.strip().split(";")[0]


def scancel(job_ids: Sequence[str]) -> None:
    if job_ids:
        done = _run(["scancel", *job_ids])
        if done.returncode != 0:
            raise ClusterError(f"scancel failed: {done.stderr.strip()}")


def job_state(job_id: str) -> JobState:
    return _from_squeue(job_id) or _from_scontrol(job_id) or _from_sacct(job_id) or JobState("UNKNOWN")


def _from_squeue(job_id: str) -> JobState | None:
    done = _run(["squeue", "-h", "-j", job_id, "-o", "%T|%N|%M"])
    line = done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else ""
    if not line:
        return None
    state, node, elapsed = (line.split("|") + ["", ""])[:3]
    return JobState(normalize_state(state), node, elapsed)


def _from_scontrol(job_id: str) -> JobState | None:
    done = _run(["scontrol", "-o", "show", "job", job_id])
    if done.returncode != 0 or "JobState=" not in done.stdout:
        return None
    fields = dict(item.split("=", 1) for item in done.stdout.split() if "=" in item)
    node = fields.get("NodeList", "")
    return JobState(normalize_state(fields.get("JobState", "")), "" if node == "(null)" else node,
                    fields.get("RunTime", ""), fields.get("ExitCode", ""))


_SACCT_QUERIES = (
    ["sacct", "-X", "-o", "JobID,State,ExitCode,NodeList,Elapsed"],  # with slurmdbd
    ["sacct", "-c", "-o", "JobID,State,ExitCode,NodeList,Start,End"],  # without: the job completion file
)


def _from_sacct(job_id: str) -> JobState | None:
    for query in _SACCT_QUERIES:
        done = _run([*query, "-j", job_id, "-n", "-P"])
        rows = [line.split("|") for line in done.stdout.splitlines()] if done.returncode == 0 else []
        for row in rows:
            if row[0] == job_id and len(row) >= 4:
                elapsed = row[4] if len(row) == 5 else _elapsed(*row[4:6]) if len(row) >= 6 else ""
                return JobState(normalize_state(row[1]), row[3], elapsed, row[2])
    return None


def _elapsed(start: str, end: str) -> str:
    """`HH:MM:SS` between two of SLURM's ISO timestamps ('' when either is unknown)."""
    from datetime import datetime

    try:
        seconds = int((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds())
    except ValueError:
        return ""
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"

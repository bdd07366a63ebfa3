"""The scheduler interface the run side talks to, and the backends registered by name.

Shaped after ReFrame's `reframe/core/schedulers`: an abstract scheduler with
submit / poll / cancel, backends registered with `@register_scheduler(name)`,
and `poll(*job_ids)` answering for many jobs at once. The real backend is
`slurm` (slurm.py, loaded by backends.py); the tests register an in-process fake (tests/fakes.py).
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..core.errors import ClusterError
from ..output.plan import Submission

# FOREIGN: the id names a job of yours that is not the run's (runs.owned); nothing of the run to wait for.
ENDED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "FOREIGN"})
_JOB_ID = re.compile(r"[0-9]{1,20}(?:_[0-9]{1,10})?")   # 12345, or 12345_7: task 7 of array 12345
_JOB_NAME_DIRECTIVE = re.compile(r"^#SBATCH --job-name=(\S+)$", re.MULTILINE)


@dataclass(frozen=True)
class JobState:
    """One job as the scheduler sees it. Times have one format whatever the state or the source:
    `elapsed` as H:MM:SS (hours not wrapped into days), `start` as ISO 8601 UTC (2026-11-26T17:27:26Z)."""

    state: str
    node: str = ""
    elapsed: str = ""
    exit_code: str = ""
    reason: str = ""
    """why a PENDING job waits (SLURM's reason: Resources, Priority, Dependency, ...); '' otherwise"""
    start: str = ""
    """a PENDING job's estimated start, a started job's actual start; '' when unknown"""
    name: str = ""
    """the job's name, from the same answer as its state (runs.owned checks it is the run's)"""

    @property
    def ended(self) -> bool:
        return self.state in ENDED


UNKNOWN = JobState("UNKNOWN")


def is_job_id(text: object) -> bool:
    return isinstance(text, str) and _JOB_ID.fullmatch(text) is not None


def directive_job_name(script: str) -> str:
    """The job name a script's `#SBATCH --job-name=` gives SLURM ('' when it has none)."""
    found = _JOB_NAME_DIRECTIVE.search(script)
    return found.group(1) if found else ""


def checked_job_id(text: str, source: str) -> str:
    """`text` if it is the id sbatch gives a job or an array (digits only), else a ClusterError naming `source`."""
    if not text.isdigit() or not is_job_id(text):
        raise ClusterError(f"{source} answered {text[:80]!r}, which is not a job id")
    return text


class Scheduler(abc.ABC):
    """Submits, follows and cancels batch jobs. Every method is bounded in time."""

    name = ""

    def ready(self) -> None:  # noqa: B027 (a hook: most backends are always ready)
        """Raise a ClusterError when this scheduler cannot be used here (checked before a run folder is made)."""

    @abc.abstractmethod
    def submit(self, job: Submission) -> str:
        """Submit one job; returns its id (digits)."""

    @abc.abstractmethod
    def poll(self, *job_ids: str) -> dict[str, JobState]:
        """The state and name of each job of this user's (UNKNOWN when the scheduler no longer knows it, or it is
        another user's), in as few queries as it can."""

    @abc.abstractmethod
    def cancel(self, *job_ids: str) -> None:
        """Cancel these jobs if they are this user's (already ended jobs are no error)."""


BACKENDS: dict[str, Callable[[], Scheduler]] = {}


def register_scheduler(name: str) -> Callable[[Callable[[], Scheduler]], Callable[[], Scheduler]]:
    def register(factory: Callable[[], Scheduler]) -> Callable[[], Scheduler]:
        BACKENDS[name] = factory
        return factory
    return register

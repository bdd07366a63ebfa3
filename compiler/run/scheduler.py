"""The scheduler interface the run side talks to, and the backends registered by name.

Shaped after ReFrame's `reframe/core/schedulers`: an abstract scheduler with
submit / poll / cancel, backends registered with `@register_scheduler(name)`,
and `poll(*job_ids)` answering for many jobs at once. The real backend is
`slurm` (slurm.py, loaded by backends.py); `fake` is an in-process state machine for tests.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import ClusterError
from ..output.plan import Submission

# FOREIGN: the id names a job of yours that is not the run's (runs.owned); nothing of the run to wait for.
ENDED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "FOREIGN"})
_JOB_ID = re.compile(r"[0-9]{1,20}")
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
    """`text` if it is a job id (digits only), else a ClusterError naming `source`."""
    if not is_job_id(text):
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


# --- the fake: a deterministic state machine, driven by tests ---------------------------------------

@dataclass
class FakeJob:
    job: Submission
    name: str = ""
    owner: str = ""
    """'' for this user's jobs; another user's are invisible to poll and cancel, as to squeue --me and scancel --me"""
    state: str = "PENDING"
    node: str = ""
    elapsed: str = ""
    reason: str = ""
    start: str = ""


@dataclass
class FakeScheduler(Scheduler):
    """In-process scheduler: ids count up from `first_id`, states change only when told.

    A job is named by its script's `#SBATCH --job-name=`, as sbatch names it; `plant` adds a job the run did not
    submit. `fail_submit[script name]` makes that submit fail with the message; `hang` names methods
    ("submit", "poll", "cancel") that time out; `fail_cancel` makes cancel fail. `calls` logs
    every method call, so tests can count queries.
    """

    name = "fake"
    first_id: int = 1000
    jobs: dict[str, FakeJob] = field(default_factory=dict)
    calls: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    fail_submit: dict[str, str] = field(default_factory=dict)
    hang: set[str] = field(default_factory=set)
    fail_cancel: str = ""
    on_submit: Callable[[str], None] | None = None

    def _enter(self, method: str, *args: str) -> None:
        self.calls.append((method, args))
        if method in self.hang:
            raise ClusterError(f"fake {method} did not answer within 0 s")

    def submit(self, job: Submission) -> str:
        self._enter("submit", job.script.name)
        if job.script.name in self.fail_submit:
            raise ClusterError(f"submit {job.script.name} failed: {self.fail_submit[job.script.name]}")
        job_id = str(self.first_id + len(self.jobs))
        try:
            name = directive_job_name(job.script.read_text(encoding="utf-8"))
        except OSError:
            name = ""
        self.jobs[job_id] = FakeJob(job, name or job.script.stem)
        if self.on_submit:
            self.on_submit(job_id)
        return job_id

    def poll(self, *job_ids: str) -> dict[str, JobState]:
        self._enter("poll", *job_ids)
        return {job_id: self._state(self.jobs[job_id]) if self._mine(job_id) else UNKNOWN for job_id in job_ids}

    def _mine(self, job_id: str) -> bool:
        return job_id in self.jobs and not self.jobs[job_id].owner

    @staticmethod
    def _state(job: FakeJob) -> JobState:
        return JobState(job.state, job.node, job.elapsed, reason=job.reason, start=job.start, name=job.name)

    def cancel(self, *job_ids: str) -> None:
        self._enter("cancel", *job_ids)
        if self.fail_cancel:
            raise ClusterError(f"cancel failed: {self.fail_cancel}")
        for job_id in job_ids:
            if self._mine(job_id) and not JobState(self.jobs[job_id].state).ended:
                self.jobs[job_id].state = "CANCELLED"

    # driving the state machine
    def plant(self, name: str, owner: str = "") -> str:
        """A job submitted by something else than the run (`owner`: another user), named `name`; its id."""
        job_id = str(self.first_id + len(self.jobs))
        self.jobs[job_id] = FakeJob(Submission(Path(f"{name}.sbatch"), Path(".")), name, owner)
        return job_id

    def advance(self, job_id: str, state: str, node: str = "node1", *, reason: str = "", start: str = "",
                elapsed: str = "") -> None:
        """Move a job to `state`; `reason` and `start` as SLURM would say them (a PENDING job has no node)."""
        job = self.jobs[job_id]
        job.state, job.node, job.reason, job.start, job.elapsed = state, node, reason, start, elapsed

    def forget(self, job_id: str) -> None:
        del self.jobs[job_id]

    def environment(self, job_id: str) -> Mapping[str, str]:
        return dict(self.jobs[job_id].job.env)

    def dependencies(self, job_id: str) -> Sequence[str]:
        return self.jobs[job_id].job.after

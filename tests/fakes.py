"""Test stand-ins for the run side: FakeScheduler, an in-process scheduler that tests drive.

Not part of the package: a test registers it under the name "fake" (test_scheduler.py's `fake` fixture:
register_scheduler("fake") and ORCHC_SCHEDULER=fake), in the process that runs orchc.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from compiler.core.errors import ClusterError
from compiler.output.plan import Submission
from compiler.run.scheduler import UNKNOWN, JobState, Scheduler, directive_job_name


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

"""A sweep with more jobs than the site lets a user run at once -> SLURM job arrays of its clients (README, Sites:
"Sweeps within a site's job limits").

Clients of one sweep job (`bench-p01-r1`, `bench-p01-r2`, ...) that share their type, target and resources (so their
`#SBATCH` lines are the same) and either run one after another (each waits for the one before) or all at once, form
one array. Each point's script stays the same bytes as for a single job; the array's script runs, as task I, the
script named on line I+1 of its tasks file, a list of job names orchc writes (read as a name, never run as code).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from ..recipe.resolve import Recipe, ResolvedJob
from .allocation import allocation_node
from .directives import directives
from .render import _resources_of

ARRAY_SCRIPT = "{}.array.sbatch"
ARRAY_TASKS = "{}.array.tasks"
_LOG = ("--output=slurm-%j.out", "--error=slurm-%j.err")
DEFAULT_MAX_ARRAY_SIZE = 1001
"""SLURM's MaxArraySize unless slurm.conf sets it (slurm.conf(5)): task indices 0-1000; a site that allows more says so"""


@dataclass(frozen=True)
class ArrayGroup:
    """One array: its members in submission order, how many of its tasks run at once, and why."""

    name: str
    jobs: tuple[ResolvedJob, ...]
    throttle: int
    chained: bool
    """each member waits for the one before it (the default ladder of clients against one service)"""

    @property
    def script(self) -> str:
        return ARRAY_SCRIPT.format(self.name)

    @property
    def tasks(self) -> str:
        return ARRAY_TASKS.format(self.name)


def array_groups(recipe: Recipe) -> list[ArrayGroup]:
    """The arrays a recipe is submitted as: none unless it has more SLURM jobs than the site's limits.max_running
    (and is not one allocation). Linear in the recipe's jobs."""
    limit = recipe.site.limits.get("max_running")
    if limit is None or len(recipe.jobs) <= limit or allocation_node(recipe) is not None:
        return []
    size = recipe.site.limits.get("max_array_size", DEFAULT_MAX_ARRAY_SIZE)
    candidates: dict[tuple[Any, ...], list[ResolvedJob]] = {}
    for job in recipe.jobs:
        key = _group_key(job)
        if key is not None:
            candidates.setdefault(key, []).append(job)
    chunks: list[tuple[str, list[ResolvedJob], bool]] = []
    for (base, *_), members in candidates.items():
        for index, start in enumerate(range(0, len(members), size)):
            chunk = members[start:start + size]
            chained = _chained(chunk, recipe.waits_for)
            if len(chunk) > 1 and chained is not None:
                chunks.append((base if start == 0 else f"{base}-{index + 1}", chunk, chained))
    outside = len(recipe.jobs) - sum(len(chunk) for _, chunk, _ in chunks)
    return [ArrayGroup(name, tuple(chunk), 1 if chained else max(1, min(len(chunk), limit - outside)), chained)
            for name, chunk, chained in chunks]


def _group_key(job: ResolvedJob) -> tuple[Any, ...] | None:
    """What the members of one array share (None: the job is never in one): a sweep client's name without its
    point and repeat, type, target and resources."""
    suffix = f"-{job.point}-r{job.repeat}"
    if job.role != "client" or not job.point or not job.name.endswith(suffix):
        return None
    resources = tuple(sorted((key, repr(value)) for key, value in job.resources.items()))
    return job.name[: -len(suffix)], job.typedef.name, job.target, resources


def _chained(members: Sequence[ResolvedJob], waits: Mapping[str, tuple[str, ...]]) -> bool | None:
    """True when each member waits for the one before it (the first for jobs outside), False when none waits for
    anything, None for any other order (not an array: `%K` could not keep it)."""
    names = {job.name for job in members}
    if all(not waits.get(job.name) for job in members):
        return False
    if names.intersection(waits.get(members[0].name, ())):
        return None
    if all(waits.get(job.name) == (before.name,) for before, job in pairwise(members)):
        return True
    return None


def array_name(group: ArrayGroup) -> str:
    """The array's job id part: 8 hex digits hashed from its members' ids."""
    return hashlib.sha256(" ".join(job.job_id for job in group.jobs).encode()).hexdigest()[:8]


def array_script(group: ArrayGroup, recipe: Recipe) -> str:
    """The array's script: the `#SBATCH` lines its members share, `--array=0-N%K`, then the run of task I's script."""
    first = group.jobs[0]
    lines = [line for line in directives(recipe.name, array_name(group), _resources_of(first),
                                         recipe.site.reservation_for(first.resources)) if line not in _LOG]
    lines[1:1] = [f"--array=0-{len(group.jobs) - 1}%{group.throttle}", "--output=slurm-%A_%a.out",
                  "--error=slurm-%A_%a.err"]
    how = "one after another" if group.chained else f"at most {group.throttle} at once"
    return "\n".join([
        f"#!{recipe.site.shell}",
        *(f"#SBATCH {line}" for line in lines),
        f"# Generated by orchc from recipe {recipe.name}: the {len(group.jobs)} jobs of {group.tasks} as one SLURM job array,",
        f"# {how}. Task I runs the script of the job on line I+1 of {group.tasks} (a name, never code).",
        "set -o errexit -o pipefail",
        'ORCHC_RUN_DIR="${ORCHC_RUN_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}"',
        "export ORCHC_RUN_DIR",
        'case ${SLURM_ARRAY_TASK_ID:-} in',
        "    ''|*[!0-9]*) echo \"orchc: error: $0 runs as a SLURM array task (SLURM_ARRAY_TASK_ID is not set)\" >&2; exit 1 ;;",
        "esac",
        f'job=$(sed -n "$((10#$SLURM_ARRAY_TASK_ID + 1))p" "$ORCHC_RUN_DIR/{group.tasks}")',
        'case $job in',
        "    ''|[!A-Za-z0-9]*|*[!A-Za-z0-9_.-]*)",
        f'        echo "orchc: error: line $((10#$SLURM_ARRAY_TASK_ID + 1)) of {group.tasks} names no job" >&2; exit 1 ;;',
        "esac",
        'echo "orchc: array task $SLURM_ARRAY_TASK_ID of job $SLURM_ARRAY_JOB_ID runs job $job"',
        f'exec {recipe.site.shell} "$ORCHC_RUN_DIR/$job.sbatch"',
    ]) + "\n"


def tasks_text(group: ArrayGroup) -> str:
    return "".join(f"{job.name}\n" for job in group.jobs)


def manifest_entry(group: ArrayGroup) -> dict[str, Any]:
    return {"name": group.name, "script": group.script, "tasks": group.tasks, "jobs": [job.name for job in group.jobs],
            "throttle": group.throttle, "chained": group.chained}


def arrays_line(recipe: Recipe, groups: Sequence[ArrayGroup]) -> str:
    """What `submit`/`validate` say about the arrays, and why."""
    limit = recipe.site.limits.get("max_running")
    members = sum(len(group.jobs) for group in groups)
    shown = ", ".join(f"{group.name} ({len(group.jobs)} tasks, %{group.throttle})" for group in groups[:3])
    return (f"{len(recipe.jobs)} SLURM jobs, more than the {limit} {recipe.site.name} runs at once (limits.max_running): "
            f"{members} clients submitted as {len(groups)} job array(s): {shown}{' ...' if len(groups) > 3 else ''}, "
            f"{len(recipe.jobs) - members} single job(s)")

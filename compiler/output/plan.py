"""The submission plan: which scripts to submit, in what order, each after which jobs.

Built from the `manifest.json` the compile side writes (manifest.py reads it), and used by both the
generated `submit.sh` and `orchc submit`, so the two cannot disagree: both
render each step through `sbatch_arguments` (here, so that compiling needs no SLURM code).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import ClusterError

TARGET_VARIABLE = "ORCHC_TARGET_JOB_ID"
ALLOCATION_SCRIPT = "allocation.sbatch"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_ROLES = ("service", "client")


@dataclass(frozen=True)
class Submission:
    """One job to submit: its script (run from `cwd`), the jobs it starts after, extra environment."""

    script: Path
    cwd: Path
    after: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    after_end: tuple[str, ...] = ()
    """jobs that must have ended (in any state) before this one starts"""


@dataclass(frozen=True)
class Step:
    name: str
    role: str
    type: str
    script: str
    target: str | None
    after: tuple[str, ...]                 # names of earlier steps that must have started
    exports: tuple[tuple[str, str], ...]   # variable -> name of the earlier step whose job id it carries
    after_end: tuple[str, ...] = ()        # names of earlier steps that must have ended

    def submission(self, ids: dict[str, str], folder: Path) -> Submission:
        return Submission(folder / self.script, folder, tuple(ids[name] for name in self.after),
                          tuple((variable, ids[name]) for variable, name in self.exports),
                          tuple(ids[name] for name in self.after_end))


@dataclass(frozen=True)
class Array:
    """Steps submitted as one SLURM job array (`--array=0-N%K` is in its script): task I runs step `jobs[I]`."""

    name: str
    script: str
    jobs: tuple[str, ...]

    def submission(self, steps: dict[str, Step], ids: dict[str, str], folder: Path) -> Submission:
        """The array's sbatch: after what its members wait for outside it (all submitted before its first member)."""
        members = set(self.jobs)
        after = dict.fromkeys(name for job in self.jobs for name in steps[job].after)
        after_end = dict.fromkeys(name for job in self.jobs for name in steps[job].after_end if name not in members)
        exports = dict.fromkeys(pair for job in self.jobs for pair in steps[job].exports)
        return Submission(folder / self.script, folder, tuple(ids[name] for name in after),
                          tuple((variable, ids[name]) for variable, name in exports),
                          tuple(ids[name] for name in after_end))


@dataclass(frozen=True)
class Plan:
    recipe: str
    steps: tuple[Step, ...]
    allocation: str | None = None
    """allocation: one: the one script submitted (allocation.sbatch), which runs every step inside it"""
    arrays: tuple[Array, ...] = ()

    def array_of(self) -> dict[str, tuple[Array, int]]:
        """Step name -> its array and its task index, for the steps submitted as array tasks."""
        return {name: (array, index) for array in self.arrays for index, name in enumerate(array.jobs)}


def plan_from_manifest(manifest: Any, source: str) -> Plan:
    """The plan a manifest describes; anything unexpected is a ClusterError naming `source`."""
    def bad(why: str) -> ClusterError:
        return ClusterError(f"{source} is not a manifest orchc wrote: {why}")

    if not isinstance(manifest, dict) or not isinstance(manifest.get("jobs"), list):
        raise bad("it does not list jobs")
    recipe = manifest.get("recipe")
    if not isinstance(recipe, str) or not _NAME.fullmatch(recipe):
        raise bad("no valid recipe name")
    steps: list[Step] = []
    earlier: set[str] = set()
    for index, job in enumerate(manifest["jobs"]):
        if not isinstance(job, dict):
            raise bad(f"job {index + 1} is not a mapping")
        name, role, script, target = job.get("name"), job.get("role"), job.get("script"), job.get("target")
        depends = job.get("depends_on", [])
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name in earlier:
            raise bad(f"job {index + 1} has no valid, unique name")
        if role not in _ROLES or script != f"{name}.sbatch":
            raise bad(f"job {name} has a wrong role or script")
        ended = job.get("after_end", [])
        for listed in (depends, ended):
            if not isinstance(listed, list) or not all(isinstance(d, str) and d in earlier for d in listed):
                raise bad(f"job {name} depends on a job that is not submitted before it")
        if target is not None and target not in earlier:
            raise bad(f"job {name} targets a job that is not submitted before it")
        steps.append(Step(name, role, str(job.get("type", "")), script, target, tuple(depends),
                          ((TARGET_VARIABLE, target),) if target else (), tuple(ended)))
        earlier.add(name)
    allocation = manifest.get("allocation")
    if allocation is not None and (not isinstance(allocation, dict) or allocation.get("mode") != "one"
                                   or allocation.get("script") != ALLOCATION_SCRIPT):
        raise bad(f"its allocation is not {{mode: one, script: {ALLOCATION_SCRIPT}}}")
    return Plan(recipe, tuple(steps), ALLOCATION_SCRIPT if allocation is not None else None,
                _arrays(manifest.get("arrays", []), steps, bad))


def _arrays(entries: Any, steps: list[Step], bad: Callable[[str], ClusterError]) -> tuple[Array, ...]:
    """The manifest's `arrays`: each names steps of one target, none twice, and waits only for steps submitted before
    its first member."""
    if not isinstance(entries, list):
        raise bad("its arrays are not a list")
    if not entries:
        return ()
    position = {step.name: index for index, step in enumerate(steps)}
    by_name = {step.name: step for step in steps}
    taken: set[str] = set()
    arrays = []
    for entry in entries:
        name = entry.get("name") if isinstance(entry, dict) else None
        jobs = entry.get("jobs") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not _NAME.fullmatch(name) or entry.get("script") != f"{name}.array.sbatch" \
                or not isinstance(jobs, list) or not jobs or not all(isinstance(job, str) and job in position for job in jobs) \
                or not taken.isdisjoint(jobs) or len(set(jobs)) != len(jobs):
            raise bad("an array that is not {name, script: NAME.array.sbatch, jobs: [steps of the plan, each in one array]}")
        members = set(jobs)
        taken |= members
        first = min(position[job] for job in jobs)
        waited = {other for job in jobs for other in (*by_name[job].after, *by_name[job].after_end) if other not in members}
        if any(position[other] >= first for other in waited) or len({by_name[job].target for job in jobs}) != 1:
            raise bad(f"array {name} waits for a job submitted after it, or its jobs target different services")
        arrays.append(Array(name, entry["script"], tuple(jobs)))
    return tuple(arrays)


def sbatch_arguments(script: str, after: Sequence[str], env: Sequence[tuple[str, str]],
                     after_end: Sequence[str] = ()) -> list[str]:
    """sbatch's arguments for one job of a plan; submit.sh renders the same list (ids as shell variables).
    `after`: jobs that must have started; `after_end`: jobs that must have ended, in any state."""
    arguments = ["sbatch", "--parsable"]
    dependencies = [*([f"after:{':'.join(after)}"] if after else []),
                    *([f"afterany:{':'.join(after_end)}"] if after_end else [])]
    if dependencies:
        arguments.append(f"--dependency={','.join(dependencies)}")
    if env:
        arguments.append("--export=ALL," + ",".join(f"{key}={value}" for key, value in env))
    return [*arguments, script]


def submit_script(plan: Plan) -> str:
    """submit.sh: the plan's sbatch commands, each job's id kept in a shell variable for the later ones."""
    if plan.allocation:
        return "\n".join([
            "#!/bin/bash",
            f"# Submits recipe '{plan.recipe}' as one allocation: {plan.allocation} runs every job inside it as a step.",
            "# Generated by orchc; `orchc submit` does the same and records the run.",
            "set -euo pipefail",
            'cd "$(dirname "$0")"',
            f"ALLOCATION=$({shlex.join(sbatch_arguments(plan.allocation, (), ()))})",
            'ALLOCATION="${ALLOCATION%%;*}"',
            f"echo {shlex.quote(plan.recipe)} \"$ALLOCATION\"",
        ]) + "\n"
    variables = {step.name: f"JOB_{index}" for index, step in enumerate(plan.steps, start=1)}
    arrays = plan.array_of()
    array_variables = {array.name: f"ARRAY_{index}" for index, array in enumerate(plan.arrays, start=1)}

    def shell_id(name: str) -> str:
        """A job's id in the shell: its variable, or, for an array task, the array's id and its index (123_4)."""
        if name in arrays:
            array, index = arrays[name]
            return f'"${{{array_variables[array.name]}}}_{index}"'
        return f'"${{{variables[name]}}}"'

    by_name = {step.name: step for step in plan.steps} if arrays else {}
    lines = [
        "#!/bin/bash",
        f"# Submits the jobs of recipe '{plan.recipe}' in order: each client after the service it targets"
        " (and after the clients it waits for).",
        "# Generated by orchc; `orchc submit` does the same and records the run.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
    ]
    for step in plan.steps:
        if step.name in arrays:
            array, index = arrays[step.name]
            if index == 0:
                lines += _array_lines(array, array_variables[array.name], by_name, shell_id)
            continue
        # ids are digits, so a marker of shell-safe characters stands for each until it is quoted;
        # only the steps this one names get a marker, so a step costs what it references, not the plan's size
        named = {*step.after, *step.after_end, *(name for _, name in step.exports)}
        ids = {name: f"@{variables[name]}@" for name in sorted(named)}
        arguments = sbatch_arguments(step.script, [ids[name] for name in step.after],
                                     [(variable, ids[name]) for variable, name in step.exports],
                                     [ids[name] for name in step.after_end])
        words = [shlex.quote(word) for word in arguments]
        command = " ".join(words)
        for name, marker in ids.items():
            command = command.replace(marker, shell_id(name))
        var = variables[step.name]
        lines += [f"{var}=$({command})", f'{var}="${{{var}%%;*}}"', f"echo {shlex.quote(step.name)} \"${var}\""]
    return "\n".join(lines) + "\n"


def _array_lines(array: Array, var: str, steps: dict[str, Step], shell_id: Callable[[str], str]) -> list[str]:
    """submit.sh's lines for one array: its sbatch, then each task's id said as its job's."""
    named = sorted({other for job in array.jobs
                    for other in (*steps[job].after, *steps[job].after_end, *(name for _, name in steps[job].exports))})
    ids = {name: f"@M{index}@" for index, name in enumerate(named)}   # ids are digits: markers stand for them until quoted
    submission = array.submission(steps, {**ids, **dict.fromkeys(array.jobs, "")}, Path())
    command = " ".join(shlex.quote(word) for word in sbatch_arguments(array.script, submission.after, submission.env,
                                                                       submission.after_end))
    for name, marker in ids.items():
        command = command.replace(marker, shell_id(name))
    return [f"{var}=$({command})", f'{var}="${{{var}%%;*}}"',
            *(f"echo {shlex.quote(name)} {shell_id(name)}" for name in array.jobs)]

"""The submission plan: which scripts to submit, in what order, each after which jobs.

Built from the `manifest.json` the compile side writes, and used by both the
generated `submit.sh` and `orchc submit`, so the two cannot disagree: both
render each step through `sbatch_arguments` (here, so that compiling needs no SLURM code).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import ClusterError

MANIFEST = "manifest.json"
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
class Plan:
    recipe: str
    steps: tuple[Step, ...]
    allocation: str | None = None
    """allocation: one: the one script submitted (allocation.sbatch), which runs every step inside it"""


def plan_from_manifest(manifest: Any, source: str = MANIFEST) -> Plan:
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
    return Plan(recipe, tuple(steps), ALLOCATION_SCRIPT if allocation is not None else None)


def read_plan(folder: Path) -> Plan:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ClusterError(f"cannot read {path}: {exc}") from None
    return plan_from_manifest(manifest, str(path))


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
    lines = [
        "#!/bin/bash",
        f"# Submits the jobs of recipe '{plan.recipe}' in order: each client after the service it targets"
        " (and after the clients it waits for).",
        "# Generated by orchc; `orchc submit` does the same and records the run.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
    ]
    for step in plan.steps:
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
            command = command.replace(marker, f'"${{{variables[name]}}}"')
        var = variables[step.name]
        lines += [f"{var}=$({command})", f'{var}="${{{var}%%;*}}"', f"echo {shlex.quote(step.name)} \"${var}\""]
    return "\n".join(lines) + "\n"

"""`allocation: one`: a recipe's jobs as srun steps of one SLURM allocation.

Under `allocation: separate` (the default) every job is a batch job of its own, and each client
waits in the queue while its service holds its nodes. Under `allocation: one` the compile also
writes `allocation.sbatch`, one batch script that asks for the union of the jobs' resources and
runs each job's own script (unchanged) as a step: services first, in the background, then each
client once the clients it waits for (the manifest's `after_end`) have ended. Both submit.sh and
`orchc submit` then submit only allocation.sbatch (plan.py).

The allocation's resources, when `allocation.resources` does not set them:

- the jobs that may run at once: every service, and the largest client (most CPUs, then memory);
  clients that are not ordered run together only as far as the allocation has room (srun waits);
- nodes and ntasks: one per job of that set (a job's script is one task on one node); under
  `placement: pack` one node (ntasks the same);
- cpus_per_task: the most CPUs one job asks for (its ntasks x cpus_per_task); mem and gres: per node, the
  most one job asks for (memory: the sum over the set when `allocation.resources.nodes` packs them on fewer
  nodes);
- time: the longest time a service may take to start (`health_timeout`) plus the longest chain of
  client time limits one after another; without clients, the longest service time;
- account, partition, qos: the value the jobs share (jobs that differ are an error: set it);
  extra: every job's extra options, each once.

Placement (`allocation: {mode: one, placement: ...}`): `spread` (the default) puts each service on a
node of its own (`srun --relative=K`, in the recipe's order) and the clients on the next node, so a
client never measures a service that shares its node; `pack` puts every step on the allocation's first
node (co-located: one node billed, client and service compete for it). With fewer nodes than that
(`allocation.resources.nodes`), offsets wrap around.

Everything written into the script is an integer, a plain word or a line orchc built (the job
template's fail-closed filter applies, see templating.py); names are the manifest's job names.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..boundary.quote import Raw
from ..boundary.templating import SAFE_WORD, environment
from ..core.errors import OrchcError
from ..core.source import Node
from ..recipe.resolve import Recipe, ResolvedJob
from .directives import directives

MODES = ("separate", "one")
PLACEMENTS = ("spread", "pack")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MEM = re.compile(r"([1-9][0-9]*)([KMGT]?)")
_MEM_UNITS = {"K": 1, "": 1024, "M": 1024, "G": 1024 ** 2, "T": 1024 ** 3}   # in KiB; no suffix means MiB
_SHARED = ("account", "partition", "qos")


@dataclass(frozen=True)
class StepPlan:
    """One job of the recipe as a step of the allocation: what its srun line asks for."""

    name: str
    role: str
    cpus: int
    mem: str                     # the job's memory per node, or "0": the allocation's memory, shared
    gres: str | None
    time: str | None             # a client's own time limit (a step time limit); services run until done
    target: str | None           # a client's service in this recipe
    after_end: tuple[str, ...] = ()
    relative: int = 0            # the step's first node within the allocation (srun --relative)


@dataclass(frozen=True)
class Allocation:
    resources: dict[str, Any]
    services: tuple[StepPlan, ...]
    clients: tuple[StepPlan, ...]
    how: dict[str, str] = field(default_factory=dict)
    """resources key -> how its value was found (shown in the script's header and the manifest)"""
    placement: str = "spread"


def allocation_node(recipe: Recipe) -> Node | None:
    """The recipe's `allocation:` entry, when it asks for one allocation (None under `separate`)."""
    node = recipe.allocation
    if node is None:
        return None
    mode = node.value if isinstance(node.value, str) else node.get("mode")
    mode = mode.value if isinstance(mode, Node) else mode
    if mode not in MODES:
        raise OrchcError.at(node.loc, f"allocation must be one of {', '.join(MODES)} or {{mode: ..., resources: ...}}")
    return node if mode == "one" else None


def plan_allocation(recipe: Recipe, node: Node) -> Allocation:
    """The allocation's resources and steps (see the module's docstring); problems are located at `node`."""
    override_node = node.get("resources") if isinstance(node.value, dict) else None
    override = override_node.plain() if override_node is not None else {}
    where = override_node.loc if override_node is not None else node.loc
    jobs = list(recipe.jobs)
    for job in jobs:
        if int(job.resources.get("nodes") or 1) > 1:
            raise OrchcError.at(node.loc, f"{job.role} '{job.name}' asks for {job.resources['nodes']} nodes: under "
                                "allocation: one each job's script runs as one task on one node; run it with "
                                "allocation: separate")
    steps = {job.name: _step(job, recipe) for job in jobs}
    services = [job for job in jobs if job.role == "service"]
    clients = [job for job in jobs if job.role == "client"]
    largest = max(clients, key=lambda job: (steps[job.name].cpus, _kib(steps[job.name].mem)), default=None)
    together = [*services, *([largest] if largest else [])]
    resources: dict[str, Any] = {}
    how: dict[str, str] = {}
    for key in _SHARED:
        values = {str(job.resources[key]) for job in jobs if job.resources.get(key) is not None}
        if len(values) > 1 and key not in override:
            raise OrchcError.at(where, f"the jobs ask for different {key} values ({', '.join(sorted(values))}); "
                                f"one allocation has one: set allocation.resources.{key}")
        if values:
            resources[key] = values.pop()
            how[key] = "the jobs' own"
    placement = _placement(node)
    resources["nodes"] = resources["ntasks"] = len(together)
    how["nodes"] = how["ntasks"] = "one per job that may run at once: " + ", ".join(job.name for job in together)
    if placement == "pack":
        resources["nodes"], how["nodes"] = 1, "placement: pack (every job on one node)"
    resources["cpus_per_task"] = max(steps[job.name].cpus for job in jobs)
    how["cpus_per_task"] = "the most CPUs one job asks for"
    nodes = int(override.get("nodes", resources["nodes"]))
    mems = [steps[job.name].mem for job in together if steps[job.name].mem != "0"]
    if mems:
        packed = nodes < len(together)
        resources["mem"] = _mem_text(sum(map(_kib, mems)) if packed else max(map(_kib, mems)))
        how["mem"] = "the sum of the jobs' memory (packed on fewer nodes)" if packed else "the most one job asks for"
    gres = {steps[job.name].gres for job in jobs if steps[job.name].gres}
    if len(gres) > 1 and "gres" not in override:
        raise OrchcError.at(where, f"the jobs ask for different gres ({', '.join(sorted(g for g in gres if g))}); "
                            "set allocation.resources.gres")
    if gres:
        resources["gres"] = gres.pop()
        how["gres"] = "the jobs' own, per node"
    time = _time(recipe, services, clients)
    if time is not None:
        resources["time"], how["time"] = time
    extra = list(dict.fromkeys(item for job in jobs for item in job.resources.get("extra") or ()))
    if extra:
        resources["extra"] = extra
    site = recipe.site
    for key, label, allowed in (("partition", "partition", site.partitions), ("qos", "QoS", site.qos)):
        if key in override and allowed and override[key] not in allowed:
            raise OrchcError.at(override_node.at((key,)).loc if override_node is not None else where,
                                f"{label} '{override[key]}' is not one of site {site.name}'s: {', '.join(allowed)}")
    for key, value in override.items():
        resources[key] = value
        how[key] = "allocation.resources"
    nodes = int(resources["nodes"])
    offsets = {job.name: 0 if placement == "pack" else index % nodes for index, job in enumerate(services)}
    offsets.update({job.name: 0 if placement == "pack" else len(services) % nodes for job in clients})
    return Allocation(resources, tuple(replace(steps[job.name], relative=offsets[job.name]) for job in services),
                      tuple(replace(steps[job.name], relative=offsets[job.name]) for job in clients), how, placement)


def _placement(node: Node) -> str:
    """The allocation's `placement`: spread (the default) or pack; anything else is an error located at it."""
    entry = node.get("placement") if isinstance(node.value, dict) else None
    if entry is None:
        return "spread"
    if entry.value not in PLACEMENTS:
        raise OrchcError.at(entry.loc, f"placement must be one of {', '.join(PLACEMENTS)}: spread puts each service "
                            "and the clients on nodes of their own, pack puts every job on one node")
    return str(entry.value)


def _step(job: ResolvedJob, recipe: Recipe) -> StepPlan:
    resources = job.resources
    cpus = int(resources.get("ntasks") or 1) * int(resources.get("cpus_per_task") or 1)
    return StepPlan(job.name, job.role, cpus, str(resources.get("mem") or "0"), resources.get("gres") or None,
                    str(resources["time"]) if job.role == "client" and resources.get("time") else None,
                    job.target if job.role == "client" and job.target in recipe.job_names else None,
                    tuple(recipe.waits_for.get(job.name, ())))


def _time(recipe: Recipe, services: list[ResolvedJob], clients: list[ResolvedJob]) -> tuple[str, str] | None:
    """(the allocation's time limit, how it was found), or None when a job has no time (or no limit) to sum."""
    if not clients:
        limits = [seconds(str(job.resources.get("time") or "0")) for job in services]
        if not limits or 0 in limits:
            return None
        return _time_text(max(limits)), "the longest service time"
    start = max((int(job.fields.get("health_timeout") or 0) for job in services), default=0)
    ends: dict[str, int] = {}
    for job in clients:   # in submission order: a client waits only for clients listed before it
        own = seconds(str(job.resources.get("time") or "0"))
        if own == 0:
            return None
        ends[job.name] = own + max((ends[name] for name in recipe.waits_for.get(job.name, ()) if name in ends),
                                   default=0)
    return _time_text(start + max(ends.values())), \
        "the longest service start (health_timeout) plus the longest chain of client times"


def seconds(text: str) -> int:
    """SLURM's time formats (minutes, M:S, H:M:S, D-H, D-H:M, D-H:M:S) in seconds; 0 means no limit."""
    days, _, rest = text.rpartition("-")
    parts = [int(part) for part in rest.split(":")]
    if days:
        hours, minutes, secs = (parts + [0, 0])[:3]
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + secs
    if len(parts) == 3:
        return (parts[0] * 60 + parts[1]) * 60 + parts[2]
    return parts[0] * 60 + (parts[1] if len(parts) == 2 else 0)


def _time_text(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    clock = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{clock}" if days else clock


def _kib(mem: str) -> int:
    match = _MEM.fullmatch(mem)
    return int(match.group(1)) * _MEM_UNITS[match.group(2)] if match else 0


def _mem_text(kib: int) -> str:
    for unit in ("T", "G", "M"):
        if kib % _MEM_UNITS[unit] == 0:
            return f"{kib // _MEM_UNITS[unit]}{unit}"
    return f"{kib}K"


def allocation_name(recipe: Recipe) -> str:
    """The allocation's job id part: 8 hex digits hashed from its jobs' ids (the same jobs, the same name)."""
    return hashlib.sha256(" ".join(sorted(job.job_id for job in recipe.jobs)).encode()).hexdigest()[:8]


def render_allocation(recipe: Recipe, node: Node, allocation: Allocation, script: str) -> str:
    """The text of the allocation script, named `script` in the output folder."""
    lines = directives(recipe.name, allocation_name(recipe), allocation.resources,
                       recipe.site.reservation_for(allocation.resources))
    for line in [*lines, recipe.site.shell]:
        if _CONTROL.search(line):
            raise OrchcError.at(node.loc, f"a value with a control character would reach {script}: {line[:60]!r}")
    for step in (*allocation.services, *allocation.clients):
        for value in (step.mem, step.gres, step.time):
            if value is not None and not SAFE_WORD.fullmatch(value):
                raise OrchcError.at(node.loc, f"{step.role} '{step.name}': {value[:60]!r} cannot be an srun "
                                    f"option of {script} (a plain word only); run it with allocation: separate")
    template = environment("script").get_template("allocation.sbatch.j2")
    try:
        return str(template.render(recipe=recipe, shell=Raw(recipe.site.shell),
                                   directives=[Raw(line) for line in lines], services=allocation.services,
                                   clients=allocation.clients, how=allocation.how, placement=allocation.placement,
                                   source=Raw(_comment(Path(recipe.file).name)))) + "\n"
    except ValueError as exc:
        raise OrchcError.at(node.loc, f"{script}: {exc}") from None


def _comment(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


def manifest_entry(allocation: Allocation, script: str) -> dict[str, Any]:
    return {"mode": "one", "script": script, "resources": dict(allocation.resources), "how": dict(allocation.how),
            "placement": {step.name: step.relative for step in (*allocation.services, *allocation.clients)}}


def one_allocation(recipe: Recipe, script: str) -> tuple[str, dict[str, Any]] | None:
    """(the text of the allocation script named `script`, the manifest's `allocation` entry) under `allocation: one`; None otherwise."""
    node = allocation_node(recipe)
    if node is None:
        return None
    allocation = plan_allocation(recipe, node)
    return render_allocation(recipe, node, allocation, script), manifest_entry(allocation, script)


__all__ = ["Allocation", "StepPlan", "allocation_node", "one_allocation", "plan_allocation", "render_allocation",
           "seconds"]

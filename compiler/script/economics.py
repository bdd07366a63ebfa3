"""What a recipe reserves on a cluster that bills whole nodes: node-hours at most, and GPUs a job leaves idle.

A site profile says how it bills (`billing: whole_node` or `shared`) and what a node of each partition holds
(`nodes: {gpu: {cores: 64, gpus: 4, memory: 512G}}`). On a whole-node site every job pays for its nodes for as
long as it runs, whatever it uses of them: `orchc validate` and `submit` print the most a recipe can cost (each
job's time limit times its nodes: services stop when their clients end, so a run usually costs less) and warn
where a job asks for a small share of a node's GPUs (README "Sites", "Whole-node economics").
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.source import SourceLoc
from ..recipe.resolve import Recipe, ResolvedJob, Site
from .allocation import allocation_node, plan_allocation, seconds
from .directives import gpus_of

WHOLE_NODE = "whole_node"
IDLE_SHARE = 0.5
"""a job on a whole-node site is warned about when it asks for less than this share of a node's GPUs"""


@dataclass(frozen=True)
class Reservation:
    """One SLURM job of a recipe as billed: its nodes for its time limit."""

    job: str
    partition: str
    nodes: int
    seconds: int
    """the time limit; 0 when the job has none (then the partition's limit applies, which orchc does not know)"""

    @property
    def node_hours(self) -> float:
        return self.nodes * self.seconds / 3600


def reservations(recipe: Recipe) -> list[Reservation]:
    """The SLURM jobs the recipe submits: one per job, or the one allocation under `allocation: one`."""
    node = allocation_node(recipe)
    if node is not None:
        resources = plan_allocation(recipe, node).resources
        return [Reservation("allocation", str(resources.get("partition") or ""), int(resources.get("nodes") or 1),
                            seconds(str(resources.get("time") or "0")))]
    return [Reservation(job.name, str(job.resources.get("partition") or ""), int(job.resources.get("nodes") or 1),
                        seconds(str(job.resources.get("time") or "0"))) for job in recipe.jobs]



def billing_of(site: Site, partition: str) -> str:
    """How `partition` bills: its own `billing` under `nodes:`, else the site's."""
    shape = site.nodes.get(partition)
    return str(shape.get("billing", site.billing)) if shape is not None else site.billing


def cost_line(recipe: Recipe) -> str | None:
    """One line on what the recipe reserves on whole-node partitions; None when it reserves none (a shared node
    bills a share)."""
    jobs = [job for job in reservations(recipe) if billing_of(recipe.site, job.partition) == WHOLE_NODE]
    if not jobs:
        return None
    unlimited = [job.job for job in jobs if job.seconds == 0]
    hours = sum(job.node_hours for job in jobs)
    text = (f"reserves at most {hours:,.2f} node-hours on {recipe.site.name} (whole nodes are billed: "
            f"{len(jobs)} SLURM job(s), each its nodes x its time limit)")
    if unlimited:
        text += f"; without a time limit, so not counted: {', '.join(unlimited[:5])}{' ...' if len(unlimited) > 5 else ''}"
    return text


def running_limit_line(recipe: Recipe) -> str | None:
    """What the site's limits.max_running means for the recipe: None when all its jobs may run at once."""
    limit = recipe.site.limits.get("max_running")
    jobs = len(reservations(recipe))
    if limit is None or jobs <= limit:
        return None
    from .arrays import array_groups, arrays_line

    groups = array_groups(recipe)
    if groups:
        return arrays_line(recipe, groups)
    return (f"{jobs} SLURM jobs, at most {limit} of them running at once on {recipe.site.name} (limits.max_running): "
            "the others wait in the queue (single jobs: no sweep clients that could form a job array)")


def idle_gpu_warnings(recipe: Recipe) -> list[tuple[SourceLoc, str]]:
    """(where, why) for each job that asks for under IDLE_SHARE of its node's GPUs on a whole-node site."""
    site = recipe.site
    if allocation_node(recipe) is not None:
        return []
    warnings = []
    for job in recipe.jobs:
        partition = str(job.resources.get("partition") or "")
        shape = site.nodes.get(partition)
        wanted = gpus_of(str(job.resources.get("gres") or ""))
        if shape is None or billing_of(site, partition) != WHOLE_NODE or not wanted or not shape.get("gpus") \
                or wanted >= IDLE_SHARE * shape["gpus"]:
            continue
        warnings.append((_gres_loc(recipe, job), _idle_message(job, wanted, shape["gpus"], site.name)))
    return warnings


def _idle_message(job: ResolvedJob, wanted: int, per_node: int, site: str) -> str:
    partition = job.resources.get("partition")
    hint = "one service instance per GPU, " if job.role == "service" else ""
    return (f"{job.role} '{job.name}' asks for {wanted} of the {per_node} GPUs of a {partition} node on {site}, "
            f"which bills the whole node: {per_node - wanted} GPU(s) stay idle but are paid for; consider "
            f"{hint}allocation: one (the recipe's jobs share one allocation), or packing more jobs onto the node")


def _gres_loc(recipe: Recipe, job: ResolvedJob) -> SourceLoc:
    return recipe.origins[job.name].loc(("resources", "gres"))

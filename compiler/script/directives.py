"""A resolved job -> its `#SBATCH` lines, one per set resource, in a fixed order.

Values were checked by the schema (patterns without spaces or newlines), so a
directive is always exactly one line; unset values are left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RESOURCE_DIRECTIVES: tuple[tuple[str, str], ...] = (
    ("account", "--account"),
    ("partition", "--partition"),
    ("qos", "--qos"),
    ("nodes", "--nodes"),
    ("ntasks", "--ntasks"),
    ("cpus_per_task", "--cpus-per-task"),
    ("mem", "--mem"),
    ("time", "--time"),
    ("gres", "--gres"),
    ("signal", "--signal"),
)
"""resources key -> sbatch option, in the order they appear in a script (README's table)."""


def directives(job_name: str, job_id: str, resources: Mapping[str, Any], reservation: str | None = None) -> list[str]:
    """The option part of each `#SBATCH` line; `reservation`: the one the site adds for the job's QoS and partition
    (right after --qos)."""
    lines = [f"--job-name={job_name}_{job_id}"]
    for key, option in RESOURCE_DIRECTIVES:
        if resources.get(key) is not None:
            lines.append(f"{option}={resources[key]}")
        if key == "qos" and reservation is not None:
            lines.append(f"--reservation={reservation}")
    lines += ["--output=slurm-%j.out", "--error=slurm-%j.err"]
    lines += list(resources.get("extra", ()))
    return lines


def gpus_of(gres: str) -> int:
    """The GPUs per node a --gres asks for: `gpu` is 1, `gpu:4` and `gpu:a100:4` are 4, `gpu:a100` is 1."""
    count = 0
    for item in gres.split(","):
        parts = item.split(":")
        if parts[0] == "gpu":
            count += int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
    return count

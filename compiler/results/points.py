"""A run's client results by sweep point and repeat (run side).

The compile side records a sweep in the run's manifest.json: `sweep` = {keys, repeat, points: [{point,
values}]}, and each client job's `point` and `repeat`. A run without a sweep has one unnamed point.
`orchc results`, `report` and `compare` read results through `point_results`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from ..output.manifest import read_manifest, recorded_sweep
from ..run.runs import Run, results


@dataclass(frozen=True)
class PointResult:
    point: str | None
    """the point's name (p01, p02, ...); None outside a sweep"""
    values: Mapping[str, Any]
    """swept key (as in the recipe's sweep: block) -> its value at this point"""
    repeat: int | None
    job: str
    type: str
    slurm_id: str
    results: Any
    """the client's results.json (None while there is none)"""

    def metrics(self) -> dict[str, float]:
        """The numeric metrics of the documented results shape ({} for any other shape): read once, since
        callers ask per metric (asking a fresh copy per metric made aggregation quadratic). Not to be changed."""
        return self._metrics

    @cached_property
    def _metrics(self) -> dict[str, float]:
        data = self.results if isinstance(self.results, dict) else {}
        found = data.get("metrics")
        if not isinstance(found, dict):
            return {}
        return {str(name): number for name, value in found.items() if (number := finite(value)) is not None}


def finite(value: Any) -> float | None:
    """A JSON number as a finite float; None for anything else (a bool, a string, NaN, infinity, an int too large
    for a float)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None



@dataclass(frozen=True)
class Placement:
    point: str | None
    values: Mapping[str, Any]
    repeat: int | None


def placements(manifest: Mapping[str, Any]) -> dict[str, Placement]:
    """Job name -> its point, swept values and repeat, as the manifest records them (clients of a sweep)."""
    sweep = recorded_sweep(manifest)
    values = dict(sweep.points) if sweep else {}
    placed = {}
    for job in manifest.get("jobs", []):
        if isinstance(job, dict) and isinstance(job.get("name"), str):
            point = job.get("point") if isinstance(job.get("point"), str) else None
            repeat = job.get("repeat") if isinstance(job.get("repeat"), int) else None
            placed[job["name"]] = Placement(point, values.get(point, {}) if point else {}, repeat)
    return placed


def point_results(run_dir: Path, run: Run, manifest: Mapping[str, Any] | None = None) -> list[PointResult]:
    """Every client's results with its point and repeat, in the order the manifest lists the jobs
    (`manifest`: the run's manifest.json, when the caller has read it already)."""
    placed = placements(read_manifest(run_dir) if manifest is None else manifest)
    collected = results(run_dir, run)
    nowhere = Placement(None, {}, None)
    return [PointResult(at.point, at.values, at.repeat, job.name, job.type, job.slurm_id, collected.get(job.name))
            for job in run.jobs if job.role == "client" for at in (placed.get(job.name, nowhere),)]


@dataclass(frozen=True)
class Aggregate:
    n: int
    mean: float
    stdev: float | None
    """sample standard deviation (n - 1); None for a single value"""
    min: float
    max: float


def aggregate(values: Iterable[float]) -> Aggregate | None:
    """n, mean, sample stdev, min and max of finite numbers; figures beyond the float range (1e308 + 1e308) are
    infinite, never an OverflowError."""
    numbers = list(values)
    if not numbers:
        return None
    count, low, high = len(numbers), min(numbers), max(numbers)
    if low == high:  # identical repeats: the rounding of sum / n must not show as a spread of 1.7e-17
        return Aggregate(count, low, 0.0 if count > 1 else None, low, high)
    try:
        mean = math.fsum(numbers) / count
    except OverflowError:  # the sum leaves the float range, the mean does not
        mean = math.fsum(x / count for x in numbers)
    mean = min(max(mean, low), high)
    stdev = _stdev([x - mean for x in numbers]) if count > 1 else None
    return Aggregate(count, mean, stdev, low, high)


def _stdev(deviations: list[float]) -> float:
    """The sample standard deviation from the deviations from the mean; scaled when their squares overflow."""
    try:
        variance = math.fsum(d * d for d in deviations) / (len(deviations) - 1)
    except OverflowError:
        variance = math.inf
    scale = max(abs(d) for d in deviations)
    if math.isinf(variance) and math.isfinite(scale):
        return scale * math.sqrt(math.fsum((d / scale) ** 2 for d in deviations) / (len(deviations) - 1))
    return math.sqrt(variance)


def aggregates(repeats: Iterable[PointResult]) -> dict[str, Aggregate]:
    """Metric -> its aggregate over these results (the repeats of a client at a point), by metric name: one pass
    over each result's metrics."""
    values: dict[str, list[float]] = {}
    for row in repeats:
        for name, value in row.metrics().items():
            values.setdefault(name, []).append(value)
    found = {}
    for name in sorted(values):
        summary = aggregate(values[name])
        if summary is not None:
            found[name] = summary
    return found


def by_point(rows: Iterable[PointResult]) -> dict[tuple[str | None, str], list[PointResult]]:
    """(point, client name without its point/repeat suffix) -> the repeats of that client at that point."""
    grouped: dict[tuple[str | None, str], list[PointResult]] = {}
    for row in rows:
        grouped.setdefault((row.point, base_name(row)), []).append(row)
    return grouped


def base_name(row: PointResult) -> str:
    """The client's name in the recipe: bench for bench-p01-r2."""
    suffix = "".join(f"-{part}" for part in (row.point, f"r{row.repeat}" if row.repeat else None) if part)
    return row.job[: -len(suffix)] if suffix and row.job.endswith(suffix) else row.job

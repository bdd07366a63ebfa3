"""The highest load point of a sweep that meets a client's SLO (README "LLM serving metrics", SLOs and goodput).

A client with an `slo:` reports, per run, `slo_met_ratio` (the share of its requests that met every bound) and
`goodput_requests_per_s`. A point meets the SLO when every repeat there has `slo_met_ratio` >= SLO_TARGET: 99 % of
requests within every bound (the bounds are p99s), each repeat on its own, so a point is never claimed on the mean
of a repeat that missed. Points are ordered by the sweep's load key: the first swept key whose values are all
numbers (request_rate, concurrent, ...); other swept keys make separate curves, each with its own answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .points import PointResult, by_point

SLO_TARGET = 0.99
"""slo_met_ratio every repeat of a point must reach (DistServe's "SLO attainment", at the p99 of the bounds)"""
RATIO, GOODPUT = "slo_met_ratio", "goodput_requests_per_s"


@dataclass(frozen=True)
class SloPoint:
    point: str | None
    value: Any
    ratios: tuple[float | None, ...]
    """slo_met_ratio of each repeat (None: a repeat without it, which does not meet the SLO)"""
    goodput: tuple[float, ...]

    @property
    def meets(self) -> bool:
        return bool(self.ratios) and all(r is not None and r >= SLO_TARGET for r in self.ratios)


@dataclass(frozen=True)
class SloCurve:
    client: str
    key: str
    fixed: tuple[tuple[str, Any], ...]
    points: tuple[SloPoint, ...]
    """in rising load"""

    @property
    def best(self) -> SloPoint | None:
        """The highest load point that meets the SLO."""
        return next((p for p in reversed(self.points) if p.meets), None)

    def describe(self) -> str:
        """One sentence: the highest point meeting the SLO, its goodput (mean and 95 % t interval over the repeats)
        and met ratio, and the next point up that misses."""
        from .stats import mean_interval

        where = f"{self.client}" + "".join(f", {k}={_shown(v)}" for k, v in self.fixed)
        best = self.best
        if best is None:
            first = self.points[0]
            return (f"SLO ({where}): no point meets it (slo_met_ratio >= {SLO_TARGET:g} in every repeat); at the lowest "
                    f"load, {first.point or '-'} {self.key}={_shown(first.value)}, slo_met_ratio {_ratios(first)}")
        text = f"SLO ({where}): highest point meeting it {best.point or '-'} {self.key}={_shown(best.value)}"
        if best.goodput:
            mean = sum(best.goodput) / len(best.goodput)
            interval = mean_interval(best.goodput)
            text += f", goodput {_number(mean)} requests/s"
            text += (f" [{_number(interval[1])}, {_number(interval[2])}] (95%, n={len(best.goodput)})" if interval
                     else " (n=1)")
        text += f", slo_met_ratio {_ratios(best)}"
        above = [p for p in self.points[self.points.index(best) + 1:] if not p.meets]
        if above:
            text += f"; {above[0].point or '-'} {self.key}={_shown(above[0].value)} misses it ({_ratios(above[0])})"
        return text

    def as_json(self) -> dict[str, Any]:
        best = self.best
        return {"client": self.client, "key": self.key, "fixed": dict(self.fixed), "target_ratio": SLO_TARGET,
                "point": best.point if best else None, "value": best.value if best else None,
                "points": [{"point": p.point, "value": p.value, "meets": p.meets, "slo_met_ratio": list(p.ratios),
                            "goodput_requests_per_s": list(p.goodput)} for p in self.points]}


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _number(value: float) -> str:
    return f"{value:.4g}"


def _ratios(point: SloPoint) -> str:
    """Each repeat's slo_met_ratio (`-`: a repeat without one), after the lowest when there are several."""
    shown = ["-" if r is None else f"{r:.3f}" for r in point.ratios]
    if len(shown) == 1:
        return shown[0]
    known = [r for r in point.ratios if r is not None]
    lowest = "-" if len(known) < len(shown) else f"{min(known):.3f}"
    return f"min {lowest} of {', '.join(shown)}"


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def slo_curves(rows: Iterable[PointResult], keys: Sequence[str]) -> list[SloCurve]:
    """Per client that reports slo_met_ratio and per combination of the other swept keys, its points along the
    load key; [] without a sweep or a numeric swept key."""
    grouped: dict[str, list[tuple[str | None, dict[str, Any], list[PointResult]]]] = {}
    for (point, client), repeats in by_point(rows).items():
        grouped.setdefault(client, []).append((point, dict(repeats[0].values), repeats))
    found = []
    for client, points in grouped.items():
        if not any(RATIO in row.metrics() for _, _, repeats in points for row in repeats):
            continue
        # ints and floats compare exactly, so an int beyond the float range sorts too
        key = next((k for k in keys if all(_numeric(values.get(k)) for _, values, _ in points)), None)
        if key is None:
            continue
        lines: dict[str, list[SloPoint]] = {}
        fixed: dict[str, tuple[tuple[str, Any], ...]] = {}
        for point, values, repeats in points:
            combination = tuple((k, values.get(k)) for k in keys if k != key)
            name = json.dumps(combination, sort_keys=True)
            fixed[name] = combination
            lines.setdefault(name, []).append(SloPoint(
                point, values[key], tuple(row.metrics().get(RATIO) for row in repeats),
                tuple(g for row in repeats if (g := row.metrics().get(GOODPUT)) is not None)))
        found += [SloCurve(client, key, fixed[name], tuple(sorted(line, key=lambda p: p.value)))
                  for name, line in lines.items()]
    return found

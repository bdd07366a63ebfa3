"""Metric names, units and directions: the rules every results command shares."""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

HIGHER, NEUTRAL, LOWER = 1, 0, -1
"""directions: higher is better, no direction known, lower is better"""


# A metric's unit is the end of its name (README "Results"); the longest ending wins.
UNITS = (("_per_s", "1/s"), ("_ms", "ms"), ("_s", "s"), ("_count", "count"), ("_bytes", "bytes"),
         ("_ratio", "ratio"), ("_percent", "%"), ("_j", "J"), ("_w", "W"))


def metric_matches(metric: str, pattern: str) -> bool:
    """`pattern` (an fnmatch glob; `*` matches dots too) names `metric` whole, or its last dot-separated parts:
    `requests_per_s` and `*_per_s` match `get.requests_per_s`; `per_s` does not (README "Comparing runs")."""
    return fnmatchcase(metric, pattern) or fnmatchcase(metric, f"*.{pattern}")


def near_metrics(pattern: str, metrics: Iterable[str]) -> str:
    """"; did you mean 'a', 'b' or 'c'?" with the metric names closest to `pattern` (whole names, then last parts)."""
    from ..core.errors import did_you_mean

    names = sorted(set(metrics))
    return did_you_mean(pattern, names, n=3) or did_you_mean(pattern, _last_parts(names), n=3)


def _last_parts(names: Iterable[str]) -> set[str]:
    return {name.split(".", index)[-1] for name in names for index in range(1, name.count(".") + 1)}


def unit_of(metric: str) -> str:
    return next((unit for ending, unit in UNITS if metric.endswith(ending)), "")


_BAD_WORDS = ("error", "fail", "timeout", "reconnect", "drop", "reject", "miss", "retry", "retries", "cut", "lost")


_STATE_WORDS = ("usage", "utilization", "running", "waiting")
"""how full something is (a KV cache, a queue): neither good nor bad in itself"""


_GOOD_WORDS = ("ok", "success", "successful", "succeeded", "completed", "passed", "hit", "hits", "recall",
               "precision", "accuracy")


def direction(metric: str) -> int:
    """HIGHER, LOWER or NEUTRAL for a metric, from the last part of its name (README "Comparing runs").

    Errors, failures, timeouts, reconnects, drops, misses, cuts (as a count, rate, ratio or percent) are
    lower-is-better; otherwise rates (`_per_s`) and `_ratio`s (recall) are higher-is-better, times (`_ms`,
    `_s`) lower-is-better, and `_count`/`_percent` higher-is-better only for good outcomes (`requests_ok_count`,
    `success_percent`). Energy (`_j`) is lower-is-better. Everything else (`_bytes`, `queries_count`,
    `cpu_percent`, how full a cache or queue is, `engine_kv_cache_usage_max_ratio`, power `_w`, no unit) has no direction.
    """
    leaf = metric.rsplit(".", 1)[-1].lower()
    words = leaf.split("_")
    rate = leaf.endswith("_per_s")
    counted = rate or leaf.endswith(("_count", "_ratio", "_percent"))
    if counted and any(word.startswith(bad) for word in words[:-1] for bad in _BAD_WORDS):
        return LOWER
    if any(word in _STATE_WORDS for word in words[:-1]):
        return NEUTRAL
    if rate or leaf.endswith("_ratio"):
        return HIGHER
    if leaf.endswith("_j"):
        return LOWER
    if leaf.endswith(("_ms", "_s")):
        return LOWER
    if counted and any(word in _GOOD_WORDS for word in words[:-1]):
        return HIGHER
    return NEUTRAL


def direction_name(value: int) -> str:
    return {HIGHER: "higher is better", LOWER: "lower is better"}.get(value, "no direction")

"""Metric names, units and directions: the rules every results command shares."""

from __future__ import annotations

HIGHER, NEUTRAL, LOWER = 1, 0, -1
"""directions: higher is better, no direction known, lower is better"""


# A metric's unit is the end of its name (README "Results"); the longest ending wins.
UNITS = (("_per_s", "1/s"), ("_ms", "ms"), ("_s", "s"), ("_count", "count"), ("_bytes", "bytes"),
         ("_ratio", "ratio"), ("_percent", "%"))


def unit_of(metric: str) -> str:
    return next((unit for ending, unit in UNITS if metric.endswith(ending)), "")


_BAD_WORDS = ("error", "fail", "timeout", "reconnect", "drop", "reject", "miss", "retry", "retries", "cut", "lost")


_GOOD_WORDS = ("ok", "success", "successful", "succeeded", "completed", "passed", "hit", "hits", "recall",
               "precision", "accuracy")


def direction(metric: str) -> int:
    """HIGHER, LOWER or NEUTRAL for a metric, from the last part of its name (README "Comparing runs").

    Errors, failures, timeouts, reconnects, drops, misses, cuts (as a count, rate, ratio or percent) are
    lower-is-better; otherwise rates (`_per_s`) and `_ratio`s (recall) are higher-is-better, times (`_ms`,
    `_s`) lower-is-better, and `_count`/`_percent` higher-is-better only for good outcomes (`requests_ok_count`,
    `success_percent`). Everything else (`_bytes`, `queries_count`, `cpu_percent`, no unit) has no direction.
    """
    leaf = metric.rsplit(".", 1)[-1].lower()
    words = leaf.split("_")
    rate = leaf.endswith("_per_s")
    counted = rate or leaf.endswith(("_count", "_ratio", "_percent"))
    if counted and any(word.startswith(bad) for word in words[:-1] for bad in _BAD_WORDS):
        return LOWER
    if rate or leaf.endswith("_ratio"):
        return HIGHER
    if leaf.endswith(("_ms", "_s")):
        return LOWER
    if counted and any(word in _GOOD_WORDS for word in words[:-1]):
        return HIGHER
    return NEUTRAL


def direction_name(value: int) -> str:
    return {HIGHER: "higher is better", LOWER: "lower is better"}.get(value, "no direction")

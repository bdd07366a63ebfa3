"""A client's figures part by part, below its merged ones in `orchc results`: per task of a load from many nodes
(`results/<client>/tasks.json`) and per replica of a service with one engine per GPU (`replicas.json`), both as
llm_bench.py writes them: {"tasks"|"replicas": [{KEY, ..., "metrics": {...}}], "outliers": [{KEY, "metric", "value",
"tasks_median"}]}. Which part is an outlier is llm_bench's rule (its outliers_of), shown here, not judged again."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Kind:
    file: str
    key: str
    title: str
    labels: tuple[str, ...]
    """the part's own fields shown before its figures (its number, then where it ran)"""


KINDS = (Kind("tasks.json", "tasks", "per task", ("task", "node")),
         Kind("replicas.json", "replicas", "per replica", ("replica", "address", "gpu")))

FIGURES = ("requests_ok_count", "requests_failed_count", "request_throughput_per_s", "e2e_latency_median_ms",
           "e2e_latency_p99_ms", "ttft_median_ms", "ttft_p99_ms")
"""The figures of each part's row, in order."""

HEADINGS = ("requests", "failed", "requests/s", "e2e p50 ms", "e2e p99 ms", "ttft p50 ms", "ttft p99 ms")

_LIMIT = 16 << 20
_PARTS_LIMIT = 10_000
"""Rows shown per breakdown: more tasks than any allocation runs."""


def breakdowns(run_dir: Path, client: str) -> dict[str, list[dict[str, Any]]]:
    """The client's breakdowns that exist, by kind (`tasks`, `replicas`): one flat row per part, with the figures of
    FIGURES and `outliers` (the names of the figures that made it one). A file of another shape is said, not shown."""
    found = {}
    for kind in KINDS:
        data = _read(run_dir, f"results/{client}/{kind.file}")
        if data is None:
            continue
        rows = _rows(kind, data)
        if rows is None:
            print(f"orchc: warning: results/{client}/{kind.file} is not a breakdown ({{\"{kind.key}\": [...]}}): not shown",
                  file=sys.stderr)
            continue
        found[kind.key] = rows
    return found


def _read(run_dir: Path, relative: str) -> Any:
    from ..core.files import read_in_run

    try:
        return json.loads(read_in_run(run_dir, relative, _LIMIT))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:
        print(f"orchc: warning: unreadable {relative}: {exc}", file=sys.stderr)
        return None


def _rows(kind: Kind, data: Any) -> list[dict[str, Any]] | None:
    parts = data.get(kind.key) if isinstance(data, dict) else None
    if not isinstance(parts, list) or not all(isinstance(part, dict) and isinstance(part.get("metrics"), dict) for part in parts):
        return None
    flagged: dict[str, list[dict[str, Any]]] = {}
    for outlier in data.get("outliers") if isinstance(data.get("outliers"), list) else []:
        if isinstance(outlier, dict) and isinstance(outlier.get("metric"), str):
            flagged.setdefault(_label(outlier.get(kind.labels[0])), []).append(
                {"metric": outlier["metric"], "value": _number(outlier.get("value")), "median": _number(outlier.get("tasks_median"))})
    rows = []
    for part in parts[:_PARTS_LIMIT]:
        row = {label: _scalar(part.get(label)) for label in kind.labels if label in part}
        row.update({name: _number(part["metrics"].get(name)) for name in FIGURES if name in part["metrics"]})
        row["outliers"] = flagged.get(_label(part.get(kind.labels[0])), [])
        rows.append(row)
    return rows


def _label(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if not isinstance(value, str) else value


def _scalar(value: Any) -> Any:
    return value if isinstance(value, (str, int, float)) and not isinstance(value, bool) else _label(value)


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if isinstance(value, int) or math.isfinite(value) else None


def table_of(kind_key: str, rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The headers and rows of one breakdown as text; an outlier's last cell names its figures, each with its value
    and the parts' median."""
    kind = next(k for k in KINDS if k.key == kind_key)
    headers = [*kind.labels, *HEADINGS, "flag"]
    table = [[*(_text(row.get(label)) for label in kind.labels), *(_text(row.get(name)) for name in FIGURES), _flag(row["outliers"])]
             for row in rows]
    return headers, table


def heading_of(client: str, kind_key: str, rows: list[dict[str, Any]]) -> str:
    """The line above a breakdown: whose, of what, how many parts and how many flagged."""
    kind = next(k for k in KINDS if k.key == kind_key)
    flagged = sum(1 for row in rows if row["outliers"])
    return f"{client} {kind.title}: {len(rows)} {kind.key}" + (f", {flagged} flagged ({OUTLIER_RULE})" if flagged else "")


OUTLIER_RULE = "a figure more than twice above or below the median of the others"


def _flag(outliers: list[dict[str, Any]]) -> str:
    said = [o["metric"] + (f" {_text(o['value'])}" if o["value"] is not None else "")
            + (f" (median {_text(o['median'])})" if o["median"] is not None else "") for o in outliers]
    return "outlier: " + ", ".join(said) if said else ""


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)

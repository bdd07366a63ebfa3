#!/usr/bin/env python3
"""An industry LLM benchmark client's summary as orchc's metrics: `peer_results.py TOOL RESULTS`.

TOOL is `aiperf` (RESULTS/aiperf/profile_export_aiperf.json, AIPerf's summary) or `guidellm` (RESULTS/guidellm.json,
GuideLLM's report). Writes RESULTS/metrics.json (flat: name -> number, the unit at the end of the name) and
RESULTS/environment.json. Every figure of the tool keeps its own name, prefixed with the tool
(`aiperf.time_to_first_token.p99_ms`, `guidellm.time_per_output_token_ms.mean_ms`); the figures whose definition is
orchc's own (README "Conformance with AIPerf and GuideLLM") are also given under orchc's names (`ttft_p99_ms`,
`request_throughput_per_s`, ...). Standard library only; a missing or unreadable summary leaves no metrics, says why
on stderr and exits 1.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

AIPERF_UNITS = {"ms": "_ms", "sec": "_s", "requests/sec": "_per_s", "tokens/sec": "_per_s", "tokens/sec/user": "_per_s",
                "requests": "_count", "tokens": "_count", "count": "_count", "ratio": "_ratio", "%": "_percent"}
"""AIPerf's units and the ending orchc's metric names give them (README "Results"); other units are left out"""

AIPERF_STATS = ("avg", "min", "max", "p50", "p90", "p95", "p99", "std")

AIPERF_SHARED = {"ttft": "time_to_first_token"}
"""orchc's latency families whose definition AIPerf's metric shares (first content chunk - request sent)"""

GUIDELLM_SHARED = {"ttft": "time_to_first_token_ms"}

ORCHC_STATS = {"mean": "mean", "median": "p50", "p90": "p90", "p95": "p95", "p99": "p99", "min": "min", "max": "max"}


def number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def aiperf_metrics(summary: dict[str, Any]) -> dict[str, float | None]:
    """AIPerf's profile_export_aiperf.json: {METRIC: {"unit", "avg", "p50", ...}} -> aiperf.METRIC.STAT_UNIT, and
    orchc's names for TTFT, request and output-token throughput."""
    metrics: dict[str, float | None] = {}
    for name, entry in summary.items():
        if not isinstance(entry, dict) or entry.get("unit") not in AIPERF_UNITS:
            continue
        ending = AIPERF_UNITS[entry["unit"]]
        for stat in AIPERF_STATS:
            if stat in entry:
                metrics[f"aiperf.{name}.{stat}{ending}"] = number(entry[stat])
    for family, name in AIPERF_SHARED.items():
        entry = summary.get(name) or {}
        for label, stat in ORCHC_STATS.items():
            metrics[f"{family}_{label}_ms"] = number(entry.get("avg" if stat == "mean" else stat))
    metrics["request_throughput_per_s"] = number((summary.get("request_throughput") or {}).get("avg"))
    metrics["output_tokens_per_s"] = number((summary.get("output_token_throughput") or {}).get("avg"))
    metrics["requests_ok_count"] = number((summary.get("request_count") or {}).get("avg")) or 0.0
    metrics["requests_failed_count"] = number((summary.get("error_request_count") or {}).get("avg")) or 0.0
    return metrics


def guidellm_distribution(entry: dict[str, Any]) -> dict[str, float | None]:
    """GuideLLM's StatusDistributionSummary of the successful requests: mean, median, min, max, percentiles."""
    successful = entry.get("successful") or {}
    percentiles = successful.get("percentiles") or {}
    values = {stat: number(successful.get(stat)) for stat in ("mean", "min", "max")}
    values.update({stat: number(percentiles.get(stat)) for stat in ("p50", "p90", "p95", "p99")})
    return values


def guidellm_ending(name: str) -> str:
    if name.endswith("_ms"):
        return "_ms"
    if name.endswith("_per_second"):
        return "_per_s"
    return "_s" if name == "request_latency" else "_count"


def guidellm_metrics(report: dict[str, Any]) -> dict[str, float | None]:
    """GuideLLM's report: its first benchmark's metrics -> guidellm.METRIC.STAT_UNIT, and orchc's names for TTFT,
    request and output-token throughput."""
    benchmarks = report.get("benchmarks") or [{}]
    found = benchmarks[0].get("metrics") or {}
    metrics: dict[str, float | None] = {}
    for name, entry in found.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("successful"), dict):
            continue
        ending = guidellm_ending(name)
        for stat, value in guidellm_distribution(entry).items():
            metrics[f"guidellm.{name}.{stat}{ending}"] = value
    for family, name in GUIDELLM_SHARED.items():
        values = guidellm_distribution(found.get(name) or {})
        for label, stat in ORCHC_STATS.items():
            metrics[f"{family}_{label}_ms"] = values[stat]
    metrics["request_throughput_per_s"] = guidellm_distribution(found.get("requests_per_second") or {})["mean"]
    metrics["output_tokens_per_s"] = guidellm_distribution(found.get("output_tokens_per_second") or {})["mean"]
    totals = found.get("request_totals") or {}
    metrics["requests_ok_count"] = number(totals.get("successful")) or 0.0
    metrics["requests_failed_count"] = (number(totals.get("errored")) or 0.0) + (number(totals.get("incomplete")) or 0.0)
    return metrics


def environment(tool: str, document: dict[str, Any]) -> dict[str, Any]:
    if tool == "aiperf":
        return {"tool": "aiperf", "tool_version": document.get("aiperf_version")}
    return {"tool": "guidellm", "tool_version": (document.get("metadata") or {}).get("guidellm_version")}


SUMMARIES = {"aiperf": os.path.join("aiperf", "profile_export_aiperf.json"), "guidellm": "guidellm.json"}


def aiperf_first_error(results: str) -> tuple[int, str | None]:
    """How many of AIPerf's per-request records (aiperf/profile_export.jsonl, warm-up included) hold an error, and the
    first one's code, type and message."""
    count, first = 0, None
    try:
        with open(os.path.join(results, "aiperf", "profile_export.jsonl")) as records:
            for line in records:
                error = json.loads(line).get("error") if line.strip() else None
                if isinstance(error, dict):
                    count += 1
                    first = first or f"HTTP {error.get('code')} {error.get('type')}: {str(error.get('message'))[:300]}"
    except (OSError, ValueError):
        pass
    return count, first


def guidellm_first_error(report: dict[str, Any]) -> str | None:
    """The last line of the first errored request's error (GuideLLM keeps its traceback)."""
    errored = ((report.get("benchmarks") or [{}])[0].get("requests") or {}).get("errored") or []
    error = ((errored[0] if errored else {}).get("info") or {}).get("error")
    return str(error).strip().splitlines()[-1][:300] if error else None


def no_success(results: str, tool: str, failed: float, first: str | None) -> str:
    """The message, also left in RESULTS/error unless the job left one first (results.json's `error` is that file's)."""
    message = f"{tool}: none of its requests succeeded ({failed:g} failed){'; the first: ' + first if first else ''}"
    try:
        with open(os.path.join(results, "error"), "x") as out:
            out.write(message + "\n")
    except OSError:
        pass
    return "error: " + message


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in SUMMARIES:
        print("usage: peer_results.py aiperf|guidellm RESULTS", file=sys.stderr)
        return 2
    tool, results = argv[1], argv[2]
    path = os.path.join(results, SUMMARIES[tool])
    try:
        with open(path) as source:
            document = json.load(source)
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        failed, first = aiperf_first_error(results) if tool == "aiperf" else (0, None)
        unread = f"error: {tool} left no readable summary in {path}: {error}"
        print(no_success(results, tool, failed, first) if failed else unread, file=sys.stderr)
        return 1
    metrics = aiperf_metrics(document) if tool == "aiperf" else guidellm_metrics(document)
    for name, content in (("metrics.json", metrics), ("environment.json", environment(tool, document))):
        with open(os.path.join(results, name + ".tmp"), "w") as out:
            json.dump(content, out, sort_keys=True)
            out.write("\n")
        os.replace(os.path.join(results, name + ".tmp"), os.path.join(results, name))
    if not metrics["requests_ok_count"]:
        # GuideLLM ends with status 0 when every request failed (a wrong key: all 401): that is no measurement
        first = aiperf_first_error(results)[1] if tool == "aiperf" else guidellm_first_error(document)
        print(no_success(results, tool, metrics["requests_failed_count"] or 0, first), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

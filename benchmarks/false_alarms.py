"""How often `orchc compare --threshold` calls noise a regression, and how often it catches a real one (issue 19).

    python3 benchmarks/false_alarms.py [--seeds 2000] [--repeats 4] [--sigma 0.12] [--threshold 10]
                                       [--confidence 95] [--slowdown 2.0] [--cli 10]

Each trial simulates two runs of one client against a server whose speed drifts like a shared machine's: every
repeat runs in its own time window with a log-normal speed factor exp(N(0, sigma)) (seeded); throughput divides by
it, latencies multiply (each percentile with a little noise of its own, sigma 0.03 and 0.05). Run B is the same
server (false alarms) or one `--slowdown` times slower (detections). The comparison is compare.py's own
(compare_rows, threshold_failures on the same Side objects the CLI builds from run folders), with
`--threshold '*latency*=P' --threshold '*requests_per_s=P'`; `--cli N` also runs the first N trials through
`orchc compare` on run folders and checks it exits as the in-process comparison says.

The stated bound: with the whole interval required beyond +P%, a metric that did not change fails with
probability at most (100 - confidence) / 2 % (the interval lies wholly above the truth that often), so a gate
over k metrics at most k times that. Exit status 1 when a measured rate is above its bound.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compiler.results.compare import Judging, Side, compare_rows, parse_threshold, threshold_failures  # noqa: E402
from compiler.results.points import PointResult  # noqa: E402

METRICS = ("get.requests_per_s", "get.latency_p50_ms", "get.latency_p99_ms")


def drifting_metrics(rng: random.Random, sigma: float, slowdown: float) -> dict[str, float]:
    factor = slowdown * math.exp(rng.gauss(0.0, sigma))
    return {"get.requests_per_s": 100_000.0 / factor, "get.latency_p50_ms": 0.2 * factor * math.exp(rng.gauss(0, 0.03)),
            "get.latency_p99_ms": 0.9 * factor * math.exp(rng.gauss(0, 0.05))}


def results(metrics: dict[str, float]) -> dict[str, Any]:
    return {"schema": "orchc-results/1", "metrics": metrics, "status": "complete", "parameters": {}, "environment": {}}


def side(repeats: list[dict[str, float]]) -> dict[tuple[str, str], Side]:
    rows = [PointResult(None, {}, index, f"bench-r{index}", "redis_client", str(index), results(metrics))
            for index, metrics in enumerate(repeats, 1)]
    return {("{}", "bench"): Side(None, {}, rows)}


def failed_metrics(a: list[dict[str, float]], b: list[dict[str, float]], judging: Judging) -> set[str]:
    rows = compare_rows(side(a), side(b), judging)
    return {failure.split(": ")[0].split(", bench.")[1] for failure in threshold_failures(rows, list(judging.thresholds))}


def write_run(folder: Path, repeats: list[dict[str, float]]) -> None:
    """A run folder as tests/test_compare.py builds them: one service, one client with these repeats."""
    folder.mkdir(parents=True)
    names = [f"bench-r{index}" for index in range(1, len(repeats) + 1)]
    jobs = [{"name": name, "type": "redis_client", "role": "client", "target": None, "script": f"{name}.sbatch",
             "slurm_id": str(100 + index), "submitted": "2026-01-01T00:00:00Z"} for index, name in enumerate(names)]
    (folder / "run.json").write_text(json.dumps({"recipe": "r", "site": "local", "created": "2026-01-01T00:00:00Z",
                                                 "run_dir": str(folder), "state": "submitted", "error": None, "jobs": jobs}))
    (folder / "manifest.json").write_text(json.dumps({"recipe": "r", "jobs": [
        {"name": name, "repeat": index} for index, name in enumerate(names, 1)]}))
    for name, metrics in zip(names, repeats, strict=True):
        (folder / "results" / name).mkdir(parents=True)
        (folder / "results" / name / "results.json").write_text(json.dumps(results(metrics)))


def cli_fails(a: list[dict[str, float]], b: list[dict[str, float]], args: argparse.Namespace) -> bool:
    with tempfile.TemporaryDirectory() as scratch:
        write_run(Path(scratch) / "a", a)
        write_run(Path(scratch) / "b", b)
        done = subprocess.run([sys.executable, "-m", "compiler", "compare", "a", "b", "--confidence", str(args.confidence),
                               "--threshold", f"*latency*={args.threshold}",
                               "--threshold", f"*requests_per_s={args.threshold}"],
                              cwd=scratch, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        if done.returncode not in (0, 1):
            raise SystemExit(f"orchc compare failed: {done.stderr}")
        return done.returncode == 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--sigma", type=float, default=0.12)
    parser.add_argument("--threshold", type=float, default=10.0)
    parser.add_argument("--confidence", type=float, default=95.0)
    parser.add_argument("--slowdown", type=float, default=2.0)
    parser.add_argument("--cli", type=int, default=10, help="trials also run through `orchc compare` (default 10)")
    args = parser.parse_args()
    thresholds = (parse_threshold(f"*latency*={args.threshold:g}"), parse_threshold(f"*requests_per_s={args.threshold:g}"))
    judging = Judging(args.confidence, False, thresholds)
    per_metric = dict.fromkeys(METRICS, 0)
    any_false = detected = 0
    for seed in range(args.seeds):
        rng = random.Random(seed)
        a = [drifting_metrics(rng, args.sigma, 1.0) for _ in range(args.repeats)]
        same = [drifting_metrics(rng, args.sigma, 1.0) for _ in range(args.repeats)]
        slow = [drifting_metrics(rng, args.sigma, args.slowdown) for _ in range(args.repeats)]
        failed = failed_metrics(a, same, judging)
        for metric in failed:
            per_metric[metric] += 1
        any_false += bool(failed)
        detected += failed_metrics(a, slow, judging) == set(METRICS)
        if seed < args.cli and cli_fails(a, same, args) != bool(failed):
            raise SystemExit(f"seed {seed}: orchc compare disagrees with the in-process comparison")
    bound = (100 - args.confidence) / 2
    print(f"{args.seeds} trials, {args.repeats} repeats per run, drift sigma {args.sigma:g} per repeat, thresholds "
          f"{args.threshold:g}%, confidence {args.confidence:g}% ({min(args.cli, args.seeds)} also through the CLI: agree)")
    worst = 0.0
    for metric, count in per_metric.items():
        rate = count / args.seeds * 100
        worst = max(worst, rate)
        print(f"  false alarms on {metric}: {count} = {rate:.2f}% (bound {bound:g}%)")
    family = any_false / args.seeds * 100
    print(f"  false alarms, any of {len(METRICS)} metrics: {any_false} = {family:.2f}% (bound {len(METRICS) * bound:g}%)")
    print(f"  a {args.slowdown:g}x slowdown caught on all {len(METRICS)} metrics: {detected} = "
          f"{detected / args.seeds * 100:.1f}%")
    return 0 if worst <= bound and family <= len(METRICS) * bound else 1


if __name__ == "__main__":
    sys.exit(main())

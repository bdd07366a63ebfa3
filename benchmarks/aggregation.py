"""Time `orchc results`, `compare` and `report` on a sweep whose client reports many metrics (issue 17: 20,000
metrics took 182 s in `report`, quadratic aggregation).

    python3 benchmarks/aggregation.py [--metrics 20000] [--points 3] [--repeat 2] [--grouped] [--keep DIR]

Builds two run folders by hand (run.json, manifest.json, results/<job>/results.json, the shapes the compile
side and the clients write) and runs each command once through the CLI, printing its wall time. Metric names
are generic counters (`m00001_count`), so that `report` draws no plot and the time is the aggregation's;
`--grouped` names them as clients do, in groups of four (`g1.requests_per_s`, `g1.latency_p50_ms`,
`g1.latency_p99_ms`, `g1.errors_count`), so that `report` pairs latencies, finds knees and draws its plots
(at most htmlreport.MAX_PLOTS).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


LEAVES = ("requests_per_s", "latency_p50_ms", "latency_p99_ms", "errors_count")


def metric_names(metrics: int, grouped: bool) -> list[str]:
    if grouped:
        return [f"g{i // len(LEAVES)}.{LEAVES[i % len(LEAVES)]}" for i in range(metrics)]
    return [f"m{i:05d}_count" for i in range(metrics)]


def write_run(folder: Path, metrics: int, points: int, repeat: int, shift: float = 0.0, grouped: bool = False) -> Path:
    """A sweep of `points` points x `repeat` repeats of one client `bench`, each reporting `metrics` metrics."""
    folder.mkdir(parents=True)
    names = [f"bench-p{p:02d}-r{r}" for p in range(1, points + 1) for r in range(1, repeat + 1)]
    jobs = [{"name": name, "type": "redis_client", "role": "client", "target": None, "script": f"{name}.sbatch",
             "slurm_id": str(100 + index), "submitted": "2026-01-01T00:00:00Z"} for index, name in enumerate(names)]
    (folder / "run.json").write_text(json.dumps({
        "recipe": "r", "site": "local", "created": "2026-01-01T00:00:00Z", "run_dir": str(folder),
        "state": "submitted", "error": None, "jobs": jobs}))
    sweep = {"keys": ["bench.clients"], "repeat": repeat,
             "points": [{"point": f"p{p:02d}", "values": {"bench.clients": 10 * p}} for p in range(1, points + 1)]}
    manifest = {"recipe": "r", "sweep": sweep, "jobs": [
        {"name": name, "point": name.split("-")[1], "repeat": int(name.rsplit("-r", 1)[1])} for name in names]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for index, name in enumerate(names):
        values = {name: i + index + shift for i, name in enumerate(metric_names(metrics, grouped))}
        (folder / "results" / name).mkdir(parents=True)
        (folder / "results" / name / "results.json").write_text(json.dumps({
            "schema": "orchc-results/1", "metrics": values, "status": "complete", "parameters": {},
            "environment": {}}))
    return folder


def timed(*args: str, cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "compiler", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"orchc {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metrics", type=int, default=20000)
    parser.add_argument("--points", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--grouped", action="store_true", help="metric names in groups, as clients write them")
    parser.add_argument("--keep", type=Path, help="build the runs here and keep them (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        where = args.keep or Path(temporary)
        write_run(where / "a", args.metrics, args.points, args.repeat, grouped=args.grouped)
        write_run(where / "b", args.metrics, args.points, args.repeat, shift=0.5, grouped=args.grouped)
        print(f"{args.metrics} metrics x {args.points} points x {args.repeat} repeats per run")
        for command in (("results", "a"), ("results", "a", "--csv"), ("compare", "a", "b"),
                        ("compare", "a", "b", "--csv"), ("report", "a")):
            print(f"orchc {' '.join(command):<24} {timed(*command, cwd=where):8.2f} s", flush=True)


if __name__ == "__main__":
    main()

"""Time the redis recipe on a real SLURM cluster: `orchc submit` to every job COMPLETED,
and the overhead of `orchc submit` over calling sbatch by hand for the same scripts.

    python3 benchmarks/submit_bench.py [--repeat R]

Needs a cluster (bash tests/cluster/start.sh) and redis-server / redis-benchmark (tests/install-deps.sh).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = """site: local
service:
  name: redis
  ports: [{port}]
  data_dir: /tmp/orchc-bench-redis
client:
  name: bench
  type: redis_client
  requests: 20000
  tests: [set, get]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def orchc(*args: object, cwd: Path) -> str:
    return subprocess.run([sys.executable, "-m", "compiler", *map(str, args)], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout


def state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True).stdout
    return next((f.split("=", 1)[1] for f in out.split() if f.startswith("JobState=")), "UNKNOWN")


def wait_all(job_ids: list[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [state(job) for job in job_ids]
        if all(s in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") for s in states):
            if states != ["COMPLETED"] * len(states):
                raise SystemExit(f"jobs ended as {states}")
            return
        time.sleep(0.1)
    raise SystemExit("timed out")


def submit_to_completed(folder: Path) -> tuple[float, float]:
    (folder / "redis.yaml").write_text(RECIPE.format(port=free_port()))
    start = time.perf_counter()
    orchc("submit", "redis.yaml", "--run-dir", folder / "run", cwd=folder)
    submitted = time.perf_counter() - start
    run = json.loads((folder / "run" / "run.json").read_text())
    wait_all([job["slurm_id"] for job in run["jobs"]])
    return submitted, time.perf_counter() - start


def sbatch_by_hand(folder: Path) -> tuple[float, list[str]]:
    """Submit already compiled scripts the way submit.sh does: two sbatch calls."""
    start = time.perf_counter()
    first = subprocess.run(["sbatch", "--parsable", "redis.sbatch"], cwd=folder, check=True,
                           capture_output=True, text=True).stdout.strip()
    second = subprocess.run(["sbatch", "--parsable", f"--dependency=after:{first}",
                             f"--export=ALL,ORCHC_TARGET_JOB_ID={first}", "bench.sbatch"], cwd=folder, check=True,
                            capture_output=True, text=True).stdout.strip()
    return time.perf_counter() - start, [first, second]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    submit_times, complete_times, manual_times = [], [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            submitted, completed = submit_to_completed(Path(tmp))
            submit_times.append(submitted)
            complete_times.append(completed)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "redis.yaml").write_text(RECIPE.format(port=free_port()))
            orchc("compile", "redis.yaml", "-o", folder, cwd=folder)
            manual, ids = sbatch_by_hand(folder / "redis")
            manual_times.append(manual)
            wait_all(ids)
    med = statistics.median
    print(f"redis recipe, orchc submit -> every job COMPLETED: median {med(complete_times):.2f} s "
          f"(min {min(complete_times):.2f}, max {max(complete_times):.2f}) over {args.repeat} runs")
    print(f"orchc submit (compile + 2 sbatch + run.json): median {med(submit_times):.3f} s; "
          f"the same 2 sbatch calls by hand: median {med(manual_times):.3f} s; "
          f"overhead {med(submit_times) - med(manual_times):.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

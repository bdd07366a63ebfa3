"""Runs: a compiled recipe submitted to SLURM, recorded in `<run dir>/run.json`.

Lifecycle of a job: Created (compiled into the run dir) -> Submitted (sbatch) ->
PENDING -> RUNNING -> COMPLETED / FAILED / CANCELLED / TIMEOUT. The run dir is
where the jobs run (sbatch's working directory): their logs, the services'
endpoint files and the clients' results all land there.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .emit import Output, submission_order, write_atomic, write_files
from .errors import ClusterError
from .slurm import JobState, job_state, require, sbatch, scancel

RUN_FILE = "run.json"
DEFAULT_ROOT = Path("runs")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_dir(recipe: str, root: Path = DEFAULT_ROOT) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    candidate, index = root / f"{recipe}-{stamp}", 1
    while candidate.exists():
        index += 1
        candidate = root / f"{recipe}-{stamp}-{index}"
    return candidate


def save_run(run_dir: Path, run: dict[str, Any]) -> None:
    write_atomic(run_dir / RUN_FILE, json.dumps(run, indent=2, sort_keys=True) + "\n")


def load_run(ref: str | None, root: Path = DEFAULT_ROOT) -> tuple[Path, dict[str, Any]]:
    """A run by folder (or name under runs/); the latest run when `ref` is None."""
    if ref is None:
        runs = sorted((_created(path), path.parent.name, path.parent) for path in root.glob(f"*/{RUN_FILE}"))
        if not runs:
            raise ClusterError(f"no runs under {root}/; start one with `orchc submit RECIPE`")
        run_dir = runs[-1][2]
    else:
        run_dir = Path(ref) if Path(ref).is_dir() else root / ref
    try:
        run = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ClusterError(f"{run_dir}: not an orchc run ({exc})") from None
    if not _well_formed(run):
        raise ClusterError(f"{run_dir / RUN_FILE} is damaged: it does not list the run's jobs")
    return run_dir, run


def _created(path: Path) -> str:
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("created", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def _well_formed(run: Any) -> bool:
    jobs = run.get("jobs") if isinstance(run, dict) else None
    return isinstance(jobs, list) and all(
        isinstance(job, dict) and all(isinstance(job.get(key), str) for key in ("name", "role", "slurm_id"))
        for job in jobs)


def submit(output: Output, run_dir: Path) -> dict[str, Any]:
    """Write the compiled recipe into `run_dir` and submit its jobs in dependency order.

    If an sbatch fails, the jobs already submitted are cancelled and the run is
    recorded as failed before the error is raised.
    """
    require("sbatch")
    try:
        run_dir.mkdir(parents=True)
    except FileExistsError:
        raise ClusterError(f"run folder {run_dir} already exists; choose another --run-dir") from None
    write_files(run_dir, output.files)
    absolute = run_dir.resolve()
    run: dict[str, Any] = {"recipe": output.recipe.name, "site": output.recipe.site.name, "created": _now(),
                           "run_dir": str(absolute), "state": "submitting", "error": None, "jobs": []}
    ids: dict[str, str] = {}
    for job in submission_order(output.recipe):
        target = job.data.get("target")
        env = f"ALL,ORCHC_RUN_DIR={absolute}"
        options = []
        if target:
            options.append(f"--dependency=after:{ids[target]}")
            env += f",ORCHC_TARGET_JOB_ID={ids[target]}"
        options.append(f"--export={env}")
        try:
            ids[job.name] = sbatch(absolute / f"{job.name}.sbatch", options, absolute)
        except ClusterError as error:
            scancel(list(ids.values()))
            run.update(state="failed", error=str(error))
            save_run(run_dir, run)
            cancelled = f"; cancelled the jobs already submitted ({', '.join(ids)})" if ids else ""
            raise ClusterError(f"{error}{cancelled}; run recorded in {run_dir}") from None
        run["jobs"].append({"name": job.name, "type": job.typedef.name, "role": job.role, "target": target,
                            "script": f"{job.name}.sbatch", "slurm_id": ids[job.name], "submitted": _now()})
        save_run(run_dir, run)
    run["state"] = "submitted"
    save_run(run_dir, run)
    return run


def states(run: dict[str, Any]) -> dict[str, JobState]:
    return {job["name"]: job_state(job["slurm_id"]) for job in run["jobs"]}


def cancel(run: dict[str, Any], names: list[str]) -> list[str]:
    known = {job["name"]: job["slurm_id"] for job in run["jobs"]}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ClusterError(f"no job {', '.join(unknown)} in this run (it has: {', '.join(known)})")
    ids = [known[name] for name in (names or known)]
    scancel(ids)
    return ids


def log_files(run_dir: Path, run: dict[str, Any], name: str) -> list[Path]:
    job = next((job for job in run["jobs"] if job["name"] == name), None)
    if job is None:
        raise ClusterError(f"no job {name} in this run (it has: {', '.join(j['name'] for j in run['jobs'])})")
    return [run_dir / f"slurm-{job['slurm_id']}.{ext}" for ext in ("out", "err")]


def results(run_dir: Path, run: dict[str, Any]) -> dict[str, Any]:
    """Each client's results.json (partial or complete), by client name."""
    collected: dict[str, Any] = {}
    for job in run["jobs"]:
        if job["role"] != "client":
            continue
        folder = run_dir / "results" / job["name"]
        try:
            data = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            data = None
        except ValueError as exc:
            data = {"error": f"unreadable results.json: {exc}"}
        stopped = folder / "stopped"
        if stopped.exists():
            data = {**(data or {}), "stopped_by": stopped.read_text().strip()}
        collected[job["name"]] = data
    return collected


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested results -> (dotted metric, value) rows."""
    if isinstance(value, dict):
        return [row for key, child in value.items() for row in flatten(child, f"{prefix}{key}.")]
    return [(prefix.rstrip("."), value)]

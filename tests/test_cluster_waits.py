"""Waits that follow reality, on the test cluster (issue 20, item 2): a client whose service prepares for longer than
the client's whole target_timeout still runs and finishes with results; a client whose service is cancelled while it
prepares stops at once, naming it. Redis runs natively (`--site local`).

Like tests/test_cluster.py, these skip without a cluster and fail under CI=true.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import in_ci
from test_cluster import cluster, free_port, needs_redis, orchc, status, wait_for

__all__ = ["cluster", "needs_redis"]   # the fixtures, imported for the tests below
pytestmark = pytest.mark.cluster

ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")

# Redis that prepares (as a first run builds its image and downloads its model) for PREPARE seconds before it starts.
SLOW_REDIS = """\
type: slow_redis
extends: redis
fields:
  prepare_seconds: {type: integer, minimum: 0, default: 0}
phases:
  setup:
    - orchc_log "preparing for {{ prepare_seconds }} s"
    - sleep {{ prepare_seconds }}
    - mkdir -p {{ data_dir | path }}
"""


def slow_recipe(tmp_path: Path, prepare: int, client: str) -> Path:
    (tmp_path / "defs").mkdir(exist_ok=True)
    (tmp_path / "defs" / "slow_redis.yaml").write_text(SLOW_REDIS)
    recipe = tmp_path / "slow.yaml"
    recipe.write_text(f"site: local\nservice:\n  name: svc\n  type: slow_redis\n  auth: none\n  ports: [{free_port()}]\n"
                      f"  prepare_seconds: {prepare}\n  data_dir: {tmp_path}/data\n  resources: {{time: '00:05:00'}}\n"
                      f"client:\n  name: bench\n  type: redis_client\n  resources: {{time: '00:05:00'}}\n{client}")
    return recipe


def logs(run: Path) -> str:
    return "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(run.glob("slurm-*")))


def client_log(run: Path) -> str:
    client_id = next(job["slurm_id"] for job in json.loads((run / "run.json").read_text())["jobs"] if job["name"] == "bench")
    path = run / f"slurm-{client_id}.err"
    return path.read_text() if path.exists() else ""


def test_a_client_outwaits_a_service_that_prepares_longer_than_its_target_timeout(cluster, needs_redis, tmp_path):
    """The defect: `published no endpoint within 600 s` while the service was still preparing. Here it prepares for
    35 s and the client's budget is 5 s (and it says what it waits for after 30 s)."""
    recipe = slow_recipe(tmp_path, 35, "  target_timeout: 5\n  requests: 2000\n  tests: [set]\n")
    run = tmp_path / "run"
    orchc("submit", recipe, "--defs", "defs", "--run-dir", run, cwd=tmp_path)
    jobs = wait_for(lambda: (lambda s: s if all(j["state"] in ENDED for j in s.values()) else None)(status(run)),
                    150, "both jobs to end", interval=1)
    assert {name: job["state"] for name, job in jobs.items()} == {"svc": "COMPLETED", "bench": "COMPLETED"}, logs(run)
    results = json.loads((run / "results" / "bench" / "results.json").read_text())
    assert results["status"] == "complete" and results["metrics"]["set.requests_per_s"] > 0, results
    said = client_log(run)
    assert "still waiting for service svc (job " in said and "): preparing, SLURM state RUNNING" in said, said
    assert (run / "phases" / "svc").read_text().split()[1] == "ended"


def test_a_client_stops_at_once_when_its_preparing_service_is_cancelled(cluster, needs_redis, tmp_path):
    recipe = slow_recipe(tmp_path, 240, "  target_timeout: 600\n")
    run = tmp_path / "run"
    orchc("submit", recipe, "--defs", "defs", "--run-dir", run, cwd=tmp_path)
    try:
        wait_for(lambda: "waiting for service svc" in client_log(run), 60, "the client to wait for its service")
        cancelled = time.monotonic()
        orchc("cancel", run, "svc", cwd=tmp_path)
        wait_for(lambda: status(run)["bench"]["state"] in ENDED, 30, "the client to stop")
        took = time.monotonic() - cancelled
    finally:
        orchc("cancel", run, cwd=tmp_path, check=False)
    assert status(run)["bench"]["state"] == "FAILED"
    svc_id = next(job["slurm_id"] for job in json.loads((run / "run.json").read_text())["jobs"] if job["name"] == "svc")
    said = client_log(run)
    assert f"service svc (job {svc_id}) ended without publishing an endpoint (exit status " in said, said
    assert took < 20, f"the client took {took:.0f} s to stop"


def test_prometheus_starts_at_once_and_picks_up_a_target_of_the_recipe_as_it_appears(cluster, needs_redis, tmp_path):
    """The defect: Prometheus waited (up to 3,600 s) in orchc_fill_hosts for the host of every job its monitoring_targets
    name before it started at all. Here redis prepares for 30 s: Prometheus is ready before it, and scrapes it after."""
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is missing; run tests/install-deps.sh") if in_ci() else pytest.skip("no prometheus")
    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "slow_redis.yaml").write_text(SLOW_REDIS)
    redis_port, prometheus_port = free_port(), free_port()
    (tmp_path / "stack.yaml").write_text(
        f"site: local\nservices:\n  - name: svc\n    type: slow_redis\n    auth: none\n    ports: [{redis_port}]\n"
        f"    prepare_seconds: 30\n    data_dir: {tmp_path}/data\n    keep_running: true\n"
        f"  - name: prometheus\n    ports: [{prometheus_port}]\n    monitoring_targets: ['svc:{redis_port}']\n"
        f"    scrape_interval: 2s\n    storage_dir: {tmp_path}/tsdb\n")
    run = tmp_path / "run"
    orchc("submit", "stack.yaml", "--defs", "defs", "--run-dir", run, cwd=tmp_path)
    try:
        wait_for(lambda: (run / "endpoints" / "prometheus").exists(), 25, "prometheus to become ready before svc")
        assert not (run / "endpoints" / "svc").exists(), "svc was ready first: the test proves nothing"
        wait_for(lambda: (run / "endpoints" / "svc").exists(), 60, "svc to become ready")
        host = (run / "endpoints" / "svc").read_text().split()[1]

        def scraped() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{prometheus_port}/api/v1/targets", timeout=5) as answer:
                targets = json.load(answer)["data"]["activeTargets"]
            return any(t["labels"].get("job") == "orchc" and t["scrapeUrl"].startswith(f"http://{host}:{redis_port}/")
                       for t in targets)

        wait_for(scraped, 30, "prometheus to scrape svc", interval=1)
        checked = subprocess.run(["promtool", "check", "config", str(run / "config" / "prometheus" / "prometheus.yml")],
                                 capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        orchc("cancel", run, cwd=tmp_path)


def test_the_monitoring_stack_and_an_untargeted_service_stop_when_the_recipes_last_client_ends(cluster, needs_redis, tmp_path):
    """The defect: Prometheus (and a service no client targets) held its node to its time limit and ended TIMEOUT."""
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is missing; run tests/install-deps.sh") if in_ci() else pytest.skip("no prometheus")
    redis_port, spare_port, prometheus_port = free_port(), free_port(), free_port()
    (tmp_path / "stack.yaml").write_text(
        f"site: local\nresources: {{time: '00:10:00'}}\nservices:\n"
        f"  - name: redis\n    auth: none\n    ports: [{redis_port}]\n    data_dir: {tmp_path}/data\n"
        f"  - name: spare\n    type: redis\n    auth: none\n    ports: [{spare_port}]\n    data_dir: {tmp_path}/spare\n"
        f"  - name: prometheus\n    ports: [{prometheus_port}]\n    storage_dir: {tmp_path}/tsdb\n"
        f"client:\n  name: bench\n  type: redis_client\n  target: redis\n  requests: 2000\n  tests: [set]\n")
    run = tmp_path / "run"
    orchc("submit", "stack.yaml", "--run-dir", run, cwd=tmp_path)
    try:
        jobs = wait_for(lambda: (lambda s: s if all(j["state"] in ENDED for j in s.values()) else None)(status(run)),
                        120, "every job to end", interval=1)
    finally:
        orchc("cancel", run, cwd=tmp_path, check=False)
    assert {name: job["state"] for name, job in jobs.items()} == {
        "redis": "COMPLETED", "spare": "COMPLETED", "prometheus": "COMPLETED", "bench": "COMPLETED"}, logs(run)

"""The database clients end to end on the test cluster, against MariaDB run natively (`--site local`):
sysbench_client (OLTP, its password never on an argv) and mysql_client's indexed, fixed-size default.

Like tests/test_cluster.py, these skip without a cluster and fail under CI=true.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import in_ci
from test_cluster import cluster, free_port, orchc, status, wait_for

__all__ = ["cluster"]   # the fixture, imported for the tests below
pytestmark = pytest.mark.cluster

ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")


def need(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        message = f"{', '.join(missing)} missing; run tests/install-deps.sh"
        pytest.fail(f"CI=true but {message}") if in_ci() else pytest.skip(message)


def mysql_recipe(tmp_path: Path, client: str) -> Path:
    secret = tmp_path / "secrets" / "root_password"
    recipe = tmp_path / "db.yaml"
    recipe.write_text(
        f"site: local\nservice:\n  name: db\n  type: mysql\n  ports: [{free_port()}]\n  data_dir: {tmp_path}/data\n"
        f"  root_password: {{file: {secret}}}\n  resources: {{time: '00:05:00'}}\n"
        f"client:\n  root_password: {{file: {secret}}}\n  resources: {{time: '00:05:00'}}\n{client}")
    return recipe


def ended(run: Path):
    jobs = status(run)
    return jobs if all(job["state"] in ENDED for job in jobs.values()) else None


def logs(run: Path) -> str:
    return "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(run.glob("slurm-*")))


def cmdlines() -> dict[int, bytes]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes()
            except OSError:
                pass
    return found


def test_sysbench_oltp_against_mariadb_with_the_password_never_on_an_argv(cluster, tmp_path):
    need("mysqld", "mysql", "sysbench")
    recipe = mysql_recipe(tmp_path, "  name: oltp\n  type: sysbench_client\n  workload: oltp_read_write\n"
                                    "  tables: 2\n  table_size: 2000\n  threads: 4\n  duration: 20\n"
                                    "  report_interval: 2\n  percentile: 99\n  histogram: true\n")
    run = tmp_path / "run"
    orchc("submit", recipe, "--run-dir", run, cwd=tmp_path)
    secret = tmp_path / "secrets" / "root_password"
    wait_for(lambda: secret.exists(), 60, "the secret to be generated")
    password = secret.read_text().strip().encode()
    assert len(password) >= 20

    # While the client runs: every process's command line, sysbench's among them, is free of the password.
    seen_sysbench: list[bytes] = []

    def watch() -> bool:
        for pid, line in cmdlines().items():
            assert password not in line, f"the password is on the command line of pid {pid}: {line[:200]!r}"
            if line.startswith(b"sysbench\0") and b"run\0" in line:
                seen_sysbench.append(line)
        return ended(run) is not None

    wait_for(watch, 150, "sysbench and MariaDB to end", interval=0.2)
    jobs = ended(run)
    assert {name: job["state"] for name, job in jobs.items()} == {"db": "COMPLETED", "oltp": "COMPLETED"}, logs(run)
    assert seen_sysbench, "never saw sysbench run, so its command line was not checked"
    argv = seen_sysbench[0].split(b"\0")
    assert any(arg.startswith(b"--config-file=/dev/fd/") for arg in argv), argv
    assert not any(arg.startswith(b"--mysql-password") for arg in argv), argv

    results = json.loads((run / "results" / "oltp" / "results.json").read_text())
    assert results["tool"] == "sysbench" and results["status"] == "complete", results
    metrics = results["metrics"]
    for name in ("transactions_per_s", "queries_per_s", "latency_min_ms", "latency_mean_ms", "latency_max_ms",
                 "latency_p99_ms", "transactions_count", "queries_count", "total_time_s"):
        assert metrics[name] > 0, (name, metrics)
    assert metrics["latency_min_ms"] <= metrics["latency_mean_ms"] <= metrics["latency_max_ms"]
    assert metrics["latency_min_ms"] <= metrics["latency_p99_ms"] <= metrics["latency_max_ms"]
    assert metrics["errors_count"] >= 0 and metrics["reconnects_count"] == 0
    # read-write: writes happened; the rate is the count over sysbench's own total time
    assert metrics["queries_write_count"] > 0
    assert metrics["transactions_per_s"] == pytest.approx(metrics["transactions_count"] / metrics["total_time_s"], rel=0.01)
    assert results["environment"]["reported"]["sysbench_version"].startswith("sysbench 1.")
    assert "MariaDB" in results["environment"]["reported"]["server_version"]

    folder = run / "results" / "oltp"
    intervals = (folder / "intervals.txt").read_text().splitlines()
    assert len(intervals) >= 3 and all(line.startswith("[ ") and " tps: " in line for line in intervals), intervals
    histogram = (folder / "histogram.tsv").read_text().splitlines()
    assert histogram[0] == "latency_ms\tcount" and len(histogram) > 2
    assert sum(int(line.split("\t")[1]) for line in histogram[1:]) == metrics["events_count"]
    # sysbench cleaned up: the tables and the scratch database are gone
    assert "Dropping table" in (folder / "sysbench-cleanup.txt").read_text()
    for path in run.rglob("*"):
        if path.is_file():
            assert password not in path.read_bytes(), path


def test_mysqlslap_default_reads_by_key_a_table_that_does_not_grow(cluster, tmp_path):
    need("mysqld", "mysqlslap")
    recipe = mysql_recipe(tmp_path, "  name: slap\n  type: mysql_client\n  concurrency: 4\n  iterations: 3\n"
                                    "  number_of_queries: 4000\n")
    run = tmp_path / "run"
    orchc("submit", recipe, "--run-dir", run, cwd=tmp_path)
    jobs = wait_for(lambda: ended(run), 120, "MariaDB and mysqlslap to end", interval=0.5)
    assert {name: job["state"] for name, job in jobs.items()} == {"db": "COMPLETED", "slap": "COMPLETED"}, logs(run)
    results = json.loads((run / "results" / "slap" / "results.json").read_text())
    assert results["tool"] == "mysqlslap" and results["parameters"]["load_type"] == "key"
    metrics = results["metrics"]
    assert metrics["runs_count"] == 3 and metrics["queries_count"] == 3 * 4000
    assert 0 < metrics["run_time_min_s"] <= metrics["run_time_mean_s"] <= metrics["run_time_max_s"]
    # the definitions: queries over the summed run time; per query, run time * concurrency / queries
    summed = metrics["run_time_mean_s"] * 3
    assert metrics["queries_per_s"] == pytest.approx(12000 / summed, rel=0.01)
    assert metrics["query_latency_mean_ms"] == pytest.approx(1000 * summed / (3 * 1000), rel=0.01)
    # the generated statements: primary-key reads, not full scans, on an indexed AUTO_INCREMENT table
    script = (run / "slap.sbatch").read_text()
    assert "--auto-generate-sql-load-type=key --auto-generate-sql-add-autoincrement" in script
    assert "--auto-generate-sql-secondary-indexes=1" in script


def test_mysqlslap_key_speed_does_not_fall_with_the_number_of_queries(cluster, tmp_path):
    """The issue's complaint: mixed fell from 1,834 to 646 q/s between 2,000 and 20,000 queries (the table grew)."""
    need("mysqld", "mysqlslap")
    rates = []
    for queries in (2000, 20000):
        folder = tmp_path / str(queries)
        folder.mkdir()
        recipe = mysql_recipe(folder, f"  name: slap\n  type: mysql_client\n  iterations: 2\n  number_of_queries: {queries}\n")
        run = folder / "run"
        orchc("submit", recipe, "--run-dir", run, cwd=folder)
        wait_for(lambda run=run: ended(run), 180, "mysqlslap to end", interval=0.5)
        rates.append(json.loads((run / "results" / "slap" / "results.json").read_text())["metrics"]["queries_per_s"])
    # Before the fix the rate fell to 0.35 of the first; this shared machine moves one run's rate by up to
    # a third, so the bound sits between the two.
    assert rates[1] > 0.5 * rates[0], rates


def mysql_placement_recipe(tmp_path: Path, service: str) -> Path:
    """A mysql service (no data_dir: its `data` choice places it) on a site whose node-local disk is tmp_path/node-local."""
    secret = tmp_path / "secrets" / "root_password"
    recipe = tmp_path / "db.yaml"
    recipe.write_text(
        f"site: local\nstorage: {{local: {tmp_path}/node-local}}\n"
        f"service:\n  name: db\n  type: mysql\n  ports: [{free_port()}]\n  root_password: {{file: {secret}}}\n"
        f"  resources: {{time: '00:05:00'}}\n{service}"
        f"client:\n  name: slap\n  type: mysql_client\n  root_password: {{file: {secret}}}\n  iterations: 1\n"
        f"  number_of_queries: 200\n  resources: {{time: '00:05:00'}}\n")
    return recipe


def test_mysql_keeps_its_data_on_the_nodes_local_disk_by_default_and_the_client_records_where(cluster, tmp_path):
    """A figure measured on Lustre does not compare with one on a local disk: by default the data folder is on the
    site's node-local storage (removed when the job ends), and the client's results say so, with the buffer pool and
    the fsync-per-commit setting the server really ran with."""
    need("mysqld", "mysqlslap")
    recipe = mysql_placement_recipe(tmp_path, "  buffer_pool_size: 64M\n")
    run = tmp_path / "run"
    orchc("submit", recipe, "--run-dir", run, cwd=tmp_path)
    jobs = wait_for(lambda: ended(run), 120, "MariaDB and mysqlslap to end", interval=0.5)
    assert {name: job["state"] for name, job in jobs.items()} == {"db": "COMPLETED", "slap": "COMPLETED"}, logs(run)
    parameters = json.loads((run / "results" / "slap" / "results.json").read_text())["parameters"]
    assert parameters["target_data"] == "local"
    assert parameters["server_datadir"].startswith(f"{tmp_path}/node-local/"), parameters
    assert parameters["server_innodb_buffer_pool_size"] == str(64 * 1024 * 1024)
    assert parameters["server_innodb_flush_log_at_trx_commit"] == "1"
    assert not (run / "data" / "db" / "mysql").exists()
    # the node-local folder went with the job that made it
    assert (tmp_path / "node-local").is_dir() and not any((tmp_path / "node-local").iterdir())


def test_mysql_data_on_shared_storage_is_an_explicit_choice_the_results_record(cluster, tmp_path):
    need("mysqld", "mysqlslap")
    recipe = mysql_placement_recipe(tmp_path, "  data: shared\n  flush_log_at_trx_commit: 2\n")
    run = tmp_path / "run"
    orchc("submit", recipe, "--run-dir", run, cwd=tmp_path)
    jobs = wait_for(lambda: ended(run), 120, "MariaDB and mysqlslap to end", interval=0.5)
    assert {name: job["state"] for name, job in jobs.items()} == {"db": "COMPLETED", "slap": "COMPLETED"}, logs(run)
    parameters = json.loads((run / "results" / "slap" / "results.json").read_text())["parameters"]
    assert parameters["target_data"] == "shared"
    assert parameters["server_innodb_flush_log_at_trx_commit"] == "2"
    assert (run / "data" / "db" / "mysql" / "mysql").is_dir()
    assert parameters["server_datadir"].rstrip("/") == str(run / "data" / "db" / "mysql")

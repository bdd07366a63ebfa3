"""End to end on a real SLURM cluster (tests/cluster/start.sh brings one up on loopback).

Without a reachable cluster these tests skip with a one-line reason; under CI=true they fail instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import EXAMPLES, ROOT, in_ci

START_HINT = "start the test cluster with `bash tests/cluster/start.sh` (as root)"


def _cluster_problem() -> str | None:
    if shutil.which("sbatch") is None:
        return f"no SLURM commands on PATH; {START_HINT}"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    if "is UP" not in ping.stdout:
        return f"no SLURM controller reachable; {START_HINT}"
    return None


@pytest.fixture(scope="module")
def cluster() -> None:
    problem = _cluster_problem()
    if problem and in_ci():
        pytest.fail(f"CI=true but {problem}")
    if problem:
        pytest.skip(problem)


@pytest.fixture
def needs_redis() -> None:
    missing = [tool for tool in ("redis-server", "redis-benchmark", "redis-cli") if shutil.which(tool) is None]
    if missing and in_ci():
        pytest.fail(f"CI=true but {', '.join(missing)} missing; run tests/install-deps.sh")
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed; run tests/install-deps.sh")


def gpu_nodes() -> dict[str, int]:
    """Each node of the gpu partition and its GPUs, as sinfo says (gres gpu:N or gpu:TYPE:N)."""
    found = subprocess.run(["sinfo", "-h", "-N", "-p", "gpu", "-o", "%N %G"], capture_output=True, text=True, timeout=30).stdout
    nodes = {}
    for line in found.splitlines():
        if line.strip():
            name, gres = line.split()[0], line.split()[-1].split("(")[0].split(":")
            nodes[name] = int(gres[-1]) if gres[0] == "gpu" and gres[-1].isdigit() else 0
    return nodes


def install_standin(folder: Path, name: str, script: Path) -> None:
    """`folder/name`, a program that runs the stand-in `script` with this Python (the `vllm` or `ollama` a type
    starts, when `folder` leads PATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(f"#!/bin/sh\nexec {sys.executable} {script} \"$@\"\n")
    (folder / name).chmod(0o755)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def orchc(*args: object, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "compiler", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    if check:
        assert done.returncode == 0, done.stderr
    return done


def status(run: Path) -> dict[str, dict[str, str]]:
    report = json.loads(orchc("status", run, "--json", cwd=run.parent).stdout)
    return {job["job"]: job for job in report["jobs"]}


def wait_for(predicate, timeout: float, what: str, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def redis_processes(port: int) -> list[str]:
    found = subprocess.run(["pgrep", "-af", f"redis-server.*{port}"], capture_output=True, text=True).stdout
    return [line for line in found.splitlines() if "pgrep" not in line]


def redis_recipe(port: int, client: str = "", service: str = "") -> str:
    return (f"site: local\nservice:\n  name: redis\n  ports: [{port}]\n  data_dir: /tmp/orchc-test-redis\n"
            f"  resources: {{time: '00:05:00'}}\n{service}" + (f"client:\n  name: bench\n  type: redis_client\n{client}"
                                                            if client else ""))


@pytest.mark.cluster
def test_redis_service_and_client_complete_with_real_results(cluster, needs_redis, tmp_path):
    port = free_port()
    (tmp_path / "redis.yaml").write_text(redis_recipe(port, "  requests: 20000\n  tests: [set, get]\n"))
    run = tmp_path / "run"
    submitted = orchc("submit", "redis.yaml", "--run-dir", run, cwd=tmp_path)
    assert "SLURM job" in submitted.stdout
    seen: dict[str, list[str]] = {"redis": [], "bench": []}

    def all_ended() -> bool:
        for name, job in status(run).items():
            if not seen[name] or seen[name][-1] != job["state"]:
                seen[name].append(job["state"])
        return all(states[-1] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") for states in seen.values())

    wait_for(all_ended, 120, "every job to end", interval=0.2)
    for name, states in seen.items():
        assert states[-1] == "COMPLETED", (name, states, (run / "slurm-*.err"))
        assert set(states) <= {"PENDING", "RUNNING", "COMPLETED"}
        assert len(states) >= 2, f"{name} was never seen before it completed: {states}"
    results = json.loads(orchc("results", run, "--json", cwd=tmp_path).stdout)["bench"]
    assert (results["tool"], results["status"], results["stopped_by"]) == ("redis-benchmark", "complete", None)
    metrics = results["metrics"]
    assert metrics["set.requests_per_s"] > 0 and metrics["get.requests_per_s"] > 0
    assert 0 <= metrics["get.latency_min_ms"] <= metrics["get.latency_p50_ms"] <= metrics["get.latency_p99_ms"] \
        <= metrics["get.latency_max_ms"]
    assert results["parameters"]["requests"] == 20000 and results["parameters"]["keyspace"] == 100000
    assert results["parameters"]["transport"] == "tls"  # what the figures were measured over: redis's default
    assert sorted(results["raw"]) == ["redis-benchmark-get.txt", "redis-benchmark-set.txt"]
    assert "cut_test" not in results["parameters"]
    table = orchc("results", run, cwd=tmp_path).stdout
    assert "set.requests_per_s" in table
    # The server took only clients with this run's certificate (auth: tls, the default): a plain
    # connection gets no answer, and the credentials are the user's alone.
    assert (run / "credentials" / "redis").stat().st_mode & 0o777 == 0o700
    wait_for(lambda: not redis_processes(port), 15, "redis-server to be gone")
    assert not (run / "endpoints" / "redis").exists()


# orchc's own job-side processes (batch shells, watchers, samplers, the service's wait for its clients: not redis) may
# use at most this share of one core, client and service together, while a client benchmarks.
# Measured here (2 cores, a 60 s window): 0.2 % (client 0.08, service 0.12) with the runtime of issue 18 (watchers
# and the service's wait forking a sleep every 2-5 s), 0.00-0.05 % (0 to 3 clock ticks of 10 ms) with naps that start
# no process. The bound sits between, clear of the ticks' granularity (0.05 % is 3 ticks: one CI run measured it).
OVERHEAD_BOUND_PERCENT = 0.1


def job_cpu_ticks(slurm_job_id: str, leave_out: str) -> dict[int, int]:
    """pid -> CPU clock ticks (user + system, reaped children's included) of each process of a SLURM job's batch
    script on this node, but for the program named `leave_out` and what runs under it."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    names: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        pid = int(stat.parent.name)
        parents[pid], ticks[pid], names[pid] = int(fields[1]), sum(map(int, fields[11:15])), text[text.index("(") + 1:text.rindex(")")]
    script = re.compile(rf"/job0*{slurm_job_id}/slurm_script\b")
    roots = [pid for pid in parents if script.search(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                                                      if Path(f"/proc/{pid}/cmdline").exists() else "")]
    roots = [pid for pid in roots if parents[pid] not in roots]
    assert len(roots) == 1, f"the batch shell of job {slurm_job_id}: {roots}"
    found: dict[int, int] = {}
    todo = roots
    while todo:
        pid = todo.pop()
        if names.get(pid) == leave_out:
            continue
        found[pid] = ticks[pid]
        todo += [child for child, parent in parents.items() if parent == pid]
    return found


@pytest.mark.cluster
def test_orchc_beside_a_redis_benchmark_uses_under_a_tenth_of_a_percent_of_a_core(cluster, needs_redis, tmp_path):
    """The client's results say what its own processes used in the benchmark window (orchc_cpu_percent); the
    service's (same node here) are read from /proc over the same window."""
    port = free_port()
    (tmp_path / "redis.yaml").write_text(redis_recipe(port, "  requests: 100000000\n  tests: [get]\n  duration: 60\n"))
    run = tmp_path / "run"
    orchc("submit", "redis.yaml", "--run-dir", run, cwd=tmp_path)
    wait_for(lambda: (run / "results" / "bench" / "redis-benchmark-get.txt.part").exists(), 120, "the benchmark to start")
    service_job = json.loads((run / "jobs" / "redis.json").read_text())["slurm_job_id"]
    service_before, started = job_cpu_ticks(service_job, "redis-server"), time.monotonic()
    wait_for(lambda: (run / "results" / "bench" / "results.json").exists(), 120, "the client's results", interval=0.1)
    service_after, window = job_cpu_ticks(service_job, "redis-server"), time.monotonic() - started
    ended = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
    wait_for(lambda: all(job["state"] in ended for job in status(run).values()), 120, "every job to end", interval=1)
    results = json.loads(orchc("results", run, "--json", cwd=tmp_path).stdout)["bench"]
    metrics = results["metrics"]
    assert results["stopped_by"] == "duration", results
    assert 58 <= metrics["orchc_window_s"] <= 70 and 58 <= window <= 75, (metrics, window)
    service_s = sum(ticks - service_before.get(pid, 0) for pid, ticks in service_after.items()) / os.sysconf("SC_CLK_TCK")
    service_percent = 100 * service_s / window
    print(f"client: orchc_cpu_s {metrics['orchc_cpu_s']} over {metrics['orchc_window_s']} s: {metrics['orchc_cpu_percent']} %;"
          f" service: {service_s:.2f} s over {window:.1f} s: {service_percent:.3f} %")
    assert metrics["orchc_cpu_percent"] >= 0 and service_percent >= 0, (metrics, service_percent)
    assert metrics["orchc_cpu_percent"] + service_percent < OVERHEAD_BOUND_PERCENT, (metrics, service_percent)


@pytest.mark.cluster
def test_redis_refuses_a_client_without_the_runs_certificate(cluster, needs_redis, tmp_path):
    port = free_port()
    (tmp_path / "redis.yaml").write_text(redis_recipe(port))
    run = tmp_path / "run"
    orchc("submit", "redis.yaml", "--run-dir", run, cwd=tmp_path)
    wait_for(lambda: (run / "endpoints" / "redis").exists(), 60, "redis to be ready")
    credentials = run / "credentials" / "redis"
    plain = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True, timeout=10)
    assert "PONG" not in plain.stdout
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=stranger", "-keyout", foreign / "k", "-out", foreign / "c"], check=True,
                   capture_output=True)
    stranger = subprocess.run(["redis-cli", "-p", str(port), "--tls", "--cacert", credentials / "ca.crt",
                               "--cert", foreign / "c", "--key", foreign / "k", "ping"],
                              capture_output=True, text=True, timeout=10)
    assert "PONG" not in stranger.stdout
    holder = subprocess.run(["redis-cli", "-p", str(port), "--tls", "--cacert", credentials / "ca.crt",
                             "--cert", credentials / "client.crt", "--key", credentials / "client.key", "ping"],
                            capture_output=True, text=True, timeout=10)
    assert holder.stdout.strip() == "PONG", holder.stderr
    orchc("cancel", run, cwd=tmp_path)
    wait_for(lambda: not redis_processes(port), 30, "redis-server to be gone")


@pytest.mark.cluster
def test_a_client_duration_bounds_the_whole_run_and_keeps_what_finished(cluster, needs_redis, tmp_path):
    """The issue's case: duration 15 s and three tests; before, the client ran 46 s and ended FAILED (124)."""
    port = free_port()
    client = "  requests: 100000000\n  clients: 10\n  duration: 15\n  tests: [ping_inline, set, get]\n"
    (tmp_path / "redis.yaml").write_text(redis_recipe(port, client))
    run = tmp_path / "run"
    orchc("submit", "redis.yaml", "--run-dir", run, cwd=tmp_path)
    wait_for(lambda: status(run)["bench"]["state"] in ("FAILED", "TIMEOUT", "COMPLETED", "CANCELLED"), 120,
             "the client to end")
    assert status(run)["bench"]["state"] == "COMPLETED"
    results = json.loads(orchc("results", run, "--json", cwd=tmp_path).stdout)["bench"]
    assert (results["status"], results["partial"], results["stopped_by"]) == ("partial", True, "duration")
    assert "redis-benchmark-ping_inline.txt.part" in results["raw"]         # cut short, kept raw
    # What the cut test measured until it was stopped (before: nothing at all): its overall rate and mean
    # latency from redis-benchmark's last progress line; no percentiles, which it prints only at a test's end.
    metrics, parameters = results["metrics"], results["parameters"]
    assert parameters["cut_test"] == "ping_inline"
    assert metrics["ping_inline.requests_per_s"] > 0 and metrics["ping_inline.latency_mean_ms"] > 0, metrics
    assert "ping_inline.latency_p99_ms" not in metrics and not any(name.startswith("set.") for name in metrics)
    log = (run / f"slurm-{status(run)['bench']['slurm id']}.err").read_text()
    started = re.search(r"\[orchc (\d\d):(\d\d):(\d\d)\] benchmark against", log)
    stopped = re.search(r"\[orchc (\d\d):(\d\d):(\d\d)\] duration of 15 s reached", log)
    assert started and stopped, log
    seconds = [int(h) * 3600 + int(m) * 60 + int(s) for h, m, s in (started.groups(), stopped.groups())]
    assert 14 <= (seconds[1] - seconds[0]) % 86400 <= 17, log
    wait_for(lambda: not redis_processes(port), 15, "redis-server to be gone")
    wait_for(lambda: not (run / "endpoints" / "redis").exists(), 15, "the endpoint to be withdrawn")


@pytest.mark.cluster
def test_clients_reach_services_by_job_id_and_by_endpoint(cluster, needs_redis, tmp_path):
    port = free_port()
    # auth: none: these clients are of another run, so they hold no certificate of this one
    (tmp_path / "service.yaml").write_text(redis_recipe(port, service="  auth: none\n").replace(
        "  name: redis\n", "  name: redis\n  keep_running: true\n"))
    service_run = tmp_path / "service"
    orchc("submit", "service.yaml", "--run-dir", service_run, cwd=tmp_path)
    service_id = json.loads((service_run / "run.json").read_text())["jobs"][0]["slurm_id"]
    (tmp_path / "clients.yaml").write_text(
        "site: local\nclients:\n"
        f"  - name: by_id\n    type: redis_client\n    target_service_id: {service_id}\n    target_port: {port}\n"
        "    requests: 2000\n    tests: [ping_inline]\n"
        f"  - name: by_endpoint\n    type: redis_client\n    target_endpoint: 127.0.0.1:{port}\n"
        "    requests: 2000\n    tests: [ping_inline]\n")
    client_run = tmp_path / "clients"
    try:
        orchc("submit", "clients.yaml", "--run-dir", client_run, cwd=tmp_path)
        wait_for(lambda: {j["state"] for j in status(client_run).values()} == {"COMPLETED"}, 120, "both clients")
        results = json.loads(orchc("results", client_run, "--json", cwd=tmp_path).stdout)
        assert results["by_id"]["metrics"]["ping_inline.requests_per_s"] > 0
        assert results["by_endpoint"]["metrics"]["ping_inline.requests_per_s"] > 0
        assert results["by_id"]["parameters"]["transport"] == "plain"  # auth: none: plain TCP, as published figures
        csv = orchc("results", client_run, "--csv", cwd=tmp_path).stdout.splitlines()
        assert csv[0] == "run,point,repeat,job,slurm_id,type,state,status,metric,value,unit,parameters"
        assert any(line.startswith("clients,,,by_id,") and ",COMPLETED,complete,ping_inline.requests_per_s," in line
                   for line in csv), csv
        logs = orchc("logs", client_run, "by_id", cwd=tmp_path).stdout
        assert "==> " in logs and "redis-benchmark ping_inline" in logs
    finally:
        orchc("cancel", service_run, cwd=tmp_path)
    wait_for(lambda: not redis_processes(port), 15, "redis-server to be gone")


@pytest.mark.cluster
def test_ollama_client_measures_a_generate_api(cluster, tmp_path):
    """ollama_client (llm_client with api: ollama) through `orchc submit`, against the known-timing stand-in
    (tests/llm_standin.py): 3 slots for 3 workers, so every request gets its first token after 30 ms and the
    next ones 10 ms apart. Tolerances as in tests/test_llm_bench.py; the job adds no delay of its own."""
    from llm_standin import Standin

    fake = Standin(tokens=5, first_token_delay=0.03, inter_token_delay=0.01, parallelism=3)
    try:
        (tmp_path / "llm.yaml").write_text(
            "site: local\nclient:\n  name: llm\n  type: ollama_client\n"
            f"  target_endpoint: http://127.0.0.1:{fake.port}\n  model: tiny\n  num_requests: 12\n  concurrent: 3\n"
            "  max_tokens: 64\n  seed: 5\n  prompts: [\"say 'hi' $(touch /tmp/orchc-pwned)\", second]\n")
        run = tmp_path / "run"
        orchc("submit", "llm.yaml", "--run-dir", run, cwd=tmp_path)
        wait_for(lambda: status(run)["llm"]["state"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 90,
                 "the client to end")
    finally:
        fake.close()
    assert status(run)["llm"]["state"] == "COMPLETED"
    results = json.loads(orchc("results", run, "--json", cwd=tmp_path).stdout)["llm"]
    assert (results["tool"], results["type"], results["status"]) == ("llm_bench", "ollama_client", "complete")
    m = results["metrics"]
    assert (m["requests_ok_count"], m["requests_failed_count"], m["warmup_requests_count"]) == (12, 0, 1)
    assert m["output_tokens_count"] == 60
    seen = _standin_record(fake)           # what the server saw (warm-up included), see tests/test_llm_bench.py
    assert m["ttft_mean_ms"] == pytest.approx(seen["ttft_mean_ms"], abs=5 * E2E_MS)   # the loopback and both ends
    assert m["tpot_mean_ms"] == pytest.approx(seen["tpot_mean_ms"], abs=E2E_MS)
    assert m["ttft_mean_ms"] == pytest.approx(30, abs=30, rel=0.2) and m["tpot_mean_ms"] == pytest.approx(10, abs=30, rel=0.2)
    assert m["eval_duration_mean_ms"] == pytest.approx(40) and m["prompt_eval_duration_mean_ms"] == pytest.approx(30)
    assert m["ttft_p99_ms"] >= m["ttft_median_ms"] and m["request_throughput_per_s"] > 0
    assert results["environment"]["reported"] == {"server_version": "0.0.0-llm-standin", "model": "tiny", "api": "ollama"}
    assert "requests.jsonl" in results["raw"]
    assert len((run / "results" / "llm" / "requests.jsonl").read_text().splitlines()) == 12
    bodies = [request["body"] for request in fake.requests]
    assert {request["path"] for request in fake.requests} == {"/api/generate"}
    prompts = sorted(body["prompt"] for body in bodies)   # concurrent: any order; the warm-up sends prompt -1 mod 2
    assert prompts == ["say 'hi' $(touch /tmp/orchc-pwned)"] * 6 + ["second"] * 7
    assert {(b["model"], b["stream"], json.dumps(b["options"], sort_keys=True)) for b in bodies} == \
        {("tiny", True, '{"num_predict": 64, "seed": 5, "temperature": 0.0}')}
    assert not Path("/tmp/orchc-pwned").exists()


@pytest.mark.cluster
def test_a_client_fails_fast_when_its_service_dies(cluster, needs_redis, tmp_path):
    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "broken.yaml").write_text(
        "type: broken\nextends: service\nfields:\n  ports: {default: [1]}\n"
        "container:\n  command: sleep 2\nphases:\n  health_check:\n    - orchc_wait_tcp 127.0.0.1 1 30\n")
    (tmp_path / "r.yaml").write_text("site: local\nservice:\n  name: svc\n  type: broken\n"
                                     "client:\n  name: bench\n  type: redis_client\n")
    run = tmp_path / "run"
    orchc("submit", "r.yaml", "--defs", "defs", "--run-dir", run, cwd=tmp_path)
    wait_for(lambda: status(run)["bench"]["state"] == "FAILED", 60, "the client to fail")
    assert status(run)["svc"]["state"] == "FAILED"
    client_id = json.loads((run / "run.json").read_text())["jobs"][1]["slurm_id"]
    assert "ended without publishing an endpoint" in (run / f"slurm-{client_id}.err").read_text()
    assert "the service process exited before it became ready" in orchc("logs", run, "svc", cwd=tmp_path).stdout


@pytest.mark.cluster
def test_mysql_and_mysqlslap_with_a_secret_that_never_reaches_a_file(cluster, tmp_path):
    if shutil.which("mysqld") is None or shutil.which("mysqlslap") is None:
        pytest.fail("mysqld/mysqlslap missing; run tests/install-deps.sh") if in_ci() else pytest.skip("no mysqld")
    secret = tmp_path / "secrets" / "root_password"
    port = free_port()
    (tmp_path / "db.yaml").write_text(
        f"site: local\nservice:\n  name: db\n  type: mysql\n  ports: [{port}]\n  data_dir: {tmp_path}/data\n"
        f"  root_password: {{file: {secret}}}\nclient:\n  name: slap\n  type: mysql_client\n"
        f"  root_password: {{file: {secret}}}\n  iterations: 2\n  number_of_queries: 200\n")
    run = tmp_path / "run"
    orchc("submit", "db.yaml", "--run-dir", run, cwd=tmp_path)
    wait_for(lambda: {j["state"] for j in status(run).values()} == {"COMPLETED"}, 120, "both jobs to complete")
    results = json.loads(orchc("results", run, "--json", cwd=tmp_path).stdout)["slap"]
    assert results["metrics"]["runs_count"] == 2 and results["metrics"]["queries_per_s"] > 0
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    password = secret.read_text().strip()
    assert len(password) >= 20
    for path in run.rglob("*"):
        if path.is_file():
            assert password not in path.read_text(errors="replace"), path


@pytest.mark.cluster
def test_two_runs_of_one_mysql_recipe_at_once_each_keep_their_own_data(cluster, tmp_path):
    """Stateful services get a data folder per run ($ORCHC_DATA, mysql's `data: shared`): a second run of the same recipe
    started while the first runs does not fail on the first one's lock (InnoDB: Unable to lock ./ibdata1)."""
    if shutil.which("mysqld") is None or shutil.which("mysqlslap") is None:
        pytest.fail("mysqld/mysqlslap missing; run tests/install-deps.sh") if in_ci() else pytest.skip("no mysqld")
    secret = tmp_path / "secrets" / "root_password"
    (tmp_path / "db.yaml").write_text(
        f"site: local\nservice:\n  name: db\n  type: mysql\n  data: shared\n  root_password: {{file: {secret}}}\n"
        f"  resources: {{time: '00:05:00'}}\nclient:\n  name: slap\n  type: mysql_client\n"
        f"  root_password: {{file: {secret}}}\n  iterations: 2\n  number_of_queries: 200\n")
    runs = [tmp_path / "one", tmp_path / "two"]
    for run in runs:
        orchc("submit", "db.yaml", "--run-dir", run, "--set", f"db.ports=[{free_port()}]", cwd=tmp_path)
    # both services hold their data folder at the same time
    wait_for(lambda: all((run / "endpoints" / "db").exists() for run in runs) or
             all(j["state"] == "COMPLETED" for run in runs for j in status(run).values()), 120, "both services up")
    for run in runs:
        wait_for(lambda run=run: {j["state"] for j in status(run).values()} == {"COMPLETED"}, 120,
                 f"both jobs of {run.name} to complete")
        assert json.loads(orchc("results", run, "--json", cwd=tmp_path).stdout)["slap"]["metrics"]["runs_count"] == 2
        assert (run / "data" / "db" / "mysql" / "mysql").is_dir(), sorted(run.rglob("*"))[:20]


@pytest.mark.cluster
def test_cancel_stops_a_running_service(cluster, needs_redis, tmp_path):
    port = free_port()
    (tmp_path / "redis.yaml").write_text(redis_recipe(port))
    run = tmp_path / "run"
    orchc("submit", "redis.yaml", "--run-dir", run, cwd=tmp_path)
    wait_for(lambda: (run / "endpoints" / "redis").exists(), 60, "the service to publish its endpoint")
    assert redis_processes(port)
    assert status(run)["redis"]["state"] == "RUNNING"
    orchc("cancel", run, cwd=tmp_path)
    wait_for(lambda: status(run)["redis"]["state"] == "CANCELLED", 30, "state CANCELLED")
    wait_for(lambda: not redis_processes(port), 15, "redis-server to be gone")
    wait_for(lambda: not (run / "endpoints" / "redis").exists(), 10, "the endpoint file to be removed")


@pytest.mark.cluster
def test_a_client_past_its_time_limit_keeps_its_partial_results(cluster, needs_redis, tmp_path):
    port = free_port()
    tests = "[set, get, incr, lpush, rpush, lpop, rpop, sadd, hset, spop, zadd, zpopmin, lrange_100, mset]"
    client = f"  requests: 400000\n  clients: 20\n  duration: 600\n  tests: {tests}\n" \
             "  resources: {time: '00:02:00', signal: 'B:USR1@60'}\n"
    (tmp_path / "redis.yaml").write_text(redis_recipe(port, client))
    run = tmp_path / "run"
    orchc("submit", "redis.yaml", "--run-dir", run, cwd=tmp_path)
    wait_for(lambda: status(run)["bench"]["state"] in ("FAILED", "TIMEOUT", "COMPLETED", "CANCELLED"), 240,
             "the client to be stopped")
    # A planned stop (the client's own time-limit signal) with results kept: COMPLETED, results partial.
    assert status(run)["bench"]["state"] == "COMPLETED"
    results = json.loads(orchc("results", run, "--json", cwd=tmp_path).stdout)["bench"]
    assert (results["status"], results["stopped_by"]) == ("partial", "time_limit")
    rates = {name: value for name, value in results["metrics"].items() if name.endswith(".requests_per_s")}
    assert 1 <= len(rates) < 14 and all(rate > 0 for rate in rates.values()), results
    wait_for(lambda: status(run)["redis"]["state"] == "COMPLETED", 60, "the service to stop after its client")
    wait_for(lambda: not redis_processes(port), 15, "redis-server to be gone")


@pytest.mark.cluster
def test_a_rejected_job_cancels_the_jobs_already_submitted(cluster, needs_redis, tmp_path):
    port = free_port()
    text = redis_recipe(port).replace("service:\n  name: redis", "services:\n- name: redis") + \
        f"- name: second\n  type: redis\n  ports: [{free_port()}]\n  resources: {{partition: nosuchpartition}}\n"
    (tmp_path / "redis.yaml").write_text(text)
    run = tmp_path / "run"
    done = orchc("submit", "redis.yaml", "--run-dir", run, cwd=tmp_path, check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("orchc: error: sbatch second.sbatch failed:")
    assert "partition" in done.stderr.lower() and "Traceback" not in done.stderr
    assert "cancelled the jobs already submitted (redis " in done.stderr
    recorded = json.loads((run / "run.json").read_text())
    assert recorded["state"] == "failed" and "nosuchpartition" in recorded["error"]
    assert orchc("status", run, cwd=tmp_path).returncode == 0
    wait_for(lambda: status(run)["redis"]["state"] == "CANCELLED", 30, "the first job to be cancelled")
    wait_for(lambda: not redis_processes(port), 15, "redis-server to be gone")


@pytest.mark.cluster
def test_a_comma_in_the_run_folder_path_reaches_no_sbatch_option(cluster, needs_redis, tmp_path):
    port = free_port()
    (tmp_path / "redis.yaml").write_text(redis_recipe(port, "  requests: 2000\n  tests: [ping_inline]\n"))
    run = tmp_path / "runs" / "x,LD_PRELOAD=nonexistent.so"
    orchc("submit", "redis.yaml", "--run-dir", run, cwd=tmp_path)
    wait_for(lambda: {j["state"] for j in status(run).values()} == {"COMPLETED"}, 120, "both jobs to complete")
    results = json.loads(orchc("results", run, "--json", cwd=tmp_path).stdout)["bench"]
    assert results["metrics"]["ping_inline.requests_per_s"] > 0 and results["job_state"] == "COMPLETED"
    client_id = json.loads((run / "run.json").read_text())["jobs"][1]["slurm_id"]
    assert "cannot be preloaded" not in (run / f"slurm-{client_id}.err").read_text()   # LD_PRELOAD not injected
    assert (run / "endpoints").is_dir() and not (tmp_path / "runs" / "x").exists()
    wait_for(lambda: not redis_processes(port), 15, "redis-server to be gone")


@pytest.mark.cluster
def test_prometheus_scrapes_a_service_of_the_same_run_by_its_job_name(cluster, needs_redis, tmp_path):
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is missing; run tests/install-deps.sh") if in_ci() else pytest.skip("no prometheus")
    redis_port, prometheus_port = free_port(), free_port()
    (tmp_path / "stack.yaml").write_text(
        f"site: local\nservices:\n  - name: redis\n    ports: [{redis_port}]\n    keep_running: true\n"
        f"  - name: prometheus\n    ports: [{prometheus_port}]\n    monitoring_targets: ['redis:{redis_port}']\n"
        f"    storage_dir: {tmp_path}/tsdb\n")
    run = tmp_path / "run"
    orchc("submit", "stack.yaml", "--run-dir", run, cwd=tmp_path)
    try:
        wait_for(lambda: (run / "endpoints" / "prometheus").exists(), 60, "prometheus to become ready")
        # the listed targets are in a file of Prometheus' file discovery, once the hosts they name are known
        targets = run / "config" / "prometheus" / "targets" / "orchc.json"
        wait_for(targets.exists, 30, "the targets of prometheus to be written")
        host = (run / "endpoints" / "redis").read_text().split()[1]
        assert f'"{host}:{redis_port}"' in targets.read_text() and "@ORCHC_HOST" not in targets.read_text()
        checked = subprocess.run(["promtool", "check", "config", str(run / "config" / "prometheus" / "prometheus.yml")],
                                 capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout
    finally:
        orchc("cancel", run, cwd=tmp_path)
    wait_for(lambda: {j["state"] for j in status(run).values()} == {"CANCELLED"}, 30, "both jobs cancelled")


@pytest.mark.cluster
def test_every_example_is_accepted_by_sbatch_test_only(cluster, tmp_path):
    subprocess.run([sys.executable, "-m", "compiler", "compile", *sorted(EXAMPLES.glob("*.yaml")), "-o", tmp_path],
                   check=True, cwd=ROOT, capture_output=True)
    subprocess.run([sys.executable, "-m", "compiler", "compile", *sorted((EXAMPLES / "custom").glob("*.yaml")),
                    "--defs", EXAMPLES / "custom" / "defs", "-o", tmp_path], check=True, cwd=ROOT, capture_output=True)
    scripts = sorted(tmp_path.glob("*/*.sbatch"))
    assert len(scripts) >= 10
    for script in scripts:
        done = subprocess.run(["sbatch", "--test-only", script.name], cwd=script.parent, capture_output=True, text=True)
        assert done.returncode == 0, f"{script.relative_to(tmp_path)}: {done.stderr}"


def test_no_slurm_is_a_clear_error(tmp_path):
    (tmp_path / "r.yaml").write_text("account: p200981\nservice:\n  name: redis\n")
    done = subprocess.run([sys.executable, "-m", "compiler", "submit", "r.yaml"], cwd=tmp_path, capture_output=True,
                          text=True, env={"PATH": "/nonexistent", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1
    assert done.stderr.strip() == ("orchc: error: sbatch not found on PATH: is SLURM installed here? "
                                   "(for the test cluster: bash tests/cluster/start.sh)")


@pytest.mark.cluster
def test_llm_client_measures_an_openai_compatible_server_at_a_request_rate(cluster, tmp_path):
    """llm_client on the OpenAI chat API, open loop: 10 requests at 20/s, at most 2 in flight, against one slot
    (tests/llm_standin.py, 40 ms to the first token, 10 ms between tokens, 5 tokens: 80 ms per request)."""
    from llm_standin import Standin

    fake = Standin(tokens=5, first_token_delay=0.04, inter_token_delay=0.01, parallelism=1)
    try:
        (tmp_path / "llm.yaml").write_text(
            "site: local\nclient:\n  name: bench\n  type: llm_client\n  api: openai-chat\n"
            f"  target_endpoint: 127.0.0.1:{fake.port}\n  num_requests: 10\n  request_rate: 20\n"
            "  max_concurrency: 2\n  warmup_requests: 0\n  input_length: 16\n  temperature: 0.5\n")
        run = tmp_path / "run"
        orchc("submit", "llm.yaml", "--run-dir", run, cwd=tmp_path)
        wait_for(lambda: status(run)["bench"]["state"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 90,
                 "the client to end")
    finally:
        fake.close()
    assert status(run)["bench"]["state"] == "COMPLETED"
    results = json.loads(orchc("results", run, "--json", cwd=tmp_path).stdout)["bench"]
    assert (results["tool"], results["status"]) == ("llm_bench", "complete")
    m = results["metrics"]
    assert (m["requests_ok_count"], m["requests_failed_count"]) == (10, 0)
    assert (m["input_tokens_count"], m["output_tokens_count"]) == (160, 50)   # 16 words, as the stand-in counts
    seen = _standin_record(fake)
    assert m["tpot_mean_ms"] == pytest.approx(seen["tpot_mean_ms"], abs=E2E_MS)
    assert m["itl_median_ms"] == pytest.approx(seen["itl_median_ms"], abs=E2E_MS)
    assert m["ttft_min_ms"] == pytest.approx(40, abs=30, rel=0.2)
    # one slot serves 80 ms per request; 20/s asks for one each 50 ms: the server is the bottleneck. The wall
    # time starts before the first Poisson arrival (as in vLLM), the server's span at it.
    records = [json.loads(line) for line in (run / "results" / "bench" / "requests.jsonl").read_text().splitlines()]
    first = min(r["send_s"] for r in records)
    assert m["request_throughput_per_s"] == pytest.approx(10 / (first + seen["span_s"]), rel=0.2)
    assert m["request_throughput_per_s"] == pytest.approx(10 / (first + 10 * 0.08), rel=0.2)
    # the client's audit reaches results.json: with 2 in flight against one 80 ms slot, request 9 waits for request 7
    # to end (~0.64 s), so the 10 requests due by 0.5 s go at < 15.6/s, under 95 % of 20/s: not kept up
    assert m["requested_rate_per_s"] == 20 and m["scheduled_rate_per_s"] == pytest.approx(20)
    assert m["achieved_rate_per_s"] < 15.7 and m["client_kept_up"] == 0
    assert m["schedule_delay_max_ms"] > 100 and m["client_cpu_percent"] > 0
    assert results["parameters"]["request_rate"] == 20 and results["parameters"]["api"] == "openai-chat"
    assert results["environment"]["reported"]["model"] == "tiny"          # the first model the server lists
    bodies = [request["body"] for request in fake.requests]
    assert {request["path"] for request in fake.requests} == {"/v1/chat/completions"}
    assert all(b["stream"] and b["stream_options"] == {"include_usage": True} and b["temperature"] == 0.5 for b in bodies)
    assert all(len(b["messages"][0]["content"].split()) == 16 for b in bodies)


@pytest.mark.cluster
def test_llm_client_stopped_by_its_duration_keeps_the_requests_in_flight(cluster, tmp_path):
    """Requests that take 10 s each and a duration of 3 s: orchc stops the benchmark, the requests in flight
    are kept cut at duration with the tokens they got, and the job still completes with partial results."""
    from llm_standin import Standin

    fake = Standin(tokens=1000, first_token_delay=0.02, inter_token_delay=0.01, parallelism=2)
    try:
        (tmp_path / "llm.yaml").write_text(
            "site: local\nclient:\n  name: bench\n  type: llm_client\n  model: tiny\n"
            f"  target_endpoint: 127.0.0.1:{fake.port}\n  num_requests: 10\n  concurrent: 2\n  duration: 3\n"
            "  warmup_requests: 0\n  max_tokens: 1000\n")
        run = tmp_path / "run"
        orchc("submit", "llm.yaml", "--run-dir", run, cwd=tmp_path)
        wait_for(lambda: status(run)["bench"]["state"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 90,
                 "the client to end")
    finally:
        fake.close()
    assert status(run)["bench"]["state"] == "COMPLETED"
    results = json.loads(orchc("results", run, "--json", cwd=tmp_path).stdout)["bench"]
    assert (results["status"], results["stopped_by"]) == ("partial", "duration")
    m = results["metrics"]
    assert (m["requests_ok_count"], m["requests_cut_count"]) == (0, 2)
    records = [json.loads(line) for line in (run / "results" / "bench" / "requests.jsonl").read_text().splitlines()]
    assert [r["error"] for r in records] == ["cut at duration"] * 2
    assert all(100 < len(r["chunk_times_s"]) < 300 for r in records)        # about 3 s of tokens, 10 ms apart


E2E_MS = 5.0
"""How far the client's token-gap means may be from the stand-in's own record here (TTFT: 5 times that).
tests/test_llm_bench.py holds the client to 1.5 ms + 2 % and 15 ms + 5 %; these end-to-end runs check that
the figures reach results.json, with the stand-in in pytest's own process and the job on a machine that ran
at load average 10-11 (measured: a TPOT mean of 6.8 ms where the server wrote tokens 8.7 ms apart, a TTFT
mean of 47 ms where the server took 34 ms)."""


def _standin_record(standin) -> dict[str, float]:
    """Means of what tests/llm_standin.py saw of the completed requests (arrival and token times on the
    monotonic clock): the reference the client's figures must match, whatever a loaded machine did to the
    nominal timing."""
    import itertools
    import statistics

    timings = [t["timing"] for t in standin.settings.timings if not t["timing"].get("cut")]
    tokens = [t["tokens"] for t in timings]
    itls = [b - a for x in tokens for a, b in itertools.pairwise(x)]
    return {"ttft_mean_ms": statistics.fmean(t["tokens"][0] - t["received"] for t in timings) * 1000,
            "tpot_mean_ms": statistics.fmean((x[-1] - x[0]) / (len(x) - 1) for x in tokens) * 1000,
            "itl_median_ms": statistics.median(itls) * 1000,
            "span_s": max(x[-1] for x in tokens) - min(t["received"] for t in timings)}


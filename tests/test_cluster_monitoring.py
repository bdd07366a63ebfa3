"""Monitoring end to end on the test cluster (issue 7, points 7 and 9): node_exporter, mysqld_exporter, GPU sampler.

Each test submits prometheus and one service with its exporter switched on, natively (Debian's
prometheus-*-exporter programs), lists no target in the recipe, and asks Prometheus' HTTP API for a metric
the exporter serves: Prometheus found it through the run's file-based discovery. redis_exporter has the
same test in tests/test_monitoring.py (test_prometheus_scrapes_redis_through_its_exporter_found_by_file_sd).
The GPU sampler runs on the gpu partition (a fake gres) against tests/nvidia_smi_standin.py, a stand-in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nvidia_smi_standin
import pytest
from conftest import ROOT
from ruamel.yaml import YAML
from test_cluster import cluster, free_port, install_standin, orchc, status, wait_for  # noqa: F401 (cluster is a fixture)
from test_monitoring import ENDED, GPU_RECIPE, compile_gpu, needs, query, without_nvidia_smi

pytestmark = pytest.mark.cluster


def exporter_processes(program: str, port: int) -> list[str]:
    found = subprocess.run(["pgrep", "-af", f"{program}.*:{port}"], capture_output=True, text=True).stdout
    return [line for line in found.splitlines() if "pgrep" not in line]


def stop(run: Path, cwd: Path) -> None:
    orchc("cancel", run, cwd=cwd, check=False)
    wait_for(lambda: all(job["state"] in ENDED for job in status(run).values()), 60, "every job to end")


def test_prometheus_scrapes_the_node_exporter_of_a_service_found_by_file_sd(cluster, tmp_path):  # noqa: F811
    needs("redis-server", "redis-cli", "prometheus", "prometheus-node-exporter")
    ports = {"redis": free_port(), "node": free_port(), "prometheus": free_port()}
    (tmp_path / "node.yaml").write_text(
        f"site: local\nresources: {{time: '00:05:00'}}\nservices:\n"
        f"  - name: redis\n    ports: [{ports['redis']}]\n    enable_node_exporter: true\n"
        f"    node_exporter_port: {ports['node']}\n"
        f"  - name: prometheus\n    ports: [{ports['prometheus']}]\n    scrape_interval: 1s\n")
    run = tmp_path / "run"
    orchc("submit", "node.yaml", "--run-dir", run, cwd=tmp_path)
    try:
        wait_for(lambda: (run / "endpoints" / "prometheus").exists() and (run / "endpoints" / "redis").exists(),
                 60, "both services to publish their endpoints")
        (group,) = json.loads((run / "monitoring" / "redis.json").read_text())
        assert group["labels"]["orchc_source"] == "node_exporter"
        assert group["targets"][0].endswith(f":{ports['node']}")
        cpu = wait_for(lambda: query(ports["prometheus"], 'node_cpu_seconds_total{mode="idle"}'), 60,
                       "Prometheus to scrape node_cpu_seconds_total from node_exporter")
        assert {sample["metric"]["job"] for sample in cpu} == {"redis"}
        assert {sample["metric"]["orchc_source"] for sample in cpu} == {"node_exporter"}
        assert {sample["metric"]["instance"] for sample in cpu} == {group["targets"][0]}
        assert all(float(sample["value"][1]) > 0 for sample in cpu), cpu
        up = query(ports["prometheus"], f'up{{instance="{group["targets"][0]}"}}')
        assert [sample["value"][1] for sample in up] == ["1"], up
    finally:
        stop(run, tmp_path)
    wait_for(lambda: not (run / "monitoring" / "redis.json").exists(), 15, "the SD file to be withdrawn")
    wait_for(lambda: not exporter_processes("prometheus-node-exporter", ports["node"]), 15, "node_exporter to stop")


def test_prometheus_scrapes_mysqld_exporter_which_logs_in_without_its_password_on_argv(cluster, tmp_path):  # noqa: F811
    needs("mysqld", "mysqladmin", "prometheus", "prometheus-mysqld-exporter")
    ports = {"mysql": free_port(), "exporter": free_port(), "prometheus": free_port()}
    # A password with the characters a go-sql-driver DSN (user:password@tcp(host:port)/) gives meaning to.
    password = "orchc@test:pass/word(1)"
    secret = tmp_path / "secrets" / "mysql_root_password"
    secret.parent.mkdir()
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    (tmp_path / "db.yaml").write_text(
        f"site: local\nresources: {{time: '00:05:00'}}\nservices:\n"
        f"  - name: db\n    type: mysql\n    ports: [{ports['mysql']}]\n    root_password: {{file: {secret}}}\n"
        f"    enable_exporter: true\n    exporter_port: {ports['exporter']}\n"
        f"  - name: prometheus\n    ports: [{ports['prometheus']}]\n    scrape_interval: 1s\n")
    run = tmp_path / "run"
    orchc("submit", "db.yaml", "--run-dir", run, cwd=tmp_path)
    try:
        wait_for(lambda: (run / "endpoints" / "prometheus").exists() and (run / "endpoints" / "db").exists(),
                 120, "both services to publish their endpoints")
        (group,) = json.loads((run / "monitoring" / "db.json").read_text())
        assert group["labels"]["orchc_source"] == "mysqld_exporter"
        assert group["targets"][0].endswith(f":{ports['exporter']}")
        # mysql_up is 1 only when the exporter logged in to the server with the root password
        up = wait_for(lambda: [s for s in query(ports["prometheus"], "mysql_up") if s["value"][1] == "1"], 60,
                      "Prometheus to scrape mysql_up == 1 from mysqld_exporter")
        assert up[0]["metric"]["job"] == "db" and up[0]["metric"]["orchc_source"] == "mysqld_exporter"
        assert up[0]["metric"]["instance"] == group["targets"][0]
        assert query(ports["prometheus"], "mysql_global_status_uptime"), "no server status scraped"
        (exporter,) = exporter_processes("prometheus-mysqld-exporter", ports["exporter"])
        # no process's command line carries the password (the exporter has it in its environment)
        command_lines = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert password not in command_lines and "pass/word" not in command_lines
        assert "DATA_SOURCE_NAME" not in exporter
    finally:
        stop(run, tmp_path)
    wait_for(lambda: not exporter_processes("prometheus-mysqld-exporter", ports["exporter"]), 15,
             "mysqld_exporter to stop")
    for path in run.rglob("*"):
        if path.is_file():
            assert "pass/word" not in path.read_text(errors="replace"), path


def test_the_gpu_sampler_runs_under_slurm_on_the_gpu_partition(cluster, tmp_path):  # noqa: F811
    """GPU jobs on the test cluster's gpu partition (a fake gres, one GPU), sampled by tests/nvidia_smi_standin.py,
    a stand-in for nvidia-smi put first on PATH (sbatch passes the submitter's environment, --export=ALL)."""
    compile_gpu(tmp_path, GPU_RECIPE.replace('"gpu:2"', '"gpu:1", time: "00:02:00"'))  # writes defs/ and gpu.yaml
    path = f"{nvidia_smi_standin.install(tmp_path / 'bin')}{os.pathsep}{without_nvidia_smi(os.environ['PATH'])}"
    run = tmp_path / "run"
    submitted = subprocess.run([sys.executable, "-m", "compiler", "submit", "gpu.yaml", "--defs", "defs", "--run-dir", run],
                               cwd=tmp_path, capture_output=True, text=True, timeout=120,
                               env={**os.environ, "PYTHONPATH": str(ROOT), "PATH": path, "ORCHC_STANDIN_GPUS": "1"})
    assert submitted.returncode == 0, submitted.stderr
    try:
        wait_for(lambda: {job["state"] for job in status(run).values()} == {"COMPLETED"}, 120, "both GPU jobs to complete")
    finally:
        orchc("cancel", run, cwd=tmp_path, check=False)
    for job in ("svc", "bench"):
        lines = (run / "results" / job / "gpu.csv").read_text().splitlines()
        assert lines[0] == nvidia_smi_standin.HEADER
        assert len(lines) >= 4, lines   # 4 s of work, one GPU sampled every second
        for number, line in enumerate(lines[1:]):
            assert line.split(", ")[1:] == nvidia_smi_standin.row(number, 0), (job, number, line)


def targets(port: int) -> list[dict]:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5) as answer:
            return list(json.load(answer)["data"]["activeTargets"])
    except OSError:
        return []


def test_prometheus_scrapes_every_service_and_sidecar_and_the_llm_client_reports_engine_metrics_and_energy(cluster, tmp_path):  # noqa: F811
    """vLLM (tests/llm_standin.py as `vllm serve`, serving vLLM's /metrics) on the gpu partition with node_exporter and
    the GPU exporter (the stand-in nvidia-smi: one GPU drawing 250 W), the recipe's prometheus, and an llm_client:
    Prometheus' targets API lists every service and sidecar, all up; the client's results hold the engine's figures
    and J per output token = 250 W x the measured phase's wall time / the tokens the stand-in wrote."""
    needs("prometheus", "prometheus-node-exporter", "python3")
    ports = {name: free_port() for name in ("llm", "node", "gpu", "prometheus")}
    key = tmp_path / "key"
    key.write_text("k" * 32 + "\n")
    key.chmod(0o600)
    (tmp_path / "llm.yaml").write_text(
        f"site: local\nresources: {{time: '00:05:00'}}\nservices:\n"
        f"  - name: llm\n    type: vllm\n    model: tiny\n    ports: [{ports['llm']}]\n    metrics_ports: [{ports['llm']}]\n"
        f"    api_key: {{file: {key}}}\n    keep_running: true\n    health_timeout: 60\n"
        f"    enable_node_exporter: true\n    node_exporter_port: {ports['node']}\n    gpu_exporter_port: {ports['gpu']}\n"
        f"    resources: {{partition: gpu, gres: 'gpu:1'}}\n"
        # keep_running: a service no client targets stops with the recipe's last client; this test reads Prometheus after
        f"  - name: prometheus\n    ports: [{ports['prometheus']}]\n    scrape_interval: 1s\n    keep_running: true\n"
        f"clients:\n  - name: bench\n    type: llm_client\n    target: llm\n    model: tiny\n    api_key: {{file: {key}}}\n"
        f"    num_requests: 12\n    concurrent: 4\n    warmup_requests: 0\n    engine_metrics_interval: 0.2\n"
        # the services' and sidecars' targets only: the client's own live metrics have a test of their own (below)
        f"    metrics_port: 0\n")
    shim = tmp_path / "bin"
    nvidia_smi_standin.install(shim)
    install_standin(shim, "vllm", ROOT / "tests" / "llm_standin.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{shim}{os.pathsep}{without_nvidia_smi(os.environ['PATH'])}",
           "ORCHC_STANDIN_GPUS": "1", "ORCHC_STANDIN_POWER": "250", "STANDIN_TOKENS": "20", "STANDIN_PARALLELISM": "1",
           "STANDIN_FIRST_TOKEN_DELAY": "0.05", "STANDIN_INTER_TOKEN_DELAY": "0.02", "STANDIN_LOG": str(tmp_path / "standin.jsonl")}
    run = tmp_path / "run"
    submitted = subprocess.run([sys.executable, "-m", "compiler", "submit", "llm.yaml", "--run-dir", run],
                               cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert submitted.returncode == 0, submitted.stderr
    try:
        wait_for(lambda: status(run)["bench"]["state"] in ENDED, 180, "the client to end")
        assert status(run)["bench"]["state"] == "COMPLETED", orchc("logs", run, "bench", cwd=tmp_path, check=False).stdout
        # prometheus scrapes itself by its static configuration (no orchc_source); the rest it found through the run's files
        expected = {("llm", "vllm"), ("llm", "node_exporter"), ("llm", "gpu_exporter"), ("prometheus", "")}
        seen: list[list[dict]] = [[]]

        def all_up() -> bool:
            seen[0] = targets(ports["prometheus"])
            return {(t["labels"]["job"], t["labels"].get("orchc_source", "")) for t in seen[0]} == expected \
                and all(t["health"] == "up" for t in seen[0])
        try:
            wait_for(all_up, 90, "Prometheus to scrape every service and sidecar")
        except BaseException:
            raise AssertionError([(t["labels"], t["health"], t.get("lastError")) for t in seen[0]]) from None
        assert len(seen[0]) == 4, seen[0]
        running = wait_for(lambda: query(ports["prometheus"], "vllm:num_requests_running"), 30, "vLLM's metrics in Prometheus")
        assert running[0]["metric"]["job"] == "llm"
        power = wait_for(lambda: query(ports["prometheus"], "orchc_gpu_power_watts"), 30, "the GPU exporter's power in Prometheus")
        assert [float(sample["value"][1]) for sample in power] == [250.0]
    finally:
        stop(run, tmp_path)
    m = json.loads(orchc("results", run, "--json", cwd=tmp_path).stdout)["bench"]["metrics"]
    assert (m["engine_running_max_count"], m["engine_waiting_max_count"], m["engine_kv_cache_usage_max_ratio"]) == (1, 3, 1.0)
    assert m["engine_samples_count"] >= 10
    tokens = sum(len(json.loads(line)["timing"]["tokens"]) for line in (tmp_path / "standin.jsonl").read_text().splitlines()
                 if "timing" in line)
    assert m["output_tokens_count"] == tokens == 12 * 20
    assert m["gpu_power_mean_w"] == 250.0
    assert m["energy_per_token_j"] == pytest.approx(250 * m["wall_time_s"] / tokens, rel=1e-6)


def test_the_monitoring_example_without_grafana_has_every_service_and_sidecar_up_in_prometheus(cluster, tmp_path):  # noqa: F811
    """examples/monitoring_stack.yaml as far as this machine can run it (no Grafana here): Ollama (tests/ollama_standin.py
    behind orchc's nginx proxy) on the gpu partition with node_exporter, the process exporter and the GPU exporter (the
    stand-in nvidia-smi), the recipe's prometheus, and the ollama_client loading Ollama. Every one is `up` in Prometheus'
    targets API, found by file-based discovery alone."""
    needs("prometheus", "prometheus-node-exporter", "python3", "nginx")
    example = YAML(typ="safe").load((ROOT / "examples" / "monitoring_stack.yaml").read_text())
    (ollama,) = [s for s in example["services"] if s["name"] == "ollama"]
    assert ollama["enable_node_exporter"] and ollama["enable_process_exporter"] and "gpu" in ollama["resources"]["gres"]
    ports = {name: free_port() for name in ("ollama", "internal", "node", "process", "gpu", "prometheus")}
    key = tmp_path / "key"
    key.write_text("k" * 32 + "\n")
    key.chmod(0o600)
    (tmp_path / "mon.yaml").write_text(
        f"site: local\nresources: {{time: '00:05:00'}}\nservices:\n"
        f"  - name: ollama\n    model: tiny\n    ports: [{ports['ollama']}]\n    internal_port: {ports['internal']}\n"
        f"    api_key: {{file: {key}}}\n    keep_running: true\n    health_timeout: 60\n"
        f"    enable_node_exporter: true\n    node_exporter_port: {ports['node']}\n"
        f"    enable_process_exporter: true\n    process_exporter_port: {ports['process']}\n    gpu_exporter_port: {ports['gpu']}\n"
        f"    resources: {{partition: gpu, gres: 'gpu:1'}}\n"
        # keep_running: a service no client targets stops with the recipe's last client; this test reads Prometheus after
        f"  - name: prometheus\n    ports: [{ports['prometheus']}]\n    scrape_interval: 1s\n    keep_running: true\n"
        f"clients:\n  - name: load\n    type: ollama_client\n    target: ollama\n    model: tiny\n    api_key: {{file: {key}}}\n"
        f"    num_requests: 4\n    concurrent: 2\n")
    shim = tmp_path / "bin"
    nvidia_smi_standin.install(shim)
    install_standin(shim, "ollama", ROOT / "tests" / "ollama_standin.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{shim}{os.pathsep}{without_nvidia_smi(os.environ['PATH'])}",
           "ORCHC_STANDIN_GPUS": "1", "STANDIN_SIZE_VRAM": "1000"}
    run = tmp_path / "run"
    submitted = subprocess.run([sys.executable, "-m", "compiler", "submit", "mon.yaml", "--run-dir", run],
                               cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert submitted.returncode == 0, submitted.stderr
    expected = {("ollama", "node_exporter"), ("ollama", "process"), ("ollama", "gpu_exporter"), ("prometheus", "")}
    seen: list[list[dict]] = [[]]

    def all_up() -> bool:
        seen[0] = targets(ports["prometheus"])
        return {(t["labels"]["job"], t["labels"].get("orchc_source", "")) for t in seen[0]} == expected \
            and all(t["health"] == "up" for t in seen[0])
    try:
        wait_for(lambda: status(run)["load"]["state"] in ENDED, 180, "the client to end")
        assert status(run)["load"]["state"] == "COMPLETED", orchc("logs", run, "load", cwd=tmp_path, check=False).stdout
        try:
            wait_for(all_up, 90, "Prometheus to scrape every service and sidecar")
        except BaseException:
            raise AssertionError([(t["labels"], t["health"], t.get("lastError")) for t in seen[0]]) from None
        memory = wait_for(lambda: query(ports["prometheus"], "orchc_process_resident_memory_bytes"), 30, "the process tree's memory")
        assert memory[0]["metric"]["job"] == "ollama" and float(memory[0]["value"][1]) > 0
    finally:
        stop(run, tmp_path)


GRAFANA_STANDIN = '''#!/usr/bin/env python3
"""A stand-in for `grafana server` (Grafana itself is not installed here): answers /api/health, and on Grafana's
admin API call POST /api/admin/provisioning/datasources/reload records whether the basic auth was admin and the
password Grafana was given, and the provisioned data sources it would then read."""
import base64, http.server, json, os, sys
provisioning = os.environ["GF_PATHS_PROVISIONING"]
record = os.environ["ORCHC_TEST_RECORD"]
sources = os.path.join(provisioning, "datasources", "orchc.yaml")
with open(record, "a") as out:
    out.write(json.dumps({"event": "start", "datasources_present": os.path.exists(sources)}) + "\\n")
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/api/health" else 404); self.end_headers(); self.wfile.write(b"{}")
    def do_POST(self):
        expected = "Basic " + base64.b64encode(("admin:" + os.environ["GF_SECURITY_ADMIN_PASSWORD"]).encode()).decode()
        text = open(sources).read() if os.path.exists(sources) else None
        with open(record, "a") as out:
            out.write(json.dumps({"event": "post", "path": self.path, "auth": self.headers.get("Authorization") == expected,
                                  "datasources": text}) + "\\n")
        self.send_response(200); self.end_headers(); self.wfile.write(b'{"message": "Datasources config reloaded"}')
    def log_message(self, *args): pass
http.server.HTTPServer(("0.0.0.0", int(os.environ["GF_SERVER_HTTP_PORT"])), Handler).serve_forever()
'''

LATE_TYPE = """type: late
extends: service
description: a stand-in Prometheus that publishes its endpoint only after `delay` seconds of setup
fields:
  ports: {default: [9090]}
  delay: {type: integer, minimum: 0, maximum: 600, default: 20}
container:
  command: python3 -m http.server {{ ports[0] }} --bind 0.0.0.0
phases:
  setup:
    - sleep {{ delay }}
  health_check:
    - orchc_wait_tcp 127.0.0.1 {{ ports[0] }} {{ health_timeout }}
"""


def test_grafana_starts_at_once_and_reads_its_prometheus_once_that_publishes_its_endpoint(cluster, tmp_path):  # noqa: F811
    """Grafana no longer waits in its setup for the hosts of its data sources (up to an hour, holding its node idle):
    it is ready while its Prometheus is still starting, and once that one has published its endpoint the data source
    file is written with its host and Grafana is asked (admin API, the password never on a command line) to read it."""
    needs("python3", "curl")
    bin_dir, defs = tmp_path / "bin", tmp_path / "defs"
    bin_dir.mkdir()
    defs.mkdir()
    (bin_dir / "grafana").write_text(GRAFANA_STANDIN)
    (bin_dir / "grafana").chmod(0o755)
    (defs / "late.yaml").write_text(LATE_TYPE)
    secret, record, prom_port, grafana_port = tmp_path / "secret", tmp_path / "record.jsonl", free_port(), free_port()
    secret.write_text("s3cr\"et\\pw")
    secret.chmod(0o600)
    (tmp_path / "r.yaml").write_text(
        f"site: local\nservices:\n  - name: prom\n    type: late\n    ports: [{prom_port}]\n    delay: 20\n"
        f"  - name: grafana\n    type: grafana\n    ports: [{grafana_port}]\n    metrics_ports: []\n"
        f"    admin_password: {{file: {secret}}}\n"
        f"    datasources: [{{name: P, type: prometheus, url: 'http://prom:{prom_port}'}}]\n")
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "ORCHC_TEST_RECORD": str(record)}
    done = subprocess.run([sys.executable, "-m", "compiler", "submit", "r.yaml", "--defs", "defs", "--run-dir", str(run)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    try:
        wait_for(lambda: status(run)["grafana"]["service"] == "ready", 60, "grafana to be ready")
        assert status(run)["prom"]["service"] != "ready"     # Grafana did not wait for it
        events = [json.loads(line) for line in record.read_text().splitlines()]
        assert events[0] == {"event": "start", "datasources_present": False}, events

        def reloaded():
            posts = [json.loads(line) for line in record.read_text().splitlines() if '"post"' in line]
            return posts or None
        (post, *_) = wait_for(reloaded, 90, "grafana to be asked to read its data sources again")
        _, host, _ = (run / "endpoints" / "prom").read_text().split(maxsplit=2)
        assert post["path"] == "/api/admin/provisioning/datasources/reload" and post["auth"], post
        assert YAML(typ="safe").load(post["datasources"])["datasources"][0]["url"] == f"http://{host}:{prom_port}"
    finally:
        stop(run, tmp_path)


def test_prometheus_scrapes_the_llm_clients_live_metrics_while_it_runs(cluster, tmp_path):  # noqa: F811
    """The client registers its live /metrics (metrics_port) with the run's Prometheus, which scrapes them while the
    benchmark runs: what Grafana's LLM client dashboard reads (requests by outcome, TTFT histogram)."""
    needs("prometheus", "python3")
    ports = {name: free_port() for name in ("llm", "prometheus", "client")}
    key = tmp_path / "key"
    key.write_text("k" * 32 + "\n")
    key.chmod(0o600)
    (tmp_path / "llm.yaml").write_text(
        f"site: local\nresources: {{time: '00:05:00'}}\nservices:\n"
        f"  - name: llm\n    type: vllm\n    model: tiny\n    ports: [{ports['llm']}]\n    metrics_ports: [{ports['llm']}]\n"
        f"    api_key: {{file: {key}}}\n    health_timeout: 60\n    gpu_exporter: none\n"
        f"  - name: prometheus\n    ports: [{ports['prometheus']}]\n    scrape_interval: 1s\n"
        f"clients:\n  - name: bench\n    type: llm_client\n    target: llm\n    model: tiny\n    api_key: {{file: {key}}}\n"
        f"    num_requests: 60\n    concurrent: 2\n    warmup_requests: 0\n    metrics_port: {ports['client']}\n")
    shim = tmp_path / "bin"
    install_standin(shim, "vllm", ROOT / "tests" / "llm_standin.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}",
           "STANDIN_TOKENS": "20", "STANDIN_FIRST_TOKEN_DELAY": "0.05", "STANDIN_INTER_TOKEN_DELAY": "0.02"}
    run = tmp_path / "run"
    submitted = subprocess.run([sys.executable, "-m", "compiler", "submit", "llm.yaml", "--run-dir", run],
                               cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert submitted.returncode == 0, submitted.stderr
    try:
        ok = wait_for(lambda: query(ports["prometheus"], 'orchc_llm_requests_total{outcome="ok"} > 0'), 120,
                      "the client's live request count in Prometheus")
        assert ok[0]["metric"]["job"] == "bench" and ok[0]["metric"]["orchc_source"] == "llm_client", ok
        ttft = wait_for(lambda: query(ports["prometheus"], 'orchc_llm_ttft_seconds_bucket{le="+Inf"} > 0'), 30, "TTFT")
        assert 0 < float(ttft[0]["value"][1]) <= 60
        wait_for(lambda: status(run)["bench"]["state"] in ENDED, 180, "the client to end")
        assert status(run)["bench"]["state"] == "COMPLETED", orchc("logs", run, "bench", cwd=tmp_path, check=False).stdout
    finally:
        stop(run, tmp_path)
    assert not (run / "monitoring" / "bench.json").exists()   # withdrawn when the client ended

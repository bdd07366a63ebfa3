"""Monitoring that monitors (issue 7, point 7): exporter sidecars, Prometheus file-based discovery, Grafana dashboards.

The end-to-end test runs prometheus + redis with its redis_exporter natively on the test cluster and asks
Prometheus' HTTP API for redis metrics it scraped from the exporter it found through file SD.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import nvidia_smi_standin
import pytest
from conftest import ROOT, in_ci, runtime_into
from ruamel.yaml import YAML
from test_cluster import cluster, free_port, orchc, status, wait_for  # noqa: F401 (cluster is a fixture)
from test_configs import written_files

ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")


def compile_one(tmp_path: Path, recipe: str, job: str, site: str = "local", name: str = "mon") -> str:
    (tmp_path / f"{name}.yaml").write_text(recipe)
    orchc("compile", f"{name}.yaml", "-o", tmp_path / "build", "--site", site, cwd=tmp_path)
    return (tmp_path / "build" / name / f"{job}.sbatch").read_text()


def setup_section(script: str) -> str:
    """The script from the job's variables and values to the end of its setup phase (for prometheus: files and folders)."""
    return "ORCHC_JOB=" + script.split("\nORCHC_JOB=", 1)[1].split("\n# sidecars\n", 1)[0].split("\n# service\n", 1)[0]


def needs(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing and in_ci():
        pytest.fail(f"CI=true but {', '.join(missing)} missing; run tests/install-deps.sh")
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed; run tests/install-deps.sh")


STACK = """\
site: local
resources: {{time: '00:05:00'}}
services:
  - name: redis
    ports: [{redis}]
    data_dir: {data}
    enable_exporter: true
    exporter_port: {exporter}
  - name: prometheus
    ports: [{prometheus}]
    scrape_interval: 1s
"""


# --- compiled output -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_redis_exporter_sidecar_native_and_apptainer(tmp_path):
    recipe = STACK.format(redis=6379, data="/tmp/x", exporter=9121, prometheus=9090).replace("site: local\n", "account: p1\n")
    native = compile_one(tmp_path, recipe, "redis")
    # auth: tls (the default): the exporter presents the run's client certificate
    tls = ' -redis.addr rediss://127.0.0.1:6379 -tls-ca-cert-file "$ORCHC_RUN_DIR/credentials/redis/ca.crt"' \
          ' -tls-client-cert-file "$ORCHC_RUN_DIR/credentials/redis/client.crt"' \
          ' -tls-client-key-file "$ORCHC_RUN_DIR/credentials/redis/client.key" &'
    assert "setsid prometheus-redis-exporter -web.listen-address :9121" + tls in native
    assert "orchc_publish_metrics mon redis_exporter=9121" in native
    apptainer = compile_one(tmp_path, recipe, "redis", site="meluxina")
    assert "docker://oliver006/redis_exporter:v1.45.0" in apptainer
    assert "/redis_exporter -web.listen-address :9121" + tls in apptainer
    plain = compile_one(tmp_path, recipe.replace("    enable_exporter: true\n", "    enable_exporter: true\n    auth: none\n"), "redis")
    assert "setsid prometheus-redis-exporter -web.listen-address :9121 -redis.addr redis://127.0.0.1:6379 &" in plain
    off = compile_one(tmp_path, recipe.replace("    enable_exporter: true\n", ""), "redis")
    assert "redis-exporter" not in off and "redis_exporter=" not in off


def test_node_exporter_and_cadvisor_are_published_for_any_service(tmp_path):
    recipe = ("site: local\nservice:\n  name: redis\n  enable_node_exporter: true\n  node_exporter_port: 9200\n"
              "  enable_cadvisor: true\n  cadvisor_port: 8088\n")
    script = compile_one(tmp_path, recipe, "redis")
    assert "setsid prometheus-node-exporter --web.listen-address=:9200" in script
    assert re.search(r"orchc_publish_metrics .*node_exporter=9200", script)
    assert re.search(r"orchc_publish_metrics .*cadvisor=8088", script)


def test_mysql_exporter_password_never_on_a_command_line(tmp_path):
    recipe = ("site: local\nservice:\n  name: mysql\n  enable_exporter: true\n"
              "  root_password: {env: MYSQL_SECRET}\n")
    for site in ("local", "meluxina"):
        script = compile_one(tmp_path, recipe.replace("site: local\n", "account: p1\n"), "mysql", site=site)
        (line,) = [line for line in script.splitlines() if "setsid" in line and "mysqld" in line and "exporter" in line]
        # the password travels in the environment (DATA_SOURCE_NAME, read by mysqld_exporter 0.14), not in argv
        words_after_setsid = line.split("setsid", 1)[1]
        assert "ROOT_PASSWORD" not in words_after_setsid, line
        assert "ROOT_PASSWORD" in line.split("setsid", 1)[0], line
        assert 'orchc_publish_metrics mon mysqld_exporter="$ORCHC_PORT_exporter_port"' in script


def test_prometheus_config_discovers_files_and_passes_promtool(tmp_path):
    needs("promtool")
    script = compile_one(tmp_path, STACK.format(redis=6379, data="/tmp/x", exporter=9121, prometheus=9090), "prometheus")
    run_dir = tmp_path / "run dir with 'quotes\" and \\ and glob [?]"
    run_dir.mkdir()
    # The generated setup lines write the config, with the run folder's absolute path filled in at run time.
    subprocess.run(["bash", "-c", 'set -e; ORCHC_RUN_DIR=$1; orchc_log() { :; }; orchc_record_job() { :; }; orchc_phase() { :; }; orchc_ports_free() { :; }; orchc_ports() { :; }; ' + setup_section(script), "x", run_dir],
                   check=True, cwd=tmp_path)
    config_path = run_dir / "config" / "prometheus" / "prometheus.yml"
    config = YAML(typ="safe").load(config_path.read_text())
    (discovered,) = [c for c in config["scrape_configs"] if "file_sd_configs" in c]
    (pattern,) = discovered["file_sd_configs"][0]["files"]
    # the folder's own glob characters are escaped: the pattern matches the files of monitoring/ and no others
    assert pattern == re.sub(r"([\\*?\[])", r"\\\1", str(run_dir)) + "/monitoring/*.json"
    assert (run_dir / "monitoring").is_dir()   # created by the setup lines
    # promtool reads the SD files the pattern matches: a broken one fails the check, so the pattern matched it
    (run_dir / "monitoring" / "broken.json").write_text("[{")
    checked = subprocess.run(["promtool", "check", "config", str(config_path)], capture_output=True, text=True)
    assert checked.returncode != 0 and "unexpected end of JSON input" in checked.stdout + checked.stderr, checked.stdout + checked.stderr
    (run_dir / "monitoring" / "broken.json").unlink()
    (run_dir / "monitoring" / "redis.json").write_text(json.dumps(
        [{"targets": ["node01:9121"], "labels": {"job": "redis", "orchc_recipe": "mon", "orchc_source": "redis_exporter"}}]))
    checked = subprocess.run(["promtool", "check", "config", str(config_path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # A '*' in the run folder's path cannot be expressed in file_sd_configs: a clear error, at once.
    starred = tmp_path / "run*"
    starred.mkdir()
    failed = subprocess.run(["bash", "-c", 'set -e; ORCHC_RUN_DIR=$1; orchc_log() { :; }; orchc_record_job() { :; }; orchc_phase() { :; }; orchc_ports_free() { :; }; orchc_ports() { :; }; orchc_fail() { echo "$*" >&2; exit 1; }; '
                             + setup_section(script), "x", starred], capture_output=True, text=True, cwd=tmp_path)
    assert failed.returncode == 1 and "has a '*' in its path" in failed.stderr, failed.stderr


def test_publish_metrics_writes_an_sd_file_and_removes_it_on_exit(tmp_path):
    """The runtime helper, run in a real service script: the file appears atomically and goes with the job."""
    script = compile_one(tmp_path, "site: local\nservice:\n  name: redis\n  enable_exporter: true\n", "redis")
    assert '\norchc_publish_metrics mon redis_exporter="$ORCHC_PORT_exporter_port"' in script
    (runtime,) = (tmp_path / "build" / "mon").glob("orchc-runtime-*.sh")
    program = ('set -o errexit -o pipefail -o errtrace\nORCHC_ROLE=service\n. "$2"\nORCHC_JOB=redis; ORCHC_RUN_DIR=$1\n'
               "orchc_publish_metrics mon redis_exporter=9121 node_exporter=9100\n"
               'cp "$ORCHC_RUN_DIR"/monitoring/redis.json "$ORCHC_RUN_DIR"/seen.json\n')
    subprocess.run(["bash", "-c", program, "x", tmp_path, runtime], check=True, timeout=30, capture_output=True)
    groups = json.loads((tmp_path / "seen.json").read_text())
    assert [g["labels"]["orchc_source"] for g in groups] == ["redis_exporter", "node_exporter"]
    assert all(g["labels"]["job"] == "redis" and g["labels"]["orchc_recipe"] == "mon" for g in groups)
    assert groups[0]["targets"][0].endswith(":9121")
    assert not (tmp_path / "monitoring" / "redis.json").exists(), "the SD file outlived its job"
    assert not list((tmp_path / "monitoring").glob("*.tmp*"))


# --- Grafana ---------------------------------------------------------------------------------------------------

def test_grafana_datasource_has_a_fixed_uid_and_dashboards_are_grafana_json(tmp_path):
    script = compile_one(tmp_path, "site: local\nservice:\n  name: grafana\n", "grafana")
    files = written_files(script)
    (sources,) = [text for path, text in files.items() if path.endswith("datasources/orchc.yaml")]
    doc = YAML(typ="safe").load(sources)
    assert doc["datasources"][0]["uid"] == "orchc-prometheus"
    dashboards = {path.rsplit("/", 1)[1]: json.loads(text) for path, text in files.items() if path.endswith(".json")}
    assert set(dashboards) == {"orchc-redis.json", "orchc-mysql.json", "orchc-node.json", "orchc-vllm.json", "orchc-ollama.json",
                               "orchc-gpu.json", "orchc-llm-client.json"}
    uids = set()
    for name, board in dashboards.items():
        # Grafana's dashboard JSON model: title, uid, schemaVersion, panels with gridPos, datasource and targets
        assert isinstance(board["title"], str) and board["title"], name
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", board["uid"]), name
        uids.add(board["uid"])
        assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36, name
        assert board["panels"], name
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel in board["panels"]:
            assert panel["type"] in ("timeseries", "stat", "gauge"), (name, panel)
            assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
            assert panel["datasource"] == {"type": "prometheus", "uid": "orchc-prometheus"}
            assert panel["targets"], (name, panel["title"])
            for target in panel["targets"]:
                assert target["expr"] and target["refId"]
                assert target["datasource"] == {"type": "prometheus", "uid": "orchc-prometheus"}
    assert len(uids) == len(dashboards)


def test_grafana_dashboard_queries_parse_as_promql(tmp_path):
    needs("promtool")
    script = compile_one(tmp_path, "site: local\nservice:\n  name: grafana\n", "grafana")
    rules = {"groups": [{"name": "dashboards", "rules": []}]}
    for path, text in written_files(script).items():
        if path.endswith(".json"):
            for panel in json.loads(text)["panels"]:
                for target in panel["targets"]:
                    expr = target["expr"].replace("$__rate_interval", "1m")
                    rules["groups"][0]["rules"].append({"record": f"orchc:check{len(rules['groups'][0]['rules'])}",
                                                        "expr": expr})
    (tmp_path / "rules.yml").write_text(json.dumps(rules))
    checked = subprocess.run(["promtool", "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# --- on the test cluster ---------------------------------------------------------------------------------------

def query(port: int, promql: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            body = json.load(answer)
    except OSError:
        return []
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.mark.cluster
def test_prometheus_scrapes_redis_through_its_exporter_found_by_file_sd(cluster, tmp_path):  # noqa: F811
    needs("redis-server", "redis-cli", "prometheus", "prometheus-redis-exporter")
    ports = {"redis": free_port(), "exporter": free_port(), "prometheus": free_port()}
    (tmp_path / "mon.yaml").write_text(STACK.format(data=tmp_path / "redis-data", **ports))
    run = tmp_path / "run"
    orchc("submit", "mon.yaml", "--run-dir", run, cwd=tmp_path)
    try:
        wait_for(lambda: (run / "endpoints" / "prometheus").exists() and (run / "endpoints" / "redis").exists(),
                 60, "both services to publish their endpoints")
        sd_file = run / "monitoring" / "redis.json"
        (group,) = json.loads(sd_file.read_text())
        assert group["labels"]["orchc_source"] == "redis_exporter"
        assert group["targets"][0].endswith(f":{ports['exporter']}")
        # No target was listed in the recipe: Prometheus found the exporter through the file.
        up = wait_for(lambda: [r for r in query(ports["prometheus"], "redis_up") if r["value"][1] == "1"],
                      60, "Prometheus to scrape redis_up == 1 from the exporter")
        assert up[0]["metric"]["job"] == "redis" and up[0]["metric"]["orchc_source"] == "redis_exporter"
        assert up[0]["metric"]["instance"] == group["targets"][0]
        clients = wait_for(lambda: query(ports["prometheus"], "redis_connected_clients"), 30, "redis_connected_clients")
        assert float(clients[0]["value"][1]) >= 1   # the exporter's own connection at least
    finally:
        orchc("cancel", run, cwd=tmp_path, check=False)
    wait_for(lambda: all(job["state"] in ENDED for job in status(run).values()), 60, "every job to end")
    wait_for(lambda: not (run / "monitoring" / "redis.json").exists(), 15, "the SD file to be withdrawn")
    left = subprocess.run(["pgrep", "-af", f"redis-exporter.*{ports['exporter']}"], capture_output=True, text=True).stdout
    assert not [line for line in left.splitlines() if "pgrep" not in line], left



# --- GPU sampler (tested against tests/nvidia_smi_standin.py, a stand-in: no GPU or nvidia-smi here) ------------

GPU_SERVICE = """\
type: gpu_probe
extends: service
fields:
  ports: {default: [9]}
container:
  command: sleep 4
phases:
  health_check: []
"""
GPU_CLIENT = """\
type: gpu_bench
extends: client
phases:
  health_check: []
  benchmark:
    - sleep 4
"""
GPU_RECIPE = """\
site: local
resources: {partition: gpu, gres: "gpu:2"}
service:
  name: svc
  type: gpu_probe
client:
  name: bench
  type: gpu_bench
  target_endpoint: 127.0.0.1:9
"""


def compile_gpu(tmp_path: Path, recipe: str = GPU_RECIPE, site: str = "local") -> Path:
    (tmp_path / "defs").mkdir(exist_ok=True)
    (tmp_path / "defs" / "gpu_probe.yaml").write_text(GPU_SERVICE)
    (tmp_path / "defs" / "gpu_bench.yaml").write_text(GPU_CLIENT)
    (tmp_path / "gpu.yaml").write_text(recipe)
    orchc("compile", "gpu.yaml", "--defs", "defs", "-o", tmp_path / "build", "--site", site, cwd=tmp_path)
    return tmp_path / "build" / "gpu"


SAMPLER = "setsid nvidia-smi --query-gpu=" + ",".join(nvidia_smi_standin.FIELDS)


@pytest.mark.slow
def test_the_gpu_sampler_is_compiled_into_gpu_jobs_only(tmp_path):
    """GPU jobs call the runtime's sampler (orchc_gpu_sampler, which runs nvidia-smi); other jobs never do."""
    out = compile_gpu(tmp_path, GPU_RECIPE.replace("  target_endpoint:", "  gpu_sample_interval: 5\n  target_endpoint:"))
    service, client = (out / "svc.sbatch").read_text(), (out / "bench.sbatch").read_text()
    (runtime,) = [p.read_text() for p in out.glob("orchc-runtime-*.sh")]
    assert SAMPLER in runtime and "--format=csv,nounits -l \"$1\" >\"$2/gpu.csv\"" in runtime
    for script, interval in ((service, 1), (client, 5)):
        assert f'\norchc_gpu_sampler {interval} "$ORCHC_RUN_DIR/results/' in script
    for gres in ("", "gres: \"gpu:0\"", "gres: \"tmpfs:10\""):
        out = compile_gpu(tmp_path, GPU_RECIPE.replace('gres: "gpu:2"', gres))
        assert "orchc_gpu_sampler" not in (out / "svc.sbatch").read_text() + (out / "bench.sbatch").read_text(), gres
    for gres in ("gpu", "gpu:a100:1", "tmpfs:10,gpu:1"):
        out = compile_gpu(tmp_path, GPU_RECIPE.replace('gres: "gpu:2"', f'gres: "{gres}"'))
        assert "\norchc_gpu_sampler 1 " in (out / "svc.sbatch").read_text(), gres
    out = compile_gpu(tmp_path, GPU_RECIPE.replace("  type: gpu_", "  enable_gpu_sampler: false\n  type: gpu_"))
    assert "orchc_gpu_sampler" not in (out / "svc.sbatch").read_text() + (out / "bench.sbatch").read_text()
    # Under apptainer nvidia-smi stays a host program: started by the batch shell, not in a container.
    out = compile_gpu(tmp_path, "account: p1\n" + GPU_RECIPE.replace("site: local\n", "").replace(
        "  command: sleep 4", "  image: probe\n  source: docker://busybox:1.36\n  command: sleep 4"), site="meluxina")
    (line,) = [line for line in (out / "svc.sbatch").read_text().splitlines() if "orchc_gpu_sampler " in line]
    assert line.startswith("orchc_gpu_sampler ") and "apptainer" not in line
    (line,) = [line for line in runtime.splitlines() if "nvidia-smi --query-gpu" in line and SAMPLER in line]
    assert line.strip().startswith(SAMPLER) and "apptainer" not in line
    # the runtime's other nvidia-smi call, the driver check of orchc_need_driver, is a host program too
    assert all("apptainer" not in line for line in runtime.splitlines() if "nvidia-smi --query-gpu" in line)


def run_job(script: Path, run: Path, path: str) -> subprocess.CompletedProcess[str]:
    runtime_into(run, script.parent)
    env = {**os.environ, "ORCHC_RUN_DIR": str(run), "HOME": str(run), "PATH": path}
    return subprocess.run(["bash", script.name], cwd=script.parent, env=env, capture_output=True, text=True, timeout=60)


def without_nvidia_smi(path: str) -> str:
    return os.pathsep.join(folder for folder in path.split(os.pathsep) if not (Path(folder) / "nvidia-smi").exists())


@pytest.mark.slow
def test_the_gpu_sampler_writes_nvidia_smi_rows_into_the_results_of_services_and_clients(tmp_path):
    out = compile_gpu(tmp_path)
    run = tmp_path / "run"
    path = f"{nvidia_smi_standin.install(tmp_path / 'bin')}{os.pathsep}{without_nvidia_smi(os.environ['PATH'])}"
    for job in ("svc", "bench"):
        done = run_job(out / f"{job}.sbatch", run, path)
        assert done.returncode == 0, done.stderr
        assert f"into {run}/results/{job}/gpu.csv" in done.stderr
        lines = (run / "results" / job / "gpu.csv").read_text().splitlines()
        assert lines[0] == nvidia_smi_standin.HEADER
        rows = [line.split(", ") for line in lines[1:]]
        # the job ran 4 s and sampled every second: at least 3 samples of both GPUs, in order, none lost or garbled
        assert len(rows) >= 6 and len(rows) % 2 == 0, lines
        for number, values in enumerate(rows):
            assert re.fullmatch(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{3}", values[0]), values
            assert values[1:] == nvidia_smi_standin.row(number // 2, number % 2), (number, values)
        # the sampler ended with the job
        left = subprocess.run(["pgrep", "-f", "nvidia_smi_standin"], capture_output=True, text=True).stdout
        assert not left.strip(), left


@pytest.mark.slow
def test_a_gpu_job_on_a_node_without_nvidia_smi_logs_it_and_goes_on(tmp_path):
    out = compile_gpu(tmp_path)
    run = tmp_path / "run"
    for job in ("svc", "bench"):
        done = run_job(out / f"{job}.sbatch", run, without_nvidia_smi(os.environ["PATH"]))
        assert done.returncode == 0, done.stderr
        assert re.search(r"\] no nvidia-smi on \S+: GPU sampling skipped\n", done.stderr), done.stderr
        assert not (run / "results" / job / "gpu.csv").exists()


# --- every service and sidecar registers (issue 20, item 4) -------------------------------------------------------

@pytest.mark.parametrize("service, published", [
    # gres gpu:1 by default; every port auto (a reference to the one the job chose) but memcached_like's own
    ("vllm", 'vllm="$ORCHC_PORT_ports_0" cadvisor="$ORCHC_PORT_cadvisor_port" node_exporter="$ORCHC_PORT_node_exporter_port" '
             'gpu_exporter="$ORCHC_PORT_gpu_exporter_port"'),
    ("ollama", 'cadvisor="$ORCHC_PORT_cadvisor_port" node_exporter="$ORCHC_PORT_node_exporter_port" gpu_exporter="$ORCHC_PORT_gpu_exporter_port"'),
    ("chroma", 'cadvisor="$ORCHC_PORT_cadvisor_port" node_exporter="$ORCHC_PORT_node_exporter_port"'),
    ("memcached_like", 'memcached_like=9150 cadvisor="$ORCHC_PORT_cadvisor_port" node_exporter="$ORCHC_PORT_node_exporter_port"'),
])
def test_every_service_publishes_its_metrics_sources_without_a_line_in_its_type(tmp_path, service, published):
    """The shared machinery publishes what a type declares (metrics_ports, exporter sidecars, node_exporter,
    cAdvisor): vllm, ollama and chroma never wrote the line, and a user type gets it without writing it."""
    defs = tmp_path / "defs"
    defs.mkdir()
    (defs / "memcached_like.yaml").write_text(
        "type: memcached_like\nextends: service\nfields:\n  ports: {default: [11211]}\n  metrics_ports: {default: [9150]}\n"
        "container:\n  command: memcached -p {{ ports[0] }}\n")
    (tmp_path / "mon.yaml").write_text(f"site: local\nservice:\n  name: svc\n  type: {service}\n"
                                       "  enable_node_exporter: true\n  enable_cadvisor: true\n")
    orchc("compile", "mon.yaml", "--defs", defs, "-o", tmp_path / "build", cwd=tmp_path)
    script = (tmp_path / "build" / "mon" / "svc.sbatch").read_text()
    lines = [line for line in script.splitlines() if line.startswith("orchc_publish_metrics")]
    assert lines == [f"orchc_publish_metrics mon {published}"]
    # after the health check (the service answers), before its endpoint is published
    assert script.find("\n# health check\n") < script.index(lines[0]) < script.index("orchc_publish_endpoint")


def test_no_type_file_repeats_the_publishing_line():
    for path in (Path(__file__).parent.parent / "service_defs").glob("*.yaml"):
        assert not re.search(r"^\s*- orchc_publish_metrics", path.read_text(), re.M), path


def test_a_sidecar_whose_metrics_port_is_not_an_integer_field_is_refused_where_it_is_declared(tmp_path):
    defs = tmp_path / "defs"
    defs.mkdir()
    (defs / "thing.yaml").write_text(
        "type: thing\nextends: service\nfields:\n  ports: {default: [1234]}\n  enable_exp: {type: boolean, default: true}\n"
        "container:\n  command: thing\nsidecars:\n  exp:\n    when: enable_exp\n    metrics: {source: thing_exporter, port: exp_port}\n"
        "    container:\n      command: exp\n")
    (tmp_path / "t.yaml").write_text("site: local\nservice:\n  name: svc\n  type: thing\n")
    failed = orchc("compile", "t.yaml", "--defs", defs, "-o", tmp_path / "build", cwd=tmp_path, check=False)
    assert failed.returncode == 1
    assert "defs/thing.yaml:11:45: error:" in failed.stderr and "'exp_port', which is not an integer (or auto) field" in failed.stderr, failed.stderr
    assert "Traceback" not in failed.stderr


# --- the GPU exporter (issue 20, item 4) ---------------------------------------------------------------------------

GPU_SERVICE_RECIPE = "site: local\nservice:\n  name: svc\n  type: memcached_like\n  resources: {partition: gpu, gres: \"gpu:1\"}\n"


def compile_memcached_like(tmp_path: Path, recipe: str, *options: str) -> str:
    defs = tmp_path / "defs"
    defs.mkdir(exist_ok=True)
    (defs / "memcached_like.yaml").write_text(
        "type: memcached_like\nextends: service\nfields:\n  ports: {default: [11211]}\ncontainer:\n  command: sleep 600\n")
    (tmp_path / "gpu.yaml").write_text(recipe)
    orchc("compile", "gpu.yaml", "--defs", defs, "-o", tmp_path / "build", *options, cwd=tmp_path)
    return (tmp_path / "build" / "gpu" / "svc.sbatch").read_text()


def test_a_service_with_gpus_runs_and_publishes_a_gpu_exporter(tmp_path):
    script = compile_memcached_like(tmp_path, GPU_SERVICE_RECIPE)
    (shipped,) = (tmp_path / "build" / "gpu").glob("orchc-file-*-gpu_exporter.py")
    assert shipped.read_text() == (Path(__file__).parent.parent / "service_defs" / "files" / "gpu_exporter.py").read_text()
    assert f"\norchc_shipped_file {shipped.name} " in script
    assert '\norchc_gpu_exporter nvidia-smi "$ORCHC_PORT_gpu_exporter_port" "$ORCHC_RUN_DIR"/config/svc/gpu_exporter.py\n' in script
    assert '\norchc_publish_metrics gpu gpu_exporter="$ORCHC_PORT_gpu_exporter_port"\n' in script
    contained = compile_memcached_like(tmp_path, GPU_SERVICE_RECIPE, "--self-contained")
    assert "\norchc_shipped_file " not in contained and "\ndef exposition(rows):" in contained
    dcgm = compile_memcached_like(tmp_path, dcgm_site(tmp_path, GPU_SERVICE_RECIPE) + "  gpu_exporter_port: 9400\n")
    assert "\norchc_gpu_exporter dcgm 9400\n" in dcgm and "\norchc_publish_metrics gpu dcgm_exporter=9400\n" in dcgm
    assert "gpu_exporter.py" not in dcgm
    for recipe in (GPU_SERVICE_RECIPE + "  gpu_exporter: none\n", GPU_SERVICE_RECIPE.replace('gres: "gpu:1"', 'gres: "gpu:0"')):
        script = compile_memcached_like(tmp_path, recipe)
        assert "orchc_gpu_exporter" not in script and "orchc_publish_metrics" not in script, recipe


def dcgm_site(tmp_path: Path, recipe: str) -> str:
    """`recipe` on a site like `local` whose profile says its nodes have NVIDIA's dcgm-exporter."""
    local = (Path(__file__).parent.parent / "sites" / "local.yaml").read_text()
    (tmp_path / "dgx.yaml").write_text(local.replace("site: local", "site: dgx") + "gpu_exporter: dcgm\n")
    return recipe.replace("site: local", "site: dgx.yaml")


def test_the_gpu_exporter_follows_the_site_and_dcgm_where_the_site_has_none_is_a_located_error(tmp_path):
    assert '\norchc_gpu_exporter dcgm "$ORCHC_PORT_gpu_exporter_port"\n' in compile_memcached_like(tmp_path, dcgm_site(tmp_path, GPU_SERVICE_RECIPE))
    chosen = compile_memcached_like(tmp_path, dcgm_site(tmp_path, GPU_SERVICE_RECIPE) + "  gpu_exporter: nvidia-smi\n")
    assert '\norchc_gpu_exporter nvidia-smi "$ORCHC_PORT_gpu_exporter_port" "$ORCHC_RUN_DIR"/config/svc/gpu_exporter.py\n' in chosen
    (tmp_path / "defs").mkdir(exist_ok=True)
    (tmp_path / "defs" / "memcached_like.yaml").write_text(
        "type: memcached_like\nextends: service\nfields:\n  ports: {default: [11211]}\ncontainer:\n  command: sleep 600\n")
    (tmp_path / "gpu.yaml").write_text(GPU_SERVICE_RECIPE + "  gpu_exporter: dcgm\n")
    done = subprocess.run([sys.executable, "-m", "compiler", "validate", "gpu.yaml", "--defs", "defs"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert re.search(r"^gpu\.yaml:6:\d+: error: gpu_exporter: dcgm: site 'local' .*dcgm-exporter", done.stderr, re.M), done.stderr


def test_the_gpu_exporter_serves_what_nvidia_smi_answers(tmp_path):
    """service_defs/files/gpu_exporter.py against the stand-in nvidia-smi (2 GPUs, known values); without nvidia-smi
    it still answers, with orchc_gpu_nvidia_smi_up 0."""
    import socket as socket_module
    import sys
    import time

    bin_dir = nvidia_smi_standin.install(tmp_path / "bin")
    program = Path(__file__).parent.parent / "service_defs" / "files" / "gpu_exporter.py"
    for path, gpus in ((f"{bin_dir}{os.pathsep}{without_nvidia_smi(os.environ['PATH'])}", 2), (without_nvidia_smi(os.environ["PATH"]), 0)):
        port = free_port()
        exporter = subprocess.Popen([sys.executable, str(program), "--port", str(port), "--address", "127.0.0.1"],
                                    env={**os.environ, "PATH": path, "ORCHC_STANDIN_GPUS": "2"})
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    socket_module.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
                text = answer.read().decode()
        finally:
            exporter.kill()
            exporter.wait()
        samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if not line.startswith("#")}
        assert samples.pop("orchc_gpu_nvidia_smi_up") == (1 if gpus else 0)
        assert len(samples) == 6 * gpus, text
        for index in range(gpus):
            values = dict(zip(nvidia_smi_standin.FIELDS[1:], nvidia_smi_standin.row(0, index)))
            labels = f'{{gpu="{index}",uuid="{values["uuid"]}",name="{nvidia_smi_standin.NAME}"}}'
            assert samples[f"orchc_gpu_power_watts{labels}"] == float(values["power.draw"])
            assert samples[f"orchc_gpu_memory_used_bytes{labels}"] == float(values["memory.used"]) * 1024 * 1024
            assert samples[f"orchc_gpu_utilization_ratio{labels}"] == pytest.approx(float(values["utilization.gpu"]) / 100)
            assert samples[f"orchc_gpu_temperature_celsius{labels}"] == float(values["temperature.gpu"])


def test_the_process_exporter_reports_the_service_process_tree_read_from_proc(tmp_path):
    """A service whose program holds 64 MiB in a child process, run by its generated script: the exporter, started
    with the service's pid, reports the tree's resident memory (at least those 64 MiB), its processes and CPU time."""
    import signal
    import time

    port = free_port()
    defs = tmp_path / "defs"
    defs.mkdir()
    (defs / "holder.yaml").write_text(
        "type: holder\nextends: service\nfields:\n  ports: {default: [1]}\ncontainer:\n"
        "  command: sh -c 'python3 -c \"import time; x = bytearray(64 << 20); time.sleep(600)\"; :'\n")
    (tmp_path / "p.yaml").write_text(f"site: local\nservice:\n  name: svc\n  type: holder\n  enable_process_exporter: true\n"
                                     f"  process_exporter_port: {port}\n")
    orchc("compile", "p.yaml", "--defs", defs, "-o", tmp_path / "out", cwd=tmp_path)
    run = tmp_path / "out" / "p"
    script = (run / "svc.sbatch").read_text()
    assert f'\norchc_process_exporter {port} "$ORCHC_RUN_DIR"/config/svc/process_exporter.py "$ORCHC_SERVICE_PID"\n' in script
    assert f"\norchc_publish_metrics p process={port}\n" in script
    job = subprocess.Popen(["bash", "svc.sbatch"], cwd=run, env={**os.environ, "ORCHC_RUN_DIR": str(run), "HOME": str(run)},
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline, samples = time.monotonic() + 30, {}
        while time.monotonic() < deadline and samples.get("orchc_process_resident_memory_bytes", 0) < 64 << 20:
            time.sleep(0.3)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
                    text = answer.read().decode()
            except OSError:
                continue
            samples = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if not line.startswith("#")}
        assert job.poll() is None, job.communicate(timeout=10)[1]
        assert samples["orchc_process_resident_memory_bytes"] >= 64 << 20, samples
        assert samples["orchc_process_resident_memory_bytes"] < 512 << 20, samples     # the tree only, not the node
        assert samples["orchc_process_count"] == 2 and samples["orchc_process_root_up"] == 1     # sh and python3
        assert samples["orchc_process_cpu_seconds_total"] >= 0
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGTERM)
        job.communicate(timeout=30)


VLLM_METRICS = {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "vllm:prompt_tokens_total",
                "vllm:generation_tokens_total", *(f"vllm:{name}_seconds_{part}" for name in ("e2e_request_latency", "time_to_first_token",
                                                                                          "inter_token_latency")
                                                  for part in ("bucket", "sum", "count"))}
"""vLLM's metrics the dashboards may use: the names vLLM's documentation lists (docs.vllm.ai, "Production Metrics") and
its own example dashboard queries (examples/observability/prometheus_grafana/grafana.json of vllm-project/vllm)."""
PROMQL_WORDS = {"sum", "max", "min", "avg", "by", "rate", "histogram_quantile", "without", "on", "ignoring", "count"}


def exported_names(text: str) -> set[str]:
    return {line.split("{")[0].split()[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_the_llm_and_gpu_dashboards_use_only_metrics_that_exist(tmp_path):
    """Every metric the vLLM, Ollama and GPU dashboards query is served: by vLLM (VLLM_METRICS), by orchc's GPU exporter
    (its answer to the stand-in nvidia-smi's rows) or process exporter (its answer for this process), or is Prometheus' up."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent.parent / "service_defs" / "files"))
    import gpu_exporter
    import process_exporter

    rows = [dict(zip(gpu_exporter.QUERY, nvidia_smi_standin.exporter_row(0)))]
    served = VLLM_METRICS | exported_names(gpu_exporter.exposition(rows)) | exported_names(process_exporter.exposition(os.getpid())) | {"up"}
    script = compile_one(tmp_path, "site: local\nservice:\n  name: grafana\n", "grafana")
    boards = {path.rsplit("/", 1)[1]: json.loads(text) for path, text in written_files(script).items()
              if path.endswith(("orchc-vllm.json", "orchc-ollama.json", "orchc-gpu.json"))}
    assert len(boards) == 3
    for name, board in boards.items():
        used = set()
        for panel in board["panels"]:
            for target in panel["targets"]:
                expr = re.sub(r"\{[^}]*\}|\[[^]]*\]|by \([^)]*\)", " ", target["expr"])
                used |= {word for word in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr) if word not in PROMQL_WORDS}
        assert used and used <= served, (name, used - served)


def llm_bench_module():
    import sys

    sys.path.insert(0, str(Path(__file__).parent.parent / "service_defs" / "files"))
    import llm_bench
    return llm_bench


LIVE_RECORDS = [
    {"ok": True, "ttft_s": 0.2, "e2e_s": 1.2, "output_tokens": 11},     # TPOT (1.2 - 0.2) / 10 = 0.1 s
    {"ok": True, "ttft_s": 3.0, "e2e_s": 3.0, "output_tokens": 1},      # one token: no TPOT
    {"ok": False, "ttft_s": None, "e2e_s": 0.5, "output_tokens": None, "error": "HTTP 500"},
]


def test_the_llm_clients_live_metrics_count_what_it_measured():
    """llm_bench's /metrics (--metrics-port): requests by outcome, output tokens, and TTFT, TPOT and E2E histograms of
    the measured requests so far, in Prometheus' text format (cumulative buckets)."""
    live = llm_bench_module().LiveMetrics()
    for record in LIVE_RECORDS:
        live.add(record)
    lines = set(live.exposition().splitlines())
    assert {'orchc_llm_requests_total{outcome="ok"} 2', 'orchc_llm_requests_total{outcome="failed"} 1',
            "orchc_llm_output_tokens_total 12"} <= lines
    assert {'orchc_llm_ttft_seconds_bucket{le="0.1"} 0', 'orchc_llm_ttft_seconds_bucket{le="0.25"} 1',
            'orchc_llm_ttft_seconds_bucket{le="2.5"} 1', 'orchc_llm_ttft_seconds_bucket{le="5"} 2',
            'orchc_llm_ttft_seconds_bucket{le="+Inf"} 2', "orchc_llm_ttft_seconds_count 2", "orchc_llm_ttft_seconds_sum 3.2"} <= lines
    assert {'orchc_llm_tpot_seconds_bucket{le="0.05"} 0', 'orchc_llm_tpot_seconds_bucket{le="0.1"} 1',
            "orchc_llm_tpot_seconds_count 1"} <= lines
    assert {"orchc_llm_e2e_seconds_count 2", 'orchc_llm_e2e_seconds_bucket{le="1"} 0'} <= lines
    assert "# TYPE orchc_llm_ttft_seconds histogram" in lines and "# TYPE orchc_llm_requests_total counter" in lines


def test_the_llm_client_dashboard_uses_only_metrics_the_client_serves(tmp_path):
    live = llm_bench_module().LiveMetrics()
    for record in LIVE_RECORDS:
        live.add(record)
    served = exported_names(live.exposition()) | {"up"}
    script = compile_one(tmp_path, "site: local\nservice:\n  name: grafana\n", "grafana")
    (board,) = [json.loads(text) for path, text in written_files(script).items() if path.endswith("orchc-llm-client.json")]
    used = set()
    for panel in board["panels"]:
        for target in panel["targets"]:
            expr = re.sub(r"\{[^}]*\}|\[[^]]*\]|by \([^)]*\)", " ", target["expr"])
            used |= {word for word in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr) if word not in PROMQL_WORDS}
    assert {"orchc_llm_ttft_seconds_bucket", "orchc_llm_tpot_seconds_bucket", "orchc_llm_output_tokens_total"} <= used
    assert used <= served, used - served

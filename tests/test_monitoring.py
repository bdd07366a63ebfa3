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
import urllib.parse
import urllib.request
from pathlib import Path

import nvidia_smi_standin
import pytest
from conftest import in_ci, runtime_into
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
        assert "orchc_publish_metrics mon mysqld_exporter=9104" in script


def test_prometheus_config_discovers_files_and_passes_promtool(tmp_path):
    needs("promtool")
    script = compile_one(tmp_path, STACK.format(redis=6379, data="/tmp/x", exporter=9121, prometheus=9090), "prometheus")
    run_dir = tmp_path / "run dir with 'quotes\" and \\ and glob [?]"
    run_dir.mkdir()
    # The generated setup lines write the config, with the run folder's absolute path filled in at run time.
    subprocess.run(["bash", "-c", 'set -e; ORCHC_RUN_DIR=$1; orchc_log() { :; }; orchc_record_job() { :; }; orchc_phase() { :; }; orchc_ports_free() { :; }; ' + setup_section(script), "x", run_dir],
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
    failed = subprocess.run(["bash", "-c", 'set -e; ORCHC_RUN_DIR=$1; orchc_log() { :; }; orchc_record_job() { :; }; orchc_phase() { :; }; orchc_ports_free() { :; }; orchc_fail() { echo "$*" >&2; exit 1; }; '
                             + setup_section(script), "x", starred], capture_output=True, text=True, cwd=tmp_path)
    assert failed.returncode == 1 and "has a '*' in its path" in failed.stderr, failed.stderr


def test_publish_metrics_writes_an_sd_file_and_removes_it_on_exit(tmp_path):
    """The runtime helper, run in a real service script: the file appears atomically and goes with the job."""
    script = compile_one(tmp_path, "site: local\nservice:\n  name: redis\n  enable_exporter: true\n", "redis")
    assert "\norchc_publish_metrics mon redis_exporter=9121" in script
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
    assert set(dashboards) == {"orchc-redis.json", "orchc-mysql.json", "orchc-node.json"}
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
    (line,) = [line for line in runtime.splitlines() if "nvidia-smi --query-gpu" in line]
    assert line.strip().startswith(SAMPLER) and "apptainer" not in line


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

"""allocation: one (compiler/script/allocation.py): a recipe's jobs as srun steps of one SLURM allocation.

Compile side: the outer script, its resources, the manifest and the plan, submit.sh, located errors,
shellcheck. On the test cluster: a redis service and a two-client ladder in one allocation, and cancel.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from conftest import shellcheck
from test_cluster import cluster, free_port, needs_redis, redis_processes, status, wait_for  # noqa: F401
from test_cluster import orchc as cluster_orchc
from test_runs import FakeSlurm
from test_runs import orchc as fake_orchc

from compiler.core.errors import ClusterError
from compiler.output.plan import ALLOCATION_SCRIPT, plan_from_manifest

LADDER = """\
name: ladder
site: local
allocation: {allocation}
service:
  name: redis
  ports: [{port}]
  health_timeout: 120
  resources: {{time: '00:05:00', cpus_per_task: 2, mem: 2G}}
client:
  name: bench
  type: redis_client
  tests: [set]
  requests: 2000
  resources: {{time: '00:03:00', mem: 1G}}
sweep:
  matrix:
    bench.clients: [1, 4]
"""


def compiled(orchc, write, tmp_path: Path, allocation: str = "one", port: int = 16379,
             text: str = LADDER, sub: str = "a") -> Path:
    recipe = write(f"{sub}/ladder.yaml", text.format(allocation=allocation, port=port))
    done = orchc("compile", "ladder.yaml", "-o", "out", cwd=recipe.parent)
    assert done.code == 0, done.err
    return recipe.parent / "out" / "ladder"


def sbatch_lines(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]


# --- compile side ------------------------------------------------------------------------------------

def test_one_allocation_asks_for_the_union_of_the_jobs_resources(orchc, write, tmp_path):
    folder = compiled(orchc, write, tmp_path)
    script = (folder / ALLOCATION_SCRIPT).read_text()
    # the service and the largest client at once: one node and task each, the most CPUs and memory one job
    # asks for; time: the service's start (health_timeout 120 s) + two clients of 3 min one after another
    assert sbatch_lines(script) == ["--job-name=ladder_" + sbatch_lines(script)[0].rsplit("_", 1)[1],
                                    "--nodes=2", "--ntasks=2", "--cpus-per-task=2", "--mem=2G", "--time=00:08:00",
                                    "--output=slurm-%j.out", "--error=slurm-%j.err"]
    assert re.fullmatch(r"--job-name=ladder_[0-9a-f]{8}", sbatch_lines(script)[0])
    # each job's own script as a step: the service in the background, the clients in the manifest's order
    # placement: spread (the default): the service on the allocation's first node, the clients on the next
    assert "orchc_step redis '' --nodes=1 --relative=0 --cpus-per-task=2 --mem=2G\n" in script
    assert ('bench-p02-r1) orchc_step bench-p02-r1 "$SLURM_JOB_ID.redis" --nodes=1 --relative=1 --cpus-per-task=1 '
            '--mem=1G --time=00:03:00 ;;') in script
    assert "    [bench-p01-r1]=''\n    [bench-p02-r1]='bench-p01-r1'\n" in script
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["allocation"]["mode"] == "one" and manifest["allocation"]["script"] == ALLOCATION_SCRIPT
    assert manifest["allocation"]["resources"] == {"nodes": 2, "ntasks": 2, "cpus_per_task": 2, "mem": "2G",
                                                   "time": "00:08:00"}
    assert manifest["allocation"]["placement"] == {"redis": 0, "bench-p01-r1": 1, "bench-p02-r1": 1}
    assert ALLOCATION_SCRIPT in manifest["files"]
    # the jobs' scripts are the ones allocation: separate writes, byte for byte
    separate = compiled(orchc, write, tmp_path, allocation="separate", sub="separate")
    for name in ("redis.sbatch", "bench-p01-r1.sbatch", "bench-p02-r1.sbatch"):
        assert (folder / name).read_bytes() == (separate / name).read_bytes()
    assert not (separate / ALLOCATION_SCRIPT).exists()
    assert "allocation" not in json.loads((separate / "manifest.json").read_text())


def test_allocation_resources_override_the_computed_ones_and_packing_sums_memory(orchc, write, tmp_path):
    text = LADDER.replace("allocation: {allocation}", "allocation: {{mode: one, resources: {{nodes: 1, time: '10'}}}}")
    folder = compiled(orchc, write, tmp_path, text=text)
    lines = sbatch_lines((folder / ALLOCATION_SCRIPT).read_text())
    # two jobs at once on one node: their memory adds up (2G + 1G), the time is the recipe's
    assert lines[1:6] == ["--nodes=1", "--ntasks=2", "--cpus-per-task=2", "--mem=3G", "--time=10"]
    how = json.loads((folder / "manifest.json").read_text())["allocation"]["how"]
    assert how["nodes"] == how["time"] == "allocation.resources"


def test_placement_pack_puts_every_job_on_the_allocations_one_node(orchc, write, tmp_path):
    text = LADDER.replace("allocation: {allocation}", "allocation: {{mode: one, placement: pack}}")
    folder = compiled(orchc, write, tmp_path, text=text)
    script = (folder / ALLOCATION_SCRIPT).read_text()
    # co-located: one node, the memory of the jobs that run at once added up, every step on it
    assert sbatch_lines(script)[1:6] == ["--nodes=1", "--ntasks=2", "--cpus-per-task=2", "--mem=3G", "--time=00:08:00"]
    assert "orchc_step redis '' --nodes=1 --relative=0 " in script
    assert 'orchc_step bench-p02-r1 "$SLURM_JOB_ID.redis" --nodes=1 --relative=0 ' in script
    allocation = json.loads((folder / "manifest.json").read_text())["allocation"]
    assert allocation["how"]["nodes"].startswith("placement: pack")
    assert set(allocation["placement"].values()) == {0}


def test_an_unknown_placement_is_a_located_error(orchc, write, tmp_path):
    recipe = write("p/ladder.yaml", LADDER.replace("allocation: {allocation}", "allocation: {{mode: one, placement: packed}}")
                   .format(port=16379))
    done = orchc("compile", "ladder.yaml", "-o", "out", cwd=recipe.parent)
    assert done.code == 1 and "ladder.yaml:3:" in done.err and "placement" in done.err, done.err
    assert "Traceback" not in done.err


def test_the_plan_and_submit_sh_submit_only_the_allocation(orchc, write, tmp_path):
    folder = compiled(orchc, write, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    plan = plan_from_manifest(manifest, "manifest.json")
    assert plan.allocation == ALLOCATION_SCRIPT and [s.name for s in plan.steps] == ["redis", "bench-p01-r1",
                                                                                      "bench-p02-r1"]
    submit = (folder / "submit.sh").read_text()
    assert re.findall(r"\$\((sbatch[^)]*)\)", submit) == ["sbatch --parsable allocation.sbatch"]
    for bad in ({"mode": "one", "script": "../x.sbatch"}, {"mode": "two", "script": ALLOCATION_SCRIPT}, "one"):
        with pytest.raises(ClusterError, match="allocation"):
            plan_from_manifest({**manifest, "allocation": bad}, "manifest.json")


def test_orchc_submit_submits_one_job_and_records_it_for_every_job(tmp_path):
    slurm = FakeSlurm(tmp_path / "fake")
    (tmp_path / "ladder.yaml").write_text(LADDER.format(allocation="one", port=16379))
    done = fake_orchc(slurm, "submit", "ladder.yaml", "--run-dir", "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    sbatch = slurm.calls("sbatch")
    assert len(sbatch) == 1 and sbatch[0][-1].endswith("--parsable allocation.sbatch"), sbatch
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["state"] == "submitted"
    assert [(job["name"], job["slurm_id"]) for job in run["jobs"]] == [("redis", "101"), ("bench-p01-r1", "101"),
                                                                       ("bench-p02-r1", "101")]
    name = re.search(r"--job-name=(\S+)", (tmp_path / "run" / ALLOCATION_SCRIPT).read_text())
    assert name and name.group(1).startswith("ladder_")                 # the recipe's name: runs.owned knows it
    slurm.set("squeue.out", f"101|RUNNING|n|0:30|0|||{name.group(1)}|\n")
    cancelled = fake_orchc(slurm, "cancel", "run", cwd=tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr
    assert [call[-1] for call in slurm.calls("scancel")] == ["--me 101"]


TWO_CLIENTS = """\
name: ladder
site: local
allocation: {allocation}
service:
  name: redis
  ports: [{port}]
clients:
  - name: near
    type: redis_client
  - name: far
    type: redis_client
    target_endpoint: 'example.org:6379'
    after: []
"""


def test_the_allocation_script_passes_shellcheck(orchc, write, tmp_path):
    folder = compiled(orchc, write, tmp_path)
    other = compiled(orchc, write, tmp_path, text=TWO_CLIENTS, sub="two")
    alone = compiled(orchc, write, tmp_path, text=TWO_CLIENTS.split("clients:")[0], sub="alone")
    scripts = [folder / ALLOCATION_SCRIPT, folder / "submit.sh", other / ALLOCATION_SCRIPT, alone / ALLOCATION_SCRIPT]
    checked = subprocess.run([shellcheck(), "-s", "bash", *map(str, scripts)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # a client with no target in the recipe gets no target id and releases no service; it waits for no client
    script = (other / ALLOCATION_SCRIPT).read_text()
    assert "far) orchc_step far '' --nodes=1 --relative=1 --cpus-per-task=1 --mem=0 --time=00:30:00 ;;" in script
    assert "[far]=''" in script and "far) orchc_release" not in script and "near) orchc_release near redis" in script


@pytest.mark.parametrize(("change", "line", "message"), [
    ("resources: {{time: '00:05:00', cpus_per_task: 2, mem: 2G}}",
     "resources: {{time: '00:05:00', partition: gpu}}\n  ", "different partition values (cpu, gpu)"),
    ("resources: {{time: '00:05:00', cpus_per_task: 2, mem: 2G}}",
     "resources: {{time: '00:05:00', gres: 'gpu:1,tmp:1'}}\n  ", "cannot be an srun option"),
])
def test_what_one_allocation_cannot_hold_is_a_located_error(orchc, write, tmp_path, change, line, message):
    text = LADDER.replace(change, line.rstrip()).replace(
        "resources: {{time: '00:03:00', mem: 1G}}", "resources: {{time: '00:03:00', partition: cpu}}")
    recipe = write("ladder.yaml", text.format(allocation="one", port=16379))
    done = orchc("compile", recipe, "-o", tmp_path / "out", cwd=tmp_path)
    assert done.code == 1
    assert done.err.startswith("ladder.yaml:3:13: error: ") and message in done.err.splitlines()[0], done.err
    assert not (tmp_path / "out" / "ladder").exists()


def test_the_allocation_partition_must_be_one_of_the_sites(orchc, write, tmp_path):
    text = LADDER.replace("site: local", "site: meluxina\naccount: p200981").replace(
        "allocation: {allocation}", "allocation: {{mode: one, resources: {{partition: gpux}}}}")
    recipe = write("ladder.yaml", text.format(port=16379))
    done = orchc("compile", recipe, "-o", tmp_path / "out", cwd=tmp_path)
    assert done.code == 1, done.err
    assert done.err.startswith("ladder.yaml:4:48: error: partition 'gpux' is not one of site meluxina's"), done.err


def test_an_unknown_allocation_mode_is_refused_by_the_schema(orchc, write, tmp_path):
    recipe = write("ladder.yaml", LADDER.format(allocation="shared", port=16379))
    done = orchc("compile", recipe, "-o", tmp_path / "out", cwd=tmp_path)
    assert done.code == 1 and done.err.startswith("ladder.yaml:3:13: error: "), done.err


# --- on the test cluster -------------------------------------------------------------------------------

def cluster_ladder(port: int, requests: int = 2000) -> str:
    # the test cluster has one node: both steps share it (allocation.resources.nodes: 1)
    return (LADDER.replace("allocation: {allocation}", "allocation: {{mode: one, resources: {{nodes: 1}}}}")
            .replace("requests: 2000", f"requests: {requests}").replace(", mem: 2G", "").replace(", mem: 1G", "")
            .format(port=port))


def jobs_in(folder: Path) -> list[str]:
    """The SLURM jobs that ran with `folder` as their working directory, from the job completion records."""
    done = subprocess.run(["sacct", "-c", "-n", "-P", "-o", "JobID,WorkDir"], capture_output=True, text=True,
                          timeout=30)
    return [line.split("|")[0] for line in done.stdout.splitlines() if line.split("|")[-1] == str(folder)]


@pytest.mark.cluster
def test_a_service_and_a_client_ladder_run_in_one_allocation(cluster, needs_redis, tmp_path):  # noqa: F811
    port = free_port()
    (tmp_path / "ladder.yaml").write_text(cluster_ladder(port))
    run = tmp_path / "run"
    submitted = cluster_orchc("submit", "ladder.yaml", "--run-dir", run, cwd=tmp_path)
    ids = set(re.findall(r"SLURM job (\d+)", submitted.stdout))
    assert len(ids) == 1, submitted.stdout
    (allocation,) = ids
    names = ["redis", "bench-p01-r1", "bench-p02-r1"]
    wait_for(lambda: all(job["state"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
                         for job in status(run).values()), 180, "the allocation to end")
    states = status(run)
    assert sorted(states) == sorted(names)
    assert {job["slurm id"] for job in states.values()} == {allocation}, states
    assert all(job["state"] == "COMPLETED" for job in states.values()), (states, _logs(run))
    # exactly one SLURM job ran from the run folder, and every job of the recipe ran inside it, as a step
    wait_for(lambda: jobs_in(run.resolve()), 30, "the job completion record")
    assert jobs_in(run.resolve()) == [allocation]
    records = {name: json.loads((run / "jobs" / f"{name}.json").read_text()) for name in names}
    assert {record["slurm_job_id"] for record in records.values()} == {allocation}
    assert (run / f"slurm-{allocation}.redis.out").exists() and (run / f"slurm-{allocation}.bench-p02-r1.err").exists()
    # both clients have results, measured against the service, one after the other
    results = json.loads(cluster_orchc("results", run, "--json", cwd=tmp_path).stdout)
    rows = {row["job"]: row["results"] for row in results["rows"]}
    for name in names[1:]:
        assert rows[name]["status"] == "complete" and rows[name]["metrics"]["set.requests_per_s"] > 0, rows[name]
    first_ended = (run / "results" / "bench-p01-r1" / "results.json").stat().st_mtime
    second_started = (run / "done" / f"bench-p02-r1.{allocation}.redis.started").stat().st_mtime
    assert second_started >= first_ended - 0.05
    # the service stopped once the last client was done, and withdrew its endpoint
    ended = {name: records[name]["ended"] for name in names}
    assert ended["redis"] >= max(ended["bench-p01-r1"], ended["bench-p02-r1"])
    assert "all clients finished; stopping" in (run / f"slurm-{allocation}.redis.err").read_text()
    assert not (run / "endpoints" / "redis").exists()
    wait_for(lambda: not redis_processes(port), 15, "redis-server to be gone")


@pytest.mark.cluster
@pytest.mark.parametrize("placement", ["spread", "pack"])
def test_placement_spreads_the_jobs_over_the_allocations_nodes_or_packs_them_on_one(cluster, needs_redis, tmp_path,  # noqa: F811
                                                                                    placement):
    text = (LADDER.replace("allocation: {allocation}", f"allocation: {{{{mode: one, placement: {placement}}}}}")
            .replace(", mem: 2G", "").replace(", mem: 1G", "").format(port=free_port()))
    (tmp_path / "ladder.yaml").write_text(text)
    run = tmp_path / "run"
    cluster_orchc("submit", "ladder.yaml", "--run-dir", run, cwd=tmp_path)
    wait_for(lambda: all(job["state"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
                         for job in status(run).values()), 180, "the allocation to end")
    assert all(job["state"] == "COMPLETED" for job in status(run).values()), _logs(run)
    # each job records the nodes of its own step (SLURM_STEP_NODELIST), not the allocation's
    nodes = {name: json.loads((run / "jobs" / f"{name}.json").read_text())["nodes"]
             for name in ("redis", "bench-p01-r1", "bench-p02-r1")}
    assert all(re.fullmatch(r"n[1-4]", node) for node in nodes.values()), nodes
    assert nodes["bench-p01-r1"] == nodes["bench-p02-r1"], nodes
    if placement == "spread":
        assert nodes["redis"] != nodes["bench-p01-r1"], nodes
    else:
        assert len(set(nodes.values())) == 1, nodes


@pytest.mark.cluster
def test_cancel_stops_every_step_of_the_allocation(cluster, needs_redis, tmp_path):  # noqa: F811
    port = free_port()
    (tmp_path / "ladder.yaml").write_text(cluster_ladder(port, requests=100_000_000))
    run = tmp_path / "run"
    cluster_orchc("submit", "ladder.yaml", "--run-dir", run, cwd=tmp_path)
    wait_for(lambda: list((run / "done").glob("bench-p01-r1.*.started")) if (run / "done").is_dir() else [],
             60, "the first client to start")
    assert redis_processes(port)
    benchmark = f"redis-benchmark .*-p {port} "
    wait_for(lambda: subprocess.run(["pgrep", "-f", benchmark], capture_output=True).returncode == 0, 30,
             "redis-benchmark to run")
    cluster_orchc("cancel", run, cwd=tmp_path)
    wait_for(lambda: all(job["state"] == "CANCELLED" for job in status(run).values()), 30, "state CANCELLED")
    wait_for(lambda: not redis_processes(port), 15, "redis-server to be gone")
    wait_for(lambda: subprocess.run(["pgrep", "-f", benchmark], capture_output=True).returncode == 1, 15,
             "redis-benchmark to be gone")
    wait_for(lambda: not (run / "endpoints" / "redis").exists(), 10, "the endpoint file to be removed")
    # the running client kept what it had, and says why it stopped; the next one never started
    first = json.loads((run / "results" / "bench-p01-r1" / "results.json").read_text())
    assert first["status"] == "partial" and first["stopped_by"] == "SIGTERM", first
    assert not (run / "results" / "bench-p02-r1" / "results.json").exists()
    time.sleep(1)
    assert not subprocess.run(["squeue", "-h", "-s", "-j", status(run)["redis"]["slurm id"]],
                              capture_output=True, text=True).stdout.strip()


def _logs(run: Path) -> str:
    return "\n".join(f"--- {path.name}\n{path.read_text()[-1500:]}" for path in sorted(run.glob("slurm-*")))

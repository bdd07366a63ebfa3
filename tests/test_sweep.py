"""Sweeps (compiler/recipe/sweep.py) and the order of clients: points, shared services, ladders, located errors."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
from test_cluster import cluster, free_port, needs_redis, status, wait_for  # noqa: F401
from test_cluster import orchc as cluster_orchc

HEADLINE = re.compile(r"^(?P<file>[^\s:]+):(?P<line>\d+):(?P<col>\d+): error: (?P<message>.+)$", re.M)

BASE = """\
name: sw
site: local
service:
  name: redis
  auth: none
client:
  name: bench
  type: redis_client
  tests: [set]
"""


def compiled(orchc, write, tmp_path: Path, text: str, *extra: str) -> dict:
    result = orchc("compile", write("sw.yaml", text), "-o", "out", *extra, cwd=tmp_path)
    assert result.code == 0, result.err
    return json.loads((tmp_path / "out" / "sw" / "manifest.json").read_text())


def errors(result) -> list[tuple[int, int, str]]:
    assert result.code == 1 and "Traceback" not in result.err, result.err
    return [(int(m["line"]), int(m["col"]), m["message"]) for m in HEADLINE.finditer(result.err)]


def test_matrix_zip_exclude_and_repeat_make_the_points_in_order(orchc, write, tmp_path):
    manifest = compiled(orchc, write, tmp_path, BASE + """\
sweep:
  matrix:
    bench.clients: [10, 50]
    bench.pipeline: [1, 16]
  zip:
    bench.data_size: [3, 1024]
    bench.requests: [1000, 200]
  exclude:
    - {bench.clients: 50, bench.pipeline: 1}
  repeat: 2
""")
    sweep = manifest["sweep"]
    assert sweep["keys"] == ["bench.clients", "bench.pipeline", "bench.data_size", "bench.requests"]
    assert sweep["repeat"] == 2
    values = [tuple(point["values"][key] for key in sweep["keys"]) for point in sweep["points"]]
    assert values == [(10, 1, 3, 1000), (10, 1, 1024, 200), (10, 16, 3, 1000), (10, 16, 1024, 200),
                      (50, 16, 3, 1000), (50, 16, 1024, 200)]
    assert [point["point"] for point in sweep["points"]] == [f"p0{i}" for i in range(1, 7)]
    jobs = manifest["jobs"]
    assert [job["name"] for job in jobs] == ["redis"] + [f"bench-p0{p}-r{r}" for p in range(1, 7) for r in (1, 2)]
    clients = jobs[1:]
    assert all(job["target"] == "redis" and job["depends_on"] == ["redis"] for job in clients)
    # one ladder against one service: each client after the one before it has ended
    assert "after_end" not in clients[0]
    assert all(job["after_end"] == [before["name"]] for before, job in itertools.pairwise(clients))
    assert [(job["point"], job["repeat"]) for job in clients[:3]] == [("p01", 1), ("p01", 2), ("p02", 1)]
    script = (tmp_path / "out" / "sw" / "bench-p05-r2.sbatch").read_text()
    assert "-c 50 -d 3 -P 16 -n 1000" in script


def test_points_that_change_a_service_get_their_own_service_job(orchc, write, tmp_path):
    manifest = compiled(orchc, write, tmp_path, BASE + """\
sweep:
  matrix:
    redis.maxmemory: [1gb, 2gb]
    bench.clients: [1, 2]
""")
    jobs = {job["name"]: job for job in manifest["jobs"]}
    assert [name for name, job in jobs.items() if job["role"] == "service"] == ["redis-c1", "redis-c2"]
    assert [jobs[f"bench-p0{p}-r1"]["target"] for p in range(1, 5)] == ["redis-c1", "redis-c1", "redis-c2", "redis-c2"]
    assert "after_end" not in jobs["bench-p03-r1"] and jobs["bench-p04-r1"]["after_end"] == ["bench-p03-r1"]
    assert "--maxmemory 2gb" in (tmp_path / "out" / "sw" / "redis-c2.sbatch").read_text()
    submit = (tmp_path / "out" / "sw" / "submit.sh").read_text()
    assert re.search(r"--dependency=after:\"\$\{JOB_2\}\",afterany:\"\$\{JOB_5\}\" .* bench-p04-r1\.sbatch", submit)


def test_a_bad_value_is_located_and_names_its_point_once(orchc, write, tmp_path):
    text = BASE + "sweep:\n  matrix:\n    bench.clients: [10, -5, 20]\n    bench.pipeline: [1, 2]\n"
    found = errors(orchc("compile", write("sw.yaml", text), "-o", "out", cwd=tmp_path))
    assert len(found) == 1, found
    line, column, message = found[0]
    assert (line, column) == (12, 25)
    assert "(at sweep point p03 (bench.clients=-5, bench.pipeline=1))" in message
    assert not (tmp_path / "out").exists()


def test_a_problem_of_every_point_is_reported_once(orchc, write, tmp_path):
    text = BASE.replace("  tests: [set]\n", "  tests: [set]\n  nosuchfield: 1\n") + \
        "sweep:\n  matrix:\n    bench.clients: [1, 2, 3]\n"
    found = errors(orchc("compile", write("sw.yaml", text), "-o", "out", cwd=tmp_path))
    assert len(found) == 1 and found[0][0] == 10 and "sweep point p01" in found[0][2], found


@pytest.mark.parametrize("block,where,message", [
    ("  zip:\n    bench.clients: [1, 2]\n    bench.pipeline: [1]\n", (12, 21), "the same number of values"),
    ("  matrix:\n    bench.clients: [1, 2]\n  exclude:\n    - {bench.pipelin: 1}\n", (14, 8), "not a swept key"),
    ("  matrix:\n    bench.clients: [1]\n  exclude:\n    - {bench.clients: 1}\n", (11, 3), "leave no point"),
    ("  matrix:\n    nosuch.field: [1, 2]\n", (12, 5), "neither a job of this recipe nor a field"),
    ("  matrix:\n    bench.clients: []\n", (12, 20), "should be non-empty"),
    ("  repeat: 0\n", (11, 11), "minimum"),
    ("  matrix:\n    a: [" + ", ".join(["1"] * 101) + "]\n    b: [" + ", ".join(["1"] * 100) + "]\n", (13, 5),
     "at most 10000"),
])
def test_sweep_mistakes_are_located(orchc, write, tmp_path, block, where, message):
    found = errors(orchc("compile", write("sw.yaml", BASE + "sweep:\n" + block), "-o", "out", cwd=tmp_path))
    assert len(found) == 1 and found[0][:2] == where and message in found[0][2], found
    assert not (tmp_path / "out").exists()


def test_set_changes_the_sweep(orchc, write, tmp_path):
    text = BASE + "sweep:\n  matrix:\n    bench.clients: [10, 50]\n"
    manifest = compiled(orchc, write, tmp_path, text, "--set", "sweep.repeat=3",
                        "--set", "sweep.matrix.bench.pipeline=[1, 4]")
    assert len(manifest["sweep"]["points"]) == 4 and manifest["sweep"]["repeat"] == 3
    assert len([job for job in manifest["jobs"] if job["role"] == "client"]) == 12
    bad = orchc("compile", write("sw.yaml", text), "-o", "o2", "--set", "sweep.repeat=zero", cwd=tmp_path)
    assert bad.code == 1 and "--set sweep.repeat: expected a whole number" in bad.err


def test_the_same_sweep_compiles_to_the_same_bytes(orchc, write, tmp_path):
    text = BASE + "sweep:\n  matrix:\n    bench.clients: [1, 2]\n  repeat: 2\n"
    first = compiled(orchc, write, tmp_path, text)
    (tmp_path / "out").rename(tmp_path / "first")
    second = compiled(orchc, write, tmp_path, text)
    assert first == second
    for path in (tmp_path / "first" / "sw").iterdir():
        assert path.read_bytes() == (tmp_path / "out" / "sw" / path.name).read_bytes(), path.name


# --- the order of clients, with or without a sweep -----------------------------------------------

TWO_CLIENTS = """\
name: sw
site: local
service:
  name: redis
clients:
  - name: load
    type: redis_client
  - name: read
    type: redis_client
"""


def test_clients_of_one_service_run_one_after_another_unless_asked(orchc, write, tmp_path):
    jobs = {job["name"]: job for job in compiled(orchc, write, tmp_path, TWO_CLIENTS)["jobs"]}
    assert jobs["read"]["after_end"] == ["load"]
    (tmp_path / "out").rename(tmp_path / "first")
    jobs = {job["name"]: job for job in compiled(orchc, write, tmp_path, TWO_CLIENTS + "    after: []\n")["jobs"]}
    assert "after_end" not in jobs["read"]                                 # at once, beside the other


def test_after_names_an_earlier_client(orchc, write, tmp_path):
    text = TWO_CLIENTS.replace("    type: redis_client\n  - name: read", "    type: redis_client\n    after: [read]\n"
                               "  - name: read")
    found = errors(orchc("compile", write("sw.yaml", text), "-o", "out", cwd=tmp_path))
    assert [(line, column) for line, column, _ in found] == [(8, 13)]
    assert "waits for 'read', which is no client listed before it" in found[0][2]


def test_show_points_lists_the_points(orchc, write, tmp_path):
    write("sw.yaml", BASE + "sweep:\n  matrix:\n    bench.clients: [10, 50]\n  repeat: 2\n")
    shown = orchc("show", "sw.yaml", "--points", cwd=tmp_path)
    assert shown.code == 0, shown.err
    assert re.search(r"p01\s+10\s+bench-p01-r1, bench-p01-r2", shown.out), shown.out
    assert re.search(r"p02\s+50\s+bench-p02-r1, bench-p02-r2", shown.out), shown.out


# --- on the test cluster ---------------------------------------------------------------------------

def test_a_sweep_runs_as_a_ladder_against_one_service_on_the_cluster(cluster, needs_redis, tmp_path):  # noqa: F811
    port = free_port()
    (tmp_path / "sw.yaml").write_text(
        f"name: sw\nsite: local\nservice:\n  name: redis\n  ports: [{port}]\n  resources: {{time: '00:05:00'}}\n"
        "client:\n  name: bench\n  type: redis_client\n  tests: [set]\n  requests: 2000\n"
        "sweep:\n  matrix:\n    bench.clients: [1, 4]\n    bench.pipeline: [1, 8]\n"
        "  zip:\n    bench.data_size: [3, 64]\n    bench.keyspace: [10, 1000]\n"
        "  exclude:\n    - {bench.clients: 4, bench.pipeline: 1}\n    - {bench.data_size: 64}\n  repeat: 2\n"
        "references:\n  bench.set.requests_per_s: {min: 1}\n")
    run = tmp_path / "run"
    submitted = cluster_orchc("submit", "sw.yaml", "--run-dir", run, cwd=tmp_path)
    assert submitted.stdout.count("SLURM job") == 7, submitted.stdout
    names = ["redis"] + [f"bench-p0{p}-r{r}" for p in (1, 2, 3) for r in (1, 2)]
    wait_for(lambda: all(job["state"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
                         for job in status(run).values()), 240, "every job of the sweep to end")
    states = status(run)
    assert sorted(states) == sorted(names) and all(job["state"] == "COMPLETED" for job in states.values()), states
    # one after another: each client started once the one before it had written its results
    clients = names[1:]
    for before, after in itertools.pairwise(clients):
        ended = (run / "results" / before / "results.json").stat().st_mtime
        started = next((run / "done").glob(f"{after}.*.started")).stat().st_mtime
        assert started >= ended - 0.05, (before, after)
    data = json.loads(cluster_orchc("results", run, "--json", cwd=tmp_path).stdout)
    rows = {(row["point"], row["repeat"]): row for row in data["rows"]}
    assert sorted(rows) == [(f"p0{p}", r) for p in (1, 2, 3) for r in (1, 2)]
    assert rows[("p03", 2)]["values"] == {"bench.clients": 4, "bench.pipeline": 8, "bench.data_size": 3,
                                          "bench.keyspace": 10}
    assert rows[("p03", 2)]["results"]["parameters"]["clients"] == 4
    assert all(row["results"]["status"] == "complete" for row in rows.values())
    rates = [a for a in data["aggregates"] if a["metric"] == "set.requests_per_s"]
    assert [a["point"] for a in rates] == ["p01", "p02", "p03"] and all(a["n"] == 2 and a["mean"] > 0 for a in rates)
    table = cluster_orchc("results", run, cwd=tmp_path).stdout
    assert re.search(r"p02\s+1\s+8\s+3\s+10\s+1\s+bench\s+COMPLETED\s+set\.requests_per_s", table), table
    # the campaign commands on this real run: its references hold, it equals itself, and it has a report
    assert cluster_orchc("results", run, "--check", cwd=tmp_path).returncode == 0
    same = cluster_orchc("compare", run, run, "--threshold", "*.requests_per_s=1", cwd=tmp_path, check=False)
    assert same.returncode == 0, same.stderr
    cluster_orchc("report", run, "-o", tmp_path / "report.html", cwd=tmp_path)
    assert (tmp_path / "report.html").read_text().count("<svg") >= 2


# --- bounds, checked before anything is expanded ----------------------------------------------------

def values(count: int, start: int = 1) -> str:
    return "[" + ", ".join(str(n) for n in range(start, start + count)) + "]"


def test_too_many_points_is_located_at_the_axis_that_crosses_the_bound(orchc, write, tmp_path):
    text = BASE + (f"sweep:\n  matrix:\n    bench.clients: {values(30)}\n    bench.pipeline: {values(30)}\n"
                   f"    bench.data_size: {values(30)}\n")
    found = errors(orchc("validate", write("sw.yaml", text), cwd=tmp_path))
    assert found[0][:2] == (14, 5), found
    assert "more than 10000 points from here on (27000 in all)" in found[0][2]


def test_too_many_points_from_the_command_line_is_located_there(orchc, write, tmp_path):
    text = BASE + f"sweep:\n  matrix:\n    bench.clients: {values(200)}\n"
    result = orchc("validate", write("sw.yaml", text), "--set", f"sweep.matrix.bench.pipeline={values(100)}", cwd=tmp_path)
    assert result.code == 1 and "Traceback" not in result.err, result.err
    first = result.err.splitlines()[0]
    assert first.startswith("<command line>:") and "more than 10000 points from here on (20000 in all)" in first, first
    result = orchc("validate", write("sw.yaml", text), "--set", "sweep.repeat=1000000000", cwd=tmp_path)
    assert result.code == 1 and "--set sweep.repeat: expected a whole number from 1 to 1000" in result.err, result.err


def test_points_times_repeat_is_bounded(orchc, write, tmp_path):
    text = BASE + f"sweep:\n  matrix:\n    bench.clients: {values(2000)}\n  repeat: 1000\n"
    found = errors(orchc("validate", write("sw.yaml", text), cwd=tmp_path))
    assert found[0][:2] == (11, 3), found
    assert "2000 points repeated 1000 times (2000000 runs of each client); at most 1000000" in found[0][2]


def test_excludes_naming_too_many_sets_of_keys_are_refused_at_the_rule_that_crosses(orchc, write, tmp_path):
    ones = [f"bench.k{n}" for n in range(30)]
    matrix = "".join(f"    {key}: [1]\n" for key in ones)
    rules = "".join(f"    - {{{a}: 2, {b}: 2, {c}: 2}}\n" for a, b, c in itertools.combinations(ones, 3))
    text = BASE + (f"sweep:\n  matrix:\n    bench.clients: {values(100)}\n    bench.pipeline: {values(100)}\n"
                   f"{matrix}  exclude:\n{rules}")
    found = errors(orchc("validate", write("sw.yaml", text), cwd=tmp_path))
    assert found[0][:2] == (45 + 333, 7), found   # the 334th rule, on line 45 + 333
    assert "the rules name 334 different sets of keys; checking 10000 points against them takes more than" in found[0][2]


def test_excludes_match_values_of_any_shape_by_equality(orchc, write, tmp_path):
    text = BASE + ("sweep:\n  matrix:\n    bench.tests: [[set], [get], [set, get]]\n    bench.clients: [1, 2]\n"
                   "  exclude:\n    - {bench.tests: [get]}\n    - {bench.tests: [set, get], bench.clients: 2.0}\n")
    manifest = compiled(orchc, write, tmp_path, text)
    points = [(point["values"]["bench.tests"], point["values"]["bench.clients"]) for point in manifest["sweep"]["points"]]
    assert points == [(["set"], 1), (["set"], 2), (["set", "get"], 1)]

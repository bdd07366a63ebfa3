"""orchc status, logs and runs: what a job waits for, a sweep's progress, following logs, listing runs.

Against the in-process fake scheduler, against fake squeue/sacct answers (slurm.run_command replaced), and
on the real test cluster (tests/cluster/start.sh; these fail instead of skipping under CI=true).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from fakes import FakeScheduler
from test_cluster import cluster, wait_for
from test_cluster import orchc as real_orchc
from test_scheduler import fake

from compiler.output.pipeline import Options, compile_all
from compiler.run import logs, runs, slurm
from compiler.run.scheduler import JobState

__all__ = ["cluster", "fake"]   # fixtures, imported for the tests below

RECIPE = ("site: local\nservice:\n  name: cache\n  type: redis\nclients:\n  - name: load\n    type: redis_client\n"
          "    target: cache\n  - name: bench\n    type: redis_client\n    target: cache\n")
SWEEP = RECIPE.split("clients:")[0] + ("client:\n  name: bench\n  type: redis_client\n  target: cache\n"
                                       "sweep:\n  matrix:\n    bench.clients: [1, 2]\n  repeat: 2\n")


def submitted(tmp_path: Path, fake: FakeScheduler, recipe: str = RECIPE, name: str = "run") -> Path:
    (tmp_path / "r.yaml").write_text(recipe)
    (compiled,) = compile_all([tmp_path / "r.yaml"], Options())
    runs.submit(compiled, tmp_path / name, fake)
    return tmp_path / name



def ticking_clock(monkeypatch) -> None:
    """A fake clock for the time a run is created (stamped to the second): one second later at every run, so that
    runs submitted within one real second are still told apart by age."""
    stamps = (f"2026-12-01T10:00:{second:02d}Z" for second in range(60))
    monkeypatch.setattr(runs, "_now", lambda: next(stamps))

def rows(result) -> dict[str, dict]:
    assert result.code == 0, result.err
    return {row["job"]: row for row in json.loads(result.out)["jobs"]}


# --- what a job waits for -------------------------------------------------------------------------

def test_pending_jobs_say_why_and_when_from_one_poll(fake, tmp_path, orchc):
    run = submitted(tmp_path, fake)
    fake.advance("1000", "PENDING", "", reason="Priority", start="2026-11-26T18:00:00Z", elapsed="0:00:00")
    fake.advance("1001", "PENDING", "", reason="Dependency")
    fake.calls.clear()
    found = rows(orchc("status", run, "--json"))
    assert [method for method, _ in fake.calls] == ["poll"]
    assert (found["cache"]["reason"], found["cache"]["start"], found["cache"]["elapsed"]) == \
        ("Priority", "2026-11-26T18:00:00Z", "0:00:00")
    assert (found["load"]["reason"], found["load"]["start"]) == ("Dependency", None)
    table = orchc("status", run).out.splitlines()
    load = next(line for line in table if line.startswith("load"))
    assert "PENDING" in load and "N/A" in load and load.endswith("Dependency")
    cache = next(line for line in table if line.startswith("cache"))
    assert "2026-11-26T18:00:00Z" in cache and "N/A" not in cache


def test_a_service_is_starting_until_it_publishes_its_own_endpoint(fake, tmp_path, orchc):
    run = submitted(tmp_path, fake)
    fake.advance("1000", "RUNNING", start="2026-11-26T17:00:00Z", elapsed="0:01:02")
    fake.advance("1001", "RUNNING")
    assert rows(orchc("status", run, "--json"))["cache"]["service"] == "starting"
    (run / "endpoints").mkdir()
    (run / "endpoints" / "cache").write_text("999 node1 6379\n")      # left by another job of that name
    assert rows(orchc("status", run, "--json"))["cache"]["service"] == "starting"
    (run / "endpoints" / "cache").write_text("1000 node1 6379\n")
    found = rows(orchc("status", run, "--json"))
    assert found["cache"]["service"] == "ready" and found["load"]["service"] is None
    assert "ready" in next(line for line in orchc("status", run).out.splitlines() if line.startswith("cache"))
    fake.advance("1000", "COMPLETED")
    assert rows(orchc("status", run, "--json"))["cache"]["service"] is None


def test_a_service_says_it_is_preparing_while_its_phase_file_says_so(fake, tmp_path, orchc):
    """phases/<job> (orchc_phase): `preparing` while it builds its image or downloads its model, then `starting`."""
    run = submitted(tmp_path, fake)
    fake.advance("1000", "RUNNING")
    (run / "phases").mkdir()
    (run / "phases" / "cache").write_text("999 preparing 1700000000 0\n")   # left by another job of that name
    assert rows(orchc("status", run, "--json"))["cache"]["service"] == "starting"
    (run / "phases" / "cache").write_text("1000 preparing 1700000000 0\n")
    assert rows(orchc("status", run, "--json"))["cache"]["service"] == "preparing"
    (run / "phases" / "cache").write_text("1000 starting 1700000000 300\n")
    assert rows(orchc("status", run, "--json"))["cache"]["service"] == "starting"


def test_a_damaged_or_hostile_endpoint_is_not_ready(fake, tmp_path, orchc):
    run = submitted(tmp_path, fake)
    fake.advance("1000", "RUNNING")
    (run / "endpoints").mkdir()
    (run / "endpoints" / "cache").mkdir()                              # a folder, not a file
    assert rows(orchc("status", run, "--json"))["cache"]["service"] == "starting"
    (run / "endpoints" / "cache").rmdir()
    (run / "endpoints" / "cache").write_bytes(b"1000" + b" x" * 5000)  # larger than any endpoint
    assert rows(orchc("status", run, "--json"))["cache"]["service"] == "starting"


ME = __import__("pwd").getpwuid(__import__("os").geteuid()).pw_name
SQUEUE_ROWS = ("201|RUNNING|vm|1-02:03:04|0|None|2026-11-25T15:16:11|svc_0123abcd|\n"
               "202|PENDING||0:00|0|Dependency|N/A|after_0123abcd|\n"
               "203|PENDING||0:00|0|Resources|2026-11-26T17:31:31|waits_0123abcd|\n")
SACCT_ROWS = f"204|COMPLETED|0:0|vm|00:00:30|2026-11-26T17:00:00|{ME}|done_0123abcd\n"


def write_run(folder: Path, jobs: list[tuple[str, str, str]]) -> Path:
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({
        "recipe": "r", "site": "local", "created": "2026-11-26T17:00:00Z", "run_dir": str(folder), "state": "submitted",
        "error": None, "jobs": [{"name": name, "type": "t", "role": role, "target": None, "script": f"{name}.sbatch",
                                 "slurm_id": job_id, "submitted": "2026-11-26T17:00:00Z"} for name, job_id, role in jobs]}))
    return folder


def test_slurm_answers_become_one_time_format_in_every_state(tmp_path, orchc, monkeypatch):
    calls: list[list[str]] = []

    def answer(command, timeout, cwd=None, env=None):
        calls.append(list(command))
        return slurm.Answer(0, SQUEUE_ROWS if command[0] == "squeue" else SACCT_ROWS, "")

    monkeypatch.setattr(slurm, "run_command", answer)
    monkeypatch.setattr(slurm.SlurmScheduler, "_completion_file_only", None)
    run = write_run(tmp_path / "run", [("svc", "201", "service"), ("after", "202", "client"),
                                       ("waits", "203", "client"), ("done", "204", "client")])
    found = rows(orchc("status", run, "--json"))
    assert [call[0] for call in calls] == ["squeue", "sacct"]          # one squeue for all, sacct for the one it forgot
    assert {name: (row["state"], row["start"], row["elapsed"], row["reason"]) for name, row in found.items()} == {
        "svc": ("RUNNING", "2026-11-25T15:16:11Z", "26:03:04", None),
        "after": ("PENDING", None, "0:00:00", "Dependency"),
        "waits": ("PENDING", "2026-11-26T17:31:31Z", "0:00:00", "Resources"),
        "done": ("COMPLETED", "2026-11-26T17:00:00Z", "0:00:30", None)}
    assert found["svc"]["service"] == "starting"


# --- a sweep's progress ---------------------------------------------------------------------------

def finishing(fake: FakeScheduler, order: list[str]) -> None:
    """Each poll after the first ends the next job of `order` (so --watch sees the sweep advance)."""
    poll = fake.poll

    def stepping(*ids: str) -> dict[str, JobState]:
        if fake.calls and order and any(method == "poll" for method, _ in fake.calls):
            fake.advance(order.pop(0), "COMPLETED")
        return poll(*ids)

    fake.poll = stepping  # type: ignore[method-assign]


def test_watch_of_a_sweep_counts_clients_and_points_done(fake, tmp_path, orchc):
    run = submitted(tmp_path, fake, SWEEP)
    assert [job.name for job in runs.load_run(str(run))[1].jobs] == \
        ["cache", "bench-p01-r1", "bench-p01-r2", "bench-p02-r1", "bench-p02-r2"]
    finishing(fake, ["1001", "1002", "1003", "1004", "1000"])
    result = orchc("status", run, "--watch", "--interval", "0")
    assert result.code == 0, result.err
    lines = [line for line in result.out.splitlines() if line.startswith("progress:")]
    assert lines == ["progress: 0/4 clients ended, 0/2 points done",
                     "progress: 1/4 clients ended, 0/2 points done",    # one repeat of p01 is not p01
                     "progress: 2/4 clients ended, 1/2 points done",
                     "progress: 3/4 clients ended, 1/2 points done",
                     "progress: 4/4 clients ended, 2/2 points done",
                     "progress: 4/4 clients ended, 2/2 points done"]    # the service ended: all ended
    progress = json.loads(orchc("status", run, "--json").out)["progress"]
    assert progress == {"clients_ended": 4, "clients": 4, "points_done": 2, "points": 2}


def test_watch_in_a_terminal_draws_a_progress_bar(fake, tmp_path, orchc, monkeypatch):
    from compiler.core import terminal as report

    run = submitted(tmp_path, fake, SWEEP)
    finishing(fake, ["1001", "1002", "1003", "1004", "1000"])
    monkeypatch.setattr(report, "is_terminal", lambda stream: True)
    result = orchc("status", run, "--watch", "--interval", "0")
    assert result.code == 0, result.err
    assert "clients ended" in result.out and "points done" in result.out and "4/4" in result.out
    assert "━" in result.out and "progress:" not in result.out


def test_a_run_without_a_sweep_has_no_progress(fake, tmp_path, orchc):
    run = submitted(tmp_path, fake)
    assert "progress" not in json.loads(orchc("status", run, "--json").out)
    assert "progress:" not in orchc("status", run).out


# --- logs -----------------------------------------------------------------------------------------

def test_logs_default_to_every_job_of_the_latest_run(fake, tmp_path, orchc, monkeypatch):
    ticking_clock(monkeypatch)
    older = submitted(tmp_path, fake, name="runs/old")                 # older, though "old" sorts after "new"
    run = submitted(tmp_path, fake, name="runs/new")
    (older / "slurm-1000.out").write_text("old run\n")
    (run / "slurm-1003.out").write_text("cache says hi\n")
    (run / "slurm-1005.err").write_text("bench failed\n")
    result = orchc("logs", cwd=tmp_path)
    assert result.code == 0, result.err
    heads = [line for line in result.out.splitlines() if line.startswith("==>")]
    assert heads == [f"==> runs/new/slurm-{i}.{ext} <==" for i in (1003, 1004, 1005) for ext in ("out", "err")]
    assert "cache says hi" in result.out and "bench failed" in result.out and "old run" not in result.out
    assert result.out.count("(not written yet)") == 4
    one = orchc("logs", "bench", cwd=tmp_path)                       # a job of the latest run
    assert [line for line in one.out.splitlines() if line.startswith("==>")] == \
        ["==> runs/new/slurm-1005.out <==", "==> runs/new/slurm-1005.err <=="]
    assert "old run" in orchc("logs", "old", cwd=tmp_path).out        # a run under runs/
    assert "old run" in orchc("logs", "runs/old", "cache", cwd=tmp_path).out
    wrong = orchc("logs", "nosuch", cwd=tmp_path)
    assert wrong.code == 1 and "no job nosuch" in wrong.err


def test_follow_prints_what_the_jobs_write_until_they_end(fake, tmp_path, orchc):
    run = submitted(tmp_path, fake)
    out, err = run / "slurm-1002.out", run / "slurm-1002.err"
    out.write_text("first line\n")

    def job() -> None:
        time.sleep(0.3)
        with out.open("a") as handle:
            handle.write("second line\n")
        time.sleep(0.3)
        err.write_text("an error\n")
        with out.open("a") as handle:
            handle.write("third line, h\u00e9\n")
        time.sleep(0.3)
        fake.advance("1002", "COMPLETED")

    writer = threading.Thread(target=job)
    writer.start()
    start = time.monotonic()
    result = orchc("logs", run, "bench", "-f", "--check-every", "0.1")
    writer.join()
    assert result.code == 0, result.err
    assert time.monotonic() - start < 10
    assert result.out.index("first line") < result.out.index("second line") < result.out.index("third line, h\u00e9")
    assert "an error" in result.out and result.out.count(f"==> {err} <==") == 1
    assert sum(method == "poll" for method, _ in fake.calls) < 30      # the scheduler is asked every 0.1 s, not more


def test_follow_reads_in_bounded_chunks_and_restarts_a_truncated_file(tmp_path):
    path = tmp_path / "big.out"
    path.write_bytes(b"x" * (3 * logs.CHUNK + 10))
    tail = logs.Tail(path)
    sizes = []
    while text := tail.read():
        sizes.append(len(text))
    assert sizes == [logs.CHUNK] * 3 + [10]
    path.write_text("new\n")                                           # truncated (a job of the same id again)
    assert tail.read() == "new\n"
    fifo = tmp_path / "fifo"
    import os
    os.mkfifo(fifo)
    assert logs.Tail(fifo).read() is None                              # never blocks on a FIFO


def test_follow_splits_no_character_between_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(logs, "CHUNK", 3)
    (tmp_path / "u.out").write_text("h\u00e9\u00e9\u00e9")
    tail = logs.Tail(tmp_path / "u.out")
    text = ""
    while chunk := tail.read():
        text += chunk
    assert text == "h\u00e9\u00e9\u00e9"


# --- orchc runs -----------------------------------------------------------------------------------

def test_runs_lists_every_run_newest_last_without_asking_the_scheduler(fake, tmp_path, orchc, monkeypatch):
    ticking_clock(monkeypatch)
    submitted(tmp_path, fake, SWEEP, name="runs/b-sweep")
    submitted(tmp_path, fake, name="runs/a-plain")                     # newer, though "a" sorts before "b"
    (tmp_path / "runs" / "c-broken").mkdir()
    (tmp_path / "runs" / "c-broken" / "run.json").write_text("{not json")
    (tmp_path / "runs" / "not-a-run").mkdir()
    fake.calls.clear()
    result = orchc("runs", "--json", cwd=tmp_path)
    assert result.code == 0, result.err
    listed = json.loads(result.out)
    assert fake.calls == []
    assert [row["run"] for row in listed] == ["c-broken", "b-sweep", "a-plain"]
    broken, sweep, plain = listed
    assert broken["state"] == "unreadable" and "damaged" in broken["error"]
    assert (sweep["recipe"], sweep["site"], sweep["state"], sweep["jobs"], sweep["points"]) == \
        ("r", "local", "submitted", 5, 2)
    assert plain["points"] is None and plain["jobs_ended"] is None and plain["created"] > sweep["created"]
    table = orchc("runs", cwd=tmp_path).out.splitlines()
    assert table[0].split() == ["run", "created", "recipe", "site", "where", "state", "jobs", "points", "folder"]
    assert table[-1].startswith("a-plain") and " local " in table[-1]
    assert (plain["remote"], plain["remote_folder"], plain["submitted_from"]) == (None, None, None)


def test_runs_states_polls_once_for_all_runs(fake, tmp_path, orchc):
    submitted(tmp_path, fake, name="elsewhere/one")
    submitted(tmp_path, fake, name="elsewhere/two")
    fake.advance("1000", "COMPLETED")
    fake.advance("1005", "FAILED")
    fake.calls.clear()
    result = orchc("runs", "--root", tmp_path / "elsewhere", "--states", cwd=tmp_path)
    assert result.code == 0, result.err
    assert [method for method, _ in fake.calls] == ["poll"] and len(fake.calls[0][1]) == 6
    assert any(line.startswith("one") and "1/3 ended" in line for line in result.out.splitlines())
    assert any(line.startswith("two") and "1/3 ended" in line for line in result.out.splitlines())


def test_runs_under_an_empty_root(tmp_path, orchc):
    result = orchc("runs", "--root", tmp_path, "--json")
    assert result.code == 0 and json.loads(result.out) == []


# --- on the real cluster --------------------------------------------------------------------------

GATED = """type: gated
extends: service
description: an HTTP server, healthy only once the file gate exists in its run folder.
fields:
  ports:
    default: [18080]
container:
  image: python
  source: docker://python:3.11
  command: python3 -m http.server {{ ports[0] }} --bind 127.0.0.1
phases:
  health_check:
    - until [ -e "$ORCHC_RUN_DIR/gate" ]; do sleep 0.2; done
    - orchc_wait_tcp 127.0.0.1 {{ ports[0] }} {{ health_timeout }}
"""
NOOP = """type: noop
extends: client
description: a client that waits for its service's endpoint and port, then ends.
phases:
  benchmark:
    - "true"
"""


@pytest.mark.cluster
def test_a_dependency_and_a_starting_service_on_the_cluster(cluster, tmp_path):
    from test_cluster import free_port

    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "gated.yaml").write_text(GATED)
    (tmp_path / "defs" / "noop.yaml").write_text(NOOP)
    (tmp_path / "r.yaml").write_text(
        f"site: local\nservice:\n  name: web\n  type: gated\n  ports: [{free_port()}]\n"
        "  resources: {time: '00:05:00'}\nclients:\n  - name: first\n    type: noop\n    target: web\n"
        "  - name: second\n    type: noop\n    target: web\n")
    run = tmp_path / "run"
    real_orchc("submit", "r.yaml", "--defs", "defs", "--run-dir", run, cwd=tmp_path)
    try:
        def status() -> dict[str, dict]:
            report = json.loads(real_orchc("status", run, "--json", cwd=tmp_path).stdout)
            return {row["job"]: row for row in report["jobs"]}

        # `first` waits for web's endpoint, so `second` (after first has ended) waits on a dependency.
        def running() -> dict[str, dict] | None:
            now = status()
            return now if now["web"]["state"] == "RUNNING" and now["first"]["state"] == "RUNNING" else None

        seen = wait_for(running, 60, "web and first to run")
        assert seen["web"]["service"] == "starting"
        assert seen["second"]["state"] == "PENDING" and seen["second"]["reason"] == "Dependency", seen["second"]
        assert seen["second"]["start"] is None and seen["second"]["elapsed"] == "0:00:00"
        assert seen["web"]["start"].endswith("Z") and seen["web"]["elapsed"].count(":") == 2
        table = real_orchc("status", run, cwd=tmp_path).stdout
        assert any(line.startswith("second") and "N/A" in line and "Dependency" in line for line in table.splitlines())
        (run / "gate").touch()
        wait_for(lambda: status()["web"]["service"] == "ready", 60, "web to be ready", interval=0.1)
        def completed() -> dict[str, dict] | None:
            now = status()
            return now if all(row["state"] == "COMPLETED" for row in now.values()) else None

        ended = wait_for(completed, 90, "every job to complete")
        assert all(row["service"] is None and row["reason"] is None for row in ended.values())
        logs_out = real_orchc("logs", run, "first", "-f", cwd=tmp_path).stdout
        assert "benchmark against" in logs_out
    finally:
        real_orchc("cancel", run, cwd=tmp_path, check=False)


# --- --watch output -------------------------------------------------------------------------------

def test_watch_without_a_terminal_prints_only_the_rows_that_changed(fake, tmp_path, orchc):
    """A log of --watch (a CI job, `| tee`) grows by a line per change, not by the whole table per refresh."""
    import re

    run = submitted(tmp_path, fake, SWEEP)
    finishing(fake, ["1001", "1002", "1003", "1004", "1000"])
    result = orchc("status", run, "--watch", "--interval", "0")
    assert result.code == 0, result.err
    table = [line for line in result.out.splitlines() if not line.startswith("progress:")]
    assert table.pop() == "run run: completed"      # the run's state once every job ended
    assert re.fullmatch(r"time +job +role +slurm id +state .*", table[0]), table[0]
    stamped = table[1:]
    assert all(re.match(r"\d\d:\d\d:\d\d  ", line) for line in stamped), stamped
    jobs = [line.split()[1] for line in stamped]
    # the first refresh shows every job; each later one only the job that ended
    assert jobs == ["cache", "bench-p01-r1", "bench-p01-r2", "bench-p02-r1", "bench-p02-r2",
                    "bench-p01-r1", "bench-p01-r2", "bench-p02-r1", "bench-p02-r2", "cache"], stamped
    assert all("COMPLETED" in line for line in stamped[5:])


def test_a_narrow_terminal_keeps_the_state_and_job_name_whole(fake, tmp_path, orchc, monkeypatch):
    """At 80 columns other columns are cut first: `RUNNING`, not `RUNN…`."""
    from compiler.core import terminal as report

    run = submitted(tmp_path, fake, SWEEP)
    for job_id in ("1000", "1001", "1002", "1003", "1004"):
        fake.advance(job_id, "RUNNING", "node-042.cluster.example.org", start="2026-11-26T17:31:31Z",
                     elapsed="0:12:34")
    fake.advance("1004", "PENDING", "", reason="ReqNodeNotAvail, UnavailableNodes:node-042")
    monkeypatch.setattr(report, "is_terminal", lambda stream: True)
    monkeypatch.setenv("COLUMNS", "80")
    result = orchc("status", run)
    assert result.code == 0, result.err
    assert max(len(line) for line in result.out.splitlines()) <= 80
    for name in ("cache", "bench-p01-r1", "bench-p01-r2", "bench-p02-r1", "bench-p02-r2"):
        assert f" {name} " in result.out, result.out
    assert result.out.count(" RUNNING ") == 4 and " PENDING " in result.out, result.out


# --- one run state --------------------------------------------------------------------------------

@pytest.mark.parametrize(("recorded", "jobs", "expected"), [
    ("submitted", ["PENDING", "PENDING"], "pending"),
    ("submitted", ["RUNNING", "PENDING"], "running"),
    ("submitted", ["COMPLETED", "PENDING"], "running"),          # one ended, one waits: the run has begun
    ("submitted", ["COMPLETED", "FAILED", "RUNNING"], "running"),  # a failure is not final while a job runs
    ("submitted", ["COMPLETED", "COMPLETED"], "completed"),
    ("submitted", ["COMPLETED", "FAILED"], "failed"),
    ("submitted", ["TIMEOUT", "FAILED", "CANCELLED"], "failed"),
    ("submitted", ["COMPLETED", "TIMEOUT", "CANCELLED"], "timeout"),
    ("submitted", ["COMPLETED", "CANCELLED"], "cancelled"),
    ("submitted", ["COMPLETED", "UNKNOWN"], "unknown"),
    ("submitted", ["COMPLETED", "FOREIGN"], "unknown"),
    ("submitted", [], "completed"),
    ("failed", [], "failed"),                                     # submit failed and rolled back
    ("submitting", ["PENDING"], "pending"),
])
def test_one_run_state_from_the_jobs_states(recorded, jobs, expected):
    assert runs.run_state(recorded, jobs) == expected


def test_a_run_with_a_failed_job_is_failed_in_status_runs_and_json(fake, tmp_path, orchc):
    run = submitted(tmp_path, fake, name="runs/one")
    fake.advance("1000", "RUNNING")
    assert json.loads(orchc("status", run, "--json").out)["state"] == "running"
    assert orchc("status", run).out.splitlines()[0].startswith("run one: running")
    fake.advance("1000", "COMPLETED")
    fake.advance("1001", "FAILED")
    fake.advance("1002", "COMPLETED")
    assert json.loads(orchc("status", run, "--json").out)["state"] == "failed"
    assert orchc("status", run).out.splitlines()[0].startswith("run one: failed")
    listed = json.loads(orchc("runs", "--states", "--json", cwd=tmp_path).out)
    assert [(row["run"], row["state"], row["jobs_ended"]) for row in listed] == [("one", "failed", 3)]
    line = next(line for line in orchc("runs", "--states", cwd=tmp_path).out.splitlines() if line.startswith("one"))
    assert "failed" in line and "3/3 ended" in line


def test_a_run_seen_ended_keeps_its_state_without_asking_the_scheduler(fake, tmp_path, orchc):
    run = submitted(tmp_path, fake, name="runs/one")
    assert json.loads(orchc("runs", "--json", cwd=tmp_path).out)[0]["state"] == "submitted"   # never asked
    for job_id in ("1000", "1001", "1002"):
        fake.advance(job_id, "COMPLETED")
    fake.advance("1002", "TIMEOUT")
    assert json.loads(orchc("status", run, "--json").out)["state"] == "timeout"
    fake.calls.clear()
    assert json.loads(orchc("runs", "--json", cwd=tmp_path).out)[0]["state"] == "timeout"
    assert fake.calls == []
    assert runs.load_run(str(run))[1].outcome == "timeout"


def test_watch_exits_3_when_the_run_did_not_complete(fake, tmp_path, orchc):
    run = submitted(tmp_path, fake, SWEEP)
    finishing(fake, ["1001", "1002", "1004", "1000"])
    fake.advance("1003", "FAILED")       # ended before the watch starts
    result = orchc("status", run, "--watch", "--interval", "0")
    assert result.code == 3, result.err
    assert result.out.splitlines()[-1] == "run run: failed"
    assert "orchc: error: run run ended failed" in result.err


def test_watch_exits_0_when_the_run_completed(fake, tmp_path, orchc):
    run = submitted(tmp_path, fake)
    finishing(fake, ["1001", "1002", "1000"])
    result = orchc("status", run, "--watch", "--interval", "0")
    assert result.code == 0, result.err
    assert result.out.splitlines()[-1] == "run run: completed"


# --- commands on an unfinished run say so first ---------------------------------------------------

REFERENCED = RECIPE + "references:\n  bench.get.requests_per_s: {min: 100}\n  load.get.requests_per_s: {min: 100}\n"


def wrote(run: Path, client: str, metrics: dict) -> None:
    (run / "results" / client).mkdir(parents=True, exist_ok=True)
    (run / "results" / client / "results.json").write_text(json.dumps(
        {"schema": "orchc-results/1", "metrics": metrics, "status": "complete", "parameters": {}, "environment": {}}))


def test_check_of_a_running_run_waits_instead_of_failing(fake, tmp_path, orchc):
    run = submitted(tmp_path, fake, REFERENCED)
    fake.advance("1000", "RUNNING")
    fake.advance("1001", "COMPLETED")
    fake.advance("1002", "RUNNING")
    wrote(run, "load", {"get.requests_per_s": 500})
    result = orchc("results", run, "--check")
    assert result.code == 4, result.err
    assert result.err.splitlines()[0] == "orchc: note: run run is running (1/3 jobs ended): results so far"
    rows = {line.split()[0]: line.split()[-1] for line in result.out.splitlines()[1:]}
    assert rows == {"bench.get.requests_per_s": "waiting", "load.get.requests_per_s": "pass"}
    assert "FAIL" not in result.out and "failed" not in result.err
    checks = json.loads(orchc("results", run, "--check", "--json").out)
    assert (checks["state"], checks["failed"], checks["waiting"]) == ("running", 0, 1)
    wrote(run, "load", {"get.requests_per_s": 50})            # a value written is final: its failure counts now
    assert orchc("results", run, "--check").code == 1
    wrote(run, "load", {"get.requests_per_s": 500})
    wrote(run, "bench", {"get.requests_per_s": 500})
    for job_id in ("1000", "1002"):
        fake.advance(job_id, "COMPLETED")
    done = orchc("results", run, "--check")
    assert (done.code, done.err) == (0, "")


def test_check_of_an_ended_run_fails_what_is_missing(fake, tmp_path, orchc):
    run = submitted(tmp_path, fake, REFERENCED)
    for job_id in ("1000", "1001", "1002"):
        fake.advance(job_id, "COMPLETED")
    fake.advance("1002", "FAILED")
    wrote(run, "load", {"get.requests_per_s": 500})
    result = orchc("results", run, "--check")
    assert result.code == 1 and "1 of 2 reference check(s) failed" in result.err
    assert "run run is" not in result.err


def test_compare_with_a_running_run_says_so_and_exits_4(fake, tmp_path, orchc):
    a = submitted(tmp_path, fake, name="a")
    b = submitted(tmp_path, fake, name="b")
    for job_id in ("1000", "1001", "1002", "1004"):
        fake.advance(job_id, "COMPLETED")
    fake.advance("1003", "RUNNING")
    fake.advance("1005", "PENDING", "", reason="Dependency")
    for run in (a, b):
        wrote(run, "load", {"get.requests_per_s": 500})
    wrote(a, "bench", {"get.requests_per_s": 500})
    result = orchc("compare", a, b, "--threshold", "*requests_per_s=5")
    assert result.code == 4, result.err
    assert result.err.splitlines()[0] == "orchc: note: run B b is running (1/3 jobs ended): results so far"
    assert "regression" not in result.err and "has no results" not in result.err
    assert "only in A" in result.out
    shown = json.loads(orchc("compare", a, b, "--json").out)
    assert (shown["a_state"], shown["b_state"]) == ("completed", "running")
    wrote(b, "load", {"get.requests_per_s": 100})        # a regression on what B has is one already
    assert orchc("compare", a, b, "--threshold", "*requests_per_s=5", "--point-estimates").code == 1


def test_results_of_a_running_run_say_so_first(fake, tmp_path, orchc):
    run = submitted(tmp_path, fake, SWEEP)
    fake.advance("1001", "COMPLETED")
    fake.advance("1000", "RUNNING")
    result = orchc("results", run)
    assert result.code == 0, result.err
    assert result.err.splitlines()[0] == "orchc: note: run run is running (1/5 jobs ended): results so far"
    assert json.loads(orchc("results", run, "--json").out)["state"] == "running"
    for job_id in ("1000", "1002", "1003", "1004"):
        fake.advance(job_id, "COMPLETED")
    assert orchc("results", run).err == ""


def test_results_and_compare_of_a_run_that_ended_failed_say_so_first(fake, tmp_path, orchc):
    a = submitted(tmp_path, fake, name="a")
    for job_id in ("1000", "1001", "1002"):
        fake.advance(job_id, "COMPLETED")
    fake.advance("1002", "FAILED")
    result = orchc("results", a)
    assert result.code == 0, result.err
    assert result.err.splitlines()[0] == "orchc: note: run a ended failed (bench FAILED): its results may be incomplete"
    compared = orchc("compare", a, a)
    assert compared.code == 0, compared.err
    # results recorded the outcome: compare asks SLURM nothing, so it names no job
    assert compared.err.splitlines()[0] == "orchc: note: run A a ended failed: its results may be incomplete"


def test_compare_with_a_run_that_has_written_nothing_yet_exits_4(fake, tmp_path, orchc):
    a = submitted(tmp_path, fake, name="a")
    b = submitted(tmp_path, fake, name="b")
    for job_id in ("1000", "1001", "1002"):
        fake.advance(job_id, "COMPLETED")
    for client in ("load", "bench"):
        wrote(a, client, {"get.requests_per_s": 500})
    result = orchc("compare", a, b, "--threshold", "requests_per_s=5")
    assert result.code == 4, result.err
    assert "missing in B" not in result.err and "regression" not in result.err
    assert orchc("compare", a, b, "--threshold", "ttft_p99_ms=5").code == 1     # matches nothing: still an error

"""A run folder is data, not authority (issue 17, item 5): `cancel` and `status` act only on SLURM jobs whose
name and user are the run's; nothing in a run folder is read through a symbolic link; `rerun` submits only scripts
whose HMAC (a key of this user's, under ~/.config/orchc) still verifies.

On the real test cluster (tests/cluster/start.sh) and with the in-process fake scheduler.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from test_cluster import cluster, wait_for
from test_cluster import orchc as real_orchc
from test_scheduler import fake

from compiler.output.pipeline import Options, compile_all
from compiler.run import runs
from compiler.run.scheduler import FakeScheduler

__all__ = ["cluster", "fake"]   # fixtures, imported for the tests below


@pytest.fixture(autouse=True)
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This user's orchc configuration (where the rerun key is made), a fresh one per test."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config"

RECIPE = "site: local\nservice:\n  name: cache\n  type: redis\nclient:\n  name: bench\n  type: redis_client\n  target: cache\n"


def write_run(folder: Path, jobs: list[tuple[str, str, str]], recipe: str = "r") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps({
        "recipe": recipe, "site": "local", "created": "2026-12-06T05:00:00Z", "run_dir": str(folder),
        "state": "submitted", "error": None,
        "jobs": [{"name": name, "type": "t", "role": role, "target": None, "script": f"{name}.sbatch",
                  "slurm_id": job_id, "submitted": "2026-12-06T05:00:00Z"} for name, job_id, role in jobs]}))
    return folder


def submitted(tmp_path: Path, fake: FakeScheduler, name: str = "run") -> Path:
    (tmp_path / "r.yaml").write_text(RECIPE)
    (compiled,) = compile_all([tmp_path / "r.yaml"], Options())
    runs.submit(compiled, tmp_path / name, fake)
    return tmp_path / name


# --- cancel and status act only on the run's jobs ---------------------------------------------------

def sbatch(tmp_path: Path, *options: str) -> str:
    done = subprocess.run(["sbatch", "--parsable", *options, "--wrap", "sleep 60"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def slurm_state(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-O", "State"], capture_output=True, text=True,
                          timeout=30).stdout.strip()


def test_cancel_leaves_an_unrelated_job_planted_in_run_json(cluster, tmp_path):
    other = sbatch(tmp_path)                                         # named "wrap": not a job orchc names
    try:
        wait_for(lambda: slurm_state(other) in ("RUNNING", "PENDING"), 30, "the unrelated job to be queued")
        run = write_run(tmp_path / "run", [("bench", other, "client")])
        done = real_orchc("cancel", run, cwd=tmp_path, check=False)
        assert done.returncode == 1, done.stdout
        assert f"SLURM job {other} (job bench) is not this run's" in done.stderr and "'wrap'" in done.stderr
        assert "Traceback" not in done.stderr
        assert slurm_state(other) in ("RUNNING", "PENDING")
        status = json.loads(real_orchc("status", run, "--json", cwd=tmp_path).stdout)["jobs"]
        assert status[0]["state"] == "FOREIGN" and "'wrap'" in status[0]["reason"]
        assert slurm_state(other) in ("RUNNING", "PENDING")
    finally:
        subprocess.run(["scancel", other], timeout=30)


def test_cancel_leaves_another_users_job_even_with_the_runs_name(cluster, tmp_path):
    tmp_path.chmod(0o755)
    other = sbatch(tmp_path, "--uid=nobody", "--chdir=/tmp", "--output=/dev/null", "--job-name=bench_0123abcd")
    try:
        wait_for(lambda: slurm_state(other) in ("RUNNING", "PENDING"), 30, "the other user's job to be queued")
        run = write_run(tmp_path / "run", [("bench", other, "client")])
        done = real_orchc("cancel", run, cwd=tmp_path, check=False)
        assert done.returncode == 0 and f"SLURM job {other} (job bench): SLURM knows no job of yours" in done.stderr
        assert slurm_state(other) in ("RUNNING", "PENDING")
        status = json.loads(real_orchc("status", run, "--json", cwd=tmp_path).stdout)["jobs"]
        assert status[0]["state"] == "UNKNOWN"                      # not one of yours: nothing is said of it
    finally:
        subprocess.run(["scancel", other], timeout=30)


def test_cancel_still_cancels_the_runs_own_job_beside_a_planted_one(cluster, tmp_path):
    mine = sbatch(tmp_path, "--job-name=cache_89abcdef")
    other = sbatch(tmp_path)
    try:
        run = write_run(tmp_path / "run", [("cache", mine, "service"), ("bench", other, "client")])
        done = real_orchc("cancel", run, cwd=tmp_path, check=False)
        assert done.returncode == 1 and f"cancelled SLURM job(s) {mine} " in done.stdout, done.stdout
        wait_for(lambda: slurm_state(mine) == "CANCELLED", 30, "the run's own job to be cancelled")
        assert slurm_state(other) in ("RUNNING", "PENDING")
    finally:
        subprocess.run(["scancel", mine, other], timeout=30)


def test_fake_cancel_and_status_refuse_a_job_named_otherwise(fake, tmp_path, orchc):
    run = submitted(tmp_path, fake)
    planted = fake.plant("sleepy")
    data = json.loads((run / "run.json").read_text())
    data["jobs"][1]["slurm_id"] = planted
    (run / "run.json").write_text(json.dumps(data))
    result = orchc("cancel", run)
    assert result.code == 1 and f"SLURM job {planted} (job bench) is not this run's" in result.err
    assert fake.jobs[planted].state == "PENDING" and fake.jobs["1000"].state == "CANCELLED"
    found = {row["job"]: row["state"] for row in json.loads(orchc("status", run, "--json").out)["jobs"]}
    assert found == {"cache": "CANCELLED", "bench": "FOREIGN"}


# --- no symbolic link in a run folder is followed ----------------------------------------------------

SECRET = "laptop-only secret 7c1e\n"


def planted(tmp_path: Path, fake: FakeScheduler) -> tuple[Path, Path]:
    """A run and a file outside it that a link in the run could point at."""
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text(SECRET)
    return submitted(tmp_path, fake), secret


def test_logs_refuse_a_log_that_is_a_symlink(fake, tmp_path, orchc):
    run, secret = planted(tmp_path, fake)
    (run / "slurm-1001.out").symlink_to(secret)
    result = orchc("logs", run, "bench")
    assert SECRET.strip() not in result.out + result.err
    assert result.code == 1 and "slurm-1001.out is a symbolic link" in result.err and "Traceback" not in result.err
    fake.advance("1001", "COMPLETED")
    result = orchc("logs", run, "bench", "-f", "--check-every", "0.05")
    assert SECRET.strip() not in result.out + result.err
    assert result.code == 1 and "slurm-1001.out is a symbolic link" in result.err


def test_results_and_report_refuse_a_symlinked_folder_or_file(fake, tmp_path, orchc):
    run, secret = planted(tmp_path, fake)
    (run / "results").symlink_to(secret.parent, target_is_directory=True)     # a link one folder up
    secret.parent.joinpath("bench").mkdir()
    secret.parent.joinpath("bench", "results.json").write_text(json.dumps({"leaked": SECRET.strip()}))
    for command in (("results", run), ("results", run, "--json"), ("results", run, "--csv")):
        result = orchc(*command)
        assert SECRET.strip() not in result.out + result.err
        assert "results is a symbolic link" in result.out + result.err
    (run / "results").unlink()
    (run / "results" / "bench").mkdir(parents=True)
    (run / "results" / "bench" / "results.json").symlink_to(secret.parent / "bench" / "results.json")
    result = orchc("results", run, "--json")
    assert SECRET.strip() not in result.out and "results.json is a symbolic link" in result.out


def test_run_json_and_manifest_that_are_symlinks_are_refused(fake, tmp_path, orchc):
    run = submitted(tmp_path, fake)
    other = submitted(tmp_path, fake, "other")
    (run / "manifest.json").unlink()
    (run / "manifest.json").symlink_to(other / "manifest.json")
    result = orchc("results", run, "--csv")
    assert result.code == 1 and "manifest.json is a symbolic link" in result.err, result.err
    (run / "run.json").rename(tmp_path / "moved.json")
    (run / "run.json").symlink_to(tmp_path / "moved.json")
    result = orchc("status", run)
    assert result.code == 1 and "run.json is a symbolic link" in result.err and "Traceback" not in result.err


def test_an_endpoint_that_is_a_symlink_is_not_ready(fake, tmp_path, orchc):
    run, secret = planted(tmp_path, fake)
    fake.advance("1000", "RUNNING")
    (run / "endpoints").mkdir()
    secret.write_text("1000 node1 6379\n")
    (run / "endpoints" / "cache").symlink_to(secret)
    found = {row["job"]: row for row in json.loads(orchc("status", run, "--json").out)["jobs"]}
    assert found["cache"]["service"] == "starting"


def test_the_run_folder_itself_may_be_reached_through_a_link(fake, tmp_path, orchc):
    run = submitted(tmp_path, fake)
    (tmp_path / "latest").symlink_to(run, target_is_directory=True)     # the user's own link to a run: followed
    (run / "slurm-1001.out").write_text("hello\n")
    result = orchc("logs", tmp_path / "latest", "bench")
    assert result.code == 0 and "hello" in result.out


def test_report_notes_a_gpu_trace_that_is_a_symlink_and_reads_none_of_it(fake, tmp_path):
    from compiler.results.report import gpu_traces

    run, secret = planted(tmp_path, fake)
    secret.write_text("timestamp,gpu,utilization_gpu_percent\n2026-12-06T05:00:00Z,0,99\n")
    (run / "results" / "bench").mkdir(parents=True)
    (run / "results" / "bench" / "gpu.csv").symlink_to(secret)
    traces, notes = gpu_traces(run, runs.load_run(str(run))[1])
    assert not traces and any("gpu.csv is a symbolic link" in note for note in notes), notes


# --- rerun submits only scripts this user's key vouches for -------------------------------------------

def tampered(run: Path) -> None:
    """What an attacker with write access to the run folder does: edit a script, recompute the manifest's digest."""
    from compiler.output.emit import digest

    script = run / "bench.sbatch"
    text = script.read_text()
    script.write_text(text.replace("\n", "\ntouch /tmp/pwned-by-a-tampered-run\n", 1))
    assert script.read_text() != text
    manifest = json.loads((run / "manifest.json").read_text())
    names = [name for name in manifest["files"] if name != "manifest.json"]
    manifest["digest"] = digest({name: (run / name).read_text() for name in names})
    (run / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def test_rerun_refuses_a_tampered_script_with_a_recomputed_digest(fake, tmp_path, orchc):
    run = submitted(tmp_path, fake)
    tampered(run)
    submits = len(fake.jobs)
    result = orchc("rerun", run, "--run-dir", tmp_path / "again")
    assert result.code == 1 and "HMAC-SHA256" in result.err and "does not verify" in result.err, result.err
    assert len(fake.jobs) == submits and not (tmp_path / "again").exists()


def test_rerun_refuses_a_run_whose_hmac_was_made_with_another_key(fake, tmp_path, orchc, monkeypatch):
    run = submitted(tmp_path, fake)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "another-user"))       # another user's (or machine's) key
    result = orchc("rerun", run, "--run-dir", tmp_path / "again")
    assert result.code == 1 and "no key" in result.err and "another-user/orchc/run-key" in result.err, result.err
    submitted(tmp_path, fake, "mine")                                             # makes this user's key
    result = orchc("rerun", run, "--run-dir", tmp_path / "again")
    assert result.code == 1 and "does not verify" in result.err


def test_rerun_refuses_a_run_json_without_an_hmac(fake, tmp_path, orchc):
    run = submitted(tmp_path, fake)
    data = json.loads((run / "run.json").read_text())
    del data["scripts_hmac"]
    (run / "run.json").write_text(json.dumps(data))
    result = orchc("rerun", run, "--run-dir", tmp_path / "again")
    assert result.code == 1 and "records no HMAC" in result.err, result.err


def test_an_untouched_run_reruns_and_says_what_was_checked(fake, tmp_path, orchc):
    run = submitted(tmp_path, fake)
    result = orchc("rerun", run, "--run-dir", tmp_path / "again")
    assert result.code == 0, result.err
    assert "HMAC-SHA256" in result.out and "bench.sbatch" in result.out and "verified" in result.out
    again = orchc("rerun", tmp_path / "again", "--run-dir", tmp_path / "third")     # a rerun is vouched for too
    assert again.code == 0, again.err


def test_the_key_is_made_once_private_and_random(fake, tmp_path):
    import os
    import stat

    submitted(tmp_path, fake)
    key = tmp_path / "config" / "orchc" / "run-key"
    first = key.read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert len(first.strip()) == 64
    submitted(tmp_path, fake, "second")
    assert key.read_bytes() == first
    assert os.environ["XDG_CONFIG_HOME"] == str(tmp_path / "config")

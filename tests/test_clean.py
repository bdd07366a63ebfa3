"""`orchc clean RUN` (compiler/run/clean.py): a run's service data on the site's storage, found with the job scripts'
own lines once they verify against the HMAC run.json recorded at submit; shown by default, removed with --yes,
never through a link. The run is submitted to the test stand-in scheduler (tests/fakes.py); its jobs' data folders
are made where the job scripts' own ORCHC_RUN/ORCHC_DATA lines put them, by real bash in the run folder."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import ROOT
from test_remote import cluster_and_redis, laptop, remote_dir, server, sockets  # noqa: F401 (fixtures)
from test_scheduler import fake  # noqa: F401 (fixture)

from compiler.core.errors import ClusterError
from compiler.output.pipeline import Options, compile_all
from compiler.run import runs
from compiler.run.clean import clean_run

SITE = ("site: store\nruntime: native\nstorage:\n  data: STORE/${SLURM_JOB_ACCOUNT}/runs/${ORCHC_RUN}\n"
        "defaults:\n  resources: {nodes: 1, ntasks: 1, time: '00:10:00'}\n")
RECIPE = ("site: site.yaml\naccount: p1\nservice:\n  name: db\n  type: redis\n  ports: [6390]\n"
          "client:\n  name: bench\n  type: redis_client\n  target: db\n")


def data_folder(run_dir: Path, job: str) -> Path:
    """Where the job's script puts its data: its own two lines, run by bash in the run folder, as the job would."""
    script = (run_dir / f"{job}.sbatch").read_text()
    lines = [line for line in script.splitlines() if line.startswith(("ORCHC_RUN=", "ORCHC_DATA="))]
    done = subprocess.run(["bash", "-c", 'ORCHC_RUN_DIR=$(pwd -P); ' + "; ".join(lines) + '; printf %s "$ORCHC_DATA"'],
                          cwd=run_dir, env={"PATH": "/usr/bin:/bin", "ORCHC_JOB": job, "SLURM_JOB_ACCOUNT": "p1",
                                            "USER": "someone"}, capture_output=True, text=True, check=True)
    return Path(done.stdout)


@pytest.fixture
def ended(fake, tmp_path):  # noqa: F811
    (tmp_path / "site.yaml").write_text(SITE.replace("STORE", str(tmp_path / "store")))
    (tmp_path / "r.yaml").write_text(RECIPE)
    (output,) = compile_all([tmp_path / "r.yaml"], Options())
    run_dir = tmp_path / "run"
    run = runs.submit(output, run_dir, fake)
    runs.save_run(run_dir, replace(run, outcome="completed"))
    for job in ("db", "bench"):
        folder = data_folder(run_dir, job)
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "file").write_text("x" * 5000)
    return run_dir


def test_clean_shows_by_default_and_removes_with_yes(ended, tmp_path):
    store = tmp_path / "store" / "p1" / "runs"
    (run_name,) = [p.name for p in store.iterdir()]
    assert run_name.startswith("run-")
    lines = clean_run(ended, remove=False)
    assert [line.split(":")[0] for line in lines[:2]] == [f"would remove {store / run_name / 'bench'}",
                                                         f"would remove {store / run_name / 'db'}"], lines
    assert (store / run_name / "db" / "sub" / "file").exists()
    lines = clean_run(ended, remove=True)
    assert [line.split(":")[0] for line in lines] == [f"removed {store / run_name / 'bench'}",
                                                      f"removed {store / run_name / 'db'}"], lines
    assert lines[0].endswith(" KiB") and int(lines[0].rsplit(": ", 1)[1].split()[0]) >= 5, lines
    assert not (store / run_name).exists() and store.exists()      # the run's folder, emptied, goes too
    assert clean_run(ended, remove=True) == ["nothing to clean: no data folder of this run exists"]


def test_clean_never_follows_a_link(ended, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("precious")
    db = data_folder(ended, "db")
    subprocess.run(["rm", "-rf", str(db)], check=True)
    db.symlink_to(victim)
    lines = clean_run(ended, remove=True)
    assert f"left alone {db}: a symbolic link, not the job's folder" in lines, lines
    assert (victim / "keep").read_text() == "precious" and db.is_symlink()


def test_clean_refuses_scripts_changed_after_submit(ended):
    script = ended / "db.sbatch"
    script.write_text(script.read_text().replace("ORCHC_DATA=", "ORCHC_DATA=/etc/x/"))
    with pytest.raises(ClusterError, match=r"differ from what its manifest\.json vouches for"):
        clean_run(ended, remove=True)


def test_clean_refuses_a_run_not_seen_ended(ended):
    _, run = runs.load_run(str(ended), pull=False)
    runs.save_run(ended, replace(run, outcome=""))
    with pytest.raises(ClusterError, match=r"has not been seen ended"):
        clean_run(ended, remove=True)


def test_the_command_line_dry_run_and_confirmation(ended, tmp_path):
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    import os

    env = {**os.environ, **env}
    done = subprocess.run([sys.executable, "-m", "compiler", "clean", str(ended)], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "would remove " in done.stdout and "run again with --yes to remove them" in done.stdout
    done = subprocess.run([sys.executable, "-m", "compiler", "clean", str(ended), "--yes"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert done.returncode == 0 and done.stdout.count("removed ") == 2, done.stdout + done.stderr


@pytest.mark.cluster
@pytest.mark.ssh
def test_clean_over_ssh_removes_the_data_on_the_login_nodes_side(server, laptop, cluster_and_redis, tmp_path, remote_dir):  # noqa: F811
    """A run submitted over SSH (the real sshd and test cluster of tests/test_remote.py) on the local site, whose
    service data is in the remote run folder: clean finds and removes it there, not here."""
    import json

    from ssh import sshd as sshd_helper
    from test_cluster import wait_for
    from test_remote import HOME, override

    override(Path(laptop.env["XDG_CONFIG_HOME"]), server, remote_dir)
    port = sshd_helper.free_port()
    (tmp_path / "redis.yaml").write_text(
        f"site: local\nservice:\n  name: redis\n  ports: [{port}]\n  resources: {{time: '00:05:00'}}\n"
        "client:\n  name: bench\n  type: redis_client\n  requests: 200\n  tests: [set]\n")
    laptop("submit", "redis.yaml", "--run-dir", "run")

    def ended() -> bool:
        jobs = json.loads(laptop("status", "run", "--json").stdout)["jobs"]
        return all(job["state"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") for job in jobs)

    wait_for(ended, 180, "the run to end over ssh")
    laptop("status", "run")                      # records the outcome
    remote_data = HOME / remote_dir / "run" / "data"
    assert sorted(p.name for p in remote_data.iterdir()) == ["bench", "redis"]
    shown = laptop("clean", "run")
    assert f"would remove {remote_data / 'bench'}: " in shown.stdout and f"would remove {remote_data / 'redis'}: " \
        in shown.stdout, shown.stdout
    done = laptop("clean", "run", "--yes")
    assert done.stdout.count("removed ") == 2, done.stdout
    assert not remote_data.exists() and (HOME / remote_dir / "run" / "redis.sbatch").exists()

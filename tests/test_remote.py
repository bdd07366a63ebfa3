"""orchc over SSH (compiler/run/ssh.py), against a real OpenSSH server on a loopback port (tests/ssh/sshd.py)
and the real one-node test cluster behind it.

The server logs in the test user orchc-ssh with a generated key, host-key checking on. Without sshd, ssh,
rsync or root these tests skip with a reason; under CI=true they fail instead.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, in_ci
from ssh import sshd as sshd_helper
from test_cluster import wait_for

from compiler.core.errors import ClusterError, OrchcError
from compiler.run import ssh as remote_module
from compiler.run.runs import parse_run
from compiler.run.ssh import Connection, Target, prepare, remote_command, site_target

HOME = Path("/home") / sshd_helper.USER


@pytest.fixture(scope="module")
def server():
    problem = sshd_helper.problem()
    if problem and in_ci():
        pytest.fail(f"CI=true but {problem}")
    if problem:
        pytest.skip(problem)
    found = sshd_helper.make_server()
    yield found
    found.stop()
    shutil.rmtree(found.folder, ignore_errors=True)


@pytest.fixture
def sockets(monkeypatch: pytest.MonkeyPatch):
    """A short private XDG_RUNTIME_DIR for the control sockets (a socket path is limited to 108 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="orchc-rt-"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    remote_module.forget_connections()
    yield folder
    for socket_path in (folder / "orchc-ssh").glob("*"):
        subprocess.run(["ssh", "-o", f"ControlPath={socket_path}", "-O", "exit", "x"], capture_output=True, timeout=10)
    remote_module.forget_connections()
    shutil.rmtree(folder, ignore_errors=True)


def override(config: Path, server: sshd_helper.Server, remote_dir: str, known_hosts: Path | None = None,
             key: Path | None = None, port: int | None = None) -> Path:
    """$XDG_CONFIG_HOME/orchc/sites/local.yaml: the per-user ssh: block for site `local`."""
    options = ["StrictHostKeyChecking=yes", f"UserKnownHostsFile={known_hosts or server.known_hosts}",
               "GlobalKnownHostsFile=/dev/null"]
    path = config / "orchc" / "sites" / "local.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"ssh:\n  host: 127.0.0.1\n  port: {port or server.port}\n  user: {sshd_helper.USER}\n"
                    f"  identity_file: {key or server.client_key}\n  remote_dir: {json.dumps(remote_dir)}\n"
                    "  options:\n" + "".join(f"    - {option}\n" for option in options))
    return path


class Remote:
    """orchc as a laptop user runs it: its own process, the ssh target from the user's override file."""

    def __init__(self, work: Path, config: Path, runtime: Path) -> None:
        self.work = work
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CONFIG_HOME": str(config),
                    "XDG_RUNTIME_DIR": str(runtime), "ORCHC_SSH_DEBUG": "1"}

    def __call__(self, *args: object, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "compiler", *map(str, args)], cwd=self.work, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        if check:
            assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def popen(self, *args: object) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "compiler", *map(str, args)], cwd=self.work, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


_LOGIN_NODE_INSTALL: list[Path] = []


def login_node_install() -> Path:
    """orchc as installed on the login node, for its user: this checkout's `compiler` and the packages it imports,
    copied where that user can read them (the test's own Python and venv may live in root's home)."""
    if _LOGIN_NODE_INSTALL:
        return _LOGIN_NODE_INSTALL[0]
    folder = Path(tempfile.mkdtemp(prefix="orchc-login-node-"))
    listed = subprocess.run([sys.executable, "-c", "import sys, compiler.cli.main, compiler.cli.commands, "
                             "compiler.run.status, compiler.run.runs\nfor m in list(sys.modules.values()): "
                             "print(getattr(m, '__file__', None) or '')"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60, check=True).stdout.split()
    tops = set()
    for place in {p for p in sys.path if p.endswith("-packages")}:
        tops |= {Path(place) / Path(name).relative_to(place).parts[0] for name in listed if name.startswith(place + "/")}
    shutil.copytree(ROOT / "compiler", folder / "compiler", ignore=shutil.ignore_patterns("__pycache__"))
    for top in tops:
        (shutil.copytree(top, folder / top.name, ignore=shutil.ignore_patterns("__pycache__")) if top.is_dir()
         else shutil.copy2(top, folder / top.name))
    for name in ("schemas", "service_defs", "sites"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, folder / name)
    subprocess.run(["chmod", "-R", "a+rX", folder], check=True)
    _LOGIN_NODE_INSTALL.append(folder)
    return folder


def login_node_orchc(*args: str) -> subprocess.CompletedProcess[str]:
    """orchc run on the login node by its user (the ssh test user, on this machine), from its home, with the
    system's Python of this one's version (root's Python may be out of that user's reach)."""
    python = shutil.which(f"python{sys.version_info[0]}.{sys.version_info[1]}", path="/usr/local/bin:/usr/bin:/bin")
    assert python, f"no python{sys.version_info[0]}.{sys.version_info[1]} for the login node's user in /usr/bin"
    env = {"PATH": os.environ["PATH"], "HOME": str(HOME), "PYTHONPATH": str(login_node_install()), "LANG": "C.UTF-8"}
    done = subprocess.run(["runuser", "-u", sshd_helper.USER, "--", python, "-m", "compiler", *args],
                          cwd=HOME, env=env, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def ssh_calls(stderr: str) -> dict[str, int]:
    """ORCHC_SSH_DEBUG's lines, counted by kind."""
    counts: dict[str, int] = {}
    for kind in re.findall(r"^orchc: ssh\[(\w+)\]: ", stderr, re.M):
        counts[kind] = counts.get(kind, 0) + 1
    return counts


@pytest.fixture
def remote_dir():
    """A remote folder of this test's own (relative to the test user's home), removed afterwards."""
    name = f"orchc runs {os.getpid()}-{time.monotonic_ns()}"
    yield name
    # jobs cancelled at the end of a test still write into their folder as they end (jobs/<job>.json)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and shutil.which("squeue") and subprocess.run(
            ["squeue", "-h", "-u", sshd_helper.USER], capture_output=True, text=True, timeout=30).stdout.strip():
        time.sleep(0.5)
    shutil.rmtree(HOME / name, ignore_errors=True)


@pytest.fixture
def laptop(tmp_path: Path, sockets: Path):
    config = tmp_path / "config"
    config.mkdir()
    return Remote(tmp_path, config, sockets)


def jobs_of(laptop: Remote, run: str) -> dict[str, dict[str, str]]:
    return {job["job"]: job for job in json.loads(laptop("status", run, "--json").stdout)["jobs"]}


def redis_recipe(port: int, client: bool = True) -> str:
    text = (f"site: local\nservice:\n  name: redis\n  ports: [{port}]\n  keep_running: true\n"
            f"  data_dir: /tmp/orchc-ssh-redis-{port}\n  resources: {{time: '00:05:00'}}\n")
    if client:
        text += "client:\n  name: bench\n  type: redis_client\n  requests: 2000\n  tests: [set, get]\n"
    return text


@pytest.fixture
def cluster_and_redis() -> None:
    from test_cluster import _cluster_problem

    problem = _cluster_problem()
    missing = [tool for tool in ("redis-server", "redis-benchmark", "redis-cli") if shutil.which(tool) is None]
    if missing:
        problem = f"{', '.join(missing)} missing; run tests/install-deps.sh"
    if problem and in_ci():
        pytest.fail(f"CI=true but {problem}")
    if problem:
        pytest.skip(problem)


# --- end to end -------------------------------------------------------------------------------------

@pytest.mark.cluster
@pytest.mark.ssh
def test_submit_status_logs_results_tunnel_cancel_over_ssh(server, laptop, cluster_and_redis, tmp_path, remote_dir):
    override(Path(laptop.env["XDG_CONFIG_HOME"]), server, remote_dir)
    port = sshd_helper.free_port()
    (tmp_path / "redis.yaml").write_text(redis_recipe(port))

    submitted = laptop("submit", "redis.yaml", "--run-dir", "run")
    assert "SLURM job" in submitted.stdout and "remote run folder" in submitted.stdout, submitted.stdout
    # round trips of submit: one master, one prepare, one rsync, one sbatch per job, one for the login node's run.json
    assert ssh_calls(submitted.stderr) == {"master": 1, "check": 1, "run": 4, "push": 1}, submitted.stderr
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    remote_run = HOME / remote_dir / "run"
    assert record["remote"]["run_dir"] == str(remote_run) and record["remote"]["port"] == server.port
    assert record["remote"]["user"] == sshd_helper.USER
    assert (remote_run / "redis.sbatch").read_bytes() == (tmp_path / "run" / "redis.sbatch").read_bytes()
    # the login node gets a run.json of its own: the same jobs, found there without ssh, and where they came from
    there = json.loads((remote_run / "run.json").read_text())
    assert "remote" not in there and there["submitted_from"] == socket.gethostname(), there
    assert there["run_dir"] == str(remote_run) and there["jobs"] == record["jobs"] and there["state"] == "submitted"
    assert (remote_run / "run.json").stat().st_mode & 0o077 == 0
    # the compiled output is what `orchc compile` writes: the ssh settings are the run side's only
    laptop("compile", "redis.yaml", "-o", "compiled")
    for name in ("redis.sbatch", "bench.sbatch", "manifest.json", "submit.sh"):
        assert (tmp_path / "compiled" / "redis" / name).read_bytes() == (tmp_path / "run" / name).read_bytes(), name

    def bench_done() -> dict[str, dict[str, str]] | None:
        jobs = jobs_of(laptop, "run")
        return jobs if jobs["bench"]["state"] in ("COMPLETED", "FAILED", "CANCELLED") else None

    jobs = wait_for(bench_done, 120, "the client to end over ssh")
    assert jobs["bench"]["state"] == "COMPLETED", laptop("logs", "run", "bench").stdout
    # on the login node, as its user, orchc follows the run submitted from the laptop (before: "not an orchc run")
    on_login_node = login_node_orchc("status", str(remote_run), "--json")
    assert on_login_node.returncode == 0, on_login_node.stderr
    assert {job["job"]: job["state"] for job in json.loads(on_login_node.stdout)["jobs"]}["bench"] == "COMPLETED"
    listed_there = login_node_orchc("runs", "--root", str(HOME / remote_dir))
    assert listed_there.returncode == 0 and f"from {socket.gethostname()}" in listed_there.stdout, listed_there
    assert jobs["redis"]["state"] == "RUNNING" and jobs["redis"]["service"] == "ready", jobs

    runs = laptop("runs", "--root", ".", "--states", "--json")
    listed = {row["run"]: row for row in json.loads(runs.stdout)}
    assert listed["run"]["jobs_ended"] == 1, listed
    assert listed["run"]["remote"] == f"{sshd_helper.USER}@127.0.0.1:{server.port}", listed
    assert listed["run"]["remote_folder"] == str(remote_run) and listed["run"]["submitted_from"] is None
    assert f"ssh {sshd_helper.USER}@127.0.0.1:{server.port}" in laptop("runs", "--root", ".").stdout
    assert ssh_calls(runs.stderr) == {"check": 1, "run": 1}, runs.stderr    # squeue on the login node

    status = laptop("status", "run")
    assert "redis" in status.stdout and "ready" in status.stdout
    # a status is one rsync and one squeue over the master that a former command left persisting
    assert ssh_calls(status.stderr) == {"check": 1, "pull": 1, "run": 1}, status.stderr

    results = laptop("results", "run", "--json")
    bench = json.loads(results.stdout)["bench"]
    assert bench["status"] == "complete" and bench["metrics"]["get.requests_per_s"] > 0, bench
    assert ssh_calls(results.stderr) == {"check": 1, "pull": 1, "run": 1}, results.stderr
    assert (tmp_path / "run" / "results" / "bench" / "results.json").is_file()   # pulled

    logs = laptop("logs", "run", "bench")
    assert "redis-benchmark set" in logs.stdout, logs.stdout
    followed = laptop("logs", "run", "bench", "-f", timeout=60)     # the client ended: -f pulls, prints, returns
    assert "redis-benchmark set" in followed.stdout and ssh_calls(followed.stderr)["pull"] >= 2, followed.stderr

    # the tunnel: a local port forwarded to the node and port redis published, redis PING over TLS through it
    tunnel = laptop.popen("tunnel", "run", "redis", "--local-port", str(local := sshd_helper.free_port()))
    try:
        line = ""
        for _ in range(2):              # what it forwards, then how to connect (then it waits for Ctrl-C)
            line = tunnel.stdout.readline() if tunnel.stdout else ""
            if not line or line.startswith("connect with: "):
                break
        assert line.startswith("connect with: redis-cli "), (line, tunnel.stderr.read() if tunnel.stderr else "")
        assert "http" not in line and "--tls --cacert run/credentials/redis/ca.crt" in line, line
        credentials = tmp_path / "run" / "credentials" / "redis"
        # the command as printed: redis over TLS with the run's client certificate, through the tunnel
        ping = subprocess.run([*shlex.split(line.removeprefix("connect with: ")), "ping"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=20)
        assert ping.stdout.strip() == "PONG", ping
        # the service's private key stays on the cluster; the client's comes over for the tunnel
        assert (credentials / "client.key").is_file() and not (credentials / "server.key").exists()
    finally:
        tunnel.send_signal(signal.SIGINT)
        code = tunnel.wait(timeout=20)
    assert code == 130, tunnel.stderr.read() if tunnel.stderr else ""
    with pytest.raises(OSError):          # the forward is gone
        socket.create_connection(("127.0.0.1", local), timeout=2).close()

    cancelled = laptop("cancel", "run")
    assert "cancelled SLURM job(s)" in cancelled.stdout
    assert "pull" not in ssh_calls(cancelled.stderr)
    # rerun goes where the run was made: beside it on the login node
    again = laptop("rerun", "run", "--run-dir", "again")
    assert json.loads((tmp_path / "again" / "run.json").read_text())["remote"]["run_dir"] == str(
        HOME / remote_dir / "again"), again.stdout
    assert (HOME / remote_dir / "again" / "redis.sbatch").is_file()
    laptop("cancel", "again")
    wait_for(lambda: jobs_of(laptop, "run")["redis"]["state"] == "CANCELLED", 60, "redis to be cancelled")
    # the endpoint redis withdrew when it stopped is gone from the local copy too (endpoints/ is mirrored)
    wait_for(lambda: jobs_of(laptop, "run") and not (tmp_path / "run" / "endpoints" / "redis").exists(), 30,
             "the withdrawn endpoint to be gone locally")


@pytest.mark.cluster
@pytest.mark.ssh
def test_status_watch_reconnects_when_the_master_dies(server, laptop, cluster_and_redis, tmp_path, remote_dir):
    override(Path(laptop.env["XDG_CONFIG_HOME"]), server, remote_dir)
    port = sshd_helper.free_port()
    (tmp_path / "redis.yaml").write_text(redis_recipe(port, client=False))
    laptop("submit", "redis.yaml", "--run-dir", "run")
    watch = laptop.popen("status", "run", "--watch", "--interval", "0.5")
    try:
        wait_for(lambda: (tmp_path / "run" / "endpoints" / "redis").exists(), 60, "redis to be ready (pulled)")
        sockets = list((Path(laptop.env["XDG_RUNTIME_DIR"]) / "orchc-ssh").glob("*"))
        assert len(sockets) == 1

        def master() -> int | None:
            check = subprocess.run(["ssh", "-o", f"ControlPath={sockets[0]}", "-O", "check", "x"],
                                   capture_output=True, text=True, timeout=10)
            found = re.search(r"pid=(\d+)", check.stderr)
            return int(found.group(1)) if check.returncode == 0 and found else None

        first = master()
        assert first is not None
        os.kill(first, signal.SIGKILL)             # the connection drops mid-watch
        # the watch (alone: nothing else talks to the login node) opens a new connection at its next poll
        wait_for(lambda: master() not in (None, first), 15, "the watch to reconnect")
        assert watch.poll() is None, watch.stderr.read() if watch.stderr else ""
        laptop("cancel", "run")
        out, err = watch.communicate(timeout=60)
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 3, err                   # cancelled: every job ended, the run did not complete
    assert "CANCELLED" in out and out.splitlines()[-1] == "run run: cancelled" and "Traceback" not in err
    assert ssh_calls(err)["master"] >= 1, err           # a new master once the first was killed


@pytest.mark.cluster
@pytest.mark.ssh
def test_status_watch_fails_clearly_when_the_login_node_goes_away(laptop, cluster_and_redis, tmp_path, remote_dir):
    problem = sshd_helper.problem()
    if problem:
        pytest.fail(problem) if in_ci() else pytest.skip(problem)
    own = sshd_helper.make_server()          # this one is stopped mid-watch
    try:
        override(Path(laptop.env["XDG_CONFIG_HOME"]), own, remote_dir)
        (tmp_path / "redis.yaml").write_text(redis_recipe(sshd_helper.free_port(), client=False))
        laptop("submit", "redis.yaml", "--run-dir", "run")
        record = json.loads((tmp_path / "run" / "run.json").read_text())
        laptop.env["ORCHC_SSH_GRACE"] = "6"          # (default 120 s: test_remote_setup.py has it come back)
        watch = laptop.popen("status", "run", "--watch", "--interval", "0.5")
        time.sleep(3)
        own.stop()
        started = time.monotonic()
        out, err = watch.communicate(timeout=60)
        elapsed = time.monotonic() - started
    finally:
        own.stop()
        ids = [job["slurm_id"] for job in json.loads((tmp_path / "run" / "run.json").read_text())["jobs"]] \
            if (tmp_path / "run" / "run.json").exists() else []
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True, timeout=30)
        shutil.rmtree(own.folder, ignore_errors=True)
    assert record["remote"]["port"] == own.port
    assert watch.returncode == 1, (out, err)
    assert "orchc: error:" in err and "Traceback" not in err
    assert re.search(r"refused the connection|closed|did not answer|unreachable", err), err
    assert "trying again for up to 6 s" in err and "after 6 s of trying" in err, err
    assert 6 <= elapsed < 45, elapsed


@pytest.mark.cluster
@pytest.mark.ssh
def test_a_refused_sbatch_rolls_back_over_ssh(server, laptop, cluster_and_redis, tmp_path, remote_dir):
    override(Path(laptop.env["XDG_CONFIG_HOME"]), server, remote_dir)
    (tmp_path / "redis.yaml").write_text(redis_recipe(sshd_helper.free_port()).replace(
        "  type: redis_client\n", "  type: redis_client\n  resources: {partition: nosuchpartition}\n"))
    done = laptop("submit", "redis.yaml", "--run-dir", "run", check=False)
    assert done.returncode == 1, done.stdout
    assert "sbatch bench.sbatch failed" in done.stderr and "cancelled the jobs already submitted (redis " in \
        done.stderr, done.stderr
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["state"] == "failed" and [job["name"] for job in record["jobs"]] == ["redis"], record
    redis_id = record["jobs"][0]["slurm_id"]
    # cancelled on the cluster, over the same connection
    wait_for(lambda: jobs_of(laptop, "run")["redis"]["state"] == "CANCELLED", 30, f"job {redis_id} cancelled")


# --- clear errors, bounded in time --------------------------------------------------------------------

def submit_error(laptop: Remote, tmp_path: Path, timeout: float = 60) -> tuple[str, float]:
    (tmp_path / "r.yaml").write_text(redis_recipe(sshd_helper.free_port(), client=False))
    started = time.monotonic()
    done = laptop("submit", "r.yaml", "--run-dir", "run", check=False, timeout=timeout)
    elapsed = time.monotonic() - started
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.count("orchc: error:") == 1 and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "run").exists()          # nothing was made: the login node is checked first
    return done.stderr, elapsed


@pytest.mark.ssh
def test_a_port_where_nothing_listens_is_a_clear_error(server, laptop, tmp_path):
    override(Path(laptop.env["XDG_CONFIG_HOME"]), server, "x", port=sshd_helper.free_port())
    err, elapsed = submit_error(laptop, tmp_path)
    assert "refused the connection" in err and elapsed < 20, (err, elapsed)


@pytest.mark.ssh
def test_a_refused_key_is_a_clear_error(server, laptop, tmp_path):
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", stranger], check=True, capture_output=True)
    override(Path(laptop.env["XDG_CONFIG_HOME"]), server, "x", key=stranger)
    err, elapsed = submit_error(laptop, tmp_path)
    assert "refused the login" in err and elapsed < 20, (err, elapsed)


@pytest.mark.ssh
def test_a_changed_host_key_is_a_clear_error(server, laptop, tmp_path):
    override(Path(laptop.env["XDG_CONFIG_HOME"]), server, "x", known_hosts=sshd_helper.wrong_known_hosts(server))
    err, elapsed = submit_error(laptop, tmp_path)
    assert "host key" in err and "CHANGED" in err and elapsed < 20, (err, elapsed)
    assert str(sshd_helper.wrong_known_hosts(server)) in err and "~/.ssh/known_hosts" not in err, err


@pytest.mark.ssh
def test_an_unknown_host_key_is_a_clear_error(server, laptop, tmp_path):
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    override(Path(laptop.env["XDG_CONFIG_HOME"]), server, "x", known_hosts=empty)
    err, elapsed = submit_error(laptop, tmp_path)
    assert "host key" in err and "not known" in err and elapsed < 20, (err, elapsed)
    # the command it suggests works as written (ssh takes no host:port)
    assert f"`ssh -p {server.port} {sshd_helper.USER}@127.0.0.1`" in err, err
    assert str(empty) in err and "~/.ssh/known_hosts" not in err, err     # the file in use is named


@pytest.mark.ssh
def test_a_server_that_never_speaks_is_a_timeout(server, laptop, tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])      # accepts, never answers
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        override(Path(laptop.env["XDG_CONFIG_HOME"]), server, "x", port=listener.getsockname()[1])
        laptop.env["ORCHC_SSH_CONNECT_TIMEOUT"] = "3"
        err, elapsed = submit_error(laptop, tmp_path)
    finally:
        stop.set()
        thread.join()
        for sock in accepted:
            sock.close()
        listener.close()
    assert "did not answer in time" in err and elapsed < 15, (err, elapsed)
    assert accepted, "ssh never connected to the silent listener"


# --- hostile values never run as code on the remote side -----------------------------------------------

HOSTILE = "it's \"q\" $(touch /tmp/orchc-PWNED-{n}) `touch /tmp/orchc-PWNED-{n}`; touch /tmp/orchc-PWNED-{n} & x"


@pytest.mark.ssh
def test_hostile_folders_names_and_words_stay_data(server, sockets, tmp_path, monkeypatch):
    for n in range(3):
        Path(f"/tmp/orchc-PWNED-{n}").unlink(missing_ok=True)
    # the key and the known-hosts files are outside the home: the user's override for site local vouches for them
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    override(tmp_path / "config", server, "unused")
    target = Target("127.0.0.1", server.port, sshd_helper.USER, str(server.client_key),
                    "hostile " + HOSTILE.format(n=0), tuple(server.options()), "local")
    conn = Connection(target, 30)
    # a run name is one folder: no slash, so its commands would touch files in the remote home
    name = "run it's \"q\" $(touch orchc-PWNED-1) `touch orchc-PWNED-1`; touch orchc-PWNED-1 & x"
    folder = prepare(conn, name)
    assert folder == f"{HOME}/hostile {HOSTILE.format(n=0)}/{name}"
    local = tmp_path / "local"
    local.mkdir()
    (local / name).write_text("payload\n")
    conn.push(local, folder)
    assert (Path(folder) / name).read_text() == "payload\n"
    (Path(folder) / "back").write_text("pulled\n")
    conn.pull(folder, local)
    assert (local / "back").read_text() == "pulled\n"
    echoed = conn.run(["printf", "%s\n", HOSTILE.format(n=2)], cwd=folder, env={"X": HOSTILE.format(n=2)})
    assert echoed.code == 0 and echoed.out == HOSTILE.format(n=2) + "\n"
    shown = conn.run(["sh", "-c", 'printf %s "$X"'], env={"X": "$(touch /tmp/orchc-PWNED-0)"})
    assert shown.out == "$(touch /tmp/orchc-PWNED-0)"
    for n in range(3):
        assert not Path(f"/tmp/orchc-PWNED-{n}").exists(), n
    assert not list(HOME.glob("orchc-PWNED*")) and not list(Path(folder).glob("orchc-PWNED*"))
    shutil.rmtree(HOME / ("hostile " + HOSTILE.format(n=0)).split("/")[0], ignore_errors=True)


def test_remote_command_quotes_every_word():
    line = remote_command(["squeue", "-j", "1;reboot"], cwd="/a b/$(x)", env={"TZ": "UTC'; rm -rf ~"})
    assert line == "cd -- '/a b/$(x)' && env 'TZ=UTC'\"'\"'; rm -rf ~' squeue -j '1;reboot'"


# --- where the target comes from -------------------------------------------------------------------------

def test_the_users_override_and_the_environment_go_over_the_profile(tmp_path, monkeypatch):
    profile = tmp_path / "site.yaml"
    profile.write_text("site: lab\nruntime: native\nssh:\n  host: login.example\n  port: 8822\n  user: alice\n"
                       "  remote_dir: ~/orchc\n")
    config = tmp_path / "config"
    (config / "orchc" / "sites").mkdir(parents=True)
    (config / "orchc" / "sites" / "lab.yaml").write_text("ssh:\n  user: bob\n  options: [ServerAliveInterval=9]\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    for variable in remote_module.ENV_KEYS.values():
        monkeypatch.delenv(variable, raising=False)
    assert site_target("lab", str(profile)) == Target("login.example", 8822, "bob", None, "orchc",
                                                      ("ServerAliveInterval=9",))
    monkeypatch.setenv("ORCHC_SSH_HOST", "other")
    monkeypatch.setenv("ORCHC_SSH_PORT", "2222")
    assert site_target("lab", str(profile)) == Target("other", 2222, "bob", None, "orchc", ("ServerAliveInterval=9",))
    monkeypatch.setenv("ORCHC_SSH_PORT", "port")
    with pytest.raises(OrchcError, match=r"\$ORCHC_SSH_PORT:1:1: error: ORCHC_SSH_PORT='port'"):
        site_target("lab", str(profile))
    monkeypatch.delenv("ORCHC_SSH_HOST")
    monkeypatch.delenv("ORCHC_SSH_PORT")
    assert site_target("nothere", None) is None


def test_a_bad_override_is_located(tmp_path, monkeypatch):
    config = tmp_path / "config"
    (config / "orchc" / "sites").mkdir(parents=True)
    path = config / "orchc" / "sites" / "lab.yaml"
    path.write_text("ssh:\n  host: ok\n  prot: 22\n  options:\n    - ProxyCommand=sh -c 'evil'\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    with pytest.raises(OrchcError) as caught:
        site_target("lab", None)
    text = str(caught.value)
    assert re.search(r"lab\.yaml:3:3: error: .*prot", text), text
    assert re.search(r"lab\.yaml:5:7: error: ssh option ProxyCommand is not allowed", text), text


def test_the_site_schema_refuses_a_glob_or_a_leading_dash_in_remote_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    profile = tmp_path / "site.yaml"
    for bad in ("-oProxyCommand=x", "runs/*", "a\\\\b"):
        profile.write_text(f"site: lab\nruntime: native\nssh:\n  host: h\n  remote_dir: \"{bad}\"\n")
        with pytest.raises(OrchcError, match=r"site\.yaml:5:15: error"):
            site_target("lab", str(profile))


def test_run_json_remote_is_checked_on_read():
    base = {"recipe": "r", "jobs": [], "state": "submitted"}
    good = {**base, "remote": {"host": "h", "port": 22, "user": "u", "identity_file": None, "options": [],
                               "run_dir": "/home/u/orchc-runs/r"}}
    assert parse_run(json.dumps(good), "run.json").remote == Target("h", 22, "u", None, "/home/u/orchc-runs/r")
    for damaged in ({"host": "-oProxyCommand=x", "run_dir": "/x"}, {"host": "h", "run_dir": "relative"},
                    {"host": "h", "run_dir": "/x", "port": "22"}, {"host": "h", "run_dir": "/x", "extra": 1},
                    {"host": "h", "run_dir": "/x", "options": ["ProxyCommand=evil"]}, "h:/x"):
        with pytest.raises(ClusterError, match=r"run\.json is damaged"):
            parse_run(json.dumps({**base, "remote": damaged}), "run.json")


def test_tunnel_to_a_run_made_here_prints_the_endpoint(tmp_path):
    run = tmp_path / "run"
    (run / "endpoints").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"recipe": "r", "state": "submitted", "jobs": [
        {"name": "grafana", "type": "grafana", "role": "service", "target": None, "script": "grafana.sbatch",
         "slurm_id": "41", "submitted": ""}]}))
    (run / "endpoints" / "grafana").write_text("41 node7 3000 9090\n")
    done = subprocess.run([sys.executable, "-m", "compiler", "tunnel", str(run), "grafana", "9090"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stdout.startswith("grafana listens on node7:9090"), done
    other = subprocess.run([sys.executable, "-m", "compiler", "tunnel", str(run), "grafana", "22"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert other.returncode == 1 and "published port(s) 3000, 9090, not 22" in other.stderr, other


def test_an_ssh_block_in_the_profile_leaves_the_compiled_output_alone(orchc, tmp_path):
    plain = (ROOT / "sites" / "local.yaml").read_text()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "local.yaml").write_text(plain)
    (tmp_path / "b" / "local.yaml").write_text(plain + "ssh:\n  host: login.lxp.lu\n  port: 8822\n  user: u100123\n"
                                                       "  remote_dir: ~/orchc-runs\n  options: [ServerAliveInterval=30]\n")
    (tmp_path / "r.yaml").write_text(redis_recipe(6379))
    outputs = []
    for name in ("a", "b"):
        done = orchc("compile", "r.yaml", "--site", f"{name}/local.yaml", "-o", f"out-{name}", cwd=tmp_path)
        assert done.code == 0, done.err
        folder = tmp_path / f"out-{name}" / "r"
        outputs.append({path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()})
    assert outputs[0] == outputs[1] and "redis.sbatch" in outputs[0]
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "local.yaml").write_text(plain + "ssh:\n  host: h\n  prot: 22\n")
    done = orchc("compile", "r.yaml", "--site", "c/local.yaml", "-o", "out-c", cwd=tmp_path)
    assert done.code == 1 and re.search(r"c/local\.yaml:\d+:3: error: .*prot", done.err), done.err


def test_an_ssh_failure_without_a_message_is_called_a_closed_connection():
    """ssh exits 255 and prints nothing when the shared connection it goes through ends under it (the login node
    went away mid-`status --watch`): the error says so, not "failed: no message"."""
    said = remote_module.classify("", Target("login.example", 8022, "me"))
    assert "me@login.example:8022" in said and "closed" in said and "no message" not in said
    assert "refused the connection" in remote_module.classify("ssh: connect to host x port 22: Connection refused",
                                                              Target("x"))


# --- prepare ----------------------------------------------------------------------------------------

@pytest.mark.ssh
def test_prepare_builds_the_images_on_the_login_node_over_ssh(server, laptop, tmp_path, remote_dir):
    """orchc prepare with a site that has an ssh: target builds on the login node, as the user there, into the store
    the site names (expanded there). Apptainer cannot run here: tests/test_images.py's stand-in does, on the remote
    PATH through ssh.setup."""
    from test_images import FAKE_APPTAINER, PROBE

    folder = HOME / remote_dir
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "apptainer").write_text(FAKE_APPTAINER)
    (folder / "bin" / "apptainer").chmod(0o755)
    shutil.chown(folder, sshd_helper.USER, sshd_helper.USER)
    config = Path(laptop.env["XDG_CONFIG_HOME"])
    override(config, server, remote_dir).rename(config / "orchc" / "sites" / "fake.yaml")
    quoted = shlex.quote(str(folder))
    with (config / "orchc" / "sites" / "fake.yaml").open("a") as file:
        file.write(f"  setup: {json.dumps(f'export PATH={quoted}/bin:$PATH FAKE_APPTAINER_LOG={quoted}/apptainer.log')}\n")
    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "probe.yaml").write_text(PROBE)
    (tmp_path / "site.yaml").write_text("site: fake\nruntime: apptainer\nimage_dir: $HOME/" + remote_dir.replace(" ", "_")
                                        + "-containers\ndefaults:\n  resources: {nodes: 1, ntasks: 1, time: '00:10:00'}\n")
    (tmp_path / "r.yaml").write_text("services:\n  - {name: one, type: image_probe}\n")
    store = HOME / (remote_dir.replace(" ", "_") + "-containers")
    try:
        done = laptop("prepare", "r.yaml", "--defs", "defs", "--site", "site.yaml")
        assert f"orchc prepare: building {store}/probe.sif from docker://example.org/probe:1.0 (missing)" in done.stdout, done
        assert (store / "probe.sif").owner() == sshd_helper.USER and (store / "probe.sif.sha256").exists()
        again = laptop("prepare", "r.yaml", "--defs", "defs", "--site", "site.yaml")
        assert f"orchc prepare: {store}/probe.sif: present" in again.stdout
        assert (folder / "apptainer.log").read_text().count("build ") == 1
        local = laptop("prepare", "r.yaml", "--defs", "defs", "--site", "site.yaml", "--local", check=False)
        assert local.returncode == 1 and "apptainer not found" in local.stderr, local.stderr   # not on this PATH
    finally:
        shutil.rmtree(store, ignore_errors=True)

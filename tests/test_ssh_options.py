"""ssh options by allow-list (compiler/run/ssh.py), and remote pulls that copy no symlink.

A site profile (which may come beside a recipe) and a run folder's run.json (which may come from anywhere) may
give ssh only options orchc knows to be harmless, each with a checked value; the user's own override file
(~/.config/orchc/sites/<site>.yaml) may also name the known-hosts files. Everything else is refused before any
ssh process starts. Proven with a real PKCS#11 provider library (compiled here with gcc: its constructor
writes a sentinel file) against the real test sshd of tests/test_remote.py: OpenSSH loads it when asked.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, in_ci
from ssh import sshd as sshd_helper
from test_remote import HOME, Remote, override, remote_dir, server, sockets  # noqa: F401 (fixtures)

from compiler.core.errors import ClusterError, OrchcError
from compiler.run import ssh as remote_module
from compiler.run.runs import parse_run
from compiler.run.ssh import Connection, Target, site_target

PROVIDER_SOURCE = r"""
#include <stdio.h>
/* what an attacker's provider does: run code as it is loaded */
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen(SENTINEL, "w");
    if (f) { fputs("loaded\n", f); fclose(f); }
}
/* OpenSSH loads only a library that holds this symbol (CVE-2023-38408's check) */
unsigned long C_GetFunctionList(void **list) { (void)list; return 5; /* CKR_GENERAL_ERROR */ }
"""


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real PKCS#11 provider library and the sentinel file its constructor writes when it is loaded."""
    if shutil.which("gcc") is None:
        pytest.fail("CI=true but gcc is missing") if in_ci() else pytest.skip("gcc missing (apt-get install gcc)")
    folder = tmp_path_factory.mktemp("pkcs11")
    sentinel = folder / "LOADED"
    (folder / "evil.c").write_text(PROVIDER_SOURCE)
    subprocess.run(["gcc", "-shared", "-fPIC", f'-DSENTINEL="{sentinel}"', "-o", str(folder / "evil.so"),
                    str(folder / "evil.c")], check=True, capture_output=True, timeout=120)
    return folder / "evil.so", sentinel


@pytest.fixture
def laptop(tmp_path: Path, sockets: Path) -> Remote:  # noqa: F811
    config = tmp_path / "config"
    config.mkdir()
    return Remote(tmp_path, config, sockets)


def no_ssh_started(stderr: str) -> bool:
    """ORCHC_SSH_DEBUG=1 prints a line for every ssh and rsync process orchc starts: none here."""
    return "orchc: ssh[" not in stderr


def test_the_provider_is_loaded_by_a_plain_ssh(server, provider):  # noqa: F811
    """The control: what OpenSSH does with PKCS11Provider (so the tests below can fail)."""
    library, sentinel = provider
    sentinel.unlink(missing_ok=True)
    words = ["ssh", "-o", "BatchMode=yes", "-p", str(server.port), "-o", f"PKCS11Provider={library}",
             *(word for option in server.options() for word in ("-o", option)), "127.0.0.1", "true"]
    subprocess.run(words, capture_output=True, timeout=60)
    assert sentinel.read_text() == "loaded\n"
    sentinel.unlink()


def redis_recipe() -> str:
    return ("site: local\nservice:\n  name: redis\n  ports: [6379]\n  data_dir: /tmp/orchc-ssh-options\n"
            "  resources: {time: '00:05:00'}\n")


def test_a_profile_beside_the_recipe_cannot_load_a_library(server, laptop, provider, tmp_path):  # noqa: F811
    library, sentinel = provider
    sentinel.unlink(missing_ok=True)
    shutil.copy(library, tmp_path / "evil.so")          # shipped beside the recipe, named relative to it
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "local.yaml").write_text(
        (ROOT / "sites" / "local.yaml").read_text()
        + f"ssh:\n  host: 127.0.0.1\n  port: {server.port}\n  user: {sshd_helper.USER}\n"
          "  options:\n    - ServerAliveInterval=30\n    - PKCS11Provider=./evil.so\n")
    lines = len((ROOT / "sites" / "local.yaml").read_text().splitlines())
    (tmp_path / "redis.yaml").write_text(redis_recipe())
    done = laptop("submit", "redis.yaml", "--site", "site/local.yaml", "--remote", "--run-dir", "run", check=False)
    assert done.returncode == 1, done
    assert re.search(rf"site/local\.yaml:{lines + 7}:7: error: ssh option PKCS11Provider is not allowed in a site "
                     r"profile.*ServerAliveInterval", done.stderr), done.stderr
    assert no_ssh_started(done.stderr), done.stderr
    assert not sentinel.exists()
    assert not (tmp_path / "run").exists()


def planted_run(folder: Path, sshd: sshd_helper.Server, options: list[str], remote_run: str = "/nowhere") -> Path:
    """A run folder whose run.json says it was submitted over ssh to the test server with `options`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps({
        "recipe": "r", "site": "local", "state": "submitted", "scheduler": "slurm",
        "jobs": [{"name": "redis", "type": "redis", "role": "service", "target": None, "script": "redis.sbatch",
                  "slurm_id": "999999", "submitted": ""}],
        "remote": {"host": "127.0.0.1", "port": sshd.port, "user": sshd_helper.USER,
                   "identity_file": str(sshd.client_key), "options": options, "run_dir": remote_run}}))
    return folder


def test_a_run_json_cannot_load_a_library(server, laptop, provider, tmp_path):  # noqa: F811
    library, sentinel = provider
    override(Path(laptop.env["XDG_CONFIG_HOME"]), server, "orchc-runs")    # the user's own, vouched-for settings
    planted_run(tmp_path / "run", server, [*server.options(), f"PKCS11Provider={library}"])
    for command in (["status", "run"], ["logs", "run", "redis"], ["results", "run"], ["cancel", "run"],
                    ["tunnel", "run", "redis"], ["rerun", "run", "--run-dir", "again"], ["report", "run"]):
        sentinel.unlink(missing_ok=True)
        done = laptop(*command, check=False)
        assert done.returncode == 1, (command, done)
        assert re.fullmatch(r"orchc: error: .*run\.json is damaged: remote: ssh option PKCS11Provider is not allowed"
                            r"[^\n]*\n", done.stderr), (command, done.stderr)
        assert no_ssh_started(done.stderr), (command, done.stderr)
        assert not sentinel.exists(), command


def test_a_run_json_keeps_what_the_user_vouched_for(server, laptop, tmp_path):  # noqa: F811
    """The known-hosts options of the user's override are accepted back from run.json; the same options
    without the override are refused."""
    planted_run(tmp_path / "run", server, server.options())
    done = laptop("status", "run", "--json", check=False)
    assert done.returncode == 1 and re.search(r"ssh (identity_file|option UserKnownHostsFile) .*is not allowed",
                                              done.stderr), done.stderr
    assert "only as your own " in done.stderr and "/orchc/sites/local.yaml" in done.stderr, done.stderr   # says why
    assert no_ssh_started(done.stderr)
    override(Path(laptop.env["XDG_CONFIG_HOME"]), server, "orchc-runs")
    done = laptop("status", "run", "--json", check=False)
    assert "is not allowed" not in done.stderr and "orchc: ssh[" in done.stderr, done.stderr


# --- every refused option, every allowed one with a bad value ------------------------------------------------

REFUSED = ["PKCS11Provider=./evil.so", "SecurityKeyProvider=./sk.so", "Hostname=evil.example", "ForwardAgent=yes",
           "UserKnownHostsFile=/dev/null",
           "GlobalKnownHostsFile=/dev/null", "ProxyCommand=sh -c evil", "ProxyJump=evil.example",
           "LocalCommand=touch /tmp/x", "PermitLocalCommand=yes", "KnownHostsCommand=/bin/evil", "ControlPath=/tmp/s",
           "ControlMaster=yes", "BatchMode=no", "IdentityAgent=/tmp/agent", "CertificateFile=~/cert",
           "AddKeysToAgent=yes", "SendEnv=*", "SetEnv=BASH_ENV=/tmp/x", "ForwardX11=yes", "ForwardX11Trusted=yes",
           "RemoteForward=9000 localhost:22", "LocalForward=9000 localhost:22", "DynamicForward=1080",
           "Include=/tmp/x", "Match=exec evil", "VerifyHostKeyDNS=yes", "CheckHostIP=no", "RequestTTY=yes",
           "Tunnel=yes", "XAuthLocation=/tmp/x", "PubkeyAcceptedAlgorithms=+ssh-dss", "Ciphers=+3des-cbc",
           "RevokedHostKeys=/dev/null", "UpdateHostKeys=yes", "PasswordAuthentication=yes"]

BAD_VALUES = ["ServerAliveInterval=abc", "ServerAliveInterval=-1", "ServerAliveInterval=99999", "ServerAliveCountMax=0",
              "ConnectTimeout=0", "ConnectTimeout=5x", "StrictHostKeyChecking=no", "StrictHostKeyChecking=accept-new", "ConnectionAttempts=1000", "Compression=maybe",
              "TCPKeepAlive=1", "AddressFamily=unix", "LogLevel=DEBUG3", "LogLevel=info;x", "IPQoS=evil",
              "IPQoS=af21 cs1 ef", "Port=0", "Port=70000", "Port=22 ", "User=$(id)", "User=-oProxyCommand=x",
              "User=", "IdentityFile=id_rsa", "IdentityFile=./key", "IdentityFile=../key",
              "IdentityFile=~/../../etc/shadow", "IdentityFile=~root/.ssh/id_ed25519", "IdentityFile=%d/.ssh/id",
              "IdentityFile=${HOME}/.ssh/id", "IdentityFile=/etc/ssh/ssh_host_ed25519_key",
              "IdentityFile=~/.ssh/a b", "IdentityFile=~/link/key", "IdentityFile=\"~/.ssh/id\"",
              "StrictHostKeyChecking=YES please"]

ALLOWED = ["ServerAliveInterval=30", "serveraliveinterval=0", "ServerAliveCountMax=3", "ConnectTimeout=20", "ConnectTimeout=2m",
           "ConnectionAttempts=2", "Compression=yes", "Compression=no", "TCPKeepAlive=no", "AddressFamily=inet6",
           "IPQoS=af21 cs1", "IPQoS=throughput", "IPQoS=none", "LogLevel=ERROR", "LogLevel=quiet", "Port=8822",
           "User=u100123", "IdentityFile=~/.ssh/id_ed25519", "StrictHostKeyChecking=yes"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home folder of the test's own (with ~/link, a symlink out of it), no user override, no ORCHC_SSH_*."""
    folder = tmp_path / "home"
    (folder / ".ssh").mkdir(parents=True)
    (folder / "link").symlink_to("/etc")
    monkeypatch.setenv("HOME", str(folder))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for variable in remote_module.ENV_KEYS.values():
        monkeypatch.delenv(variable, raising=False)
    return folder


def profile_with(tmp_path: Path, options: list[str], extra: str = "") -> Path:
    path = tmp_path / "site.yaml"
    path.write_text("site: lab\nruntime: native\nssh:\n  host: login.example\n" + extra
                    + ("  options:\n" if options else "") + "".join(f"    - {json.dumps(option)}\n" for option in options))
    return path


@pytest.mark.parametrize("option", REFUSED + BAD_VALUES)
def test_a_profile_option_outside_the_allow_list_is_refused_where_it_is(option, home, tmp_path):
    key = option.partition("=")[0]
    with pytest.raises(OrchcError) as caught:
        site_target("lab", str(profile_with(tmp_path, ["ConnectTimeout=5", option])))
    text = str(caught.value)
    assert re.fullmatch(rf"[^\n]*site\.yaml:7:7: error: ssh option {key} [^\n]+", text), text
    if option in REFUSED:
        assert "is not allowed in a site profile" in text and "ServerAliveInterval, ServerAliveCountMax" in text, text


@pytest.mark.parametrize("option", REFUSED + BAD_VALUES)
def test_a_run_json_option_outside_the_allow_list_is_refused(option, home):
    with pytest.raises(ClusterError, match=rf"run\.json is damaged: remote: ssh option {option.partition('=')[0]} "):
        parse_run(json.dumps({"recipe": "r", "site": "lab", "jobs": [], "remote": {
            "host": "h", "options": ["ConnectTimeout=5", option], "run_dir": "/r"}}), "run.json")


@pytest.mark.parametrize("option", REFUSED + BAD_VALUES)
def test_a_connection_is_refused_an_option_outside_the_allow_list(option, home):
    """Whatever made the target, a connection checks it again before ssh starts."""
    with pytest.raises(ClusterError, match=rf"ssh option {option.partition('=')[0]} "):
        Connection(Target("h", options=(option,)), 10)


def test_the_allowed_options_pass_with_good_values(home, tmp_path):
    target = site_target("lab", str(profile_with(tmp_path, ALLOWED, "  identity_file: ~/.ssh/id_ed25519\n")))
    assert target is not None and target.options == tuple(ALLOWED)
    assert target.identity_file == "~/.ssh/id_ed25519"
    stored = parse_run(json.dumps({"recipe": "r", "site": "lab", "jobs": [], "remote": {
        "host": "h", "identity_file": f"{home}/.ssh/id", "options": ALLOWED, "run_dir": "/r"}}), "run.json")
    assert stored.remote is not None and stored.remote.options == tuple(ALLOWED)


def test_ssh_reads_the_identity_file_that_was_checked(home):
    """~ is expanded by orchc as the check expanded it ($HOME), not left to ssh (the passwd entry's home)."""
    words = Connection(Target("h", identity_file="~/.ssh/a", options=("IdentityFile=~/.ssh/b", "Port=22")), 10) \
        .ssh_options()
    assert ["-i", f"{home}/.ssh/a"] == words[words.index("-i"):words.index("-i") + 2]
    assert f"IdentityFile={home}/.ssh/b" in words and "Port=22" in words


@pytest.mark.parametrize("path", ["id_rsa", "./id", "~/../x", "/etc/ssh/ssh_host_ed25519_key", "~/link/x", "~root/x",
                                  "%d/x", "${HOME}/x"])
def test_a_profile_identity_file_outside_the_home_is_refused(path, home, tmp_path):
    with pytest.raises(OrchcError, match=r"site\.yaml:5:18: error: ssh identity_file "):
        site_target("lab", str(profile_with(tmp_path, [], f"  identity_file: {json.dumps(path)}\n")))


def test_the_users_override_may_name_known_hosts_files_and_a_key_anywhere(home, tmp_path):
    config = tmp_path / "config" / "orchc" / "sites"
    config.mkdir(parents=True)
    (config / "lab.yaml").write_text("ssh:\n  identity_file: /keys/lab\n  options: [StrictHostKeyChecking=yes, "
                                     "UserKnownHostsFile=/keys/known_hosts, GlobalKnownHostsFile=/dev/null]\n")
    target = site_target("lab", str(profile_with(tmp_path, [])))
    assert target is not None and target.identity_file == "/keys/lab"
    assert target.options == ("StrictHostKeyChecking=yes", "UserKnownHostsFile=/keys/known_hosts",
                              "GlobalKnownHostsFile=/dev/null")
    # run.json may carry them back while the override says the same; a connection checks them against it
    record = {"recipe": "r", "site": "lab", "jobs": [], "remote": {
        "host": "h", "identity_file": "/keys/lab", "options": list(target.options), "run_dir": "/r"}}
    stored = parse_run(json.dumps(record), "run.json").remote
    assert stored is not None and Connection(stored, 10).target == stored
    for changed in ({"identity_file": "/keys/other"}, {"options": ["UserKnownHostsFile=/keys/other"]},
                    {"options": ["GlobalKnownHostsFile=/dev/null", "StrictHostKeyChecking=no"]}):
        with pytest.raises(ClusterError, match=r"run\.json is damaged: remote: ssh "):
            parse_run(json.dumps({**record, "remote": {**record["remote"], **changed}}), "run.json")
    # another site's run cannot borrow this site's vouched settings, nor name this site's file by a path
    for site in ("other", "../sites/lab", "lab/../lab", "/abs/lab"):
        with pytest.raises(ClusterError, match=r"run\.json is damaged: remote: ssh identity_file"):
            parse_run(json.dumps({**record, "site": site}), "run.json")
    # and the override itself is still held to the allow-list for the rest
    (config / "lab.yaml").write_text("ssh:\n  options:\n    - PKCS11Provider=/keys/p11.so\n")
    with pytest.raises(OrchcError, match=r"lab\.yaml:3:7: error: ssh option PKCS11Provider is not allowed"):
        site_target("lab", str(profile_with(tmp_path, [])))


# --- remote pulls copy no symlink; logs and results follow none -----------------------------------------------

def test_a_symlink_planted_on_the_cluster_is_not_pulled_nor_printed(server, laptop, tmp_path, remote_dir):  # noqa: F811
    secret = tmp_path / "laptop-only.txt"
    secret.write_text("LAPTOP SECRET\n")
    remote_run = HOME / remote_dir / "run"
    (remote_run / "results" / "redis").mkdir(parents=True)
    (remote_run / "slurm-999999.out").symlink_to(secret)
    (remote_run / "slurm-999999.err").write_text("an honest line\n")
    (remote_run / "results" / "redis" / "results.json").symlink_to(secret)
    (remote_run / "results" / "linked").symlink_to(tmp_path)
    user = pwd.getpwnam(sshd_helper.USER)
    for path in [HOME / remote_dir, *(HOME / remote_dir).rglob("*")]:
        os.lchown(path, user.pw_uid, user.pw_gid)
    override(Path(laptop.env["XDG_CONFIG_HOME"]), server, remote_dir)
    planted_run(tmp_path / "run", server, server.options(), str(remote_run))
    logs = laptop("logs", "run", "redis", check=False)
    assert "pull" in logs.stderr and "warning" not in logs.stderr, logs.stderr     # the pull itself worked
    assert "an honest line" in logs.stdout and "LAPTOP SECRET" not in logs.stdout, logs.stdout
    assert not (tmp_path / "run" / "slurm-999999.out").is_symlink()
    assert not (tmp_path / "run" / "results" / "redis" / "results.json").is_symlink()
    assert not (tmp_path / "run" / "results" / "linked").is_symlink()
    results = laptop("results", "run", "--json", check=False)
    assert "LAPTOP SECRET" not in results.stdout + results.stderr, results


def test_a_symlink_planted_in_a_local_run_folder_is_not_followed(tmp_path):
    secret = tmp_path / "laptop-only.txt"
    secret.write_text("LAPTOP SECRET\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"recipe": "r", "state": "submitted", "jobs": [
        {"name": "bench", "type": "redis_client", "role": "client", "target": None, "script": "bench.sbatch",
         "slurm_id": "999999", "submitted": ""}]}))
    (run / "slurm-999999.out").symlink_to(secret)
    (run / "results" / "bench").mkdir(parents=True)
    (run / "results" / "bench" / "results.json").symlink_to(secret)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for command in (["logs", str(run), "bench"], ["results", str(run), "--json"]):
        done = subprocess.run([sys.executable, "-m", "compiler", *command],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert "LAPTOP SECRET" not in done.stdout + done.stderr and "Traceback" not in done.stderr, (command, done)

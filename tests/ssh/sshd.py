"""A real OpenSSH server (Debian's openssh-server) on a loopback port, for the remote tests.

Generated host key and client key in a fresh folder, key-only login (no PAM, no password) as the
test user `orchc-ssh` (tests/install-deps.sh creates it; created here too when missing), a
known_hosts file holding the host key so that host-key checking stays on (StrictHostKeyChecking=yes).
Needs root: sshd must switch to the test user, and the test user must be able to sbatch.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

USER = "orchc-ssh"
SSHD = "/usr/sbin/sshd"


def problem() -> str | None:
    """Why no test sshd can run here (None when it can)."""
    missing = [tool for tool in (SSHD, "ssh", "ssh-keygen", "rsync") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} missing; run tests/install-deps.sh (openssh-server, openssh-client, rsync)"
    if os.geteuid() != 0:
        return "the test sshd needs root (it logs in as the test user orchc-ssh)"
    return None


def ensure_user() -> pwd.struct_passwd:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", USER], check=True, capture_output=True)
    # useradd locks the password ("!"), and sshd without PAM refuses a locked account even for a key: "*" is
    # "no password works" without the lock.
    subprocess.run(["usermod", "-p", "*", USER], check=True, capture_output=True)
    return pwd.getpwnam(USER)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    folder: Path
    port: int
    known_hosts: Path
    client_key: Path
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=Path)

    def options(self) -> list[str]:
        """ssh -o options for a client that checks this server's host key."""
        return ["StrictHostKeyChecking=yes", f"UserKnownHostsFile={self.known_hosts}", "GlobalKnownHostsFile=/dev/null"]

    def start(self) -> None:
        self.log = self.folder / "sshd.log"
        self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.folder / "sshd_config")],
                                        stdout=subprocess.DEVNULL, stderr=self.log.open("ab"),
                                        start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(64).startswith(b"SSH-2.0-"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd did not answer on port {self.port}: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """Stop the listener and every session it serves (as a login node that goes away would)."""
        if self.process is None:
            return
        doomed = [self.process.pid, *descendants(self.process.pid)]    # sessions are the listener's children
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.process.wait(timeout=10)
        self.process = None


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    listing = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    for line in listing.splitlines():
        pid, ppid = (int(word) for word in line.split())
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def make_server(extra_config: str = "") -> Server:
    """A started server; `extra_config`: more sshd_config lines (a login node of another shape: SetEnv PATH=...,
    ForceCommand ...)."""
    user = ensure_user()
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)      # sshd's privilege separation folder
    folder = Path(tempfile.mkdtemp(prefix="orchc-sshd-"))
    os.chmod(folder, 0o755)                                 # sshd reads authorized_keys as the test user
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(folder / name)],
                       check=True, capture_output=True)
    port = free_port()
    authorized = folder / "authorized_keys"
    shutil.copy(folder / "client_key.pub", authorized)
    os.chmod(authorized, 0o644)
    (folder / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\nPidFile {folder / 'sshd.pid'}\n"
        "UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        f"AuthorizedKeysFile {authorized}\nStrictModes no\nAllowUsers {user.pw_name}\nPermitRootLogin no\n"
        "AllowTcpForwarding yes\nX11Forwarding no\nPrintMotd no\nLogLevel VERBOSE\nMaxStartups 50\n"
        "MaxSessions 50\n" + extra_config)
    host_key = (folder / "host_key.pub").read_text().split()
    known = folder / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    server = Server(folder, port, known, folder / "client_key")
    server.start()
    return server


def wrong_known_hosts(server: Server) -> Path:
    """A known_hosts that pins another key for the server (what a changed host key looks like)."""
    other = server.folder / "other_key"
    if not other.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True,
                       capture_output=True)
    key = (server.folder / "other_key.pub").read_text().split()
    path = server.folder / "known_hosts_wrong"
    path.write_text(f"[127.0.0.1]:{server.port} {key[0]} {key[1]}\n")
    return path

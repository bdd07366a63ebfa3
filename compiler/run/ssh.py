"""Driving a cluster from another machine: the system OpenSSH client over one multiplexed connection.

orchc runs where the user is (a laptop); SLURM's commands run on the login node through
`ssh`. One master connection per target (`ControlMaster`, a socket in a private 0700
folder, `ControlPersist` 60 s) carries every command of an orchc command, and the next
orchc command within a minute reuses it; files move with rsync over the same socket.
The user's ~/.ssh/config, agent, ProxyJump and known_hosts apply as for a plain `ssh`.

Every remote command is one shell string built only with shlex.quote of each word, so a
value (a folder, a run name, a job id) never runs as code on the remote shell. Every call
is bounded by a timeout, and every failure is a ClusterError that says what went wrong
(unreachable host, refused key, unknown or changed host key, timeout, dropped connection).

Where the target comes from (lowest first): the site profile's `ssh:` block, the user's
`$XDG_CONFIG_HOME/orchc/sites/<site>.yaml` (its `ssh:` block, key by key), then
ORCHC_SSH_HOST, ORCHC_SSH_PORT, ORCHC_SSH_USER, ORCHC_SSH_IDENTITY_FILE, ORCHC_SSH_REMOTE_DIR, ORCHC_SSH_SETUP.
ORCHC_SSH_DEBUG=1 prints every ssh and rsync call to stderr (round trips are counted in CALLS).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ClusterError, Collector
from .slurm import Answer, kill_group

DEFAULT_REMOTE_DIR = "orchc-runs"
CONNECT_TIMEOUT = 10
CONNECT_TIMEOUT_VARIABLE = "ORCHC_SSH_CONNECT_TIMEOUT"
PERSIST_SECONDS = 60
TRANSFER_TIMEOUT = 300.0
NOT_PULLED_KINDS = ("--no-links", "--no-devices", "--no-specials")
DEBUG_VARIABLE = "ORCHC_SSH_DEBUG"
ENV_KEYS = {"host": "ORCHC_SSH_HOST", "port": "ORCHC_SSH_PORT", "user": "ORCHC_SSH_USER",
            "identity_file": "ORCHC_SSH_IDENTITY_FILE", "remote_dir": "ORCHC_SSH_REMOTE_DIR", "setup": "ORCHC_SSH_SETUP"}
_SITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")   # a site name (common.schema.json): no slash
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:%-]{0,252}")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}")
_OPTION = re.compile(r"([A-Za-z][A-Za-z0-9]{0,40})=([^\x00-\x1f\x7f]{0,400})")
# A remote folder: printable, no glob character (rsync expands those on the remote side), no leading '-'.
_REMOTE_PATH = re.compile(r"[^\x00-\x1f\x7f*?\[\]\\-][^\x00-\x1f\x7f*?\[\]\\]{0,1000}")
_LOCAL_PATH = re.compile(r"[^\x00-\x1f\x7f]{1,1000}")
_SETUP = re.compile(r"[^\x00-\x1f\x7f]{0,2000}")   # one line of printable text (site.schema.json's ssh.setup)
SETUP_FAILED = "orchc: ssh.setup failed, exit status"
"""what the remote side prints (on stderr) when the site's setup fails: the command did not run"""

# --- which ssh options may come from a file: an allow-list, each value checked -------------------------
#
# A site profile can come beside a recipe and run.json from anywhere, so neither may hand ssh an option that
# runs or loads local code (PKCS11Provider, SecurityKeyProvider, ProxyCommand, KnownHostsCommand, ...), sends
# the connection elsewhere (Hostname, ProxyJump), lends the user's keys (ForwardAgent, IdentityAgent) or
# weakens the host-key check (StrictHostKeyChecking=no, UserKnownHostsFile): only what follows, with values
# of the expected form. The user's own override may also name known-hosts files (and a key anywhere); run.json
# gets those back only while that override still says the same. Anything else belongs in ~/.ssh/config.

Check = Callable[[str], "str | None"]
"""An option value's problem (what it should be), None when it is fine."""

_TIME = re.compile(r"(\d{1,5})([sSmMhH]?)")
_QOS = re.compile(r"af[1-4][1-3]|cs[0-7]|ef|le|lowdelay|throughput|reliability|none|\d{1,3}", re.I)
# ~/... or an absolute path; no whitespace, quote, backslash, % or $ (ssh splits, unquotes and expands those)
_PLAIN_PATH = re.compile(r"(~/|/)[^\s\"'\\%$\x00-\x1f\x7f]{0,1000}")


def _seconds(low: int, high: int) -> Check:
    def check(value: str) -> str | None:
        found = _TIME.fullmatch(value)
        scale = {"": 1, "s": 1, "m": 60, "h": 3600}
        if found is None or not low <= int(found.group(1)) * scale[found.group(2).lower()] <= high:
            return f"a time of {low}-{high} seconds (e.g. 30 or 2m)"
        return None
    return check


def _whole(low: int, high: int) -> Check:
    return lambda value: None if value.isdigit() and low <= int(value) <= high else f"a whole number {low}-{high}"


def _one_of(*words: str) -> Check:
    return lambda value: None if value.lower() in words else " or ".join(words)


def _qos(value: str) -> str | None:
    words = value.split(" ")
    ok = 1 <= len(words) <= 2 and all(_QOS.fullmatch(word) and (not word.isdigit() or int(word) < 256)
                                      for word in words)
    return None if ok else "one or two of af11-af43, cs0-cs7, ef, le, lowdelay, throughput, reliability, none"


def _user(value: str) -> str | None:
    return None if _USER.fullmatch(value) else "a user name"


def _home_file(value: str) -> str | None:
    """A file inside the user's home (symlinks and .. resolved), written ~/... or as an absolute path."""
    if not _PLAIN_PATH.fullmatch(value):
        return "~/... or an absolute path inside your home (no space, quote, backslash, % or $)"
    home = os.path.realpath(os.path.expanduser("~"))
    full = os.path.realpath(os.path.expanduser(value))
    if full == home or os.path.commonpath([home, full]) != home:
        return f"a file inside your home folder {home}"
    return None


def _known_hosts_file(value: str) -> str | None:
    return None if value == "none" or _PLAIN_PATH.fullmatch(value) else "~/..., an absolute path, or none"


def _any_file(value: str) -> str | None:
    return None if _PLAIN_PATH.fullmatch(value) else "~/... or an absolute path (no space, quote, backslash, % or $)"


# lower-case name -> (spelling, value check)
ALLOWED_OPTIONS: dict[str, tuple[str, Check]] = {name.lower(): (name, check) for name, check in (
    ("ServerAliveInterval", _seconds(0, 3600)), ("ServerAliveCountMax", _whole(1, 100)),
    ("ConnectTimeout", _seconds(1, 3600)), ("ConnectionAttempts", _whole(1, 100)),
    ("Compression", _one_of("yes", "no")), ("TCPKeepAlive", _one_of("yes", "no")),
    ("IPQoS", _qos), ("AddressFamily", _one_of("any", "inet", "inet6")),
    ("LogLevel", _one_of("quiet", "fatal", "error", "info", "verbose")),
    ("Port", _whole(1, 65535)), ("User", _user), ("IdentityFile", _home_file),
    ("StrictHostKeyChecking", _one_of("yes")))}
# ... and, from the user's own override file only, these too
USER_OPTIONS: dict[str, tuple[str, Check]] = {**ALLOWED_OPTIONS, **{name.lower(): (name, check) for name, check in (
    ("UserKnownHostsFile", _known_hosts_file), ("GlobalKnownHostsFile", _known_hosts_file),
    ("IdentityFile", _any_file), ("StrictHostKeyChecking", _one_of("yes", "accept-new")))}}


def option_problem(option: str, allowed: Mapping[str, tuple[str, Check]]) -> str | None:
    """Why `option` (Key=Value) may not reach ssh under `allowed`, None when it may."""
    found = _OPTION.fullmatch(option)
    if found is None:
        return f"ssh option {option[:60]!r} is not Key=Value"
    key, value = found.groups()
    if key.lower() not in allowed:
        return f"ssh option {key} is not allowed"
    check = allowed[key.lower()][1]
    why = check(value)
    return None if why is None else f"ssh option {key} has a bad value {value[:60]!r}: it takes {why}"


def allowed_names(allowed: Mapping[str, tuple[str, Check]]) -> str:
    return ", ".join(spelling for spelling, _ in allowed.values())


def identity_problem(path: str) -> str | None:
    """Why a profile's or run.json's identity_file may not reach ssh, None when it may."""
    why = _home_file(path)
    return None if why is None else f"ssh identity_file {path[:60]!r} is not allowed here: it must be {why}"


@dataclass(frozen=True)
class Vouched:
    """What the user's own settings for a site (the override file, $ORCHC_SSH_IDENTITY_FILE) say."""

    options: frozenset[str] = frozenset()
    identity_files: frozenset[str] = frozenset()


def vouched(site: str) -> Vouched:
    """The user's own ssh settings for `site` (nothing for a name that is not a site's)."""
    if not _SITE.fullmatch(site):
        return Vouched()
    override = config_dir() / f"{site}.yaml"
    try:
        info = override.stat()
        stamp: tuple[int, ...] = (info.st_mtime_ns, info.st_size, info.st_ino) if stat.S_ISREG(info.st_mode) else ()
    except OSError:
        stamp = ()
    key = (str(override), stamp, os.environ.get(ENV_KEYS["identity_file"]) or "")
    found = _VOUCHED.get(key)
    if found is None:   # run.json is read back once per run (`orchc runs` reads many): the file is read once
        block = _ssh_block(override, "site override", allow_other_keys=False, allowed=USER_OPTIONS) if stamp else {}
        identities = {block.get("identity_file"), key[2] or None}
        found = Vouched(frozenset(block.get("options", ())), frozenset(path for path in identities if path))
        if len(_VOUCHED) >= 64:
            _VOUCHED.clear()
        _VOUCHED[key] = found
    return found


_VOUCHED: dict[tuple[str, tuple[int, ...], str], Vouched] = {}


CALLS: Counter[str] = Counter()
"""ssh and rsync processes started by this process, by kind (master, check, run, push, pull, forward, cancel, exit)"""


@dataclass(frozen=True)
class Target:
    """Where and how to reach the login node; `remote_dir` is where run folders go (relative: to the remote home)."""

    host: str
    port: int | None = None
    user: str | None = None
    identity_file: str | None = None
    remote_dir: str = DEFAULT_REMOTE_DIR
    options: tuple[str, ...] = ()
    site: str = field(default="", compare=False)
    """the site whose user override (~/.config/orchc/sites/<site>.yaml) may vouch for more than the allow-list"""
    setup: str = ""
    """shell text run before each remote command (the site's ssh.setup, e.g. `module load slurm`)"""

    def shown(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}{':' + str(self.port) if self.port else ''}"

    def ssh_command(self) -> str:
        """The plain `ssh` command that reaches the target (ssh takes the port as -p, never as host:port)."""
        return f"ssh {'-p ' + str(self.port) + ' ' if self.port else ''}{self.user + '@' if self.user else ''}{self.host}"


def check_target(target: Target) -> Target:
    """`target` when every field is well-formed and every option on the allow-list (or vouched for by the user's
    own settings for target.site), else a ClusterError. run.json is read back through this, and every
    Connection checks its target again."""
    if not _HOST.fullmatch(target.host):
        raise ClusterError(f"ssh host {target.host[:60]!r} is not a host name or ~/.ssh/config alias")
    if target.port is not None and not (isinstance(target.port, int) and 0 < target.port < 65536):
        raise ClusterError(f"ssh port {target.port!r} is not a port number")
    if target.user is not None and not _USER.fullmatch(target.user):
        raise ClusterError(f"ssh user {target.user[:60]!r} is not a user name")
    if target.identity_file is not None and not _LOCAL_PATH.fullmatch(target.identity_file):
        raise ClusterError("ssh identity_file is not a path")
    if not isinstance(target.setup, str) or not _SETUP.fullmatch(target.setup):
        raise ClusterError("ssh setup is not one line of printable text (at most 2000 characters)")
    if not _REMOTE_PATH.fullmatch(target.remote_dir):
        raise ClusterError(f"remote folder {target.remote_dir[:60]!r} must be printable, must not start with '-' "
                           "and holds no * ? [ ] or backslash")
    mine = vouched(target.site) if target.site else Vouched()
    own = f"your own {config_dir() / ((target.site if _SITE.fullmatch(target.site) else '') or '<site>')}.yaml"
    if target.identity_file is not None and target.identity_file not in mine.identity_files:
        why = identity_problem(target.identity_file)
        if why is not None:
            raise ClusterError(f"{why} (a key elsewhere only as {own} or ${ENV_KEYS['identity_file']} names it)")
    for option in target.options:
        why = option_problem(option, ALLOWED_OPTIONS)
        if why is not None and option not in mine.options:
            if option_problem(option, USER_OPTIONS) is None:
                key, _, value = option.partition("=")
                raise ClusterError(f"ssh option {key} {value[:60]!r} is not allowed here: only {own} may give it, "
                                   "and it does not (any more)")
            raise ClusterError(f"{why} (allowed: {allowed_names(ALLOWED_OPTIONS)}; others belong in ~/.ssh/config)")
    return target


# --- the target: profile, user override, environment -----------------------------------------------

def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "orchc" / "sites"


def site_target(site_name: str, site_file: str | None) -> Target | None:
    """The SSH target of a site (its profile's `ssh:`, the user's override, the environment); None without a host.
    A malformed block is an OrchcError located in its file."""
    merged: dict[str, Any] = {}
    if site_file:
        merged.update(_ssh_block(Path(site_file), "site profile", allow_other_keys=True, allowed=ALLOWED_OPTIONS))
    override = config_dir() / f"{site_name}.yaml"
    if override.is_file():
        merged.update(_ssh_block(override, "site override", allow_other_keys=False, allowed=USER_OPTIONS))
    merged.update(_from_environment())
    if not merged.get("host"):
        return None
    try:
        return check_target(Target(merged["host"], merged.get("port"), merged.get("user"), merged.get("identity_file"),
                                   _home_relative(merged.get("remote_dir", DEFAULT_REMOTE_DIR)),
                                   tuple(merged.get("options", ())), site_name, merged.get("setup", "")))
    except ClusterError as error:
        raise ClusterError(f"site {site_name}: {error}") from None


def _home_relative(path: str) -> str:
    """`~/x` as `x`: remote commands start in the home folder, and a quoted ~ would not expand."""
    return path[2:] or "." if path.startswith("~/") else "." if path == "~" else path


def _ssh_schema() -> dict[str, Any]:
    from ..core.schema import validator

    schema: dict[str, Any] = validator("site").schema["properties"]["ssh"]
    return schema


def _ssh_block(path: Path, what: str, allow_other_keys: bool, allowed: Mapping[str, tuple[str, Check]]) \
        -> dict[str, Any]:
    """The `ssh:` mapping of a YAML file, checked against the site schema's `ssh` and its options against
    `allowed` (errors located in the file)."""
    from ..core.load import load_file
    from ..core.schema import build_validator, check

    doc = load_file(path, what)
    problems = Collector()
    if allow_other_keys:
        schema: dict[str, Any] = {"type": "object", "properties": {"ssh": _ssh_schema()}}
    else:   # an override holds an ssh: block and nothing else (site: may name the site it overrides)
        schema = {"type": "object", "additionalProperties": False,
                  "properties": {"site": {"type": "string"}, "ssh": _ssh_schema()}}
    check(doc, build_validator(schema), what, problems)
    node = doc.get("ssh")
    if node is not None and isinstance(node.value, dict):
        options = node.get("options")
        for item in options.value if options is not None and isinstance(options.value, list) else ():
            # (an item that is not Key=Value at all is the schema's to report)
            why = option_problem(item.value, allowed) if isinstance(item.value, str) and _OPTION.fullmatch(item.value) \
                else None
            if why is not None and why.endswith("is not allowed"):
                why += f" in a {what}: only {allowed_names(allowed)} may come from one" + (
                    f" (known-hosts files: in your own {config_dir()}/<site>.yaml; anything else: in "
                    "~/.ssh/config for the host)" if allowed is ALLOWED_OPTIONS else " (anything else: in ~/.ssh/config)")
            if why is not None:
                problems.add(item.loc, why)
        identity = node.get("identity_file")
        if allowed is ALLOWED_OPTIONS and identity is not None and isinstance(identity.value, str):
            why = identity_problem(identity.value)
            if why is not None:
                problems.add(identity.loc, f"{why} (a key elsewhere: in your own {config_dir()}/<site>.yaml)")
    problems.raise_if_any()
    data = doc.plain().get("ssh") if isinstance(doc.plain(), dict) else None
    return dict(data) if isinstance(data, dict) else {}


def _from_environment() -> dict[str, Any]:
    from ..core.source import SourceLoc

    found: dict[str, Any] = {}
    problems = Collector()
    properties = _ssh_schema()["properties"]
    from ..core.schema import build_validator

    for key, variable in ENV_KEYS.items():
        text = os.environ.get(variable)
        if text is None or text == "":
            continue
        value: Any = text
        if key == "port":
            value = int(text) if text.isdigit() else text
        errors = list(build_validator(properties[key]).iter_errors(value))
        if errors:
            problems.add(SourceLoc(f"${variable}"), f"{variable}={text[:60]!r}: {errors[0].message[:200]}")
            continue
        found[key] = value
    problems.raise_if_any()
    return found


# --- the connection ---------------------------------------------------------------------------------

def _debug(kind: str, words: Sequence[str]) -> None:
    CALLS[kind] += 1
    if os.environ.get(DEBUG_VARIABLE, "") not in ("", "0"):
        print(f"orchc: ssh[{kind}]: {shlex.join(words)}", file=sys.stderr)


def socket_dir() -> Path:
    """A private (0700) folder for the control sockets: $XDG_RUNTIME_DIR/orchc-ssh, else ~/.cache/orchc/ssh."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(runtime) / "orchc-ssh" if runtime else Path(os.path.expanduser("~")) / ".cache" / "orchc" / "ssh"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)
    except OSError as exc:
        raise ClusterError(f"cannot make the ssh socket folder {folder}: {exc.strerror or exc}") from None
    if folder.stat().st_uid != os.getuid():
        raise ClusterError(f"the ssh socket folder {folder} belongs to another user")
    return folder


class Unreachable(ClusterError):
    """The login node did not answer, or the connection to it ended: it may well be back in a moment."""


GRACE_SECONDS = 120.0
GRACE_VARIABLE = "ORCHC_SSH_GRACE"
_UNREACHABLE_WORDS = ("connection refused", "timed out", "timeout", "no route to host", "network is unreachable",
                      "connection closed", "connection reset", "broken pipe", "kex_exchange_identification",
                      "could not resolve hostname", "name or service not known")


def failure(what: str, stderr: str, target: Target) -> ClusterError:
    """The error of an ssh failure (exit 255): Unreachable when trying again later may work."""
    lowered = stderr.lower()
    said = f"{what}: {classify(stderr, target)}"
    if not stderr.strip() or (any(word in lowered for word in _UNREACHABLE_WORDS)
                              and "permission denied" not in lowered and "host key" not in lowered):
        return Unreachable(said)
    return ClusterError(said)


def grace_seconds() -> float:
    """How long `status --watch` and `logs -f` keep trying a login node that does not answer."""
    text = os.environ.get(GRACE_VARIABLE, "")
    if not text:
        return GRACE_SECONDS
    if not text.isdigit() or int(text) > 86400:
        raise ClusterError(f"{GRACE_VARIABLE}={text[:20]!r} is not a whole number of seconds (0-86400)")
    return float(text)


def patiently(call: Callable[[], Any], grace: float | None = None,
              say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)) -> Any:
    """call(), tried again with growing pauses (1, 2, 4, 8, 15 s) while it raises Unreachable, for up to `grace`
    seconds (default: grace_seconds()); the last error once that has passed. Says so when it starts waiting,
    and when the login node is back."""
    grace = grace_seconds() if grace is None else grace
    deadline: float | None = None
    pause = 1.0
    while True:
        try:
            result = call()
        except Unreachable as error:
            now = time.monotonic()
            if deadline is None:
                deadline = now + grace
                say(f"orchc: {error}; trying again for up to {grace:g} s ({GRACE_VARIABLE})")
            if now >= deadline:
                raise Unreachable(f"{error} (still, after {grace:g} s of trying)") from None
            time.sleep(min(pause, deadline - now))
            pause = min(pause * 2, 15.0)
            continue
        if deadline is not None:
            say("orchc: the login node answers again; going on")
        return result


def classify(stderr: str, target: Target) -> str:
    """What an ssh failure (exit 255) means, in words a user can act on."""
    text = stderr.strip()
    where = target.shown()
    lowered = text.lower()
    known_hosts = next((option.partition("=")[2] for option in target.options
                        if option.lower().startswith("userknownhostsfile=")), "~/.ssh/known_hosts")
    if "remote host identification has changed" in lowered or ("host key for" in lowered and "has changed" in lowered):
        return (f"the host key of {where} has CHANGED (possible man-in-the-middle, or the host was reinstalled); "
                f"check it, then fix {known_hosts} (ssh-keygen -f {known_hosts} -R HOST)")
    if "host key verification failed" in lowered or "no matching host key" in lowered \
            or "host key is not known" in lowered:
        return (f"the host key of {where} is not known or does not match {known_hosts}; "
                f"connect once with `{target.ssh_command()}` to check and accept it")
    if "permission denied" in lowered or "too many authentication failures" in lowered:
        return (f"{where} refused the login (no accepted key; orchc never asks for a password: load the key into "
                "ssh-agent or set identity_file)")
    if "could not resolve hostname" in lowered or "name or service not known" in lowered:
        return f"cannot resolve the host name of {where}"
    if "connection refused" in lowered:
        return f"{where} refused the connection (is the host and port right? nothing listens there)"
    if "timed out" in lowered or "timeout" in lowered:
        return f"{where} did not answer in time (connection timed out)"
    if "no route to host" in lowered or "network is unreachable" in lowered:
        return f"{where} is unreachable (no route to host)"
    if "connection closed" in lowered or "connection reset" in lowered or "broken pipe" in lowered \
            or "kex_exchange_identification" in lowered:
        return f"the connection to {where} was closed ({_last_line(text)})"
    if not text:   # what a multiplexed session prints when its master connection ends under it
        return (f"the connection to {where} was closed without a word from ssh (exit status 255: the login node "
                "went away, or the shared connection to it ended)")
    return f"ssh to {where} failed: {_last_line(text)}"


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("Warning: Permanently")]
    return lines[-1][:200] if lines else ""


def _run(words: Sequence[str], timeout: float, what: str, stdin: str | None = None) -> Answer:
    """Run a local ssh/rsync process in its own session, killed (with its group) after `timeout`."""
    try:
        process = subprocess.Popen(list(words), text=True, stdin=subprocess.PIPE if stdin is not None
                                   else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True, errors="replace")
    except OSError as exc:
        raise ClusterError(f"cannot run {words[0]}: {exc.strerror or exc} (install the OpenSSH client and rsync)") \
            from None
    try:
        out, err = process.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(process)
        raise ClusterError(f"{what} did not finish within {timeout:g} s") from None
    except BaseException:
        kill_group(process)
        raise
    return Answer(process.returncode, out, err)


def remote_command(words: Sequence[str], cwd: str | None = None, env: Mapping[str, str] | None = None,
                   setup: str = "") -> str:
    """One shell command line for the remote side: every word quoted; the setup, then `cd`, variables through
    `env`."""
    parts = [setup_prefix(setup)] if setup else []
    if cwd is not None:
        parts.append(f"cd -- {shlex.quote(cwd)} &&")
    if env:
        parts.append("env " + " ".join(shlex.quote(f"{key}={value}") for key, value in env.items()))
    parts.append(" ".join(shlex.quote(word) for word in words))
    return " ".join(parts)


def setup_prefix(setup: str) -> str:
    """The site's setup, run first in the remote shell itself (so that what it exports stays), as one quoted word
    of a fixed frame: nothing in it can reach into the command after it. What it prints goes to stderr (stdout
    carries job ids, folders and rsync's protocol); when it fails, the command does not run."""
    return f"{{ eval {shlex.quote(setup)}; }} >&2 || {{ echo \"{SETUP_FAILED} $?\" >&2; exit 125; }};"


def connect_timeout() -> int:
    """Seconds ssh waits for the TCP connection and the server's banner (ConnectTimeout)."""
    text = os.environ.get(CONNECT_TIMEOUT_VARIABLE, "")
    if not text:
        return CONNECT_TIMEOUT
    if not text.isdigit() or not 0 < int(text) <= 3600:
        raise ClusterError(f"{CONNECT_TIMEOUT_VARIABLE}={text[:20]!r} is not a whole number of seconds (1-3600)")
    return int(text)


class Connection:
    """One multiplexed SSH connection to a target, started on first use and restarted when it died."""

    def __init__(self, target: Target, timeout: float) -> None:
        self.target = check_target(target)
        self.timeout = timeout
        self.connect_timeout = connect_timeout()
        key = repr((target.host, target.port, target.user, target.identity_file, target.options)).encode()
        self.socket = str(socket_dir() / hashlib.sha256(key).hexdigest()[:16])
        self.master_pid: int | None = None

    # the options every ssh process of this connection gets
    def ssh_options(self, master: bool = False) -> list[str]:
        control = ["-o", "ControlMaster=yes", "-o", f"ControlPersist={PERSIST_SECONDS}"] if master \
            else ["-o", "ControlMaster=no"]
        words = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}",
                 "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
                 "-o", f"ControlPath={self.socket}", *control]
        if self.target.port is not None:
            words += ["-p", str(self.target.port)]
        if self.target.user is not None:
            words += ["-l", self.target.user]
        if self.target.identity_file is not None:
            words += ["-i", os.path.expanduser(self.target.identity_file), "-o", "IdentitiesOnly=yes"]
        for option in self.target.options:
            words += ["-o", _as_checked(option)]
        return words

    def _ssh(self, *extra: str) -> list[str]:
        return ["ssh", *self.ssh_options(), *extra, "--", self.target.host]

    def connect(self) -> None:
        """Make sure a live master serves this target: reuse one (this process's or a persisting one), or start one."""
        if self.master_pid is not None and _alive(self.master_pid):
            return
        self.master_pid = self._check()
        if self.master_pid is not None:
            return
        self._check_key()
        try:
            os.unlink(self.socket)   # a socket left by a master that died
        except OSError:
            pass
        words = ["ssh", *self.ssh_options(master=True), "-f", "-N", "--", self.target.host]
        _debug("master", words)
        # -f forks the master off once it is authenticated; its output goes to a file, never to a pipe we wait on.
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as log:
            try:
                process = subprocess.Popen(words, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                           start_new_session=True)
            except OSError as exc:
                raise ClusterError(f"cannot run ssh: {exc.strerror or exc} (install the OpenSSH client)") from None
            try:
                code = process.wait(timeout=self.connect_timeout + 20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise Unreachable(f"cannot connect to {self.target.shown()}: no answer within "
                                  f"{self.connect_timeout + 20} s") from None
            except BaseException:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise
            log.seek(0)
            err = log.read()
        if code != 0:
            raise failure(f"cannot connect to {self.target.shown()}", err, self.target)
        self.master_pid = self._check()
        if self.master_pid is None:
            raise ClusterError(f"cannot connect to {self.target.shown()}: the ssh master started but does not answer "
                               f"on {self.socket}")

    def _check_key(self) -> None:
        """A ClusterError when the identity file named is not there (ssh would only say that the login was refused)."""
        named = self.target.identity_file
        if named is not None and not os.path.isfile(os.path.expanduser(named)):
            raise ClusterError(f"cannot connect to {self.target.shown()}: the key file {os.path.expanduser(named)} "
                               f"(identity_file) does not exist")

    def _check(self) -> int | None:
        """The pid of the master serving the socket, None when there is none (a local question, no network)."""
        if not os.path.exists(self.socket):
            return None
        words = self._ssh("-O", "check")
        _debug("check", words)
        answer = _run(words, 10, "ssh -O check")
        found = re.search(r"pid=(\d+)", answer.err + answer.out)
        return int(found.group(1)) if answer.code == 0 and found else None

    def run(self, words: Sequence[str], timeout: float | None = None, cwd: str | None = None,
            env: Mapping[str, str] | None = None, retry: bool = False, stdin: str | None = None) -> Answer:
        """Run a command on the login node; its exit status and output. An ssh failure is a ClusterError.
        `retry`: the command may run twice (a question, not sbatch); it is run again once over a new connection
        when the connection dropped."""
        command = remote_command(words, cwd, env, self.target.setup)
        for attempt in (1, 2):
            self.connect()
            ssh = [*self._ssh(), command]
            _debug("run", ssh)
            answer = _run(ssh, self.timeout if timeout is None else timeout,
                          f"{shlex.join(words)[:80]} on {self.target.shown()}", stdin)
            self._check_setup(answer.err)
            if answer.code != 255:
                return answer
            dropped = self.master_pid is not None and not _alive(self.master_pid)
            if retry and attempt == 1 and (dropped or _is_dropped(answer.err)):
                self.master_pid = None
                continue
            raise failure(f"{words[0]} on {self.target.shown()}", answer.err, self.target)
        raise AssertionError("unreachable")

    def _check_setup(self, err: str) -> None:
        """A ClusterError when the remote side says the site's setup failed (then nothing else ran)."""
        if SETUP_FAILED not in err:
            return
        before, _, after = err.partition(SETUP_FAILED)
        status = after.split()[0] if after.split() else "?"
        raise ClusterError(f"ssh.setup {self.target.setup[:200]!r} failed on {self.target.shown()} (exit status "
                           f"{status}): {_last_line(before) or 'no message'}")

    def _rsync(self, kind: str, source: str, destination: str, extra: Sequence[str], timeout: float,
               remote: str) -> None:
        """rsync over the master; copies are idempotent, so one that lost its connection is made again once
        over a new one. `remote`: the folder on the login node, named when it is missing."""
        # rsync's remote end may be on PATH only after the setup, as SLURM's commands are
        setup = ["--rsync-path", f"{setup_prefix(self.target.setup)} rsync"] if self.target.setup else []
        for attempt in (1, 2):
            self.connect()
            shell = shlex.join(["ssh", *self.ssh_options()])
            words = ["rsync", "-a", "--no-owner", "--no-group", "--protect-args", "--timeout",
                     str(int(max(timeout, 10))), "-e", shell, *setup, *extra, "--", source, destination]
            _debug(kind, words)
            answer = _run(words, timeout, f"rsync ({kind}) with {self.target.shown()}")
            if answer.code == 0:
                return
            self._check_setup(answer.err)
            missing = _missing_folder(answer.err)
            if missing:   # rsync's side that found no folder stops, and the other one then reports a broken pipe
                raise ClusterError(f"rsync ({kind}) with {self.target.shown()}: the remote folder {remote} is missing "
                                   f"(purged there, or never copied): {missing}")
            if answer.code == 2 and "is your shell clean" in answer.err:
                raise ClusterError(f"rsync ({kind}) with {self.target.shown()}: protocol incompatibility (rsync asks: "
                                   f"is your shell clean?): the login shell there prints something when it starts "
                                   f"(an echo in ~/.bashrc, ~/.profile, ...); make it print only when interactive "
                                   f"(`[[ $- == *i* ]] && echo ...`); `{self.target.ssh_command()} true | wc -c` must say 0")
            # 255: ssh failed; 10, 12, 30, 35: rsync's socket, protocol stream and timeout errors
            dropped = answer.code < 0 or answer.code in (255, 10, 12, 30, 35) or _is_dropped(answer.err) \
                or (self.master_pid is not None and not _alive(self.master_pid))
            if dropped and attempt == 1:
                self.master_pid = None
                continue
            if dropped:
                raise failure(f"rsync ({kind}) with {self.target.shown()}", answer.err, self.target)
            raise ClusterError(f"rsync ({kind}) with {self.target.shown()} failed (exit status {answer.code}): "
                               f"{_last_line(answer.err) or 'no message'}")

    def _remote(self, path: str) -> str:
        return f"{self.target.host}:{path}"

    def push(self, local: Path, remote: str, exclude: Sequence[str] = ()) -> None:
        """Copy the local folder's content into the remote folder (incremental)."""
        self._rsync("push", f"{local}/", self._remote(f"{remote}/"),
                    [f"--exclude=/{name}" for name in exclude], TRANSFER_TIMEOUT, remote)

    def pull(self, remote: str, local: Path, exclude: Sequence[str] = (), mirrored: Sequence[str] = ()) -> None:
        """Copy what changed in the remote folder into the local one (regular files and folders only: no symlink,
        device or FIFO); nothing local is deleted except under the `mirrored` folders, which end up as they are
        remotely (a withdrawn endpoint disappears)."""
        filters = [f"--exclude=/{name}" for name in exclude]
        filters += [f"--filter=R /{name}/***" for name in mirrored] + ["--filter=P *"]
        # only files and folders come over: a symlink made on the cluster side would have orchc read (and print)
        # a file of this machine outside the run folder; a device or FIFO is no run's output either
        self._rsync("pull", self._remote(f"{remote}/"), f"{local}/", ["--delete", *NOT_PULLED_KINDS, *filters],
                    TRANSFER_TIMEOUT, remote)

    def forward(self, local_port: int, host: str, port: int) -> str:
        """Listen on 127.0.0.1:local_port here, forwarded through the master to host:port; returns the spec."""
        spec = f"127.0.0.1:{local_port}:{host}:{port}"
        self.connect()
        words = self._ssh("-O", "forward", "-L", spec)
        _debug("forward", words)
        answer = _run(words, self.timeout, "ssh -O forward")
        if answer.code != 0:
            raise ClusterError(f"cannot forward 127.0.0.1:{local_port} to {host}:{port} through "
                               f"{self.target.shown()}: {_last_line(answer.err) or classify(answer.err, self.target)}")
        return spec

    def cancel_forward(self, spec: str) -> None:
        words = self._ssh("-O", "cancel", "-L", spec)
        _debug("cancel", words)
        _run(words, 10, "ssh -O cancel")

    def close(self) -> bool:
        """Stop the master (normally it persists a minute for the next command); whether one was there."""
        self.master_pid = None
        return os.path.exists(self.socket) and _exit_master(self.socket)


def _exit_master(socket: str) -> bool:
    """Ask the master on `socket` to exit (`ssh -O exit`; local, no network); whether one did."""
    words = ["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "orchc-master"]
    _debug("exit", words)
    return _run(words, 10, "ssh -O exit").code == 0


def close_all() -> int:
    """Stop every master of this user's orchc connections (the sockets in socket_dir()); how many there were."""
    return sum(_exit_master(str(path)) for path in sorted(socket_dir().iterdir()) if stat.S_ISSOCK(path.lstat().st_mode))


def _as_checked(option: str) -> str:
    """IdentityFile=~/x with ~ expanded as the check expanded it ($HOME; ssh itself would use the passwd entry's
    home, which may differ), so that ssh reads the file that was checked."""
    key, _, value = option.partition("=")
    return f"{key}={os.path.expanduser(value)}" if key.lower() == "identityfile" and value.startswith("~/") else option


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _missing_folder(err: str) -> str:
    """rsync's line saying a remote folder does not exist (change_dir, mkdir of the destination), '' when none."""
    for line in err.splitlines():
        if line.startswith("rsync:") and "No such file or directory" in line and \
                any(word in line for word in ("change_dir", "mkdir", "link_stat")):
            return line.strip()[:300]
    return ""


def _is_dropped(err: str) -> bool:
    lowered = err.lower()
    return any(word in lowered for word in ("control socket", "mux_client", "connection closed", "broken pipe",
                                            "connection unexpectedly closed",
                                            "connection reset", "master refused session"))


_CONNECTIONS: dict[Target, Connection] = {}
"""The run side's connection of this process to each login node it reached (one per site and user)."""


def forget_connections() -> None:
    """Open new connections from here on (the masters of the old ones stop by themselves, a minute later)."""
    _CONNECTIONS.clear()


def connection(target: Target, timeout: float | None = None) -> Connection:
    """The one connection of this process to `target`."""
    from .slurm import command_timeout

    found = _CONNECTIONS.get(target)
    if found is None:
        found = _CONNECTIONS[target] = Connection(target, command_timeout() if timeout is None else timeout)
    return found


def runner_for(conn: Connection) -> Any:
    """A slurm.Runner that runs SLURM's commands on the login node over `conn`."""
    from .slurm import Answer as SlurmAnswer

    def run(command: Sequence[str], timeout: float, cwd: Path | None = None,
            env: Mapping[str, str] | None = None, idempotent: bool = True) -> SlurmAnswer:
        answer = conn.run(command, timeout, None if cwd is None else str(cwd), env, retry=idempotent)
        if answer.code == 127 and command[0] in ("sbatch", "squeue", "scancel"):   # sacct may be missing: asked politely
            raise ClusterError(f"{command[0]} not found on PATH on {conn.target.shown()}: {not_on_path_hint()}")
        if answer.code != 0:    # SLURM's message, and where it came from
            return SlurmAnswer(answer.code, answer.out, f"{answer.err.strip()} (on {conn.target.shown()})")
        return SlurmAnswer(answer.code, answer.out, answer.err)
    return run


def prepare(conn: Connection, name: str) -> str:
    """Make the remote parent folder, check that sbatch is there and that no run `name` exists; the remote run
    folder's absolute path. One round trip."""
    if not _REMOTE_PATH.fullmatch(name) or "/" in name or name in (".", ".."):
        raise ClusterError(f"run name {name[:60]!r} cannot name a remote folder (no / * ? [ ] \\, no leading -)")
    parent = conn.target.remote_dir
    script = ('umask 077; mkdir -p -- "$1" && cd -- "$1" || exit 3; '
              'command -v sbatch >/dev/null 2>&1 || { echo "no sbatch on PATH" >&2; exit 4; }; '
              'if [ -e "$2" ]; then echo "exists" >&2; exit 5; fi; pwd -P')
    answer = conn.run(["sh", "-c", script, "orchc-prepare", parent, name], retry=True)
    where = f"{conn.target.shown()}:{parent}"
    if answer.code == 3:
        raise ClusterError(f"cannot make the remote folder {where}: {_last_line(answer.err)}")
    if answer.code == 4:
        raise ClusterError(f"sbatch not found on PATH on {conn.target.shown()}: {not_on_path_hint()}")
    if answer.code == 5:
        raise ClusterError(f"the remote run folder {where}/{name} already exists; choose another --run-dir")
    if answer.code != 0:
        raise ClusterError(f"preparing {where} failed: {_last_line(answer.err)}")
    folder = answer.out.strip().splitlines()[-1] if answer.out.strip() else ""
    if not folder.startswith("/") or not _REMOTE_PATH.fullmatch(folder):
        raise ClusterError(f"{conn.target.shown()} answered {folder[:80]!r} for the remote folder")
    return f"{folder.rstrip('/')}/{name}"


def not_on_path_hint() -> str:
    return ("is SLURM there (a login node)? If it needs a step first (`module load slurm`), give it as ssh.setup in "
            f"the site profile or your {config_dir()}/<site>.yaml")


def wait_until_interrupted() -> int:
    """Sleep until SIGINT or SIGTERM; the signal's number."""
    got: list[int] = []

    def note(signum: int, frame: object) -> None:
        got.append(signum)

    previous = {signum: signal.signal(signum, note) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while not got:
            time.sleep(0.2)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return got[0]


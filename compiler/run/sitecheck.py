"""`orchc site check`: a site profile against the machine it names, from one of its login nodes.

One shell probe (written here, run by the profile's own shell, locally or over the site's SSH target) asks the
machine what the profile claims: its partitions and node shapes (`sinfo`), its QoS names (`sacctmgr`), its
reservations (`scontrol`), that the profile's modules load in order after its purge, that the container runtime
is there (and its version), that the storage places can be created and written. With `gpu_job`, a short job on
each GPU partition reports the GPUs and driver a job sees. The probe prints tab-separated facts; this module
compares them with the profile and says what differs.
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..recipe.resolve import Site

if TYPE_CHECKING:
    from .ssh import Target

RUN_SPECIFIC = re.compile(r"ORCHC_RUN|ORCHC_DATA|ORCHC_JOB|SLURM_JOB_ID|SLURM_ARRAY")
"""Variables that exist only inside a job of a run: a storage place is checked up to its first folder that names one."""
_ACCOUNT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
PROBE_TIMEOUT = 300.0
"""seconds the probe may take (module loads on a busy login node are slow; a GPU job waits in the queue)"""


@dataclass(frozen=True)
class Finding:
    kind: str
    """ok, differs or unchecked"""
    text: str


@dataclass
class Report:
    site: Site
    findings: list[Finding] = field(default_factory=list)

    def add(self, kind: str, text: str) -> None:
        self.findings.append(Finding(kind, text))

    @property
    def differences(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.kind == "differs"]


Execute = Callable[[Sequence[str], float], tuple[int, str, str]]
"""runs a command (here or on the login node): its exit status, stdout and stderr"""


def shell_words(site: Site) -> list[str]:
    """The profile's shell as a command (`/bin/bash -l` -> ['/bin/bash', '-l'])."""
    return site.shell.split()


def storage_prefix(path: str) -> str | None:
    """The part of a storage place that exists outside a run: the folders before the first one that names a
    run-specific variable; None when the place is entirely per run (`$ORCHC_RUN_DIR/data`)."""
    parts = path.split("/")
    kept: list[str] = []
    for part in parts:
        if RUN_SPECIFIC.search(part):
            break
        kept.append(part)
    prefix = "/".join(kept)
    return prefix or None


WRITABLE = r"""orchc_writable() {  # KEY PATH: the folder, or the nearest one above it that exists, takes a new file
  local at=$2 d=$2
  while [ ! -e "$d" ] && [ "$d" != "${d%/*}" ] && [ -n "${d%/*}" ]; do d=${d%/*}; done
  [ -e "$d" ] || d=/
  local t
  if [ -d "$d" ] && [ ! -L "$d" ] && t=$(mktemp -p "$d" .orchc-site-check.XXXXXX) && rm -f -- "$t"; then
    printf 'storage\t%s\tok\t%s\t%s\n' "$1" "$at" "$d"
  else printf 'storage\t%s\tfail\t%s\t%s\n' "$1" "$at" "$d"; fi
}"""
"""a job creates its storage folders (mkdir -p): the check creates none, it writes and removes one file where the
first of them would be made"""


def probe_script(site: Site, account: str | None, gpu_job: bool) -> str:
    """The shell text that prints the machine's facts, one per line, fields separated by tabs."""
    lines = ["exec 2>/dev/null </dev/null",
             "command -v sinfo >/dev/null || { printf 'no-slurm\\n'; exit 0; }",
             # partition, S:C:T per node, gres per node
             "sinfo -h -o '%R|%z|%G' | while IFS='|' read -r p shape gres; do",
             "  printf 'partition\\t%s\\t%s\\t%s\\n' \"$p\" \"$shape\" \"$gres\"; done",
             "if names=$(sacctmgr -nP show qos format=name 2>&1); then",
             "  printf '%s\\n' \"$names\" | while read -r q; do [ -n \"$q\" ] && printf 'qos\\t%s\\n' \"$q\"; done",
             "else printf 'qos-unknown\\t%s\\n' \"$(printf '%s' \"$names\" | tail -n 1)\"; fi"]
    for reservation in sorted({name for by_partition in site.reservations.values() for name in by_partition.values()}):
        lines.append(f"scontrol show reservation {shlex.quote(reservation)} >/dev/null && printf 'reservation\\t%s\\n' "
                     f"{shlex.quote(reservation)}")
    if site.modules:
        lines.append("if type module >/dev/null 2>&1; then printf 'module-command\\n'")
        lines.append(f"  {site.module_purge} >/dev/null 2>&1")
        for module in site.modules:
            quoted = shlex.quote(module)
            lines.append(f"  module load {quoted} >/dev/null 2>&1 && printf 'module\\t%s\\n' {quoted}")
        lines.append("fi")
    if site.runtime != "native":
        runtime = shlex.quote(site.runtime)
        lines.append(f"command -v {runtime} >/dev/null && printf 'runtime\\t%s\\n' \"$({runtime} --version | head -n 1)\"")
    if account is not None:
        lines.append(f"export SLURM_JOB_ACCOUNT={shlex.quote(account)}")
    lines.append('export USER="${USER:-$(id -un)}"')
    lines.append(WRITABLE)
    if site.limits:
        lines += LIMIT_LINES
    for key, path in sorted(site.storage.items()):
        prefix = storage_prefix(path)
        if prefix is None or ("SLURM_JOB_ACCOUNT" in prefix and account is None):
            continue
        # the profile's paths match ^[A-Za-z0-9_./${}-]+$ (schema): inside double quotes only variables expand
        lines.append(f"orchc_writable {key} \"{prefix}\"")
    if gpu_job:
        lines += _gpu_job_lines(site, account)
    return "\n".join(lines) + "\n"


# The user's job limits: MaxArraySize (scontrol), the association's MaxSubmitJobs/MaxJobs and each QoS's per-user
# MaxSubmitPU/MaxJobsPU (sacctmgr; unreadable without an accounting database).
LIMIT_LINES = [
    "printf 'max-array-size\\t%s\\n' \"$(scontrol show config | sed -n 's/^MaxArraySize *= *//p')\"",
    "if a=$(sacctmgr -nP show assoc where user=\"$USER\" format=maxsubmit,maxjobs 2>&1); then",
    "  printf '%s\\n' \"$a\" | while IFS='|' read -r s j; do printf 'assoc-limits\\t%s\\t%s\\n' \"$s\" \"$j\"; done",
    "  q=$(sacctmgr -nP show qos format=name,maxsubmitpu,maxjobspu) && printf '%s\\n' \"$q\" |",
    "    while IFS='|' read -r n s j; do printf 'qos-limits\\t%s\\t%s\\t%s\\n' \"$n\" \"$s\" \"$j\"; done",
    "else printf 'limits-unknown\\t%s\\n' \"$(printf '%s' \"$a\" | tail -n 1)\"; fi",
]


def _gpu_job_lines(site: Site, account: str | None) -> list[str]:
    """A short job on each partition whose nodes have GPUs: the GPUs it sees and their driver."""
    lines = []
    query = ("if command -v nvidia-smi >/dev/null; then printf 'nvidia\\t%s\\t%s\\n' \"$(nvidia-smi -L | grep -c ^GPU)\" "
             "\"$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1)\"; "
             "elif command -v rocm-smi >/dev/null; then printf 'amd\\t%s\\t%s\\n' \"$(rocm-smi --showid | grep -c 'GPU\\[')\" "
             "\"$(rocm-smi --showdriverversion | grep -io 'version:.*' | head -n 1)\"; else printf 'none\\t0\\t\\n'; fi")
    for partition, shape in sorted(site.nodes.items()):
        gpus = int(shape.get("gpus", 0))
        if gpus < 1:
            continue
        options = [f"--partition={partition}", f"--gres=gpu:{gpus}", "--nodes=1", "--time=00:05:00", "--wait", "--quiet",
                   "--job-name=orchc-site-check"]
        if account is not None:
            options.append(f"--account={account}")
        words = " ".join(shlex.quote(option) for option in options)
        # the job's output goes to a file in $HOME (shared with the compute nodes on a cluster), read and removed here
        lines.append(f"o=$(mktemp -p \"$HOME\" .orchc-site-check-gpu.XXXXXX) && sbatch {words} --output=\"$o\" "
                     f"--wrap={shlex.quote(query)} && sed -n 's/^\\(nvidia\\|amd\\|none\\)\t/gpu\t{partition}\t\\1\t/p' \"$o\" "
                     f"|| printf 'gpu-job-failed\\t{partition}\\n'; rm -f -- \"$o\"")
    return lines


def run_probe(site: Site, execute: Execute, account: str | None = None, gpu_job: bool = False) -> Report:
    """Run the probe with `execute` and compare what it found with the profile."""
    if account is not None and not _ACCOUNT.match(account):
        from ..core.errors import ClusterError

        raise ClusterError(f"--account {account[:40]!r} is not an account name")
    code, out, err = execute([*shell_words(site), "-c", probe_script(site, account, gpu_job)], PROBE_TIMEOUT)
    facts = [line.split("\t") for line in out.splitlines() if line]
    report = Report(site)
    if code != 0:
        report.add("differs", f"the probe failed under the profile's shell {site.shell} (exit {code}): "
                   f"{err.strip().splitlines()[-1] if err.strip() else 'no message'}")
        return report
    if ["no-slurm"] in facts:
        report.add("differs", "no SLURM here: sinfo is not on PATH of the profile's shell")
        return report
    compare_partitions(site, facts, report)
    compare_qos(site, facts, report)
    compare_reservations(site, facts, report)
    compare_modules(site, facts, report)
    compare_runtime(site, facts, report)
    compare_storage(site, facts, report, account)
    compare_limits(site, facts, report)
    if gpu_job:
        compare_gpus(site, facts, report)
    return report


def _values(facts: list[list[str]], tag: str) -> list[list[str]]:
    return [fact[1:] for fact in facts if fact and fact[0] == tag]


def compare_partitions(site: Site, facts: list[list[str]], report: Report) -> None:
    found: dict[str, tuple[str, str]] = {}
    for fields in _values(facts, "partition"):
        if len(fields) == 3:
            found.setdefault(fields[0].rstrip("*"), (fields[1], fields[2]))
    _names(report, site.partitions, set(found), ("partition", "partitions", "sinfo"))
    for name, shape in sorted(site.nodes.items()):
        if name in found:
            _compare_shape(name, shape, *found[name], report)


def _compare_shape(partition: str, shape: Mapping[str, Any], sct: str, gres: str, report: Report) -> None:
    """The profile's cores and GPUs per node against sinfo's sockets:cores:threads and gres."""
    from ..script.directives import gpus_of

    parts = sct.split(":")
    cores = int(parts[0]) * int(parts[1]) if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit() else None
    gpus = gpus_of(re.sub(r"\([^)]*\)", "", gres)) if gres not in ("", "(null)") else 0
    claimed_cores, claimed_gpus = shape.get("cores"), shape.get("gpus", 0)
    if cores is not None and claimed_cores != cores:
        report.add("differs", f"nodes.{partition}.cores: the profile says {claimed_cores}, sinfo says {cores} "
                   f"({sct} sockets:cores:threads)")
    if claimed_gpus != gpus:
        report.add("differs", f"nodes.{partition}.gpus: the profile says {claimed_gpus}, sinfo says {gpus} (gres {gres or 'none'})")
    if (cores is None or claimed_cores == cores) and claimed_gpus == gpus:
        report.add("ok", f"nodes.{partition}: {claimed_cores} cores, {claimed_gpus} GPU(s)")


def compare_qos(site: Site, facts: list[list[str]], report: Report) -> None:
    if not site.qos:
        return
    unknown = _values(facts, "qos-unknown")
    if unknown:
        why = unknown[0][0] if unknown[0] else ""
        report.add("unchecked", f"QoS {', '.join(site.qos)}: sacctmgr cannot list them here ({why.strip() or 'no answer'})")
        return
    _names(report, site.qos, {fields[0] for fields in _values(facts, "qos") if fields}, ("QoS", "QoS", "sacctmgr"))


def compare_limits(site: Site, facts: list[list[str]], report: Report) -> None:
    """limits.max_array_size against MaxArraySize; max_submit and max_running against the lowest per-user limit of
    the user's associations and of the QoS jobs get by default (the profile's defaults.resources.qos)."""
    if "max_array_size" in site.limits:
        found = next((fields[0].strip() for fields in _values(facts, "max-array-size") if fields and fields[0].strip()), "")
        claimed = site.limits["max_array_size"]
        if not found:
            report.add("unchecked", f"limits.max_array_size {claimed}: scontrol show config did not say MaxArraySize")
        else:
            report.add("ok" if found == str(claimed) else "differs", f"limits.max_array_size: the profile says {claimed}"
                       + ("" if found == str(claimed) else f", scontrol says MaxArraySize={found}"))
    wanted = [(key, word) for key, word in (("max_submit", "MaxSubmit"), ("max_running", "MaxJobs")) if key in site.limits]
    if not wanted:
        return
    unknown = _values(facts, "limits-unknown")
    if unknown:
        why = unknown[0][0].strip() if unknown[0] else ""
        report.add("unchecked", f"limits {', '.join(key for key, _ in wanted)}: sacctmgr cannot show them here ({why or 'no answer'})")
        return
    qos = _default_qos(site)
    rows = [fields[:2] for fields in _values(facts, "assoc-limits")]
    rows += [fields[1:3] for fields in _values(facts, "qos-limits") if fields and fields[0] == qos]
    for key, word in wanted:
        column = 0 if key == "max_submit" else 1
        numbers = [int(row[column]) for row in rows if len(row) > column and row[column].strip().isdigit()]
        claimed = site.limits[key]
        machine = min(numbers) if numbers else None
        where = f"sacctmgr: the associations of $USER{f' and QoS {qos}' if qos else ''}"
        if machine == claimed:
            report.add("ok", f"limits.{key}: {claimed} ({word} per user)")
        else:
            report.add("differs", f"limits.{key}: the profile says {claimed}, {where} "
                       + (f"allow {machine}" if machine is not None else f"set no {word} per user"))


def _default_qos(site: Site) -> str:
    """The QoS a job gets unless it names one: the profile's defaults.resources.qos ('' when it gives none)."""
    resources = site.defaults.get("resources") if site.defaults is not None else None
    qos = resources.get("qos") if resources is not None else None
    value = qos.value if qos is not None else ""
    return value if isinstance(value, str) else ""


def compare_reservations(site: Site, facts: list[list[str]], report: Report) -> None:
    found = {fields[0] for fields in _values(facts, "reservation") if fields}
    for qos, by_partition in sorted(site.reservations.items()):
        for partition, name in sorted(by_partition.items()):
            report.add("ok" if name in found else "differs", f"reservation '{name}' (QoS '{qos}' on partition '{partition}')"
                       + ("" if name in found else ": scontrol knows no such reservation"))


def compare_modules(site: Site, facts: list[list[str]], report: Report) -> None:
    if not site.modules:
        return
    if not any(fact == ["module-command"] for fact in facts):
        report.add("differs", f"modules: the module command is not defined in the profile's shell {site.shell} "
                   f"(modules {', '.join(site.modules)} not checked)")
        return
    loaded = {fields[0] for fields in _values(facts, "module") if fields}
    for module in site.modules:
        report.add("ok" if module in loaded else "differs",
                   f"module {module}" + ("" if module in loaded
                                         else f": does not load after `{site.module_purge}` and the modules before it"))


def compare_runtime(site: Site, facts: list[list[str]], report: Report) -> None:
    if site.runtime == "native":
        return
    found = _values(facts, "runtime")
    if not found:
        after = " after loading the profile's modules" if site.modules else ""
        report.add("differs", f"runtime {site.runtime}: not found{after}")
    else:
        report.add("ok", f"runtime {site.runtime}: {found[0][0] if found[0] else '?'}")


def compare_storage(site: Site, facts: list[list[str]], report: Report, account: str | None) -> None:
    results = {fields[0]: fields[1:] for fields in _values(facts, "storage") if len(fields) >= 3}
    for key, path in sorted(site.storage.items()):
        prefix = storage_prefix(path)
        if prefix is None:
            report.add("ok", f"storage.{key}: {path} is per run (created by each job)")
        elif key not in results:
            report.add("unchecked", f"storage.{key}: {path} names ${{SLURM_JOB_ACCOUNT}}: give --account to check it")
        else:
            state, folder, existing = (results[key] + ["", ""])[:3]
            made = "" if folder == existing else f" (not there yet: jobs create it in {existing})"
            if state == "ok":
                report.add("ok", f"storage.{key}: {folder} is writable{made}")
            else:
                report.add("differs", f"storage.{key}: {folder} cannot be written: {existing} is not a folder you can write in")


def compare_gpus(site: Site, facts: list[list[str]], report: Report) -> None:
    seen = {fields[0]: fields[1:] for fields in _values(facts, "gpu") if len(fields) >= 3}
    failed = {fields[0] for fields in _values(facts, "gpu-job-failed") if fields}
    for partition, shape in sorted(site.nodes.items()):
        gpus = int(shape.get("gpus", 0))
        if gpus < 1:
            continue
        if partition in failed or partition not in seen:
            report.add("differs", f"GPU job on partition '{partition}' (gres gpu:{gpus}) failed or printed nothing")
            continue
        vendor, count, driver = seen[partition][:3]
        if vendor == "none":
            report.add("differs", f"GPU job on '{partition}': neither nvidia-smi nor rocm-smi in the job")
        elif count != str(gpus):
            report.add("differs", f"GPU job on '{partition}': {vendor} sees {count} GPU(s), the profile says {gpus} (driver {driver})")
        else:
            report.add("ok", f"GPU job on '{partition}': {count} {vendor} GPU(s), driver {driver}")


def local_execute(words: Sequence[str], timeout: float) -> tuple[int, str, str]:
    from .slurm import run_command

    answer = run_command(words, timeout)
    return answer.code, answer.out, answer.err


def remote_execute(target: Target) -> Execute:
    from .ssh import connection

    def execute(words: Sequence[str], timeout: float) -> tuple[int, str, str]:
        answer = connection(target).run(words, timeout=timeout, retry=True)
        return answer.code, answer.out, answer.err
    return execute


def cmd_site_check(args: argparse.Namespace) -> int:
    """`orchc site check [SITE]`: print each finding, then the differences; 1 when something differs."""
    from pathlib import Path

    from ..core.errors import ClusterError
    from ..core.session import CompileSession
    from ..core.source import SourceLoc
    from ..core.terminal import terminal_text
    from ..recipe.resolve import DEFAULT_SITE, load_site
    from .ssh import site_target

    site = load_site(args.site or DEFAULT_SITE, Path.cwd(), SourceLoc("SITE"), CompileSession())
    target = None if args.local else site_target(site.name, site.file)
    if args.remote and target is None:
        raise ClusterError(f"--remote: site {site.name} has no ssh: target (in {site.file}, your override, or ORCHC_SSH_HOST)")
    where = "this machine" if target is None else target.shown()
    report = run_probe(site, local_execute if target is None else remote_execute(target), args.account, args.gpu_job)
    print(terminal_text(f"site {site.name} ({site.file}) against {where}:"))
    for finding in report.findings:
        print(terminal_text(f"  {finding.kind:<9} {finding.text}"))
    differences = len(report.differences)
    print(f"{differences} difference(s)" if differences else "no difference found")
    return 1 if differences else 0


def _names(report: Report, wanted: Sequence[str], found: set[str], words: tuple[str, str, str]) -> None:
    """Each name the profile gives that the machine lacks is a difference; those it has are one ok line.
    `words`: what one name is, what several are, and the command that listed them."""
    one, several, lister = words
    for name in wanted:
        if name not in found:
            report.add("differs", f"{one} '{name}': not on this machine ({lister} lists: {', '.join(sorted(found)) or 'none'})")
    listed = [name for name in wanted if name in found]
    if listed:
        report.add("ok", f"{several} {', '.join(listed)}")

"""orchc compile against the bare floor (issue 11): one command, alternating runs, medians and ratios.

    python benchmarks/speed.py [--rounds R] [--cold-rounds R] [--quick] [--no-huge]

Each measured command runs as a child of a small wrapper (`python -S -c WRAPPER`) that starts it, waits for
it with os.wait4 and reports its wall time, exit status and peak RSS: the RSS of that one process, not of
everything this benchmark started (RUSAGE_CHILDREN) and not of this process. Every command uses this
interpreter (sys.executable); orchc runs as `python -m compiler compile RECIPE... -o OUT` from the repository
root, so the working tree is what is measured. Output goes to /dev/shm (tmpfs) when it exists and is
deleted after each run, outside the timing. Before the rounds, one unmeasured run of each command warms the
page cache and orchc's template cache (~/.cache/orchc, as in everyday use); orchc's modules are byte-compiled first,
as pip does when it installs a package.

Cases (within a round: floor, then orchc, case after case; rounds repeat that):
  A  1,000 jobs in one recipe            vs the floor at 1,000 scripts       target: at most 3x the floor
  B  10,000 jobs in one recipe           vs the floor at 10,000 scripts      target: B/A at most 11
  C  1,000 jobs as 100 recipes of 10     vs the floor at 1,000 scripts
  D  10,000 jobs as 1,000 recipes of 10  vs the floor at 10,000 scripts
  E  examples/redis.yaml in a fresh process (cold) vs `python -c "import jsonschema, jinja2, ruamel.yaml"`
                                                                             target: at most the import floor
  F  a sweep of 100,000 client jobs (10,000 points: a 100 x 100 matrix, repeated 10 times; a sweep may have
     at most 10,000 points) and its one service, vs the floor at 100,001 scripts
                                                                             target: < 60 s and < 1 GB peak RSS
A recipe of N jobs has N/2 redis services (distinct maxmemory) and N/2 redis_client clients, each with
`target:` its own service (distinct `clients:`), on MeluXina (the reference site) with an account.
The written .sbatch files are counted after every run: a count other than the jobs' is a failure.
--quick skips B, D and F. The exit status is 0 unless a compile failed or wrote the wrong number of scripts.
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import floor  # noqa: E402  (beside this file; it imports jinja2 only when it renders)

FLOOR = ROOT / "benchmarks" / "floor.py"
COLD_RECIPE = ROOT / "examples" / "redis.yaml"
COLD_JOBS = 2
HEADER = 'account: p200981\nresources: {cpus_per_task: 4, mem: "8G", time: "00:30:00", partition: cpu}\n'
HUGE = (100, 100, 10)   # the F sweep: clients values x pipeline values, repeat
GB = 1_000_000_000
OUT = Path("{OUT}")   # in a command: replaced by a fresh output folder for each run

# Run as `python -S -c WRAPPER RESULT TIMEOUT COMMAND...`: start COMMAND, wait for it alone (os.wait4), and
# write "WALL_SECONDS MAXRSS_KB EXIT_STATUS TIMED_OUT CPU_SECONDS" into RESULT. After TIMEOUT seconds it kills COMMAND.
WRAPPER = r"""
import os, signal, sys, time
result, timeout, command = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
start = time.perf_counter()
pid = os.posix_spawn(command[0], command, os.environ)
late = []
def stop(signum, frame):
    late.append(1)
    os.kill(pid, signal.SIGKILL)
signal.signal(signal.SIGALRM, stop)
signal.alarm(timeout)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
signal.alarm(0)
with open(result, "w") as out:
    out.write(f"{wall!r} {usage.ru_maxrss} {os.waitstatus_to_exitcode(status)} {len(late)} "
              f"{usage.ru_utime + usage.ru_stime!r}\n")
"""


# ---- recipes -------------------------------------------------------------------------------------------


def pair_recipe(first: int, pairs: int) -> str:
    """`pairs` redis services and as many redis_client clients, client i targeting service i; the indices
    first .. first+pairs-1 make maxmemory and clients distinct across recipes too."""
    lines = [HEADER.rstrip("\n"), "services:"]
    for i in range(first, first + pairs):
        lines += [f"  - name: redis{i:05d}", "    type: redis", f"    maxmemory: {i + 1}mb"]
    lines.append("clients:")
    for i in range(first, first + pairs):
        lines += [f"  - name: bench{i:05d}", "    type: redis_client", f"    target: redis{i:05d}", f"    clients: {i % 10000 + 1}"]
    return "\n".join(lines) + "\n"


def write_recipes(folder: Path, jobs: int, per_recipe: int | None = None) -> list[Path]:
    """`jobs` jobs as one recipe (per_recipe None) or as recipes of `per_recipe` jobs (both even)."""
    per_recipe = per_recipe or jobs
    if jobs % per_recipe or per_recipe % 2:
        raise ValueError(f"{jobs} jobs do not split into recipes of {per_recipe} services and clients")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, first in enumerate(range(0, jobs // 2, per_recipe // 2)):
        path = folder / (f"jobs{jobs}.yaml" if per_recipe == jobs else f"r{number:05d}.yaml")
        path.write_text(pair_recipe(first, per_recipe // 2))
        paths.append(path)
    return paths


def sweep_recipe(clients: int, pipelines: int, repeat: int) -> str:
    """One redis service and a redis_client swept over clients x pipeline (client-only keys, so every point
    shares the service): clients*pipelines points, each run `repeat` times."""
    return (f"name: huge_sweep\n{HEADER}service:\n  name: redis\n  maxmemory: 4gb\n"
            f"client:\n  name: bench\n  type: redis_client\n  duration: 10\n  resources: {{time: \"00:01:00\"}}\n"
            f"sweep:\n  matrix:\n    bench.clients: [{', '.join(str(c) for c in range(1, clients + 1))}]\n"
            f"    bench.pipeline: [{', '.join(str(p) for p in range(1, pipelines + 1))}]\n  repeat: {repeat}\n")


def sweep_jobs(clients: int, pipelines: int, repeat: int) -> int:
    return clients * pipelines * repeat + 1


def count_scripts(folder: Path) -> int:
    count = 0
    for dirpath, _dirs, files in os.walk(folder):
        count += sum(1 for name in files if name.endswith(".sbatch"))
        del dirpath
    return count


# ---- measuring -----------------------------------------------------------------------------------------


@dataclass
class Run:
    wall: float
    rss_kb: int
    status: int
    timed_out: bool
    stderr: str
    cpu: float = 0.0
    """user + system CPU seconds of the command alone: less moved by other load on the machine than wall time"""


def measure(command: list[str], timeout: int, cwd: Path, scratch: Path) -> Run:
    """Run `command` under the wrapper and return its own wall time, peak RSS and exit status."""
    handle, result = tempfile.mkstemp(dir=scratch, prefix="result-")
    os.close(handle)
    try:
        wrapper = subprocess.run([sys.executable, "-S", "-c", WRAPPER, result, str(timeout), *command], cwd=cwd,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        fields = Path(result).read_text().split()
    finally:
        os.unlink(result)
    if len(fields) != 5:
        raise RuntimeError(f"the wrapper failed (status {wrapper.returncode}): {wrapper.stderr}")
    return Run(float(fields[0]), int(fields[1]), int(fields[2]), fields[3] != "0", wrapper.stderr, float(fields[4]))


@dataclass
class Case:
    key: str
    title: str
    jobs: int
    orchc: list[str]
    floor: list[str]
    rounds: int
    timeout: int
    orchc_runs: list[Run] = field(default_factory=list)
    floor_runs: list[Run] = field(default_factory=list)
    problem: str = ""
    """why the case stopped: a failed run, a wrong number of scripts, or a run stopped at the timeout"""
    timed_out: bool = False
    """orchc was stopped at the timeout: its figures are lower bounds (shown with >)"""

    def failed(self) -> bool:
        return bool(self.problem) and not self.timed_out

    def median(self, runs: list[Run]) -> float:
        return statistics.median(run.wall for run in runs)

    def cpu_ratio(self) -> float:
        return statistics.median(run.cpu for run in self.orchc_runs) / statistics.median(run.cpu for run in self.floor_runs)

    def peak_mb(self) -> float:
        return max(run.rss_kb for run in self.orchc_runs) * 1024 / 1e6


def orchc_command(recipes: list[Path], out: Path) -> list[str]:
    return [sys.executable, "-m", "compiler", "compile", *map(str, recipes), "-o", str(out)]


def floor_command(count: int, out: Path) -> list[str]:
    return [sys.executable, str(FLOOR), str(count), str(out)]


def run_case(case: Case, scratch: Path, number: int, log) -> None:
    """One round of a case: the floor, then orchc, each into a fresh folder that is removed afterwards."""
    for kind in ("floor", "orchc"):
        out = scratch / f"out-{case.key}-{number}-{kind}"
        template = case.floor if kind == "floor" else case.orchc
        command = [str(out) if part == "{OUT}" else part for part in template]
        run = measure(command, case.timeout, ROOT, scratch)
        scripts = count_scripts(out) if out.exists() else 0
        shutil.rmtree(out, ignore_errors=True)
        note = ""
        if run.timed_out:
            note = f"stopped after {case.timeout} s"
        elif run.status != 0:
            note = f"exit status {run.status}: {run.stderr.strip()[-2000:]}"
        elif case.key != "E" or kind == "orchc":
            expected = case.jobs
            if scripts != expected:
                note = f"wrote {scripts} scripts, expected {expected}"
        (case.floor_runs if kind == "floor" else case.orchc_runs).append(run)
        log(f"  {case.key} round {number + 1} {kind}: {run.wall:.3f} s, {run.rss_kb / 1024:.0f} MiB"
            + (f"  ({note})" if note else ""))
        if note:
            case.problem = f"{kind}: {note}"
            case.timed_out = run.timed_out and kind == "orchc"
            return


# ---- report --------------------------------------------------------------------------------------------


def machine() -> list[str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib import metadata
    versions = []
    for name in ("jinja2", "jsonschema", "ruamel.yaml"):
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} missing")
    head = _git("rev-parse", "--short", "HEAD")
    changed = _git("status", "--porcelain", "--", "compiler", "schemas", "service_defs", "sites") if head else ""
    return [
        f"machine: {len(os.sched_getaffinity(0))} CPUs available (nproc), {os.cpu_count()} online, {model}; "
        f"{platform.system()} {platform.release()}",
        f"python: {platform.python_implementation()} {platform.python_version()} ({sys.executable}); {', '.join(versions)}",
        f"orchc: {ROOT}, " + ("not a git working tree" if not head else f"working tree at {head}" + (
            f", with uncommitted changes in {len(changed.splitlines())} file(s) of compiler/, schemas/, service_defs/, sites/"
            if changed else ", clean")),
        f"date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}",
    ]


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def table(cases: list[Case]) -> list[str]:
    rows = [("case", "jobs", "orchc median s", "floor median s", "ratio", "CPU ratio", "scripts/s", "peak RSS MB", "target",
             "met")]
    by_key = {case.key: case for case in cases}
    for case in cases:
        target, met = "-", "-"
        if case.failed():
            rows.append((f"{case.key} {case.title}", f"{case.jobs:,}", "-", "-", "-", "-", "-", "-", "-", "FAILED"))
            continue
        orchc = case.median(case.orchc_runs)
        base = case.median(case.floor_runs)
        ratio = orchc / base
        prefix = ">" if case.timed_out else ""
        if case.key == "A":
            target, met = "<= 3x floor", _yes(ratio <= 3 and not case.problem)
        elif case.key == "E":
            target, met = "<= 1x floor", _yes(ratio <= 1 and not case.problem)
        elif case.key == "F":
            target, met = "< 60 s, < 1 GB", _yes(orchc < 60 and case.peak_mb() * 1e6 < GB and not case.problem)
        rows.append((f"{case.key} {case.title}", f"{case.jobs:,}", f"{prefix}{orchc:.3f}", f"{base:.3f}", f"{prefix}{ratio:.2f}x",
                     f"{prefix}{case.cpu_ratio():.2f}x",
                     f"{prefix.replace('>', '<')}{case.jobs / orchc:,.0f}", f"{prefix}{case.peak_mb():.0f}", target, met))
    for big, small, limit in (("B", "A", 11.0), ("D", "C", None)):
        if big in by_key and small in by_key and not by_key[big].failed() and not by_key[small].problem:
            growth = by_key[big].median(by_key[big].orchc_runs) / by_key[small].median(by_key[small].orchc_runs)
            prefix = ">" if by_key[big].timed_out else ""
            rows.append((f"{big}/{small} orchc time, 10x the jobs", "", "", "", f"{prefix}{growth:.2f}x", "", "", "",
                         f"<= {limit:g}x" if limit else "-", _yes(growth <= limit and not by_key[big].problem) if limit else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for number, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) if i in (0, 8) else cell.rjust(width)
                               for i, (cell, width) in enumerate(zip(row, widths))).rstrip())
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    return lines


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


# ---- main ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--rounds", type=int, default=3, help="rounds of A-D (default %(default)s; median)")
    parser.add_argument("--cold-rounds", type=int, default=7, help="rounds of E (default %(default)s)")
    parser.add_argument("--huge-rounds", type=int, default=1, help="rounds of F (default %(default)s: it is long)")
    parser.add_argument("--quick", action="store_true", help="only A, C and E (skip B, D and F)")
    parser.add_argument("--no-huge", action="store_true", help="skip F, the 100,000-job sweep")
    parser.add_argument("--timeout", type=int, default=900, help="seconds before a run of A-E is stopped (default %(default)s)")
    parser.add_argument("--huge-timeout", type=int, default=180,
                        help="seconds before a run of F is stopped and counted as not met (default %(default)s)")
    options = parser.parse_args(argv)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    shm = Path("/dev/shm")
    scratch = Path(tempfile.mkdtemp(prefix="orchc-speed-", dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None))
    try:
        recipes = scratch / "recipes"
        out = OUT
        cases = [
            Case("A", "1,000 jobs, one recipe", 1000, orchc_command(write_recipes(recipes / "A", 1000), out),
                 floor_command(1000, out), options.rounds, options.timeout),
            Case("B", "10,000 jobs, one recipe", 10000, orchc_command(write_recipes(recipes / "B", 10000), out),
                 floor_command(10000, out), options.rounds, options.timeout),
            Case("C", "1,000 jobs, 100 recipes of 10", 1000, orchc_command(write_recipes(recipes / "C", 1000, 10), out),
                 floor_command(1000, out), options.rounds, options.timeout),
            Case("D", "10,000 jobs, 1,000 recipes of 10", 10000, orchc_command(write_recipes(recipes / "D", 10000, 10), out),
                 floor_command(10000, out), options.rounds, options.timeout),
            Case("E", "one recipe, cold (examples/redis.yaml)", COLD_JOBS, orchc_command([COLD_RECIPE], out),
                 [sys.executable, "-c", floor.IMPORT_FLOOR], options.cold_rounds, options.timeout),
        ]
        huge = recipes / "huge_sweep.yaml"
        huge.write_text(sweep_recipe(*HUGE))
        cases.append(Case("F", f"{HUGE[0] * HUGE[1] * HUGE[2]:,}-job sweep + 1 service", sweep_jobs(*HUGE),
                          orchc_command([huge], out), floor_command(sweep_jobs(*HUGE), out),
                          options.huge_rounds, options.huge_timeout))
        skipped = set("BDF" if options.quick else "") | set("F" if options.no_huge else "")
        cases = [case for case in cases if case.key not in skipped]

        # Byte-compiled, as an installed orchc is (pip writes the .pyc files): with PYTHONDONTWRITEBYTECODE set,
        # every run would compile the changed modules from source again, a cost no user pays.
        if os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
            log("PYTHONDONTWRITEBYTECODE unset for the measured commands")
        compileall.compile_dir(str(ROOT / "compiler"), quiet=1)
        compileall.compile_dir(str(ROOT / "benchmarks"), quiet=1)
        log(f"scratch: {scratch}; warming up (unmeasured)")
        for command in (orchc_command([COLD_RECIPE], scratch / "warm-orchc"), floor_command(10, scratch / "warm-floor"),
                        [sys.executable, "-c", floor.IMPORT_FLOOR]):
            warm = measure(command, options.timeout, ROOT, scratch)
            if warm.status != 0:
                log(f"warm-up failed: {shlex.join(command)}: {warm.stderr}")
                return 1
        for number in range(max(case.rounds for case in cases)):
            for case in cases:
                if number < case.rounds and not case.problem:
                    run_case(case, scratch, number, log)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    arguments = argv if argv is not None else sys.argv[1:]
    invocation = shlex.join([sys.executable, str(Path(__file__).resolve().relative_to(ROOT)), *arguments])
    lines = [f"command: cd {shlex.quote(str(ROOT))} && {invocation}", *machine(),
             f"rounds (medians): A-D {options.rounds}, E {options.cold_rounds}, F {options.huge_rounds}; floor then orchc "
             f"in each round; output on {'tmpfs (/dev/shm)' if str(scratch).startswith('/dev/shm') else scratch.parent}",
             f"floors: A, C: floor.py 1000; B, D: floor.py 10000; E: python -c {shlex.quote(floor.IMPORT_FLOOR)}; "
             f"F: floor.py {sweep_jobs(*HUGE)} (floor.py renders {floor.DEFAULT_GOLDEN.relative_to(ROOT)} as a template of "
             f"{len(floor.SLOTS)} variables)",
             "peak RSS: of the orchc process alone (os.wait4), the largest over its rounds; 1 GB = 10^9 bytes", "",
             *table(cases)]
    lines += ["", "every run, in order (s):"]
    lines += [f"{case.key} orchc {' '.join(f'{run.wall:.3f}' for run in case.orchc_runs)}; "
              f"floor {' '.join(f'{run.wall:.3f}' for run in case.floor_runs)}" for case in cases]
    lines += [f"{case.key}: {case.problem}" for case in cases if case.problem]
    print("\n".join(lines))
    return 1 if any(case.failed() for case in cases) else 0


if __name__ == "__main__":
    sys.exit(main())

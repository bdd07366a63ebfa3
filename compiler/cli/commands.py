"""The run commands of the CLI: their arguments, and submit, rerun, tunnel, disconnect and cancel; status, runs and
logs (run/), results, compare and report (results/) are imported only when they run.

They reach the cluster only through a Scheduler (compiler/run/scheduler.py): the one a
run.json names, or for `submit` the one ORCHC_SCHEDULER names (default: slurm).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import ClusterError
from .options import compile_options

if TYPE_CHECKING:
    from ..run.runs import Run

UNKNOWN_LIMIT = 120.0


def add_commands(commands: Any, add_compile_options: Callable[[argparse.ArgumentParser], None]) -> None:
    submit = commands.add_parser("submit", help="compile a recipe into a new run folder and submit its jobs")
    submit.add_argument("recipe", type=Path, metavar="RECIPE", help="a recipe file (YAML)")
    submit.add_argument("--run-dir", type=Path, metavar="DIR", help="default: runs/<recipe>-<UTC timestamp>/")
    where = submit.add_mutually_exclusive_group()
    where.add_argument("--remote", action="store_true",
                       help="submit over SSH to the site's ssh: target (the default when the site has one)")
    where.add_argument("--local", action="store_true", help="submit here even when the site has an ssh: target")
    submit.add_argument("--no-prepare", action="store_true",
                        help="do not run `orchc prepare` first (the images are prepared; a job still checks its own)")
    add_compile_options(submit)
    submit.set_defaults(run=cmd_submit)

    prepare = commands.add_parser("prepare", help="build every image a recipe's jobs need into the site's store, on the login node")
    prepare.add_argument("recipe", type=Path, metavar="RECIPE", help="a recipe file (YAML)")
    where = prepare.add_mutually_exclusive_group()
    where.add_argument("--remote", action="store_true", help="over SSH on the site's ssh: target (the default when the site has one)")
    where.add_argument("--local", action="store_true", help="here even when the site has an ssh: target")
    add_compile_options(prepare)
    prepare.set_defaults(run=cmd_prepare)

    rerun = commands.add_parser("rerun", help="submit the jobs a run compiled again, byte for byte, as a new run")
    rerun.add_argument("run_ref", metavar="RUN", help="a run folder, or the name of one under runs/")
    rerun.add_argument("--run-dir", type=Path, metavar="DIR", help="default: runs/<recipe>-<UTC timestamp>/")
    rerun.set_defaults(run=cmd_rerun)

    from ..run.logs import add_logs_arguments

    status = commands.add_parser("status", help="the state of each job of a run (default: the latest)")
    status.add_argument("run_ref", nargs="?", metavar="RUN", help="a run folder, or the name of one under runs/ (default: the latest)")
    status.add_argument("--watch", action="store_true", help="refresh until every job has ended")
    status.add_argument("--json", action="store_true", help="print the jobs' states as JSON")
    status.add_argument("--interval", type=float, default=2.0, help=argparse.SUPPRESS)
    status.add_argument("--unknown-limit", type=float, default=UNKNOWN_LIMIT, help=argparse.SUPPRESS)
    status.set_defaults(run=_status)

    cancel = commands.add_parser("cancel", help="cancel a run's jobs (all, or the ones named)")
    cancel.add_argument("run_ref", nargs="?", metavar="RUN", help="a run folder, or the name of one under runs/ (default: the latest)")
    cancel.add_argument("jobs", nargs="*", metavar="JOB", help="the jobs to cancel by name (default: every job)")
    cancel.set_defaults(run=cmd_cancel)

    logs = commands.add_parser("logs", help="print the jobs' slurm-%%j.out and .err (-f: follow them)")
    add_logs_arguments(logs)
    logs.set_defaults(run=_logs)

    listing = commands.add_parser("runs", help="list the runs under runs/, newest last")
    listing.add_argument("--root", type=Path, metavar="DIR", help="where the runs are (default: runs/)")
    listing.add_argument("--states", action="store_true", help="ask the scheduler how many jobs of each run ended")
    listing.add_argument("--json", action="store_true", help="print the list as JSON")
    listing.set_defaults(run=_runs)

    results = commands.add_parser("results", help="the clients' collected results, beside each job's state")
    results.add_argument("run_ref", nargs="?", metavar="RUN", help="a run folder, or the name of one under runs/ (default: the latest)")
    form = results.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print every result, with the statistics over repeats, as JSON")
    form.add_argument("--csv", action="store_true", help="print one CSV row per metric, for spreadsheets and pandas")
    results.add_argument("--check", action="store_true",
                         help="check the results against the recipe's references; exit 1 when one fails")
    results.set_defaults(run=_results)

    compare = commands.add_parser("compare", help="two runs side by side: per point, client and metric, the change")
    compare.add_argument("run_a", metavar="RUN_A", help="a run folder, or the name of one under runs/: the baseline")
    compare.add_argument("run_b", metavar="RUN_B", help="a run folder, or the name of one under runs/: compared with RUN_A")
    compare.add_argument("--threshold", action="append", metavar="METRIC=PCT",
                         help="exit 1 when METRIC (a glob) gets worse by more than PCT %% with the confidence of "
                              "--confidence; +PCT/-PCT: a rise/fall")
    compare.add_argument("--confidence", default="95", metavar="PCT",
                         help="the confidence of the intervals, in %% (default 95)")
    compare.add_argument("--point-estimates", action="store_true",
                         help="judge a side with a single repeat by its value (default: inconclusive)")
    compare_form = compare.add_mutually_exclusive_group()
    compare_form.add_argument("--json", action="store_true",
                              help="print every row as JSON: n, mean, stdev, min and max of each side, change, verdict")
    compare_form.add_argument("--csv", action="store_true", help="print one CSV row per point, client and metric")
    compare.add_argument("--all", action="store_true",
                         help="show every metric (default: the headline metrics of each client's type, and thresholded ones)")
    compare.set_defaults(run=_compare)

    report = commands.add_parser("report", help="an HTML report of a run, or of several runs of one sweep overlaid (needs matplotlib)")
    report.add_argument("run_ref", nargs="*", metavar="RUN",
                        help="a run folder, or the name of one under runs/ (default: the latest); several: overlaid, one colour each")
    report.add_argument("-o", "--output", type=Path, metavar="FILE.html",
                        help="default: RUN/report.html (needed for several runs); the plots as SVG and PNG in FILE/ beside it")
    report.set_defaults(run=_report)

    tunnel = commands.add_parser("tunnel", help="forward a local port to a service a job published (over SSH)")
    tunnel.add_argument("run_ref", metavar="RUN", help="a run folder, or the name of one under runs/")
    tunnel.add_argument("job", metavar="JOB", help="the job (a service) whose port to forward")
    tunnel.add_argument("port", nargs="?", type=int, metavar="PORT",
                        help="which of the ports the job published (default: the first)")
    tunnel.add_argument("--local-port", type=int, default=0, metavar="N", help="the local port (default: a free one)")
    tunnel.set_defaults(run=cmd_tunnel)

    disconnect = commands.add_parser("disconnect", help="close the shared ssh connection to a site's login node "
                                                        "(default: every one orchc keeps open)")
    disconnect.add_argument("site", nargs="?", metavar="SITE", help="a site name or profile file")
    disconnect.set_defaults(run=cmd_disconnect)

    clean = commands.add_parser("clean", help="remove a run's service data from the site's storage (shown first; --yes removes)")
    clean.add_argument("run_ref", metavar="RUN", help="a run folder, or the name of one under runs/")
    clean.add_argument("--yes", action="store_true", help="remove what would be removed (default: only show it)")
    clean.set_defaults(run=_clean)

    site = commands.add_parser("site", help="site profiles: `orchc site check [SITE]` checks one against its machine")
    site_commands = site.add_subparsers(dest="site_command", metavar="SUBCOMMAND", required=True)
    check = site_commands.add_parser("check", help="on a login node (here, or over the site's ssh: target), compare the "
                                                   "profile with the machine: partitions, node shapes, QoS, reservations, "
                                                   "modules, container runtime, storage; exit 1 when something differs")
    check.add_argument("site", nargs="?", default=None, metavar="SITE", help="a site name or profile file (default: meluxina)")
    check.add_argument("--account", metavar="ACCOUNT", help="the account whose storage places to check (${SLURM_JOB_ACCOUNT})")
    check.add_argument("--gpu-job", action="store_true",
                       help="also submit a short job on each GPU partition of `nodes:` (costs a job): the GPUs and driver it sees")
    check_where = check.add_mutually_exclusive_group()
    check_where.add_argument("--remote", action="store_true", help="check over SSH (the default when the site has an ssh: target)")
    check_where.add_argument("--local", action="store_true", help="check this machine even when the site has an ssh: target")
    check.set_defaults(run=_site_check)


# Each command's module is imported only when it runs, so that every other command starts fast.
def _results(args: argparse.Namespace) -> int:
    from ..results.table import cmd_results

    return cmd_results(args)


def _status(args: argparse.Namespace) -> int:
    from ..run.status import cmd_status

    return cmd_status(args)


def _runs(args: argparse.Namespace) -> int:
    from ..run.status import cmd_runs

    return cmd_runs(args)


def _logs(args: argparse.Namespace) -> int:
    from ..run.logs import cmd_logs

    return cmd_logs(args)


def _clean(args: argparse.Namespace) -> int:
    from ..run.clean import cmd_clean

    return cmd_clean(args)


def _site_check(args: argparse.Namespace) -> int:
    from ..run.sitecheck import cmd_site_check

    return cmd_site_check(args)


def _compare(args: argparse.Namespace) -> int:
    from ..results.compare import cmd_compare

    return cmd_compare(args)


def _report(args: argparse.Namespace) -> int:
    from ..results.overlay import cmd_report

    return cmd_report(args)


def cmd_submit(args: argparse.Namespace) -> int:
    from ..output.pipeline import compile_all
    from ..run.runs import new_run_dir, submit
    from ..run.ssh import config_dir, site_target
    from .notes import cost_notes

    (output,) = compile_all([args.recipe], compile_options(args))
    cost = cost_notes(output.recipe)
    run_dir = args.run_dir or new_run_dir(output.recipe.name)
    target = None if args.local else site_target(output.recipe.site.name, output.recipe.site.file)
    if args.remote and target is None:
        raise ClusterError(f"--remote: site {output.recipe.site.name} has no ssh: target (in {output.recipe.site.file}, "
                           f"in {config_dir()}/<site>.yaml or in ORCHC_SSH_HOST)")
    scheduler, connection = _where(target)
    scheduler.ready()    # no SLURM here is said before the images are prepared for it
    if not args.no_prepare:
        from ..run.prepare import prepare

        prepare(output.recipe, connection)
    return _submitted(lambda: submit(output, run_dir, scheduler, _command_line(), connection), run_dir, cost)


def cmd_prepare(args: argparse.Namespace) -> int:
    from ..output.pipeline import resolve_all
    from ..run.prepare import prepare
    from ..run.ssh import config_dir, connection, site_target

    (recipe,) = resolve_all([args.recipe], compile_options(args))
    target = None if args.local else site_target(recipe.site.name, recipe.site.file)
    if args.remote and target is None:
        raise ClusterError(f"--remote: site {recipe.site.name} has no ssh: target (in {recipe.site.file}, "
                           f"in {config_dir()}/<site>.yaml or in ORCHC_SSH_HOST)")
    if not prepare(recipe, None if target is None else connection(target)):
        print(f"{recipe.file}: site {recipe.site.name} runs no containers (runtime {recipe.site.runtime}): nothing to prepare")
    return 0


def cmd_rerun(args: argparse.Namespace) -> int:
    import posixpath
    from dataclasses import replace

    from ..run.runs import load_run, new_run_dir, rerun

    source, old = load_run(args.run_ref)
    run_dir = args.run_dir or new_run_dir(old.recipe)
    # a run made over SSH is made again beside it, on the same login node
    target = None if old.remote is None else replace(old.remote, remote_dir=posixpath.dirname(old.remote.remote_dir))
    scheduler, connection = _where(target)
    return _submitted(lambda: rerun(source, run_dir, scheduler, _command_line(), connection, print), run_dir)


def _where(target: Any) -> tuple[Any, Any]:
    """The scheduler to submit to (and the SSH connection it runs over, None when here)."""
    from ..run.runs import default_scheduler

    if target is None:
        return default_scheduler(), None
    import os

    from ..run.runs import SCHEDULER_VARIABLE, remote_scheduler
    from ..run.ssh import connection

    return remote_scheduler(target, os.environ.get(SCHEDULER_VARIABLE) or "slurm"), connection(target)


def _command_line() -> tuple[str, ...]:
    return ("orchc", *sys.argv[1:])


def _submitted(submitting: Callable[[], Run], run_dir: Path, cost: str | None = None) -> int:
    """Submit, then say what was submitted (and what it reserves, on a whole-node site); a signal during submit
    exits 128 + its number."""
    from ..run.runs import Interrupted

    try:
        run = submitting()
    except Interrupted as stopped:
        print(f"orchc: error: {stopped}", file=sys.stderr)
        return 128 + stopped.signum
    for job in run.jobs:
        print(f"submitted {job.role} {job.name}: SLURM job {job.slurm_id}{' (array task)' if '_' in job.slurm_id else ''}")
    if run.remote is not None:
        print(f"remote run folder: {run.remote.shown()}:{run.remote.remote_dir}")
    if cost:
        print(f"the run {cost}")
    print(f"run: {run_dir}  (follow it with: orchc status --watch {run_dir})")
    return 0


def cmd_tunnel(args: argparse.Namespace) -> int:
    """A local port forwarded through the login node to the node and port a job published; here, the endpoint."""
    from ..run.runs import load_run
    from ..run.status import published_endpoint

    run_dir, run = load_run(args.run_ref)
    job = run.job(args.job)
    node, ports = published_endpoint(run_dir, job)
    if args.port is not None and args.port not in ports:
        raise ClusterError(f"job {job.name} published port(s) {', '.join(map(str, ports))}, not {args.port}")
    port = ports[0] if args.port is None else args.port
    from ..core.terminal import terminal_text

    shown = terminal_text(node)  # as the job published it (a file in the run folder)
    if run.remote is None:
        print(f"{job.name} listens on {shown}:{port} (reachable from here: no tunnel needed)")
        return 0
    import socket

    from ..run.ssh import connection, wait_until_interrupted

    local_port = args.local_port
    if local_port == 0:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            local_port = probe.getsockname()[1]
    conn = connection(run.remote)
    spec = conn.forward(local_port, node, port)
    try:
        print(f"forwarding 127.0.0.1:{local_port} -> {shown}:{port} through {run.remote.shown()} "
              "(Ctrl-C closes the tunnel)")
        print(f"connect with: {client_command(run_dir, job.name, job.type, local_port, port == ports[0])}", flush=True)
        signum = wait_until_interrupted()
    finally:
        conn.cancel_forward(spec)
    print(f"tunnel closed ({__import__('signal').Signals(signum).name})", file=sys.stderr)
    return 128 + signum


def client_command(run_dir: Path, job: str, kind: str, local_port: int, main_port: bool) -> str:
    """How to reach a service through a tunnel on 127.0.0.1:local_port: its own client with the run's credentials
    (credentials/<job>/ca.crt: the service speaks TLS), else the URL (https when TLS)."""
    import shlex

    credentials = run_dir / "credentials" / job
    tls = (credentials / "ca.crt").is_file()
    if main_port and kind == "redis":
        certificates = ["--tls", "--cacert", str(credentials / "ca.crt"), "--cert", str(credentials / "client.crt"),
                        "--key", str(credentials / "client.key")] if tls else []
        return shlex.join(["redis-cli", "-h", "127.0.0.1", "-p", str(local_port), *certificates])
    if main_port and kind == "mysql":
        return shlex.join(["mysql", "-h", "127.0.0.1", "-P", str(local_port), "-u", "root", "-p"])
    if main_port and tls:   # the certificate names localhost and 127.0.0.1; the proxy wants the service's api_key
        return shlex.join(["curl", "--cacert", str(credentials / "ca.crt"), f"https://localhost:{local_port}/"]) + \
            ' -H "Authorization: Bearer $KEY"   (KEY: the api_key secret of the service, ' \
            f"by default ~/.orchc/secrets/{kind}_api_key on the cluster)"
    return f"http://127.0.0.1:{local_port}/"


def cmd_disconnect(args: argparse.Namespace) -> int:
    """`ssh -O exit` for the master of a site's target, or of every target (they otherwise persist 60 s)."""
    from ..run.ssh import close_all, connection, site_target

    if args.site is None:
        closed = close_all()
        print(f"closed {closed} ssh connection(s)" if closed else "no open ssh connection")
        return 0
    from ..core.session import CompileSession
    from ..core.source import SourceLoc
    from ..recipe.resolve import load_site

    site = load_site(args.site, Path.cwd(), SourceLoc("SITE"), CompileSession())
    target = site_target(site.name, site.file)
    if target is None:
        raise ClusterError(f"site {site.name} has no ssh: target (in {site.file}, your override, or ORCHC_SSH_HOST)")
    print(f"closed the ssh connection to {target.shown()}" if connection(target).close()
          else f"no open ssh connection to {target.shown()}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from ..run.runs import cancel, load_run, scheduler_for

    run_dir, run = load_run(args.run_ref, pull=False)
    done = cancel(run, args.jobs, scheduler_for(run))
    from ..core.terminal import terminal_text

    print(terminal_text(f"cancelled SLURM job(s) {', '.join(done.ids)} of {run_dir}" if done.ids
                        else f"nothing to cancel: no job of {run_dir} is queued or running"))
    for job in done.unknown:
        print(terminal_text(f"orchc: note: {job}: SLURM knows no job of yours by this id (it ended long ago, or is "
                            "another user's); left alone"), file=sys.stderr)
    for why in done.refused:
        print(terminal_text(f"orchc: error: {why}"), file=sys.stderr)
    return 1 if done.refused else 0




"""`orchc clean RUN`: remove a run's service data from the site's storage (`<storage.data>/<job>` of each job).

Where that data is comes from the job scripts themselves: their `ORCHC_RUN=` and `ORCHC_DATA=` lines, once every
file of the run verifies against the HMAC run.json recorded at submit with this user's key (runs.vouched_files, as
`rerun` checks): a run folder someone else wrote, or a script edited since, names nothing to delete. The lines are
run by bash in the run folder (here, or on the login node for a run submitted over SSH), as the jobs ran them, with
each job's name and account. A job's folder that is a symbolic link is left alone; `rm -rf` removes a real one
without following links inside it. Nothing is removed without `--yes`; a run no command has seen end is refused.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path

from ..core.errors import ClusterError
from ..script.render import RUN_NAME_LINE
from .runs import RESOLVED_FILE, Run, load_run, vouched_files

_DATA_LINE = re.compile(r'ORCHC_DATA=[A-Za-z0-9_./${}"-]+/"\$ORCHC_JOB"')
"""the job's data line as render writes it: storage paths are [A-Za-z0-9_./${}-]+ (schema), quoted word by word"""
_WORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_TIMEOUT = 600.0

_FUNCTION = r"""orchc_clean_one() {  # JOB ACCOUNT [remove]
  local ORCHC_JOB=$1 SLURM_JOB_ACCOUNT=$2 ORCHC_DATA size
  DATA_LINE
  if [ -L "$ORCHC_DATA" ]; then printf 'link\t%s\n' "$ORCHC_DATA"
  elif [ -d "$ORCHC_DATA" ]; then
    size=$(du -sk -- "$ORCHC_DATA" 2>/dev/null | cut -f 1)
    if [ "${3:-}" = remove ]; then
      if rm -rf -- "$ORCHC_DATA"; then printf 'removed\t%s\t%s\n' "$ORCHC_DATA" "$size"
      else printf 'failed\t%s\n' "$ORCHC_DATA"; fi
      rmdir -- "${ORCHC_DATA%/*}" 2>/dev/null
    else printf 'found\t%s\t%s\n' "$ORCHC_DATA" "$size"; fi
  fi
  return 0
}"""


def clean_script(files: dict[str, str], remove: bool) -> str:
    """The shell text that lists (or removes) each job's data folder, one tab-separated line per folder."""
    run_line, data_line = _storage_lines(files)
    jobs = _jobs_and_accounts(files)
    lines = ['ORCHC_RUN_DIR=$(pwd -P) || exit 1', 'USER="${USER:-$(id -un)}"', run_line, _FUNCTION.replace("DATA_LINE", data_line)]
    lines += [f"orchc_clean_one {shlex.quote(job)} {shlex.quote(account)}{' remove' if remove else ''}"
              for job, account in sorted(jobs.items())]
    return "\n".join(lines) + "\n"


def _storage_lines(files: dict[str, str]) -> tuple[str, str]:
    """The run-name and data lines the run's job scripts share (one site, one storage per recipe)."""
    found: set[tuple[str, str]] = set()
    for name, text in files.items():
        if not name.endswith(".sbatch"):
            continue
        lines = text.splitlines()
        data = [line for line in lines if line.startswith("ORCHC_DATA=")]
        if data:
            if RUN_NAME_LINE not in lines or len(data) != 1 or not _DATA_LINE.fullmatch(data[0]):
                raise ClusterError(f"{name}: its storage lines are not the ones orchc writes; nothing to clean by them")
            found.add((RUN_NAME_LINE, data[0]))
    if len(found) != 1:
        raise ClusterError("the run's scripts name no data folder (or several): nothing orchc can clean")
    return found.pop()


def _jobs_and_accounts(files: dict[str, str]) -> dict[str, str]:
    """Job name -> its account (resolved.json, vouched for with the scripts); '' without one."""
    if RESOLVED_FILE not in files:
        raise ClusterError(f"the run has no {RESOLVED_FILE} (made by an older orchc): its jobs' data folders are unknown")
    try:
        jobs = json.loads(files[RESOLVED_FILE])["jobs"]
        accounts = {str(name): str((values.get("resources") or {}).get("account") or "") for name, values in jobs.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ClusterError(f"cannot read the jobs of {RESOLVED_FILE}: {exc}") from None
    for name, account in accounts.items():
        if not _WORD.match(name) or (account and not _WORD.match(account)):
            raise ClusterError(f"{RESOLVED_FILE}: job {name[:40]!r} or its account {account[:40]!r} is not a plain word")
    return accounts


def clean_run(run_dir: Path, remove: bool, run: Run | None = None) -> list[str]:
    """What was (or would be) removed, one line per folder."""
    checked_run, files, _checked = vouched_files(run_dir)
    run = run or checked_run
    if not run.outcome:
        raise ClusterError(f"{run_dir}: the run has not been seen ended (`orchc status` records it when every job has "
                           "ended); its jobs may still write their data: clean it once it has ended")
    script = clean_script(files, remove)
    if run.remote is None:
        from .slurm import run_command

        answer = run_command(["bash", "-c", script], _TIMEOUT, cwd=run_dir)
        code, out, err = answer.code, answer.out, answer.err
    else:
        from .ssh import connection

        reply = connection(run.remote).run(["bash", "-c", script], timeout=_TIMEOUT, cwd=run.remote.remote_dir)
        code, out, err = reply.code, reply.out, reply.err
    if code != 0:
        raise ClusterError(f"cleaning failed (exit {code}): {err.strip()[-300:] or 'no message'}")
    return _said(out, remove)


def _said(out: str, remove: bool) -> list[str]:
    lines = []
    for fields in (line.split("\t") for line in out.splitlines() if line):
        kind, path = fields[0], fields[1] if len(fields) > 1 else "?"
        size = f": {_size(int(fields[2]))}" if len(fields) > 2 and fields[2].isdigit() else ""
        lines.append({"link": f"left alone {path}: a symbolic link, not the job's folder",
                      "removed": f"removed {path}{size}", "found": f"would remove {path}{size}",
                      "failed": f"could not remove all of {path}"}.get(kind, f"? {kind}"))
    if not lines:
        return ["nothing to clean: no data folder of this run exists"]
    return lines


def _size(kib: int) -> str:
    return f"{kib:,} KiB" if kib < 1024 else f"{kib / 1024:,.1f} MiB" if kib < 1024 * 1024 else f"{kib / 1024 / 1024:,.2f} GiB"


def cmd_clean(args: argparse.Namespace) -> int:
    from ..core.terminal import terminal_text

    run_dir, run = load_run(args.run_ref, pull=False)
    lines = clean_run(run_dir, args.yes, run)
    for line in lines:
        print(terminal_text(line))
    if not args.yes and any(line.startswith("would remove") for line in lines):
        print("run again with --yes to remove them")
    return 1 if any(line.startswith(("could not", "left alone")) for line in lines) else 0

"""The job runtime: the helpers and traps every job script shares (`templates/runtime.sh`, plain bash).

It is written once per output folder as `orchc-runtime-<first 12 hex digits of its sha256>.sh`, listed in the
manifest and covered by its digest; each job script checks the whole sha256 before it sources the file from its
run folder. The name needs only to tell apart the runtimes of different orchc versions that may meet in one
folder, so 12 digits (48 bits, as docker's short image ids) are plenty; what the script trusts is the full
sha256. `orchc compile --self-contained` inlines the runtime instead, for a script that must travel alone.
"""

from __future__ import annotations

import hashlib
from functools import cache

from ..core.paths import templates_dir

NAME_DIGITS = 12


@cache
def runtime_text() -> str:
    return (templates_dir() / "runtime.sh").read_text(encoding="utf-8")


@cache
def runtime_sha256() -> str:
    return hashlib.sha256(runtime_text().encode("utf-8")).hexdigest()


def runtime_name() -> str:
    """The runtime's file name in an output folder."""
    return f"orchc-runtime-{runtime_sha256()[:NAME_DIGITS]}.sh"


def runtime_loader() -> str:
    """The lines of a job script that check the runtime in its run folder and source it: a missing or changed
    runtime stops the job with one line on stderr before anything else runs."""
    sha = runtime_sha256()
    return "\n".join([
        "# the job runtime every script of this folder shares: checked, then sourced",
        f'ORCHC_RUNTIME="$ORCHC_RUN_DIR/{runtime_name()}"',
        f'[ "$(sha256sum 2>/dev/null <"$ORCHC_RUNTIME")" = "{sha}  -" ] || {{',
        '    echo "orchc: error: the job runtime $ORCHC_RUNTIME is missing or changed (its sha256 must be '
        f'{sha}): compile the recipe again into the run folder" >&2',
        "    exit 1",
        "}",
        "# shellcheck source=/dev/null",
        '. "$ORCHC_RUNTIME"',
    ])


def runtime_inlined() -> str:
    """The runtime as part of a job script (`--self-contained`): its text but the shellcheck shell directive."""
    lines = runtime_text().splitlines()
    return "\n".join(line for line in lines if line != "# shellcheck shell=bash")

"""Programs types ship (`{file: PATH, source: NAME}` phase items, files/NAME beside the type file): the same bytes
whatever the recipe's values, so they are written once per output folder, like the job runtime (runtime.py).

Each is `orchc-file-<first 12 hex digits of its sha256>-<NAME>`, listed in the manifest and covered by its digest
(so submit, rerun and the SSH copy carry it into the run folder, and a recompile removes one no longer used). A job
script puts it in place with the runtime's `orchc_shipped_file`, which checks the full sha256 of the copy it makes.
`orchc compile --self-contained` writes none: each script holds its files in here-documents.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from ..core.paths import builtin_types_dir
from ..core.session import CompileSession
from ..core.source import Node, SourceLoc
from ..recipe.checks import PHASES
from ..recipe.resolve import Recipe, ResolvedJob
from ..recipe.typedefs import type_file_text
from .directives import gpus_of
from .runtime import NAME_DIGITS

NAME_LIMIT = 63
"""The longest file name a manifest may list (run/runs.py reads no longer one): a long NAME is cut to fit."""


@dataclass(frozen=True)
class ShippedFile:
    name: str
    """its file name in the output folder and the run folder"""
    sha256: str
    text: str
    """the bytes the job puts in place: the file's, with a final newline (as its here-document writes it)"""


def shipped_file(source: Node, session: CompileSession) -> ShippedFile:
    """The file a `source:` value names, read once per compile: the script that checks it and the folder that
    holds it see the same bytes, even if the type's file changes while the compile runs."""
    folder = os.path.dirname(os.path.abspath(source.loc.file))
    return session.once("shipped", (folder, source.value), lambda: _shipped(source))


def _shipped(source: Node) -> ShippedFile:
    text = type_file_text(source).removesuffix("\n") + "\n"
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    prefix = f"orchc-file-{sha[:NAME_DIGITS]}-"
    return ShippedFile(prefix + str(source.value)[: NAME_LIMIT - len(prefix)], sha, text)


GPU_EXPORTER = "gpu_exporter.py"
"""The program orchc itself ships to services with GPUs (files/ of the built-in types): README "Monitoring"."""
PROCESS_EXPORTER = "process_exporter.py"
"""The program orchc ships to services with enable_process_exporter."""


def gpu_exporter_of(job: ResolvedJob) -> str | None:
    """The GPU exporter a job runs: its `gpu_exporter` (service.yaml) on a service whose resources.gres asks for GPUs."""
    kind = job.fields.get("gpu_exporter")
    wanted = job.role == "service" and kind in ("nvidia-smi", "dcgm") and gpus_of(str(job.resources.get("gres") or "")) > 0
    return str(kind) if wanted else None


def runs_process_exporter(job: ResolvedJob) -> bool:
    return job.role == "service" and bool(job.fields.get("enable_process_exporter")) and job.container is not None


def builtin_shipped(name: str, session: CompileSession) -> ShippedFile:
    """A program of the built-in types' files/ folder that orchc ships by itself (not named by a phase item)."""
    return shipped_file(Node(name, SourceLoc(str(builtin_types_dir() / "service.yaml"))), session)


def file_items(job: ResolvedJob, recipe: Recipe, phase: str) -> list[Node]:
    """The items of one of the job's phases as the type file wrote them (a shell line, or a `{file: ...}` block);
    none for a phase the job does not run."""
    items = recipe.origins[job.name].template(("phases", phase))
    return items.value if isinstance(items.value, list) and phase in job.phases else []


def shipped_files(recipe: Recipe) -> dict[str, str]:
    """Name -> text of every file the recipe's jobs ship, once each."""
    found: dict[str, str] = {}
    for job in recipe.jobs:
        for phase in PHASES[job.role]:
            for item in file_items(job, recipe, phase):
                source = item.get("source") if isinstance(item.value, dict) else None
                if source is not None:
                    shipped = shipped_file(source, recipe.session)
                    found[shipped.name] = shipped.text
        for name, used in ((GPU_EXPORTER, gpu_exporter_of(job) == "nvidia-smi"), (PROCESS_EXPORTER, runs_process_exporter(job))):
            if used:
                shipped = builtin_shipped(name, recipe.session)
                found[shipped.name] = shipped.text
    return found

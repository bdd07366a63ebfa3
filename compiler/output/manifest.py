"""manifest.json, the one file both halves share: its name, what it records, its text, its digest, the one
reader (with its one size limit) and the submission plan and sweep read from it.

The compile side writes one per recipe (emit.py), listing every file it wrote and the digest of them; a later
compile into the same folder reads it back to remove the files only it listed; the run side reads it from a
run folder for the plan it submits (runs.py), the sweep of the results (points.py) and a rerun.

Size: a 100,000-job sweep (benchmarks/speed.py case F: 100 x 100 points repeated 10 times, one service) writes a
manifest of 38,508,960 bytes (36.7 MiB, ~385 bytes a job). MANIFEST_LIMIT leaves over 3x that for longer names and
swept values; orchc refuses to write a manifest over it (a located error naming the recipe), so every manifest
orchc wrote can be read back, and one over it is not orchc's.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import OrchcError, OutputError
from ..core.source import SourceLoc
from ..recipe.resolve import Recipe, ResolvedJob
from .plan import Plan, plan_from_manifest

MANIFEST = "manifest.json"
SUBMIT = "submit.sh"
GENERATOR = "orchc"
MANIFEST_LIMIT = 128 << 20


class ManifestError(OutputError):
    """A manifest.json that orchc cannot read, or (where orchc would overwrite it) did not write."""


class ManifestTooLarge(OrchcError):
    """A recipe whose manifest would be larger than MANIFEST_LIMIT (located at the recipe)."""


def script_name(job: ResolvedJob) -> str:
    return f"{job.name}.sbatch"


def submission_order(recipe: Recipe) -> list[ResolvedJob]:
    """Services first, then clients, each in recipe order: every client comes after its target."""
    return [j for j in recipe.jobs if j.role == "service"] + [j for j in recipe.jobs if j.role == "client"]


def build_manifest(recipe: Recipe) -> dict[str, Any]:
    """The manifest of a recipe, without its digest (emit adds it once every file is made) or its allocation."""
    manifest: dict[str, Any] = {
        "generator": GENERATOR,
        "recipe": recipe.name,
        "source": Path(recipe.file).name,
        "site": recipe.site.name,
        "runtime": recipe.site.runtime,
        "files": sorted([*(script_name(job) for job in recipe.jobs), SUBMIT, MANIFEST]),
        "jobs": [
            {
                "name": job.name,
                "type": job.typedef.name,
                "role": job.role,
                "job_id": job.job_id,
                "script": script_name(job),
                "target": job.target,
                "depends_on": [job.target] if job.target else [],
                **({"after_end": list(recipe.waits_for[job.name])} if recipe.waits_for.get(job.name) else {}),
                **({"point": job.point, "repeat": job.repeat} if job.point else {}),
            }
            for job in submission_order(recipe)
        ],
    }
    if recipe.points:
        manifest["sweep"] = {"keys": [key for key, _ in recipe.points[0][1]], "repeat": recipe.repeat,
                             "points": [{"point": name, "values": dict(values)} for name, values in recipe.points]}
    if recipe.references:
        manifest["references"] = recipe.references
    headlines = {job.typedef.name: list(job.typedef.headline) for job in recipe.jobs if job.typedef.headline}
    if headlines:
        manifest["headline"] = dict(sorted(headlines.items()))
    return manifest


def manifest_bytes(manifest: dict[str, Any], recipe: Recipe) -> bytes:
    """The manifest as written; one over MANIFEST_LIMIT is an error at the recipe (orchc could not read it back)."""
    data = manifest_text(manifest).encode("ascii")   # manifest_text escapes every other character
    if len(data) > MANIFEST_LIMIT:
        raise ManifestTooLarge.at(SourceLoc(recipe.file), f"recipe '{recipe.name}' has {len(recipe.jobs)} jobs: its {MANIFEST} "
                            f"would be {len(data):,} bytes, more than the {MANIFEST_LIMIT:,} orchc reads back; "
                            "split it into several recipes")
    return data


def manifest_text(manifest: dict[str, Any]) -> str:
    """`json.dumps(manifest, indent=2, sort_keys=True)` and a newline: the same text, written without the
    pure-Python encoder json uses whenever it indents (a 100,000-job sweep's manifest took it 1.6 s)."""
    try:
        return _indented(manifest, "\n") + "\n"
    except _NotPlain:
        return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


class _NotPlain(Exception):
    """A value `_indented` leaves to json: a float, a key that is not a string, or a type JSON does not have."""


_STRING: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _indented(value: Any, newline: str) -> str:
    """The JSON text of `value` as json.dumps(indent=2, sort_keys=True) writes it, `newline` being a line
    break and the indent of the line `value` starts on."""
    if isinstance(value, str):
        return _STRING(value)
    if value is None or value is True or value is False:
        return "null" if value is None else "true" if value else "false"
    if isinstance(value, int):
        return int.__repr__(value)
    inner = newline + "  "
    if isinstance(value, dict):
        if not value:
            return "{}"
        if not all(type(key) is str for key in value):
            raise _NotPlain
        return "{" + ",".join(f"{inner}{_STRING(key)}: {_indented(item, inner)}" for key, item in sorted(value.items())) \
            + newline + "}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        return "[" + ",".join(inner + _indented(item, inner) for item in value) + newline + "]"
    raise _NotPlain


class Digest:
    """What a manifest vouches for: the names and contents of the files it lists (but itself), fed in
    the order of their names."""

    def __init__(self) -> None:
        self._hasher = hashlib.sha256()

    def add(self, name: str, data: bytes) -> None:
        self._hasher.update(f"{name}\0{len(data)}\0".encode())
        self._hasher.update(data)

    def text(self) -> str:
        return f"sha256:{self._hasher.hexdigest()}"


def digest(files: Mapping[str, str]) -> str:
    hasher = Digest()
    for name in sorted(files):
        if name != MANIFEST:
            hasher.add(name, files[name].encode("utf-8"))
    return hasher.text()


# --- reading ---------------------------------------------------------------------------------------

def read_manifest_text(folder: Path | int, shown: Path | None = None) -> str | None:
    """The text of `folder`'s manifest.json (`folder`: a path, or an open folder descriptor shown as `shown`);
    None when there is none. A symbolic link, a FIFO or device (opening those could hang or lead elsewhere), a
    file over MANIFEST_LIMIT or not UTF-8 is a ManifestError naming it: never read as if there were none."""
    path = (folder if isinstance(folder, Path) else shown or Path(".")) / MANIFEST
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if isinstance(folder, Path) else os.dup(folder)
    try:
        opened = os.open(MANIFEST, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        link = exc.errno == errno.ELOOP
        raise ManifestError(f"{path} is a symbolic link: orchc follows none to a manifest" if link
                            else f"cannot read {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    with os.fdopen(opened, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ManifestError(f"{path} is not a regular file")
        data = handle.read(MANIFEST_LIMIT + 1) if info.st_size <= MANIFEST_LIMIT else b""
    if len(data) > MANIFEST_LIMIT or info.st_size > MANIFEST_LIMIT:
        raise ManifestError(f"{path} is larger than {MANIFEST_LIMIT >> 20} MiB, the most orchc writes: not a manifest "
                            "orchc wrote")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError(f"{path} is not UTF-8 text: not a manifest orchc wrote") from None


def parse_manifest(text: str, path: Path | str) -> dict[str, Any]:
    """A manifest's text as a JSON object; anything else is a ManifestError naming `path`."""
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise ManifestError(f"{path}:{getattr(exc, 'lineno', 1)}:{getattr(exc, 'colno', 1)}: not JSON: "
                            f"{getattr(exc, 'msg', exc)}") from None
    except RecursionError:
        raise ManifestError(f"{path}: nested too deeply for a manifest orchc wrote") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: not a JSON object, so not a manifest orchc wrote")
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    """`folder`'s manifest.json as a JSON object; {} when there is none (a run's results stay readable without
    it); anything else is a ManifestError (see read_manifest_text)."""
    text = read_manifest_text(folder)
    return {} if text is None else parse_manifest(text, folder / MANIFEST)


def orchc_manifest(folder: int, shown: Path, recipe: str) -> dict[str, Any] | None:
    """The manifest orchc wrote for `recipe` in an output folder (open as `folder`, shown as `shown`); None when
    there is none. One that is not orchc's, or is orchc's for another recipe, is a ManifestError: orchc does not
    overwrite it."""
    text = read_manifest_text(folder, shown)
    if text is None:
        return None
    path = shown / MANIFEST
    manifest = parse_manifest(text, path)
    again = "remove it or choose another -o folder"
    if manifest.get("generator") != GENERATOR:
        raise ManifestError(f"{path} was not written by orchc (no \"generator\": \"{GENERATOR}\"); orchc does not "
                            f"overwrite it: {again}")
    if manifest.get("recipe") != recipe:
        raise ManifestError(f"{path} is orchc's manifest of another recipe ({str(manifest.get('recipe'))[:64]!r}), not "
                            f"of '{recipe}'; orchc does not overwrite it: {again}")
    return manifest


def read_plan(folder: Path) -> Plan:
    """The submission plan of the manifest in `folder` (a run folder orchc just wrote)."""
    return plan_from_manifest(read_manifest(folder), str(folder / MANIFEST))


@dataclass(frozen=True)
class Sweep:
    keys: tuple[str, ...]
    repeat: int
    points: tuple[tuple[str, Mapping[str, Any]], ...]


def recorded_sweep(manifest: Mapping[str, Any]) -> Sweep | None:
    """The sweep a manifest records; None for a run of one configuration."""
    sweep = manifest.get("sweep")
    if not isinstance(sweep, dict):
        return None
    keys = tuple(key for key in sweep.get("keys", []) if isinstance(key, str))
    points = tuple((str(point["point"]), dict(point.get("values") or {})) for point in sweep.get("points", [])
                   if isinstance(point, dict) and isinstance(point.get("point"), str))
    repeat = sweep.get("repeat")
    return Sweep(keys, repeat if isinstance(repeat, int) and repeat > 0 else 1, points)

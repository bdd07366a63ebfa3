"""manifest.json: what a compile wrote, read by every run-side command."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import ClusterError
from ..core.files import LinkInRunFolder, read_in_run

_MANIFEST_LIMIT = 16 << 20


@dataclass(frozen=True)
class Sweep:
    keys: tuple[str, ...]
    repeat: int
    points: tuple[tuple[str, Mapping[str, Any]], ...]


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The run's manifest.json ({} when it is missing or unreadable: results stay readable without it)."""
    try:
        data = json.loads(read_in_run(run_dir, "manifest.json", _MANIFEST_LIMIT))
    except LinkInRunFolder as exc:
        raise ClusterError(str(exc)) from None
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


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

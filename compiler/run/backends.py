"""The scheduler backends by name: the one place that knows every backend module."""

from __future__ import annotations

from ..core.errors import ClusterError
from .scheduler import BACKENDS, Scheduler


def load_scheduler(name: str) -> Scheduler:
    from . import slurm  # noqa: F401  (registers the real backend; imported only when a run needs a scheduler)

    try:
        return BACKENDS[name]()
    except KeyError:
        raise ClusterError(f"unknown scheduler {name!r} (known: {', '.join(sorted(BACKENDS))})") from None

"""What a compile says beside its output: what a recipe reserves on a whole-node site, and idle GPUs."""

from __future__ import annotations

import sys
from typing import TextIO

from ..core.terminal import print_warning
from ..recipe.resolve import Recipe


def cost_notes(recipe: Recipe, stream: TextIO | None = None) -> str | None:
    """Print the idle-GPU warnings of `recipe` (stderr); return its node-hour line (on whole nodes) and what the
    site's limit of running jobs means for it, None when there is neither."""
    from ..script.economics import cost_line, idle_gpu_warnings, running_limit_line

    for loc, message in idle_gpu_warnings(recipe):
        print_warning(loc, message, stream or sys.stderr, recipe.session.sources)
    notes = [note for note in (cost_line(recipe), running_limit_line(recipe)) if note]
    return "; ".join(notes) or None

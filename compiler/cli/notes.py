"""What a compile says beside its output: what a recipe reserves on a whole-node site, and idle GPUs."""

from __future__ import annotations

import sys
from typing import TextIO

from ..core.terminal import print_warning
from ..recipe.resolve import Recipe


def cost_notes(recipe: Recipe, stream: TextIO | None = None) -> str | None:
    """Print the idle-GPU warnings of `recipe` (stderr); return its node-hour line, None on a shared site."""
    from ..script.economics import cost_line, idle_gpu_warnings

    for loc, message in idle_gpu_warnings(recipe):
        print_warning(loc, message, stream or sys.stderr, recipe.session.sources)
    return cost_line(recipe)

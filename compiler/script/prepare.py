"""The prepare script of a recipe: the bash text `orchc prepare` (and `orchc submit`, first) runs on a login node to
build every image the recipe's jobs need into the site's image store (templates/prepare.sh holds its functions).

Jobs only check at start that their images were prepared (runtime.sh `orchc_image`): a build on a billed compute
node, with Apptainer's cache and temp folder on the parallel file system, is what this avoids.
"""

from __future__ import annotations

import shlex

from ..boundary.quote import shell_word
from ..core.paths import templates_dir
from ..recipe.resolve import Recipe, ResolvedJob

REGISTRY_CREDENTIALS = "$HOME/.orchc/secrets/registry"
"""user name and password of the container registry, two lines, mode 0600 (README "Container images")"""


def image_sources(job: ResolvedJob) -> list[tuple[str, str]]:
    """(image name, source) of each container the job starts: its own and its sidecars' that are switched on."""
    started = [*([job.container] if job.container else []), *(sidecar.container for sidecar in job.active_sidecars())]
    return [(c.image, c.source or "") for c in started if c.image]


def prepare_script(recipe: Recipe) -> str | None:
    """The script that prepares the recipe's images on a login node; None when its site runs no containers."""
    if recipe.site.runtime != "apptainer":
        return None
    lines = [f"# orchc prepare: recipe {recipe.name}, site {recipe.site.name}", "set -o errexit -o pipefail", "",
             (templates_dir() / "prepare.sh").read_text(encoding="utf-8"), *_module_lines(recipe),
             'command -v apptainer >/dev/null || orchc_fail "apptainer not found on $(hostname) after loading the '
             f'modules of site profile {recipe.site.name}"',
             f"orchc_node_local_dirs {shell_word(recipe.site.storage.get('apptainer_cache') or '')} "
             f"{shell_word(recipe.site.storage.get('apptainer_tmp') or '')}",
             f"orchc_registry_login {shell_word(REGISTRY_CREDENTIALS)}"]
    seen: set[tuple[str, str, str]] = set()
    for job in recipe.jobs:
        account = str(job.resources.get("account") or "")
        for image, source in image_sources(job):
            if (account, image, source) in seen:
                continue
            seen.add((account, image, source))
            # the store's path may name the job's account, which SLURM gives a job and a login node does not have
            lines.append(f"SLURM_JOB_ACCOUNT={shlex.quote(account)}")
            lines.append(f"orchc_prepare_image {shell_word(f'{recipe.site.image_dir}/{image}.sif')} {shlex.quote(source)}")
    lines.append(f'orchc_say "{len(seen)} image(s) of recipe {recipe.name} ready"')
    return "\n".join(lines) + "\n"


def _module_lines(recipe: Recipe) -> list[str]:
    """The site's modules, loaded as a job loads them (Apptainer may come from one)."""
    if not recipe.site.modules:
        return []
    return ['type module >/dev/null 2>&1 || orchc_fail "the module command is not defined: the site profile\'s shell '
            'must be a login shell (#!/bin/bash -l)"', recipe.site.module_purge,
            *(f"module load {shlex.quote(module)}" for module in recipe.site.modules)]

"""The prepare script of a recipe: the bash text `orchc prepare` (and `orchc submit`, first) runs on a login node to
build every image the recipe's jobs need into the site's image store (templates/prepare.sh holds its functions),
then run each job's `prepare` phase (a type's own step, e.g. vLLM's model download into the model store).

Jobs only check at start that their images (and models) were prepared (runtime.sh `orchc_image`): a build or a
download on a billed compute node, with Apptainer's cache and temp folder on the parallel file system, is what this
avoids.
"""

from __future__ import annotations

import shlex

from ..boundary.quote import shell_word
from ..core.paths import templates_dir
from ..recipe.resolve import Recipe
from .images import ImageSource, image_sources
from .render import PASSED_INTO_CONTAINERS, prepare_phase

REGISTRY_CREDENTIALS = "$HOME/.orchc/secrets/registry"
"""user name and password of the container registry, two lines, mode 0600 (README "Container images")"""


def prepare_script(recipe: Recipe) -> str | None:
    """The script that prepares the recipe's images on a login node; None when its site runs no containers."""
    if not recipe.site.containers:
        return None
    runtime = recipe.site.runtime    # apptainer, or singularity: the same commands
    lines = [f"# orchc prepare: recipe {recipe.name}, site {recipe.site.name}", "set -o errexit -o pipefail", "",
             f"ORCHC_CONTAINER_CLI={runtime}",
             (templates_dir() / "prepare.sh").read_text(encoding="utf-8"), *_module_lines(recipe),
             f'command -v {runtime} >/dev/null || orchc_fail "{runtime} not found on $(hostname) after loading the '
             f'modules of site profile {recipe.site.name}"',
             f"orchc_node_local_dirs {shell_word(recipe.site.storage.get('apptainer_cache') or '')} "
             f"{shell_word(recipe.site.storage.get('apptainer_tmp') or '')}",
             f"orchc_registry_login {shell_word(REGISTRY_CREDENTIALS)}"]
    seen: set[tuple[str, str, str]] = set()
    for job in recipe.jobs:
        account = str(job.resources.get("account") or "")
        for found in image_sources(job, recipe.origins[job.name], recipe.session):
            if (account, found.image, found.source) in seen:
                continue
            seen.add((account, found.image, found.source))
            # the store's path may name the job's account, which SLURM gives a job and a login node does not have
            lines.append(f"SLURM_JOB_ACCOUNT={shlex.quote(account)}")
            lines += _prepare_lines(f"{recipe.site.image_dir}/{found.image}.sif", found)
    lines.append(f'orchc_say "{len(seen)} image(s) of recipe {recipe.name} ready"')
    lines += _phase_lines(recipe)
    return "\n".join(lines) + "\n"


def _phase_lines(recipe: Recipe) -> list[str]:
    """Each job's `prepare` phase, once per distinct text (a sweep's points that prepare the same model do it once),
    in a subshell of its own with the job's storage variables and a throwaway run folder."""
    lines: list[str] = []
    seen: set[tuple[str, str]] = set()
    for job in recipe.jobs:
        phase = prepare_phase(job, recipe)
        if phase is None:
            continue
        values, blocks, where = phase
        account = str(job.resources.get("account") or "")
        text = "\n".join([*values, *blocks])
        if (account, text) in seen:
            continue
        seen.add((account, text))
        lines += [f"SLURM_JOB_ACCOUNT={shlex.quote(account)}",
                  f"orchc_phase_begin {shlex.quote(job.role)} {shlex.quote(job.name)} "
                  f"{shell_word(recipe.site.storage.get('models') or '')} {' '.join(PASSED_INTO_CONTAINERS)}",
                  "(", "set -o errexit", *values, *blocks, ") </dev/null &",
                  f"orchc_phase_end $! {shlex.quote(job.role)} {shlex.quote(job.name)} {shlex.quote(where)}"]
    return lines


def _prepare_lines(sif: str, found: ImageSource) -> list[str]:
    """The lines that prepare one image; a definition file is written beside Apptainer's temp folder first."""
    call = f"orchc_prepare_image {shell_word(sif)} {shlex.quote(found.source)}"
    if found.definition is None:
        return [call]
    end = f"ORCHC_DEFINITION_{found.source[-16:]}"
    return ['orchc_definition="$APPTAINER_TMPDIR/orchc-$$.def"', f"cat >\"$orchc_definition\" <<'{end}'",
            found.definition.removesuffix("\n"), end, f'{call} "$orchc_definition"', 'rm -f -- "$orchc_definition"']


def _module_lines(recipe: Recipe) -> list[str]:
    """The site's modules, loaded as a job loads them (Apptainer may come from one)."""
    if not recipe.site.modules:
        return []
    return ['type module >/dev/null 2>&1 || orchc_fail "the module command is not defined: the site profile\'s shell '
            'must be a login shell (#!/bin/bash -l)"', recipe.site.module_purge,
            *(f"module load {shlex.quote(module)}" for module in recipe.site.modules)]

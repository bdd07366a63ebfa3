"""The prepare script of a recipe: the bash text `orchc prepare` (and `orchc submit`, first) runs on a login node to
build every image the recipe's jobs need into the site's image store (templates/prepare.sh holds its functions).

Jobs only check at start that their images were prepared (runtime.sh `orchc_image`): a build on a billed compute
node, with Apptainer's cache and temp folder on the parallel file system, is what this avoids.
"""

from __future__ import annotations

import hashlib
import os
import shlex
from dataclasses import dataclass

from ..boundary.quote import shell_word
from ..core.paths import templates_dir
from ..core.session import CompileSession
from ..core.source import Node, Origins
from ..recipe.resolve import Container, Recipe, ResolvedJob
from ..recipe.typedefs import type_file_text

REGISTRY_CREDENTIALS = "$HOME/.orchc/secrets/registry"
"""user name and password of the container registry, two lines, mode 0600 (README "Container images")"""


DEFINITION = "def:"
"""a container `source:` naming an Apptainer definition file the type ships (files/NAME beside the type file)"""


@dataclass(frozen=True)
class ImageSource:
    image: str
    source: str
    """what the image is recorded as built from: the type's source, or for a definition file
    def:NAME@sha256:<its sha256>, so that a changed file means a new build"""
    definition: str | None = None
    """the definition file's text, for def: sources"""


def image_sources(job: ResolvedJob, origins: Origins, session: CompileSession) -> list[ImageSource]:
    """The images of the containers the job starts: its own and its sidecars' that are switched on."""
    started = [*([job.container] if job.container else []), *(sidecar.container for sidecar in job.active_sidecars())]
    return [_image_source(c, origins, session) for c in started if c.image]


def _image_source(container: Container, origins: Origins, session: CompileSession) -> ImageSource:
    source = container.source or ""
    if not source.startswith(DEFINITION):
        return ImageSource(str(container.image), source)
    node = Node(source.removeprefix(DEFINITION), origins.template((*container.path, "source")).loc)
    # read and hashed once per compile, not once per job of a sweep
    text, digest = session.once("definition", (os.path.dirname(os.path.abspath(node.loc.file)), node.value),
                                lambda: _definition(node))
    return ImageSource(str(container.image), f"{source}@sha256:{digest}", text)


def _definition(node: Node) -> tuple[str, str]:
    text = type_file_text(node)
    return text, hashlib.sha256(text.encode("utf-8")).hexdigest()


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
    return "\n".join(lines) + "\n"


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

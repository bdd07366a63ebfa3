"""The images a job's containers run: what each is built from (a registry source, or a definition file the type
ships, hashed so that a changed file means a new build). The job script checks them (render.py) and the prepare
script builds them (prepare.py)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from ..core.session import CompileSession
from ..core.source import Node, Origins
from ..recipe.resolve import Container, ResolvedJob
from ..recipe.typedefs import type_file_text

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

"""Stage 4, render: a resolved job -> the text of its sbatch script.

The job template (`templates/job.sbatch.j2`) lays out the script; this module
prepares its parts: directives, environment, secrets, images, the container
commands, the phases, and how a client finds its target.
"""

from __future__ import annotations

import shlex
from typing import Any
from urllib.parse import urlsplit

from .directives import directives
from .errors import OrchcError
from .resolve import Job, Recipe
from .shell import Raw, shell_word, text_value
from .source import Node
from .templating import PLACEHOLDER, environment, render_string

PHASE_ORDER = {"service": ("setup", "health_check"), "client": ("setup", "health_check", "benchmark", "results")}


def render_job(job: Job, recipe: Recipe) -> str:
    context = _context(job, recipe)
    parts: dict[str, Any] = {
        "directives": directives(job.name, job.job_id, job.data.get("resources", {})),
        "modules": recipe.site.modules,
        "environment": [f"export {k}={shlex.quote(text_value(v))}" for k, v in sorted(job.data.get("environment", {}).items())],
        "secrets": [_secret_line(name, job.data[name]) for name in sorted(job.typedef.secrets) if name in job.data],
        "images": _image_lines(job, recipe, context),
        "sidecars": _sidecar_lines(job, recipe, context),
        "service_command": _service_command(job, recipe, context),
        "phases": {phase: _phase_lines(job, phase, context) for phase in PHASE_ORDER[job.role]},
        "target": _target_lines(job, recipe) if job.role == "client" else [],
        "clients": [c.name for c in recipe.jobs if c.role == "client" and c.data.get("target") == job.name],
    }
    parts["fills_hosts"] = any(line.startswith("orchc_fill_hosts ") for lines in parts["phases"].values() for line in lines)
    template = environment("script").get_template("job.sbatch.j2")
    return template.render(job=job, recipe=recipe, site=recipe.site, **parts)


def _context(job: Job, recipe: Recipe) -> dict[str, Any]:
    context: dict[str, Any] = {name: None for name in job.typedef.fields}
    context.update(job.data)
    context.update(
        job={"name": job.name, "id": job.job_id, "type": job.typedef.name, "role": job.role},
        recipe=recipe.name,
        jobs=[other.name for other in recipe.jobs],
        site={"name": recipe.site.name, "runtime": recipe.site.runtime},
    )
    container = job.data.get("container")
    assignments, words = _exec_parts(job, container, recipe, context) if container else ([], [])
    context["run"] = Raw(" ".join([*assignments, *words]))
    context["_run_parts"] = (assignments, words)  # reused to start the service's own container
    return context


def _image_path(image: str, recipe: Recipe) -> str:
    return shell_word(f"{recipe.site.image_dir}/{image}.sif")


def _containers(job: Job, context: dict[str, Any]) -> list[tuple[Node, dict[str, Any]]]:
    """(node, plain) of the job's main container and of each sidecar that is switched on."""
    found = []
    if job.data.get("container"):
        found.append((job.node.at(("container",)), job.data["container"]))
    for name, sidecar in sorted(job.data.get("sidecars", {}).items()):
        if not sidecar.get("when") or context.get(sidecar["when"]):
            found.append((job.node.at(("sidecars", name, "container")), sidecar["container"]))
    return found


def _image_lines(job: Job, recipe: Recipe, context: dict[str, Any]) -> list[str]:
    if recipe.site.runtime != "apptainer":
        return []
    lines = []
    for node, container in _containers(job, context):
        if not container.get("image"):
            continue
        source = container.get("source")
        if not source:
            raise OrchcError.at(node.loc, f"container image '{container['image']}' needs a `source` to build it from")
        lines.append(f"orchc_image {_image_path(container['image'], recipe)} {shlex.quote(source)}")
    return sorted(set(lines), key=lines.index)


def _exec_parts(job: Job, container: dict[str, Any], recipe: Recipe, context: dict[str, Any],
                node: Node | None = None) -> tuple[list[str], list[str]]:
    """(environment assignments, command words) that run a program in `container`."""
    node = node or job.node.at(("container",))
    env = [(k, shell_word(render_string(node.at(("env", k)), context, "text"))) for k in sorted(container.get("env", {}))]
    if recipe.site.runtime != "apptainer" or not container.get("image"):
        return [f"{k}={v}" for k, v in env], []
    # Values that expand variables (secrets among them) travel in apptainer's environment,
    # not on its command line, where `ps` would show them to everyone on the node.
    assignments = [f"APPTAINERENV_{k}={v}" for k, v in env if "$" in v]
    words = ["apptainer", "exec"]
    if container.get("gpu"):
        words.append("--nv")
    for index, _ in enumerate(container.get("binds", ())):
        words += ["--bind", shell_word(render_string(node.at(("binds", index)), context, "text"))]
    words += [f"--env {k}={v}" for k, v in env if "$" not in v]
    words.append(_image_path(container["image"], recipe))
    return assignments, words


def _start_line(job: Job, node: Node, container: dict[str, Any], recipe: Recipe, context: dict[str, Any],
                parts: tuple[list[str], list[str]] | None = None) -> str:
    """The command that starts a container in the background, in a process group of its own."""
    if not container.get("command"):
        raise OrchcError.at(node.loc, f"{job.role} '{job.name}': the container has no `command` to start")
    assignments, words = parts or _exec_parts(job, container, recipe, context, node)
    command = render_string(node.at(("command",)), context)
    return " ".join([*assignments, "setsid", *words, command, "&"])


def _sidecar_lines(job: Job, recipe: Recipe, context: dict[str, Any]) -> list[str]:
    if job.role != "service":
        return []
    sidecars = _containers(job, context)[1 if job.data.get("container") else 0:]
    return [_start_line(job, node, container, recipe, context) for node, container in sidecars]


def _service_command(job: Job, recipe: Recipe, context: dict[str, Any]) -> str:
    if job.role != "service":
        return ""
    if not job.data.get("container"):
        raise OrchcError.at(job.node.loc, f"service '{job.name}' has no container to start")
    return _start_line(job, job.node.at(("container",)), job.data["container"], recipe, context, context["_run_parts"])


def _phase_lines(job: Job, phase: str, context: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    items = job.node.at(("phases", phase))
    if not isinstance(items.value, list) or phase not in job.data.get("phases", {}):
        return lines
    for item in items.value:
        if isinstance(item.value, dict):
            lines.extend(_file_block(item, context))
        else:
            lines.append(render_string(item, context).strip())
    return [line for line in lines if line]


def _file_block(item: Node, context: dict[str, Any]) -> list[str]:
    """A file written by a quoted here-document, so the shell never interprets its content."""
    path = render_string(item.at(("file",)), context, "text")
    content = render_string(item.at(("content",)), context, "text").rstrip("\n")
    delimiter = "ORCHC_EOF"
    while delimiter in content.splitlines():
        delimiter += "_"
    lines = [f"mkdir -p \"$(dirname {shell_word(path)})\"", f"cat > {shell_word(path)} <<'{delimiter}'", content, delimiter]
    hosts = sorted(set(PLACEHOLDER.findall(content)))
    if hosts:
        lines.append(f"orchc_fill_hosts {shell_word(path)} {' '.join(hosts)}")
    mode = item.value.get("mode")
    if mode is not None:
        lines.append(f"chmod {mode.value} {shell_word(path)}")
    return lines


def _secret_line(name: str, ref: dict[str, str]) -> str:
    variable = name.upper()
    if "env" in ref:
        return f'{variable}="${{{ref["env"]}:?orchc: environment variable {ref["env"]} (secret {name}) is not set}}"'
    return f"{variable}=$(orchc_secret_file {shell_word(ref['file'])})"


def _target_lines(job: Job, recipe: Recipe) -> list[str]:
    data = job.data
    timeout = int(data.get("target_timeout", 600))
    if data.get("target"):
        return [f"orchc_wait_endpoint {shlex.quote(data['target'])} {timeout}"]
    port = data.get("target_port")
    if data.get("target_service_id"):
        return [f"TARGET_HOST=$(orchc_job_host {shlex.quote(str(data['target_service_id']))} {timeout})",
                f"TARGET_PORT={shlex.quote(str(port or ''))}"]
    host, endpoint_port = split_endpoint(str(data["target_endpoint"]))
    return [f"TARGET_HOST={shlex.quote(host)}", f"TARGET_PORT={shlex.quote(str(endpoint_port or port or ''))}"]


def split_endpoint(endpoint: str) -> tuple[str, int | None]:
    """`host:port` or a URL -> (host, port or None)."""
    parts = urlsplit(endpoint if "://" in endpoint else f"tcp://{endpoint}")
    return parts.hostname or "", parts.port

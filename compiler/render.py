"""Stage 4, render: a resolved job -> the text of its sbatch script.

The job template (`templates/job.sbatch.j2`) lays out the script; this module
prepares its parts: directives, environment, secrets, images, the container
commands, the phases, and how a client finds its target.
"""

from __future__ import annotations

import os
import re
import shlex
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .directives import directives
from .errors import OrchcError
from .resolve import Job, Recipe
from .resources import builtin_types_dir
from .shell import Raw, shell_word, text_value
from .source import Node
from .templating import ShellValues, environment, host_placeholder, render_shell, render_text, template_line

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CONTROL_IN_VALUES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
PHASE_ORDER = {"service": ("setup", "health_check"), "client": ("setup", "health_check", "benchmark", "results")}


def render_job(job: Job, recipe: Recipe) -> str:
    values = ShellValues()
    context = _context(job, recipe, values)
    parts: dict[str, Any] = {
        "directives": directives(job.name, job.job_id, job.data.get("resources", {})),
        "modules": recipe.site.modules,
        "environment": [f"export {k}={shlex.quote(text_value(v))}" for k, v in sorted(job.data.get("environment", {}).items())],
        "secrets": [_secret_line(name, job.data[name]) for name in sorted(job.typedef.secrets) if name in job.data],
        "images": _image_lines(job, recipe, context),
        "sidecars": _sidecar_lines(job, recipe, context, values),
        "service_command": _service_command(job, recipe, context, values),
        "phases": {phase: _phase_lines(job, phase, context, values) for phase in PHASE_ORDER[job.role]},
        "target": _target_lines(job, recipe) if job.role == "client" else [],
        "clients": recipe_clients(recipe).get(job.name, []),
        "ports": _ports(job),
    }
    parts["fills_hosts"] = any("orchc_fill_hosts " in line for lines in parts["phases"].values() for line in lines)
    parts["values"] = values.assignments
    for key in ("directives", "environment", "secrets", "images", "target", "values"):
        parts[key] = [_code(line, job, multiline=key == "values") for line in parts[key]]
    template = environment("script").get_template("job.sbatch.j2")
    try:
        return str(template.render(job=job, recipe=recipe, site=recipe.site, **parts))
    except ValueError as exc:
        raise OrchcError.at(job.node.loc, f"{job.role} '{job.name}': {exc}") from None


def _code(line: str, job: Job, multiline: bool = False) -> Raw:
    """A line orchc built for the job template: one line, no control characters, whatever the input.

    Value assignments may hold newlines and tabs: they are inside single quotes there.
    """
    if (_CONTROL_IN_VALUES if multiline else _CONTROL).search(line):
        raise OrchcError.at(job.node.loc, f"{job.role} '{job.name}': a value with a control character would reach "
                            f"the script: {line[:60]!r}")
    return Raw(line)


def recipe_clients(recipe: Recipe) -> dict[str, list[str]]:
    """Service name -> the clients of the recipe that target it, built once per recipe."""
    cached = getattr(recipe, "_clients", None)
    if cached is None:
        cached = {}
        for job in recipe.jobs:
            if job.role == "client" and job.data.get("target"):
                cached.setdefault(job.data["target"], []).append(job.name)
        object.__setattr__(recipe, "_clients", cached)
    return cached


def _job_names(recipe: Recipe) -> list[str]:
    cached = getattr(recipe, "_names", None)
    if cached is None:
        cached = [job.name for job in recipe.jobs]
        object.__setattr__(recipe, "_names", cached)
    return cached


def _ports(job: Job) -> list[int]:
    """The ports a service publishes: integers only, whatever a type's schema says."""
    ports = job.data.get("ports") or []
    if not isinstance(ports, list) or not all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in ports):
        raise OrchcError.at(job.node.at(("ports",)).loc, f"{job.role} '{job.name}': ports must be a list of integers "
                            "from 1 to 65535")
    return ports


def _context(job: Job, recipe: Recipe, values: ShellValues) -> dict[str, Any]:
    context: dict[str, Any] = {name: None for name in job.typedef.fields}
    context.update(job.data)
    digest = job.digest[8:24]  # not the part shown as the job id
    context.update(
        job={"name": job.name, "id": job.job_id, "type": job.typedef.name, "role": job.role, "hosts_token": digest},
        recipe=recipe.name,
        jobs=_job_names(recipe),
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
    env = [(k, shell_word(render_text(node.at(("env", k)), context)[0])) for k in sorted(container.get("env", {}))]
    if recipe.site.runtime != "apptainer" or not container.get("image"):
        return [f"{k}={v}" for k, v in env], []
    # Values that expand variables (secrets among them) travel in apptainer's environment,
    # not on its command line, where `ps` would show them to everyone on the node.
    assignments = [f"APPTAINERENV_{k}={v}" for k, v in env if "$" in v]
    words = ["apptainer", "exec"]
    if container.get("gpu"):
        words.append("--nv")
    for index, _ in enumerate(container.get("binds", ())):
        words += ["--bind", shell_word(render_text(node.at(("binds", index)), context)[0])]
    words += [f"--env {k}={v}" for k, v in env if "$" not in v]
    words.append(_image_path(container["image"], recipe))
    return assignments, words


def _start_line(job: Job, node: Node, container: dict[str, Any], recipe: Recipe, context: dict[str, Any],
                values: ShellValues, parts: tuple[list[str], list[str]] | None = None) -> str:
    """The command that starts a container in the background, in a process group of its own."""
    if not container.get("command"):
        raise OrchcError.at(node.loc, f"{job.role} '{job.name}': the container has no `command` to start")
    assignments, words = parts or _exec_parts(job, container, recipe, context, node)
    command_node = node.at(("command",))
    command = render_shell(command_node, context, values)
    line = " ".join([*assignments, "setsid", *words, command, "&"])
    return Raw(f"{_where('start', command_node, line)}\n{line}")


def _sidecar_lines(job: Job, recipe: Recipe, context: dict[str, Any], values: ShellValues) -> list[str]:
    if job.role != "service":
        return []
    sidecars = _containers(job, context)[1 if job.data.get("container") else 0:]
    return [_start_line(job, node, container, recipe, context, values) for node, container in sidecars]


def _service_command(job: Job, recipe: Recipe, context: dict[str, Any], values: ShellValues) -> str:
    if job.role != "service":
        return ""
    if not job.data.get("container"):
        raise OrchcError.at(job.node.loc, f"service '{job.name}' has no container to start")
    return _start_line(job, job.node.at(("container",)), job.data["container"], recipe, context, values,
                       context["_run_parts"])


def _where(phase: str, node: Node, block: str) -> Raw:
    """The line that tells the job's error trap which phase and type line the next lines came from.

    It also records the script line of the block's first line and the block's length, so the
    trap can count forward to the failing line; 0 when Jinja statements make that count unreliable.
    """
    loc = template_line(node, 1)
    exact = isinstance(node.value, str) and "{%" not in node.value
    first = "$((LINENO + 1))" if exact else "0"
    return Raw(f"ORCHC_AT=({phase} {shlex.quote(_type_file(loc.file))} {loc.line} {first} {block.count(chr(10)) + 1})")


@lru_cache(maxsize=1024)
def _type_file(file: str) -> str:
    """A type file as scripts name it: built-in types by their place in orchc, so output does not depend on where it is installed."""
    builtin = builtin_types_dir()
    path = Path(file)
    if path.is_absolute() or not file.startswith("service_defs/"):
        absolute = path if path.is_absolute() else Path(os.path.abspath(file))
        if absolute.parent == builtin:
            return f"service_defs/{absolute.name}"
    return file


def _phase_lines(job: Job, phase: str, context: dict[str, Any], values: ShellValues) -> list[str]:
    lines: list[str] = []
    items = job.node.at(("phases", phase))
    if not isinstance(items.value, list) or phase not in job.data.get("phases", {}):
        return lines
    for item in items.value:
        if isinstance(item.value, dict):
            block = "\n".join(_file_block(item, context))
        else:
            block = render_shell(item, context, values).strip()
        if block:
            lines.append(Raw(f"{_where(phase, item, block)}\n{block}"))
    return lines


def _file_block(item: Node, context: dict[str, Any]) -> list[str]:
    """A file written by a quoted here-document, so the shell never interprets its content."""
    path = render_text(item.at(("file",)), context)[0]
    content, hosts = render_text(item.at(("content",)), context)
    content = content.rstrip("\n")
    delimiter = "ORCHC_EOF"
    while delimiter in content.splitlines():
        delimiter += "_"
    lines = [f"mkdir -p \"$(dirname {shell_word(path)})\"", f"cat > {shell_word(path)} <<'{delimiter}'", content, delimiter]
    if hosts:
        token = context["job"]["hosts_token"]
        pairs = " ".join(shlex.quote(f"{host_placeholder(token, host)}={host}") for host in hosts)
        lines.append(f"orchc_fill_hosts {shell_word(path)} {pairs}")
    mode = item.value.get("mode")
    if mode is not None:
        lines.append(f"chmod {shlex.quote(str(mode.value))} {shell_word(path)}")
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

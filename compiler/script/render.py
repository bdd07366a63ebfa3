"""Stage 4, render: a checked, resolved job -> the text of its sbatch script.

The job template (`templates/job.sbatch.j2`) lays out the script; this module
prepares its parts: directives, environment, secrets, images, the container
commands, the phases, and how a client finds its target. It reads the typed
ResolvedJob, and the recipe's `origins` only for the positioned template strings.

Render only renders: every semantic check ran in the checks stage (compiler/recipe/checks.py).
What can still fail here are rendering errors: a template that does not render or
places a value where the shell would read it as code (templating.py, located at the
type file's line), and the fail-closed guards on the lines orchc builds.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..boundary.quote import Raw, SiteCode, shell_word, text_value
from ..boundary.templating import (
    AUTO_PORT,
    PORT_PLACEHOLDER,
    PortRef,
    ShellValues,
    environment,
    host_placeholder,
    port_variable,
    render_shell,
    render_text,
    template_line,
)
from ..core.errors import OrchcError
from ..core.paths import builtin_types_dir
from ..core.session import CompileSession
from ..core.source import Node, Origins
from ..recipe.checks import PHASES
from ..recipe.resolve import Container, Recipe, ResolvedJob
from ..recipe.typedefs import secret_variable
from .directives import directives, gpus_of
from .images import image_sources
from .runtime import runtime_inlined, runtime_loader
from .shipped import GPU_EXPORTER, PROCESS_EXPORTER, builtin_shipped, file_items, gpu_exporter_of, runs_process_exporter, shipped_file

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CONTROL_IN_VALUES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def render_recipe(recipe: Recipe, self_contained: bool = False) -> dict[str, str]:
    """Job name -> the text of its script."""
    return {job.name: render_job(job, recipe, self_contained) for job in recipe.jobs}


def render_job(job: ResolvedJob, recipe: Recipe, self_contained: bool = False) -> str:
    """The job's script, rendered in the recipe's compile session (its caches, the texts it loaded): it sources
    the output folder's runtime file (runtime.py), or holds it (`self_contained`)."""
    with recipe.session.active():
        return _script_of(job, recipe, self_contained)


def _script_of(job: ResolvedJob, recipe: Recipe, self_contained: bool) -> str:
    origins = recipe.origins[job.name]
    context = _context(job, recipe, origins)
    values = ShellValues(port_token=context["job"]["hosts_token"])
    parts: dict[str, Any] = {
        "directives": directives(job.name, job.job_id, _resources_of(job), recipe.site.reservation_for(job.resources)),
        "shell": recipe.site.shell,
        "module_purge": recipe.site.module_purge,
        "modules": recipe.site.modules,
        "storage": _storage_lines(recipe),
        "environment": [f"export {k}={shlex.quote(text_value(v))}" for k, v in sorted(job.environment.items())],
        "container_env": _container_env_lines(job, recipe),
        "env": _env_lines(job, origins, context, recipe.session),
        "secrets": [_secret_line(name, job.fields[name]) for name in sorted(job.typedef.secrets) if name in job.fields],
        "images": _image_lines(job, recipe, origins),
        "sidecars": _sidecar_lines(job, recipe, origins, context, values),
        "service_command": _service_command(job, recipe, origins, context, values),
        "phases": {phase: _phase_lines(job, recipe, phase, context, values, self_contained) for phase in PHASES[job.role]},
        "target": _target_lines(job) if job.role == "client" else [],
        "clients": recipe.clients_of.get(job.name, []),
        # only a service no client targets waits for them all (computed once per recipe, not once per job)
        "recipe_clients": recipe.client_names if job.role == "service" and not recipe.clients_of.get(job.name) else (),
        "ports": [Raw(port_word(port, f"ports_{index}")) for index, port in enumerate(job.fields.get("ports") or [])],
        "port_choices": port_choices(job),
        "keep_running": bool(job.fields.get("keep_running")),
        "publish_metrics": _publish_metrics_line(job, recipe),
        "health_timeout": int(job.fields.get("health_timeout") or 0),
        "replicas": job.fields.get("replicas") if job.role == "service" else None,
    }
    parts["values"] = values.assignments
    parts["publish_metrics"] = _code(parts["publish_metrics"], job, origins)
    for key in ("directives", "modules", "storage", "environment", "container_env", "secrets", "images", "target", "values", "env"):
        parts[key] = _codes(parts[key], job, origins, multiline=key in ("values", "env"))
    parts["shell"], parts["module_purge"] = (_code(parts[key], job, origins) for key in ("shell", "module_purge"))
    if job.role == "client":
        parts["parameters"] = _code(shlex.quote(parameters_json(job)), job, origins)
        parts["duration"] = int(job.fields["duration"])
    parts["runtime"] = Raw(runtime_inlined() if self_contained else runtime_loader())
    parts["gpu_sampler"] = _gpu_sampler_interval(job)
    parts["gpu_exporter"] = _gpu_exporter_lines(job, recipe, self_contained)
    parts["process_exporter"] = _process_exporter_lines(job, recipe, self_contained)
    template = environment("script").get_template("job.sbatch.j2")
    try:
        return str(template.render(job=job, recipe=recipe, site=recipe.site, **parts))
    except ValueError as exc:
        raise OrchcError.at(origins.loc(), f"{job.role} '{job.name}': {exc}") from None


def _gpu_sampler_interval(job: ResolvedJob) -> Any:
    """The GPU sampler's interval for a job with GPUs (resources.gres asks for gpu, count > 0: gpu, gpu:2,
    gpu:a100:2) and enable_gpu_sampler (base_job.yaml, default true); None for any other job."""
    wanted = gpus_of(str(job.resources.get("gres") or ""))
    return job.fields.get("gpu_sample_interval") if job.fields.get("enable_gpu_sampler") and wanted > 0 else None


def port_word(value: Any, name: str) -> str:
    """A port as the job script writes it: a fixed number, or the variable orchc_ports set for `auto`."""
    return f'"${port_variable(name)}"' if value == AUTO_PORT else str(int(value))


def _metrics_port(job: ResolvedJob, index: int, value: Any) -> tuple[str, Any]:
    """(name, value) of the service's metrics port `index`: `ports[N]` is the service's port N (its name and value)."""
    if isinstance(value, str) and value.startswith("ports["):
        number = int(value[6:-1])
        ports = job.fields.get("ports") or []
        return f"ports_{number}", ports[number] if number < len(ports) else AUTO_PORT
    return f"metrics_ports_{index}", value


def metrics_ports(job: ResolvedJob) -> list[tuple[str, str, Any]]:
    """(source label, port name, value) of each place the job serves Prometheus metrics: the service's own
    `metrics_ports` (labelled with its type), then each switched-on sidecar that declares `metrics:` (exporters,
    node_exporter, cAdvisor), then the process exporter and the GPU exporter of a service that runs them."""
    own = [(job.typedef.name, *_metrics_port(job, index, port)) for index, port in enumerate(job.fields.get("metrics_ports") or [])] \
        if job.role == "service" else []
    sidecars = [(s.metrics[0], s.metrics[1], job.fields[s.metrics[1]]) for s in job.active_sidecars()
                if s.metrics is not None and job.fields.get(s.metrics[1]) is not None]
    kind = gpu_exporter_of(job)
    gpus = [("dcgm_exporter" if kind == "dcgm" else "gpu_exporter", "gpu_exporter_port", job.fields["gpu_exporter_port"])] \
        if kind else []
    processes = [("process", "process_exporter_port", job.fields["process_exporter_port"])] if runs_process_exporter(job) else []
    return own + sidecars + processes + gpus


def metrics_sources(job: ResolvedJob) -> list[tuple[str, str]]:
    """(source label, port as the script writes it) of each place the job serves Prometheus metrics (metrics_ports)."""
    return [(source, port_word(value, name)) for source, name, value in metrics_ports(job)]


def port_choices(job: ResolvedJob) -> list[tuple[str, str]]:
    """(name, fixed number or auto) of each port the job's orchc_ports chooses or checks before anything listens: the
    service's ports, where it serves metrics, and every other port field set to auto (its variable must exist)."""
    if job.role != "service":
        return []
    found = {f"ports_{index}": port for index, port in enumerate(job.fields.get("ports") or [])}
    for _, name, value in metrics_ports(job):
        found.setdefault(name, value)
    # the ports of exporters and sidecars the job does not run are not chosen
    exporters = {"gpu_exporter_port", "process_exporter_port", *(s.metrics[1] for s in job.sidecars if s.metrics is not None)}
    for name, value in sorted(job.fields.items()):
        if name.endswith("_port") and value == AUTO_PORT and name not in exporters:
            found.setdefault(name, value)
    return [(name, str(value)) for name, value in found.items()]


def _ports_in_context(job: ResolvedJob, context: dict[str, Any], token: str) -> None:
    """Each port field set to auto, as templates see it: a reference to the port the job chooses (PortRef)."""
    if job.role != "service":
        return
    if isinstance(context.get("ports"), list):
        context["ports"] = [PortRef(token, f"ports_{index}") if port == AUTO_PORT else port
                            for index, port in enumerate(context["ports"])]
    if isinstance(context.get("metrics_ports"), list):
        context["metrics_ports"] = [_metrics_ref(job, context, index, port, token) for index, port in enumerate(context["metrics_ports"])]
    for name, value in job.fields.items():
        if name.endswith("_port") and value == AUTO_PORT:
            context[name] = PortRef(token, name)


def _metrics_ref(job: ResolvedJob, context: dict[str, Any], index: int, value: Any, token: str) -> Any:
    name, resolved = _metrics_port(job, index, value)
    return PortRef(token, name) if resolved == AUTO_PORT else resolved


def _publish_metrics_line(job: ResolvedJob, recipe: Recipe) -> str:
    """The runtime call that registers the job's metrics sources with the run's Prometheus ('' when it has none)."""
    sources = metrics_sources(job)
    if not sources:
        return ""
    return " ".join(["orchc_publish_metrics", shlex.quote(recipe.name), *(f"{source}={port}" for source, port in sources)])


def _gpu_exporter_lines(job: ResolvedJob, recipe: Recipe, self_contained: bool) -> list[Raw]:
    """The lines that start the job's GPU exporter (orchc_gpu_exporter), with orchc's own exporter put in place first."""
    kind = gpu_exporter_of(job)
    if kind is None:
        return []
    port = port_word(job.fields["gpu_exporter_port"], "gpu_exporter_port")
    if kind == "dcgm":
        return [Raw(f"orchc_gpu_exporter dcgm {port}")]
    path, put = _builtin_program(GPU_EXPORTER, job, recipe, self_contained)
    return [Raw(line) for line in [*put, f"orchc_gpu_exporter nvidia-smi {port} {path}"]]


def _process_exporter_lines(job: ResolvedJob, recipe: Recipe, self_contained: bool) -> list[Raw]:
    """The lines that start the exporter of the service's process tree (orchc_process_exporter), once the service runs."""
    if not runs_process_exporter(job):
        return []
    path, put = _builtin_program(PROCESS_EXPORTER, job, recipe, self_contained)
    line = f'orchc_process_exporter {port_word(job.fields["process_exporter_port"], "process_exporter_port")} {path} "$ORCHC_SERVICE_PID"'
    return [Raw(line) for line in [*put, line]]


def _builtin_program(name: str, job: ResolvedJob, recipe: Recipe, self_contained: bool) -> tuple[str, list[str]]:
    """Where the job puts a program orchc ships by itself, and the lines that put it there: from the output folder's
    copy (checked), or from a here-document of the script (`self_contained`)."""
    shipped = builtin_shipped(name, recipe.session)
    path = f'"$ORCHC_RUN_DIR"/config/{job.name}/{name}'
    if not self_contained:
        return path, [f"orchc_shipped_file {shlex.quote(shipped.name)} {shipped.sha256} {path}"]
    delimiter = "ORCHC_EOF"
    while delimiter in shipped.text.splitlines():
        delimiter += "_"
    return path, [f"mkdir -p \"$ORCHC_RUN_DIR\"/config/{job.name}", f"cat > {path} <<'{delimiter}'",
                  shipped.text.removesuffix("\n"), delimiter]


def parameters_json(job: ResolvedJob) -> str:
    """The job's fields as one line of JSON for its results.json; secrets (references to them) left out."""
    shown = {name: value for name, value in job.fields.items() if name not in job.typedef.secrets}
    return json.dumps(shown, sort_keys=True, ensure_ascii=True)


def _codes(lines: list[str], job: ResolvedJob, origins: Origins, multiline: bool = False) -> list[Raw]:
    """`_code` of each line: one search over all of them (a space joins them, not a control character)."""
    if (_CONTROL_IN_VALUES if multiline else _CONTROL).search(" ".join(lines)) is None:
        return [Raw(line) for line in lines]
    return [_code(line, job, origins, multiline) for line in lines]


def _code(line: str, job: ResolvedJob, origins: Origins, multiline: bool = False) -> Raw:
    """A line orchc built for the job template: one line, no control characters, whatever the input.

    Value assignments may hold newlines and tabs: they are inside single quotes there.
    """
    if (_CONTROL_IN_VALUES if multiline else _CONTROL).search(line):
        raise OrchcError.at(origins.loc(), f"{job.role} '{job.name}': a value with a control character would reach "
                            f"the script: {line[:60]!r}")
    return Raw(line)


def _context(job: ResolvedJob, recipe: Recipe, origins: Origins) -> dict[str, Any]:
    context: dict[str, Any] = {name: None for name in job.typedef.fields}
    context.update(job.values())
    digest = job.digest[8:24]  # not the part shown as the job id
    context.update(
        job={"name": job.name, "id": job.job_id, "type": job.typedef.name, "role": job.role, "hosts_token": digest},
        recipe=recipe.name,
        jobs=recipe.job_names,
        site={"name": recipe.site.name, "runtime": recipe.site.runtime},
        storage=_storage_context(recipe),
    )
    _ports_in_context(job, context, digest)
    container = job.container
    assignments, words = _exec_parts(container, recipe, origins, context) if container else ([], [])
    context["run"] = SiteCode(" ".join([*assignments, *words]))
    context["_run_parts"] = (assignments, words)  # reused to start the service's own container
    return context


_JOB_STORAGE = {"data": "$ORCHC_DATA", "models": "$ORCHC_MODELS"}
"""What the job's storage block sets (see _storage_lines): templates read these, `| path` expands them."""
_APPTAINER_STORAGE = (("apptainer_cache", "CACHEDIR"), ("apptainer_tmp", "TMPDIR"))
"""storage key -> the variable's name after APPTAINER_ (or SINGULARITY_, which singularity reads)"""


def _storage_context(recipe: Recipe) -> dict[str, str]:
    """`storage` in templates: the job's data folder of this run, the model store, and the site's other places."""
    return {**recipe.site.storage, **_JOB_STORAGE}


def _storage_lines(recipe: Recipe) -> list[str]:
    """Where the job keeps what it writes (the site's `storage:`, with the recipe's over it), created up front.

    $ORCHC_RUN names the run (its folder's name and a checksum of its path, so two runs never share a folder
    on the site's storage); every job gets its own data folder of the run, $ORCHC_DATA.
    """
    site = recipe.site
    key = (site.runtime, site.name, tuple(sorted(site.storage.items())))
    return list(recipe.session.once("storage", key, lambda: _storage_block(*key)))


RUN_NAME_LINE = 'ORCHC_RUN="${ORCHC_RUN_DIR##*/}-$(printf \'%s\' "$ORCHC_RUN_DIR" | cksum | cut -d \' \' -f 1)"'
"""the job's line that names its run on the site's storage (orchc clean finds a run's data folders with it)"""


def _storage_block(runtime: str, site_name: str, places: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    storage = dict(places)
    lines = [RUN_NAME_LINE,
             f'ORCHC_DATA={shell_word(storage["data"])}/"$ORCHC_JOB"',
             f"ORCHC_MODELS={shell_word(storage['models'])}",
             "export ORCHC_RUN ORCHC_DATA ORCHC_MODELS"]
    folders = ['"$ORCHC_DATA"', '"$ORCHC_MODELS"']
    if runtime != "native":
        if runtime != "apptainer":   # the runtime's orchc_image builds with it
            lines.append(f"ORCHC_CONTAINER_CLI={runtime}")
        for key, suffix in _APPTAINER_STORAGE:
            variable = f"{runtime.upper()}_{suffix}"
            if storage.get(key):
                lines.append(f"export {variable}={shell_word(storage[key])}")
                folders.append(f'"${variable}"')
    lines.append(f"mkdir -p {' '.join(folders)} || orchc_fail \"cannot create the job's storage folders: see storage: "
                 f"in site profile {shlex.quote(site_name)} or in the recipe\"")
    return tuple(lines)


_BOUND = ("$ORCHC_RUN_DIR", "$ORCHC_DATA", "$ORCHC_MODELS")
"""Bound into every container under apptainer: the run folder, the job's data folder, the model store."""


def _automatic_binds(container: Container, context: dict[str, Any], given: list[str]) -> list[str]:
    """The host paths a job uses, bound into its container: the run folder, the job's data folder and model
    store, and every `*_dir`/`*_directory` field of the job that lies outside them (a data_dir a recipe set)."""
    paths = list(_BOUND)
    for name, value in sorted(context.items()):
        if name.endswith(("_dir", "_directory")) and isinstance(value, str) and value \
                and not any(value == root or value.startswith(root + "/") for root in _BOUND):
            paths.append(value)
    words = [shell_word(path) for path in paths]
    taken = {bind.split(":", 1)[0] for bind in given}
    return sorted(set(words) - taken, key=words.index)


PASSED_INTO_CONTAINERS = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL",
                          "HF_TOKEN", "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
"""What reaches every container from the job's environment under apptainer (`--cleanenv` keeps the rest out): the
GPUs SLURM gave the job, a Hugging Face token for gated models, the site's web proxy; orchc's own variables of the
job (Grafana's provisioning names ${ORCHC_RUN_DIR}); the job's `environment:` and the type's `env:` too."""
_ORCHC_VARIABLES = ("ORCHC_RUN_DIR", "ORCHC_JOB", "ORCHC_TYPE", "ORCHC_RESULTS", "ORCHC_RUN", "ORCHC_DATA", "ORCHC_MODELS")


def _container_env_lines(job: ResolvedJob, recipe: Recipe) -> list[str]:
    """Under apptainer: the line that passes the explicit list into the job's containers (as APPTAINERENV_ variables,
    so no value is on a command line), each only when set."""
    if recipe.site.runtime != "apptainer" or not (job.container or job.active_sidecars()):
        return []
    names = [*PASSED_INTO_CONTAINERS, *_ORCHC_VARIABLES, *sorted(job.environment), *sorted(job.env)]
    return [" ".join(["orchc_pass_into_containers", *dict.fromkeys(names)])]


def _image_path(image: str, recipe: Recipe) -> str:
    return shell_word(f"{recipe.site.image_dir}/{image}.sif")


def _image_lines(job: ResolvedJob, recipe: Recipe, origins: Origins) -> list[str]:
    if not recipe.site.containers:
        return []
    lines = [f"orchc_image {_image_path(found.image, recipe)} {shlex.quote(found.source)}"
             for found in image_sources(job, origins, recipe.session)]
    return sorted(set(lines), key=lines.index)


def _exec_parts(container: Container, recipe: Recipe, origins: Origins,
                context: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(environment assignments, command words) that run a program in `container`."""
    path = container.path
    token = context["job"]["hosts_token"]
    texts = {k: render_text(origins.template((*path, "env", k)), context, recipe.session)[0] for k in sorted(container.env)}
    env = [(k, shell_word(_with_port_references(text, token, False))) for k, text in texts.items()]
    if not recipe.site.containers or not container.image:
        return [f"{k}={v}" for k, v in env], []
    # Values that expand variables (secrets among them) travel in apptainer's environment,
    # not on its command line, where `ps` would show them to everyone on the node.
    runtime = recipe.site.runtime
    assignments = [f"{runtime.upper()}ENV_{k}={v}" for k, v in env if "$" in v]
    words = [runtime, "exec", "--cleanenv"]
    if container.gpu:
        words.append("--rocm" if recipe.site.gpu_vendor == "amd" else "--nv")
    given = [shell_word(render_text(origins.template((*path, "binds", index)), context, recipe.session)[0])
             for index, _ in enumerate(container.binds)]
    for bind in [*_automatic_binds(container, context, given), *given]:
        words += ["--bind", bind]
    words += [f"--env {k}={v}" for k, v in env if "$" not in v]
    words.append(_image_path(container.image, recipe))
    return assignments, words


def _start_line(container: Container, recipe: Recipe, origins: Origins, context: dict[str, Any],
                values: ShellValues, parts: tuple[list[str], list[str]] | None = None) -> str:
    """The command that starts a container in the background, in a process group of its own."""
    assignments, words = parts or _exec_parts(container, recipe, origins, context)
    command_node = origins.template((*container.path, "command"))
    command = render_shell(command_node, context, values, recipe.session)
    line = " ".join([*assignments, "setsid", *words, command, "&"])
    return Raw(f"{_where('start', command_node, line, recipe.session)}\n{line}")


def _sidecar_lines(job: ResolvedJob, recipe: Recipe, origins: Origins, context: dict[str, Any],
                   values: ShellValues) -> list[str]:
    if job.role != "service":
        return []
    return [_start_line(sidecar.container, recipe, origins, context, values) for sidecar in job.active_sidecars()]


def _service_command(job: ResolvedJob, recipe: Recipe, origins: Origins, context: dict[str, Any],
                     values: ShellValues) -> str:
    if job.role != "service" or job.container is None:
        return ""
    if nodes_spanned(job) > 1:
        return _ranks_start(job, recipe, context, values)
    if job.fields.get("replicas") == "per_gpu":
        return _replicas_start(job, recipe, origins, context, values)
    return _start_line(job.container, recipe, origins, context, values, context["_run_parts"])


def nodes_spanned(job: ResolvedJob) -> int:
    """The nodes a job runs ranks on: its resources.nodes when its type declares multi_node, else 1 (the check
    stage refused nodes above 1 on any other type)."""
    return int(job.resources.get("nodes") or 1) if job.typedef.multi_node is not None else 1


def _resources_of(job: ResolvedJob) -> Mapping[str, Any]:
    """The job's resources as its #SBATCH lines ask for them: a job across nodes runs one task per node."""
    nodes = nodes_spanned(job)
    return {**job.resources, "ntasks": nodes} if nodes > 1 else job.resources


def _ranks_start(job: ResolvedJob, recipe: Recipe, context: dict[str, Any], values: ShellValues) -> str:
    """The lines that start a service across nodes: its multi_node command as the function every rank runs
    (in the service's container), then runtime.sh's orchc_ranks_start in the background (README "Across nodes")."""
    multi_node = job.typedef.multi_node
    assert multi_node is not None
    command_node = multi_node.get("command")
    assert command_node is not None
    assignments, words = context["_run_parts"]
    command = render_shell(command_node, context, values, recipe.session)
    body = " ".join([*assignments, *words, command, "$ORCHC_RANK_ARGS"])
    function = ("orchc_rank() {\n    # shellcheck disable=SC2086  # ORCHC_RANK_ARGS: the type's worker_args, split on purpose\n"
                f"    {body}\n}}")
    worker_args = " ".join(str(word) for word in multi_node.plain().get("worker_args", ()))
    secrets = [secret_variable(name) for name in sorted(job.typedef.secrets) if name in job.fields]
    start = " ".join(["orchc_ranks_start", str(nodes_spanned(job)), shlex.quote(worker_args), *secrets, "&"])
    return Raw("\n".join([
        "orchc_ranks_folder",
        str(_where("start", command_node, function, recipe.session)),
        function, start]))


def _replicas_start(job: ResolvedJob, recipe: Recipe, origins: Origins, context: dict[str, Any], values: ShellValues) -> str:
    """The lines that start one engine per GPU: the container's command as the function each replica runs, then
    runtime.sh's orchc_replicas_plan (the job's GPUs, ports from ports[0]) and orchc_replicas_start in the background."""
    assert job.container is not None
    assignments, words = context["_run_parts"]
    command_node = origins.template((*job.container.path, "command"))
    command = render_shell(command_node, context, values, recipe.session)
    function = "orchc_replica() {\n    " + " ".join([*assignments, *words, command]) + "\n}"
    # ports[0] as the ports block at the script's top set it: chosen there when auto, checked there when fixed
    return Raw("\n".join([f'orchc_replicas_plan "${port_variable("ports_0")}"',
                           str(_where("start", command_node, function, recipe.session)), function, "orchc_replicas_start &"]))


def _where(phase: str, node: Node, block: str, session: CompileSession) -> Raw:
    """The line that tells the job's error trap which phase and type line the next lines came from.

    It also records the script lines of the block, so the trap can find the failing line or the
    phase line that called a failing helper, and whether the block's lines follow the type file's
    one for one (not when Jinja statements removed or repeated lines).
    """
    where, exact = session.of_object("where", node, lambda: _where_of(node))
    return Raw(f"ORCHC_AT=({phase} {where} {block.count(chr(10)) + 1} {exact})")


def _where_of(node: Node) -> tuple[str, int]:
    """Where a template's node stands as _where writes it, and whether its lines map one for one."""
    loc = template_line(node, 1)
    exact = isinstance(node.value, str) and "{%" not in node.value
    return f"{shlex.quote(_type_file(loc.file))} {loc.line} $((LINENO + 1))", int(exact)


def _type_file(file: str) -> str:
    """A type file as scripts name it: built-in types by their place in orchc, so output does not depend on where it is installed."""
    builtin = builtin_types_dir()
    path = Path(file)
    if path.is_absolute() or not file.startswith("service_defs/"):
        absolute = path if path.is_absolute() else Path(os.path.abspath(file))
        if absolute.parent == builtin:
            return f"service_defs/{absolute.name}"
    return file


def _phase_lines(job: ResolvedJob, recipe: Recipe, phase: str, context: dict[str, Any],
                 values: ShellValues, self_contained: bool) -> list[str]:
    lines: list[str] = []
    session = recipe.session
    for item in file_items(job, recipe, phase):
        if isinstance(item.value, dict):
            block = "\n".join(_file_block(item, context, session, self_contained))
        else:
            block = render_shell(item, context, values, session).strip()
        if block:
            lines.append(Raw(f"{_where(phase, item, block, session)}\n{block}"))
    return lines


PREPARE = "prepare"
"""the phase a type runs on the login node, in `orchc prepare` (prepare.py), never in its job script"""


def prepare_phase(job: ResolvedJob, recipe: Recipe) -> tuple[list[str], list[str], str] | None:
    """The job's `prepare` phase for the prepare script: (the values it references, its blocks, the type file and
    line it starts at), or None when the job's type has none. Rendered as the job's phases are, in its context."""
    with recipe.session.active():
        items = file_items(job, recipe, PREPARE)
        if not items:
            return None
        origins = recipe.origins[job.name]
        context = _context(job, recipe, origins)
        values = ShellValues()
        blocks = [block for block in (render_shell(item, context, values, recipe.session).strip() for item in items) if block]
        if not blocks:
            return None
        loc = template_line(items[0], 1)
        return ([str(line) for line in _codes(values.assignments, job, origins, multiline=True)], blocks,
                f"{_type_file(loc.file)}:{loc.line}")


def _file_block(item: Node, context: dict[str, Any], session: CompileSession, self_contained: bool) -> list[str]:
    """A file written by a quoted here-document, so the shell never interprets its content: `content:`
    (a template) or `source:` (a file the type ships, verbatim). A shipped file is copied from the output
    folder's copy once its sha256 is checked (shipped.py), unless the script must hold it (`self_contained`)."""
    path = render_text(item.at(("file",)), context, session)[0]
    source = item.get("source")
    if source is not None and not self_contained:
        shipped = shipped_file(source, session)
        return [f"orchc_shipped_file {shlex.quote(shipped.name)} {shipped.sha256} {shell_word(path)}", *_mode_lines(item, path)]
    if source is not None:
        # A program the type ships (files/NAME beside the type file): its bytes verbatim, never a template;
        # the here-document adds the final newline (one is added when the file has none).
        content, hosts = shipped_file(source, session).text.removesuffix("\n"), list[str]()
    else:
        content, hosts = render_text(item.at(("content",)), context, session)
        content = content.rstrip("\n")
    delimiter = "ORCHC_EOF"
    while delimiter in content.splitlines():
        delimiter += "_"
    # with hosts: later the content waits beside the file (orchc_fill_hosts_later), which appears once the hosts are in
    later = bool(hosts) and item.value.get("hosts") is not None and item.value["hosts"].value == "later"
    written = path + PENDING_SUFFIX if later else path
    lines = [f"mkdir -p \"$(dirname {shell_word(path)})\"", f"cat > {shell_word(written)} <<'{delimiter}'", content, delimiter]
    ports = _ports_placed(content, context["job"]["hosts_token"])
    if ports:
        lines.append(" ".join(["orchc_fill_ports", shell_word(written), *(f"{placeholder}={name}" for placeholder, name in ports)]))
    if hosts:
        token = context["job"]["hosts_token"]
        pairs = " ".join(shlex.quote(f"{host_placeholder(token, host)}={host}") for host in hosts)
        lines.append(f"orchc_fill_hosts{'_later' if later else ''} {shell_word(path)} {pairs}")
    return lines + _mode_lines(item, written)


PENDING_SUFFIX = ".orchc-pending"
"""where a file with `hosts: later` waits for its hosts (runtime.sh, orchc_fill_hosts_later)"""


def _mode_lines(item: Node, path: str) -> list[str]:
    mode = item.value.get("mode")
    return [] if mode is None else [f"chmod {shlex.quote(str(mode.value))} {shell_word(path)}"]


def _env_lines(job: ResolvedJob, origins: Origins, context: dict[str, Any], session: CompileSession) -> list[str]:
    """The type's `env:`: each template rendered as text and exported single-quoted, so the job's programs read
    the values as data (the way to hand a value to `sh -c '... "$PEER" ...'`, awk or python); a port the job
    chooses is the one reference in it."""
    token = context["job"]["hosts_token"]
    texts = {name: render_text(origins.template(("env", name)), context, session)[0] for name in sorted(job.env)}
    return [f"export {name}={_with_port_references(shlex.quote(text), token, True)}" for name, text in texts.items()]


def _ports_placed(text: str, token: str) -> list[tuple[str, str]]:
    """(placeholder, port name) of each port of this job (its token) that `text` holds a placeholder of (PortRef)."""
    found = {match.group(0): match.group(2) for match in PORT_PLACEHOLDER.finditer(text) if match.group(1) == token}
    return sorted(found.items())


def _with_port_references(text: str, token: str, single_quoted: bool) -> str:
    """`text` (a single-quoted shell word, or one that shell_word wrote) with this job's port placeholders made references to
    the ports it chose: only orchc's placeholders carry the job's token, so no value can make one."""
    for placeholder, name in _ports_placed(text, token):
        reference = f"${{{port_variable(name)}}}"
        text = text.replace(placeholder, f"'\"{reference}\"'" if single_quoted else reference)
    return text


def _secret_line(name: str, ref: Mapping[str, str]) -> str:
    variable = secret_variable(name)
    if "env" in ref:
        return f'{variable}="${{{ref["env"]}:?orchc: environment variable {ref["env"]} (secret {name}) is not set}}"'
    return f"{variable}=$(orchc_secret_file {shell_word(ref['file'])})"


def _target_lines(job: ResolvedJob) -> list[str]:
    data = job.fields
    timeout = int(data.get("target_timeout", 600))
    if data.get("target"):
        return [f"orchc_wait_endpoint {shlex.quote(data['target'])} {timeout}"]
    port = data.get("target_port")
    if data.get("target_service_id"):
        return [f"orchc_job_host {shlex.quote(str(data['target_service_id']))} {timeout}",
                f"TARGET_PORT={shlex.quote(str(port or ''))}", "TARGET_CREDENTIALS=''"]
    host, endpoint_port = split_endpoint(str(data["target_endpoint"]))
    return [f"TARGET_HOST={shlex.quote(host)}", f"TARGET_PORT={shlex.quote(str(endpoint_port or port or ''))}",
            "TARGET_CREDENTIALS=''"]


def split_endpoint(endpoint: str) -> tuple[str, int | None]:
    """`host:port` or a URL -> (host, port or None)."""
    parts = urlsplit(endpoint if "://" in endpoint else f"tcp://{endpoint}")
    return parts.hostname or "", parts.port

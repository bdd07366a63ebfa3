"""Stage 3, check: every semantic check of a resolved recipe, in one place, before anything is rendered.

Resolve has merged the layers and checked each value against its schema; this stage checks what a
schema cannot say, each problem located at the file:line that set the value (the recipe's `origins`):

- a client's target: exactly one of `target` (a service of this recipe), `target_endpoint` (whose port is
  1-65535) or `target_service_id`; with none, the recipe's only service (decided by resolve);
- `resources.partition` is one of the site's partitions and `resources.qos` one of its QoS names, when the
  site lists them; every resource the site `requires` (MeluXina: `account`) is given: once at the recipe's
  1:1 when no job gives it, else at each job's entry that lacks it;
- `resources.nodes` above 1 only on a type that declares `multi_node:` (how it spans nodes); on any other
  type the extra nodes would be billed and idle;
- secrets are given as `{env: VAR}` or `{file: PATH}`: never a literal, never missing;
- `environment` names nothing that changes how the job's shell or loader behaves (REFUSED_ENVIRONMENT)
  and none of the job's secret variables (it would export the secret to every program the job runs);
- phases: a service runs `setup` and `health_check` only. A service whose phases give `benchmark` or
  `results` items is an error at that phase, not silently ignored (an empty list is allowed, so a
  shared base can clear it);
- containers: a service has one; every container the job starts (the service's own and each
  switched-on sidecar) has a `command`; under apptainer each image to build has a `source`;
- `ports` are integers from 1 to 65535 or `auto` (a port the job chooses, orchc's own variable), whatever a type's schema says.

The container and port checks read a job's parts as their schemas promise them, so they run once the
recipe has no other problem (resolve's and this stage's first ones): a value is never reported twice,
and a missing secret is not drowned by what follows from it. Render assumes a recipe that passed.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Any

from ..boundary.quote import special_variable
from ..core.errors import Collector, did_you_mean, shorten
from ..core.source import Origins, SourceLoc
from .resolve import TARGET_KEYS, Container, Recipe, ResolvedJob
from .typedefs import SHADOWED_VARIABLES, secret_variable

PHASES = {"service": ("setup", "health_check"), "client": ("setup", "health_check", "benchmark", "results")}
"""The phases each role runs, in the order the script runs them."""
PREPARE = "prepare"
"""the phase `orchc prepare` runs on the login node, before any job (a type's model download), never in a job"""

_SHELL_VARIABLES = ("IFS", "ENV", "SHELLOPTS", "PS4", "CDPATH", "GLOBIGNORE", "SLURM_*", "ORCHC_*")
assert set(_SHELL_VARIABLES) <= set(SHADOWED_VARIABLES)

REFUSED_ENVIRONMENT = (*_SHELL_VARIABLES, "BASH_ENV", "BASHOPTS", "BASH_FUNC_*", "BASH_XTRACEFD", "PROMPT_COMMAND",
                       "POSIXLY_CORRECT", "LD_PRELOAD", "LD_AUDIT", "orchc_*")
"""`environment` names refused: each changes how the job's shell parses or runs the script, what SLURM or
orchc itself read, or what the dynamic loader puts into every program. The first are entries of
typedefs.SHADOWED_VARIABLES (the names a secret may not take); `PATH`, `LD_LIBRARY_PATH`, `PYTHONPATH`
and the like stay allowed: HPC jobs set them."""

_ENDPOINT_PORT = re.compile(r"^(?:[a-z][a-z0-9+.-]*://)?[^/:]*:([0-9]+)")


def refused_environment_name(name: str) -> str | None:
    """The entry of REFUSED_ENVIRONMENT that `name` matches, or None."""
    return next((pattern for pattern in REFUSED_ENVIRONMENT if fnmatchcase(name, pattern)), None)


def _check_gpu_exporter(job: ResolvedJob, origins: Origins, recipe: Recipe, problems: Collector) -> None:
    """dcgm only where the site's profile says its nodes have dcgm-exporter (else the job would start none)."""
    site = recipe.site
    if job.fields.get("gpu_exporter") == "dcgm" and site.gpu_exporter != "dcgm":
        problems.add(origins.loc(("gpu_exporter",)), f"gpu_exporter: dcgm: site '{site.name}' does not say its nodes have "
                     f"NVIDIA's dcgm-exporter (its profile has gpu_exporter: {site.gpu_exporter}); use site or "
                     "nvidia-smi, or say gpu_exporter: dcgm in the site profile where they do")


def check_recipe(recipe: Recipe, problems: Collector) -> None:
    """Add the recipe's problems to `problems`, which holds what resolve found in it."""
    services = {job.name: None for job in recipe.jobs if job.role == "service"}   # in recipe order, for hints
    _check_required_resources(recipe, problems)
    earlier: dict[str, None] = {}
    for job in recipe.jobs:
        origins = recipe.origins[job.name]
        what = f"{job.role} '{job.name}'"
        _check_secrets(job, origins, what, recipe.removed_secrets.get(job.name, frozenset()), problems)
        _check_site_lists(job, origins, recipe, problems)
        _check_gpu_exporter(job, origins, recipe, problems)
        if job.role == "client":
            _check_target(job, origins, services, problems)
            _check_after(job, origins, earlier, problems)
            earlier[job.name] = None
        _check_environment(job, origins, what, problems)
        _check_extra_directives(job, origins, what, problems)
        _check_nodes(job, origins, what, problems)
        _check_replicas(job, origins, what, problems)
        _check_phases(job, origins, what, problems)
    if problems.problems:
        return
    for job in recipe.jobs:
        origins = recipe.origins[job.name]
        what = f"{job.role} '{job.name}'"
        _check_ports(job, origins, what, problems)
        _check_containers(job, origins, recipe.site.runtime, what, problems)


def _check_secrets(job: ResolvedJob, origins: Origins, what: str, removed: frozenset[str], problems: Collector) -> None:
    for key in sorted(job.typedef.secrets - removed):
        if job.fields.get(key) is None:
            problems.add(origins.loc(), f"{what} needs {key}: {{env: VARIABLE}} or {{file: PATH}} (a secret; the type "
                         "gives no default)")
    for key in job.typedef.secrets:
        if isinstance(job.fields.get(key), str):
            problems.add(origins.loc((key,)), f"{key} of {what} is a secret and is never written into a script: "
                         f"write `{key}: {{env: VARIABLE}}` (read from the environment when the job runs) or "
                         f"`{key}: {{file: $HOME/.orchc/{key}}}` (a mode 0600 file, created with a random value if missing)")


_REFUSED_EXTRA = {
    "export": "sets the job's environment past the checks of `environment:` (BASH_ENV=... would run code): "
              "write the variables in `environment:`",
    "export-file": "reads the job's environment from a file, past the checks of `environment:`: write the "
                   "variables in `environment:`",
    "get-user-env": "loads a login environment into the job, past the checks of `environment:`",
    "wrap": "would replace the job's script",
    "output": "is orchc's own (the job's log, which orchc reads as slurm-%j.out)",
    "error": "is orchc's own (the job's log, which orchc reads as slurm-%j.err)",
    "job-name": "is orchc's own (run commands find the run's jobs by name)",
    "dependency": "is orchc's own (clients wait for their service with it): use `after:`",
}


def _check_extra_directives(job: ResolvedJob, origins: Origins, what: str, problems: Collector) -> None:
    """`resources.extra` options that would bypass a check or undo what orchc sets itself."""
    for index, item in enumerate(job.resources.get("extra") or ()):
        option = str(item)[2:].split("=", 1)[0]
        why = _REFUSED_EXTRA.get(option)
        if why is not None:
            problems.add(origins.loc(("resources", "extra", index)), f"resources.extra of {what}: --{option} {why}")


def _check_nodes(job: ResolvedJob, origins: Origins, what: str, problems: Collector) -> None:
    """More than one node only for a type that says how it spans them: else the other nodes are billed and idle."""
    nodes = job.resources.get("nodes")
    if isinstance(nodes, int) and nodes > 1 and job.typedef.multi_node is None:
        problems.add(origins.loc(("resources", "nodes")), f"resources.nodes: {what} asks for {nodes} nodes, but type "
                     f"'{job.typedef.name}' runs on one node (it declares no multi_node:): the other nodes would be billed "
                     "and idle; give nodes: 1, or use a type that declares multi_node (README \"Across nodes\")")


def _check_replicas(job: ResolvedJob, origins: Origins, what: str, problems: Collector) -> None:
    """One engine per GPU only on a type that says it can run so: else the recipe would get one engine, silently."""
    replicas = job.fields.get("replicas")
    if replicas == "per_gpu" and replicas not in job.typedef.replicas:  # another value: the field's schema said so
        problems.add(origins.loc(("replicas",)), f"replicas: {what} asks for one engine per GPU, but type "
                     f"'{job.typedef.name}' runs one engine (it declares no replicas:); leave replicas out, or use a type "
                     "that declares replicas: [per_gpu] (README \"One engine per GPU\")")
    nodes = job.resources.get("nodes")
    if replicas == "per_gpu" and isinstance(nodes, int) and nodes > 1:
        problems.add(origins.loc(("replicas",)), f"replicas: {what} asks for one engine per GPU and for {nodes} nodes: "
                     "the replicas run on the job's one node; give nodes: 1, or leave replicas out to span the nodes")


def _check_site_lists(job: ResolvedJob, origins: Origins, recipe: Recipe, problems: Collector) -> None:
    """A partition and a QoS must be among those the site lists (when it lists any)."""
    site = recipe.site
    for key, label, allowed in (("partition", "partition", site.partitions), ("qos", "QoS", site.qos)):
        value = job.resources.get(key)
        if allowed and value not in (None, *allowed):
            problems.add(origins.loc(("resources", key)), f"resources.{key}: site '{site.name}' has no {label} "
                         f"{shorten(value)}{did_you_mean(str(value)[:100], allowed)} (it has: {', '.join(allowed)})")


def _check_required_resources(recipe: Recipe, problems: Collector) -> None:
    """Each resource the site requires: one problem at the recipe's 1:1 when no job gives it (the usual case:
    a recipe written for another site), else one at the entry of each job without it."""
    site = recipe.site
    for key in site.requires:
        missing = [job for job in recipe.jobs if job.resources.get(key) is None]
        how = (f"`{key}: VALUE` at the top of the recipe" if key == "account" else f"`resources: {{{key}: VALUE}}`") \
            + f" or --set resources.{key}=VALUE"
        if missing and len(missing) == len(recipe.jobs):
            problems.add(SourceLoc(recipe.file), f"recipe '{recipe.name}': site '{site.name}' requires "
                         f"resources.{key} for every job ({site.file}); give {how}")
            continue
        for job in missing:
            problems.add(recipe.origins[job.name].loc(), f"{job.role} '{job.name}' of recipe '{recipe.name}' has "
                         f"no resources.{key}, which site '{site.name}' requires; give {how}")


def _check_target(client: ResolvedJob, origins: Origins, services: dict[str, None], problems: Collector) -> None:
    given = [key for key in TARGET_KEYS if client.fields.get(key) is not None]
    target = client.fields.get("target")
    if not given:
        problems.add(origins.loc(), f"client '{client.name}' needs one of target (a service of this recipe), "
                     "target_endpoint (host:port or URL) or target_service_id (a running SLURM job)")
    elif len(given) > 1:
        problems.add(origins.loc((given[1],)), f"client '{client.name}' gives {' and '.join(given)}; give only one")
    elif given == ["target"] and isinstance(target, str) and target not in services:
        problems.add(origins.loc(("target",)), f"client '{client.name}' targets {shorten(target)}, which is not a "
                     f"service of this recipe{did_you_mean(target[:100], services)}")
    endpoint = client.fields.get("target_endpoint")
    found = _ENDPOINT_PORT.match(endpoint) if isinstance(endpoint, str) else None
    if found and (len(found.group(1)) > 5 or not 1 <= int(found.group(1)) <= 65535):
        problems.add(origins.loc(("target_endpoint",)),
                     f"target_endpoint: port {shorten(found.group(1), quoted=False)} is not between 1 and 65535")


def _check_after(client: ResolvedJob, origins: Origins, earlier: dict[str, None], problems: Collector) -> None:
    """`after` names clients listed before this one: the order they are submitted in, which no cycle can break."""
    for index, name in enumerate(client.fields.get("after") or ()):
        if name not in earlier:
            why = "itself" if name == client.name else "no client listed before it"
            problems.add(origins.loc(("after", index)), f"client '{client.name}' waits for {shorten(name)}, which is "
                         f"{why}{did_you_mean(name[:100], earlier)}; `after` names clients of this recipe listed "
                         "before this one")


def _check_environment(job: ResolvedJob, origins: Origins, what: str, problems: Collector) -> None:
    secrets = {secret_variable(name): name for name in job.typedef.secrets}
    for key, names in (("environment", job.environment), ("env", job.env)):
        for name in names:
            # `env:` carries values: none may choose what runs (PATH, LD_LIBRARY_PATH, ...) either
            refused = refused_environment_name(name) or (name if key == "env" and special_variable(name) else None)
            if refused:
                problems.add(origins.key_loc((key, name)), f"{key}: {name} would change how the shell of {what} or "
                             f"the programs it starts behave ({refused}); orchc does not export it")
            elif name in secrets:
                problems.add(origins.key_loc((key, name)), f"{key}: {name} is the variable that holds secret "
                             f"{secrets[name]} of {what}; exporting it would hand the secret to every program the job "
                             "runs: choose another name")
            elif key == "env" and name in job.environment:
                problems.add(origins.key_loc((key, name)), f"env: {name} is set in `environment:` too: keep one")


def _check_phases(job: ResolvedJob, origins: Origins, what: str, problems: Collector) -> None:
    allowed = PHASES[job.role]
    for phase, items in job.phases.items():
        if phase == PREPARE:
            for index, item in enumerate(items or ()):
                if isinstance(item, dict):
                    problems.add(origins.loc(("phases", phase, index)),
                                 f"phases.{phase}: runs on the login node (orchc prepare): shell lines only, no files")
            continue
        if phase not in allowed and items:
            problems.add(origins.key_loc(("phases", phase)), f"phases.{phase}: {what} runs only "
                         f"{' and '.join(allowed)}; a {phase} phase belongs to a client")


def _check_ports(job: ResolvedJob, origins: Origins, what: str, problems: Collector) -> None:
    ports = job.fields.get("ports") or []
    if not isinstance(ports, list) or not all(_port(p) or p == "auto" for p in ports):
        problems.add(origins.loc(("ports",)), f"{what}: ports must be a list of integers from 1 to 65535 or auto")


def _port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536


def _check_containers(job: ResolvedJob, origins: Origins, runtime: str, what: str, problems: Collector) -> None:
    sidecars = [sidecar.container for sidecar in job.active_sidecars()]
    if job.role == "service":
        if job.container is None:
            problems.add(origins.loc(), f"service '{job.name}' has no container to start")
        for container in [*sidecars, *([job.container] if job.container else [])]:
            if not container.command:
                problems.add(origins.loc(container.path), f"{what}: the container has no `command` to start")
    if runtime != "native":
        started: list[Container] = [*([job.container] if job.container else []), *sidecars]
        for container in started:
            if container.image and not container.source:
                problems.add(origins.loc(container.path),
                             f"container image '{container.image}' needs a `source` to build it from")

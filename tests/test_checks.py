"""The checks stage (compiler/recipe/checks.py): every semantic check, located, before anything is rendered;
and the resolved job it reads: one frozen model, which `orchc show` prints."""

from __future__ import annotations

import dataclasses
import re

import pytest

HEADLINE = re.compile(r"^(?P<file>[^\s:]+):(?P<line>\d+):(?P<col>\d+): error: (?P<message>.+)$", re.M)


def _errors(err: str) -> list[tuple[str, int, int, str]]:
    return [(m["file"], int(m["line"]), int(m["col"]), m["message"]) for m in HEADLINE.finditer(err)]


# environment names that would change how the job's shell or loader behaves

REFUSED = ["IFS", "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4", "PROMPT_COMMAND", "BASH_FUNC_x%%",
           "LD_PRELOAD", "LD_AUDIT", "ORCHC_RUN_DIR", "ORCHC_X", "SLURM_JOB_ID", "SLURM_X", "CDPATH", "GLOBIGNORE"]


@pytest.mark.parametrize("name", [n for n in REFUSED if "%" not in n])
def test_environment_name_that_changes_the_shell_is_refused_where_it_is_written(orchc, write, tmp_path, name):
    recipe = write("r.yaml", f"service:\n  name: redis\n  environment:\n    {name}: x\naccount: p200981\n")
    result = orchc("validate", recipe, cwd=tmp_path)
    assert result.code == 1, result.out
    assert "Traceback" not in result.err
    assert any(f == "r.yaml" and (ln, c) == (4, 5) and f"environment: {name} " in msg
               for f, ln, c, msg in _errors(result.err)), result.err


def test_environment_name_refused_at_the_top_level_and_with_set(orchc, write, tmp_path):
    recipe = write("r.yaml", "environment:\n  LD_PRELOAD: /tmp/x.so\nservice:\n  name: redis\naccount: p200981\n")
    result = orchc("validate", recipe, cwd=tmp_path)
    assert result.code == 1 and any((f, ln, c) == ("r.yaml", 2, 3) for f, ln, c, _ in _errors(result.err)), result.err
    result = orchc("validate", write("s.yaml", "service:\n  name: redis\naccount: p200981\n"), "--set", "environment.BASH_ENV=/x",
                   cwd=tmp_path)
    assert result.code == 1 and result.err.startswith("<command line>:1:7: error: environment: BASH_ENV "), result.err


def test_environment_name_refused_in_a_type(orchc, write, tmp_path):
    write("defs/bad.yaml", "type: bad\nextends: redis\ndescription: sets IFS\nenvironment:\n  IFS: ','\n")
    recipe = write("r.yaml", "service:\n  name: s\n  type: bad\naccount: p200981\n")
    result = orchc("validate", recipe, "--defs", tmp_path / "defs", cwd=tmp_path)
    assert result.code == 1
    assert any(f.endswith("defs/bad.yaml") and (ln, c) == (5, 3) for f, ln, c, _ in _errors(result.err)), result.err


def test_environment_name_that_is_a_secret_variable_is_refused(orchc, write, tmp_path):
    recipe = write("r.yaml", "service:\n  name: db\n  type: mysql\n  root_password: {env: DB_PW}\n"
                   "  environment:\n    ROOT_PASSWORD: x\naccount: p200981\n")
    result = orchc("validate", recipe, cwd=tmp_path)
    assert result.code == 1
    assert any((f, ln, c) == ("r.yaml", 6, 5) and "root_password" in msg for f, ln, c, msg in _errors(result.err)), \
        result.err


@pytest.mark.parametrize("name", ["PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "OMP_NUM_THREADS", "ifs", "MY_ENV",
                                  "HF_HOME", "CUDA_VISIBLE_DEVICES"])
def test_environment_names_hpc_users_set_are_allowed(orchc, write, tmp_path, name):
    recipe = write("r.yaml", f"service:\n  name: redis\n  environment:\n    {name}: /opt/x\naccount: p200981\n")
    result = orchc("validate", recipe, cwd=tmp_path)
    assert result.code == 0, result.err


def test_environment_check_knows_every_name_the_brief_lists():
    from compiler.recipe.checks import refused_environment_name

    for name in REFUSED:
        assert refused_environment_name(name), name
    for name in ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "HOME_DIR", "MY_SLURM", "ENVIRONMENT"):
        assert refused_environment_name(name) is None, name


# phases a role does not run

@pytest.mark.parametrize("phase", ["benchmark", "results"])
def test_a_service_with_a_client_phase_is_an_error_at_the_phase(orchc, write, tmp_path, phase):
    write("defs/svc.yaml", f"type: svc\nextends: redis\ndescription: x\nphases:\n  {phase}:\n    - echo never\n")
    recipe = write("r.yaml", "service:\n  name: s\n  type: svc\naccount: p200981\n")
    result = orchc("validate", recipe, "--defs", tmp_path / "defs", cwd=tmp_path)
    assert result.code == 1
    assert any(f.endswith("defs/svc.yaml") and (ln, c) == (5, 3) and phase in msg and "service" in msg
               for f, ln, c, msg in _errors(result.err)), result.err


def test_a_service_phase_given_in_the_recipe_is_located_there(orchc, write, tmp_path):
    recipe = write("r.yaml", "service:\n  name: redis\n  phases:\n    results:\n      - echo x\naccount: p200981\n")
    result = orchc("validate", recipe, cwd=tmp_path)
    assert result.code == 1
    assert any((f, ln, c) == ("r.yaml", 4, 5) for f, ln, c, _ in _errors(result.err)), result.err


def test_an_empty_client_phase_on_a_service_is_allowed(orchc, write, tmp_path):
    recipe = write("r.yaml", "service:\n  name: redis\n  phases:\n    results: []\naccount: p200981\n")
    assert orchc("validate", recipe, cwd=tmp_path).code == 0


# checks that render made one at a time are now all reported by the checks stage, before rendering

def test_render_time_problems_are_all_reported_together(orchc, write, tmp_path):
    write("defs/t.yaml", "type: nocmd\nextends: service\ndescription: x\nfields:\n  ports: {default: [1]}\n"
          "container:\n  image: x\n")
    recipe = write("r.yaml", "services:\n  - name: a\n    type: nocmd\n  - name: b\n    type: nocmd\naccount: p200981\n")
    result = orchc("validate", recipe, "--defs", tmp_path / "defs", cwd=tmp_path)
    assert result.code == 1
    messages = [msg for _, _, _, msg in _errors(result.err)]
    assert sum("has no `command`" in m for m in messages) == 2, result.err
    assert any("needs a `source`" in m for m in messages), result.err


def test_render_raises_no_semantic_error():
    """render.py only renders: the checks live in checks.py (template and shell-boundary errors stay in templating)."""
    from pathlib import Path

    source = (Path(__file__).resolve().parent.parent / "compiler" / "script" / "render.py").read_text()
    assert "needs a `source`" not in source and "no `command`" not in source and "no container" not in source
    assert "65535" not in source


# the resolved job

def _recipe(tmp_path, text: str):
    from compiler.output.pipeline import Options, resolve_all

    path = tmp_path / "r.yaml"
    path.write_text(text)
    return resolve_all([path], Options())[0]


def test_the_resolved_job_is_immutable(tmp_path):
    recipe = _recipe(tmp_path, "service:\n  name: redis\nclient:\n  name: c\n  type: redis_client\naccount: p200981\n")
    client = recipe.job("c")
    assert client.target == "redis"       # the recipe's only service, decided before the job was frozen
    with pytest.raises(dataclasses.FrozenInstanceError):
        client.name = "x"  # type: ignore[misc]
    for mutate in (lambda: client.fields.__setitem__("target", "x"), lambda: client.resources.pop("nodes"),
                   lambda: client.environment.update(IFS="x"), lambda: client.phases["benchmark"].append("x"),
                   lambda: recipe.job("redis").fields["ports"].append(1)):
        with pytest.raises(TypeError):
            mutate()
    assert recipe.job("redis").container is not None and recipe.job("redis").container.image == "redis-7.2.16"


def test_origins_locate_values_and_give_positioned_templates(tmp_path):
    recipe = _recipe(tmp_path, "service:\n  name: redis\n  maxmemory: 4gb\naccount: p200981\n")
    origins = recipe.origins["redis"]
    where = origins.loc(("maxmemory",))
    assert where.file.endswith("r.yaml") and (where.line, where.col) == (3, 14)
    assert origins[("maxmemory",)] == where and dict(origins.items())[("maxmemory",)] == where
    with pytest.raises(KeyError):
        origins[("no_such_field",)]
    assert origins.loc(("target",)) == origins.loc()      # nothing set it: the job's own entry
    with pytest.raises(AttributeError):
        origins.root = None  # type: ignore[misc]
    command = origins.template(("container", "command"))
    assert command.value == recipe.job("redis").container.command
    assert command.loc.file.endswith("service_defs/redis.yaml")


def test_show_prints_the_resolved_job(orchc, write, tmp_path, monkeypatch):
    from compiler.cli import main as cli

    recipe = write("r.yaml", "service:\n  name: redis\nclient:\n  name: c\n  type: redis_client\naccount: p200981\n")
    result = orchc("show", recipe, cwd=tmp_path)
    assert result.code == 0, result.err
    assert "target: redis" in result.out

    # what show prints comes from the resolved job: change the job, and show follows
    import compiler.output.pipeline as pipeline

    real = pipeline.resolve_all

    def altered(paths, options):
        recipes = real(paths, options)
        job = recipes[0].job("c")
        fields = dict(job.fields, target="elsewhere")
        jobs = tuple(dataclasses.replace(j, fields=fields) if j is job else j for j in recipes[0].jobs)
        return [dataclasses.replace(recipes[0], jobs=jobs)]

    monkeypatch.setattr(pipeline, "resolve_all", altered)
    assert cli is not None
    result = orchc("show", recipe, cwd=tmp_path)
    assert "target: elsewhere" in result.out and "target: redis" not in result.out


def test_show_header_survives_a_file_name_with_a_newline(orchc, write, tmp_path):
    from ruamel.yaml import YAML

    recipe = write("r\nx: 1.yaml", "name: r\nservice:\n  name: redis\naccount: p200981\n")
    result = orchc("show", recipe.name, cwd=tmp_path)
    assert result.code == 0, result.err
    documents = list(YAML(typ="safe", pure=True).load_all(result.out))
    assert len(documents) == 1 and documents[0]["name"] == "redis" and "x" not in documents[0]
    lines = result.out.splitlines()
    assert lines[0].startswith("# recipe r (") and "r?x: 1.yaml" in lines[0] and lines[1] == "---"


@pytest.mark.parametrize("option", ["--export=ALL,BASH_ENV=/tmp/x", "--export=NONE", "--export-file=/tmp/env",
                                    "--get-user-env", "--wrap=id", "--output=x.out", "--job-name=other"])
def test_extra_directives_cannot_bypass_the_environment_checks(orchc, write, tmp_path, option):
    """resources.extra: [--export=ALL,BASH_ENV=...] went around the refusal of BASH_ENV in `environment:`."""
    recipe = write("r.yaml", "account: p200981\nservice:\n  name: redis\n  resources:\n    extra:\n"
                             f"      - \"--exclusive\"\n      - \"{option}\"\n")
    result = orchc("validate", recipe, cwd=tmp_path)
    assert result.code == 1 and "Traceback" not in result.err
    first = result.err.splitlines()[0]
    assert first.startswith("r.yaml:7:9: error: resources.extra of service 'redis': --"), first

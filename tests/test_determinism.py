"""Output depends only on the input: the order of jobs in a recipe and of recipes on the command line
changes no job's script, and a value can never forge a run-time host placeholder.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

# Three services naming each other: two prometheus scraping other jobs, a grafana reading one of them.
JOBS = {
    "prom-a": {"name": "prom-a", "type": "prometheus", "monitoring_targets": ["prom-b:9090", "graf:3000"]},
    "prom-b": {"name": "prom-b", "type": "prometheus", "monitoring_targets": ["prom-a:9090", "localhost:8080"]},
    "graf": {"name": "graf", "type": "grafana",
             "datasources": [{"name": "Prometheus", "type": "prometheus", "url": "http://prom-a:9090"}]},
}
# Another recipe using the same types and template lines, with other job names.
OTHER = {"services": [
    {"name": "prom-a", "type": "prometheus", "monitoring_targets": ["graf:3000"]},
    {"name": "graf", "type": "grafana", "datasources": [{"name": "P", "type": "prometheus", "url": "http://prom-a:9090"}]},
    {"name": "x", "type": "prometheus", "monitoring_targets": ["prom-a:9090", "graf:3000"]},
]}


def _scripts(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.sbatch"))}


def _compile(orchc, cwd: Path, *recipes: str, site: str = "local") -> dict[str, dict[str, bytes]]:
    result = orchc("compile", *recipes, "--site", site, "-o", "out", cwd=cwd)
    assert result.code == 0, result.err
    return {Path(r).stem: _scripts(cwd / "out" / Path(r).stem) for r in recipes}


@pytest.mark.parametrize("site", ["local", "meluxina"])
def test_each_job_is_the_same_in_every_order_of_the_recipe(orchc, tmp_path, site):
    seen: dict[str, tuple[tuple[str, ...], bytes]] = {}
    for order in itertools.permutations(JOBS):
        folder = tmp_path / "-".join(order)
        folder.mkdir()
        (folder / "stack.yaml").write_text(json.dumps({"services": [JOBS[name] for name in order], "account": "p200981"}))
        scripts = _compile(orchc, folder, "stack.yaml", site=site)["stack"]
        assert sorted(scripts) == ["graf.sbatch", "prom-a.sbatch", "prom-b.sbatch"]
        for name, text in scripts.items():
            if name not in seen:
                seen[name] = (order, text)
            first_order, first = seen[name]
            assert text == first, f"{name} differs between job orders {first_order} and {order}"


def test_each_job_is_the_same_in_every_order_of_recipes_on_the_command_line(orchc, tmp_path):
    (tmp_path / "stack.yaml").write_text(json.dumps({"services": list(JOBS.values())}))
    (tmp_path / "other.yaml").write_text(json.dumps(OTHER))
    alone = {**_compile(orchc, tmp_path, "stack.yaml"), **_compile(orchc, tmp_path, "other.yaml")}
    for order in (["stack.yaml", "other.yaml"], ["other.yaml", "stack.yaml"]):
        together = _compile(orchc, tmp_path, *order)
        assert together == alone, f"compiling {order} together changed a script"


PLACEHOLDER = re.compile(r"@ORCHC_HOST[^:@\s]*:([A-Za-z0-9_.-]+)@")


def _hosts_in(line: str) -> list[str]:
    return sorted(set(PLACEHOLDER.findall(line)))


def test_placeholders_name_the_jobs_the_config_names(orchc, tmp_path):
    """The hosts filter's output checked against the recipe (not only against another order)."""
    (tmp_path / "stack.yaml").write_text(json.dumps({"services": [JOBS["graf"], JOBS["prom-b"], JOBS["prom-a"]]}))
    scripts = {name: text.decode() for name, text in _compile(orchc, tmp_path, "stack.yaml")["stack"].items()}
    wanted = {  # job -> (hosts in its config's scrape targets / datasource url, hosts it waits for)
        "prom-a": (["graf", "prom-b"], ["graf", "prom-b"]),
        "prom-b": (["prom-a"], ["prom-a"]),
        "graf": (["prom-a"], ["prom-a"]),
    }
    for name, (in_config, waited) in wanted.items():
        text = scripts[f"{name}.sbatch"]
        config = [line for line in text.splitlines() if any(key in line for key in ("targets:", '"targets":', "url:"))]
        assert sorted({h for line in config for h in _hosts_in(line)}) == in_config, (name, config)
        fills = [line for line in text.splitlines() if line.startswith(("orchc_fill_hosts ", "orchc_fill_hosts_later "))]
        named = {h for line in fills for h in (_hosts_in(line) or line.split()[2:])}
        assert sorted(named) == waited, (name, fills)
    assert "localhost:8080" in scripts["prom-b.sbatch"]


def test_a_job_does_not_inherit_placeholders_from_an_earlier_compile(orchc, tmp_path):
    """Same recipe name, same job values, but `x` is a job in one recipe and not in the other: only the
    recipe with job `x` waits for it (a render cache that ignores the recipe's jobs breaks this)."""
    job = {"name": "p", "type": "prometheus", "monitoring_targets": ["x:9090"]}
    for folder, other in (("with", "x"), ("without", "y")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "stack.yaml").write_text(json.dumps({"services": [job, {"name": other, "type": "redis"}]}))
    first = _compile(orchc, tmp_path, "without/stack.yaml")["stack"]["p.sbatch"]
    for _ in range(3):
        with_x = _compile(orchc, tmp_path, "with/stack.yaml")["stack"]["p.sbatch"].decode()
        assert PLACEHOLDER.findall(with_x) and set(PLACEHOLDER.findall(with_x)) == {"x"}, "p must wait for job x"
    again = _compile(orchc, tmp_path, "without/stack.yaml")["stack"]["p.sbatch"]
    assert again == first, "the script of a job changed after other recipes were compiled in the same process"
    assert not PLACEHOLDER.search(again.decode()), "p waits for a job `x` its recipe does not have"


SCRAPER = """type: scraper
extends: service
description: writes its targets into a config file; the template reads nothing but `targets`
fields:
  ports: {default: [9100]}
  targets: {type: array, items: {type: string, pattern: '^[a-z]+:[0-9]+$'}}
container:
  command: sleep 1
phases:
  setup:
    - file: "$ORCHC_RUN_DIR/scraper.json"
      content: "{{ targets | hosts | json }}"
"""


def test_recipes_in_any_order_on_one_command_line_give_the_same_scripts(orchc, tmp_path):
    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "scraper.yaml").write_text(SCRAPER)
    job = {"name": "s", "type": "scraper", "targets": ["x:1"]}
    recipes = {"one": [job, {"name": "x", "type": "redis"}], "two": [job, {"name": "x", "type": "redis"}],
               "three": [job, {"name": "y", "type": "redis"}]}
    for name, services in recipes.items():
        (tmp_path / f"{name}.yaml").write_text(json.dumps({"services": services}))
    results = []
    for order in itertools.permutations(recipes):
        result = orchc("compile", *(f"{n}.yaml" for n in order), "--defs", "defs", "--site", "local", "-o", "out",
                       cwd=tmp_path)
        assert result.code == 0, result.err
        results.append((order, {n: _scripts(tmp_path / "out" / n) for n in recipes}))
    first_order, first = results[0]
    for order, scripts in results[1:]:
        for name in recipes:
            assert scripts[name] == first[name], f"recipe {name} differs between orders {first_order} and {order}"
    assert not PLACEHOLDER.search(first["three"]["s.sbatch"].decode()), "s of recipe three waits for a job x it lacks"


def _many_jobs(order: list[int]) -> str:
    """Services and clients of several types sharing template lines: some with equal values, some not,
    some naming other jobs of the recipe (the `hosts` filter), one with GPUs (the sampler's runtime part)."""
    jobs = []
    for i in order:
        kind = i % 4
        if kind == 0:
            jobs.append({"name": f"redis{i}", "type": "redis", "maxmemory": f"{1 + i % 3}gb"})
        elif kind == 1:
            jobs.append({"name": f"prom{i}", "type": "prometheus", "monitoring_targets": [f"redis{i - 1}:9121", "graf:3000"]})
        elif kind == 2:
            jobs.append({"name": f"ollama{i}", "type": "ollama",
                         "resources": {"gres": "gpu:1", "partition": "gpu"} if i % 8 == 2 else {}})
        else:
            jobs.append({"name": f"mysql{i}", "type": "mysql", "database": f"db{i % 2}"})
    jobs.append({"name": "graf", "type": "grafana",
                 "datasources": [{"name": "P", "type": "prometheus", "url": "http://prom1:9090"}]})
    clients = [{"name": f"bench{i}", "type": "redis_client", "target": f"redis{i}", "clients": 1 + i % 2}
               for i in order if i % 4 == 0]
    return json.dumps({"name": "many", "account": "p200981", "services": jobs, "clients": clients})


def test_render_caches_change_no_byte(orchc, tmp_path, monkeypatch):
    """Every cache of renders (templates met again) gives the bytes a compile
    without caches gives, in any order of the jobs."""
    outputs = []
    for caching, order in ((True, list(range(24))), (False, list(range(24))), (True, list(range(23, -1, -1))),
                           (False, [5, 17, 2, 11, 0, 23, 8, 14, 20, 1, 9, 3, 22, 6, 15, 12, 19, 4, 10, 16, 7, 13, 21, 18])):
        if caching:
            monkeypatch.delenv("ORCHC_NO_CACHE", raising=False)
        else:
            monkeypatch.setenv("ORCHC_NO_CACHE", "1")
        folder = tmp_path / f"{caching}-{order[0]}"
        folder.mkdir()
        (folder / "many.yaml").write_text(_many_jobs(order))
        outputs.append(_compile(orchc, folder, "many.yaml", site="meluxina")["many"])
    assert len(outputs[0]) == 31
    for other in outputs[1:]:
        assert other == outputs[0]


def test_job_digests_hash_the_canonical_json_of_the_whole_job(monkeypatch):
    """The digest (and the job id shown in scripts) is the sha256 of the job's canonical JSON, whether or
    not parts of it were encoded once for every job of the type."""
    import glob
    import hashlib

    from conftest import ROOT

    from compiler.output.pipeline import Options, resolve_all
    from compiler.recipe import resolve

    def canonical(recipe, site, data):
        return hashlib.sha256(json.dumps({"recipe": recipe, "site": site, "job": data}, sort_keys=True,
                                         separators=(",", ":")).encode()).hexdigest()

    compared = []
    built = resolve._job_digest

    def both(recipe, site, data, base):
        compared.append((built(recipe, site, data, base), canonical(recipe, site, data)))
        return compared[-1][0]

    monkeypatch.setattr(resolve, "_job_digest", both)
    for recipe in sorted(glob.glob(str(ROOT / "examples" / "*.yaml"))):
        resolve_all([Path(recipe)], Options())
        resolve_all([Path(recipe)], Options(site="local"))
    assert len(compared) > 50
    assert all(ours == expected for ours, expected in compared)


def test_values_of_a_shared_base_are_checked_again_until_they_passed_once():
    """resolve._validated remembers, in each base (site defaults, type, recipe top merged), the base's values
    that passed their checks in one job, and checks only the others in the next: a base value that fails is
    reported for every job, and a value a job gives in place of a base value that passed is still checked."""
    from compiler.core.errors import Collector
    from compiler.core.source import Node, SourceLoc, from_plain
    from compiler.recipe import resolve
    from compiler.recipe.typedefs import Registry

    typedef = Registry([]).resolve("redis")
    at = SourceLoc("r.yaml", 3, 1)

    def problems_of(base: resolve._Base, node: Node) -> list[str]:
        found = Collector()
        resolve._validated(node, typedef, base, "service 'r'", found, set())
        return [problem.message for problem in found.problems]

    def job(base: resolve._Base, **given) -> Node:
        return Node({**base.node.value, **{k: from_plain(v, at) for k, v in given.items()}}, at)

    bad = resolve._Base(Node({**typedef.layer.value, "maxmemory": from_plain("12zz", at)}, at))
    first = problems_of(bad, job(bad))
    assert first and problems_of(bad, job(bad)) == first and problems_of(bad, job(bad)) == first
    good = resolve._Base(Node({**typedef.layer.value, "maxmemory": from_plain("12mb", at)}, at))
    assert problems_of(good, job(good)) == [] and problems_of(good, job(good)) == []
    assert good.passed == {"maxmemory"}
    assert problems_of(good, job(good, maxmemory="7zz")) != []
    assert problems_of(good, job(good, maxmemory="7mb")) == []


def test_a_compile_lets_go_of_the_types_of_the_compiles_before_it():
    """The caches of resolve and render hold values, not the types (with their validators) of each compile: a
    process that compiles recipe after recipe (the tests; a library user) does not grow with them."""
    import gc
    import weakref

    from conftest import ROOT

    from compiler.output.pipeline import Options, resolve_all
    from compiler.script.render import render_recipe

    recipes = resolve_all([ROOT / "examples" / "redis.yaml"], Options())
    render_recipe(recipes[0])
    first = weakref.ref(recipes[0].jobs[0].typedef)
    del recipes
    for _ in range(3):
        for recipe in resolve_all([ROOT / "examples" / "redis.yaml"], Options()):
            render_recipe(recipe)
    gc.collect()
    assert first() is None

"""The speed benchmark's tools (benchmarks/floor.py, benchmarks/speed.py) do what they claim; no timings."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module                      # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


floor = _module("floor")
speed = _module("speed")


def test_the_floor_template_renders_back_to_the_golden_bytes():
    golden = floor.DEFAULT_GOLDEN.read_bytes()
    source, values = floor.make_template(golden.decode("utf-8"))
    assert len(values) == len(floor.SLOTS) == 29
    assert all("{{ " + variable + " }}" in source for variable in values)
    assert len(set(values.values())) >= 20               # most slots hold distinct values
    template = floor.environment().from_string(source)
    assert template.render(values).encode("utf-8") == golden
    assert template.render(floor.job_values(values, 7)).encode("utf-8") != golden


def test_the_round_trip_check_fails_when_the_template_loses_bytes(monkeypatch):
    import jinja2
    # without keep_trailing_newline the golden script's last newline is lost: load must refuse that template
    monkeypatch.setattr(floor, "environment", lambda: jinja2.Environment(autoescape=False))
    with pytest.raises(AssertionError, match="does not render back"):
        floor.load(floor.DEFAULT_GOLDEN)


def test_a_slot_missing_from_the_golden_script_is_an_error():
    text = floor.DEFAULT_GOLDEN.read_text().replace("#SBATCH --account=", "#SBATCH --acct=")
    with pytest.raises(ValueError, match="slot account"):
        floor.make_template(text)


def test_floor_writes_one_script_per_job_with_that_jobs_values(tmp_path):
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "floor.py"), "4", str(out)], check=True)
    files = sorted(out.iterdir())
    assert [path.name for path in files] == [f"job{i:06d}.sbatch" for i in range(4)]
    golden = floor.DEFAULT_GOLDEN.read_text()
    _source, values = floor.make_template(golden)
    texts = [path.read_text() for path in files]
    assert len(set(texts)) == 4 and golden not in texts
    for index, text in enumerate(texts):
        assert f"#SBATCH --account={values['v02']}{index}\n" in text
        assert f"#SBATCH --cpus-per-task={int(values['v07']) + index}\n" in text
        assert abs(len(text) - len(golden)) < 400         # about the golden script's size


def test_floor_imports_mode_imports_the_three_libraries():
    """What the process run by `floor.py --imports` imported, as Python's own import log records it."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "floor.py"), "--imports"], check=True,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert {"jsonschema", "jinja2", "ruamel.yaml"} <= imported, sorted(imported)
    assert not any(name == "compiler" or name.startswith("compiler.") for name in imported)   # the libraries alone


def _compile(orchc, recipes: list[Path], out: Path) -> dict[str, dict]:
    result = orchc("compile", *recipes, "-o", out)
    assert result.code == 0, result.err
    assert speed.count_scripts(out) == sum(1 for _ in out.glob("*/*.sbatch"))
    jobs = {}
    for manifest in out.glob("*/manifest.json"):
        jobs.update({job["name"]: job for job in json.loads(manifest.read_text())["jobs"]})
    return jobs


def test_one_recipe_of_n_jobs_compiles_to_n_scripts_each_client_on_its_own_service(orchc, tmp_path):
    recipes = speed.write_recipes(tmp_path / "recipes", 20)
    assert len(recipes) == 1
    out = tmp_path / "out"
    jobs = _compile(orchc, recipes, out)
    assert speed.count_scripts(out) == 20
    services = [job for job in jobs.values() if job["role"] == "service"]
    clients = [job for job in jobs.values() if job["role"] == "client"]
    assert len(services) == len(clients) == 10
    assert sorted(job["target"] for job in clients) == sorted(job["name"] for job in services)
    assert all(job["target"][len("redis"):] == job["name"][len("bench"):] for job in clients)
    text = recipes[0].read_text()
    assert len({line for line in text.splitlines() if "maxmemory:" in line}) == 10
    assert len({line for line in text.splitlines() if "clients: " in line}) == 10


def test_recipes_of_ten_jobs_compile_to_as_many_scripts(orchc, tmp_path):
    recipes = speed.write_recipes(tmp_path / "recipes", 30, 10)
    assert len(recipes) == 3
    out = tmp_path / "out"
    jobs = _compile(orchc, recipes, out)
    assert speed.count_scripts(out) == 30 == len(jobs)
    assert len({path.parent for path in out.glob("*/*.sbatch")}) == 3


def test_a_jobs_count_that_does_not_split_is_refused(tmp_path):
    with pytest.raises(ValueError):
        speed.write_recipes(tmp_path, 25, 10)


@pytest.mark.parametrize("clients, pipelines, repeat", [(5, 4, 1), (2, 3, 2)])
def test_the_sweep_recipe_makes_one_client_job_per_point_and_repeat_and_one_service(orchc, write, tmp_path,
                                                                                      clients, pipelines, repeat):
    recipe = write("sweep.yaml", speed.sweep_recipe(clients, pipelines, repeat))
    points = orchc("show", recipe, "--points")
    assert points.code == 0, points.err
    assert sum(1 for line in points.out.splitlines() if re.match(r"p\d+ ", line)) == clients * pipelines
    out = tmp_path / "out"
    jobs = _compile(orchc, [recipe], out)
    assert speed.count_scripts(out) == speed.sweep_jobs(clients, pipelines, repeat) == clients * pipelines * repeat + 1
    assert [job["name"] for job in jobs.values() if job["role"] == "service"] == ["redis"]


def test_measure_reports_the_childs_own_status_peak_memory_and_timeout(tmp_path):
    grow = "import sys; block = bytearray(200 * 1024 * 1024); block[::4096] = b'x' * len(block[::4096]); sys.exit(3)"
    run = speed.measure([sys.executable, "-c", grow], 60, ROOT, tmp_path)
    assert run.status == 3 and not run.timed_out
    assert run.rss_kb > 200 * 1024                       # the child's 200 MiB, not this process's
    held = bytearray(300 * 1024 * 1024)                  # this process grows; a small child's figure must not
    held[::4096] = b"x" * len(held[::4096])
    small = speed.measure([sys.executable, "-c", "pass"], 60, ROOT, tmp_path)
    assert small.status == 0 and small.rss_kb < 100 * 1024
    del held
    stopped = speed.measure([sys.executable, "-c", "import time; time.sleep(30)"], 1, ROOT, tmp_path)
    assert stopped.timed_out and stopped.status != 0

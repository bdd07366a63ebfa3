"""Output folders: `orchc compile -o DIR` writes only inside DIR, deletes only what it wrote, and
leaves one consistent set of files when compiles race or die."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

RECIPE = "site: local\nservice:\n  name: redis\nclient:\n  name: bench\n  type: redis_client\n"


def compile_(tmp_path: Path, *args: object, recipe: str = "r.yaml") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "compiler", "compile", recipe, *map(str, args)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_recipe_folder_that_is_a_symlink_out_of_dir_is_not_written_through(tmp_path):
    (tmp_path / "r.yaml").write_text(RECIPE)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    (victim / "manifest.json").write_text(json.dumps({"recipe": "r", "files": ["precious.txt"],
                                                      "jobs": [{"script": "precious.txt"}]}))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "r").symlink_to(victim)
    done = compile_(tmp_path, "-o", "out")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("orchc: error: ") and "symbolic link" in done.stderr
    assert sorted(p.name for p in victim.iterdir()) == ["manifest.json", "precious.txt"]
    assert (victim / "precious.txt").read_text() == "keep me"


def test_a_forged_manifest_deletes_nothing(tmp_path):
    (tmp_path / "r.yaml").write_text(RECIPE)
    folder = tmp_path / "build" / "r"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    (folder / "manifest.json").write_text(json.dumps({"recipe": "r", "generator": "orchc", "digest": "sha256:0",
                                                      "files": ["notes.txt"], "jobs": [{"script": "notes.txt"}]}))
    done = compile_(tmp_path)
    assert done.returncode == 0, done.stderr
    assert (folder / "notes.txt").read_text() == "mine"


def test_files_a_previous_compile_wrote_are_removed_and_unchanged_files_keep_their_mtime(tmp_path):
    (tmp_path / "r.yaml").write_text(RECIPE)
    assert compile_(tmp_path).returncode == 0
    folder = tmp_path / "build" / "r"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["generator"] == "orchc" and manifest["digest"].startswith("sha256:")
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    time.sleep(0.01)
    assert compile_(tmp_path).returncode == 0
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    (tmp_path / "r.yaml").write_text(RECIPE.replace("  name: bench", "  name: bench2"))
    assert compile_(tmp_path).returncode == 0
    assert sorted(p.name for p in folder.iterdir()) == ["bench2.sbatch", "manifest.json", "redis.sbatch", "submit.sh"]
    assert not [p for p in (tmp_path / "build").iterdir() if p.is_dir() and p.name != "r"]   # no staging folder left


def test_a_hand_edited_output_is_not_cleaned_up(tmp_path):
    (tmp_path / "r.yaml").write_text(RECIPE)
    assert compile_(tmp_path).returncode == 0
    folder = tmp_path / "build" / "r"
    (folder / "bench.sbatch").write_text("# my own edits\n")
    (tmp_path / "r.yaml").write_text(RECIPE.replace("client:\n  name: bench\n  type: redis_client\n", ""))
    assert compile_(tmp_path).returncode == 0
    assert (folder / "bench.sbatch").read_text() == "# my own edits\n"


def test_concurrent_compiles_leave_one_consistent_set(tmp_path):
    variants = []
    for index in range(6):
        text = RECIPE.replace("  name: bench", f"  name: bench{index}") + f"  requests: {1000 + index}\n"
        (tmp_path / f"r{index}.yaml").write_text(text.replace("service:", "name: r\nservice:"))
        variants.append(f"r{index}.yaml")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(3):
        procs = [subprocess.Popen([sys.executable, "-m", "compiler", "compile", name], cwd=tmp_path, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for name in variants]
        assert all(proc.wait(timeout=120) == 0 for proc in procs)
        folder = tmp_path / "build" / "r"
        manifest = json.loads((folder / "manifest.json").read_text())
        listed = set(manifest["files"])
        assert {p.name for p in folder.iterdir()} == listed
        (client,) = [job["name"] for job in manifest["jobs"] if job["role"] == "client"]
        assert f"{client}.sbatch" in (folder / "submit.sh").read_text()
        assert "bench.sbatch" not in listed


def test_a_killed_compile_leaves_no_temporary_files_among_the_outputs(tmp_path):
    (tmp_path / "r.yaml").write_text(RECIPE)
    assert compile_(tmp_path).returncode == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for delay in (0.05, 0.15, 0.3, 0.45, 0.6):
        (tmp_path / "r.yaml").write_text(RECIPE + f"  requests: {int(delay * 1000)}\n")
        proc = subprocess.Popen([sys.executable, "-m", "compiler", "compile", "r.yaml"], cwd=tmp_path, env=env)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert compile_(tmp_path).returncode == 0
    folder = tmp_path / "build" / "r"
    assert sorted(p.name for p in folder.iterdir()) == ["bench.sbatch", "manifest.json", "redis.sbatch", "submit.sh"]
    assert not [p for p in (tmp_path / "build").iterdir() if p.is_dir() and p.name != "r"]


DIVIDING_TYPE = """type: divider
extends: service
fields:
  divisor: {type: integer, minimum: 0, default: 1}
container:
  image: busybox
  source: docker://busybox:1.36
  command: sleep {{ 60 // divisor }}
"""


def test_a_render_error_writes_nothing_of_any_recipe(tmp_path):
    """Scripts are rendered, staged and let go one at a time: a job that fails to render, even the last,
    leaves every recipe's folder as it was, and no staged file behind."""
    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "divider.yaml").write_text(DIVIDING_TYPE)
    jobs = "".join(f"  - {{name: d{i}, type: divider, divisor: {1 + i}}}\n" for i in range(5))
    (tmp_path / "a.yaml").write_text("site: local\nservices:\n" + jobs)
    (tmp_path / "b.yaml").write_text("site: local\nservices:\n" + jobs)
    assert compile_(tmp_path, "b.yaml", "-o", "out", "--defs", "defs", recipe="a.yaml").returncode == 0
    before = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert len(before) == 2 * 7 + 1   # 5 scripts, submit.sh and manifest.json per recipe, and the lock

    (tmp_path / "a.yaml").write_text("site: local\nservices:\n" + jobs.replace("divisor: 2", "divisor: 7"))
    (tmp_path / "b.yaml").write_text("site: local\nservices:\n" + jobs.replace("divisor: 5", "divisor: 0"))
    done = compile_(tmp_path, "b.yaml", "-o", "out", "--defs", "defs", recipe="a.yaml")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "defs/divider.yaml:8:12: error: template error" in done.stderr and "division" in done.stderr
    after = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert after == before
    assert not (tmp_path / "out" / ".orchc-tmp").exists()


def test_streamed_and_in_memory_outputs_are_the_same_bytes(tmp_path):
    """`compile -o` (one script at a time) and `compile --stdout` (in memory) render the same scripts."""
    jobs = "".join(f"  - {{name: r{i}, type: redis, maxmemory: {i + 1}mb}}\n" for i in range(12))
    (tmp_path / "r.yaml").write_text("site: local\nservices:\n" + jobs)
    assert compile_(tmp_path, "-o", "out").returncode == 0
    printed = compile_(tmp_path, "--stdout").stdout
    for script in sorted((tmp_path / "out" / "r").glob("*.sbatch")):
        assert f"# ==> r/{script.name} <==\n{script.read_text()}\n" in printed
    assert printed.count("# ==> ") == 12


def _many_dividers(count: int, zero_at: int | None = None) -> str:
    """`count` divider services (over workers.PARALLEL_FROM: a second process renders some of them)."""
    return "site: local\nservices:\n" + "".join(
        f"  - {{name: d{i:04d}, type: divider, divisor: {0 if i == zero_at else 1 + i % 7}}}\n" for i in range(count))


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_rendering_processes_write_the_bytes_one_writes(tmp_path):
    from compiler.output.workers import PARALLEL_FROM

    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "divider.yaml").write_text(DIVIDING_TYPE)
    (tmp_path / "r.yaml").write_text(_many_dividers(PARALLEL_FROM + 44))
    trees = []
    for workers, out in (("1", "one"), ("2", "two"), ("2", "two")):   # the last: unchanged files left alone
        done = subprocess.run([sys.executable, "-m", "compiler", "compile", "r.yaml", "--defs", "defs", "-o", out],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "ORCHC_WORKERS": workers})
        assert done.returncode == 0, done.stderr
        trees.append(_tree(tmp_path / out))
    assert trees[0] == trees[1] == trees[2]
    assert len(trees[0]) == PARALLEL_FROM + 44 + 3   # the scripts, submit.sh, manifest.json and the lock


@pytest.mark.parametrize("zero_at", [3, 290], ids=["an early script", "a late script"])
def test_a_render_error_in_either_process_is_the_one_compile_gives_and_writes_nothing(tmp_path, zero_at):
    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "divider.yaml").write_text(DIVIDING_TYPE)
    (tmp_path / "r.yaml").write_text(_many_dividers(300, zero_at))
    errors = []
    for workers in ("1", "2"):
        done = subprocess.run([sys.executable, "-m", "compiler", "compile", "r.yaml", "--defs", "defs", "-o", "out"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "ORCHC_WORKERS": workers})
        assert done.returncode == 1 and "Traceback" not in done.stderr
        errors.append(done.stderr)
        assert not (tmp_path / "out").exists()
    assert errors[0] == errors[1]
    assert "defs/divider.yaml:8:12: error: template error: integer division or modulo by zero" in errors[0]


def _small_recipes(folder: Path, count: int, zero_in: tuple[int, ...] = ()) -> list[str]:
    """`count` recipes of 3 divider services each (together over workers.PARALLEL_FROM scripts); the recipes
    numbered in `zero_in` divide by zero in their second job."""
    names = []
    for number in range(count):
        jobs = "".join(f"  - {{name: d{i}, type: divider, divisor: {0 if number in zero_in and i == 1 else i + 1}}}\n"
                       for i in range(3))
        (folder / f"r{number:03d}.yaml").write_text("site: local\nservices:\n" + jobs)
        names.append(f"r{number:03d}.yaml")
    return names


def test_many_small_recipes_share_the_two_processes_with_the_bytes_and_errors_of_one(tmp_path):
    """The scripts of all recipes go into one queue: 100 recipes of 3 scripts are rendered by two processes,
    with the bytes one process writes, also when the output exists, and holding few folders open (a limit
    of 64 open files); render errors in two recipes are reported as one process reports them."""
    import resource

    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "divider.yaml").write_text(DIVIDING_TYPE)
    recipes = _small_recipes(tmp_path, 100)

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    def compile_with(workers: str, out: str, *names: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "compiler", "compile", *names, "--defs", "defs", "-o", out],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120, preexec_fn=limited,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "ORCHC_WORKERS": workers})

    trees = []
    for workers, out in (("1", "one"), ("2", "two"), ("2", "two")):
        done = compile_with(workers, out, *recipes)
        assert done.returncode == 0, done.stderr
        trees.append(_tree(tmp_path / out))
    assert trees[0] == trees[1] == trees[2] and len(trees[0]) == 100 * 5 + 1
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "defs").mkdir()
    (broken / "defs" / "divider.yaml").write_text(DIVIDING_TYPE)
    names = _small_recipes(broken, 100, zero_in=(7, 93))
    errors = []
    for workers in ("1", "2"):
        done = subprocess.run([sys.executable, "-m", "compiler", "compile", *names, "--defs", "defs", "-o", "out"],
                              cwd=broken, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "ORCHC_WORKERS": workers})
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert not (broken / "out").exists()
        errors.append(done.stderr)
    # both recipes fail at the same line of the type: one located error (problems are reported once each)
    assert errors[0] == errors[1] and errors[0].count("integer division or modulo by zero") == 1


def test_orchc_workers_takes_1_or_2(tmp_path):
    (tmp_path / "r.yaml").write_text(RECIPE)
    done = subprocess.run([sys.executable, "-m", "compiler", "compile", "r.yaml", "-o", "out"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "ORCHC_WORKERS": "lots"})
    assert done.returncode == 1 and "ORCHC_WORKERS='lots': give 1 or 2" in done.stderr and "Traceback" not in done.stderr


def test_validate_reports_the_render_error_compile_reports(tmp_path):
    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "divider.yaml").write_text(DIVIDING_TYPE)
    (tmp_path / "r.yaml").write_text(_many_dividers(12, zero_at=5))
    said = []
    for command in (["validate", "r.yaml"], ["compile", "r.yaml", "-o", "out"]):
        done = subprocess.run([sys.executable, "-m", "compiler", *command, "--defs", "defs"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 1 and "Traceback" not in done.stderr
        said.append(done.stderr)
    assert said[0] == said[1] and "division or modulo by zero" in said[0]
    assert not (tmp_path / "out").exists()


def test_the_quick_exit_of_the_compile_side_loses_no_output_and_keeps_the_exit_status(tmp_path):
    """`orchc compile/validate/show/types` leave by os._exit (no interpreter teardown): what they print to a
    file or a pipe is all there, a closed pipe is no error, and a failure still exits 1."""
    # Buffered output, as in everyday use (this machine's environment sets PYTHONUNBUFFERED)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "PYTHONPATH": str(ROOT)}
    with open(tmp_path / "types.txt", "w") as out:
        done = subprocess.run([sys.executable, "-m", "compiler", "types"], stdout=out, stderr=subprocess.PIPE,
                              text=True, timeout=60, env=env)
    assert done.returncode == 0 and done.stderr == ""
    listed = (tmp_path / "types.txt").read_text()
    assert listed.endswith("\n") and "redis_client" in listed and len(listed.splitlines()) > 15
    shown = subprocess.run(f"{sys.executable} -m compiler show {ROOT / 'examples' / 'redis.yaml'} | head -n 1",
                           shell=True, capture_output=True, text=True, timeout=60, env=env)
    assert shown.stdout.startswith("# recipe ") and shown.stderr == ""
    (tmp_path / "r.yaml").write_text(RECIPE)
    (tmp_path / "bad.yaml").write_text("services: [")
    for recipe, status, printed in (("r.yaml", 0, "compiled 1 recipe(s)"), ("bad.yaml", 1, "bad.yaml:")):
        done = subprocess.run([sys.executable, "-m", "compiler", "compile", recipe, "-o", "out"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == status and (done.stdout + done.stderr).startswith(printed)
    assert json.loads((tmp_path / "out" / "r" / "manifest.json").read_text())["digest"].startswith("sha256:")


def test_manifest_text_is_json_dumps_indented_with_sorted_keys():
    """emit.manifest_text writes what json.dumps(indent=2, sort_keys=True) writes, without its encoder."""
    import random

    from compiler.core.source import FrozenDict, FrozenList
    from compiler.output.emit import manifest_text

    rng = random.Random(3)
    texts = ["", "a", "é ü", "\x00\x1f\x7f", "\"quoted\" \\ back", "\u2028", "😀", "line\nbreak", "sha256:" + "?" * 64]

    def value(depth: int):
        kind = rng.randrange(10 if depth < 4 else 6)
        if kind == 0:
            return rng.choice(texts)
        if kind == 1:
            return rng.choice([0, -1, 7, 2**70, True, False, None])
        if kind == 2:
            return rng.choice([0.5, 1e300, -0.0, float("inf"), float("nan")]) if rng.random() < 0.2 else rng.choice(texts)
        if kind in (3, 4, 5):
            return rng.choice(texts + ["x", "y"])
        if kind in (6, 7):
            items = {rng.choice(texts + ["k", "a", "b"]): value(depth + 1) for _ in range(rng.randrange(4))}
            return FrozenDict(items) if kind == 7 else items
        items = [value(depth + 1) for _ in range(rng.randrange(4))]
        return FrozenList(items) if kind == 8 else tuple(items)

    for _ in range(3000):
        manifest = {f"k{n}": value(0) for n in range(rng.randrange(5))}
        assert manifest_text(manifest) == json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    assert manifest_text({"a": {1: "x"}}) == json.dumps({"a": {1: "x"}}, indent=2, sort_keys=True) + "\n"


def test_scripts_are_made_in_the_order_the_digest_takes_them(tmp_path, monkeypatch):
    """Each manifest's digest takes the files in the order of their names; scripts made in another order
    (the recipe's: services before clients) would wait in memory for their turn, most of a big recipe's text."""
    from compiler.output import emit
    from compiler.output.pipeline import Options, resolve_all

    services = "".join(f"  - {{name: s{i:03d}, type: redis, maxmemory: {i + 1}mb}}\n" for i in range(40))
    clients = "".join(f"  - {{name: a{i:03d}, type: redis_client, target: s{i:03d}}}\n" for i in range(40))
    (tmp_path / "r.yaml").write_text(f"site: local\nservices:\n{services}clients:\n{clients}")
    held = []
    put = emit._InOrder.put

    def counted(self, name, data):
        put(self, name, data)
        held.append(len(self._early))

    monkeypatch.setattr(emit._InOrder, "put", counted)
    monkeypatch.setenv("ORCHC_WORKERS", "1")
    emit.write_recipes(resolve_all([tmp_path / "r.yaml"], Options()), tmp_path / "out")
    assert len(held) == 81 and max(held) <= 1   # submit.sh, made first, waits for the scripts named before it

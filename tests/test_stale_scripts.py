"""Recompiling into the same output folder removes the scripts only the previous compile wrote, whatever the
size of the manifest that lists them; a manifest.json orchc did not write is an error, never silently kept."""

from __future__ import annotations

import json
import os
from pathlib import Path

MATRIX = "sweep:\n  matrix:\n    bench.clients: [{clients}]\n    bench.pipeline: [{pipelines}]\n"
RECIPE = ("name: huge_sweep\nsite: local\nservice:\n  name: redis\nclient:\n  name: bench\n  type: redis_client\n"
          "  duration: 10\n")


def sweep(clients: int, pipelines: int) -> str:
    """One service and clients x pipelines client jobs."""
    return RECIPE + MATRIX.format(clients=", ".join(map(str, range(1, clients + 1))),
                                  pipelines=", ".join(map(str, range(1, pipelines + 1))))


def test_recompiling_a_4001_job_sweep_as_401_jobs_leaves_no_stale_script(orchc, tmp_path: Path):
    recipe = tmp_path / "huge_sweep.yaml"
    recipe.write_text(sweep(40, 100))
    out = tmp_path / "out"
    assert orchc("compile", str(recipe), "-o", str(out)).code == 0
    folder = out / "huge_sweep"
    assert (folder / "manifest.json").stat().st_size > 1 << 20   # more than the 1 MiB emit used to read back
    assert len(list(folder.glob("*.sbatch"))) == 4001
    recipe.write_text(sweep(40, 10))
    done = orchc("compile", str(recipe), "-o", str(out))
    assert done.code == 0, done.err
    scripts = sorted(path.name for path in folder.glob("*.sbatch"))
    assert len(scripts) == 401
    listed = set(json.loads((folder / "manifest.json").read_text())["files"])
    assert set(scripts) | {"submit.sh", "manifest.json"} == {name for name in listed if not name.startswith("orchc-runtime-")}
    assert {path.name for path in folder.iterdir()} == listed | {"manifest.json"}   # nothing stale beside them


ONE = "site: local\nservice:\n  name: redis\nclient:\n  name: bench\n  type: redis_client\n"


def compiled_once(orchc, tmp_path: Path) -> Path:
    (tmp_path / "r.yaml").write_text(ONE)
    assert orchc("compile", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "out")).code == 0
    return tmp_path / "out" / "r"


def test_a_manifest_orchc_did_not_write_is_an_error_and_nothing_is_overwritten(orchc, tmp_path: Path):
    folder = compiled_once(orchc, tmp_path)
    foreign = json.dumps({"recipe": "r", "files": ["notes.txt"]})
    (folder / "manifest.json").write_text(foreign)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    done = orchc("compile", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "out"))
    assert done.code == 1 and "Traceback" not in done.err
    assert done.err == f"orchc: error: {folder}/manifest.json was not written by orchc (no \"generator\": \"orchc\"); " \
                       "orchc does not overwrite it: remove it or choose another -o folder\n"
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


def test_a_manifest_larger_than_orchc_writes_is_refused_without_reading_it(orchc, tmp_path: Path):
    from compiler.output.manifest import MANIFEST_LIMIT

    folder = compiled_once(orchc, tmp_path)
    with open(folder / "manifest.json", "r+b") as handle:
        handle.truncate(MANIFEST_LIMIT + 1)   # sparse: costs no disk
    done = orchc("compile", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "out"))
    assert done.code == 1
    assert done.err == f"orchc: error: {folder}/manifest.json is larger than {MANIFEST_LIMIT >> 20} MiB, the most orchc " \
                       "writes: not a manifest orchc wrote\n"


def test_a_manifest_that_is_a_fifo_is_an_error_not_a_hang(orchc, tmp_path: Path):
    folder = compiled_once(orchc, tmp_path)
    (folder / "manifest.json").unlink()
    os.mkfifo(folder / "manifest.json")
    done = orchc("compile", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "out"))
    assert done.code == 1 and done.err == f"orchc: error: {folder}/manifest.json is not a regular file\n"


def test_orchc_refuses_to_write_a_manifest_it_could_not_read_back(orchc, tmp_path: Path, monkeypatch):
    from compiler.output import manifest

    (tmp_path / "huge_sweep.yaml").write_text(sweep(4, 10))
    monkeypatch.setattr(manifest, "MANIFEST_LIMIT", 20_000)   # the 41-job manifest is ~24 KB
    done = orchc("compile", str(tmp_path / "huge_sweep.yaml"), "-o", str(tmp_path / "out"))
    assert done.code == 1, done.err
    assert f"{tmp_path / 'huge_sweep.yaml'}:1:1: error: recipe 'huge_sweep' has 41 jobs: its manifest.json would be" \
           in done.err and "bytes, more than the 20,000 orchc reads back; split it into several recipes" in done.err
    assert not (tmp_path / "out").exists()


def test_the_results_of_a_sweep_whose_manifest_is_over_16_mib_keep_their_points(tmp_path: Path):
    """points.py read the manifest with a 16 MiB limit and took a larger one for none: a 100,000-job sweep's
    (36.7 MiB) lost its points. Now every reader is manifest.read_manifest."""
    from compiler.output.manifest import read_manifest, recorded_sweep

    points = [{"point": f"p{n:05d}", "values": {"bench.note": "x" * 2000}} for n in range(9000)]
    (tmp_path / "manifest.json").write_text(json.dumps({"generator": "orchc", "recipe": "r", "jobs": [],
                                                        "sweep": {"keys": ["bench.note"], "repeat": 1, "points": points}}))
    assert (tmp_path / "manifest.json").stat().st_size > 16 << 20
    sweep_ = recorded_sweep(read_manifest(tmp_path))
    assert sweep_ is not None and len(sweep_.points) == 9000

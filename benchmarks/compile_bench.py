"""Time `orchc compile` on N generated recipes in one process; also one recipe in a fresh process.

    python3 benchmarks/compile_bench.py N [--repeat R]

Prints scripts per second and the compile process's peak memory (max RSS).
Targets (2-core machine): one recipe < 0.3 s wall; >= 1,000 scripts/s; < 150 MB for 1,000 jobs.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEMPLATES = [
    "service:\n  name: redis\n  maxmemory: {i}mb\nclient:\n  name: bench\n  type: redis_client\n  clients: {c}\n",
    "resources: {{cpus_per_task: 4, mem: 16G, time: '02:00:00', partition: gpu, gres: 'gpu:1'}}\n"
    "service:\n  name: ollama\n  enable_cadvisor: true\n  gpu_layers: {c}\n",
    "service:\n  name: chroma\nclient:\n  name: vectors\n  type: chroma_client\n  num_documents: {i}\n",
    "service:\n  name: mysql\n  database: db{i}\nclient:\n  name: slap\n  type: mysql_client\n",
    "services:\n  - name: prometheus\n    monitoring_targets: ['node{i}:8080']\n  - name: grafana\n",
]


def generate(folder: Path, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        path = folder / f"recipe{i:05d}.yaml"
        path.write_text(f"account: p{200000 + i}\n" + TEMPLATES[i % len(TEMPLATES)].format(i=i + 1, c=1 + i % 64))
        paths.append(path)
    return paths


def run(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "compiler", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, help="number of generated recipes")
    parser.add_argument("--repeat", type=int, default=10, help="fresh-process runs of one recipe (median)")
    args = parser.parse_args()
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        recipes = generate(folder, args.n)
        single = [run(["compile", str(recipes[0]), "-o", str(folder / f"one{r}")], root) for r in range(args.repeat)]
        wall = run(["compile", *map(str, recipes), "-o", str(folder / "all")], root)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        wall_stdout = run(["compile", *map(str, recipes), "--stdout"], root)
        scripts = len(list((folder / "all").glob("*/*.sbatch")))
        stages = stage_times(recipes, folder / "stages")
    print(f"one recipe, fresh process: median {statistics.median(single):.3f} s, "
          f"min {min(single):.3f} s over {args.repeat} runs")
    print(f"{args.n} recipes, {scripts} scripts in one process: {wall:.2f} s wall, {scripts / wall:,.0f} scripts/s, "
          f"peak memory {peak_mb:.0f} MB")
    print(f"the same with --stdout (no files written): {wall_stdout:.2f} s wall, {scripts / wall_stdout:,.0f} scripts/s")
    print("the same in this process, by stage: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in stages))
    return 0


def stage_times(recipes: list[Path], out: Path) -> list[tuple[str, float]]:
    """Where the time of a large compile goes: resolve+validate, render, write."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from compiler.output.emit import build_output, write_outputs
    from compiler.output.pipeline import Options, resolve_all

    marks = [time.perf_counter()]
    resolved = resolve_all(recipes, Options())
    marks.append(time.perf_counter())
    outputs = [build_output(recipe) for recipe in resolved]
    marks.append(time.perf_counter())
    write_outputs(outputs, out)
    marks.append(time.perf_counter())
    names = ["load+resolve+validate", "render", "write files"]
    return [(name, marks[i + 1] - marks[i]) for i, name in enumerate(names)]


if __name__ == "__main__":
    raise SystemExit(main())

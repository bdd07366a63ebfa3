"""The loader's limits bound what aliases and nesting can amplify, not the plain size of a file: an honest recipe
of 10,000 jobs without an alias compiles (the file size bounds it); alias bombs stay refused, fast and located
(tests/hostile/cases.yaml has them)."""

from __future__ import annotations

from pathlib import Path

ACCOUNT = "account: p200981\nsite: meluxina\n"


def plain_recipe(pairs: int) -> str:
    """`pairs` redis services and as many clients, each job about 24 values (keys, values and mappings), no alias."""
    lines = [ACCOUNT.rstrip("\n"), "services:"]
    for i in range(pairs):
        lines += [f"  - name: redis{i:05d}", "    type: redis", f"    maxmemory: {i + 1}mb",
                  "    resources: {cpus_per_task: 4, mem: 8G, time: \"00:30:00\", partition: cpu}",
                  "    ports: [6379]", "    environment: {REDIS_LOGLEVEL: notice}"]
    lines.append("clients:")
    for i in range(pairs):
        lines += [f"  - name: bench{i:05d}", "    type: redis_client", f"    target: redis{i:05d}",
                  f"    clients: {i % 100 + 1}", "    pipeline: 2", "    requests: 1000", "    tests: [set, get]",
                  "    resources: {cpus_per_task: 2, time: \"00:10:00\"}"]
    return "\n".join(lines) + "\n"


def test_a_10000_job_recipe_without_aliases_compiles(orchc, tmp_path: Path):
    recipe = tmp_path / "plain.yaml"
    recipe.write_text(plain_recipe(5_000))
    assert recipe.stat().st_size > 1_000_000
    from compiler.core.load import load_file

    def values(node) -> int:   # every scalar, key and collection: what the loader counted against 200,000
        inner = node.value
        if isinstance(inner, dict):
            return 1 + sum(1 + values(item) for item in inner.values())
        return 1 + sum(values(item) for item in inner) if isinstance(inner, list) else 1

    assert values(load_file(recipe)) > 200_000
    done = orchc("compile", str(recipe), "-o", str(tmp_path / "out"))
    assert done.code == 0, done.err[:2000]
    assert len(list((tmp_path / "out" / "plain").glob("*.sbatch"))) == 10_000

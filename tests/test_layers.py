"""The package layers of `compiler/` (README "How the code is laid out"): imports go one way, down, and never round.

Every import counts, also those made inside functions (orchc imports lazily for start-up speed, and a lazy import
is still a dependency).
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "compiler"
LAYERS = ("core", "boundary", "recipe", "script", "output", "run", "results", "cli")
"""bottom to top: a module may import from its own package and those before it"""


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path) -> set[str]:
    """The compiler modules (or packages) `path` imports, anywhere in it."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == root.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.split(".")[0] != root.name:
                continue
            for alias in node.names:   # `from . import x` may name a module
                candidate = f"{target}.{alias.name}"
                found.add(candidate if _is_module(candidate, root) else target)
    found.discard(module)
    return found


def _is_module(name: str, root: Path) -> bool:
    path = root.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def layer(module: str) -> int:
    """The rank of a module's package; the package root (`compiler`, its `__version__`) is below every layer,
    `compiler.__main__` above them all."""
    parts = module.split(".")
    if len(parts) == 1:
        return -1
    if parts[1] == "__main__":
        return len(LAYERS)
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else -2


def graph(root: Path) -> dict[str, set[str]]:
    return {module_name(path, root): imports(path, root) for path in sorted(root.rglob("*.py"))
            if "__pycache__" not in path.parts}


def problems(root: Path) -> list[str]:
    """Every upward import, every module outside a layer, every import cycle."""
    edges = graph(root)
    found = [f"{module} is in no layer (packages: {', '.join(LAYERS)})" for module in edges if layer(module) == -2]
    found += [f"{module} ({LAYERS[layer(module)]}) imports {target} from a higher layer"
              for module, targets in sorted(edges.items()) for target in sorted(targets)
              if layer(module) >= 0 and layer(target) > layer(module)]
    found += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(edges)]
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (Tarjan), or [] if there is none."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:   # the graph has ~60 nodes: recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group) + [sorted(group)[0]])

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def test_imports_go_down_the_layers_and_never_round():
    assert problems(PACKAGE) == []


def test_every_package_of_compiler_is_a_layer():
    packages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert packages == set(LAYERS)


@pytest.mark.parametrize("plant, expected", [
    ("core/source.py", "compiler.core.source (core) imports compiler.cli.main from a higher layer"),
    ("output/plan.py", "compiler.output.plan (output) imports compiler.cli.main from a higher layer"),
])
def test_an_upward_import_inside_a_function_is_found(tmp_path, plant, expected):
    copy = tmp_path / "compiler"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.j2"))
    target = copy / plant
    target.write_text(target.read_text() + "\n\ndef _planted() -> None:\n    from ..cli.main import entry  # noqa\n")
    assert expected in problems(copy)


def test_a_cycle_inside_one_layer_is_found(tmp_path):
    copy = tmp_path / "compiler"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.j2"))
    errors = copy / "core" / "errors.py"
    errors.write_text(errors.read_text() + "\n\ndef _planted() -> None:\n    from .load import load_text  # noqa\n")
    assert any(problem.startswith("import cycle: ") and "compiler.core.errors" in problem
               for problem in problems(copy))

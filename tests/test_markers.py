"""The markers of tests that need a real component (registered in pyproject.toml): a test that uses a fixture of
one (tests/conftest.py, NEEDS_MARKER) without its marker stops the run at collection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

NEEDS = [("test_cluster", "cluster", "cluster"), ("test_remote", "cluster_and_redis", "cluster"),
         ("test_remote", "server", "ssh")]
IMPORTS = "".join(f"from {module} import {fixture}  # noqa: F401\n" for module, fixture, _ in NEEDS)


def collect(folder: Path, test: str) -> subprocess.CompletedProcess[str]:
    """Collect one planted test file with this repository's configuration and tests/conftest.py."""
    (folder / "test_planted.py").write_text(test)
    return subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(folder), "-p", "conftest",
                           str(folder / "test_planted.py")],
                          cwd=folder, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])})


def test_a_test_using_a_fixture_that_needs_a_component_without_its_marker_stops_the_run(tmp_path):
    tests = "".join(f"\n\ndef test_{fixture}({fixture}):\n    pass\n" for _, fixture, _ in NEEDS)
    # a fixture named like one of them, defined elsewhere, is not it (test_llm_bench's `server` is an HTTP stand-in)
    elsewhere = "\n\nclass TestElsewhere:\n    @pytest.fixture\n    def server(self):\n        return 1\n\n" \
                "    def test_server(self, server):\n        pass\n"
    done = collect(tmp_path, "import pytest\n" + IMPORTS + tests + elsewhere)
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    said = [line.removeprefix("ERROR: ") for line in done.stderr.splitlines() if " but is not marked " in line]
    assert sorted(said) == sorted(f"test_planted.py::test_{fixture} uses the fixture {fixture} but is not marked {marker} "
                                  f"(add @pytest.mark.{marker}, or pytestmark = pytest.mark.{marker} for the module)"
                                  for _, fixture, marker in NEEDS), done.stderr


def test_the_same_tests_with_their_markers_are_collected(tmp_path):
    tests = "".join(f"\n\n@pytest.mark.{marker}\ndef test_{fixture}({fixture}):\n    pass\n" for _, fixture, marker in NEEDS)
    done = collect(tmp_path, "import pytest\n" + IMPORTS + tests)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 tests collected" in done.stdout


def test_an_unregistered_marker_is_refused(tmp_path):
    done = collect(tmp_path, "import pytest\n\n\n@pytest.mark.clustr\ndef test_it():\n    pass\n")
    assert done.returncode != 0 and "'clustr' not found in `markers`" in done.stdout + done.stderr

"""Golden files are the contract of the output: every example compiles to exactly golden/<recipe>/
(site meluxina, the default) and golden/local/<recipe>/ (`--site local`, the native branches of types),
and the job runtime every output folder holds (orchc-runtime-<sha>.sh) to golden/orchc-runtime.sh, kept once. The
programs types ship (orchc-file-<sha>-<name>) are not kept again: each must be the file of its type's files/ folder.

Rewrite them with `pytest tests/test_golden.py --update-golden` and review the change with `git diff golden/`
(refused when CI is set, so CI can never pass by rewriting its own expectations).
"""

from __future__ import annotations

import difflib
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import EXAMPLES, GOLDEN, ROOT, shellcheck

RECIPES = [(path, []) for path in sorted(EXAMPLES.glob("*.yaml"))] + [
    (path, [EXAMPLES / "custom" / "defs"]) for path in sorted((EXAMPLES / "custom").glob("*.yaml"))
]
SITES = {"meluxina": GOLDEN, "local": GOLDEN / "local"}
"""Where the golden files of each site live: golden/<recipe>/ (meluxina) and golden/local/<recipe>/."""
CASES = [(recipe, defs, site) for site in SITES for recipe, defs in RECIPES]
RUNTIME = GOLDEN / "orchc-runtime.sh"
"""The golden of the job runtime, which every output folder holds under its content-addressed name."""
RUNTIME_NAME = re.compile(r"orchc-runtime-[0-9a-f]{12}\.sh")
SHIPPED_NAME = re.compile(r"orchc-file-(?P<sha>[0-9a-f]{12})-(?P<name>.+)")
SHIPPED_FROM = (ROOT / "service_defs" / "files", EXAMPLES / "custom" / "defs" / "files")
"""The files/ folders of the types the examples use: the goldens of the programs those types ship."""


def _compile(orchc, recipe: Path, defs: list[Path], out: Path, site: str = "meluxina") -> Path:
    args = ["compile", recipe.relative_to(ROOT), "-o", out]
    for folder in defs:
        args += ["--defs", folder.relative_to(ROOT)]
    if site != "meluxina":
        args += ["--site", site]
    result = orchc(*args)
    assert result.code == 0, result.err
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    return folder


def _files(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.iterdir()) if p.is_file()}


def _runtime(files: dict[str, str]) -> str:
    """Takes the runtime out of a compiled folder's files: its text, once its name is checked against it."""
    (name,) = [name for name in files if RUNTIME_NAME.fullmatch(name)]
    text = files.pop(name)
    assert name == f"orchc-runtime-{hashlib.sha256(text.encode()).hexdigest()[:12]}.sh"
    return text


def _take_shipped(files: dict[str, str]) -> None:
    """Takes the programs types ship out of a compiled folder's files, once each is checked: named by its sha256,
    and the bytes of the file of that name in a type's files/ folder (with a final newline)."""
    for name in [name for name in files if SHIPPED_NAME.fullmatch(name)]:
        text = files.pop(name)
        found = SHIPPED_NAME.fullmatch(name)
        assert found is not None and found["sha"] == hashlib.sha256(text.encode()).hexdigest()[:12], name
        sources = [folder / found["name"] for folder in SHIPPED_FROM if (folder / found["name"]).is_file()]
        assert [source.read_text(encoding="utf-8").removesuffix("\n") + "\n" for source in sources] == [text], name


@pytest.mark.parametrize("recipe,defs,site", CASES, ids=[f"{c[2]}-{c[0].relative_to(EXAMPLES)}" for c in CASES])
def test_example_matches_golden(orchc, tmp_path, update_golden, recipe, defs, site):
    produced = _compile(orchc, recipe, defs, tmp_path, site)
    golden = SITES[site] / produced.name
    shown = golden.relative_to(ROOT)
    actual = _files(produced)
    runtime = _runtime(actual)
    _take_shipped(actual)
    if update_golden:
        shutil.rmtree(golden, ignore_errors=True)
        golden.mkdir(parents=True)
        for name in actual:
            shutil.copy2(produced / name, golden / name)
        RUNTIME.write_text(runtime, encoding="utf-8")
        return
    assert golden.is_dir(), f"no golden files for {recipe.name} at {shown}: run pytest --update-golden and review git diff"
    assert runtime == RUNTIME.read_text(encoding="utf-8"), f"the job runtime differs from {RUNTIME.relative_to(ROOT)}"
    expected = _files(golden)
    assert sorted(actual) == sorted(expected), "a different set of files was produced"
    for name in expected:
        if actual[name] != expected[name]:
            diff = "".join(difflib.unified_diff(expected[name].splitlines(True), actual[name].splitlines(True),
                                                f"{shown}/{name}", f"compiled/{name}"))
            pytest.fail(f"{name} differs from its golden file:\n{diff}")


@pytest.mark.parametrize("site", sorted(SITES))
def test_every_golden_folder_has_an_example(orchc, tmp_path, site):
    names = {_compile(orchc, recipe, defs, tmp_path / recipe.stem, site).name for recipe, defs in RECIPES}
    folders = {p.name for p in SITES[site].iterdir() if p.is_dir()} if SITES[site].is_dir() else set()
    assert names == folders - set(SITES)       # golden/local/ is not a recipe of meluxina


GOLDEN_SCRIPTS = [RUNTIME, *sorted(p for folder in SITES.values() for p in [*folder.glob("*/*.sbatch"), *folder.glob("*/submit.sh")])]


@pytest.mark.parametrize("script", GOLDEN_SCRIPTS, ids=[str(p.relative_to(GOLDEN)) for p in GOLDEN_SCRIPTS])
@pytest.mark.slow
def test_golden_script_passes_bash_and_shellcheck(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    checked = subprocess.run([shellcheck(), "-s", "bash", str(script)],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout

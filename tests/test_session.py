"""One compile session per compile (compiler/session.py): a process that compiles recipe after recipe through the
in-process API does not grow with them, and what one compile remembered is not seen by the next."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

from compiler.core.errors import OrchcError
from compiler.core.load import current_sources
from compiler.core.session import CompileSession
from compiler.core.terminal import print_error
from compiler.output.pipeline import Options, compile_all, resolve_all
from compiler.script.render import render_recipe

SERVICES = [("redis", "redis_client", "maxmemory: {n}mb", "clients: {c}"),
            ("mysql", "mysql_client", "database: db{n}", "concurrency: {c}"),
            ("chroma", "chroma_client", "", "num_documents: {n}0"),
            ("prometheus", None, "scrape_interval: {c}s", "")]
SITES = ["meluxina", "local"]


def _recipe(number: int) -> str:
    """A small recipe of its own: its types, values and site depend on `number` (a client in every fifth)."""
    service, client, service_value, client_value = SERVICES[number % len(SERVICES)]
    values = {"n": number, "c": number % 50 + 1}
    lines = [f"name: r{number}", f"site: {SITES[number // len(SERVICES) % len(SITES)]}", "account: p200981",
             f'resources: {{cpus_per_task: {number % 8 + 1}, mem: "{number % 30 + 1}G", time: "00:30:00", partition: cpu}}',
             "service:", f"  name: s{number}", f"  type: {service}"]
    if service_value:
        lines.append(f"  {service_value.format(**values)}")
    if client and number % 5 == 0:
        lines += ["client:", f"  name: c{number}", f"  type: {client}", f"  {client_value.format(**values)}"]
    return "\n".join(lines) + "\n"


BATCH = 25
"""Recipes per compile: 40 compiles of 25 recipes each (a compile per recipe would take a minute under tracemalloc)."""


def _compile_batch(folder: Path, first: int) -> None:
    paths = []
    for number in range(first, first + BATCH):
        paths.append(folder / f"r{number}.yaml")
        paths[-1].write_text(_recipe(number))
    outputs = compile_all(paths, Options())
    assert len(outputs) == BATCH and all(output.files for output in outputs)


def _settle() -> None:
    """Garbage collected, and CPython's method cache emptied: it holds up to 4096 attribute names that Jinja's
    visitors make afresh (`visit_` + a node's type) whatever is compiled, which is not orchc's to free."""
    gc.collect()
    sys._clear_type_cache()


def test_a_thousand_different_recipes_compiled_in_one_process_leave_nothing_behind(tmp_path):
    """Between the 200th and the 1,000th recipe the memory the process holds does not grow with them: each
    compile's caches go with its session (`render._WHERE` held every type node of every compile, `load._TEXTS`
    every recipe's text, `resolve._load_site_file` every site profile, ...).

    Counted in the allocator's live blocks (every object Python allocates, and every container entry that
    would hold a larger value): tracemalloc, which counts bytes, makes the 800 compiles five times slower."""
    for first in range(0, 200, BATCH):
        _compile_batch(tmp_path, first)
    _settle()
    before = sys.getallocatedblocks()
    for first in range(200, 1000, BATCH):
        _compile_batch(tmp_path, first)
    _settle()
    grown = sys.getallocatedblocks() - before
    assert grown < 1000, f"{grown} more live memory blocks after 800 more recipes"


def test_a_site_file_changed_between_two_compiles_is_read_again(tmp_path):
    """A site profile is read once per compile, not once per process: the second compile sees the new file."""
    site = tmp_path / "here.yaml"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nsite: here.yaml\nservice:\n  name: redis\n")
    for modules in ("first", "second"):
        site.write_text(f"site: here\nruntime: native\nmodules: [{modules}]\n")
        (output,) = compile_all([recipe], Options())
        assert f"module load {modules}" in output.files["redis.sbatch"]


def test_an_error_keeps_its_excerpt_after_the_compile_session_has_gone(tmp_path, capsys):
    """The texts a compile loaded go with its session; an error that leaves the compile carries them."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nservice:\n  name: redis\n  maxmemory: [1, 2]\n")
    try:
        resolve_all([recipe], Options())
    except OrchcError as error:
        caught = error
    gc.collect()
    print_error(caught)
    err = capsys.readouterr().err
    assert "maxmemory: [1, 2]" in err, err


def test_the_texts_a_compile_loaded_go_with_its_session(tmp_path):
    """The recipe's text is its compile session's (for excerpts and template lines), not the process's."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nsite: local\nservice:\n  name: redis\n")
    (resolved,) = resolve_all([recipe], Options())
    assert resolved.session.sources.text(resolved.file) == recipe.read_text()
    assert current_sources().text(resolved.file) is None
    other = CompileSession()
    with other.active():
        assert current_sources() is other.sources
        render_recipe(resolved)   # renders in the recipe's own session, whichever is active
        assert current_sources() is other.sources
    assert other.sources.text(resolved.file) is None

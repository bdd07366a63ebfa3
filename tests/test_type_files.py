"""`source:` phase items: a program a type ships as a real file (files/NAME beside the type file)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from conftest import ROOT

HEADLINE = re.compile(r"^(?P<loc>\S+:\d+:\d+): error: (?P<message>.+)$", re.M)
ACCOUNT = "account: p200981\n"

TOOL = """\
type: tool
extends: client
fields:
  target_endpoint: {default: "localhost:1"}
phases:
  setup:
    - file: "$ORCHC_RUN_DIR/config/{{ job.name }}/prog.py"
      source: SOURCE
      mode: "700"
"""
# Content that a template or the shell would change if it were interpreted.
PROGRAM = "#!/usr/bin/env python3\n# {{ not_a_field }} {% raw %} $HOME `date` $(id) 'q' \"d\" \\n\nprint('ORCHC_EOF')\nORCHC_EOF\n\tx = 1\n"


def errors(err: str) -> list[tuple[str, str]]:
    return [(m["loc"], m["message"]) for m in HEADLINE.finditer(err)]


def compile_tool(orchc, write, tmp_path, source: str = "prog.py", program: str | bytes | None = PROGRAM, extra: str = ""):
    write("defs/tool.yaml", TOOL.replace("SOURCE", source) + extra)
    if program is not None:
        (tmp_path / "defs" / "files").mkdir(exist_ok=True)
        target = tmp_path / "defs" / "files" / "prog.py"
        if isinstance(program, bytes):
            target.write_bytes(program)
        else:
            target.write_text(program)
    recipe = write("r.yaml", "client:\n  name: t\n  type: tool\n" + ACCOUNT)
    # --self-contained: the script holds the file in a here-document (else the output folder does, test_shipped_files.py)
    return orchc("compile", recipe, "--defs", "defs", "--site", "local", "--stdout", "--self-contained", cwd=tmp_path)


def test_a_source_file_is_written_verbatim_and_runs(orchc, write, tmp_path):
    result = compile_tool(orchc, write, tmp_path)
    assert result.code == 0, result.err
    # The here-document's delimiter changes because a line of the program is ORCHC_EOF.
    assert "<<'ORCHC_EOF_'\n" in result.out
    # Run the block the script writes and compare the bytes of the file it makes with the program.
    start = result.out.index('mkdir -p "$(dirname "$ORCHC_RUN_DIR"/config/t/prog.py)"')
    end = result.out.index('chmod 700 "$ORCHC_RUN_DIR"/config/t/prog.py') + len('chmod 700 "$ORCHC_RUN_DIR"/config/t/prog.py')
    run_dir = tmp_path / "run"
    subprocess.run(["bash", "-euc", result.out[start:end]], check=True, env={**os.environ, "ORCHC_RUN_DIR": str(run_dir)})
    written = run_dir / "config" / "t" / "prog.py"
    assert written.read_text() == PROGRAM
    assert oct(written.stat().st_mode & 0o777) == "0o700"


def test_a_file_without_final_newline_gets_one(orchc, write, tmp_path):
    result = compile_tool(orchc, write, tmp_path, program="print(1)")
    assert result.code == 0, result.err
    assert "<<'ORCHC_EOF'\nprint(1)\nORCHC_EOF\n" in result.out


def test_the_builtin_types_folder_ships_its_files(orchc, write, tmp_path):
    """A built-in type's files/ folder is found wherever orchc runs from (the llm_client type uses it)."""
    recipe = write("r.yaml", "client:\n  name: bench\n  type: llm_client\n  target_endpoint: localhost:8000\n" + ACCOUNT)
    result = orchc("compile", recipe, "--site", "local", "--stdout", "--self-contained", cwd=tmp_path)
    assert result.code == 0, result.err
    program = (ROOT / "service_defs" / "files" / "llm_bench.py").read_text()
    assert program.rstrip("\n") + "\nORCHC_EOF" in result.out


def test_a_missing_file_is_located_at_the_source_value(orchc, write, tmp_path):
    result = compile_tool(orchc, write, tmp_path, program=None)
    assert result.code == 1
    assert errors(result.err) == [("defs/tool.yaml:8:15", "source: defs/files/prog.py not found (a `source:` file lives "
                                   "in the files/ folder beside the type file that names it)")]


@pytest.mark.parametrize("name", ["../tool.yaml", "sub/prog.py", ".hidden", "..", "/etc/passwd", "a b"])
def test_names_with_path_separators_or_leading_dots_are_refused(orchc, write, tmp_path, name):
    (tmp_path / "defs" / "files" / "sub").mkdir(parents=True)
    (tmp_path / "defs" / "files" / "sub" / "prog.py").write_text("x\n")
    result = compile_tool(orchc, write, tmp_path, source=f'"{name}"')
    assert result.code == 1
    ((loc, message),) = errors(result.err)
    assert loc == "defs/tool.yaml:8:15"
    assert message.startswith("source: ") and "is not a file name of the type's files/ folder" in message


def test_parent_folder_is_refused(orchc, write, tmp_path):
    """`../x` never leaves files/: the name cannot hold a separator, whatever exists there."""
    write("defs/secret.txt", "secret\n")
    result = compile_tool(orchc, write, tmp_path, source="../secret.txt")
    assert result.code == 1
    assert "secret" not in result.out
    assert [loc for loc, _ in errors(result.err)] == ["defs/tool.yaml:8:15"]


def test_content_and_source_together_are_refused(orchc, write, tmp_path):
    result = compile_tool(orchc, write, tmp_path, source="prog.py\n      content: hello")
    assert result.code == 1
    ((loc, message),) = errors(result.err)
    assert loc.startswith("defs/tool.yaml:7:")
    assert "content" in message or "valid under each" in message


def test_neither_content_nor_source_is_refused(orchc, write, tmp_path):
    write("defs/tool.yaml", TOOL.replace("      source: SOURCE\n", ""))
    result = orchc("compile", write("r.yaml", "client:\n  name: t\n  type: tool\n" + ACCOUNT), "--defs", "defs",
                   "--site", "local", "--stdout", cwd=tmp_path)
    assert result.code == 1
    ((loc, _),) = errors(result.err)
    assert loc.startswith("defs/tool.yaml:7:")


def test_a_folder_a_symlink_or_a_binary_file_is_refused(orchc, write, tmp_path):
    (tmp_path / "defs" / "files").mkdir(parents=True)
    (tmp_path / "defs" / "files" / "prog.py").mkdir()
    result = compile_tool(orchc, write, tmp_path, program=None)
    assert errors(result.err) == [("defs/tool.yaml:8:15", "source: defs/files/prog.py is not a regular file")]
    (tmp_path / "defs" / "files" / "prog.py").rmdir()
    (tmp_path / "outside.py").write_text("print(1)\n")
    (tmp_path / "defs" / "files" / "prog.py").symlink_to(tmp_path / "outside.py")
    result = compile_tool(orchc, write, tmp_path, program=None)
    assert errors(result.err) == [("defs/tool.yaml:8:15", "source: defs/files/prog.py is not a regular file")]
    (tmp_path / "defs" / "files" / "prog.py").unlink()
    result = compile_tool(orchc, write, tmp_path, program=b"print(1)\n\xff\n")
    assert errors(result.err) == [("defs/tool.yaml:8:15", "source: defs/files/prog.py is not UTF-8 text (byte 0xFF at offset 9)")]
    result = compile_tool(orchc, write, tmp_path, program="print(1)\n\x1b[2J\n")
    assert errors(result.err) == [("defs/tool.yaml:8:15", "source: defs/files/prog.py is not a text file (control character 0x1B on line 2)")]


def test_a_file_over_the_size_bound_is_refused(orchc, write, tmp_path):
    result = compile_tool(orchc, write, tmp_path, program="#" * (1024 * 1024) + "\n")
    assert errors(result.err) == [("defs/tool.yaml:8:15", "source: defs/files/prog.py is larger than 1 MiB")]
    result = compile_tool(orchc, write, tmp_path, program="#" * (1024 * 1024 - 1) + "\n")
    assert result.code == 0, result.err


def test_the_file_is_found_beside_the_type_that_declares_the_item_not_the_child(orchc, write, tmp_path):
    """A child type in another folder inherits the item; the file still comes from the parent's folder."""
    compile_tool(orchc, write, tmp_path)
    write("child/child.yaml", "type: child\nextends: tool\n")
    result = orchc("compile", write("r2.yaml", "client:\n  name: t\n  type: child\n" + ACCOUNT), "--defs", "defs",
                   "--defs", "child", "--site", "local", "--stdout", "--self-contained", cwd=tmp_path)
    assert result.code == 0, result.err
    assert "print('ORCHC_EOF')" in result.out

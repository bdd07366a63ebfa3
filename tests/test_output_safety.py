"""Output that cannot attack its reader (issue 17, item 6): CSV cells, terminal text and error messages."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from test_compare import results, write_run

from compiler.core.terminal import csv_cell, terminal_text

MYSQL = """\
name: sq
site: local
service:
  name: db
  type: mysql
  database: bench
  root_password: {env: ROOT_PW}
client:
  name: slap
  type: mysql_client
  root_password: {env: ROOT_PW}
sweep:
  matrix:
    db.root_password: [hunter2-literal, {env: OTHER_PW}]
    slap.concurrency: [5, 10]
"""


def test_a_literal_secret_in_a_sweep_is_never_echoed(orchc, write, tmp_path: Path):
    result = orchc("validate", write("sq.yaml", MYSQL), cwd=tmp_path)
    assert result.code == 1 and "Traceback" not in result.err, result.err
    assert "root_password" in result.err and "at sweep point p01" in result.err
    assert "hunter2" not in result.err + result.out
    assert "db.root_password=<secret>, slap.concurrency=5" in result.err


def test_a_secret_swept_without_its_job_name_is_hidden_too(orchc, write, tmp_path: Path):
    text = MYSQL.replace("db.root_password: [hunter2-literal, {env: OTHER_PW}]", "root_password: [hunter2-literal]")
    result = orchc("validate", write("sq.yaml", text), cwd=tmp_path)
    assert result.code == 1 and "Traceback" not in result.err, result.err
    assert "hunter2" not in result.err + result.out
    assert "root_password=<secret>" in result.err


# --- CSV cells ---------------------------------------------------------------------------------------------

def run_orchc(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`orchc ARGS` in a child process; its output as written (a CR stays a CR)."""
    done = subprocess.run([sys.executable, "-m", "compiler", *args], cwd=cwd, capture_output=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


FORMULAS = ["=cmd|' /C calc'!A0", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)", "\t=1+1", "\r=1+1"]


def csv_rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def formula_cells(rows: list[list[str]]) -> list[str]:
    """The cells a spreadsheet would read as a formula: starting with = + - @ tab or CR, and not a number."""
    return [cell for row in rows for cell in row if cell[:1] in ("=", "+", "-", "@", "\t", "\r") and not NUMBER.fullmatch(cell)
            and cell != "-"]


NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def test_compare_csv_neutralises_formulas_and_keeps_negative_numbers(tmp_path: Path):
    metrics = {name: 1.0 for name in FORMULAS} | {"delta_ms": -3.5}
    write_run(tmp_path / "a", {"bench": results(metrics)})
    write_run(tmp_path / "b", {"bench": results({**metrics, "delta_ms": -7.0})})
    done = run_orchc("compare", "a", "b", "--csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = csv_rows(done.stdout)
    assert formula_cells(rows) == []
    assert sorted(row[6] for row in rows[1:]) == sorted(["'" + name for name in FORMULAS] + ["delta_ms"])
    delta = next(row for row in rows if row[6] == "delta_ms")
    assert (delta[9], delta[11], delta[13]) == ("-3.5", "-7.0", "-100.0")  # numbers stay numbers


def test_results_csv_neutralises_names_and_values(tmp_path: Path):
    shaped = results({name: 2 for name in FORMULAS} | {"offset_s": -1.25}, status="=HYPERLINK(\"http://x\")")
    other = {"=key": "=1+1", "@list": ["-x", -4]}  # a results.json of another shape, flattened row by row
    write_run(tmp_path / "run", {"bench": shaped, "odd": other})
    done = run_orchc("results", "run", "--csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = csv_rows(done.stdout)
    assert formula_cells(rows) == []
    cells = {cell for row in rows for cell in row}
    assert {"'" + name for name in FORMULAS} <= cells and "-1.25" in cells
    assert {"'=key", "'=1+1", "'=HYPERLINK(\"http://x\")"} <= cells


def test_check_csv_neutralises_reference_keys(tmp_path: Path):
    write_run(tmp_path / "run", {"bench": results({"x_ms": -1.0})},
              references={"=bench.x_ms": {"min": 0}, "bench.x_ms": {"min": -2}})
    done = run_orchc("results", "--check", "run", "--csv", cwd=tmp_path)
    rows = csv_rows(done.stdout)
    assert formula_cells(rows) == [] and rows[1][1] == "'=bench.x_ms"
    assert rows[2][1:] == ["bench.x_ms", "-", "bench", "'-1 ms", ">= -2", "pass"]


@pytest.mark.parametrize(("cell", "shown"), [
    ("=1+1", "'=1+1"), ("+1", "+1"), ("-3.5", "-3.5"), ("-", "-"), ("--", "'--"), ("-1e-05", "-1e-05"), ("-.5", "-.5"), ("-inf", "'-inf"),
    ("-3.5+cmd", "'-3.5+cmd"), ("@x", "'@x"), ("\tx", "'\tx"), ("\rx", "'\rx"), ("a=b", "a=b"), ("", ""),
    (None, ""), (-2, "-2"), (1.5, "1.5"), ("'=x", "'=x"),
])
def test_the_csv_cell_rule(cell, shown):
    assert csv_cell(cell) == shown


# --- terminal text -----------------------------------------------------------------------------------------

OSC52 = "\x1b]52;c;ZXZpbA==\x07"   # writes "evil" to the clipboard of the terminal that shows it
HOSTILE = [OSC52, "\x1b[2J", "\x9b2J", "\u202e", "\r", "\x08"]
ESCAPED = ["\\x1b]52;c;ZXZpbA==\\x07", "\\x1b[2J", "\\x9b2J", "\\u202e"]


def hostile_runs(root: Path) -> None:
    """Two runs whose run.json, results.json and manifest.json carry control characters wherever text is free."""
    metrics = {f"lat{OSC52}_ms": 1.0, "x\x1b[2J_count": 2, "\u202eevil_per_s": 3.0}
    for name, shift in (("a", 0.0), ("b", 1.0)):
        folder = write_run(root / "runs" / name, {"bench": results({k: v + shift for k, v in metrics.items()},
                                                                   status=f"stopped{OSC52}")},
                           references={f"bench.lat{OSC52}_ms": {"min": 5}, f"ghost{OSC52}.x": {"max": 1}})
        run = json.loads((folder / "run.json").read_text())
        run.update(site=f"local{OSC52}", created="2026\x9b2J", state="failed", error=f"boom\x1b[2J{OSC52}\r\x08")
        (folder / "run.json").write_text(json.dumps(run))


def assert_inert(text: str) -> None:
    for bad in (OSC52, "\x1b]", "\x07", "\x9b", "\u202e", "\x08", "\x1b[2J"):
        assert bad not in text, (bad, text)


@pytest.mark.parametrize("command", [("results", "runs/a"), ("results", "--check", "runs/a"), ("results", "runs/a", "--json"),
                                     ("compare", "runs/a", "runs/b"), ("compare", "runs/a", "runs/b", "--json"),
                                     ("compare", "runs/a", "runs/b", "--threshold", "*=+1"), ("runs",)])
def test_plain_output_shows_control_characters_escaped(tmp_path: Path, command):
    hostile_runs(tmp_path)
    done = run_orchc(*command, cwd=tmp_path)
    assert "Traceback" not in done.stderr
    assert_inert(done.stdout + done.stderr)
    shown = done.stdout + done.stderr
    if "--json" not in command:
        assert any(escaped in shown for escaped in ESCAPED), shown


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("command", [("results", "runs/a"), ("results", "--check", "runs/a"),
                                     ("compare", "runs/a", "runs/b"), ("runs",), ("status", "runs/a")])
def test_terminal_output_shows_control_characters_escaped(orchc, tmp_path: Path, monkeypatch, command):
    hostile_runs(tmp_path)
    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.setenv("TERM", "xterm-256color")
    from compiler.cli.main import main

    monkeypatch.chdir(tmp_path)
    main(list(command))
    assert_inert(screen.getvalue())
    assert "\\x1b" in screen.getvalue() or "\\u202e" in screen.getvalue()


def test_rich_markup_in_a_name_is_text(tmp_path: Path):
    from compiler.core.terminal import print_table

    screen = Terminal()
    print_table("t[bold]x", ["h"], [["[link=file:///etc/passwd]click[/link]"], [f"a{OSC52}"]], screen)
    assert "[link=file:///etc/passwd]click[/link]" in screen.getvalue() and "t[bold]x" in screen.getvalue()
    assert_inert(screen.getvalue())


@pytest.mark.parametrize(("text", "shown"), [
    (OSC52, "\\x1b]52;c;ZXZpbA==\\x07"), ("a\tb\nc", "a\\x09b\\x0ac"), ("\x7f\x85\x9b", "\\x7f\\x85\\x9b"),
    ("\u202eabc\u2066", "\\u202eabc\\u2066"), ("plain ünïcode ✓", "plain ünïcode ✓"),
])
def test_the_terminal_text_rule(text, shown):
    assert terminal_text(text) == shown


def test_results_csv_neutralises_swept_keys_and_values(tmp_path: Path):
    sweep = {"keys": ["=bench.x", "bench.y"], "repeat": 1,
             "points": [{"point": "p01", "values": {"=bench.x": "=1+1", "bench.y": [1, "@x"]}}]}
    write_run(tmp_path / "run", {"bench-p01-r1": results({"a_ms": 1.0})}, sweep, {"bench-p01-r1": ("p01", 1)})
    done = run_orchc("results", "run", "--csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = csv_rows(done.stdout)
    assert formula_cells(rows) == []
    assert rows[0][-3:] == ["'=bench.x", "bench.y", "parameters"]
    bench = next(row for row in rows if row[3] == "bench-p01-r1")
    assert bench[-3:-1] == ["'=1+1", '[1, "@x"]']

"""Output that cannot attack its reader (issue 17, item 6): CSV cells, terminal text and error messages."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from test_compare import results, write_run

from compiler.report import csv_cell

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

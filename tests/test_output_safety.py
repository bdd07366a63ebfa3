"""Output that cannot attack its reader (issue 17, item 6): CSV cells, terminal text and error messages."""

from __future__ import annotations

from pathlib import Path

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

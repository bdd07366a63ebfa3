"""results, compare and report on hostile results.json values (issue 17): numbers beyond the float range, NaN and
infinities, huge integers, deep nesting and very long keys give a clear error or a sane output, never a traceback,
and output stays proportional to the input."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from test_compare import results, sweep_run, write_run

COMMANDS = [("results", "a"), ("results", "a", "--json"), ("results", "a", "--csv"), ("results", "--check", "a"),
            ("compare", "a", "b"), ("compare", "a", "b", "--json"), ("compare", "a", "b", "--csv"),
            ("compare", "a", "b", "--threshold", "*=+1")]


def strict_json(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise AssertionError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def write_both(root: Path, text: str, sweep: bool = False) -> None:
    """Runs a and b whose client results.json is `text` (as a sweep: two repeats of one point, both `text`)."""
    for side in ("a", "b"):
        if sweep:
            folder = sweep_run(root / side, [("p01", 10, [{"x_ms": 1.0}, {"x_ms": 1.0}])],
                               references={"bench.a_ms": {"min": 0}})
            for repeat in (1, 2):
                (folder / "results" / f"bench-p01-r{repeat}" / "results.json").write_text(text)
        else:
            folder = write_run(root / side, {"bench": results({"x_ms": 1.0})}, references={"bench.a_ms": {"min": 0}})
            (folder / "results" / "bench" / "results.json").write_text(text)


def run_all(orchc, root: Path, commands=COMMANDS) -> dict[tuple[str, ...], Any]:
    done = {}
    for command in commands:
        result = orchc(*command, cwd=root)
        assert "Traceback" not in result.err, (command, result.err)
        assert result.code in (0, 1), (command, result.code, result.err)
        if result.code == 1:
            assert "error" in result.err or "regression" in result.err, (command, result.err)
        if "--json" in command and result.code == 0:
            strict_json(result.out)
        done[command] = result
    return done


def test_numbers_beyond_the_float_range_aggregate_without_overflow(orchc, tmp_path: Path):
    huge = "9" * 4000
    text = ('{"schema": "orchc-results/1", "metrics": {"a_ms": 1e308, "b_ms": -1e308, "c_count": ' + huge
            + ', "d_ms": 1e-320}, "status": "complete"}')
    write_both(tmp_path, text, sweep=True)
    done = run_all(orchc, tmp_path, [*COMMANDS, ("report", "a")])
    aggregates = {row["metric"]: row for row in strict_json(done[("results", "a", "--json")].out)["aggregates"]}
    assert aggregates["a_ms"]["mean"] == 1e308 and aggregates["b_ms"]["mean"] == -1e308
    assert "c_count" not in aggregates  # an integer no float can hold is not a number to aggregate


def test_nan_and_infinities_stay_out_of_figures_and_json(orchc, tmp_path: Path):
    write_both(tmp_path, '{"schema": "orchc-results/1", "metrics": {"a_ms": NaN, "b_ms": Infinity, "c_ms": -Infinity,'
               ' "d_ms": 1e400, "e_ms": 2}, "status": NaN}')
    done = run_all(orchc, tmp_path)
    shown = strict_json(done[("results", "a", "--json")].out)["bench"]
    assert shown["metrics"] == {"a_ms": None, "b_ms": None, "c_ms": None, "d_ms": None, "e_ms": 2}
    assert [row["metric"] for row in strict_json(done[("compare", "a", "b", "--json")].out)["rows"]] == ["e_ms"]


def test_deep_results_of_another_shape_are_listed(orchc, tmp_path: Path):
    deep = "{\"x\": " + "{\"k\": " * 900 + "1" + "}" * 900 + "}"
    write_both(tmp_path, deep)
    done = run_all(orchc, tmp_path)
    assert ("x" + ".k" * 20) in done[("results", "a")].out


def test_long_key_paths_are_clipped_and_output_stays_in_proportion(orchc, tmp_path: Path):
    """50 levels of 10,000-character keys above 200 leaves: 500,000 characters of key path per leaf if written out
    (100 MB of output from a 0.5 MB file)."""
    inner = {f"leaf{i}": i for i in range(200)}
    for level in range(50):
        inner = {f"{level}" + "k" * 10_000: inner}
    text = json.dumps(inner)
    write_both(tmp_path, text)
    for command in (("results", "a"), ("results", "a", "--csv")):
        result = orchc(*command, cwd=tmp_path)
        assert result.code == 0 and "Traceback" not in result.err
        assert len(result.out) < 10 * len(text), len(result.out)
        assert "leaf199" in result.out or "…" in result.out


def test_one_long_metric_name_does_not_pad_every_row(orchc, tmp_path: Path):
    metrics = {f"m{i}_count": i for i in range(2000)} | {"x" * 100_000 + "_ms": 1.0}
    write_both(tmp_path, json.dumps(results(metrics)))
    result = orchc("results", "a", cwd=tmp_path)
    assert result.code == 0
    assert len(result.out) < 2 * (100_000 + 2000 * 300), len(result.out)


def random_value(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(10 if depth < 4 else 7)
    if choice == 0:
        return rng.choice([1e308, -1e308, 5e-324, 0.0, -0.0, 1.7976931348623157e308, 2 ** 1023, 2 ** 1024,
                           -(10 ** 300), 10 ** 400, 0])
    if choice == 1:
        return rng.choice([math.nan, math.inf, -math.inf])
    if choice == 2:
        return rng.uniform(-1e6, 1e6)
    if choice == 3:
        return rng.choice(["", "x" * rng.randrange(1, 3000), "\x1b]52;c;eA==\x07", "=1+1", "-3.5"])
    if choice == 4:
        return rng.choice([True, False, None])
    if choice == 5:
        return rng.randrange(-10 ** 6, 10 ** 6)
    if choice == 6:
        return int("9" * rng.randrange(300, 4000))
    if choice == 7:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {random_key(rng): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def random_key(rng: random.Random) -> str:
    return rng.choice(["a_ms", "b_per_s", "c_count", "lat_p99_ms", "ok", "k" * rng.randrange(1, 5000), "",
                       "x.y", "\u202e", "=cmd"])


@pytest.mark.parametrize("seed", range(12))
def test_random_results_never_give_a_traceback(orchc, tmp_path: Path, seed: int):
    rng = random.Random(seed)
    metrics = {random_key(rng) + str(i): random_value(rng, 3) for i in range(rng.randrange(1, 12))}
    data: Any = {"schema": "orchc-results/1", "metrics": metrics, "status": random_value(rng, 3)}
    if seed % 3 == 0:
        data = random_value(rng)                 # a results.json of any shape
    write_both(tmp_path, json.dumps(data), sweep=seed % 2 == 0)
    run_all(orchc, tmp_path)

"""orchc report: the HTML report of a run (compiler/results/report.py).

Runs are built by hand (run.json, manifest.json with the sweep, results/<client>/results.json), with known
figures, so every number the report shows can be checked against the data. The report is opened in a real
headless browser (Debian's chromium, with a proxy that goes nowhere): that test fails under CI=true when
chromium is missing, and skips otherwise.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import nvidia_smi_standin
import pytest
from conftest import ROOT, in_ci

from compiler.results.report import (
    Client,
    PointStats,
    families,
    headline,
    knee,
    knees,
    number,
    paired_throughput,
    parse_gpu_csv,
    primary_throughput,
)

try:
    import matplotlib  # noqa: F401  (the report's one optional dependency; part of .[test])
except ImportError:
    if in_ci():
        raise
    pytest.skip("orchc report needs matplotlib: pip install -e '.[test]'; under CI=true this fails",
                allow_module_level=True)

CLIENTS = [10, 50, 100, 200]
PIPELINES = (1, 16)
REPEATS = 3
# Throughput (requests/s) and p99 latency (ms) of test "set" by (clients, pipeline): pipeline 1 saturates after
# 50 clients (100 adds 6.7% throughput for 108% more p99 latency); pipeline 16 still scales at 200.
SET = {(10, 1): (10000, 1.0), (50, 1): (45000, 1.2), (100, 1): (48000, 2.5), (200, 1): (47000, 5.0),
       (10, 16): (60000, 0.8), (50, 16): (200000, 0.9), (100, 16): (380000, 1.0), (200, 16): (700000, 1.2)}
NOISE = (0.99, 1.0, 1.01)  # repeat r's factor: the mean is the model's figure, the stdev known; 1% apart, so the knee
# (+6.7% throughput for +108% latency) is outside the 95% interval of its step: with 2% the step may add +11.5%


def job(name: str, slurm_id: str, role: str = "client", type_: str = "redis_client") -> dict:
    return {"name": name, "type": type_, "role": role, "target": None, "script": f"{name}.sbatch",
            "slurm_id": slurm_id, "submitted": "2026-01-01T00:00:00Z"}


def results(metrics: dict, status: str = "complete", **extra: object) -> dict:
    return {"schema": "orchc-results/1", "status": status, "metrics": metrics, "parameters": {}, **extra}


def write_sweep_run(folder: Path, gpu_rows: int = 5, pipelines: tuple[int, ...] = PIPELINES,
                    tests: tuple[str, ...] = ("set", "get")) -> Path:
    """A redis sweep: bench.clients x bench.pipeline, 3 repeats, a GPU trace on the service; the third repeat
    of p01 failed (no metrics)."""
    (folder / "results").mkdir(parents=True)
    points, jobs, manifest_jobs = [], [job("redis", "100", "service", "redis")], [{"name": "redis"}]
    number_ = 0
    for pipeline in pipelines:
        for clients in CLIENTS:
            number_ += 1
            point = f"p{number_:02d}"
            points.append({"point": point, "values": {"bench.clients": clients, "bench.pipeline": pipeline}})
            rps, p99 = SET[(clients, pipeline)]
            for repeat, factor in enumerate(NOISE, 1):
                name = f"bench-{point}-r{repeat}"
                jobs.append(job(name, str(100 + len(jobs))))
                manifest_jobs.append({"name": name, "point": point, "repeat": repeat})
                (folder / "results" / name).mkdir()
                if point == "p01" and repeat == 3:
                    data = results({}, "failed", error="benchmark phase failed")
                else:
                    figures = {"set.requests_per_s": rps * factor, "set.latency_p50_ms": p99 / 2 * factor,
                               "set.latency_p99_ms": p99 * factor, "set.latency_mean_ms": p99 / 1.8,
                               "get.requests_per_s": rps * 1.1, "get.latency_p99_ms": p99 * 0.9}
                    data = results({**{k: v for k, v in figures.items() if k.split(".")[0] in tests},
                                    "requests_failed_count": 0})
                (folder / "results" / name / "results.json").write_text(json.dumps(data))
    (folder / "run.json").write_text(json.dumps(
        {"recipe": "redis-sweep", "site": "local", "created": "2026-01-01T00:00:00Z", "run_dir": str(folder),
         "state": "submitted", "outcome": "completed", "error": None, "jobs": jobs}))
    (folder / "manifest.json").write_text(json.dumps(
        {"recipe": "redis-sweep", "jobs": manifest_jobs,
         "sweep": {"keys": ["bench.clients", "bench.pipeline"], "repeat": REPEATS, "points": points}}))
    if gpu_rows:
        (folder / "results" / "redis").mkdir()
        lines = [nvidia_smi_standin.HEADER]
        for sample in range(gpu_rows):
            for index in range(2):
                lines.append(", ".join([f"2026/01/01 00:00:{sample * 5:02d}.000",
                                        *nvidia_smi_standin.row(sample, index)]))
        (folder / "results" / "redis" / "gpu.csv").write_text("\n".join(lines) + "\n")
    return folder


def report_files(out: Path) -> dict[str, bytes]:
    """The HTML and every plot file of a report, by path relative to the HTML's folder."""
    folder = out.with_suffix("")
    found = {out.name: out.read_bytes()}
    found.update({f"{folder.name}/{path.name}": path.read_bytes() for path in sorted(folder.iterdir())})
    return found


# --- metric rules ------------------------------------------------------------------------------------------

def test_headline_metrics_follow_the_documented_name_rules():
    redis = ["set.requests_per_s", "set.latency_mean_ms", "set.latency_min_ms", "set.latency_p50_ms",
             "set.latency_p95_ms", "set.latency_p99_ms", "set.latency_max_ms"]
    assert headline(redis) == ["set.requests_per_s", "set.latency_p50_ms", "set.latency_p99_ms"]
    llm = ["request_throughput_per_s", "output_tokens_per_s", "ttft_mean_ms", "ttft_median_ms", "ttft_p90_ms",
           "ttft_p99_ms", "e2e_latency_median_ms", "e2e_latency_p99_ms", "requests_ok_count", "wall_time_s"]
    assert headline(llm) == ["output_tokens_per_s", "request_throughput_per_s", "e2e_latency_median_ms",
                             "e2e_latency_p99_ms", "ttft_median_ms", "ttft_p99_ms"]
    # sysbench's one percentile (p95) is its tail; mysqlslap has only a mean; recall is quality, its count is not
    assert headline(["transactions_per_s", "latency_p95_ms", "latency_mean_ms"]) == [
        "transactions_per_s", "latency_p95_ms"]
    assert headline(["queries_per_s", "query_latency_mean_ms", "run_time_mean_s"]) == [
        "queries_per_s", "query_latency_mean_ms"]
    assert headline(["queries_per_s", "recall_at_10_ratio", "recall_queries_count"]) == [
        "queries_per_s", "recall_at_10_ratio"]


def test_latency_is_paired_with_its_own_throughput():
    rates = ["adds_per_s", "queries_per_s"]
    fams = families(["add_latency_p99_ms", "query_latency_p99_ms"])
    assert paired_throughput(fams["add_latency"], rates) == "adds_per_s"
    assert paired_throughput(fams["query_latency"], rates) == "queries_per_s"
    llm = ["output_tokens_per_s", "request_throughput_per_s", "total_tokens_per_s"]
    assert primary_throughput(llm) == "request_throughput_per_s"
    assert paired_throughput(families(["ttft_p99_ms"])["ttft"], llm) == "request_throughput_per_s"
    assert primary_throughput(["queries_per_s", "transactions_per_s"]) == "transactions_per_s"
    # a dotted group pairs within itself
    both = ["get.requests_per_s", "set.requests_per_s"]
    assert paired_throughput(families(["set.latency_p99_ms"])["set.latency"], both) == "set.requests_per_s"


@pytest.mark.parametrize(("throughput", "latency", "expected"), [
    # saturating: 8 -> 16 workers adds 5% throughput for 105% more p99: the knee is the 4th point
    ([1000, 2000, 4000, 7600, 8000, 8100], [1.0, 1.0, 1.05, 1.9, 3.9, 8.0], 3),
    # still scaling (latency grows, but so does throughput by >= 10% a step): none
    ([100, 150, 200, 260], [1.0, 2.0, 4.0, 8.0], None),
    # linear: none
    ([100, 200, 300, 400], [1.0, 1.0, 1.0, 1.0], None),
    # flat with noise (a parameter that changes nothing): none
    ([1000, 1030, 990, 1010], [2.0, 2.2, 1.9, 2.1], None),
    # throughput falls while latency explodes: the knee is the point before
    ([100, 200, 150], [1.0, 1.2, 5.0], 1),
    # the rule's edges: +10% throughput exactly is still a gain; +50% latency exactly is not yet too much
    ([100, 110], [1.0, 3.0], None),
    ([100, 105], [1.0, 1.5], None),
    ([100, 105], [1.0, 1.51], 0),
    # a missing point is skipped: the step is between the points measured
    ([100, 200, None, 205], [1.0, 1.1, None, 2.0], 1),
    ([100], [1.0], None),
    ([], [], None),
])
def test_knee_rule_on_synthetic_curves(throughput, latency, expected):
    assert knee(throughput, latency) == expected


def repeats_client(throughput: list[list[float]], latency: list[list[float]]) -> Client:
    """One client along bench.clients = 1, 2, ...: each point's repeats of set.requests_per_s and set.latency_p99_ms."""
    from compiler.results.points import PointResult, aggregates

    points = []
    for index, (rates, latencies) in enumerate(zip(throughput, latency, strict=True), 1):
        rows = [PointResult(f"p{index:02d}", {"bench.clients": index}, repeat, f"bench-p{index:02d}-r{repeat}",
                            "redis_client", str(repeat), results({"set.requests_per_s": rate, "set.latency_p99_ms": lat}))
                for repeat, (rate, lat) in enumerate(zip(rates, latencies, strict=True), 1)]
        points.append(PointStats(f"p{index:02d}", {"bench.clients": index}, rows, aggregates(rows)))
    return Client("bench", "redis_client", points)


def test_a_step_within_the_noise_of_the_repeats_is_no_knee():
    """The issue's report: the first point (133k ±60k) was called a knee because the next step "adds -7.8%"; with
    that spread the step may as well add +40%."""
    throughput = [[80_000.0, 120_029.0, 200_000.0], [110_000.0, 130_000.0, 129_000.0]]
    latency = [[1.0, 1.2, 0.9], [2.0, 1.6, 2.4]]
    means = [statistics.mean(values) for values in throughput]
    assert (means[1] / means[0] - 1) * 100 == pytest.approx(-7.8, abs=0.05)
    assert knee(means, [statistics.mean(values) for values in latency]) == 0  # the means alone say knee
    assert knees(repeats_client(throughput, latency), ["bench.clients"]) == []


def test_a_knee_outside_the_noise_is_found_and_described_with_its_intervals():
    throughput = [[1000.0, 1010.0, 990.0], [1020.0, 1030.0, 1010.0]]  # +2%, 1% apart
    latency = [[1.0, 1.02, 0.98], [3.0, 3.1, 2.9]]  # x3
    (found,) = knees(repeats_client(throughput, latency), ["bench.clients"])
    assert found.at.point == "p01" and found.after.point == "p02"
    text = found.describe()
    assert re.search(r"adds \+2\.0% \[[-+][0-9.]+%, \+[0-9.]+%\] throughput for \+200\.0% \[\+[0-9.]+%, \+[0-9.]+%\] "
                     r"latency", text), text


def test_single_repeats_fall_back_to_the_means():
    client = repeats_client([[1000.0], [1020.0]], [[1.0], [3.0]])
    (found,) = knees(client, ["bench.clients"])
    assert "adds +2.0% throughput for +200.0% latency" in found.describe()


def test_gpu_csv_as_nvidia_smi_writes_it():
    text = (nvidia_smi_standin.HEADER + "\n"
            "2026/01/01 10:00:00.000, 0, A100, GPU-0, 10, 5, 1000, 40960, 50.00, 30\n"
            "2026/01/01 10:00:02.500, 0, A100, GPU-0, 90, 40, 20000, 40960, [N/A], 61\n"
            "2026/01/01 10:00:00.000, 1, A100, GPU-1, 0, 0, 0, 40960, 45.5, 29\n"
            "2026/01/01 10:00:05.000, 0, A1")  # cut while written
    trace = parse_gpu_csv("svc", text)
    assert (trace.samples, trace.skipped) == (3, 1)
    assert trace.series["GPU 0"]["utilization.gpu"] == [(0.0, 10.0), (2.5, 90.0)]
    assert trace.series["GPU 0"]["power.draw"] == [(0.0, 50.0)]  # [N/A] left out
    assert trace.series["GPU 1"]["temperature.gpu"] == [(0.0, 29.0)]


# --- the report --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sweep_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The report of write_sweep_run's run (made once: 13 plots take seconds), and what orchc printed."""
    from compiler.cli.main import main

    run = write_sweep_run(tmp_path_factory.mktemp("sweep") / "run")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["report", str(run)]) == 0
    return run, printed.getvalue()


def tiny_run(folder: Path) -> Path:
    """A small sweep (4 points of one key, one test, no GPU): a report of few plots."""
    return write_sweep_run(folder, gpu_rows=0, pipelines=(1,), tests=("set",))


@pytest.mark.slow
def test_report_of_a_sweep(sweep_report):
    run, out = sweep_report
    page = (run / "report.html").read_text()
    assert out.startswith(f"report: {run / 'report.html'}")
    # plots: 3 headline metrics of set, 2 of get, each against 2 keys; 2 latency-vs-throughput; 1 GPU trace
    plots = sorted(path.name for path in (run / "report").iterdir())
    assert len(plots) == 2 * (5 * 2 + 2 + 1)
    assert page.count("<svg") == len(plots) // 2 == int(re.search(r"\((\d+) plots;", out)[1])
    for title in ("bench: set.requests_per_s vs bench.clients", "bench: set.latency_p99_ms vs bench.pipeline",
                  "bench: set.latency percentiles vs set.requests_per_s", "GPU telemetry of redis"):
        assert f"<h3>{title}</h3>" in page
    assert "01-bench-get.requests_per_s-vs-bench.clients.svg" in plots
    assert all(f'href="report/{name}"' in page for name in plots)
    # the summary: mean ± sample stdev of the three repeats, and the failed repeat counted
    rps = [SET[(50, 1)][0] * f for f in NOISE]
    assert f"{number(statistics.mean(rps))} ± {number(statistics.stdev(rps))}" in page
    assert '<td class="status">2 complete, 1 failed</td>' in page and page.count('<td class="status">3 complete</td>') == 7
    assert f"<td>{number(statistics.mean([SET[(10, 1)][0] * f for f in NOISE[:2]]))} ± " not in page  # n=2, not 3
    # the knee of each group (get, set): pipeline 1 after 50 clients (p02); pipeline 16 none
    items = re.findall(r"<li>.*?</li>", page[page.index('<h2 id="saturation">'):])
    assert len(items) == 2 and all("bench.pipeline=1" in item and "at bench.clients=50 (p02)" in item and
                                   "+6.7% [" in item and "throughput for +108.3% [" in item for item in items)
    # with the intervals of the step (set's repeats are 1% apart, get's all the same)
    assert "adds +6.7% [+4.3%, +9.1%] throughput for +108.3% [+103.7%, +113.1%] latency" in items[1]
    assert "adds +6.7% [+6.7%, +6.7%] throughput for +108.3% [+108.3%, +108.3%] latency" in items[0]
    assert "set.requests_per_s 45,000, set.latency_p99_ms 1.20;" in items[1]
    # nothing the browser would fetch
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:[a-z]+:)?//""", page, re.I)
    assert "<script" not in page


@pytest.mark.slow
def test_same_run_same_bytes(sweep_report, tmp_path):
    """Another process (another hash seed), another output folder of the same name: the same bytes."""
    run, _ = sweep_report
    out = tmp_path / "report.html"
    done = subprocess.run([sys.executable, "-m", "compiler", "report", str(run), "-o", str(out)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "12345"},
                          timeout=600)
    assert done.returncode == 0, done.stderr
    again = report_files(out)
    assert again == report_files(run / "report.html")
    assert len(again) == 1 + 2 * 13


def test_without_matplotlib_it_says_what_to_install(orchc, tmp_path, monkeypatch):
    run = tiny_run(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    done = orchc("report", run)
    assert (done.code, done.err) == (1, "orchc: error: orchc report needs matplotlib: pip install 'orchc[report]'\n")
    assert not (run / "report.html").exists()


def test_a_run_without_a_sweep(orchc, tmp_path):
    run = tmp_path / "run"
    (run / "results" / "bench").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"recipe": "r", "site": "local", "created": "2026-01-01T00:00:00Z",
                                              "run_dir": str(run), "state": "submitted", "outcome": "completed",
                                              "error": None,
                                              "jobs": [job("redis", "7", "service", "redis"), job("bench", "8")]}))
    (run / "results" / "bench" / "results.json").write_text(json.dumps(results(
        {"set.requests_per_s": 1234.5, "set.latency_p99_ms": 0.5})))
    done = orchc("report", run, "-o", tmp_path / "x" / "r.html")
    assert done.code == 0, done.err
    page = (tmp_path / "x" / "r.html").read_text()
    assert "none (one configuration)" in page and "No sweep: nothing to saturate along." in page
    assert '<td class="status">1 complete</td>' in page and '<td class="num" title="n=1, min 1,234, max 1,234">1,234</td>' in page
    assert "<svg" not in page and list((tmp_path / "x" / "r").iterdir()) == []
    assert "No job of this run has GPU telemetry" in page


@pytest.mark.slow
def test_output_name_and_stale_plots(orchc, tmp_path):
    run = tiny_run(tmp_path / "run")
    assert orchc("report", run, "-o", tmp_path / "r.txt").err == (
        f"orchc: error: {tmp_path / 'r.txt'}: the report is an HTML file; name it FILE.html\n")
    stale, mine = tmp_path / "r" / "99-old-plot.svg", tmp_path / "r" / "notes.txt"
    stale.parent.mkdir()
    stale.write_text("old")
    mine.write_text("mine")
    assert orchc("report", run, "-o", tmp_path / "r.html").code == 0
    assert not stale.exists() and mine.read_text() == "mine"
    # 3 headline metrics against bench.clients (bench.pipeline has one value) and set.latency vs throughput
    assert sorted(path.name for path in stale.parent.iterdir() if path.suffix == ".svg") == [
        "01-bench-set.requests_per_s-vs-bench.clients.svg", "02-bench-set.latency_p50_ms-vs-bench.clients.svg",
        "03-bench-set.latency_p99_ms-vs-bench.clients.svg", "04-bench-set.latency-vs-set.requests_per_s.svg"]


@pytest.mark.slow
def test_hostile_names_are_text(orchc, tmp_path):
    run = tiny_run(tmp_path / "run")
    evil = '<img src=x onerror=alert(1)>$x$_per_s'
    path = run / "results" / "bench-p02-r1" / "results.json"
    data = json.loads(path.read_text())
    data["metrics"][evil] = 5
    data["status"] = "<b>done</b>"
    path.write_text(json.dumps(data))
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["sweep"]["points"][1]["values"]["bench.pipeline"] = "</td><script>alert(1)</script>"
    (run / "manifest.json").write_text(json.dumps(manifest))
    done = orchc("report", run)
    assert done.code == 0, done.err
    page = (run / "report.html").read_text()
    assert "<img" not in page and "<script" not in page and "<b>done" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;$x$_per_s" in page


# --- in a real browser -------------------------------------------------------------------------------------

def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if in_ci():
            pytest.fail("chromium not found; install it (tests/install-deps.sh: apt-get install chromium)")
        pytest.skip("chromium not found (apt-get install chromium); under CI=true this fails")
    return found


def browse(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless chromium with nowhere to go: every request through a proxy on a closed port."""
    command = [chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--proxy-server=127.0.0.1:9",
               "--no-first-run", "--disable-extensions", "--disable-dev-shm-usage", "--enable-logging=stderr",
               "--v=0", f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)


@pytest.mark.browser
@pytest.mark.slow
def test_report_in_headless_chromium(sweep_report, tmp_path):
    from PIL import Image

    run, _ = sweep_report
    url = (run / "report.html").resolve().as_uri()
    done = browse(tmp_path, "--dump-dom", url)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert "<title>orchc report: run</title>" in dom
    figures = re.findall(r'<figure id="plot-\d+">.*?</figure>', dom, re.S)
    assert len(figures) == 13
    assert all(figure.count("<svg") == 1 and "<path" in figure for figure in figures)
    assert "<h3>bench: set.requests_per_s vs bench.clients</h3>" in dom and "<h3>GPU telemetry of redis</h3>" in dom
    assert ":CONSOLE" not in done.stderr, done.stderr  # no error nor message from the page

    shot = tmp_path / "shot.png"
    done = browse(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars", url)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2000)
    counts = image.getcolors(image.width * image.height)  # (count, colour) of every colour on screen
    assert counts is not None
    background_count, background = max(counts)
    assert background == (255, 255, 255)
    assert image.width * image.height - background_count > 0.02 * image.width * image.height  # not blank
    # the plots were drawn: matplotlib's first colours (C0 blue, C1 orange) are on screen
    colours = {colour for _, colour in counts}
    assert {(0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)} <= colours

    # the layout, measured by the browser in a copy of the page with a script that writes what it measured
    measured = layout(tmp_path, run / "report.html", 1280)
    summary = measured["tables"][1]  # the first is the run's facts
    assert summary["width"] <= summary["shown"] <= measured["page"], measured["tables"]  # wraps: no column hidden
    assert all(table["right"] <= measured["page"] or (table["scrolls"] == "auto" and table["shown"] <= measured["page"])
               for table in measured["tables"]), measured["tables"]  # else it scrolls in a box as wide as the page
    names = [tuple(label) for label in measured["labels"]]
    assert len(names) >= 8
    for figure in {name[0] for name in names}:
        assert overlapping([(text, *box) for where, text, *box in names if where == figure]) == [], figure


MEASURE = """<script>
window.addEventListener("load", () => {
  const tables = [...document.querySelectorAll("table")].map(table => {
    const box = table.parentElement.classList.contains("wide") ? table.parentElement : table;
    return {right: table.getBoundingClientRect().right, width: table.scrollWidth, shown: box.clientWidth,
            scrolls: getComputedStyle(box).overflowX};
  });
  const labels = [...document.querySelectorAll("figure svg text")].filter(text => /^p[0-9]+$/.test(text.textContent))
    .map(text => { const r = text.getBoundingClientRect(); return [text.closest("figure").id, text.textContent, r.left, r.top, r.right, r.bottom]; });
  const out = document.createElement("pre");
  out.id = "measured";
  out.textContent = JSON.stringify({page: document.documentElement.clientWidth, tables, labels});
  document.body.appendChild(out);
});
</script>"""


def layout(tmp_path: Path, report: Path, width: int) -> dict:
    """What chromium measures in the report at this window width: the page's width, each table (its right edge,
    its width, the width of the box it shows in, whether that box scrolls) and each point name's box in each
    figure. The script goes into a copy: the report itself has none."""
    copy = tmp_path / "measured.html"
    copy.write_text(report.read_text().replace("</body>", MEASURE + "</body>"))
    done = browse(tmp_path, f"--window-size={width},2000", "--dump-dom", copy.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="measured">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stdout[-2000:]
    return json.loads(found[1].replace("&quot;", '"').replace("&amp;", "&"))


def test_the_number_of_plots_is_bounded(orchc, tmp_path, monkeypatch):
    """Thousands of headline metrics (20,000 metrics in 5,000 groups: 15,000 headline plots) would take matplotlib
    hours; the report draws the first MAX_PLOTS and says how many it left out."""
    import compiler.results.report as htmlreport

    monkeypatch.setattr(htmlreport, "MAX_PLOTS", 2)
    run = tiny_run(tmp_path / "run")
    assert orchc("report", run).code == 0
    assert sorted(path.name for path in (run / "report").iterdir() if path.suffix == ".svg") == [
        "01-bench-set.requests_per_s-vs-bench.clients.svg", "02-bench-set.latency_p50_ms-vs-bench.clients.svg"]
    page = (run / "report.html").read_text()
    assert "draws at most 2 plots: 2 more were left out" in page


def test_the_header_says_the_run_state_and_an_unfinished_run_says_so_first(orchc, tmp_path, monkeypatch):
    from fakes import FakeScheduler

    from compiler.run import runs
    from compiler.run.scheduler import BACKENDS

    fake = FakeScheduler()
    monkeypatch.setitem(BACKENDS, "fake", lambda: fake)
    service, client = fake.plant("redis_0123abcd"), fake.plant("bench_0123abcd")
    run = tmp_path / "run"
    (run / "results" / "bench").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"recipe": "r", "site": "local", "created": "2026-01-01T00:00:00Z",
                                              "run_dir": str(run), "state": "submitted", "error": None,
                                              "scheduler": "fake", "jobs": [job("redis", service, "service", "redis"),
                                                                            job("bench", client)]}))
    (run / "results" / "bench" / "results.json").write_text(json.dumps(results({"set.requests_per_s": 1.0})))
    fake.advance(service, "RUNNING")
    done = orchc("report", run)
    assert done.code == 0, done.err
    assert done.err.splitlines()[0] == "orchc: note: run run is running (0/2 jobs ended): results so far"
    page = (run / "report.html").read_text()
    assert "<tr><th>state</th><td>running</td></tr>" in page
    assert "This run is running (0/2 jobs ended): results so far" in page
    fake.advance(service, "COMPLETED")
    fake.advance(client, "FAILED")
    done = orchc("report", run)
    assert (done.code, done.err) == (0, "orchc: note: run run ended failed (bench FAILED): its results may be incomplete\n")
    page = (run / "report.html").read_text()
    assert "<tr><th>state</th><td>failed</td></tr>" in page and "results so far" not in page
    assert "This run ended failed (bench FAILED): its results may be incomplete." in page
    assert runs.load_run(str(run))[1].outcome == "failed"


# --- plots that can be read (issue 19) ---------------------------------------------------------------------

def metrics_client(points: list[dict[str, list[float]]]) -> Client:
    """One client along bench.clients = 1, 2, ...: each point's repeats of each metric (all lists of a point
    as long as each other)."""
    from compiler.results.points import PointResult, aggregates

    made = []
    for index, figures in enumerate(points, 1):
        repeats = len(next(iter(figures.values())))
        rows = [PointResult(f"p{index:02d}", {"bench.clients": index}, repeat, f"bench-p{index:02d}-r{repeat}",
                            "redis_client", str(repeat), results({name: values[repeat - 1] for name, values in figures.items()}))
                for repeat in range(1, repeats + 1)]
        made.append(PointStats(f"p{index:02d}", {"bench.clients": index}, rows, aggregates(rows)))
    return Client("bench", "redis_client", made)


def spread(mean: float, sd: float) -> list[float]:
    """Three repeats of this mean and sample standard deviation."""
    return [mean - sd, mean, mean + sd]


# the run: latency 0.03-130 ms on one plot; the first point's throughput 133k ±60k
WIDE = metrics_client([
    {"set.requests_per_s": spread(133_000, 60_000), "set.latency_p50_ms": spread(0.03, 0.001), "set.latency_p99_ms": spread(0.05, 0.01)},
    {"set.requests_per_s": spread(150_000, 2_000), "set.latency_p50_ms": spread(0.2, 0.01), "set.latency_p99_ms": spread(0.9, 0.05)},
    {"set.requests_per_s": spread(160_000, 2_000), "set.latency_p50_ms": spread(2.0, 0.1), "set.latency_p99_ms": spread(9.0, 0.5)},
    {"set.requests_per_s": spread(165_000, 3_000), "set.latency_p50_ms": spread(20.0, 1.0), "set.latency_p99_ms": spread(130.0, 5.0)},
])


def drawn(plot):
    """The one axes of a drawn plot, its layout done."""
    plot.figure.draw_without_rendering()
    (ax,) = plot.figure.axes
    return ax


def test_values_spanning_more_than_a_decade_get_a_log_axis():
    from matplotlib.figure import Figure

    from compiler.results.report import latency_plot, metric_plot

    family = families(WIDE.metrics())["set.latency"]
    ax = drawn(latency_plot(Figure, WIDE, family, "set.requests_per_s", ["bench.clients"], []))
    assert (ax.get_yscale(), ax.get_xscale()) == ("log", "linear")  # throughput spans 1.24x
    assert drawn(metric_plot(Figure, WIDE, "set.latency_p99_ms", "bench.clients", ["bench.clients"], [])).get_yscale() == "log"
    assert drawn(metric_plot(Figure, WIDE, "set.requests_per_s", "bench.clients", ["bench.clients"], [])).get_yscale() == "linear"


def test_horizontal_error_bars_stay_small_beside_the_axis():
    """Throughput's spread over the repeats (x) drawn in full crossed the whole plot (133k ±60k on an axis of 33k)."""
    from matplotlib.figure import Figure

    from compiler.results.report import X_ERROR_SHARE, latency_plot

    family = families(WIDE.metrics())["set.latency"]
    ax = drawn(latency_plot(Figure, WIDE, family, "set.requests_per_s", ["bench.clients"], []))
    left, right = ax.get_xlim()
    widths = [abs(x1 - x0) for container in ax.containers if container.has_xerr
              for (x0, _), (x1, _) in container.lines[2][0].get_segments()]
    assert widths and max(widths) <= X_ERROR_SHARE * (right - left)
    assert sum(width > 0 for width in widths) == 2 * 3  # the 3 points of small spread keep theirs, for both percentiles


def label_boxes(svg: str, names: set[str]) -> list[tuple[str, float, float, float, float]]:
    """(text, left, top, right, bottom) of every SVG text element whose text is one of `names`: matplotlib with
    svg.fonttype none writes text as <text style="font-size: Npx; ...; text-anchor: A" x= y=> at its baseline; a
    DejaVu Sans character is at most 0.64 em wide here (digits and p: 0.636), ascent 0.76 em, descent 0.24 em."""
    boxes = []
    for match in re.finditer(r'<text style="font-size: ([0-9.]+)px;[^"]*?(?:text-anchor: (\w+))?" x="([-0-9.]+)" '
                             r'y="([-0-9.]+)"[^>]*>([^<]*)</text>', svg):
        size, anchor, x, y, text = float(match[1]), match[2] or "start", float(match[3]), float(match[4]), match[5]
        if text not in names:
            continue
        width = 0.64 * size * len(text)
        left = x - {"start": 0.0, "middle": width / 2, "end": width}[anchor]
        boxes.append((text, left, y - 0.76 * size, left + width, y + 0.24 * size))
    return boxes


def overlapping(boxes: list[tuple[str, float, float, float, float]]) -> list[tuple[str, str]]:
    return [(a[0], b[0]) for i, a in enumerate(boxes) for b in boxes[i + 1:]
            if a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]]


def test_point_labels_do_not_overlap():
    """20 points in a crowd (a parameter that changes little): their names were written over each other."""
    import matplotlib
    from matplotlib.figure import Figure

    from compiler.results.report import _RC, latency_plot, render

    crowd = metrics_client([{"set.requests_per_s": [10_000 + 100 * i + 3_000 * (i == 19)],
                             "set.latency_p99_ms": [1.0 + 0.01 * i + 0.5 * (i == 19)]} for i in range(20)])
    family = families(crowd.metrics())["set.latency"]
    names = {point.label for point in crowd.points}
    with matplotlib.rc_context(_RC):
        svg = render(matplotlib, latency_plot(Figure, crowd, family, "set.requests_per_s", ["bench.clients"], []))[0]
    boxes = label_boxes(svg, names)
    assert overlapping(boxes) == []
    assert {"p01", "p20"} <= {box[0] for box in boxes}  # the ends of the crowd and the one apart keep theirs


def test_contents_first_then_the_headline_figure(orchc, tmp_path):
    """14 plots on an 8,000 px page with no contents: a table of contents at the top whose every link leads to
    a section or plot of the page, then the headline figure (the primary throughput against the load) before the
    tables."""
    run = tiny_run(tmp_path / "run")
    assert orchc("report", run).code == 0
    page = (run / "report.html").read_text()
    nav = re.search(r'<nav class="contents">(.*?)</nav>', page, re.S)
    assert nav and page.index("<nav") < page.index("<h2")
    targets = re.findall(r'href="#([^"]+)"', nav[1])
    ids = re.findall(r'\sid="([^"]+)"', page)
    assert targets and all(ids.count(target) == 1 for target in targets)  # (matplotlib's own ids repeat per SVG)
    assert {"headline", "summary", "saturation", "plot-01", "plot-04"} <= set(targets)
    sections = re.findall(r'<h2 id="([^"]+)">', page)
    assert sections[:3] == ["headline", "summary", "saturation"]
    first = re.search(r'<figure id="(plot-\d+)"><h3>([^<]*)</h3>', page)
    assert first and first.groups() == ("plot-01", "bench: set.requests_per_s vs bench.clients")
    assert page.index(first[0]) < page.index('<h2 id="summary">')
    assert page.count("<figure") == 4  # the headline figure is not drawn twice
    # each plot is named once on the page, by its figure's heading (its drawing had the same title above it);
    # the SVG file, which stands alone, keeps its title
    figure = page[page.index(first[0]):page.index("</figure>", page.index(first[0]))]
    assert figure.count("bench: set.requests_per_s vs bench.clients") == 1, figure[:2000]
    svg = next((run / "report").glob("01-*.svg")).read_text()
    assert "bench: set.requests_per_s vs bench.clients" in svg
    # metric names are one long word each (set.latency_p99_ms): a header wraps at their dots and underscores
    assert "<th>set.<wbr>latency_<wbr>p99_<wbr>ms</th>" in page and "<th>bench.<wbr>clients</th>" in page


def halved(run: Path) -> Path:
    """The same sweep at half the throughput and twice the latency (another run to overlay)."""
    for path in sorted((run / "results").glob("*/results.json")):
        data = json.loads(path.read_text())
        data["metrics"] = {name: value * (0.5 if name.endswith("_per_s") else 2.0 if name.endswith("_ms") else 1.0)
                           for name, value in data.get("metrics", {}).items()}
        path.write_text(json.dumps(data))
    return run


@pytest.mark.slow
def test_runs_of_the_same_sweep_overlaid(orchc, tmp_path):
    """`orchc report A B` draws both runs in one plot per metric, one colour each; the same runs give the same bytes."""
    first, second = tiny_run(tmp_path / "before"), halved(tiny_run(tmp_path / "after"))
    out = tmp_path / "both.html"
    done = orchc("report", first, second, "-o", out)
    assert done.code == 0, done.err
    assert done.out.startswith(f"report: {out}  (4 plots;")
    page = out.read_text()
    assert "<title>orchc report: before, after</title>" in page
    figures = re.findall(r'<figure id="plot-\d+"><h3>([^<]*)</h3>(.*?)</figure>', page, re.S)
    assert [title for title, _ in figures] == [
        "bench: set.requests_per_s vs bench.clients", "bench: set.latency_p50_ms vs bench.clients",
        "bench: set.latency_p99_ms vs bench.clients", "bench: set.latency p99 vs set.requests_per_s"]
    for _, svg in figures:
        assert "#1f77b4" in svg and "#ff7f0e" in svg, svg[:200]  # C0 for the first run, C1 for the second
        assert re.search(r"<text[^>]*>before</text>", svg) and re.search(r"<text[^>]*>after</text>", svg)
    # each run's summary, its figures (throughput 45,000 in one, 22,500 in the other)
    assert '<h3 id="summary-1">before: bench <small>(redis_client)</small></h3>' in page
    assert '<h3 id="summary-2">after: bench <small>(redis_client)</small></h3>' in page
    assert "45,000 ± 450" in page and "22,500 ± 225" in page
    again = tmp_path / "again.html"
    assert orchc("report", first, second, "-o", again).code == 0
    assert again.read_bytes() == page.encode().replace(b"both/", b"again/")
    assert [p.read_bytes() for p in sorted((tmp_path / "again").iterdir())] == [
        p.read_bytes() for p in sorted((tmp_path / "both").iterdir())]


def test_runs_of_different_sweeps_are_not_overlaid(orchc, tmp_path):
    first, second = tiny_run(tmp_path / "a"), tiny_run(tmp_path / "b")
    manifest = json.loads((second / "manifest.json").read_text())
    manifest["sweep"]["keys"] = ["bench.clients"]
    (second / "manifest.json").write_text(json.dumps(manifest))
    done = orchc("report", first, second, "-o", tmp_path / "x.html")
    assert (done.code, done.err) == (1, "orchc: error: runs a and b sweep different parameters (bench.clients, bench.pipeline; "
                                        "bench.clients): an overlay needs the same sweep\n")
    assert orchc("report", first, second).err == (
        "orchc: error: a report of several runs needs -o FILE.html (it belongs to none of them)\n")


def test_runs_of_the_same_name_get_numbered_labels():
    from compiler.results.overlay import labels

    assert labels(["run", "other", "run", "run"]) == ["run", "other", "run #2", "run #3"]


def capacity_run(folder: Path, search: object) -> Path:
    """A run of one llm_client whose capacity search wrote `search` (search.json as llm_search.py writes it)."""
    (folder / "results" / "capacity").mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"schema": "orchc-run/1", "recipe": "cap", "jobs": [
        job("vllm", "1", "service", "vllm"), job("capacity", "2", type_="llm_client")]}))
    metrics = {"capacity_requests_per_s": 4.0, "capacity_low_requests_per_s": 4.0, "capacity_high_requests_per_s": 5.0}
    (folder / "results" / "capacity" / "results.json").write_text(json.dumps(results(metrics)))
    (folder / "results" / "capacity" / "search.json").write_text(json.dumps(search))
    return folder


def probe(number: int, rate: float, verdict: str, ttft: float, tpot: float) -> dict:
    return {"probe": number, "rate_per_s": rate, "verdict": verdict, "judged": 300, "client_kept_up": 1,
            "bounds": {"ttft_p99_ms": {"measured_ms": ttft, "verdict": verdict}, "tpot_p99_ms": {"measured_ms": tpot, "verdict": "pass"}}}


SEARCH = {"slo": {"ttft_p99_ms": 500, "tpot_p99_ms": 50}, "settings": {"precision": 0.25}, "rate": [1, 16],
          "probes": [probe(1, 1, "pass", 120, 20), probe(2, 2, "pass", 150, 21), probe(3, 4, "pass", 310, 24),
                     probe(4, 8, "fail", 2400, 31), probe(5, 5.657, "fail", 900, 27), probe(6, 4.757, "fail", 640, 25)]}


def test_a_capacity_search_is_drawn_as_its_curve_with_the_bound_and_the_bracket(orchc, tmp_path):
    run = capacity_run(tmp_path / "run", SEARCH)
    done = orchc("report", run)
    assert done.code == 0, done.err
    page = (run / "report.html").read_text()
    assert '<h2 id="capacity">Capacity</h2>' in page and "<h3>capacity: tpot_p99_ms and ttft_p99_ms by request rate</h3>" in page
    caption = re.search(r"<h3>capacity: tpot_p99_ms.*?<figcaption>(.*?)</figcaption>", page, re.S)[1]
    assert "6 probes" in caption and "capacity 4.00/s" in caption and "[4.00, 4.76)/s" in caption and "Clopper-Pearson" in caption, caption
    svg = next(path for path in (run / "report").iterdir() if path.name.endswith("capacity.svg")).read_text()
    # one panel per bound, each probe a marker, the bound a line: the SLO's numbers are on the axes' ticks
    assert svg.count('id="axes_') == 2 and "500" in svg and "50" in svg


def test_a_probe_the_client_did_not_keep_up_with_is_drawn_as_such_and_bounds_no_end_of_the_bracket(orchc, tmp_path):
    """llm_search.py's capacity_metrics: a probe with client_kept_up 0 says nothing of the server (its rate was not
    sent); the report's bracket and markers follow it, not the probe's verdict."""
    limited = {**probe(4, 8, "pass", 420, 26), "client_kept_up": 0}
    run = capacity_run(tmp_path / "run", {**SEARCH, "probes": [*SEARCH["probes"][:3], limited]})
    done = orchc("report", run)
    assert done.code == 0, done.err
    page = (run / "report.html").read_text()
    caption = re.search(r"<h3>capacity: tpot_p99_ms.*?<figcaption>(.*?)</figcaption>", page, re.S)[1]
    assert "capacity 4.00/s, bracket [4.00, not found)/s" in caption, caption
    assert "(1 probe the client did not keep up with: it says nothing of the server, and bounds neither end)" in caption, caption
    svg = next(path for path in (run / "report").iterdir() if path.name.endswith("capacity.svg")).read_text()
    assert "client fell behind" in svg


@pytest.mark.parametrize("search", [[], {"probes": "x"}, {"slo": {}, "probes": [{"rate_per_s": "fast"}]}])
def test_a_search_json_that_cannot_be_read_is_a_note_not_a_failure(orchc, tmp_path, search):
    run = capacity_run(tmp_path / "run", search)
    done = orchc("report", run)
    assert done.code == 0 and "Traceback" not in done.err, done.err
    page = (run / "report.html").read_text()
    assert "results/capacity/search.json: not a capacity search orchc can draw" in page
    assert '<h2 id="capacity">' not in page

"""`orchc report RUN_A RUN_B ... -o FILE.html`: runs of the same sweep overlaid in one report, one colour per run.

Each plot of report.py's single-run report that compares across runs (each headline metric against each swept
parameter; each latency family's tail against its throughput) shows every run's curves, the run's colour the same
in every plot; the summary tables follow, one per run and client. Knees and telemetry stay in each run's own
report. Same runs, same bytes, as for one run.
"""

from __future__ import annotations

import argparse
import html
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import ClusterError
from . import report as single

if TYPE_CHECKING:
    from ..output.manifest import Sweep
    from ..run.runs import Run

_STYLES, _MARKERS = ("-", "--", ":", "-."), ("o", "s", "^", "D", "v")


@dataclass
class Overlaid:
    """One run of an overlay: its label (the folder's name, numbered when two folders share a name), its state."""

    label: str
    run: Run
    state: str
    sweep: Sweep | None
    clients: list[single.Client]


def labels(names: Sequence[str]) -> list[str]:
    """Run labels: folder names, `name #2` for a name seen before."""
    seen: dict[str, int] = {}
    found = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        found.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return found


def same_keys(runs: Sequence[Overlaid]) -> list[str]:
    """The swept keys every run shares (as the first run lists them); an error naming two runs that differ."""
    first = runs[0]
    keys = list(first.sweep.keys) if first.sweep else []
    for other in runs[1:]:
        theirs = list(other.sweep.keys) if other.sweep else []
        if sorted(theirs) != sorted(keys):
            raise ClusterError(f"runs {first.label} and {other.label} sweep different parameters ("
                               f"{', '.join(keys) or 'none'}; {', '.join(theirs) or 'none'}): an overlay needs the same sweep")
    return keys


def load(run_dirs: Sequence[tuple[Path, Run, str]]) -> list[Overlaid]:
    from ..output.manifest import read_manifest, recorded_sweep
    from .points import point_results

    found = []
    for label, (run_dir, run, state) in zip(labels([run_dir.resolve().name for run_dir, _, _ in run_dirs]), run_dirs):
        manifest = read_manifest(run_dir)
        sweep = recorded_sweep(manifest)
        found.append(Overlaid(label, run, state, sweep, single.clients_of(point_results(run_dir, run, manifest), sweep)))
    return found


def by_client(runs: Sequence[Overlaid]) -> dict[str, list[tuple[int, str, single.Client]]]:
    """Client name -> (run's colour index, run label, the run's client) for each run that has it; clients in the
    order the runs list them."""
    found: dict[str, list[tuple[int, str, single.Client]]] = {}
    for index, run in enumerate(runs):
        for client in run.clients:
            found.setdefault(client.name, []).append((index, run.label, client))
    return found


def overlay_metric_plot(Figure: Any, runs: Sequence[tuple[int, str, single.Client]], metric: str, key: str,
                        keys: Sequence[str]) -> single.Plot | None:
    """`metric` against swept key `key` for each run (colour), one line style per combination of the other keys."""
    drawable = [entry for entry in runs if single.metric_plottable(entry[2], metric, key, keys)]
    if not drawable:
        return None
    everything = [point for _, _, client in drawable for point in client.points]
    all_curves, order = single.curves(everything, key, keys)
    figure = Figure()
    ax = figure.subplots()
    for colour, label, client in drawable:
        curve_set = single.curves(client.points, key, keys)[0]
        for index, curve in enumerate(curve_set):
            kept = [p for p in curve.points if p.mean(metric) is not None]
            if kept:
                ax.errorbar([curve.x(p, order) for p in kept], [p.mean(metric) for p in kept],
                            yerr=[p.error(metric) for p in kept], color=f"C{colour % 10}",
                            linestyle=_STYLES[index % len(_STYLES)], marker=_MARKERS[index % len(_MARKERS)],
                            markersize=4, capsize=3, label=label if len(curve_set) == 1 else f"{label}, {curve.label}")
    single._set_x(ax, all_curves, order)
    values = [p.mean(metric) for p in everything]
    if not single._log_scale(ax, "y", values):
        single._thousands(ax.yaxis, values)
    ax.set_xlabel(key)
    ax.set_ylabel(single._axis_label(metric))
    title = f"{drawable[0][2].name}: {metric} vs {key}"
    ax.set_title(title)
    ax.legend(loc="best")
    figure.set_layout_engine("constrained")
    caption = ("One colour per run; mean over the repeats of each point, error bars ±1 sample standard deviation"
               + ("; line style: the other swept values." if len(all_curves) > 1 else "."))
    return single.Plot(single.slug(drawable[0][2].name, metric, "vs", key), title, caption, figure)


def overlay_latency_plot(Figure: Any, runs: Sequence[tuple[int, str, single.Client]], family: single.Family,
                         throughput: str, keys: Sequence[str]) -> single.Plot | None:
    """A latency family's tail (its knee metric) against its throughput for each run (colour), each line following
    the load upward."""
    metric = family.knee_metric
    drawable = [(colour, label, client, points) for colour, label, client in runs
                if len(points := single.latency_points(client, family, throughput)) >= 2]
    if metric is None or not drawable:
        return None
    everything = [p for *_, points in drawable for p in points]
    rates = [p.mean(throughput) for p in everything]
    figure = Figure()
    ax = figure.subplots()
    log_x = single._log_scale(ax, "x", rates)
    single._log_scale(ax, "y", [p.mean(metric) for p in everything])
    if not log_x:
        single._thousands(ax.xaxis, rates)
    x_error = partial(single.shown_error, span=single._span([r for r in rates if r is not None], log_x), log=log_x)
    for colour, label, _, points in drawable:
        load = single.load_key(points, keys)
        curve_set = (single.curves(points, load, keys)[0] if load is not None else
                     [single.Curve("", (), tuple(sorted(points, key=lambda p: (p.mean(throughput), p.label))), False)])
        for index, curve in enumerate(curve_set):
            kept = [p for p in curve.points if p.mean(metric) is not None and p.mean(throughput) is not None]
            if kept:
                ax.errorbar([p.mean(throughput) for p in kept], [p.mean(metric) for p in kept],
                            xerr=[x_error(p.mean(throughput), p.error(throughput)) for p in kept],
                            yerr=[p.error(metric) for p in kept], color=f"C{colour % 10}",
                            linestyle=_STYLES[index % len(_STYLES)], marker=_MARKERS[index % len(_MARKERS)], markersize=4,
                            capsize=3, label=label if len(curve_set) == 1 else f"{label}, {curve.label}")
    stat = "mean" if metric == family.metric("mean") else metric.rsplit("_", 2)[-2]
    ax.set_xlabel(single._axis_label(throughput))
    ax.set_ylabel(f"{family.name} {stat} [ms]")
    name = drawable[0][2].name
    title = f"{name}: {family.name} {stat} vs {throughput}"
    ax.set_title(title)
    ax.legend(loc="best")
    figure.set_layout_engine("constrained")
    caption = (f"One colour per run; each line follows the load upward; error bars ±1 sample standard deviation, "
               f"horizontal ones only where narrower than {single.X_ERROR_SHARE:.0%} of the axis.")
    return single.Plot(single.slug(name, family.name, stat, "vs", throughput), title, caption, figure)


def planned(runs: Sequence[Overlaid], keys: Sequence[str]) -> list[tuple[str, Callable[[Any], single.Plot | None]]]:
    """(section, drawing) of each overlaid plot: the headline figure (of the first run's clients), then per client
    each headline metric (of any run) against each swept key, then each latency family's tail against its
    throughput."""
    wanted: list[tuple[str, Callable[[Any], single.Plot | None]]] = []
    clients = by_client(runs)
    first = single.headline_plot(runs[0].clients, keys)
    if first:
        client, metric, key = first
        wanted.append((single.HEADLINE_SECTION, partial(_metric, clients[client.name], metric, key, keys)))
    for name, entries in clients.items():
        metrics = sorted({metric for _, _, client in entries for metric in client.metrics()})
        section = f"Plots: {name}"
        wanted += [(section, partial(_metric, entries, metric, key, keys)) for metric in single.headline(metrics)
                   for key in keys if not (first and (first[0].name, first[1], first[2]) == (name, metric, key))]
        rates = single.Throughputs.of(metrics)
        wanted += [(section, partial(_latency, entries, family, throughput, keys))
                   for family in single.families(metrics).values() if (throughput := rates.paired(family)) is not None]
    return wanted


def _metric(entries: Sequence[tuple[int, str, single.Client]], metric: str, key: str, keys: Sequence[str],
            Figure: Any) -> single.Plot | None:
    return overlay_metric_plot(Figure, entries, metric, key, keys)


def _latency(entries: Sequence[tuple[int, str, single.Client]], family: single.Family, throughput: str,
             keys: Sequence[str], Figure: Any) -> single.Plot | None:
    return overlay_latency_plot(Figure, entries, family, throughput, keys)


def _runs_table(runs: Sequence[Overlaid]) -> str:
    head = "".join(f"<th>{name}</th>" for name in ("run", "colour", "recipe", "site", "created", "state", "points",
                                                     "repeats per point"))
    rows = []
    for index, run in enumerate(runs):
        cells = [run.label, f"C{index % 10}", run.run.recipe, run.run.site, run.run.created, run.state,
                 str(len(run.sweep.points)) if run.sweep else "-", str(run.sweep.repeat) if run.sweep else "-"]
        rows.append("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>")
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _summaries(runs: Sequence[Overlaid], keys: Sequence[str]) -> str:
    parts, number = [], 0
    for run in runs:
        for client in run.clients:
            number += 1
            parts.append(f'<h3 id="summary-{number}">{html.escape(run.label)}: {html.escape(client.name)} '
                         f"<small>({html.escape(client.type)})</small></h3>")
            parts.append(single._summary(client, keys, single.headline(client.metrics())))
    if not parts:
        parts.append('<p class="note">None of these runs has clients, so no results.</p>')
    parts.append('<p class="note">Cells: mean ± sample standard deviation over the repeats of a point (hover: n, '
                 "min, max); bold: the best point of a metric within its run.</p>")
    return "".join(parts)


def build_overlay(run_dirs: Sequence[tuple[Path, Run, str]], folder_name: str, notes: Sequence[str] = ()) -> single.Report:
    """The overlay report of these runs (folder, run, state); `notes`: what unfinished runs say first."""
    matplotlib, Figure = single._matplotlib()
    from .. import __version__

    runs = load(run_dirs)
    keys = same_keys(runs)
    wanted = planned(runs, keys)
    with matplotlib.rc_context(single._RC):
        drawn = single.draw_sections(matplotlib, Figure, wanted[:single.MAX_PLOTS], folder_name)
    body = ([section for section in drawn if section.id == "headline"]
            + [single.Section("summary", "Summary", _summaries(runs, keys))]
            + [section for section in drawn if section.id != "headline"])
    title = ", ".join(run.label for run in runs)
    parts = [f"<h1>orchc report: {html.escape(title)}</h1>"]
    parts += [f'<p class="note"><b>{html.escape(note)}.</b></p>' for note in notes]
    parts += [_runs_table(runs), f'<p class="note">Swept: {html.escape(", ".join(keys) or "nothing")}. Knees and GPU '
              "telemetry are in each run's own report (orchc report RUN).</p>", single.contents(body)]
    parts += [f'<h2 id="{section.id}">{html.escape(section.title)}</h2>{section.html}' for section in body]
    if len(wanted) > single.MAX_PLOTS:
        parts.append(f'<p class="note">This report draws at most {single.MAX_PLOTS} plots: '
                     f"{len(wanted) - single.MAX_PLOTS} more were left out.</p>")
    parts.append(f'<p class="note">Made by orchc {html.escape(__version__)} with matplotlib '
                 f"{html.escape(matplotlib.__version__)}; plots also in {html.escape(folder_name)}/ as SVG and PNG.</p>")
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>orchc report: {html.escape(title)}</title><style>{single._CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
    files = {file: data for section in drawn for file, data in section.files.items()}
    return single.Report(page, files, sum(len(section.plots) for section in drawn))


def cmd_report(args: argparse.Namespace) -> int:
    """`orchc report [RUN ...] [-o FILE.html]`: one run's report (report.build), or several runs overlaid (-o needed)."""
    from ..core.terminal import terminal_text
    from ..run.runs import known_state, load_run, state_note

    single._matplotlib()  # before reading anything: the one thing to install is said first
    refs: list[str | None] = list(args.run_ref) if isinstance(args.run_ref, list) else [args.run_ref]
    if len(refs) > 1 and args.output is None:
        raise ClusterError("a report of several runs needs -o FILE.html (it belongs to none of them)")
    loaded = [load_run(ref) for ref in refs or [None]]
    output: Path = args.output or loaded[0][0] / single.REPORT_NAME
    if output.suffix.lower() not in (".html", ".htm"):
        raise ClusterError(f"{output}: the report is an HTML file; name it FILE.html")
    found, notes = [], []
    for run_dir, run in loaded:
        state, current = known_state(run_dir, run)
        note = state_note(f"run {run_dir.name}", state, current)
        if note:
            print(f"orchc: note: {terminal_text(note)}", file=sys.stderr, flush=True)
            notes.append(note)
        found.append((run_dir, run, state, current))
    if len(found) == 1:
        run_dir, run, state, current = found[0]
        report = single.build(run_dir, run, output.with_suffix("").name, state, state_note("This run", state, current))
    else:
        report = build_overlay([(run_dir, run, state) for run_dir, run, state, _ in found], output.with_suffix("").name, notes)
    folder = single.write_report(report, output)
    print(f"report: {output}  ({report.plots} plot{'s' if report.plots != 1 else ''}; SVG and PNG files in {folder}/)",
          file=sys.stdout)
    return 0

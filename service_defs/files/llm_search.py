"""Capacity search for llm_bench.py: the highest open-loop request rate a server sustains within an SLO.

Standard library only, beside llm_bench.py, whose options it takes:

    llm_search.py run RESULTS_DIR [llm_bench.py's run options] --search JSON
    llm_search.py summarize RESULTS_DIR

It runs llm_bench's run (the warm-up, the engine sampler, run.json) and measures with this search instead of one
open or closed loop: llm_bench never imports this file. The search, inside one client job against a running server:

1. probes `rate.min`, then twice the rate after each pass (at most `rate.max`) until one fails, then bisects on a
   log scale between the highest rate that passed (lo) and the lowest that failed (hi) until hi / lo <= 1 +
   precision, or `max_probes` probes were made (0.5 to 64 per second at 5 %: at most 8 + 4 probes). Doubling keeps
   the first failing probe under twice the capacity, so it leaves the server a short backlog; after a probe that
   did not pass, single requests are sent one after another until one's TTFT is back within 1.5 times (plus 20 ms)
   the least TTFT seen so far (at most `settle_s` seconds): the next probe starts against an idle server;
2. each probe is one open loop at its rate (arrivals `poisson`, seeded, or `constant`): its first `warmup_s`
   seconds of arrivals are sent and not judged, then at least `probe_requests` requests and `probe_s` seconds are
   judged. Each SLO bound `FAMILY_pQ_ms` (FAMILY ttft, tpot or e2e_latency; Q a percentile) says at most (100 - Q) %
   of the requests may exceed it (a failed request exceeds every bound). With k of n judged requests over a
   bound, the one-sided Clopper-Pearson interval of the share at `confidence` decides: its upper end within
   (100 - Q) % passes, its lower end beyond fails; a probe fails as soon as one bound fails (the requests in flight
   are cut and not judged) and passes only when every bound passed once the minimum is reached; otherwise it runs
   on, up to `max_probe_requests`, and then counts as undecided: not a pass;
3. a probe at which the client did not keep up with its own schedule (llm_bench's audit: client_kept_up 0) says
   nothing of the server: the search stops there, and the capacity is reported as at least the highest pass,
   with capacity_client_limited 1.

search.json holds every probe (rate, verdict, per bound n, k, the interval and the measured percentile, and the
probe's llm_bench metrics), rewritten after each probe, so a search cut short reports what it found so far;
metrics.json the capacity (lo), its bracket [lo, hi) and the figures at lo.
"""

import json
import math
import os
import re
import sys
import threading
import time
from argparse import Namespace

import llm_bench as bench

FAMILIES = {"ttft": "ttft_s", "tpot": None, "e2e_latency": "e2e_s"}
BOUND = re.compile(r"(ttft|tpot|e2e_latency)_p(\d{1,2}(?:\.\d+)?)_ms")
DEFAULTS = {"precision": 0.05, "confidence": 0.95, "probe_requests": 50, "probe_s": 5.0, "max_probe_requests": 500,
            "warmup_s": 1.0, "max_probes": 12, "arrivals": "poisson", "settle_s": 120.0}


# ------------------------------------------------------------------------------------------------- statistics

def _log_pmf(i, n, p):
    if p <= 0.0:
        return 0.0 if i == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if i == n else -math.inf
    return (math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
            + i * math.log(p) + (n - i) * math.log1p(-p))


def binomial_cdf(k, n, p):
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return min(1.0, sum(math.exp(_log_pmf(i, n, p)) for i in range(k + 1)))


def _solve(function, target):
    """p in [0, 1] with function(p) == target, function decreasing in p (bisection to 1e-9)."""
    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        if function(middle) > target:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def share_interval(k, n, confidence):
    """One-sided Clopper-Pearson bounds at `confidence` of the share behind k successes in n trials: (lower, upper)."""
    alpha = 1.0 - confidence
    upper = 1.0 if k >= n else _solve(lambda p: binomial_cdf(k, n, p), alpha)
    lower = 0.0 if k <= 0 else 1.0 - _solve(lambda q: binomial_cdf(n - k, n, q), alpha)
    return lower, upper


def requests_to_pass(quantile, confidence):
    """The fewest judged requests, none over its bound, that pass a bound at `quantile` (%): n with (1 - a)^n <= alpha."""
    allowed = 1.0 - quantile / 100.0
    return math.ceil(math.log(1.0 - confidence) / math.log(1.0 - allowed))


# ------------------------------------------------------------------------------------------------- the SLO

def parse_bounds(slo):
    """[(key, family, quantile %, bound ms)] of an SLO object; ValueError naming a key that is not FAMILY_pQ_ms."""
    bounds = []
    for key, value in sorted(slo.items()):
        found = BOUND.fullmatch(key)
        if not found or not 0 < float(found.group(2)) < 100:
            raise ValueError(f"{key}: not FAMILY_pQ_ms (FAMILY: ttft, tpot, e2e_latency; 0 < Q < 100)")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ValueError(f"{key}: not a positive number of milliseconds")
        bounds.append((key, found.group(1), float(found.group(2)), float(value)))
    if not bounds:
        raise ValueError("the SLO has no bound")
    return bounds


def figure_ms(record, family):
    """A successful request's figure of `family` in ms (TPOT 0 with one output token, as vLLM's goodput counts it)."""
    if family == "tpot":
        tokens = record.get("output_tokens") or 0
        return (record["e2e_s"] - record["ttft_s"]) / (tokens - 1) * 1000.0 if tokens > 1 else 0.0
    return record[FAMILIES[family]] * 1000.0


def over(record, family, bound):
    """Whether a judged request exceeds a bound: a failed request exceeds every bound."""
    return not record.get("ok") or figure_ms(record, family) > bound


class Tally:
    """The judged requests of one probe, bound by bound, and the verdict they give."""

    def __init__(self, bounds, confidence):
        self.bounds, self.confidence = bounds, confidence
        self.judged = 0
        self.over = {key: 0 for key, *_ in bounds}

    def add(self, record):
        self.judged += 1
        for key, family, _, bound in self.bounds:
            self.over[key] += over(record, family, bound)

    def verdicts(self):
        """{key: (verdict, lower, upper)}: 'pass', 'fail' or 'undecided' per bound."""
        out = {}
        for key, _, quantile, _ in self.bounds:
            allowed = 1.0 - quantile / 100.0
            lower, upper = share_interval(self.over[key], self.judged, self.confidence) if self.judged else (0.0, 1.0)
            out[key] = ("pass" if upper <= allowed else "fail" if lower > allowed else "undecided", lower, upper)
        return out

    def verdict(self):
        found = [v for v, _, _ in self.verdicts().values()]
        return "fail" if "fail" in found else "pass" if all(v == "pass" for v in found) else "undecided"


# ------------------------------------------------------------------------------------------------- probes

class ProbeRun(bench.Run):
    """One probe's run: its own stop (a decided probe ends), the search's deadline and signals too."""

    def __init__(self, args, parent):
        super().__init__(args)
        self.parent = parent
        self.deadline = parent.deadline
        self.enough = False   # decided: send nothing more, let what is in flight end

    def stopping(self):
        return self.enough or self.parent.stopping() or super().stopping()

    def why_stopped(self):
        return self.parent.stop_reason or self.stop_reason or "cut at duration"


def run_probe(parent, args, prompts, settings, bounds, rate, number, first_index, out):
    """One probe at `rate`: its records (written to `out` with "probe": number) and its summary."""
    warmup = math.ceil(rate * settings["warmup_s"])
    needed = max(settings["probe_requests"], math.ceil(rate * settings["probe_s"]),
                 max(requests_to_pass(q, settings["confidence"]) for _, _, q, _ in bounds))
    most = max(needed, settings["max_probe_requests"])
    probe_args = Namespace(**{**vars(args), "request_rate": rate, "seed": args.seed + number,
                              "arrivals": settings["arrivals"]})
    run = ProbeRun(probe_args, parent)
    tally = Tally(bounds, settings["confidence"])
    records = []
    lock = threading.Lock()

    def on_record(record):
        record["probe"] = number
        judged = record["index"] - first_index >= warmup and not record.get("cut")
        record["judged"] = judged
        with lock:
            records.append(record)
            out.write(json.dumps(record, sort_keys=True) + "\n")
            out.flush()
            if not judged or run.enough:
                return
            tally.add(record)
            verdict = tally.verdict()
            if verdict == "fail":
                run.enough = True
                run.stop("cut: the probe failed its SLO")
            elif verdict == "pass" and tally.judged >= needed:
                run.enough = True

    run.t0 = time.perf_counter()
    cpu = time.process_time()
    bench.open_loop(run, prompts, warmup + most, first_index, on_record)
    wall = time.perf_counter() - run.t0
    measured = [r for r in records if r["judged"]]
    info = {"request_rate": rate, "wall_time_s": wall, "client_cpu_s": time.process_time() - cpu}
    figures = bench.metrics_of(_from_judged_start(measured, records, first_index, warmup),
                               {**info, "wall_time_s": _judged_wall(measured) or wall})
    # the CPU was counted over the whole probe, warm-up included (the same rate): its share is of the whole probe's time
    figures["client_cpu_percent"] = 100.0 * info["client_cpu_s"] / wall if wall > 0 else None
    verdicts = tally.verdicts()
    summary = {"probe": number, "rate_per_s": rate, "verdict": tally.verdict(), "judged": tally.judged,
               "warmup_requests": warmup, "cut_by": parent.stop_reason,
               "bounds": {key: {"over": tally.over[key], "share_lower": low, "share_upper": high, "verdict": verdict,
                                "measured_ms": _measured(measured, family, quantile)}
                          for (key, family, quantile, _), (verdict, low, high) in
                          ((bound, verdicts[bound[0]]) for bound in bounds)},
               "client_kept_up": figures.get("client_kept_up"), "metrics": figures}
    if parent.stopping():
        summary["verdict"] = "cut"
    return records, summary


def _from_judged_start(measured, records, first_index, warmup):
    """The judged records with their schedule counted from the last warm-up arrival, as llm_bench counts a run's from
    its start: the audit's scheduled and achieved rates are then the judged phase's, not diluted by the warm-up's time."""
    origin = max((r["intended_s"] for r in records if r["index"] - first_index < warmup and r.get("intended_s") is not None),
                 default=0.0)
    return [{**r, "intended_s": r["intended_s"] - origin, "send_s": r["send_s"] - origin}
            if r.get("intended_s") is not None else r for r in measured]


def _judged_wall(records):
    """From the first judged send to the end of the last judged request."""
    if not records:
        return None
    return max(r["send_s"] + (r.get("end_s") or 0.0) for r in records) - min(r["send_s"] for r in records)


def _measured(records, family, quantile):
    """The probe's percentile of `family` (failed requests as +inf: they exceed every bound), None without requests."""
    values = sorted(figure_ms(r, family) if r.get("ok") else math.inf for r in records)
    if not values:
        return None
    value = values[min(len(values) - 1, max(0, math.ceil(quantile / 100.0 * len(values)) - 1))]
    return value if value != math.inf else None


# ------------------------------------------------------------------------------------------------- the search

def next_rate(lo, hi, rates, settings):
    """The next rate to probe, None when the search is done: min, doubling after each pass up to max, then the
    log-midpoint of [lo, hi)."""
    low, high = rates
    if lo is None:
        return low if hi is None else None          # min failed: the capacity is below it
    if hi is None:
        return min(2.0 * lo, high) if lo < high else None      # max passed: at least max
    if hi / lo <= 1.0 + settings["precision"]:
        return None
    return math.sqrt(lo * hi)


def settle(parent, args, prompts, baseline_s, settings):
    """After a probe that did not pass: single requests, one after another, until one's TTFT is within
    1.5 x baseline + 20 ms (the server has worked off the probe's backlog); the seconds it took, None if it did not
    settle within settle_s."""
    run = ProbeRun(args, parent)
    started = time.perf_counter()
    conn = bench.new_connection(args)
    try:
        while not run.stopping() and time.perf_counter() - started < settings["settle_s"]:
            record = bench.send(run, conn, -1, 0, prompts[0])
            if not record.get("ok"):
                conn.close()
                conn = bench.new_connection(args)
                time.sleep(0.2)
            elif record["ttft_s"] <= 1.5 * baseline_s + 0.02:
                return time.perf_counter() - started
    finally:
        conn.close()
    return None


def capacity_metrics(probes, bounds):
    """metrics.json of a search: the capacity, its bracket, and the figures at the capacity probe. A probe the client
    did not keep up with (client_kept_up 0) bounds neither end: the server saw a lower rate than the probe's, and
    the client's own delays are in its figures."""
    kept_up = [p for p in probes if p.get("client_kept_up") != 0]
    passed = [p for p in kept_up if p["verdict"] == "pass"]
    lo = max(passed, key=lambda p: p["rate_per_s"]) if passed else None
    failing = [p["rate_per_s"] for p in kept_up if p["verdict"] in ("fail", "undecided")
               and (lo is None or p["rate_per_s"] > lo["rate_per_s"])]
    limited = any(p.get("client_kept_up") == 0 for p in probes)
    metrics = {"capacity_requests_per_s": lo["rate_per_s"] if lo else None,
               "capacity_low_requests_per_s": lo["rate_per_s"] if lo else 0.0,
               "capacity_high_requests_per_s": min(failing) if failing else None,
               "search_probes_count": len(probes),
               "search_undecided_probes_count": sum(p["verdict"] == "undecided" for p in probes),
               "capacity_client_limited": 1 if limited else 0}
    at = lo["metrics"] if lo else {}
    for name in ("request_throughput_per_s", "output_tokens_per_s", "ttft_p99_ms", "tpot_p99_ms", "e2e_latency_p99_ms"):
        metrics["capacity_" + name] = at.get(name)
    for key, *_ in bounds:
        metrics["capacity_measured_" + key] = lo["bounds"][key]["measured_ms"] if lo else None
    return metrics


def search_settings(search):
    """The search object with defaults; ValueError for anything else than documented keys and values."""
    unknown = sorted(set(search) - set(DEFAULTS) - {"slo", "rate"})
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}")
    settings = {**DEFAULTS, **{k: v for k, v in search.items() if k in DEFAULTS}}
    rate = search.get("rate")
    if not isinstance(rate, dict) or set(rate) != {"min", "max"}:
        raise ValueError("rate: give {min: R, max: R} in requests per second")
    low, high = rate["min"], rate["max"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf for v in (low, high)) \
            or not low < high:
        raise ValueError("rate: min and max must be positive, min < max")
    if settings["arrivals"] not in ("poisson", "constant"):
        raise ValueError("arrivals: poisson or constant")
    if not 0 < settings["precision"] < 1 or not 0.5 <= settings["confidence"] < 1:
        raise ValueError("precision in (0, 1), confidence in [0.5, 1)")
    return settings, (float(low), float(high)), parse_bounds(search.get("slo") or {})


def search_command(args, run, prompts):
    """Run the search (llm_bench's run with --search); 0, or 1 when no probe could judge a request."""
    settings, rates, bounds = search_settings(args.search)
    path = os.path.join(args.results, "search.json")
    probes = []
    first_index = 0
    lo = hi = None
    baseline = None
    with open(os.path.join(args.results, "requests.jsonl"), "a") as out:
        while len(probes) < settings["max_probes"] and not run.stopping():
            rate = next_rate(lo, hi, rates, settings)
            if rate is None:
                break
            records, summary = run_probe(run, args, prompts, settings, bounds, rate, len(probes) + 1, first_index, out)
            first_index += len(records) + 1
            probes.append(summary)
            bench.write_json(path, {"slo": args.search.get("slo"), "settings": settings, "rate": list(rates),
                                    "probes": probes})
            if summary["verdict"] == "cut":
                break
            if summary["client_kept_up"] == 0:
                print(f"llm_search: the client did not keep up at {rate:g}/s: the search stops (capacity at least "
                      f"{lo or 0:g}/s)", flush=True)
                break
            ttfts = [r["ttft_s"] for r in records if r.get("ok")]
            baseline = min([*ttfts, *([baseline] if baseline is not None else [])], default=None)
            if summary["verdict"] == "pass":
                lo = rate if lo is None else max(lo, rate)
            else:
                hi = rate if hi is None else min(hi, rate)
                if baseline is not None:
                    summary["settled_s"] = settle(run, args, prompts, baseline, settings)
                    bench.write_json(path, {"slo": args.search.get("slo"), "settings": settings, "rate": list(rates),
                                            "probes": probes})
            print(f"llm_search: probe {len(probes)} at {rate:g}/s: {summary['verdict']} ({summary['judged']} judged)",
                  flush=True)
    metrics = summarize_search(args.results)
    return 0 if metrics and any(p["judged"] for p in probes) else 1


def summarize_search(results):
    """metrics.json from search.json (also for a search cut short); None without search.json."""
    try:
        with open(os.path.join(results, "search.json")) as handle:
            search = json.load(handle)
    except (OSError, ValueError):
        return None
    bounds = parse_bounds(search.get("slo") or {})
    metrics = capacity_metrics(search.get("probes") or [], bounds)
    bench.write_json(os.path.join(results, "metrics.json"), metrics)
    return metrics


def main(argv):
    """`run`: check the search first (a usage error, exit 2, before any request or file), then llm_bench's run with
    this search; `summarize`: metrics.json from search.json."""
    if argv[:1] == ["summarize"] and len(argv) == 2:
        return 0 if summarize_search(argv[1]) is not None else 1
    args = bench.arguments(argv)
    if args.command != "run" or not args.search:
        raise SystemExit("llm_search: usage: llm_search.py run RESULTS ... --search JSON | llm_search.py summarize RESULTS")
    try:
        search_settings(args.search)
    except ValueError as exc:
        print(f"llm_search: error: --search: {exc}", file=sys.stderr)
        return 2
    return bench.main(argv, sys.modules[__name__])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

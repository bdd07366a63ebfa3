#!/usr/bin/env python3
"""orchc LLM serving benchmark: streaming requests against an OpenAI-compatible or Ollama server.

Standard library only (Python >= 3.8), so that it runs with any compute node's python3 or in the
plain python image, with nothing installed.

    llm_bench.py run RESULTS_DIR [--config FILE] --host H --port P --api API [--model M] [options]
    llm_bench.py summarize RESULTS_DIR
    llm_bench.py merge RESULTS_DIR TASK_RESULTS_DIR...

`run` sends the warm-up requests (not counted), then the measured ones, closed loop (`--concurrent`
workers, `--num-requests` in all) or open loop (`--request-rate`, Poisson arrivals from a seeded
generator, optional `--max-concurrency`), streaming every answer:

- openai-completions: POST /v1/completions, openai-chat: POST /v1/chat/completions, both with
  "stream": true and "stream_options": {"include_usage": true}; the answer is server-sent events,
  `data: {json}` lines and a final `data: [DONE]`; chunks with content carry tokens (carries_token: not the
  role chunk, nor a finish_reason chunk with an empty delta), the last chunk carries `usage` (prompt_tokens,
  completion_tokens); without it, token chunks are counted and the input tokens are unknown (null).
- ollama: POST /api/generate with "stream": true; the answer is one JSON object per line, the last one
  with "done": true and the server's counts and timings (prompt_eval_count, eval_count, load_duration,
  prompt_eval_duration, eval_duration, total_duration; nanoseconds).

Every request is written to RESULTS_DIR/requests.jsonl as soon as it ends (so a run cut short keeps
what finished), with its times in seconds relative to its own send time. `summarize` (also run at the
end of `run`) computes metrics.json from requests.jsonl and run.json with the definitions of vLLM's
`vllm bench serve` (vllm/benchmarks/serve.py, calculate_metrics):

- TTFT: first token chunk - send; ITL: the gaps between successive token chunks, pooled over requests;
- E2E latency: last token chunk - send; TPOT: (E2E - TTFT) / (output tokens - 1), requests with > 1 token;
- throughput: successful requests / wall time; output tokens/s: their output tokens / wall time;
  total tokens/s: their (input + output) tokens / wall time; wall time from the first measured send
  to the end of the last request;
- percentiles as numpy.percentile (linear interpolation between closest ranks).

and the client's audit of itself (audit_of): every request records when it was meant to be sent (its Poisson
arrival; closed loop: when its worker's last answer ended) and when it was, so the results carry the schedule
delay, the requested, scheduled and achieved rates, latencies from the intended send (no coordinated omission),
the process's CPU time over the measured phase and client_kept_up (inference-perf's rule, KEPT_UP_*).

Engine metrics (engine_of): every `--engine-metrics-interval` seconds of the measured phase (not against Ollama, which
serves no /metrics) the program reads the server's own GET /metrics (Prometheus text; vLLM's names, as
vllm/v1/metrics/loggers.py writes them: vllm:num_requests_running, vllm:num_requests_waiting,
vllm:kv_cache_usage_perc, or vllm:gpu_cache_usage_perc before vLLM renamed it, vllm-project/vllm#18354) into
RESULTS_DIR/engine.jsonl; the metrics give their mean and maximum (waiting is the engine's queue depth).

Energy (energy_of): with `--gpu-csv FILE` (the GPU sampler's nvidia-smi CSV of the server's job), the GPUs' energy
over the measured phase is the mean power.draw of the rows stamped inside it, summed over the GPUs, times its wall
time; per output token it is J/token. Exact while the power is constant between samples; otherwise its error is
that of a mean of wall_time / interval samples (README "LLM serving metrics").

With `--slo` (bounds in ms on TTFT, TPOT, E2E), also goodput as vLLM's --goodput counts it (requests that met every
bound, per second; their output tokens per second), the share of requests that met it, and whether the p99s meet
the bounds as MLPerf's Server scenario requires (slo_metrics).

Nothing starts after `--duration` seconds (counted from the program's start, warm-up included), and
requests still running then are cut, kept with error "cut at duration". SIGTERM, SIGINT and SIGUSR1 cut the
same way (error "stopped by SIGTERM", or "cut at REASON" when orchc wrote REASON into RESULTS_DIR/stopped
before stopping the benchmark: its duration or time limit), then the program writes its metrics and exits.

With `--replicas HOST:PORT,...` (the replicas of a service with one engine per GPU) each request goes to one
replica, chosen by `--replica-policy`: round-robin (each in turn) or least-outstanding (the fewest requests in flight,
ties in turn); its record names the replica. metrics.json stays the total of the pooled requests, with replicas_count,
and replicas.json holds each replica's own metrics (over the run's whole wall time) and its outliers (outliers_of).
The server's /metrics, its models and its version are read from --host and --port.

With LLM_BENCH_API_KEY in the environment, every request (the server's version and models too) carries
`Authorization: Bearer KEY`, as vLLM's --api-key / VLLM_API_KEY and OpenAI's API expect. The key is read
from the environment only, so that it never shows on a command line. With `--tls-ca FILE` the connection is
TLS (orchc's proxy in front of Ollama), the server's certificate checked against FILE.
"""

import argparse
import http.client
import http.server
import json
import math
import os
import random
import signal
import socket
import ssl
import sys
import threading
import time

APIS = {"openai-completions": "/v1/completions", "openai-chat": "/v1/chat/completions", "ollama": "/api/generate"}
PERCENTILES = (("median", 50), ("p90", 90), ("p95", 95), ("p99", 99))
HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream, application/x-ndjson"}
OLLAMA_TIMINGS = ("load_duration", "prompt_eval_duration", "eval_duration", "total_duration")
LLAMACPP_TIMINGS = ("prompt_n", "prompt_ms", "predicted_n", "predicted_ms", "predicted_per_token_ms")
"""What llama-server's `timings` of a request (tools/server/server-common.cpp, server_slot_stats::to_json) says of it:
the prompt's tokens and processing time, the generated tokens, their time and time per token (ms, its own clock)."""
WORDS = ("the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on",
         "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had", "they",
         "you", "were", "their", "one", "all", "we", "can", "her", "has", "there", "been", "if", "more", "when",
         "will", "would", "who", "so", "no", "time", "model", "data", "system", "node", "cluster", "memory")
"""Synthetic prompts are words drawn from this list (the same words for the same seed)."""


def auth_headers():
    """The Authorization header for the key in LLM_BENCH_API_KEY (none without it)."""
    key = os.environ.get("LLM_BENCH_API_KEY", "")
    return {"Authorization": "Bearer " + key} if key else {}


# ---------------------------------------------------------------------------------------------- statistics

def percentile(values, p):
    """numpy.percentile(values, p) with its default method "linear": the value at rank (n - 1) * p / 100,
    interpolated between the two closest ranks. None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = (len(ordered) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution(name, values_s):
    """name_mean_ms, name_median_ms, name_p90_ms, ..., name_min_ms, name_max_ms of values in seconds."""
    values = [v * 1000.0 for v in values_s]
    out = {name + "_mean_ms": sum(values) / len(values) if values else None}
    for label, p in PERCENTILES:
        out[f"{name}_{label}_ms"] = percentile(values, p)
    out[name + "_min_ms"] = min(values) if values else None
    out[name + "_max_ms"] = max(values) if values else None
    return out


def rate(amount, seconds):
    return amount / seconds if seconds and seconds > 0 else None


KEPT_UP_DELAY_MS = 10.0
"""inference-perf's rule (docs/loadgen.md, Troubleshooting): the median schedule delay under 10 ms ..."""
KEPT_UP_RATE_SHARE = 0.95
"""... and the achieved rate "very close" to the requested one, here at least 95 % of the schedule's rate."""


def audit_of(records, run):
    """The client's audit of its own load: schedule delay (actual - intended send, every request sent), the
    requested, scheduled and achieved send rates, latency from the intended send (successful requests), its CPU
    over the measured phase, and client_kept_up: 1 when the median delay is under KEPT_UP_DELAY_MS and (open
    loop) the achieved rate at least KEPT_UP_RATE_SHARE of the schedule's, 0 otherwise, null without delays."""
    timed = [r for r in records if isinstance(r.get("intended_s"), (int, float)) and isinstance(r.get("send_s"), (int, float))]
    delays = [r["send_s"] - r["intended_s"] for r in timed]
    requested = run.get("request_rate")
    last_intended = max((r["intended_s"] for r in timed), default=0.0)
    scheduled = rate(len(timed), last_intended) if requested else None
    achieved = rate(len(timed), max((r["send_s"] for r in timed), default=0.0))
    cpu, wall = run.get("client_cpu_s"), run.get("wall_time_s")
    audit = {"requested_rate_per_s": requested, "scheduled_rate_per_s": scheduled, "achieved_rate_per_s": achieved,
             "client_cpu_s": cpu, "client_cpu_percent": 100.0 * cpu / wall if cpu is not None and wall else None}
    audit.update(distribution("schedule_delay", delays))
    ok = [(r["send_s"] - r["intended_s"], r) for r in timed if r.get("ok")]
    audit.update(distribution("ttft_from_schedule", [delay + r["ttft_s"] for delay, r in ok]))
    audit.update(distribution("e2e_from_schedule", [delay + r["e2e_s"] for delay, r in ok]))
    median = audit["schedule_delay_median_ms"]
    if median is None:
        audit["client_kept_up"] = None
    else:
        behind = scheduled is not None and (achieved is None or achieved < KEPT_UP_RATE_SHARE * scheduled)
        audit["client_kept_up"] = 0 if median >= KEPT_UP_DELAY_MS or behind else 1
    return audit


SLO_KEYS = ("ttft_p99_ms", "tpot_p99_ms", "e2e_latency_p99_ms")
"""The SLO keys a run may declare (--slo, run.json "slo"; milliseconds, each the name of the metric it bounds): each
bounds a request's own TTFT, TPOT or E2E latency (vLLM's --goodput ttft/tpot/e2el) and the run's p99 of it (MLPerf's
Server constraints)."""


def request_figures_ms(record):
    """A successful request's TTFT, TPOT (0 with one output token, as vLLM counts it for goodput) and E2E, in ms."""
    tokens = record.get("output_tokens") or 0
    tpot = (record["e2e_s"] - record["ttft_s"]) / (tokens - 1) if tokens > 1 else 0.0
    return {"ttft_p99_ms": record["ttft_s"] * 1000.0, "tpot_p99_ms": tpot * 1000.0, "e2e_latency_p99_ms": record["e2e_s"] * 1000.0}


def met_slo(record, slo):
    """Whether a request met every bound of the SLO (vLLM's goodput rule: each figure <= its bound): True or False;
    a failed request did not; a request cut in flight did not when it had already passed a bound (no token after
    the TTFT bound, or running past the E2E bound), and is not judged (None) otherwise."""
    if record.get("ok"):
        figures = request_figures_ms(record)
        return all(figures[key] <= bound for key, bound in slo.items())
    if not record.get("cut"):
        return False
    elapsed = (record.get("end_s") or 0.0) * 1000.0
    ttft = record.get("ttft_s")
    late_first = "ttft_p99_ms" in slo and (ttft * 1000.0 if ttft is not None else elapsed) > slo["ttft_p99_ms"]
    late_end = "e2e_latency_p99_ms" in slo and elapsed > slo["e2e_latency_p99_ms"]
    return False if late_first or late_end else None


def slo_metrics(records, metrics, slo, wall):
    """goodput_requests_per_s and goodput_tokens_per_s (the requests that met every bound, and their output tokens,
    per second of wall time: vLLM's request_goodput), slo_met_ratio (of the requests judged by met_slo) and
    slo_p99_met: 1 when the p99 of each bounded figure is within its bound and no request failed (MLPerf's Server
    constraints), 0 otherwise, null without requests."""
    verdicts = [(met_slo(r, slo), r) for r in records]
    good = [r for verdict, r in verdicts if verdict]
    judged = sum(1 for verdict, _ in verdicts if verdict is not None)
    # requests of one token have no TPOT; as in the per-request rule, theirs counts as 0
    p99 = [0.0 if key == "tpot_p99_ms" and metrics.get(key) is None and metrics["requests_ok_count"] else metrics.get(key)
           for key in slo]
    within = all(value is not None and value <= slo[key] for key, value in zip(slo, p99))
    return {"goodput_requests_per_s": rate(len(good), wall) if records else None,
            "goodput_tokens_per_s": rate(sum(r.get("output_tokens") or 0 for r in good), wall) if records else None,
            "slo_met_ratio": len(good) / judged if judged else None,
            "slo_p99_met": (1 if within and not metrics["requests_failed_count"] else 0) if records else None}


def metrics_of(records, run, engine=()):
    """metrics.json from the measured requests (records), run.json (run) and the engine's samples."""
    ok = [r for r in records if r.get("ok")]
    cut = [r for r in records if not r.get("ok") and r.get("cut")]
    failed = [r for r in records if not r.get("ok") and not r.get("cut")]
    wall = run.get("wall_time_s")
    if wall is None and records:
        # the run did not end by itself (killed): it lasted at least until its last request ended
        wall = max(r["send_s"] + (r.get("end_s") or 0.0) for r in records)
    # one request whose server gave no prompt count makes the total unknown (null), never a 0 that looks measured
    input_tokens = sum(r["input_tokens"] for r in ok) if all(isinstance(r.get("input_tokens"), int) for r in ok) else None
    output_tokens = sum(r.get("output_tokens") or 0 for r in ok)
    tpots = [(r["e2e_s"] - r["ttft_s"]) / (r["output_tokens"] - 1) for r in ok if (r.get("output_tokens") or 0) > 1]
    itls = []
    for r in ok:
        times = r["chunk_times_s"]
        itls.extend(b - a for a, b in zip(times, times[1:]))  # noqa: RUF007 (itertools.pairwise: Python 3.10)
    metrics = {
        "requests_ok_count": len(ok),
        "requests_failed_count": len(failed),
        "requests_cut_count": len(cut),
        "warmup_requests_count": run.get("warmup_requests_done", 0),
        "wall_time_s": wall,
        "input_tokens_count": input_tokens,
        "output_tokens_count": output_tokens,
        "request_throughput_per_s": rate(len(ok), wall),
        "output_tokens_per_s": rate(output_tokens, wall),
        "total_tokens_per_s": rate(input_tokens + output_tokens, wall) if input_tokens is not None else None,
    }
    metrics.update(distribution("ttft", [r["ttft_s"] for r in ok]))
    metrics.update(distribution("tpot", tpots))
    metrics.update(distribution("itl", itls))
    metrics.update(distribution("e2e_latency", [r["e2e_s"] for r in ok]))
    metrics.update(audit_of(records, run))
    if run.get("slo"):
        metrics.update(slo_metrics(records, metrics, run["slo"], wall))
    metrics.update(engine_of(engine))
    metrics.update(energy_of(run, output_tokens))
    metrics.update(server_timings_of(ok))
    if run.get("api") == "ollama":
        for key in OLLAMA_TIMINGS:
            reported = [r["server"][key] for r in ok if isinstance((r.get("server") or {}).get(key), (int, float))]
            metrics[key + "_mean_ms"] = sum(reported) / len(reported) / 1e6 if reported else None
    return metrics


def server_timings_of(ok):
    """The server's own timings of the requests that carry llama.cpp's (prompt_ms, predicted_per_token_ms), their
    means, and the client's overhead over them: TTFT - prompt_ms (HTTP, streaming, the client's reading and the wait
    for a slot) and TPOT - predicted_per_token_ms (a token's way from the engine to the client), means in ms."""
    timed = [r for r in ok if isinstance((r.get("server") or {}).get("prompt_ms"), (int, float))
             and isinstance(r["server"].get("predicted_per_token_ms"), (int, float))]
    per_token = [r for r in timed if (r.get("output_tokens") or 0) > 1]

    def mean(values):
        return sum(values) / len(values) if values else None

    return {"server_timed_requests_count": len(timed),
            "server_prompt_mean_ms": mean([r["server"]["prompt_ms"] for r in timed]),
            "server_predicted_per_token_mean_ms": mean([r["server"]["predicted_per_token_ms"] for r in per_token]),
            "client_ttft_overhead_mean_ms": mean([r["ttft_s"] * 1000.0 - r["server"]["prompt_ms"] for r in timed]),
            "client_tpot_overhead_mean_ms": mean([(r["e2e_s"] - r["ttft_s"]) * 1000.0 / (r["output_tokens"] - 1)
                                                  - r["server"]["predicted_per_token_ms"] for r in per_token])}


def timings_of(data):
    """llama.cpp's timings of a request from a chunk that carries them (LLAMACPP_TIMINGS), {} from any other."""
    timings = data.get("timings")
    if not isinstance(timings, dict):
        return {}
    return {k: timings[k] for k in LLAMACPP_TIMINGS if isinstance(timings.get(k), (int, float))}


ENGINE_GAUGES = {"running": ("vllm:num_requests_running", "llamacpp:requests_processing"),
                 "waiting": ("vllm:num_requests_waiting", "llamacpp:requests_deferred"),
                 "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")}
"""What an engine sample holds, from the first of the names the server's /metrics has (vLLM renamed the KV cache's;
llama-server's, tools/server/server-task.cpp to_metrics, count its busy slots and deferred requests, no KV-cache ratio)."""


def engine_sample(text):
    """{running, waiting, kv_cache_usage} from Prometheus text: requests summed over the label sets (one per engine
    and model), the highest KV-cache use; None for a gauge the text does not have."""
    seen = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition("{") if "{" in line.split(" ", 1)[0] else line.partition(" ")
        try:
            value = float(rest.rsplit("}", 1)[-1].split()[0])
        except (IndexError, ValueError):
            continue
        if math.isfinite(value):
            seen.setdefault(name.strip(), []).append(value)
    sample = {}
    for key, names in ENGINE_GAUGES.items():
        values = next((seen[name] for name in names if name in seen), None)
        sample[key] = None if values is None else (max(values) if key == "kv_cache_usage" else sum(values))
    return sample


def engine_of(samples):
    """The engine's figures over the measured phase: mean and maximum of each gauge (null when never sampled)."""
    metrics = {"engine_samples_count": len(samples)}
    for key, unit in (("running", "count"), ("waiting", "count"), ("kv_cache_usage", "ratio")):
        values = [s[key] for s in samples if isinstance(s.get(key), (int, float))]
        metrics[f"engine_{key}_mean_{unit}"] = sum(values) / len(values) if values else None
        top = max(values) if values else None
        metrics[f"engine_{key}_max_{unit}"] = int(top) if unit == "count" and top is not None else top
    return metrics


def gpu_rows(path, start, end):
    """(GPU index, power W) of the rows of an nvidia-smi CSV (the GPU sampler's: a header, `timestamp, index, ...,
    power.draw [W], ...`) stamped from start to end (seconds since the epoch; the stamps are the node's local time)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return _gpu_rows(handle, start, end)
    except OSError:
        return []


def _gpu_rows(lines, start, end):
    """gpu_rows of an open file, read a line at a time (a long run's file is large)."""
    header = [name.strip() for name in next(lines, "").split(",")]
    if "index" not in header or not any(name.startswith("power.draw") for name in header):
        return []
    at_index = header.index("index")
    at_power = next(i for i, name in enumerate(header) if name.startswith("power.draw"))
    rows = []
    for line in lines:
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != len(header):
            continue
        try:
            stamp, _, fraction = cells[0].partition(".")
            when = time.mktime(time.strptime(stamp, "%Y/%m/%d %H:%M:%S")) + float("0." + (fraction or "0"))
            watts = float(cells[at_power])
        except ValueError:
            continue   # [N/A], a row cut short
        if start <= when <= end and math.isfinite(watts):
            rows.append((cells[at_index], watts))
    return rows


def energy_of(run, output_tokens):
    """GPU energy over the measured phase (J), the mean power summed over the GPUs (W), and J per output token."""
    rows = gpu_rows(run["gpu_csv"], run["t0_epoch"], run["t1_epoch"]) if run.get("gpu_csv") and run.get("t1_epoch") else []
    by_gpu = {}
    for index, watts in rows:
        by_gpu.setdefault(index, []).append(watts)
    power = sum(sum(w) / len(w) for w in by_gpu.values()) if by_gpu else None
    energy = power * run["wall_time_s"] if power is not None and run.get("wall_time_s") else None
    return {"gpu_samples_count": len(rows), "gpu_power_mean_w": power, "gpu_energy_j": energy,
            "energy_per_token_j": energy / output_tokens if energy is not None and output_tokens else None}


class EngineSampler(threading.Thread):
    """Reads the server's GET /metrics every `interval` seconds until stopped; gives up at a 404 (no metrics there)."""

    def __init__(self, args, interval):
        super().__init__(daemon=True)
        self.args, self.interval = args, interval
        self.samples = []
        self.done = threading.Event()
        self.t0 = time.perf_counter()

    def run(self):
        while not self.done.is_set():
            began = time.perf_counter()
            conn = new_connection(self.args)
            try:
                conn.timeout = max(self.interval, 5.0)
                conn.request("GET", "/metrics", headers=auth_headers())
                response = conn.getresponse()
                body = response.read(4 << 20).decode("utf-8", "replace")
                if response.status == 404:
                    return
                if response.status == 200:
                    self.samples.append({"t_s": round(began - self.t0, 6), **engine_sample(body)})
            except (OSError, http.client.HTTPException):
                pass
            finally:
                conn.close()
            self.done.wait(max(0.0, self.interval - (time.perf_counter() - began)))

    def stop(self):
        self.done.set()
        self.join(timeout=max(self.interval, 5.0) + 5)
        return list(self.samples)


# ---------------------------------------------------------------------------------------------- requests

LIVE_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)
"""upper bounds of the live histograms' buckets, in seconds (TTFT, TPOT and E2E share them)"""


class LiveMetrics:
    """The measured requests so far, for Prometheus (--metrics-port): orchc_llm_requests_total{outcome} (ok or failed),
    orchc_llm_output_tokens_total, and histograms orchc_llm_ttft_seconds, orchc_llm_tpot_seconds (requests of more
    than one token) and orchc_llm_e2e_seconds of the requests that succeeded. Warm-up requests do not count."""

    def __init__(self):
        self.lock = threading.Lock()
        self.outcomes = {"ok": 0, "failed": 0}
        self.output_tokens = 0
        self.histograms = {name: ([0] * len(LIVE_BUCKETS_S), [0.0, 0]) for name in ("ttft", "tpot", "e2e")}

    def add(self, record):
        with self.lock:
            self.outcomes["ok" if record.get("ok") else "failed"] += 1
            if not record.get("ok"):
                return
            tokens = record.get("output_tokens") or 0
            self.output_tokens += tokens
            figures = {"ttft": record.get("ttft_s"), "e2e": record.get("e2e_s"),
                       "tpot": (record["e2e_s"] - record["ttft_s"]) / (tokens - 1) if tokens > 1 else None}
            for name, value in figures.items():
                if value is None:
                    continue
                buckets, total = self.histograms[name]
                for i, bound in enumerate(LIVE_BUCKETS_S):
                    if value <= bound:
                        buckets[i] += 1
                total[0] += value
                total[1] += 1

    def exposition(self):
        with self.lock:
            lines = ["# HELP orchc_llm_requests_total measured requests ended, by outcome",
                     "# TYPE orchc_llm_requests_total counter"]
            lines += [f'orchc_llm_requests_total{{outcome="{k}"}} {v}' for k, v in self.outcomes.items()]
            lines += ["# HELP orchc_llm_output_tokens_total output tokens of the requests that succeeded",
                      "# TYPE orchc_llm_output_tokens_total counter", f"orchc_llm_output_tokens_total {self.output_tokens}"]
            for name, (buckets, (total, count)) in self.histograms.items():
                metric = f"orchc_llm_{name}_seconds"
                lines += [f"# HELP {metric} {name.upper()} of the requests that succeeded", f"# TYPE {metric} histogram"]
                lines += [f'{metric}_bucket{{le="{bound:g}"}} {n}' for bound, n in zip(LIVE_BUCKETS_S, buckets)]
                lines += [f'{metric}_bucket{{le="+Inf"}} {count}', f"{metric}_sum {round(total, 6):g}", f"{metric}_count {count}"]
            return "\n".join(lines) + "\n"


def serve_live(live, port):
    """Serve `live` at /metrics on `port` (all interfaces) from a daemon thread; None, and a note, if the port is taken:
    the benchmark goes on without."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = live.exposition().encode() if self.path == "/metrics" else b"not found\n"
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    try:
        server = http.server.ThreadingHTTPServer(("", port), Handler)
    except OSError as error:
        print(f"llm_bench: no live metrics on port {port}: {error}", file=sys.stderr)
        return None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class Stopped(Exception):
    """The run's deadline passed, or a signal asked it to stop, while a request was in flight."""


class Run:
    """The shared state of one run: its deadline, the stop flag, the connections in use, the output."""

    def __init__(self, args):
        self.args = args
        self.started = time.perf_counter()
        self.deadline = self.started + args.duration
        self.stop_reason = None
        self.lock = threading.Lock()
        self.active = set()
        self.t0 = None
        self.errors = []
        self.out = None
        self.live = None   # LiveMetrics of the measured requests, with --metrics-port
        self.headers = {**HEADERS, **auth_headers()}
        self.replicas = Replicas(args.replicas, args.replica_policy) if args.replicas else None

    def remaining(self):
        return self.deadline - time.perf_counter()

    def stopping(self):
        return self.stop_reason is not None or self.remaining() <= 0

    def why_stopped(self):
        return self.stop_reason or "cut at duration"

    def stop(self, reason):
        """Stop now: nothing new starts, and requests in flight are cut (their sockets shut down)."""
        with self.lock:
            if self.stop_reason is None:
                self.stop_reason = reason
            sockets = [c.sock for c in self.active if c.sock is not None]
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def write(self, record):
        with self.lock:
            if record.get("error") and len(self.errors) < 5:
                self.errors.append(record["error"])
            if self.out is not None:
                self.out.write(json.dumps(record, sort_keys=True) + "\n")
                self.out.flush()
        if self.live is not None and self.out is not None:
            self.live.add(record)


class Replicas:
    """The replicas of a service with one engine per GPU (--replicas), and which one the next request goes to:
    round-robin (each in turn) or least-outstanding (the one with the fewest requests in flight; ties in turn)."""

    def __init__(self, addresses, policy):
        self.addresses = addresses
        self.policy = policy
        self.lock = threading.Lock()
        self.turn = 0
        self.outstanding = [0] * len(addresses)

    def take(self):
        """The replica the next request goes to, counted as outstanding until done(replica)."""
        count = len(self.addresses)
        with self.lock:
            start = self.turn % count
            self.turn += 1
            if self.policy == "least-outstanding":
                chosen = min(range(count), key=lambda k: (self.outstanding[k], (k - start) % count))
            else:
                chosen = start
            self.outstanding[chosen] += 1
            return chosen

    def done(self, replica):
        with self.lock:
            self.outstanding[replica] -= 1


def sent_to(run, connections, index, prompt_index, prompt, intended):
    """send() to the replica run.replicas chooses (a keep-alive connection per replica in `connections`, the caller's),
    the record naming it; without replicas, to --host and --port on connections[None]."""
    replica = run.replicas.take() if run.replicas else None
    conn = connections.get(replica) or new_connection(run.args, run.replicas.addresses[replica] if run.replicas else None)
    connections[replica] = conn
    try:
        record = send(run, conn, index, prompt_index, prompt, intended)
    finally:
        if run.replicas:
            run.replicas.done(replica)
    if run.replicas:
        record["replica"] = replica
    return record


def _text(value):
    return isinstance(value, str) and value != ""


def _tool_call_text(delta):
    """Whether a chat delta's tool calls carry any of the function's name or arguments (an id and a type alone
    are not generated text)."""
    calls = delta.get("tool_calls")
    if not isinstance(calls, list):
        return False
    functions = [call.get("function") for call in calls if isinstance(call, dict)]
    return any(isinstance(f, dict) and (_text(f.get("name")) or _text(f.get("arguments"))) for f in functions)


def carries_token(data):
    """Whether an OpenAI streaming chunk carries generated text, so counts as a token chunk: a choice with a
    non-empty `text` (completions), or whose `delta` has a non-empty `content`, `reasoning_content` or
    `reasoning` (reasoning models), or a tool call's name or arguments. The role chunk (`"content": ""`), a
    `finish_reason` chunk with an empty delta and the usage chunk (no choices) carry none. AIPerf's rule
    (extract_chat_response_data in src/aiperf/endpoints/openai_chat.py, openai_completions.py)."""
    choices = data.get("choices")
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        if _text(choice.get("text")):
            return True
        delta = choice.get("delta")
        if isinstance(delta, dict) and (any(_text(delta.get(k)) for k in ("content", "reasoning_content", "reasoning"))
                                        or _tool_call_text(delta)):
            return True
    return False


def carries_ollama_token(data):
    """Whether an Ollama line carries generated text: a non-empty `response`, or `thinking` (thinking models)."""
    return _text(data.get("response")) or _text(data.get("thinking"))


def request_body(args, prompt):
    if args.api == "ollama":
        return {"model": args.model, "prompt": prompt, "stream": True,
                "options": {"num_predict": args.max_tokens, "temperature": args.temperature, "seed": args.seed}}
    body = {"model": args.model, "max_tokens": args.max_tokens, "temperature": args.temperature, "seed": args.seed,
            "stream": True, "stream_options": {"include_usage": True}}
    if args.ignore_eos:
        body["ignore_eos"] = True  # vLLM's extension: always generate max_tokens tokens
    if args.api == "openai-chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


def _read_line(run, conn, response, request_deadline):
    """The next line of the answer, waiting at most until the run's or the request's deadline."""
    if run.stop_reason is not None:
        raise Stopped(run.stop_reason)
    left = min(run.deadline, request_deadline) - time.perf_counter()
    if left <= 0:
        raise Stopped(run.why_stopped()) if run.remaining() <= 0 else TimeoutError("request timeout")
    conn.sock.settimeout(left)
    try:
        line = response.readline()
    except (OSError, http.client.HTTPException):  # timeouts are OSErrors
        if run.stop_reason is not None or run.remaining() <= 0:
            raise Stopped(run.why_stopped()) from None
        raise
    if not line and run.stop_reason is not None:
        raise Stopped(run.stop_reason)
    return line


def _finish(run, conn, response, request_deadline):
    """Read the answer to its end (the end of a chunked body), so that the connection can carry the next
    request; a connection that cannot is closed (the next request opens a new one)."""
    try:
        conn.sock.settimeout(max(0.001, min(run.deadline, request_deadline, time.perf_counter() + 5) - time.perf_counter()))
        response.read()
    except (OSError, http.client.HTTPException):
        conn.close()
        return
    if response.will_close:
        conn.close()


def send(run, conn, index, prompt_index, prompt, intended=None):
    """One streamed request, meant to be sent at `intended` (time.perf_counter()); returns its record (send_s and
    intended_s since the first measured send was due, the other times in seconds relative to its send time)."""
    args = run.args
    record = {"index": index, "prompt_index": prompt_index, "http_status": None, "error": None, "ok": False,
              "intended_s": intended - run.t0 if intended is not None and run.t0 is not None else None,
              "cut": False, "ttft_s": None, "e2e_s": None, "end_s": None, "chunk_times_s": [],
              "input_tokens": None, "output_tokens": None, "tokens_source": None}
    body = json.dumps(request_body(args, prompt)).encode("utf-8")
    sent = time.perf_counter()
    record["send_s"] = sent - run.t0 if run.t0 is not None else 0.0
    request_deadline = sent + args.request_timeout
    chunks = record["chunk_times_s"]
    usage = {}
    server = {}
    try:
        with run.lock:
            run.active.add(conn)
        for attempt in (1, 2):
            reused = conn.sock is not None
            if not reused:
                conn.timeout = max(0.001, min(run.remaining(), args.request_timeout))
                conn.connect()
            conn.sock.settimeout(max(0.001, min(run.deadline, request_deadline) - time.perf_counter()))
            try:
                conn.request("POST", APIS[args.api], body=body, headers=run.headers)
                response = conn.getresponse()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # a keep-alive connection the server had closed: once more on a new connection
                conn.close()
                if not reused or attempt == 2 or run.stopping():
                    raise
                sent = time.perf_counter()
                record["send_s"] = sent - run.t0 if run.t0 is not None else 0.0
                request_deadline = sent + args.request_timeout
            except (OSError, http.client.HTTPException):  # timeouts are OSErrors
                if run.stop_reason is not None or run.remaining() <= 0:
                    raise Stopped(run.why_stopped()) from None
                raise
        record["http_status"] = response.status
        if response.status != 200:
            text = response.read(2000).decode("utf-8", "replace")
            record["error"] = f"HTTP {response.status}: {text.strip()[:300]}"
            conn.close()
            record["end_s"] = time.perf_counter() - sent
            return record
        while True:
            line = _read_line(run, conn, response, request_deadline)
            now = time.perf_counter()
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            if args.api == "ollama":
                data = json.loads(line.decode("utf-8"))
                if data.get("error"):
                    raise ValueError(f"server error: {str(data['error'])[:300]}")
                if carries_ollama_token(data):
                    chunks.append(now - sent)
                if data.get("done"):
                    server = {k: data[k] for k in (*OLLAMA_TIMINGS, "prompt_eval_count", "eval_count") if k in data}
                    usage = {"prompt_tokens": data.get("prompt_eval_count"), "completion_tokens": data.get("eval_count")}
                    record["end_s"] = now - sent
                    break
            else:
                text = line.decode("utf-8")
                if text.startswith(":") or not text.startswith("data:"):
                    continue  # SSE comments (keep-alive pings) and other fields
                payload = text[5:].strip()
                if payload == "[DONE]":
                    record["end_s"] = now - sent
                    break
                data = json.loads(payload)
                if data.get("error"):
                    raise ValueError(f"server error: {json.dumps(data['error'])[:300]}")
                if carries_token(data):
                    chunks.append(now - sent)
                if data.get("usage"):
                    usage = data["usage"]
                server = timings_of(data) or server
        if record["end_s"] is None:
            record["end_s"] = time.perf_counter() - sent
        _finish(run, conn, response, request_deadline)
        if not chunks:
            raise ValueError("the answer held no token")
        record["ok"] = True
    except Stopped as stopped:
        record["cut"] = True
        record["error"] = str(stopped)
        record["end_s"] = time.perf_counter() - sent
        conn.close()
    except Exception as error:  # any failure of one request is recorded, and the run goes on
        record["error"] = f"{type(error).__name__}: {error}"
        record["end_s"] = time.perf_counter() - sent
        conn.close()
    finally:
        with run.lock:
            run.active.discard(conn)
    if chunks:
        record["ttft_s"] = chunks[0]
        record["e2e_s"] = chunks[-1]
    prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
    record["input_tokens"] = prompt_tokens if isinstance(prompt_tokens, int) else None
    if isinstance(completion_tokens, int):
        record["output_tokens"], record["tokens_source"] = completion_tokens, "server"
    else:
        record["output_tokens"], record["tokens_source"] = len(chunks), "chunks"
    if server:
        record["server"] = server
    return record


# ---------------------------------------------------------------------------------------------- load

def new_connection(args, address=None):
    """A connection to `address` ((host, port), one of --replicas), else to --host and --port."""
    host, port = address or (args.host, args.port)
    if args.tls_ca:
        context = ssl.create_default_context(cafile=args.tls_ca)
        return http.client.HTTPSConnection(host, port, timeout=args.request_timeout, context=context)
    return http.client.HTTPConnection(host, port, timeout=args.request_timeout)


def closed_loop(run, prompts, count, workers, first_index, on_record):
    """`workers` threads, each with its own keep-alive connection, send `count` requests in all."""
    counter = {"next": 0}

    def worker():
        connections = {}
        intended = run.t0  # a worker's first request is due at the start, each next one when the last ended
        try:
            while True:
                with run.lock:
                    i = counter["next"]
                    if i >= count or run.stopping():
                        return
                    counter["next"] = i + 1
                index = first_index + i
                record = sent_to(run, connections, index, index % len(prompts), prompts[index % len(prompts)], intended)
                intended = time.perf_counter() if run.t0 is not None else None
                on_record(record)
        finally:
            for conn in connections.values():
                conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(workers, count))]
    for thread in threads:
        thread.start()
    join_all(run, threads)


def arrival_times(count, request_rate, seed, constant=False):
    """Poisson arrivals: exponential gaps of mean 1 / rate from random.Random(seed), scaled as vLLM does
    (vllm/benchmarks/serve.py, get_request) so that the last arrival is at count / rate; `constant`: every
    1 / rate seconds (vLLM's burstiness -> infinity)."""
    if constant:
        return [(i + 1) / request_rate for i in range(count)]
    rng = random.Random(seed)
    times, t = [], 0.0
    for _ in range(count):
        t += rng.expovariate(request_rate)
        times.append(t)
    if times and times[-1] > 0:
        scale = (count / request_rate) / times[-1]
        times = [x * scale for x in times]
    return times


def open_loop(run, prompts, count, first_index, on_record):
    """Requests sent at Poisson arrival times whatever is in flight; with --max-concurrency, an arrival
    waits for a free slot (the wait is not part of its latency, as in vLLM)."""
    args = run.args
    slots = threading.BoundedSemaphore(args.max_concurrency) if args.max_concurrency else None
    idle = []
    threads = []

    def one(index, intended):
        with run.lock:
            connections = idle.pop() if idle else {}
        try:
            on_record(sent_to(run, connections, index, index % len(prompts), prompts[index % len(prompts)], intended))
        finally:
            with run.lock:
                idle.append(connections)
            if slots is not None:
                slots.release()

    start = run.t0 if run.t0 is not None else time.perf_counter()  # the schedule counts from the measured start
    for i, at in enumerate(arrival_times(count, args.request_rate, args.seed, args.arrivals == "constant")):
        while not run.stopping():
            wait = start + at - time.perf_counter()
            if wait <= 0:
                break
            time.sleep(min(wait, 0.05, max(run.remaining(), 0.001)))
        acquired = False
        while slots is not None and not acquired and not run.stopping():
            acquired = slots.acquire(timeout=0.05)
        if run.stopping():
            if acquired:
                slots.release()
            break
        thread = threading.Thread(target=one, args=(first_index + i, start + at), daemon=True)
        thread.start()
        threads.append(thread)
        if len(threads) >= 1000:
            threads = [t for t in threads if t.is_alive()]
    join_all(run, threads)
    for connections in idle:
        for conn in connections.values():
            conn.close()


def join_all(run, threads):
    """Wait for threads, waking up often so that signals are handled and the deadline is kept."""
    for thread in threads:
        while thread.is_alive():
            thread.join(0.05)
            if run.remaining() <= 0 and run.stop_reason is None:
                run.stop("cut at duration")


# ---------------------------------------------------------------------------------------------- prompts

def load_prompts(args):
    if args.input_length:
        if args.prompts_file or args.prompts_json:
            raise SystemExit("llm_bench: give one of --input-length, --prompts-file, --prompts-json")
        rng = random.Random(args.seed)
        count = min(args.num_requests + args.warmup_requests, 10000)
        return [" ".join(rng.choice(WORDS) for _ in range(args.input_length)) for _ in range(count)]
    if args.prompts_file and args.prompts_json:
        raise SystemExit("llm_bench: give one of --prompts-file, --prompts-json")
    if args.prompts_file:
        prompts = []
        with open(args.prompts_file, encoding="utf-8") as handle:
            for line in handle:
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                # a line that is a JSON string is decoded, so that a prompt can hold newlines
                prompts.append(json.loads(line) if line.startswith('"') else line)
    else:
        with open(args.prompts_json, encoding="utf-8") as handle:
            prompts = json.load(handle)
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise SystemExit("llm_bench: the prompts must be non-empty strings, at least one")
    return prompts


# ---------------------------------------------------------------------------------------------- environment

def get_json(args, path):
    conn = new_connection(args)
    try:
        conn.timeout = 30
        conn.request("GET", path, headers=auth_headers())
        response = conn.getresponse()
        body = response.read(65536)
        return json.loads(body.decode("utf-8")) if response.status == 200 else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def environment(args):
    """environment.json: the server's version (Ollama: GET /api/version; vLLM: GET /version) and the model."""
    version = get_json(args, "/api/version" if args.api == "ollama" else "/version")
    found = version.get("version") if isinstance(version, dict) else None
    return {"server_version": found if isinstance(found, str) else None, "model": args.model, "api": args.api}


# ---------------------------------------------------------------------------------------------- commands

def write_json(path, value):
    with open(path + ".tmp", "w") as handle:
        json.dump(value, handle, sort_keys=True, indent=1)
        handle.write("\n")
    os.replace(path + ".tmp", path)


def signal_reason(results, signum):
    """Why requests in flight are cut by a signal: orchc writes why it stops a benchmark (duration,
    time_limit) into RESULTS/stopped before it sends SIGTERM; otherwise the signal's name."""
    try:
        with open(os.path.join(results, "stopped")) as handle:
            why = handle.read(100).strip()
    except OSError:
        why = ""
    return "cut at " + why if why else "stopped by " + signal.Signals(signum).name


def take_share(args, task, tasks):
    """This task's share when `tasks` generators run the load together: the requests, warm-up requests and
    concurrency split as evenly as whole numbers allow (the first tasks take one more), the rate divided, its own
    seed; its results in RESULTS/tasks/TASK. Returns the folder of the barrier, RESULTS/barrier."""
    def part(total):
        return total // tasks + (1 if task < total % tasks else 0)
    args.num_requests = part(args.num_requests)
    args.warmup_requests = part(args.warmup_requests)
    args.concurrent = max(1, part(args.concurrent))
    if args.max_concurrency:
        args.max_concurrency = max(1, part(args.max_concurrency))
    if args.request_rate:
        args.request_rate = args.request_rate / tasks
    args.seed += task
    barrier = os.path.join(args.results, "barrier")
    args.results = os.path.join(args.results, "tasks", str(task))
    return barrier


def wait_at_barrier(run, folder, task, tasks):
    """Leave this task's mark in `folder` and wait until all `tasks` have (or the run must stop): the tasks start
    measuring together however late srun started each."""
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, str(task)), "w").close()
    while len(os.listdir(folder)) < tasks and not run.stopping():
        time.sleep(0.05)


def run_command(args, search=None):
    """Send the warm-up, then the measured requests, then write metrics.json. `search`: the capacity search
    (llm_search.py, which calls this with itself) measures instead of one open or closed loop."""
    barrier, task, tasks, where_stopped = None, 0, 1, args.results   # orchc writes `stopped` in the client's folder
    if args.tasks_from_slurm:
        task = int(os.environ.get("SLURM_PROCID") or 0)
        tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS") or os.environ.get("SLURM_NTASKS") or 1)
        barrier = take_share(args, task, tasks)
    os.makedirs(args.results, exist_ok=True)
    run = Run(args)
    if args.metrics_port:
        run.live = LiveMetrics()
        serve_live(run.live, args.metrics_port)
    # SIGUSR1 too: orchc's orchc_tasks_run stops the tasks of an srun with it (srun answers a SIGTERM by killing them)
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(number, lambda signum, _frame: run.stop(signal_reason(where_stopped, signum)))
    prompts = load_prompts(args)
    write_json(os.path.join(args.results, "environment.json"), environment(args))
    info = {"api": args.api, "model": args.model, "load": "open" if args.request_rate else "closed",
            "num_requests": args.num_requests, "warmup_requests": args.warmup_requests, "request_rate": args.request_rate,
            "concurrent": None if args.request_rate else args.concurrent, "max_concurrency": args.max_concurrency,
            "slo": args.slo, "arrivals": args.arrivals, "search": args.search}
    if args.replicas:
        info.update(replicas=[f"{host}:{port}" for host, port in args.replicas], replica_policy=args.replica_policy,
                    replica_gpus=args.replica_gpus)
    if barrier:
        info.update(task=task, tasks=tasks, node=os.environ.get("SLURMD_NODENAME") or socket.gethostname())
    run_path = os.path.join(args.results, "run.json")
    write_json(run_path, info)
    open(os.path.join(args.results, "requests.jsonl"), "w").close()

    warmups = []
    if args.warmup_requests:
        closed_loop(run, prompts, args.warmup_requests, args.max_concurrency or args.concurrent,
                    -args.warmup_requests, warmups.append)
    info["warmup_requests_done"] = sum(1 for r in warmups if r["ok"])
    info["warmup_failed"] = [r["error"] for r in warmups if not r["ok"]][:5]
    write_json(run_path, info)

    if barrier:
        wait_at_barrier(run, barrier, task, tasks)
    sampler = EngineSampler(args, args.engine_metrics_interval) if args.engine_metrics_interval and args.api != "ollama" else None
    with open(os.path.join(args.results, "requests.jsonl"), "a") as out:
        run.out = out
        cpu = time.process_time()  # all the process's threads
        if sampler is not None:
            sampler.start()
        info["t0_epoch"] = time.time()
        run.t0 = time.perf_counter()
        info["started_epoch_s"] = time.time()   # where merge puts this run's requests beside other tasks'
        if run.stopping():
            pass
        elif search is not None:
            run.out = None
            out.close()
            code = search.search_command(args, run, prompts)
            info["wall_time_s"] = time.perf_counter() - run.t0
            info["client_cpu_s"] = time.process_time() - cpu
            info["stopped"] = run.stop_reason
            write_json(run_path, info)
            samples = sampler.stop() if sampler is not None else []   # the engine over the whole search (engine.jsonl)
            with open(os.path.join(args.results, "engine.jsonl"), "w") as engine:
                engine.writelines(json.dumps(sample, sort_keys=True) + "\n" for sample in samples)
            search.summarize_search(args.results)
            return code
        elif args.request_rate:
            open_loop(run, prompts, args.num_requests, 0, run.write)
        else:
            closed_loop(run, prompts, args.num_requests, args.concurrent, 0, run.write)
        info["wall_time_s"] = time.perf_counter() - run.t0
        info["t1_epoch"] = info["t0_epoch"] + info["wall_time_s"]
        info["client_cpu_s"] = time.process_time() - cpu
        run.out = None
    samples = sampler.stop() if sampler is not None else []
    info["gpu_csv"] = os.path.abspath(args.gpu_csv) if args.gpu_csv else None
    with open(os.path.join(args.results, "engine.jsonl"), "w") as out:
        out.writelines(json.dumps(sample, sort_keys=True) + "\n" for sample in samples)
    info["stopped"] = run.stop_reason or ("cut at duration" if run.remaining() <= 0 else None)
    write_json(run_path, info)
    metrics = summarize(args.results)
    print(f"llm_bench: {metrics['requests_ok_count']} ok, {metrics['requests_failed_count']} failed, "
          f"{metrics['requests_cut_count']} cut in {metrics['wall_time_s'] or 0:.2f} s")
    if metrics["requests_ok_count"] == 0 and not metrics["requests_cut_count"]:
        errors = run.errors or info["warmup_failed"]
        message = "no request succeeded" + (": " + errors[0] if errors else "")
        with open(os.path.join(args.results, "error"), "w") as handle:
            handle.write(message[:2000] + "\n")
        print("llm_bench: " + message, file=sys.stderr)
        return 1
    return 0


def read_jsonl(path):
    """The JSON lines of a file, [] without it (a line cut short by a kill is skipped)."""
    found = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    found.append(json.loads(line))
                except ValueError:
                    pass
    return found


def summarize(results):
    """metrics.json from requests.jsonl and run.json (a line cut short by a kill is skipped). Without
    run.json the benchmark never started: nothing is written. The results of many tasks (RESULTS/tasks/TASK, see
    take_share) are summarized each, then merged."""
    folder = os.path.join(results, "tasks")
    if os.path.isdir(folder):
        tasks = sorted((name for name in os.listdir(folder) if name.isdigit()), key=int)
        for name in tasks:
            summarize(os.path.join(folder, name))
        return merge(results, [os.path.join(folder, name) for name in tasks])
    if not os.path.exists(os.path.join(results, "run.json")):
        print("llm_bench: no run.json in " + results + ": the benchmark did not start, no metrics", file=sys.stderr)
        return None
    with open(os.path.join(results, "run.json")) as handle:
        run = json.load(handle)
    if run.get("search"):
        print("llm_bench: " + results + " holds a capacity search: llm_search.py summarize writes its metrics", file=sys.stderr)
        return None
    records = read_jsonl(os.path.join(results, "requests.jsonl"))
    engine = read_jsonl(os.path.join(results, "engine.jsonl"))
    metrics = metrics_of(records, run, engine)
    metrics.update(write_replicas(results, records, run))
    write_json(os.path.join(results, "metrics.json"), metrics)
    return metrics


def write_replicas(results, records, run):
    """replicas.json, when the load went to the replicas of a service (run.json's `replicas`: their addresses): each
    replica's own metrics (its requests over the run's whole wall time, so the replicas' throughputs add up to the
    total) and the outliers (OUTLIER_METRICS); the total stays the pooled metrics. Returns replicas_count."""
    addresses = run.get("replicas")
    if not addresses:
        return {}
    per_replica = [{"replica": index, "address": address, "gpu": gpu,
                    "metrics": metrics_of([r for r in records if r.get("replica") == index], run)}
                   for index, (address, gpu) in enumerate(zip(addresses, [*(run.get("replica_gpus") or []), *[None] * len(addresses)]))]
    write_json(os.path.join(results, "replicas.json"), {"policy": run.get("replica_policy"), "replicas": per_replica,
                                                        "outliers": outliers_of(per_replica, "replica")})
    return {"replicas_count": len(addresses)}


OUTLIER_METRICS = ("request_throughput_per_s", "ttft_median_ms", "e2e_latency_median_ms")
OUTLIER_FACTOR = 2.0
"""merge flags a task whose figure of OUTLIER_METRICS is more than OUTLIER_FACTOR times above or below the median of
that figure over all the tasks."""


def read_task(folder):
    """(run.json, the requests of requests.jsonl) of one task's results folder; None without run.json."""
    if not os.path.exists(os.path.join(folder, "run.json")):
        return None
    with open(os.path.join(folder, "run.json")) as handle:
        run = json.load(handle)
    return run, read_jsonl(os.path.join(folder, "requests.jsonl"))


def merge(results, folders):
    """metrics.json in `results` for the load of many tasks (one `run` each, in `folders`, started together): every
    figure from the pooled requests (percentiles of the pooled samples, never averaged percentiles), each task's
    requests placed on one clock by its started_epoch_s, throughput over the common window (from the first task's
    start to the last one's end). tasks.json holds each task's own metrics and the outliers (OUTLIER_METRICS)."""
    tasks = [(index, loaded) for index, loaded in ((i, read_task(f)) for i, f in enumerate(folders)) if loaded]
    if not tasks:
        print("llm_bench: no task started: no metrics", file=sys.stderr)
        return None
    starts = [run.get("started_epoch_s") for _, (run, _) in tasks]
    first = min((s for s in starts if isinstance(s, (int, float))), default=0.0)
    pooled, end = [], 0.0
    for _, (run, records) in tasks:
        shift = run["started_epoch_s"] - first if isinstance(run.get("started_epoch_s"), (int, float)) else 0.0
        for record in records:
            moved = dict(record)
            for key in ("send_s", "intended_s"):
                if isinstance(moved.get(key), (int, float)):
                    moved[key] += shift
            pooled.append(moved)
        own = metrics_of(records, run)["wall_time_s"] or 0.0
        end = max(end, shift + own)
    runs = [run for _, (run, _) in tasks]
    rates = [run.get("request_rate") for run in runs]
    merged_run = {**runs[0], "wall_time_s": end, "started_epoch_s": first,
                  "client_cpu_s": sum(run.get("client_cpu_s") or 0.0 for run in runs),
                  "warmup_requests_done": sum(run.get("warmup_requests_done") or 0 for run in runs),
                  "num_requests": sum(run.get("num_requests") or 0 for run in runs),
                  "request_rate": sum(rates) if all(isinstance(r, (int, float)) for r in rates) else None}
    metrics = metrics_of(pooled, merged_run)
    metrics.update(write_replicas(results, pooled, merged_run))
    metrics["tasks_count"] = len(tasks)
    per_task = [{"task": run.get("task", index), "node": run.get("node"), "metrics": metrics_of(records, run)}
                for index, (run, records) in tasks]
    write_json(os.path.join(results, "run.json"), {**merged_run, "tasks": len(tasks)})
    write_json(os.path.join(results, "metrics.json"), metrics)
    write_json(os.path.join(results, "tasks.json"), {"tasks": per_task, "outliers": outliers_of(per_task)})
    return metrics


def outliers_of(per_task, key="task"):
    """The tasks (or replicas: key) whose figures differ markedly from the others' (OUTLIER_METRICS, OUTLIER_FACTOR)."""
    found = []
    for name in OUTLIER_METRICS:
        values = [(task[key], task["metrics"].get(name)) for task in per_task]
        known = [value for _, value in values if isinstance(value, (int, float))]
        middle = percentile(known, 50) if len(known) > 1 else None
        for index, value in values:
            if middle and isinstance(value, (int, float)) and (value > OUTLIER_FACTOR * middle or value * OUTLIER_FACTOR < middle):
                found.append({key: index, "metric": name, "value": value, "tasks_median": middle})
    return found


def addresses(text):
    """HOST:PORT,HOST:PORT... -> [(host, port)]."""
    found = []
    for word in text.split(","):
        host, _, port = word.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise argparse.ArgumentTypeError(f"not HOST:PORT: {word!r}")
        found.append((host, int(port)))
    return found


def positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError("must be > 0")
        return value
    return parse


def slo_argument(text):
    """--slo: a JSON object of SLO_KEYS to positive numbers (milliseconds)."""
    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a JSON object") from None
    if not isinstance(value, dict) or not value:
        raise argparse.ArgumentTypeError("not a non-empty JSON object")
    for key, bound in value.items():
        if key not in SLO_KEYS:
            raise argparse.ArgumentTypeError(f"{key}: not one of {', '.join(SLO_KEYS)}")
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not bound > 0 or bound == float("inf"):
            raise argparse.ArgumentTypeError(f"{key}: not a positive number of milliseconds")
    return value


def json_object(text):
    """A JSON object given on the command line (--search, checked by llm_search.py, which runs it)."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("not a JSON object")
    return value


def parser():
    p = argparse.ArgumentParser(prog="llm_bench.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="send the requests, then write metrics.json")
    r.add_argument("results")
    r.add_argument("--config", help="a JSON object of options (see config_arguments); options given here win")
    r.add_argument("--host", required=True)
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--replicas", type=addresses,
                   help="HOST:PORT,HOST:PORT...: the replicas of a service with one engine per GPU; each request goes to one")
    r.add_argument("--replica-gpus", type=lambda text: text.split(","), help="GPU,GPU...: each replica's GPU, for the results")
    r.add_argument("--replica-policy", choices=("round-robin", "least-outstanding"), default="round-robin",
                   help="which replica a request goes to: each in turn, or the one with the fewest requests in flight")
    r.add_argument("--tls-ca", help="TLS, the server's certificate checked against this CA file")
    r.add_argument("--api", choices=sorted(APIS), required=True)
    r.add_argument("--model", help="the model named in every request (default: the first the server lists)")
    r.add_argument("--prompts-json", help="a JSON file holding a list of prompts, used in turn")
    r.add_argument("--prompts-file", help="a text file, one prompt per line (a line that is a JSON string is decoded)")
    r.add_argument("--input-length", type=positive(int), help="synthetic prompts of this many words")
    r.add_argument("--num-requests", type=positive(int), default=100)
    r.add_argument("--concurrent", type=positive(int), default=1, help="closed loop: requests in flight")
    r.add_argument("--request-rate", type=positive(float), help="open loop: Poisson arrivals, requests per second")
    r.add_argument("--max-concurrency", type=positive(int), help="open loop: at most this many in flight")
    r.add_argument("--warmup-requests", type=int, default=0)
    r.add_argument("--max-tokens", type=positive(int), default=128)
    r.add_argument("--temperature", type=float, default=0.0)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--ignore-eos", action="store_true", help="ask vLLM to generate max_tokens tokens every time")
    r.add_argument("--duration", type=positive(float), default=3600.0)
    r.add_argument("--request-timeout", type=positive(float), default=600.0)
    r.add_argument("--arrivals", choices=("poisson", "constant"), default="poisson",
                   help="open loop: Poisson arrivals (seeded) or one every 1 / rate seconds")
    r.add_argument("--search", type=json_object,
                   help="a JSON object: search the highest request rate within an SLO (run by llm_search.py)")
    r.add_argument("--engine-metrics-interval", type=float, default=1.0,
                   help="seconds between two reads of the server's /metrics (0: none); not against Ollama")
    r.add_argument("--metrics-port", type=int, default=0,
                   help="serve live metrics of the measured requests to Prometheus at /metrics on this port (0: none)")
    r.add_argument("--gpu-csv", help="the GPU sampler's nvidia-smi CSV of the server's GPUs: energy and J/token")
    r.add_argument("--tasks-from-slurm", action="store_true",
                   help="one of the tasks of an srun step (SLURM_PROCID of SLURM_STEP_NUM_TASKS): take this task's share")
    r.add_argument("--slo", type=slo_argument, help='bounds in ms, a JSON object: {"ttft_p99_ms": 2000, "tpot_p99_ms": 100}')
    s = sub.add_parser("summarize", help="write metrics.json from requests.jsonl and run.json")
    s.add_argument("results")
    m = sub.add_parser("merge", help="write metrics.json and tasks.json of many tasks' runs, from their pooled requests")
    m.add_argument("results")
    m.add_argument("tasks", nargs="+", help="the results folders of the tasks")
    return p


def config_arguments(path):
    """The options a --config file gives: a JSON object, option name (with `_` for `-`) -> value;
    true is a flag, null and false leave the option out. Options on the command line come after, so they win."""
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    if not isinstance(config, dict):
        raise SystemExit(f"llm_bench: {path} does not hold a JSON object")
    words = []
    for key, value in sorted(config.items()):
        if value is None or value is False:
            continue
        words.append("--" + key.replace("_", "-"))
        if value is not True:
            words.append(json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value))
    return words


def first_model(args):
    """The model to ask for when none is given: the first the server lists, as `vllm bench serve` does
    (GET /v1/models; Ollama: GET /api/tags)."""
    if args.api == "ollama":
        tags = get_json(args, "/api/tags")
        models = tags.get("models") if isinstance(tags, dict) else None
        key = "name"
    else:
        listing = get_json(args, "/v1/models")
        models = listing.get("data") if isinstance(listing, dict) else None
        key = "id"
    if not models or not isinstance(models[0], dict) or not isinstance(models[0].get(key), str):
        raise SystemExit("llm_bench: no --model given and the server lists no model")
    return models[0][key]


def arguments(argv):
    """The command line parsed, the options of a --config file merged in (the command line's win)."""
    if len(argv) >= 3 and argv[0] == "run" and "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv):
            raise SystemExit("llm_bench: --config needs a file")
        argv = argv[:2] + config_arguments(argv[at + 1]) + argv[2:at] + argv[at + 2:]
    return parser().parse_args(argv)


def main(argv, search=None):
    """`search`: llm_search (the module), when llm_search.py runs this with --search."""
    args = arguments(argv)
    if args.command == "summarize":
        summarize(args.results)
        return 0
    if args.command == "merge":
        return 0 if merge(args.results, args.tasks) else 1
    if args.search and search is None:
        raise SystemExit("llm_bench: --search is a capacity search: run it with llm_search.py (beside this file)")
    if args.search and args.tasks_from_slurm:
        raise SystemExit("llm_bench: a capacity search (--search) runs on one node: give the client one node")
    if not (args.prompts_json or args.prompts_file or args.input_length):
        raise SystemExit("llm_bench: give --prompts-json, --prompts-file or --input-length")
    if not args.model:
        args.model = first_model(args)
    return run_command(args, search)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

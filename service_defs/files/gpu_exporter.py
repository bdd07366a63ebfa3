#!/usr/bin/env python3
"""orchc GPU exporter: this node's GPUs in Prometheus' text format, read from nvidia-smi at each scrape.

Standard library only (Python >= 3.8), run with the node's python3 beside the job (nvidia-smi is a host
program). No secret, no state: each GET /metrics runs

    nvidia-smi --query-gpu=index,uuid,name,utilization.gpu,utilization.memory,memory.used,memory.total,power.draw,temperature.gpu
               --format=csv,noheader,nounits

(flags as in nvidia-smi(1)) and answers one sample per GPU and field, labelled gpu (index), uuid and name:

    orchc_gpu_utilization_ratio, orchc_gpu_memory_utilization_ratio (0..1), orchc_gpu_memory_used_bytes,
    orchc_gpu_memory_total_bytes, orchc_gpu_power_watts, orchc_gpu_temperature_celsius

and orchc_gpu_nvidia_smi_up (1 when nvidia-smi answered, else 0, so a node without it shows as such). A field the
GPU does not report ([N/A], [Not Supported]) is left out. Any other path answers 404.

    gpu_exporter.py --port PORT [--address ADDRESS]
"""

import argparse
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

QUERY = ("index", "uuid", "name", "utilization.gpu", "utilization.memory", "memory.used", "memory.total",
         "power.draw", "temperature.gpu")
MIB = 1024 * 1024
GAUGES = (
    ("utilization.gpu", "orchc_gpu_utilization_ratio", "share of the last sample period the GPU was busy (utilization.gpu / 100)", 0.01),
    ("utilization.memory", "orchc_gpu_memory_utilization_ratio", "share of it the memory was in use (utilization.memory / 100)", 0.01),
    ("memory.used", "orchc_gpu_memory_used_bytes", "GPU memory in use (memory.used)", MIB),
    ("memory.total", "orchc_gpu_memory_total_bytes", "GPU memory in all (memory.total)", MIB),
    ("power.draw", "orchc_gpu_power_watts", "power drawn by the board (power.draw)", 1.0),
    ("temperature.gpu", "orchc_gpu_temperature_celsius", "GPU core temperature (temperature.gpu)", 1.0),
)


def command():
    return ["nvidia-smi", "--query-gpu=" + ",".join(QUERY), "--format=csv,noheader,nounits"]


def query():
    """The GPUs' rows (field -> text), or None when nvidia-smi is missing, fails or takes over 10 s."""
    try:
        done = subprocess.run(command(), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    rows = []
    for line in done.stdout.splitlines():
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) == len(QUERY):
            rows.append(dict(zip(QUERY, cells)))
    return rows


def label(value):
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def number(text):
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def exposition(rows):
    """Prometheus text format 0.0.4 for the rows (None: nvidia-smi did not answer)."""
    out = ["# HELP orchc_gpu_nvidia_smi_up 1 when nvidia-smi answered this scrape, else 0.",
           "# TYPE orchc_gpu_nvidia_smi_up gauge", f"orchc_gpu_nvidia_smi_up {int(rows is not None)}"]
    for field, name, help_text, scale in GAUGES:
        samples = []
        for row in rows or []:
            value = number(row[field])
            if value is not None:
                labels = f'gpu="{label(row["index"])}",uuid="{label(row["uuid"])}",name="{label(row["name"])}"'
                samples.append(f"{name}{{{labels}}} {value * scale!r}")
        if samples:
            out += [f"# HELP {name} {help_text}.", f"# TYPE {name} gauge", *samples]
    return "\n".join(out) + "\n"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404)
            return
        data = exposition(query()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main(argv):
    p = argparse.ArgumentParser(prog="gpu_exporter.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--address", default="0.0.0.0")
    args = p.parse_args(argv)
    server = ThreadingHTTPServer((args.address, args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

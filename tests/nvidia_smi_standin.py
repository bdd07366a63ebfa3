"""A stand-in for `nvidia-smi`, NOT nvidia-smi: it answers only the GPU sampler's query, with known rows.

Tests put it first on PATH as `nvidia-smi` (see `install`). Given exactly

    nvidia-smi --query-gpu=FIELDS --format=csv,nounits -l SECONDS

(FIELDS as the sampler of compiler/script/templates/runtime.sh asks), it prints the CSV header, then every
SECONDS one row per GPU (`ORCHC_STANDIN_GPUS`, default 2) whose values follow from the sample number and
the GPU index (`row`), flushed at once, until it is stopped. Given the GPU exporter's query (EXPORTER_FIELDS,
`--format=csv,noheader,nounits`, no loop) it prints one row per GPU, the values of sample 0, and exits. Given exactly

    nvidia-smi --query-gpu=driver_version --format=csv,noheader

it prints the driver version (`ORCHC_STANDIN_DRIVER`, default 575.57.08) once per GPU, as the driver check of
runtime.sh asks. Any other command line is refused (exit 2),
so a test fails when the sampler's flags change. Column names follow nvidia-smi's CSV header (units in
brackets; `nounits` drops them from the values only); the values are made up.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

FIELDS = ("timestamp", "index", "name", "uuid", "utilization.gpu", "utilization.memory", "memory.used",
          "memory.total", "power.draw", "temperature.gpu")
HEADER = ("timestamp, index, name, uuid, utilization.gpu [%], utilization.memory [%], memory.used [MiB], "
          "memory.total [MiB], power.draw [W], temperature.gpu")
NAME = "Stand-in GPU 40GB"


def power(sample: int, index: int) -> str:
    """GPU `index`'s power draw in sample `sample`, in W: ORCHC_STANDIN_POWER when set (a constant), else made up."""
    constant = os.environ.get("ORCHC_STANDIN_POWER")
    return f"{float(constant):.2f}" if constant else f"{50 + sample + index / 10:.2f}"


def row(sample: int, index: int) -> list[str]:
    """The values after the timestamp of GPU `index` in sample `sample` (0, 1, ...)."""
    return [str(index), NAME, f"GPU-5a4d0000-0000-4000-8000-{index:012x}",
            str((sample * 7 + index * 3) % 101), str((sample * 5 + index) % 101),
            str(1000 + sample * 10 + index), "40960", power(sample, index), str(30 + index)]


EXPORTER_FIELDS = ("index", "uuid", "name", "utilization.gpu", "utilization.memory", "memory.used", "memory.total",
                   "power.draw", "temperature.gpu")
"""what service_defs/files/gpu_exporter.py asks, once per scrape, with --format=csv,noheader,nounits"""


def exporter_row(index: int) -> list[str]:
    """The exporter's query's answer for GPU `index`: the values of sample 0 (`row`), in its order."""
    values = dict(zip(FIELDS[1:], row(0, index)))
    return [values[field] for field in EXPORTER_FIELDS]


def main(argv: list[str]) -> int:
    gpus = int(os.environ.get("ORCHC_STANDIN_GPUS", "2"))
    if argv == ["--query-gpu=driver_version", "--format=csv,noheader"]:
        print("\n".join([os.environ.get("ORCHC_STANDIN_DRIVER", "575.57.08")] * gpus))
        return 0
    if argv == [f"--query-gpu={','.join(EXPORTER_FIELDS)}", "--format=csv,noheader,nounits"]:
        for index in range(gpus):
            print(", ".join(exporter_row(index)))
        return 0
    expected = [f"--query-gpu={','.join(FIELDS)}", "--format=csv,nounits", "-l"]
    if argv[:3] != expected or len(argv) != 4 or not argv[3].isdigit() or int(argv[3]) < 1:
        print(f"nvidia-smi stand-in: unexpected command line {argv!r}; expected {expected + ['SECONDS']!r}",
              file=sys.stderr)
        return 2
    interval = int(argv[3])
    print(HEADER, flush=True)
    sample = 0
    while True:
        stamp = time.strftime("%Y/%m/%d %H:%M:%S.000")
        for index in range(gpus):
            print(", ".join([stamp, *row(sample, index)]), flush=True)
        sample += 1
        time.sleep(interval)


def install(folder: Path) -> Path:
    """A folder holding an `nvidia-smi` that runs this stand-in; put it first on PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    program = folder / "nvidia-smi"
    program.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))} \"$@\"\n")
    program.chmod(0o755)
    return folder


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

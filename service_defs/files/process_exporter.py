#!/usr/bin/env python3
"""orchc process-tree exporter: CPU time and memory of one process and all its descendants, from /proc.

Standard library only (Python >= 3.8), unprivileged: it reads /proc/PID/stat and /proc/PID/statm of the user's
own processes, so it sees a service under Apptainer (a process tree on the host, no per-container cgroup),
where cAdvisor sees no container. Each GET /metrics walks the tree from --pid at that moment and answers

    orchc_process_cpu_seconds_total     user + system CPU time of the living processes of the tree (stat fields 14, 15)
    orchc_process_resident_memory_bytes resident set of the tree (statm field 2 x the page size)
    orchc_process_count                 processes in the tree
    orchc_process_root_up               1 while the --pid process lives, else 0

CPU time of processes that already ended is not counted (it is their parent's only once reaped), so the counter
can step down when a child exits: read it with rate() over intervals that hold no such exit, or as a gauge.

    process_exporter.py --pid PID --port PORT [--address ADDRESS]
"""

import argparse
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def processes():
    """pid -> (parent pid, CPU seconds, resident bytes) of every process readable now."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as handle:
                stat = handle.read()
            with open(f"/proc/{name}/statm", encoding="ascii") as handle:
                resident = int(handle.read().split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            continue   # ended meanwhile, or not ours to read
        fields = stat[stat.rfind(")") + 2:].split()   # after "pid (comm) ": state is field 3
        try:
            found[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS, resident)
        except (IndexError, ValueError):
            continue
    return found


def tree(root, table):
    """The pids of root and its descendants in table."""
    children = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    out, todo = [], [root] if root in table else []
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def exposition(root):
    table = processes()
    pids = tree(root, table)
    cpu = sum(table[pid][1] for pid in pids)
    memory = sum(table[pid][2] for pid in pids)
    return "".join([
        "# HELP orchc_process_cpu_seconds_total CPU time (user + system) of the living processes of the tree.\n",
        "# TYPE orchc_process_cpu_seconds_total counter\n", f"orchc_process_cpu_seconds_total {cpu!r}\n",
        "# HELP orchc_process_resident_memory_bytes Resident memory of the processes of the tree.\n",
        "# TYPE orchc_process_resident_memory_bytes gauge\n", f"orchc_process_resident_memory_bytes {memory}\n",
        "# HELP orchc_process_count Processes in the tree.\n",
        "# TYPE orchc_process_count gauge\n", f"orchc_process_count {len(pids)}\n",
        "# HELP orchc_process_root_up 1 while the tree's first process lives.\n",
        "# TYPE orchc_process_root_up gauge\n", f"orchc_process_root_up {int(bool(pids))}\n",
    ])


def handler(root):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404)
                return
            data = exposition(root).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
    return Handler


def main(argv):
    p = argparse.ArgumentParser(prog="process_exporter.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--address", default="0.0.0.0")
    args = p.parse_args(argv)
    server = ThreadingHTTPServer((args.address, args.port), handler(args.pid))
    server.daemon_threads = True
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A stand-in for `vllm serve` launched across nodes without Ray (tests only), on PATH as `vllm`.

It holds each rank to the launch contract of vLLM's multiprocessing multi-node launch
(docs/serving/parallelism_scaling.md: `--nnodes N --node-rank R --master-addr HEAD --master-port P`, `--headless`
on every rank but 0) as orchc's vllm type starts it, one srun task per node:

- the rank's arguments agree with SLURM's view of its task: --node-rank is SLURM_NODEID, --nnodes and
  --pipeline-parallel-size are the step's nodes (SLURM_STEP_NUM_NODES), --tensor-parallel-size is the number of
  GPUs SLURM gave the rank (CUDA_VISIBLE_DEVICES), --headless exactly on the ranks other than 0, --master-addr
  the host rank 0 runs on, and --distributed-executor-backend mp; a rank that finds otherwise exits 2 saying why;
- rank 0 listens on --master-port; every other rank joins it there (retrying until it answers);
- rank 0 serves the OpenAI-compatible API (tests/llm_standin.py) only once every rank has joined, and exits 1
  naming the rank when a joined rank's connection ends (a rank died): so does a worker when rank 0 goes.

Each rank writes what it saw to $STANDIN_RANKS/rank-R.json (its argv, environment, node, when it joined and, for
rank 0, when it began to serve). STANDIN_JOIN_DELAY makes the ranks other than 0 wait that long before joining.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_standin import Settings, handler


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vllm serve")
    p.add_argument("model")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tensor-parallel-size", type=int, required=True)
    p.add_argument("--pipeline-parallel-size", type=int, required=True)
    p.add_argument("--distributed-executor-backend", required=True)
    p.add_argument("--nnodes", type=int, required=True)
    p.add_argument("--node-rank", type=int, required=True)
    p.add_argument("--master-addr", required=True)
    p.add_argument("--master-port", type=int, required=True)
    p.add_argument("--headless", action="store_true")
    return p.parse_known_args(argv)[0]


def contract_problems(args: argparse.Namespace, env: dict[str, str]) -> list[str]:
    """What in the rank's arguments disagrees with the task SLURM started it as."""
    gpus = [g for g in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if g]
    nodes = int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES") or 0)
    checks = [
        (args.node_rank == int(env.get("SLURM_NODEID", "-1")), f"--node-rank {args.node_rank} but SLURM_NODEID "
                                                               f"{env.get('SLURM_NODEID')}"),
        (args.nnodes == nodes, f"--nnodes {args.nnodes} but the step has {nodes} nodes"),
        (args.pipeline_parallel_size == nodes, f"--pipeline-parallel-size {args.pipeline_parallel_size} but {nodes} nodes"),
        (args.tensor_parallel_size == len(gpus), f"--tensor-parallel-size {args.tensor_parallel_size} but "
                                                 f"CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')}"),
        (args.headless == (args.node_rank != 0), f"--headless {'given' if args.headless else 'missing'} on rank "
                                                 f"{args.node_rank}"),
        (args.distributed_executor_backend == "mp", f"--distributed-executor-backend {args.distributed_executor_backend}"),
        (args.node_rank != 0 or socket.gethostname() == args.master_addr,
         f"rank 0 runs on {socket.gethostname()}, not on --master-addr {args.master_addr}"),
    ]
    return [message for ok, message in checks if not ok]


def record(args: argparse.Namespace, **extra: Any) -> None:
    folder = os.environ.get("STANDIN_RANKS")
    if not folder:
        return
    env = {k: v for k, v in os.environ.items() if k.startswith(("SLURM", "CUDA", "ORCHC_NODE", "ORCHC_MASTER", "ORCHC_NNODES"))}
    path = Path(folder) / f"rank-{args.node_rank}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**old, "argv": sys.argv[1:], "env": env, "host": socket.gethostname(),
                                "api_key_given": bool(os.environ.get("VLLM_API_KEY")), **extra}))


def head(args: argparse.Namespace) -> int:
    listener = socket.create_server(("0.0.0.0", args.master_port), reuse_port=False)
    joined: dict[int, socket.socket] = {}
    while len(joined) < args.nnodes - 1:
        conn, _ = listener.accept()
        rank = int(conn.makefile().readline().split()[1])
        joined[rank] = conn
        print(f"rank {rank} joined", flush=True)
    record(args, serving_at=time.time(), joined=sorted(joined))
    settings = Settings(api_key=os.environ.get("VLLM_API_KEY") or None, model=args.model)
    server = ThreadingHTTPServer((args.host, args.port), handler(settings))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"all {args.nnodes} ranks joined; serving on port {args.port}", flush=True)
    lost: list[int] = []
    for rank, conn in joined.items():
        threading.Thread(target=lambda r=rank, c=conn: (c.recv(1), lost.append(r)), daemon=True).start()
    while not lost:
        time.sleep(0.1)
    print(f"vllm stand-in: rank {lost[0]} left", file=sys.stderr, flush=True)
    return 1


def worker(args: argparse.Namespace) -> int:
    time.sleep(float(os.environ.get("STANDIN_JOIN_DELAY", "0")))
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = socket.create_connection((args.master_addr, args.master_port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                print("vllm stand-in: rank 0 never answered", file=sys.stderr)
                return 1
            time.sleep(0.2)
    joined_at = time.time()    # before rank 0 can read the line: it serves after this, never before
    conn.sendall(f"rank {args.node_rank}\n".encode())
    record(args, joined_at=joined_at)
    conn.settimeout(None)
    conn.recv(1)   # rank 0 never writes: this returns when it goes
    print("vllm stand-in: rank 0 left", file=sys.stderr, flush=True)
    return 1


def main(argv: list[str]) -> int:
    if argv[:1] != ["serve"]:
        sys.exit("vllm stand-in: only `vllm serve` is stood in for")
    args = parse(argv[1:])
    problems = contract_problems(args, dict(os.environ))
    record(args, problems=problems, pid=os.getpid())
    if problems:
        print("vllm stand-in: " + "; ".join(problems), file=sys.stderr)
        return 2
    return head(args) if args.node_rank == 0 else worker(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

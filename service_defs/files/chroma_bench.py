"""orchc Chroma benchmark against the REST API v2 (chromadb 0.5.x and 1.x); the standard library suffices.

run:       chroma_bench.py run RESULTS_DIR --host H --port P ... (adds, then queries)
summarize: chroma_bench.py summarize RESULTS_DIR ... (writes RESULTS_DIR/metrics.json, recall included)

Adds: `--documents` embeddings in batches of `--batch-size`, sent by `--workers` threads at once. Queries:
`--queries` vectors in requests of `--query-batch-size`, by the same number of threads. Every vector is
drawn from seeded generators in a fixed order, whatever the threads do, so `summarize` can draw them again.
Every finished request is appended at once to adds.tsv or queries.tsv (its start, relative to the start of
its phase, and its duration), so that a run cut short still leaves its timings. For `--recall-queries`
queries, sampled with a seeded generator, the ids Chroma returned go to recall.jsonl; `summarize` computes
their exact nearest neighbours by brute force over the embeddings that were added (with the collection's
distance) and reports recall@k. server.json records the server's version.

With CHROMA_BENCH_API_KEY in the environment every request carries `Authorization: Bearer KEY` (orchc's
proxy in front of Chroma asks for it); with `--tls-ca FILE` the connection is TLS, the server's certificate
checked against FILE. The key is read from the environment only, so that it never shows on a command line.

Routes (API v2): GET /api/v2/version; GET/POST /api/v2/tenants[/T]; GET/POST /api/v2/tenants/T/databases[/D];
DELETE and POST .../databases/D/collections[/NAME]; POST .../collections/ID/add and .../collections/ID/query.
"""

from __future__ import annotations

import argparse
import heapq
import http.client
import json
import math
import operator
import os
import random
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

SPACES = ("l2", "cosine", "ip")


class ChromaError(Exception):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} answered HTTP {status}: {body[:300]}")
        self.status = status
        self.body = body


class Client:
    """One keep-alive HTTP connection per thread to the server's /api/v2."""

    def __init__(self, host: str, port: int, timeout: float = 300, tls_ca: str | None = None) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.local = threading.local()
        self.tls = ssl.create_default_context(cafile=tls_ca) if tls_ca else None
        key = os.environ.get("CHROMA_BENCH_API_KEY", "")
        self.auth = {"Authorization": "Bearer " + key} if key else {}

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self.local, "connection", None)
        if connection is None:
            if self.tls is not None:
                connection = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self.tls)
            else:
                connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.local.connection = connection
        return connection

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {**self.auth, "Content-Type": "application/json"} if data is not None else dict(self.auth)
        for attempt in (1, 2):
            connection = self._connection()
            try:
                connection.request(method, "/api/v2" + path, body=data, headers=headers)
                response = connection.getresponse()
                text = response.read()
                break
            except (ConnectionError, http.client.RemoteDisconnected, http.client.CannotSendRequest,
                    http.client.BadStatusLine):
                # a kept-alive connection the server closed: open a new one, once
                connection.close()
                self.local.connection = None
                if attempt == 2:
                    raise
        if response.status >= 400:
            raise ChromaError(method, "/api/v2" + path, response.status, text.decode("utf-8", "replace"))
        return json.loads(text) if text else None


def quoted(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def ensure(client: Client, path: str, create_path: str, name: str) -> None:
    """GET path; when it is missing (404), POST {"name": name} to create_path (409: made meanwhile)."""
    try:
        client.request("GET", path)
        return
    except ChromaError as error:
        if error.status != 404:
            raise
    try:
        client.request("POST", create_path, {"name": name})
    except ChromaError as error:
        if error.status != 409:
            raise


def vectors(seed: int, dimension: int) -> Iterator[list[float]]:
    """The endless sequence of vectors of one seed, uniform in [0, 1) in every coordinate."""
    rng = random.Random(seed)
    while True:
        yield [rng.random() for _ in range(dimension)]


def document_seed(seed: int) -> int:
    return seed


def query_seed(seed: int) -> int:
    return seed + 1


def sampled_queries(seed: int, queries: int, recall_queries: int) -> set[int]:
    """Which query indices are checked for recall: a seeded sample, the same in `run` and anywhere else."""
    return set(random.Random(seed + 2).sample(range(queries), min(recall_queries, queries)))


class Recorder:
    """Appends one line per finished request to a TSV file, from any thread, flushed at once."""

    def __init__(self, path: str, header: str | None) -> None:
        self.handle = open(path, "w", buffering=1)  # noqa: SIM115 (open for the whole phase, closed by close())
        if header is not None:
            self.handle.write(header + "\n")
        self.lock = threading.Lock()

    def write(self, line: str) -> None:
        with self.lock:
            self.handle.write(line + "\n")

    def close(self) -> None:
        self.handle.close()


def run_phase(workers: int, tasks: Iterable[Callable[[], None]], deadline: float) -> int:
    """Runs the tasks on `workers` threads, at most 2 * workers queued at once (so the vectors of a
    long run are not all drawn up front); no new task after the deadline. The first failure stops the
    phase and is raised. Returns how many tasks were started."""
    started = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: set[Any] = set()
        for task in tasks:
            if time.monotonic() >= deadline:
                print("chroma_bench: duration reached, no further requests", file=sys.stderr)
                break
            while len(pending) >= 2 * workers:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    future.result()
            pending.add(pool.submit(task))
            started += 1
        for future in pending:
            future.result()
    return started


def run(args: argparse.Namespace) -> None:
    client = Client(args.host, args.port, tls_ca=args.tls_ca)
    deadline = time.monotonic() + args.duration
    os.makedirs(args.results, exist_ok=True)
    version = client.request("GET", "/version")
    with open(os.path.join(args.results, "server.json"), "w") as handle:
        json.dump({"api": "v2", "server_version": version}, handle)
    tenant, database = quoted(args.tenant), quoted(args.database)
    ensure(client, f"/tenants/{tenant}", "/tenants", args.tenant)
    ensure(client, f"/tenants/{tenant}/databases/{database}", f"/tenants/{tenant}/databases", args.database)
    collections = f"/tenants/{tenant}/databases/{database}/collections"
    try:
        client.request("DELETE", f"{collections}/{quoted(args.collection)}")
    except ChromaError as error:
        if error.status != 404 and "does not exist" not in error.body:
            raise  # 404: it did not exist (0.5.x says so with another status)
    collection = client.request("POST", collections, {"name": args.collection, "get_or_create": False,
                                                      "metadata": {"hnsw:space": args.space}})
    base = f"{collections}/{quoted(collection['id'])}"

    adds = Recorder(os.path.join(args.results, "adds.tsv"), "first\tdocuments\tstart_s\tseconds")
    phase_start = time.perf_counter()

    def add_tasks() -> Iterator[Callable[[], None]]:
        source = vectors(document_seed(args.seed), args.dimension)
        for first in range(0, args.documents, args.batch_size):
            count = min(args.batch_size, args.documents - first)
            body = {"ids": [f"doc-{first + i}" for i in range(count)], "embeddings": [next(source) for _ in range(count)]}

            def task(first: int = first, count: int = count, body: dict[str, Any] = body) -> None:
                start = time.perf_counter()
                client.request("POST", f"{base}/add", body)
                end = time.perf_counter()
                adds.write(f"{first}\t{count}\t{start - phase_start:.6f}\t{end - start:.6f}")
            yield task

    try:
        run_phase(args.workers, add_tasks(), deadline)
    finally:
        adds.close()

    wanted = sampled_queries(args.seed, args.queries, args.recall_queries)
    queries = Recorder(os.path.join(args.results, "queries.tsv"), "first\tqueries\tstart_s\tseconds")
    recall = Recorder(os.path.join(args.results, "recall.jsonl"), None)
    phase_start = time.perf_counter()

    def query_tasks() -> Iterator[Callable[[], None]]:
        source = vectors(query_seed(args.seed), args.dimension)
        for first in range(0, args.queries, args.query_batch_size):
            count = min(args.query_batch_size, args.queries - first)
            batch = [next(source) for _ in range(count)]
            body = {"query_embeddings": batch, "n_results": args.n_results, "include": ["distances"]}

            def task(first: int = first, count: int = count, body: dict[str, Any] = body) -> None:
                start = time.perf_counter()
                answer = client.request("POST", f"{base}/query", body)
                end = time.perf_counter()
                queries.write(f"{first}\t{count}\t{start - phase_start:.6f}\t{end - start:.6f}")
                for offset in range(count):
                    if first + offset in wanted:
                        recall.write(json.dumps({"query": first + offset, "vector": body["query_embeddings"][offset],
                                                 "ids": answer["ids"][offset]}))
            yield task

    try:
        run_phase(args.workers, query_tasks(), deadline)
    finally:
        queries.close()
        recall.close()


# ---- summarize ----

def _dot(q: Sequence[float], x: Sequence[float]) -> float:
    return sum(map(operator.mul, q, x))


def distance_function(space: str) -> Callable[[Sequence[float], Sequence[float], float, float], float]:
    """Chroma's distances (hnswlib's spaces): l2 is the squared Euclidean distance, ip is 1 - q.x, cosine
    is 1 - q.x / (|q| |x|). Arguments: query, vector, |query|^2, |vector|^2."""
    if space == "l2":
        return lambda q, x, qq, xx: qq + xx - 2 * _dot(q, x)
    if space == "ip":
        return lambda q, x, qq, xx: 1 - _dot(q, x)
    if space == "cosine":
        return lambda q, x, qq, xx: 1 - _dot(q, x) / math.sqrt(qq * xx) if qq and xx else 1.0
    raise ValueError(f"unknown space {space!r}; one of {', '.join(SPACES)}")


def exact_neighbours(queries: Sequence[Sequence[float]], documents: Iterable[tuple[str, Sequence[float]]],
                     k: int, space: str = "l2", use_numpy: bool = True) -> list[list[str]]:
    """For every query, the ids of its k nearest documents by `space`, nearest first; of documents at the
    same distance, the one that came first. Brute force in one pass over the documents, keeping k per query
    (memory: len(queries) * k, besides one chunk of documents); with numpy when it can be imported."""
    if use_numpy:
        try:
            import numpy
        except ImportError:
            pass
        else:
            return _exact_neighbours_numpy(numpy, queries, documents, k, space)
    distance = distance_function(space)
    norms = [_dot(q, q) for q in queries]
    # per query a heap of (-distance, -order, id): its root is the worst of the k kept
    heaps: list[list[tuple[float, int, str]]] = [[] for _ in queries]
    for order, (doc_id, vector) in enumerate(documents):
        xx = _dot(vector, vector)
        for index, query in enumerate(queries):
            item = (-distance(query, vector, norms[index], xx), -order, doc_id)
            heap = heaps[index]
            if len(heap) < k:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)
    return [[doc_id for _, _, doc_id in sorted(heap, reverse=True)] for heap in heaps]


def _exact_neighbours_numpy(np: Any, queries: Sequence[Sequence[float]], documents: Iterable[tuple[str, Sequence[float]]],
                            k: int, space: str, chunk: int = 4096) -> list[list[str]]:
    if space not in SPACES:
        raise ValueError(f"unknown space {space!r}; one of {', '.join(SPACES)}")
    q = np.asarray(queries, dtype=np.float64)
    qq = np.einsum("ij,ij->i", q, q)
    best_d = np.empty((len(q), 0))
    best_o = np.empty((len(q), 0), dtype=np.int64)
    ids: list[str] = []
    batch: list[Sequence[float]] = []

    def merge() -> None:
        nonlocal best_d, best_o
        x = np.asarray(batch, dtype=np.float64)
        dot = q @ x.T
        if space == "l2":
            d = qq[:, None] + np.einsum("ij,ij->i", x, x)[None, :] - 2 * dot
        elif space == "ip":
            d = 1 - dot
        else:
            norm = np.sqrt(qq[:, None] * np.einsum("ij,ij->i", x, x)[None, :])
            with np.errstate(divide="ignore", invalid="ignore"):
                d = np.where(norm > 0, 1 - dot / np.where(norm > 0, norm, 1), 1.0)
        orders = np.arange(len(ids) - len(batch), len(ids))
        all_d = np.concatenate([best_d, d], axis=1)
        all_o = np.concatenate([best_o, np.broadcast_to(orders, d.shape)], axis=1)
        keep = np.stack([np.lexsort((o, dist))[:k] for dist, o in zip(all_d, all_o)]) if len(q) else all_o[:, :0]
        best_d = np.take_along_axis(all_d, keep, axis=1)
        best_o = np.take_along_axis(all_o, keep, axis=1)
        batch.clear()

    for doc_id, vector in documents:
        ids.append(doc_id)
        batch.append(vector)
        if len(batch) == chunk:
            merge()
    if batch:
        merge()
    return [[ids[o] for o in row] for row in best_o.tolist()]


def added_documents(results: str, seed: int, dimension: int) -> Iterator[tuple[str, list[float]]]:
    """The embeddings Chroma acknowledged (the batches in adds.tsv), drawn again from the seed."""
    added = sorted((int(r[0]), int(r[1])) for r in rows(os.path.join(results, "adds.tsv")) if len(r) >= 4)
    source = vectors(document_seed(seed), dimension)
    position = 0
    for first, count in added:
        while position < first:
            next(source)
            position += 1
        for offset in range(count):
            yield f"doc-{first + offset}", next(source)
        position += count


def rows(path: str) -> list[list[str]]:
    try:
        with open(path) as handle:
            lines = handle.read().splitlines()[1:]
    except FileNotFoundError:
        return []
    return [line.split("\t") for line in lines if line.count("\t") >= 1]


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest rank: the smallest value with at least p % of the values at or below it (values sorted)."""
    if not values:
        return None
    return values[max(1, math.ceil(p * len(values) / 100)) - 1]


def latency_metrics(prefix: str, seconds: Sequence[float]) -> dict[str, float | None]:
    ordered = sorted(seconds)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    return {
        f"{prefix}_latency_mean_ms": ms(sum(ordered) / len(ordered)) if ordered else None,
        f"{prefix}_latency_min_ms": ms(ordered[0]) if ordered else None,
        **{f"{prefix}_latency_p{p}_ms": ms(percentile(ordered, p)) for p in (50, 90, 95, 99)},
        f"{prefix}_latency_max_ms": ms(ordered[-1]) if ordered else None,
    }


def phase(path: str) -> tuple[int, int, float | None, list[float]]:
    """(requests, items, wall seconds, request seconds) of adds.tsv or queries.tsv. The wall time runs from
    the start of the phase to the end of its last request."""
    found = [(int(r[1]), float(r[2]), float(r[3])) for r in rows(path) if len(r) >= 4]
    wall = max((start + seconds for _, start, seconds in found), default=None)
    return len(found), sum(n for n, _, _ in found), wall, [seconds for _, _, seconds in found]


def recall_metrics(args: argparse.Namespace) -> dict[str, float | None]:
    name = f"recall_at_{args.n_results}_ratio"
    try:
        with open(os.path.join(args.results, "recall.jsonl")) as handle:
            checked = [json.loads(line) for line in handle if line.strip()]
    except FileNotFoundError:
        checked = []
    if not checked:
        return {name: None, "recall_queries_count": 0}
    checked.sort(key=lambda item: item["query"])
    exact = exact_neighbours([item["vector"] for item in checked],
                             added_documents(args.results, args.seed, args.dimension), args.n_results, args.space)
    found = [len(set(item["ids"]) & set(truth)) / len(truth) for item, truth in zip(checked, exact) if truth]
    return {name: round(sum(found) / len(found), 6) if found else None, "recall_queries_count": len(found)}


def server(results: str) -> Any:
    try:
        with open(os.path.join(results, "server.json")) as handle:
            return json.load(handle).get("server_version")
    except (OSError, ValueError, AttributeError):
        return None


def summarize(args: argparse.Namespace) -> None:
    add_requests, documents, add_wall, add_seconds = phase(os.path.join(args.results, "adds.tsv"))
    query_requests, queries, query_wall, query_seconds = phase(os.path.join(args.results, "queries.tsv"))
    metrics: dict[str, float | int | None] = {
        "documents_added_count": documents,
        "add_requests_count": add_requests,
        "add_wall_s": round(add_wall, 6) if add_wall is not None else None,
        "adds_per_s": round(documents / add_wall, 3) if add_wall else None,
        **latency_metrics("add", add_seconds),
        "queries_count": queries,
        "query_requests_count": query_requests,
        "query_wall_s": round(query_wall, 6) if query_wall is not None else None,
        "queries_per_s": round(queries / query_wall, 3) if query_wall else None,
        **latency_metrics("query", query_seconds),
        **recall_metrics(args),
    }
    version = server(args.results)
    environment = {"api": "v2", "server_version": version if isinstance(version, str) else None,
                   "distance": args.space}
    for name, value in (("metrics.json", metrics), ("environment.json", environment)):
        target = os.path.join(args.results, name)
        with open(target + ".tmp", "w") as handle:
            json.dump(value, handle)
            handle.write("\n")
        os.replace(target + ".tmp", target)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["run", "summarize"])
    parser.add_argument("results")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--tls-ca", help="TLS, the server's certificate checked against this CA file")
    parser.add_argument("--tenant", default="default_tenant")
    parser.add_argument("--database", default="default_database")
    parser.add_argument("--collection", default="orchc_bench")
    parser.add_argument("--space", choices=SPACES, default="l2")
    parser.add_argument("--documents", type=int, default=10000)
    parser.add_argument("--dimension", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--query-batch-size", type=int, default=1)
    parser.add_argument("--n-results", type=int, default=10)
    parser.add_argument("--recall-queries", type=int, default=100)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if args.mode == "summarize":
        summarize(args)
        return
    try:
        run(args)
    except (ChromaError, OSError, http.client.HTTPException) as error:
        sys.exit(f"chroma_bench: {error}")


if __name__ == "__main__":
    main()
